"""Buffer-aware scheduling: KV memory goes to the streams whose readers need tokens soonest.

The shared machinery of ``tokenflow`` (TokenFlow, arXiv 2510.02758, network-blind) and ``tokenpace``
(ours, fed by the transport). Both rest on one observation (TokenFlow's): an LLM makes tokens much
faster than people read them, so a streaming client holds a buffer of tokens made but not yet read,
and a stream whose buffer outlasts the round trip of a preemption can give its KV memory up for a
while without its reader noticing. What differs between the two is only where the buffer comes from
(:meth:`BufferAware.assess`); this module decides, each step, with those assessments:

* **the cost of giving memory up**, :func:`round_trip_s`: with ``swap``, the KV out and back over the
  host link after what is queued on it (TokenFlow's ``t_IO = t_evict_queueing + t_evict +
  t_load_queueing + t_load``); with ``recompute``, the step that prefills prompt and generated tokens
  again. The horizon a reader must be covered for is that plus ``resume_margin_s``.
* **slack**: seconds the reader can go on reading, without this stream making a token, beyond that
  horizon (``assess`` gives it with a rank: lower ranks give memory up first).
* **who gives memory up**: a running stream whose slack is at least ``preempt_margin_s`` (hysteresis
  over ``resume_margin_s``, so a stream is not brought back the step after it left), lowest rank,
  then most slack, first; ties: the last to enter RUNNING.
* **who comes back**: a preempted stream is *urgent* once its slack is at most ``resume_margin_s``
  (or unknown); urgent streams come back most urgent first, preempting streams that can afford it
  when memory is short; then waiting requests are admitted first come first served, preempting
  streams that can afford it when the head does not fit (TokenFlow: "streams with large buffers are
  preempted so new arrivals get a short TTFT"); then non-urgent preempted streams come back, least
  slack first, into memory that is free anyway. Nothing is admitted while an urgent stream could not
  come back. Preemptions to make room happen only when the victims together free enough memory.
* **memory that overflows** (the running streams' next tokens do not fit): the victim is the stream
  with most slack among those with at least ``resume_margin_s``; if none, :meth:`fallback_victim`.

Budget, ``max_running``, KV accounting and the pacing-credit check are fcfs's
(:mod:`sim.model.schedulers.fcfs`): decodes +1 KV each, prefills prompt + 1, recomputations their KV
in the budget (alone when larger than it), and credit accrued at every visit. When KV memory is not
short -- no overflow, nothing preempted, the head of the queue fits -- every decision is fcfs's, in
fcfs's order: no preemption, the same decodes, the same admissions.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from sim.model.schedulers.base import Params, Scheduler, paced_decodes, resume_into
from sim.model.serving import RUNNING

if TYPE_CHECKING:
    from sim.model.serving import Sequence, ServingCore


class BufferParams(Params):
    """Margins of buffer-aware scheduling, in seconds of reading beyond a preemption's round trip."""

    preempt_margin_s: float = Field(
        2.0, ge=0, description="a running stream may give its memory up when its reader's buffer covers the "
        "preemption's round trip plus this (s)")
    resume_margin_s: float = Field(
        1.0, ge=0, description="a preempted stream is brought back (preempting others if need be) when its "
        "reader's buffer covers less than the round trip plus this (s)")

    @model_validator(mode="after")
    def _hysteresis(self) -> BufferParams:
        if self.resume_margin_s > self.preempt_margin_s:
            raise ValueError("resume_margin_s must not exceed preempt_margin_s (a stream would thrash)")
        return self


def round_trip_s(core: ServingCore, s: Sequence, now: float) -> float:
    """Seconds a preemption of ``s`` now keeps it from making tokens, besides waiting for memory; for a
    stream already preempted, what bringing it back takes.

    swap: its KV out (if running) and back in over the host link, after the transfers already queued
    there (free swaps: 0). recompute: the step that prefills its prompt and generated tokens again.
    """
    if core.recompute:
        return core.spec.d0_s + core.spec.d1_s * s.kv_tokens
    bw = core.swap_bytes_per_s
    if bw is None:
        return 0.0
    queued = core.link_free_s - now
    ways = 2.0 if s.state == RUNNING else 1.0
    return (queued if queued > 0 else 0.0) + ways * s.kv_tokens * core.spec.kv_bytes_per_token / bw


class BufferAware(Scheduler):
    """Buffer-aware preemption, resumption and admission; subclasses say what a reader's buffer is."""

    Params = BufferParams
    frees_paced_memory = True  # a stream ahead of its reader by its round trip + preempt_margin_s gives memory up

    @abstractmethod
    def assess(self, core: ServingCore, s: Sequence, now: float, horizon_s: float) -> tuple[int, float] | None:
        """``(rank, slack_s)`` of stream ``s``: seconds its reader can go on reading without ``s`` making a
        token, beyond ``horizon_s`` from now (may be ``inf``), and a rank (0 gives memory up first).
        None: not known (the stream is never chosen to give memory up, and comes back as fcfs would)."""

    @abstractmethod
    def fallback_victim(self, core: ServingCore, now: float) -> Sequence:
        """The running stream to preempt when memory overflows and nobody can afford it."""

    def prepare(self, core: ServingCore, now: float) -> None:
        """Called at the start of every step (a subclass may update what it tracks per stream)."""

    def run_ahead(self, core: ServingCore, s: Sequence, now: float) -> bool:
        """While requests wait for memory, may the paced stream ``s`` (its credit below one) decode anyway?
        A paced stream holds its memory while it skips steps; running it ahead of its pace until its reader's
        buffer covers a preemption lets it give the memory up (``preempt_margin_s``). Default: never."""
        return False

    # ------------------------------------------------------------------ the assessments the policy uses
    def _horizon(self, core: ServingCore, s: Sequence, now: float) -> float:
        return round_trip_s(core, s, now) + self.params.resume_margin_s  # type: ignore[attr-defined]

    def _slack(self, core: ServingCore, s: Sequence, now: float) -> tuple[int, float] | None:
        return self.assess(core, s, now, self._horizon(core, s, now))

    def _candidates(self, core: ServingCore, now: float, floor_s: float) -> list[tuple[int, float, float, Sequence]]:
        """Running streams with slack of at least ``floor_s``, the first to give memory up first."""
        out = []
        for s in core.running:
            a = self._slack(core, s, now)
            if a is not None and a[1] >= floor_s:
                out.append((a[0], -a[1], -s.enter_running_s, s))
        out.sort(key=lambda c: c[:3])
        return out

    def _make_room(self, core: ServingCore, now: float, need: int, decodes: list[Sequence], for_id: str) -> bool:
        """Preempt streams that can afford it until ``need`` more KV tokens are free; only if they can
        free that much together (else nothing is preempted). The preempted leave ``decodes``."""
        margin = self.params.preempt_margin_s  # type: ignore[attr-defined]
        chosen: list[Sequence] = []
        freed = 0
        for *_, s in self._candidates(core, now, margin):
            chosen.append(s)
            freed += s.kv_tokens + (1 if s in decodes else 0)
            if freed >= need:
                break
        if freed < need:
            return False
        for s in chosen:
            a = self._slack(core, s, now)  # again: the link queue grew with the victims before it
            if a is None or a[1] < margin:
                return False  # (the preemptions made so far still free memory for the caller's next try)
            core.preempt(s, now, f"buffer {a[1]:.3f}s beyond its round trip; room for {for_id}")
            self._preempted_now += 1
            if s in decodes:
                decodes.remove(s)
        return True

    # ------------------------------------------------------------------ the step
    def schedule(self, core: ServingCore, now: float) -> tuple[list[Sequence], list[Sequence], list[Sequence]]:
        self.prepare(core, now)
        spec = core.spec
        budget = spec.batch_tokens
        max_running = spec.max_running or 1 << 30
        kv_total = spec.kv_tokens
        running, swapped, waiting, incoming = core.running, core.swapped, core.waiting, core.incoming
        # 1. running streams the pacer allows, in FCFS order (fcfs's loop: credit accrues at every visit);
        # while memory is short, a paced stream the policy lets run ahead decodes anyway (see run_ahead)
        short = bool(swapped or incoming) or (bool(waiting) and (
            core.kv_used + waiting[0].prompt_tokens + 1 > kv_total))
        decodes = paced_decodes(running, now, (lambda s: self.run_ahead(core, s, now)) if short else None)
        del decodes[budget:]
        overflowed = False
        while decodes and core.kv_used + len(decodes) > kv_total:
            victim = self._overflow_victim(core, now)
            core.preempt(victim, now, f"kv {core.kv_used}+{len(decodes)} > {kv_total}")
            overflowed = True
            if victim in decodes:
                decodes.remove(victim)
        budget -= len(decodes)
        prefills: list[Sequence] = []
        recomputes: list[Sequence] = []
        if overflowed:  # memory is short this step: nothing comes back, nobody is admitted (as fcfs)
            return decodes, prefills, recomputes
        self._preempted_now = 0
        # 2. urgent preempted streams, most urgent first; room is made for them if others can afford it
        blocked = False
        if swapped:
            for _, s in self._urgent(core, now):
                if len(running) + len(incoming) >= max_running:
                    blocked = True
                    break
                need = core.kv_used + len(decodes) + len(prefills) + len(recomputes) + s.kv_tokens + 1 - kv_total
                cost = core.resume_tokens(s)
                if cost and cost > budget and (decodes or recomputes or prefills):  # larger than B: runs alone
                    blocked = True
                    break
                if need > 0:
                    n_dec = len(decodes)
                    if not self._make_room(core, now, need, decodes, s.req_id):
                        blocked = True
                        break
                    budget += n_dec - len(decodes)
                budget -= resume_into(core, s, now, decodes, recomputes, budget)
        # 3. waiting requests, first come first served; room is made for the head if others can afford it
        while waiting and not blocked and len(running) + len(incoming) < max_running:
            s = waiting[0]
            alone = not decodes and not prefills and not recomputes  # a prompt larger than B still runs, alone
            if s.prompt_tokens > budget and not alone:
                break
            need = core.kv_used + len(decodes) + len(prefills) + len(recomputes) + s.prompt_tokens + 1 - kv_total
            if need > 0:
                n_dec = len(decodes)
                if not self._make_room(core, now, need, decodes, s.req_id):
                    break
                budget += n_dec - len(decodes)
                if s.prompt_tokens > budget and (decodes or prefills or recomputes):
                    break
            core.admit(s, now)
            budget -= s.prompt_tokens
            prefills.append(s)
        # 4. the other preempted streams, least slack first, into memory that is free anyway (never in a
        # step that preempted)
        if swapped and not blocked and not self._preempted_now:
            for _, s in self._by_slack(core, now):
                if len(running) + len(incoming) >= max_running:
                    break
                if core.kv_used + len(decodes) + len(prefills) + len(recomputes) + s.kv_tokens + 1 > kv_total:
                    continue
                cost = core.resume_tokens(s)
                if cost and cost > budget and (decodes or recomputes or prefills):
                    continue
                budget -= resume_into(core, s, now, decodes, recomputes, budget)
        return decodes, prefills, recomputes

    _preempted_now = 0  # preemptions made to make room in this step

    def _urgent(self, core: ServingCore, now: float) -> list[tuple[float, Sequence]]:
        """Preempted streams whose reader needs them back now, most urgent first (unknown: first, in the
        order they were preempted, as fcfs brings them back)."""
        margin = self.params.resume_margin_s  # type: ignore[attr-defined]
        out = []
        for s in core.swapped:
            a = self._slack(core, s, now)
            slack = -math.inf if a is None else a[1]
            if slack <= margin:
                out.append((slack, s))
        out.sort(key=lambda u: u[0])
        return out

    def _by_slack(self, core: ServingCore, now: float) -> list[tuple[float, Sequence]]:
        out = []
        for s in list(core.swapped):
            a = self._slack(core, s, now)
            out.append((-math.inf if a is None else a[1], s))
        out.sort(key=lambda u: u[0])
        return out

    def _overflow_victim(self, core: ServingCore, now: float) -> Sequence:
        cands = self._candidates(core, now, self.params.resume_margin_s)  # type: ignore[attr-defined]
        return cands[0][3] if cands else self.fallback_victim(core, now)
