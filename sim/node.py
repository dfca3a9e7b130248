"""The serving node: batched decode over KV memory, as in seed 002.

A GPU runs one *step* at a time. A step takes ``d0 + d1 * batch_tokens``: a fixed cost plus a
cost per token in the batch, where a running stream contributes one decode token and a newly
admitted stream contributes its whole prompt (prefill, which also yields its first token). A
step's tokens are capped by the budget ``B``. Every running stream holds KV memory for its
prompt and the tokens made so far; when memory runs short, running streams are preempted by
swapping them out (victim policy LIFO / FIFO / random) and swapped back in when memory frees.

Pacing enters here. A stream whose controller says "not yet" (no rate credit) skips the step:
its slot in the batch goes to others, but it keeps its KV memory. That coupling between pacing
and GPU capacity is what the tool is about.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import simpy

from scenarios.schema import ServerSpec

WAITING, RUNNING, SWAPPED, FINISHED, CANCELLED = "waiting", "running", "swapped", "finished", "cancelled"
CREDIT_CAP_TOKENS = 2.0  # a paced stream may catch up by at most this many tokens after a pause
_EPS = 1e-9
_READY = 1.0 - _EPS  # credit that lets a paced stream step


class NodeLog(Protocol):
    """Where the node reports what it does (seed 002's batch_snapshots / events / memory_events)."""

    def step(self, t: float, batch_id: int, batch_size: int, batch_tokens: int, duration_s: float,
             waiting: int, running: int, swapped: int, completed: int, kv_used: int) -> None: ...
    def event(self, t: float, kind: str, req_id: str, details: str = "") -> None: ...
    def memory(self, t: float, kind: str, req_id: str, before: int, after: int, reason: str) -> None: ...


class Sequence:
    """One request as the node sees it: lengths, KV footprint, pacing credit and lifecycle times."""

    __slots__ = (
        "arrival_s",
        "cancel_requested",
        "credit",
        "credit_t",
        "done_s",
        "enter_running_s",
        "exec_s",
        "first_running_s",
        "generated",
        "last_step_s",
        "on_token",
        "output_tokens",
        "prompt_tokens",
        "rate_tps",
        "req_id",
        "running_since_s",
        "state",
        "swap_count",
    )

    def __init__(self, req_id: str, arrival_s: float, prompt_tokens: int, output_tokens: int,
                 on_token: Callable[[float, int], None]) -> None:
        self.req_id = req_id
        self.arrival_s = arrival_s
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.on_token = on_token  # (t_s, idx) when a token is made
        self.generated = 0
        self.state = WAITING
        self.rate_tps: float | None = None  # None = unpaced
        self.credit = 1.0  # tokens the pacer allows now
        self.credit_t = arrival_s
        self.enter_running_s = -1.0  # last time it entered RUNNING (LIFO/FIFO victim order)
        self.first_running_s: float | None = None
        self.running_since_s = 0.0
        self.exec_s = 0.0
        self.swap_count = 0
        self.done_s: float | None = None
        self.cancel_requested = False
        self.last_step_s: float | None = None  # when it last joined a batch

    @property
    def kv_tokens(self) -> int:
        return self.prompt_tokens + self.generated

    def set_rate(self, now: float, rate_tps: float | None) -> None:
        if self.rate_tps is None and rate_tps is not None:
            # from unpaced to paced: the next token is due 1/rate after the last one
            since = now - self.last_step_s if self.last_step_s is not None else float("inf")
            self.credit = min(1.0, rate_tps * since) if rate_tps > 0 else 0.0
            self.credit_t = now
        else:
            self._accrue(now)
        self.rate_tps = rate_tps

    def _accrue(self, now: float) -> None:
        if self.rate_tps is not None and now > self.credit_t:
            self.credit = min(CREDIT_CAP_TOKENS, self.credit + self.rate_tps * (now - self.credit_t))
        self.credit_t = now

    def eligible(self, now: float) -> bool:
        if self.rate_tps is None:
            return True
        self._accrue(now)
        return self.credit >= _READY

    def ready_at(self, now: float) -> float:
        """When pacing lets this stream take a step (inf if paused)."""
        if self.rate_tps is None or self.credit >= _READY:
            return now
        if self.rate_tps <= 0:
            return float("inf")
        return now + (1.0 - self.credit) / self.rate_tps


class ServingNode:
    def __init__(self, env: simpy.Environment, spec: ServerSpec, rng: np.random.Generator, log: NodeLog) -> None:
        self.env = env
        self.spec = spec
        self.rng = rng
        self.log = log
        self.waiting: list[Sequence] = []  # FCFS
        self.running: list[Sequence] = []  # in order of entering RUNNING
        self.swapped: list[Sequence] = []  # in order of swap-out
        self.kv_used = 0
        self.completed = 0
        self.steps = 0
        self.busy_s = 0.0
        self.all_seqs: list[Sequence] = []
        self._wake: simpy.Event | None = None
        self._cancel_pending = False  # a cancel() not yet applied: only then is there anything to drop
        env.process(self._loop())

    # ------------------------------------------------------------------ inputs
    def submit(self, seq: Sequence) -> None:
        self.all_seqs.append(seq)
        self.waiting.append(seq)
        self.log.event(self.env.now, "arrive", seq.req_id, f"prompt={seq.prompt_tokens} output={seq.output_tokens}")
        self.wake()

    def cancel(self, seq: Sequence) -> None:
        """The client left: the stream is dropped at the next step boundary."""
        if seq.state in (FINISHED, CANCELLED):
            return
        seq.cancel_requested = True
        self._cancel_pending = True
        self.wake()

    def wake(self) -> None:
        """Something changed (arrival, cancel, a new rate): an idle node re-plans now."""
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    # ------------------------------------------------------------------ the step loop
    def _loop(self):  # type: ignore[no-untyped-def]
        env = self.env
        d0, d1 = self.spec.d0_s, self.spec.d1_s
        while True:
            now = env.now
            if self._cancel_pending:
                self._cancel_pending = False
                self._drop_cancelled(now)
            decodes, prefills = self._plan(now)
            if not decodes and not prefills:
                self._wake = env.event()
                ready = self._next_ready(now)
                if ready < float("inf"):
                    yield env.any_of([self._wake, env.timeout(max(ready - now, 1e-6))])
                else:
                    yield self._wake
                self._wake = None
                continue
            batch_tokens = len(decodes)
            for s in prefills:
                batch_tokens += s.prompt_tokens
            duration = d0 + d1 * batch_tokens
            self.steps += 1
            yield env.timeout(duration)
            self.busy_s += duration
            now = env.now
            for s in prefills:
                self._make_token(s, now)
            for s in decodes:
                if s.state == RUNNING:
                    self._make_token(s, now)
            self.log.step(now, self.steps, len(decodes) + len(prefills), batch_tokens, duration,
                          len(self.waiting), len(self.running), len(self.swapped), self.completed, self.kv_used)

    def _next_ready(self, now: float) -> float:
        """min(s.ready_at(now) for s in running), inf if none: when pacing next lets a stream step.

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
        return ready

    def _make_token(self, s: Sequence, now: float) -> None:
        idx = s.generated
        s.generated += 1
        self.kv_used += 1
        if s.generated >= s.output_tokens:
            self._leave_running(s, now)
            s.state = FINISHED
            s.done_s = now
            self.kv_used -= s.kv_tokens
            self.completed += 1
            self.log.event(now, "complete", s.req_id, f"tokens={s.generated}")
        s.on_token(now, idx)

    def _leave_running(self, s: Sequence, now: float) -> None:
        self.running.remove(s)
        s.exec_s += now - s.running_since_s

    def _drop_cancelled(self, now: float) -> None:
        for queue in (self.waiting, self.running, self.swapped):
            for s in [s for s in queue if s.cancel_requested]:
                if s.state == RUNNING:
                    self._leave_running(s, now)
                    self.kv_used -= s.kv_tokens
                else:
                    queue.remove(s)
                s.state = CANCELLED
                s.done_s = now
                self.log.event(now, "cancel", s.req_id, f"generated={s.generated}")

    def _enter_running(self, s: Sequence, now: float) -> None:
        s.state = RUNNING
        s.enter_running_s = now
        s.running_since_s = now
        if s.first_running_s is None:
            s.first_running_s = now
        self.running.append(s)

    def _pick_victim(self) -> Sequence:
        policy = self.spec.victim_policy
        if policy == "LIFO":
            return max(reversed(self.running), key=lambda s: s.enter_running_s)  # ties: the last to enter
        if policy == "FIFO":
            return min(self.running, key=lambda s: s.enter_running_s)
        return self.running[int(self.rng.integers(len(self.running)))]

    def _swap_out(self, s: Sequence, now: float, reason: str) -> None:
        before = self.kv_used
        self._leave_running(s, now)
        self.kv_used -= s.kv_tokens
        s.state = SWAPPED
        s.swap_count += 1
        self.swapped.append(s)
        self.log.event(now, "swap_out", s.req_id, reason)
        self.log.memory(now, "swap_out", s.req_id, before, self.kv_used, reason)

    def _plan(self, now: float) -> tuple[list[Sequence], list[Sequence]]:
        """Choose this step's decodes and prefills: RUNNING > SWAPPED > WAITING (seed 002's standard)."""
        spec = self.spec
        budget = spec.batch_tokens
        max_running = spec.max_running or 1 << 30
        # 1. running streams the pacer allows, in FCFS order; each grows KV by one token.
        # Sequence.eligible(), inlined: this visits every running stream every step. Credit accrues at
        # every visit, as eligible() does, so the arithmetic (and every result) is the same.
        decodes = []
        for s in self.running:
            rate = s.rate_tps
            if rate is not None:
                if now > s.credit_t:
                    credit = s.credit + rate * (now - s.credit_t)
                    s.credit = credit if credit < CREDIT_CAP_TOKENS else CREDIT_CAP_TOKENS
                s.credit_t = now
                if not s.credit >= _READY:
                    continue
            decodes.append(s)
        del decodes[budget:]
        preempted = False
        while decodes and self.kv_used + len(decodes) > spec.kv_tokens:
            victim = self._pick_victim()
            self._swap_out(victim, now, f"kv {self.kv_used}+{len(decodes)} > {spec.kv_tokens}")
            preempted = True
            if victim in decodes:
                decodes.remove(victim)
        budget -= len(decodes)
        # 2. swap back in, oldest first, while memory allows (never in a step that had to preempt)
        while (not preempted and self.swapped and len(self.running) < max_running
               and self.kv_used + len(decodes) + self.swapped[0].kv_tokens + 1 <= spec.kv_tokens):
            s = self.swapped.pop(0)
            before = self.kv_used
            self._enter_running(s, now)
            self.kv_used += s.kv_tokens
            self.log.event(now, "swap_in", s.req_id, "")
            self.log.memory(now, "swap_in", s.req_id, before, self.kv_used, "memory freed")
            if budget > 0 and s.eligible(now):
                decodes.append(s)
                budget -= 1
        # 3. admit waiting requests FCFS: prefill needs its prompt in the budget and in memory
        prefills: list[Sequence] = []
        while self.waiting and not self.swapped and len(self.running) < max_running:
            s = self.waiting[0]
            need_kv = s.prompt_tokens + 1
            alone = not decodes and not prefills  # a prompt larger than B still runs, alone
            # kv_used already holds admitted prompts; each decode and prefill adds one token this step
            if self.kv_used + len(decodes) + len(prefills) + need_kv > spec.kv_tokens:
                break
            if s.prompt_tokens > budget and not alone:
                break
            self.waiting.pop(0)
            self._enter_running(s, now)
            self.kv_used += s.prompt_tokens
            budget -= s.prompt_tokens
            prefills.append(s)
            self.log.event(now, "admit", s.req_id, f"prefill={s.prompt_tokens}")
        for s in decodes:
            s.last_step_s = now
            if s.rate_tps is not None:
                s.credit -= 1.0
        for s in prefills:  # the first token is made by the prefill; it spends pacing credit too
            s.last_step_s = now
            if s.rate_tps is not None:
                s.eligible(now)
                s.credit -= 1.0
        return decodes, prefills
