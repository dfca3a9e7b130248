"""The serving node's logic with time passed in: batched decode over KV memory, as in seed 002.

A GPU runs one *step* at a time. A step takes ``d0 + d1 * batch_tokens``: a fixed cost plus a
cost per token in the batch, where a running stream contributes one decode token, a newly
admitted stream its whole prompt (prefill, which also yields its first token) and a stream
resumed by recomputation its prompt and every token made so far. A step's tokens are capped by
the budget ``B``. Every running stream holds KV memory for its prompt and the tokens made so
far; when memory runs short the scheduler (``server.scheduler``, ``sim/model/schedulers/``)
preempts running streams and brings them back when memory frees.

Preemption (``server.preemption``) and its cost:

* ``swap``: the KV moves to host memory and back over a host link of ``server.swap_gbps``
  (gigabits per second; ``null``: free and instantaneous, the default). A transfer of
  ``kv_tokens * kv_bytes_per_token`` bytes takes that over the bandwidth; transfers queue FIFO
  on the link, which runs beside compute (steps do not wait for it). A swap-out's GPU blocks
  are reusable at once (modelling choice: the copy-out is taken to stay ahead of the writes
  that reuse its blocks, which start at the next step at the earliest); the transfer only holds
  the link, so swap-ins queue behind it. A swap-in reserves the stream's GPU memory when it is
  scheduled, and the stream cannot decode until its transfer has completed: it is counted as
  running (it holds KV) but joins no step until then.
* ``recompute``: the KV is dropped at once. On resume the prompt and the generated tokens are
  prefilled again in one step (counted in that step's batch tokens, within the budget, or
  alone when larger), and that prefill yields the stream's next token.

Prefix cache (``server.prefix_cache``, ``sim/model/prefix_cache.py``; none by default): a request whose
prompt starts with a cached shared prefix skips that prefix in its admit step's batch tokens; the cached
prefixes hold KV tokens (in ``kv_used``) and give way, least recently used first, before a stream is
preempted.

Pacing enters here. A stream whose controller says "not yet" (no rate credit) skips the step:
its slot in the batch goes to others, but it keeps its KV memory.

Drivers: ``sim/node.py`` (SimPy) and the live engine call, with their own clock::

    step = core.plan(now)          # None: nothing to do; sleep until core.next_ready(now) or a wake-up
    ... let step.duration_s pass ...
    core.finish(step, now)         # tokens made, callbacks, completions, the step's log row

and ``core.add(seq, now)``, ``core.cancel(req_id, now)``, ``core.observe(req_id, obs, decision)``
as things happen. Nothing here holds or reads a clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np

from controllers import Decision, Observation
from scenarios.schema import ServerSpec
from sim.model.prefix_cache import PrefixCache

if TYPE_CHECKING:
    from sim.model.schedulers.base import Scheduler

WAITING, RUNNING, SWAPPED, FINISHED, CANCELLED = "waiting", "running", "swapped", "finished", "cancelled"
SWAPPING_IN = "swapping_in"  # memory reserved, KV still on the host link
CREDIT_CAP_TOKENS = 2.0  # a paced stream may catch up by at most this many tokens after a pause
_EPS = 1e-9
_READY = 1.0 - _EPS  # credit that lets a paced stream step
_NO_SEQS: tuple[Sequence, ...] = ()


class NodeLog(Protocol):
    """Where the node reports what it does (seed 002's batch_snapshots / events / memory_events)."""

    def step(self, t: float, batch_id: int, batch_size: int, batch_tokens: int, duration_s: float,
             waiting: int, running: int, swapped: int, completed: int, kv_used: int) -> None: ...
    def event(self, t: float, kind: str, req_id: str, details: str = "") -> None: ...
    def memory(self, t: float, kind: str, req_id: str, before: int, after: int, reason: str) -> None: ...


class PacingCredit:
    """A token-rate pacer with time passed in: a token may go when the credit reaches one.

    Credit accrues at ``rate_tps`` up to ``CREDIT_CAP_TOKENS``; each token spends one. ``rate_tps``
    None is unpaced (always ready). The node's Sequence is one; the upstream proxy uses one alone.
    """

    __slots__ = ("credit", "credit_t", "last_step_s", "rate_tps")

    def __init__(self, now: float) -> None:
        self.rate_tps: float | None = None  # None = unpaced
        self.credit = 1.0  # tokens the pacer allows now
        self.credit_t = now
        self.last_step_s: float | None = None  # when it last spent (joined a batch / released a token)

    def set_rate(self, now: float, rate_tps: float | None) -> None:
        if self.rate_tps is None and rate_tps is not None:
            # from unpaced to paced: the next token is due 1/rate after the last one
            since = now - self.last_step_s if self.last_step_s is not None else float("inf")
            self.credit = min(1.0, rate_tps * since) if rate_tps > 0 else 0.0
            self.credit_t = now
        else:
            self.accrue(now)
        self.rate_tps = rate_tps

    def accrue(self, now: float) -> None:
        if self.rate_tps is not None and now > self.credit_t:
            self.credit = min(CREDIT_CAP_TOKENS, self.credit + self.rate_tps * (now - self.credit_t))
        self.credit_t = now

    _accrue = accrue  # the old private name

    def eligible(self, now: float) -> bool:
        """May a token go now? (Accrues the credit up to now.)"""
        if self.rate_tps is None:
            return True
        self.accrue(now)
        return self.credit >= _READY

    def ready_at(self, now: float) -> float:
        """When pacing lets the next token go (inf if paused)."""
        if self.rate_tps is None or self.credit >= _READY:
            return now
        if self.rate_tps <= 0:
            return float("inf")
        return now + (1.0 - self.credit) / self.rate_tps

    def spend(self, now: float) -> None:
        """One token went at ``now``."""
        self.last_step_s = now
        if self.rate_tps is not None:
            self.credit -= 1.0


class Sequence(PacingCredit):
    """One request as the node sees it: lengths, KV footprint, pacing credit and lifecycle times."""

    __slots__ = (
        "arrival_s",
        "cached_tokens",
        "cancel_requested",
        "done_s",
        "due_s",
        "enter_running_s",
        "exec_s",
        "first_running_s",
        "first_token_s",
        "generated",
        "on_token",
        "output_tokens",
        "prefix_id",
        "prefix_tokens",
        "prompt_tokens",
        "reading_tps",
        "req_id",
        "resume_s",
        "running_since_s",
        "state",
        "swap_count",
        "ttft_expected_s",
    )

    def __init__(self, req_id: str, arrival_s: float, prompt_tokens: int, output_tokens: int,
                 on_token: Callable[[float, int], None], reading_tps: float | None = None,
                 ttft_expected_s: float = 1.0, prefix_id: int | None = None, prefix_tokens: int = 0) -> None:
        PacingCredit.__init__(self, arrival_s)
        self.req_id = req_id
        self.arrival_s = arrival_s
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.prefix_id = prefix_id  # the shared prefix its prompt starts with (workload.prefix), if any
        self.prefix_tokens = prefix_tokens  # its length (part of prompt_tokens)
        self.cached_tokens = 0  # prompt tokens the prefix cache spared its prefill (set on admission)
        self.on_token = on_token  # (t_s, idx) when a token is made
        self.generated = 0
        self.state = WAITING
        self.enter_running_s = -1.0  # last time it entered RUNNING (LIFO/FIFO victim order)
        self.first_running_s: float | None = None
        self.running_since_s = 0.0
        self.exec_s = 0.0
        self.swap_count = 0  # preemptions (swap or recompute)
        self.done_s: float | None = None
        self.cancel_requested = False
        self.resume_s = 0.0  # SWAPPING_IN: when its KV is back on the GPU
        # What the server is told about the reader (the request's hint), for network-blind schedulers
        # (Andes, TokenFlow): its pace and the TTFT it expects. None: not told.
        self.reading_tps = reading_tps
        self.ttft_expected_s = ttft_expected_s
        self.first_token_s: float | None = None  # when the node made token 0
        # Read on schedule: when a reader at ``reading_tps`` who got every token the moment it was made
        # would put the last made token on screen (token i: max(made_i, due_{i-1} + 1/reading_tps)).
        self.due_s = 0.0

    @property
    def kv_tokens(self) -> int:
        return self.prompt_tokens + self.generated

    def scheduled_buffer_s(self, now: float) -> float:
        """Seconds of reading the client holds if it got every token when made and reads on schedule:
        generated minus read-on-schedule, as Andes and TokenFlow estimate it (blind to the network).
        0 before the first token or without a reading pace."""
        return self.due_s - now if self.due_s > now else 0.0

    def scheduled_buffer_tokens(self, now: float) -> float:
        """:meth:`scheduled_buffer_s` in tokens (times ``reading_tps``)."""
        r = self.reading_tps
        return (self.due_s - now) * r if r and self.due_s > now else 0.0


_Seqs = tuple["Sequence", ...] | list["Sequence"]


class Step:
    """One planned step: who decodes, who is prefilled (admitted), who is recomputed, at what cost."""

    __slots__ = (
        "batch_id",
        "batch_tokens",
        "decodes",
        "duration_s",
        "preempted",
        "prefills",
        "recomputes",
        "resumed",
        "start_s",
    )

    def __init__(self, batch_id: int, start_s: float, decodes: list[Sequence], prefills: list[Sequence],
                 recomputes: list[Sequence], batch_tokens: int, duration_s: float,
                 preempted: _Seqs, resumed: _Seqs) -> None:
        self.batch_id = batch_id
        self.start_s = start_s
        self.decodes = decodes  # running streams making one token each
        self.prefills = prefills  # admitted this step: their prompt, yielding the first token
        self.recomputes = recomputes  # resumed by recomputation: prompt + generated, yielding the next token
        self.batch_tokens = batch_tokens
        self.duration_s = duration_s
        self.preempted = preempted  # preempted while planning this step (swap-out or drop)
        self.resumed = resumed  # brought back while planning it (swap-in scheduled, or recompute)

    @property
    def batch_size(self) -> int:
        return len(self.decodes) + len(self.prefills) + len(self.recomputes)


class ServingCore:
    """The node's state and mechanisms (memory, preemption and its cost, pacing, tokens); the
    scheduler chooses, the core applies. Time is every method's argument."""

    def __init__(self, spec: ServerSpec, rng: np.random.Generator, log: NodeLog,
                 scheduler: Scheduler | None = None) -> None:
        from sim.model import schedulers  # here: the policies import this module's names

        self.spec = spec
        self.rng = rng
        self.log = log
        self.scheduler = scheduler if scheduler is not None else schedulers.make(spec.scheduler.name,
                                                                               spec.scheduler.params)
        self.waiting: list[Sequence] = []  # FCFS
        self.running: list[Sequence] = []  # in order of entering RUNNING
        self.incoming: list[Sequence] = []  # SWAPPING_IN, in order of their transfers
        self.swapped: list[Sequence] = []  # preempted (swapped out or dropped), in order of preemption
        self.kv_used = 0
        self.completed = 0
        self.steps = 0
        self.busy_s = 0.0
        self.all_seqs: list[Sequence] = []
        self.by_id: dict[str, Sequence] = {}
        self.observations: dict[str, tuple[Observation, Decision]] = {}
        self.cancel_pending = False  # a cancel() not yet applied: only then is there anything to drop
        self.recompute = spec.preemption == "recompute"
        self.swap_bytes_per_s = None if spec.swap_gbps is None else spec.swap_gbps * 1e9 / 8
        self.link_free_s = 0.0  # when the host link finishes its queued transfers
        self.swap_bytes = 0  # bytes moved over the host link (both ways)
        self.recomputed_tokens = 0  # tokens prefilled again on resume
        self._preempted: list[Sequence] | None = None  # during one plan()
        self._resumed: list[Sequence] | None = None
        self.prefix_cache = PrefixCache(spec.prefix_cache, log) if spec.prefix_cache is not None else None

    # ------------------------------------------------------------------ inputs
    def add(self, seq: Sequence, now: float) -> None:
        self.all_seqs.append(seq)
        self.by_id[seq.req_id] = seq
        self.waiting.append(seq)
        self.log.event(now, "arrive", seq.req_id, f"prompt={seq.prompt_tokens} output={seq.output_tokens}")

    def cancel(self, req_id: str, now: float) -> bool:
        """The client left: the stream is dropped at the next step boundary. False: nothing to drop."""
        seq = self.by_id.get(req_id)
        if seq is None or seq.state in (FINISHED, CANCELLED):
            return False
        seq.cancel_requested = True
        self.cancel_pending = True
        return True

    def observe(self, req_id: str, obs: Observation, decision: Decision) -> None:
        """A stream's latest Observation and its controller's Decision, for the scheduler."""
        self.observations[req_id] = (obs, decision)

    # ------------------------------------------------------------------ the step
    def plan(self, now: float) -> Step | None:
        """The next step starting at ``now``, or None when nothing can step now (see next_ready)."""
        if self.cancel_pending:
            self.cancel_pending = False
            self.drop_cancelled(now)
        if self.incoming:
            self._land(now)
        if self.prefix_cache is not None:
            self.prefix_cache.make_room(self, now)  # the cache gives way before any stream is preempted
        decodes, prefills, recomputes = self.scheduler.schedule(self, now)
        if not decodes and not prefills and not recomputes:
            self._preempted = self._resumed = None
            return None
        batch_tokens = len(decodes)
        for s in decodes:
            s.last_step_s = now
            if s.rate_tps is not None:
                s.credit -= 1.0
        for s in prefills:  # the first token is made by the prefill; it spends pacing credit too
            s.last_step_s = now
            batch_tokens += s.prompt_tokens - s.cached_tokens  # a prefix cache hit skips the prefix
            if s.rate_tps is not None:
                s.accrue(now)
                s.credit -= 1.0
        for s in recomputes:  # so does the token a recomputation yields
            s.last_step_s = now
            batch_tokens += s.kv_tokens
            if s.rate_tps is not None:
                s.accrue(now)
                s.credit -= 1.0
        self.steps += 1
        preempted, resumed = self._preempted or _NO_SEQS, self._resumed or _NO_SEQS
        self._preempted = self._resumed = None
        return Step(self.steps, now, decodes, prefills, recomputes, batch_tokens,
                    self.spec.d0_s + self.spec.d1_s * batch_tokens, preempted, resumed)

    def finish(self, step: Step, now: float) -> None:
        """The step ended at ``now``: its tokens are made (callbacks, completions) and logged."""
        self.busy_s += step.duration_s
        make = self._make_token
        for s in step.prefills:
            make(s, now)
        for s in step.recomputes:
            if s.state == RUNNING:
                make(s, now)
        for s in step.decodes:
            if s.state == RUNNING:
                make(s, now)
        if self.prefix_cache is not None:
            self.prefix_cache.keep(self, step.prefills, now)
        self.log.step(now, step.batch_id, step.batch_size, step.batch_tokens, step.duration_s, len(self.waiting),
                      len(self.running) + len(self.incoming), len(self.swapped), self.completed, self.kv_used)

    def next_ready(self, now: float) -> float | None:
        """When something may next step without news from outside: a paced stream's credit reaching
        one, or a swap-in landing (``now`` if already); None: only an arrival, cancel or rate change.

        Inlined ready_at (the node idles between paced tokens, and each time asks every running stream).
        """
        ready = float("inf")
        for s in self.running:
            rate = s.rate_tps
            if rate is None or s.credit >= _READY:
                return now  # nothing is earlier than now
            if rate > 0:
                t = now + (1.0 - s.credit) / rate
                if t < ready:
                    ready = t
        if self.incoming:
            ready = min(ready, max(now, self.incoming[0].resume_s))
        return ready if ready < float("inf") else None

    # ------------------------------------------------------------------ mechanisms the scheduler calls
    def admit(self, s: Sequence, now: float) -> None:
        """Admit a waiting request: its prompt is prefilled in this step (memory for it is taken now)."""
        self.waiting.remove(s)
        self._enter_running(s, now)
        self.kv_used += s.prompt_tokens
        if self.prefix_cache is not None and s.prefix_id is not None:
            self.prefix_cache.admit(self, s, now)
        self.log.event(now, "admit", s.req_id, f"prefill={s.prompt_tokens - s.cached_tokens}")

    def preempt(self, s: Sequence, now: float, reason: str) -> None:
        """Give a running stream's KV memory up: swap it out, or drop it to recompute later."""
        before = self.kv_used
        self._leave_running(s, now)
        self.kv_used -= s.kv_tokens
        s.state = SWAPPED
        s.swap_count += 1
        self.swapped.append(s)
        if self._preempted is None:
            self._preempted = []
        self._preempted.append(s)
        if self.recompute:
            detail = f"recompute: {reason}; dropped {s.kv_tokens} KV tokens"
            self.log.event(now, "preempt", s.req_id, detail)
            self.log.memory(now, "preempt", s.req_id, before, self.kv_used, reason)
            return
        detail = reason
        if self.swap_bytes_per_s is not None:
            start, end, nbytes = self._transfer(s, now)
            detail = f"{reason}; {nbytes} B to host {start:.6f}-{end:.6f}"
        self.log.event(now, "swap_out", s.req_id, detail)
        self.log.memory(now, "swap_out", s.req_id, before, self.kv_used, reason)

    def resume_tokens(self, s: Sequence) -> int:
        """Batch tokens that resuming ``s`` costs in the step that resumes it (recompute: its KV)."""
        return s.kv_tokens if self.recompute else 0

    def resume(self, s: Sequence, now: float) -> str:
        """Bring a preempted stream back; its memory is taken now. Returns what the step can do with it:
        ``"ready"`` (may decode this step), ``"transfer"`` (its KV is on the host link until
        ``s.resume_s``) or ``"recompute"`` (the scheduler puts it in this step's recomputes)."""
        self.swapped.remove(s)
        before = self.kv_used
        self.kv_used += s.kv_tokens
        if self._resumed is None:
            self._resumed = []
        self._resumed.append(s)
        if self.recompute:
            self._enter_running(s, now)
            self.recomputed_tokens += s.kv_tokens
            self.log.event(now, "recompute", s.req_id, f"prefill={s.kv_tokens}")
            self.log.memory(now, "recompute", s.req_id, before, self.kv_used, "memory freed")
            return "recompute"
        if self.swap_bytes_per_s is None:
            self._enter_running(s, now)
            self.log.event(now, "swap_in", s.req_id, "")
            self.log.memory(now, "swap_in", s.req_id, before, self.kv_used, "memory freed")
            return "ready"
        start, end, nbytes = self._transfer(s, now)
        s.state = SWAPPING_IN
        s.resume_s = end
        self.incoming.append(s)
        self.log.event(now, "swap_in", s.req_id, f"{nbytes} B from host {start:.6f}-{end:.6f}")
        self.log.memory(now, "swap_in", s.req_id, before, self.kv_used, "memory freed")
        return "transfer"

    def memory_short(self) -> bool:
        """Does a request wait for memory now? Some stream is preempted, or the first waiting request's
        prompt does not fit in KV memory (or in ``max_running``) beside the streams holding it."""
        if self.swapped or self.incoming:
            return True
        if not self.waiting:
            return False
        spec = self.spec
        if spec.max_running and len(self.running) >= spec.max_running:
            return True
        return self.kv_used + self.waiting[0].prompt_tokens + 1 > spec.kv_tokens

    def observation(self, req_id: str) -> tuple[Observation, Decision] | None:
        """The stream's latest (Observation, Decision), if the driver handed one over."""
        return self.observations.get(req_id)

    # ------------------------------------------------------------------ internals
    def _transfer(self, s: Sequence, now: float) -> tuple[float, float, int]:
        """Queue ``s``'s KV on the host link (FIFO): (start, end, bytes)."""
        assert self.swap_bytes_per_s is not None
        nbytes = s.kv_tokens * self.spec.kv_bytes_per_token
        start = max(now, self.link_free_s)
        end = start + nbytes / self.swap_bytes_per_s
        self.link_free_s = end
        self.swap_bytes += nbytes
        return start, end, nbytes

    def _land(self, now: float) -> None:
        """Swap-ins whose transfer has completed by ``now`` join the running streams."""
        incoming = self.incoming
        while incoming and incoming[0].resume_s <= now:
            self._enter_running(incoming.pop(0), now)

    def _make_token(self, s: Sequence, now: float) -> None:
        idx = s.generated
        if idx == 0:
            s.first_token_s = now
            s.due_s = now
        elif s.reading_tps:
            due = s.due_s + 1.0 / s.reading_tps
            s.due_s = due if due > now else now
        s.generated += 1
        self.kv_used += 1
        if s.generated >= s.output_tokens:
            self._leave_running(s, now)
            s.state = FINISHED
            s.done_s = now
            self.kv_used -= s.kv_tokens
            self.completed += 1
            self.observations.pop(s.req_id, None)
            self.log.event(now, "complete", s.req_id, f"tokens={s.generated}")
        s.on_token(now, idx)

    def _leave_running(self, s: Sequence, now: float) -> None:
        self.running.remove(s)
        s.exec_s += now - s.running_since_s

    def drop_cancelled(self, now: float) -> None:
        """Drop every stream whose cancel was requested (the plan does this first)."""
        for queue in (self.waiting, self.running, self.swapped, self.incoming):
            for s in [s for s in queue if s.cancel_requested]:
                if s.state == RUNNING:
                    self._leave_running(s, now)
                    self.kv_used -= s.kv_tokens
                else:
                    queue.remove(s)
                    if s.state == SWAPPING_IN:
                        self.kv_used -= s.kv_tokens
                s.state = CANCELLED
                s.done_s = now
                self.observations.pop(s.req_id, None)
                self.log.event(now, "cancel", s.req_id, f"generated={s.generated}")

    def _enter_running(self, s: Sequence, now: float) -> None:
        s.state = RUNNING
        s.enter_running_s = now
        s.running_since_s = now
        if s.first_running_s is None:
            s.first_running_s = now
        self.running.append(s)
