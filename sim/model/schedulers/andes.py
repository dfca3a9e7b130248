"""``andes``: the QoE-aware scheduler of Andes (Liu et al., arXiv 2404.16283), network-blind as published.

Andes values every request by the quality of experience (QoE) it would gain over a short horizon
``horizon_s`` if it were served rather than paused, divides that by the KV memory it needs, and packs
the requests that deserve memory greedily as a knapsack; running requests left out are preempted,
chosen waiting requests are admitted and chosen preempted ones are brought back. It follows the
published artifact, the vLLM 0.6.1 fork ``AmberLJC/vllm-0.6.1`` at its newest commit, part by part:

* **When it solves** (``andes_scheduler.py``, ``AndesScheduler._schedule_qoe_aware``): every
  ``solve_every_steps``-th scheduling iteration (the ``self.iter % 10`` gate), and only when KV
  utilisation, counting one more token for every running stream, is at least ``kv_threshold``
  (``KnapSack.schedule_requests``: ``utilization < 0.9``). Otherwise it schedules as vLLM does
  (here: as :mod:`fcfs`, the reference), except that waiting requests are admitted in order of
  their value per KV token, as ``schedule_requests`` sorts them (stable: equal values keep arrival
  order).
* **Value** (``qoe_tracker.py``, ``AvgQoEOptimizer.get_value``): with the reader's token delivery
  speed ``r`` (``s.reading_tps``, the TDS the request declares), its expected TTFT, the request's age
  ``t`` and ``L`` tokens made, the expected length by ``t + horizon_s`` is ``E = (t + horizon_s) r``.
  Served: QoE 1 if its last token came before its timeline ``ttft + L / r``, else
  ``min(1, ((L + horizon_s / max(1/r, token_latency_s)) / E)^2)``. Paused: ``1 - ((E - L) / E)^2``
  (1 once ``L >= E``), or for a request with no token yet, 1 if the horizon still ends before its
  TTFT target and 0 otherwise. The value is served minus paused, times ``1 + running_bonus`` for a
  running request; its weight is its context plus the next token (``get_context_block``; we count
  tokens, the artifact 16-token blocks).
* **Preemption cap** (``knapsack_solver.py``, ``KnapSack.pick_requests``, "online preemption"):
  each request's slack is ``L / r + ttft - t``; the slack at the ``sacrifice_fraction`` quantile of
  all requests (running, waiting, preempted) over the cost of preempting a request of mean
  context is how many may be preempted this step. Below one, nobody is preempted and every waiting
  and preempted request is offered memory in queue order. The cost is the core's, not the
  artifact's profiled constant: a swap moves ``kv_bytes_per_token`` over the host link at
  ``swap_gbps`` (free swaps cost nothing, so the cap is lifted); a recompute prefills the context
  again at ``d1_s`` per token.
* **Candidates and knapsack** (``pick_requests``, ``KnapSack._greedy_knapsack``): running requests
  whose value per token is no more than the best paused one's are candidates, the first ``cap`` of
  them in running order; the others keep their memory. Candidates, waiting and preempted requests
  are sorted by value per token and taken while they fit the memory the kept ones leave, stopping
  at the first that does not. Candidates not taken are preempted (``core.preempt``: swap or
  recompute per ``server.preemption``; the core applies the cost), as in the artifact even when the
  request that outranked them does not fit either; those taken from the queues are resumed
  (``core.resume``) then admitted (``core.admit``), best first.

What we changed, and why. Our step model batches prefills with decodes (as :mod:`fcfs` does), so a
step that admits also decodes, where vLLM 0.6.1 without chunked prefill runs prefill-only steps;
the batch token budget, ``max_running`` and memory are checked exactly as fcfs checks them (each
decode grows KV by one token, a prefill needs its prompt plus one, a recompute its context in the
budget), so a plan the solver makes that does not fit is cut, never overrun. If decodes still
overflow memory, the last stream to enter RUNNING is preempted, as vLLM's ``_schedule_running``
pops the tail of its running queue, and nothing is resumed or admitted in that step. A stream
whose pacing credit is below one does not decode (the controller holds it back) but keeps its
memory. The artifact times tokens with ``time.monotonic()``; schedulers here never read a clock,
so the time of a stream's last token is the end of the last step it joined, from our step model
(``d0_s + d1_s * batch_tokens``, what the core charges). Requests that declare no reading pace get
the artifact's default (``default_tds_tps``, 1 token/s).

Network-blind, as published: the client's buffer is what was generated minus what a reader at its
declared pace has read (``s.scheduled_buffer_s``); a token stuck in a socket buffer counts as
delivered. It reads no Observation (``uses_observations`` is False).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from sim.model.schedulers.base import Params as _Params
from sim.model.schedulers.base import Scheduler, paced_decodes, resume_into
from sim.model.serving import SWAPPED, WAITING

if TYPE_CHECKING:
    from sim.model.serving import Sequence, ServingCore


def qoe_gain(age_s: float, generated: int, last_token_age_s: float, ttft_s: float, tds_tps: float,
             horizon_s: float, token_latency_s: float, running: bool, running_bonus: float) -> float:
    """QoE a request gains over ``horizon_s`` if served rather than paused (``AvgQoEOptimizer.get_value``).

    Times are since the request arrived; ``last_token_age_s`` is when its last token was made.
    """
    latency = 1.0 / tds_tps
    expected = (age_s + horizon_s) * tds_tps
    if generated > 0 and last_token_age_s < ttft_s + generated * latency:
        served = 1.0
    else:
        served = min(1.0, ((generated + horizon_s / max(latency, token_latency_s)) / expected) ** 2)
    if generated == 0:
        paused = 1.0 if age_s + horizon_s <= ttft_s else 0.0
    elif expected <= generated:
        paused = 1.0
    else:
        paused = 1.0 - ((expected - generated) / expected) ** 2
    return (served - paused) * (1.0 + running_bonus * running)


class AndesParams(_Params):
    horizon_s: float = Field(10.0, gt=0, description="horizon over which a request's QoE gain is valued (s); "
                             "the artifact's KnapSack delta_t")
    token_latency_s: float = Field(0.02, gt=0, description="time per decoded token the value assumes (s); "
                                   "the artifact's KnapSack token_latency")
    kv_threshold: float = Field(0.9, ge=0, le=1, description="KV utilisation (one more token per running "
                                "stream counted) from which the knapsack runs")
    solve_every_steps: int = Field(10, gt=0, description="the knapsack runs at most every this many "
                                   "scheduling iterations (the artifact's iter % 10 gate)")
    sacrifice_fraction: float = Field(0.1, ge=0, lt=1, description="quantile of the requests' slack that "
                                      "caps preemptions (the artifact's percentile_to_sacrifice)")
    running_bonus: float = Field(0.1, ge=0, description="a running request's value is multiplied by "
                                 "1 + this (the artifact's 1 + 0.1 * running)")
    default_tds_tps: float = Field(1.0, gt=0, description="reading pace assumed for a request that declares "
                                   "none (tokens/s; the artifact's default latency of 1 s per token)")
    admit_order: Literal["value", "fcfs"] = Field("value", description="order of admission below the "
                                                   "threshold: by value per KV token (the artifact) or arrival")


class Andes(Scheduler):
    name = "andes"
    label = "Andes (QoE knapsack)"
    Params = AndesParams

    def __init__(self, params: AndesParams | None = None) -> None:
        super().__init__(params)
        self._iter = 0
        self._token_s: dict[str, float] = {}  # req_id -> when its last token was made (end of its last step)
        self.solves = 0  # iterations in which the knapsack ran
        self.knapsack_preemptions = 0  # streams it preempted

    # ------------------------------------------------------------------ valuation
    def value(self, s: Sequence, now: float, running: bool) -> float:
        """``s``'s QoE gain over the horizon if served (``qoe_gain``) at ``now``."""
        p = self.params
        made = self._token_s.get(s.req_id)
        if made is None:
            made = s.first_token_s if s.first_token_s is not None else now
        return qoe_gain(now - s.arrival_s, s.generated, made - s.arrival_s, s.ttft_expected_s,
                        s.reading_tps or p.default_tds_tps, p.horizon_s, p.token_latency_s, running,
                        p.running_bonus)

    def density(self, s: Sequence, now: float, running: bool) -> float:
        """Value per KV token: the gain over its context plus the next token (the knapsack's weight)."""
        return self.value(s, now, running) / (s.kv_tokens + 1)

    def slack(self, s: Sequence, now: float) -> float:
        """How long ``s`` may wait before it falls behind its timeline (``QoETracker.get_slack``)."""
        return s.generated / (s.reading_tps or self.params.default_tds_tps) + s.ttft_expected_s - (now - s.arrival_s)

    @staticmethod
    def preempt_cost_s(core: ServingCore) -> float:
        """Seconds one KV token costs to preempt and bring back: the host link per token, or its recompute."""
        if core.recompute:
            return core.spec.d1_s
        if core.swap_bytes_per_s is None:
            return 0.0
        return core.spec.kv_bytes_per_token / core.swap_bytes_per_s

    def preemption_cap(self, core: ServingCore, now: float) -> int:
        """Most streams the knapsack may preempt now: the slack of the most urgent over a preemption's cost."""
        seqs = [*core.running, *core.waiting, *core.swapped]
        slacks = sorted(self.slack(s, now) for s in seqs)
        threshold = slacks[int(self.params.sacrifice_fraction * len(seqs))]
        overhead = self.preempt_cost_s(core) * sum(s.kv_tokens + 1 for s in seqs) / len(seqs)
        if overhead <= 0:
            return len(core.running)
        return int(threshold // overhead)

    def solve(self, core: ServingCore, now: float) -> tuple[list[Sequence], list[Sequence], list[Sequence]]:
        """The knapsack (``KnapSack.pick_requests``): (to preempt, to resume, to admit), best first."""
        running, waiting, swapped = core.running, core.waiting, core.swapped
        if not waiting and not swapped:
            return [], [], []
        cap = self.preemption_cap(core, now)
        if cap < 1:  # nobody has slack for a preemption: offer memory to every queued request, in order
            return [], list(swapped), list(waiting)
        run_d = [self.density(s, now, True) for s in running]
        paused = [*waiting, *swapped]
        paused_d = [self.density(s, now, False) for s in paused]
        bar = max(paused_d, default=1.0)
        cands = [i for i, d in enumerate(run_d) if d <= bar][:cap]
        chosen = set(cands)
        capacity = core.spec.kv_tokens - sum(s.kv_tokens + 1 for i, s in enumerate(running) if i not in chosen)
        capacity -= sum(s.kv_tokens + 1 for s in core.incoming)
        items = [(run_d[i], running[i]) for i in cands] + list(zip(paused_d, paused, strict=True))
        items.sort(key=lambda it: it[0], reverse=True)  # stable: ties keep running, waiting, swapped order
        picked: list[Sequence] = []
        used = 0
        for _, s in items:
            if used + s.kv_tokens + 1 > capacity:
                break
            used += s.kv_tokens + 1
            picked.append(s)
        kept = {id(s) for s in picked}
        evict = [running[i] for i in cands if id(running[i]) not in kept]
        resume = [s for s in picked if s.state == SWAPPED]
        admit = [s for s in picked if s.state == WAITING]
        return evict, resume, admit

    # ------------------------------------------------------------------ the step
    def schedule(self, core: ServingCore, now: float) -> tuple[list[Sequence], list[Sequence], list[Sequence]]:
        p = self.params
        spec = core.spec
        budget = spec.batch_tokens
        max_running = spec.max_running or 1 << 30
        kv_total = spec.kv_tokens
        running, swapped, waiting, incoming = core.running, core.swapped, core.waiting, core.incoming
        self._iter += 1
        solving = False
        to_resume: list[Sequence] = swapped
        to_admit: list[Sequence] = waiting
        if (self._iter % p.solve_every_steps == 0 and (waiting or swapped)
                and (core.kv_used + len(running) + len(incoming)) / kv_total >= p.kv_threshold):
            solving = True
            self.solves += 1
            evict, to_resume, to_admit = self.solve(core, now)
            for s in evict:
                core.preempt(s, now, f"andes: {self.density(s, now, True):.4g} QoE/KV token")
            self.knapsack_preemptions += len(evict)
        elif p.admit_order == "value" and len(waiting) > 1:
            dens = {id(s): self.density(s, now, False) for s in waiting}
            to_admit = sorted(waiting, key=lambda s: dens[id(s)], reverse=True)
        # 1. running streams the pacer allows, in order of entering RUNNING (as fcfs)
        decodes = paced_decodes(running, now)
        del decodes[budget:]
        preempted = False
        while decodes and core.kv_used + len(decodes) > kv_total:
            victim = running[-1]  # vLLM's _schedule_running: the tail of the running queue
            core.preempt(victim, now, f"kv {core.kv_used}+{len(decodes)} > {kv_total}")
            preempted = True
            if victim in decodes:
                decodes.remove(victim)
        budget -= len(decodes)
        # 2. bring preempted streams back in the chosen order while memory allows (fcfs's checks)
        recomputes: list[Sequence] = []
        for s in list(to_resume):
            if preempted or len(running) + len(incoming) >= max_running or s.state != SWAPPED:
                break
            if core.kv_used + len(decodes) + len(recomputes) + s.kv_tokens + 1 > kv_total:
                break
            cost = core.resume_tokens(s)
            if cost and cost > budget and (decodes or recomputes):  # larger than B: runs alone
                break
            budget -= resume_into(core, s, now, decodes, recomputes, budget)
        # 3. admit in the chosen order: below the threshold only when nobody waits to come back (fcfs)
        prefills: list[Sequence] = []
        for s in list(to_admit):
            if preempted or (swapped and not solving) or len(running) + len(incoming) >= max_running:
                break
            alone = not decodes and not prefills and not recomputes  # a prompt larger than B still runs, alone
            if core.kv_used + len(decodes) + len(prefills) + len(recomputes) + s.prompt_tokens + 1 > kv_total:
                break
            if s.prompt_tokens > budget and not alone:
                break
            core.admit(s, now)
            budget -= s.prompt_tokens
            prefills.append(s)
        self._note_token_times(core, now, decodes, prefills, recomputes)
        return decodes, prefills, recomputes

    def _note_token_times(self, core: ServingCore, now: float, decodes: list[Sequence], prefills: list[Sequence],
                          recomputes: list[Sequence]) -> None:
        """When this step's tokens will be made: its end, as the core charges it (d0 + d1 * batch tokens)."""
        if not decodes and not prefills and not recomputes:
            return
        tokens = len(decodes) + sum(s.prompt_tokens for s in prefills) + sum(s.kv_tokens for s in recomputes)
        end = now + core.spec.d0_s + core.spec.d1_s * tokens
        made = self._token_s
        for group in (decodes, prefills, recomputes):
            for s in group:
                made[s.req_id] = end
        live = len(core.running) + len(core.swapped) + len(core.incoming)
        if len(made) > 4 * live + 64:  # forget streams that have left
            keep = {s.req_id for q in (core.running, core.swapped, core.incoming) for s in q}
            self._token_s = {k: v for k, v in made.items() if k in keep}
