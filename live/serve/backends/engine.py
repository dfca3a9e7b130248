"""The built-in token engine: the node's clock-free serving core, stepped in real time by asyncio.

:class:`LiveEngine` composes a :class:`sim.model.serving.ServingCore`, the same object the
simulator's SimPy process drives (``sim/node.py``): admission, the budget ``B``, KV memory, the
scheduler (``server.scheduler``: ``sim/model/schedulers/``), preemption by swap (over a host link
of ``swap_gbps``, KV transfers beside compute) or recompute (prompt and generated tokens prefilled
again), cancellation at step boundaries and the pacing credit of each
:class:`sim.model.serving.Sequence`. Only the driver is this module's: an asyncio task runs
``core.plan(now) -> asyncio.sleep(step.duration_s) -> core.finish(step, now)`` against
``time.monotonic()``; when ``plan`` says nothing can step, it sleeps until ``core.next_ready(now)``
(a paced stream's credit, a swap-in landing) or a wake-up (an arrival, a cancel, a new rate).
Back-to-back steps keep their nominal schedule: a step that starts up to :data:`MAX_LATE_S` late
ends where it would have ended on time (catch-up).

Each stream's latest Observation and its controller's Decision reach the scheduler through
:meth:`LiveEngine.observe` (the pacing loop calls it every control interval) when the scheduler
uses them (``uses_observations``). A sequence carries the request's reader hint (``reading_tps``,
``ttft_expected_s``), so network-blind schedulers (Andes arXiv 2404.16283, TokenFlow arXiv
2510.02758) can estimate the client's buffer as generated minus read-on-schedule.

Streams leave within one step: before planning each step the engine asks every sequence's
``alive()`` (the server wires it to "the client's transport is still open") and cancels the dead
ones, exactly where the simulator drops a cancelled stream; a step already in flight may still
make one token for it. The HTTP handler also cancels its sequence the moment aiohttp reports the
connection lost. The engine counts what leaving costs (``/metrics``, ``bench/soak.py``): tokens made
for a sequence after its client was seen gone (``tokens_after_detach``: at most the one step in
flight) and sequences that still got a token from a step *planned* after that (``zombie_streams``:
generation that went on; 0 unless dropping departed clients is broken).

Token text is deterministic pseudo-text: words from a small built-in vocabulary, drawn from a
generator seeded by (seed, stream id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from controllers import Decision, Observation
from scenarios.schema import ServerSpec
from sim.model.schedulers import Scheduler
from sim.model.serving import CANCELLED, FINISHED, RUNNING, Sequence, ServingCore, Step
from sim.model.workload import RNG_VICTIM, rng_for

__all__ = ["MAX_LATE_S", "VOCABULARY", "EngineLog", "LiveEngine", "LiveSequence", "NullLog", "TeeLog",
           "TextGenerator"]

_WORDS = """
    the a of to and in is that it for on with as was be by this are or at from an which have not but
    has one all were they their can more its been would there so also than other into time about
    only new some could these two may first then do any like my now over such our man me even most
    made after did many before must through back years where much your way well down should because
    each just those people how too little state good very make world still own see men work long get
    here between both life being under never day same another know while last might us great old
    year off come since against go came right used take three network token stream reader packet
    window pace buffer latency queue server model signal kernel socket rate flow budget batch memory
    prompt answer river cloud garden light
"""
VOCABULARY: tuple[str, ...] = tuple(_WORDS.split())
log = logging.getLogger("tokenpace.live")
MAX_LATE_S = 0.005  # a step may start this late and still be scheduled back to back (catch-up)


class TextGenerator:
    """Deterministic words for one stream: ``next()`` gives " word", sentences end with a period."""

    __slots__ = ("_n", "_rng")

    def __init__(self, seed: int, key: str) -> None:
        self._rng = random.Random((int(seed) << 32) ^ zlib.crc32(key.encode()))
        self._n = 0

    def next(self) -> str:
        word = self._rng.choice(VOCABULARY)
        self._n += 1
        if self._n == 1:
            return word.capitalize()
        if self._rng.random() < 0.08:
            return f" {word}."
        return f" {word}"


class EngineLog:
    """What the engine reports (sim.model.serving.NodeLog); subclass and override what you need."""

    def step(self, t: float, batch_id: int, batch_size: int, batch_tokens: int, duration_s: float,
             waiting: int, running: int, swapped: int, completed: int, kv_used: int) -> None:
        pass

    def event(self, t: float, kind: str, req_id: str, details: str = "") -> None:
        pass

    def memory(self, t: float, kind: str, req_id: str, before: int, after: int, reason: str) -> None:
        pass


NullLog = EngineLog


class TeeLog(EngineLog):
    """Forward every report to several logs (recorder, metrics)."""

    def __init__(self, logs: Iterable[Any]) -> None:
        self.logs = [log for log in logs if log is not None]

    def add(self, log: Any) -> None:
        self.logs.append(log)

    def step(self, *args: Any) -> None:
        for log in self.logs:
            log.step(*args)

    def event(self, *args: Any) -> None:
        for log in self.logs:
            log.event(*args)

    def memory(self, *args: Any) -> None:
        for log in self.logs:
            log.memory(*args)


class LiveSequence(Sequence):
    """A node Sequence that knows whether its client is still there."""

    __slots__ = ("alive", "detached_s", "generated_at_detach", "zombie")

    def __init__(self, req_id: str, arrival_s: float, prompt_tokens: int, output_tokens: int,
                 on_token: Callable[[float, int], None], alive: Callable[[], bool] | None = None, *,
                 reading_tps: float | None = None, ttft_expected_s: float = 1.0) -> None:
        super().__init__(req_id, arrival_s, prompt_tokens, output_tokens, on_token, reading_tps, ttft_expected_s)
        self.alive: Callable[[], bool] = alive if alive is not None else (lambda: True)
        self.detached_s: float | None = None  # when the server first noticed the client was gone
        self.generated_at_detach: int | None = None
        self.zombie = False  # got a token from a step planned after detached_s (LiveEngine counts it)

    def mark_detached(self, now: float) -> None:
        if self.detached_s is None:
            self.detached_s = now
            self.generated_at_detach = self.generated


def _no_token(t_s: float, idx: int) -> None:
    """A sequence that has left the engine makes no more tokens (stands in for its handler's callback)."""


def _gone() -> bool:
    return False


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the token engine stopped", exc_info=task.exception())


class LiveEngine:
    """A :class:`ServingCore` stepped by an asyncio task in real time. Call :meth:`start` inside a running loop.

    A server runs for days, so nothing may pile up per request: a sequence that finishes or is
    cancelled drops its callbacks at once (they hold the handler's connection, buffers, stream state
    and text generator: kept, they grew the server by ~14 KB a stream in ``bench/soak.py``) and leaves
    the core's by-id index and observations, and ``all_seqs`` keeps the last ``keep_seqs`` sequences
    only (None: all of them, which a recording needs for its request traces).
    """

    def __init__(self, spec: ServerSpec | None = None, *, seed: int = 1, log: Any = None,
                 clock: Callable[[], float] = time.monotonic, keep_seqs: int | None = None,
                 scheduler: Scheduler | None = None) -> None:
        self.clock = clock
        self.spec = spec if spec is not None else ServerSpec()  # type: ignore[call-arg]
        self.tee = TeeLog([log])
        self.core = ServingCore(self.spec, rng_for(seed, RNG_VICTIM), self.tee, scheduler)
        if keep_seqs is not None:
            self.core.all_seqs = deque(maxlen=keep_seqs)  # type: ignore[assignment]
        self.seed = seed
        self.uses_observations = self.core.scheduler.uses_observations
        self._event: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.stepping = False  # a step is in flight
        self.last_step: tuple[float, int, int, float] | None = None  # (t, batch_size, batch_tokens, duration)
        self.tokens_generated = 0
        self.tokens_after_detach = 0  # tokens made for sequences whose client was already seen gone
        self.zombie_streams = 0  # sequences given a token by a step planned after their client left

    # ------------------------------------------------------------------ the core's state
    @property
    def scheduler(self) -> Scheduler:
        return self.core.scheduler

    @property
    def waiting(self) -> list[Sequence]:
        return self.core.waiting

    @property
    def running(self) -> list[Sequence]:
        """Streams holding KV, a swap-in still on the host link included (as server.csv counts them)."""
        core = self.core
        return core.running + core.incoming if core.incoming else core.running

    @property
    def swapped(self) -> list[Sequence]:
        return self.core.swapped

    @property
    def all_seqs(self) -> Iterable[Sequence]:
        return self.core.all_seqs

    @property
    def kv_used(self) -> int:
        return self.core.kv_used

    @property
    def completed(self) -> int:
        return self.core.completed

    @property
    def steps(self) -> int:
        return self.core.steps

    @property
    def busy_s(self) -> float:
        return self.core.busy_s

    def held(self) -> Iterator[Sequence]:
        """Every sequence the engine holds: waiting, running, swapping in, preempted."""
        core = self.core
        for queue in (core.waiting, core.running, core.incoming, core.swapped):
            yield from queue

    def active(self) -> int:
        core = self.core
        return len(core.waiting) + len(core.running) + len(core.incoming) + len(core.swapped)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._task is None:
            self._event = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self.run(), name="tokenpace-engine")
            self._task.add_done_callback(_report_crash)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def running_task(self) -> asyncio.Task[None] | None:
        return self._task

    # ------------------------------------------------------------------ inputs
    def new_sequence(self, req_id: str, prompt_tokens: int, output_tokens: int,
                     on_token: Callable[[float, int], None], alive: Callable[[], bool] | None = None, *,
                     reading_tps: float | None = None, ttft_expected_s: float = 1.0) -> LiveSequence:
        """A sequence arriving now; ``reading_tps`` and ``ttft_expected_s`` are the request's reader hint."""
        return LiveSequence(req_id, self.clock(), max(1, prompt_tokens), max(1, output_tokens), on_token, alive,
                            reading_tps=reading_tps, ttft_expected_s=ttft_expected_s)

    def submit(self, seq: Sequence) -> None:
        self.core.add(seq, self.clock())
        self.wake()

    def cancel(self, seq: Sequence) -> None:
        """The client left: the stream is dropped at the next step boundary."""
        if seq.state in (FINISHED, CANCELLED):
            return
        seq.cancel_requested = True  # by object, not id: a later stream may reuse a departed one's id
        self.core.cancel_pending = True
        self.wake()

    def detach(self, seq: LiveSequence) -> None:
        """The client is gone: record what it had, and drop it at the next step boundary."""
        seq.mark_detached(self.clock())
        self.cancel(seq)

    def observe(self, req_id: str, obs: Observation, decision: Decision) -> None:
        """A stream's latest Observation and its controller's Decision, for the scheduler (if it uses them)."""
        if self.uses_observations and req_id in self.core.by_id:  # a sequence that left is out of by_id
            self.core.observe(req_id, obs, decision)

    def wake(self) -> None:
        """Something changed (arrival, cancel, a new rate): an idle engine re-plans now."""
        if self._event is not None:
            self._event.set()

    # ------------------------------------------------------------------ leaving
    def _release(self, s: Sequence) -> None:
        """``s`` has left (finished or cancelled): let go of its handler's callbacks and its index entries."""
        s.on_token = _no_token
        if isinstance(s, LiveSequence):
            s.alive = _gone
        core = self.core
        if core.by_id.get(s.req_id) is s:
            del core.by_id[s.req_id]
            core.observations.pop(s.req_id, None)

    def _drop_cancelled(self, now: float) -> None:
        dropped = [s for s in self.held() if s.cancel_requested]
        self.core.drop_cancelled(now)
        for s in dropped:
            self._release(s)

    def _reap(self, now: float) -> bool:
        """Mark the sequences whose client is gone; True if there were any."""
        found = False
        for s in self.held():
            if not s.cancel_requested and isinstance(s, LiveSequence) and not s.alive():
                s.mark_detached(now)
                s.cancel_requested = True
                found = True
        return found

    def _count_detached(self, s: Sequence, planned_s: float) -> None:
        """A token was just made for ``s``: count it if its client was already gone. A departure seen
        before the step was planned (``planned_s``) should have dropped ``s`` from it: a zombie."""
        detached = getattr(s, "detached_s", None)
        if detached is None:
            return
        self.tokens_after_detach += 1
        if detached <= planned_s and not s.zombie:  # type: ignore[attr-defined]
            s.zombie = True  # type: ignore[attr-defined]
            self.zombie_streams += 1

    # ------------------------------------------------------------------ the step loop
    def _finish(self, step: Step, now: float, planned_s: float) -> None:
        """End ``step`` at ``now`` through the core, then count and release per token made."""
        # who gets a token: ServingCore.finish's rule (nothing changes a state while a step is in flight)
        made = [*step.prefills, *(s for s in step.recomputes if s.state == RUNNING),
                *(s for s in step.decodes if s.state == RUNNING)]
        self.core.finish(step, now)
        for s in made:
            self._count_detached(s, planned_s)
            if s.state == FINISHED:
                self._release(s)
        self.tokens_generated += len(made)
        self.last_step = (now, step.batch_size, step.batch_tokens, step.duration_s)

    async def run(self) -> None:
        assert self._event is not None
        event = self._event
        core = self.core
        prev_end: float | None = None  # nominal end of the previous step while the engine stays busy
        while True:
            now = self.clock()
            # drop what cancel() or a closed transport marked (the core's own drop in plan() is then a no-op)
            if self._reap(now) or core.cancel_pending:
                core.cancel_pending = False
                self._drop_cancelled(now)
            planned_s = now  # departures seen by now have been dropped above
            step = core.plan(now)
            if step is None:
                prev_end = None
                event.clear()
                ready = core.next_ready(now)
                timeout = max(ready - now, 1e-4) if ready is not None else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout)
                continue
            # back-to-back steps keep their nominal schedule: a late wake-up is made up next step
            start = prev_end if prev_end is not None and 0 <= now - prev_end <= MAX_LATE_S else now
            end = start + step.duration_s
            self.stepping = True
            try:
                await asyncio.sleep(max(0.0, end - self.clock()))
            finally:
                self.stepping = False
            prev_end = end
            self._finish(step, self.clock(), planned_s)
