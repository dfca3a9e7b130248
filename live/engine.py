"""The built-in token engine: the simulator's serving node, stepping in real time on asyncio.

:class:`LiveEngine` *is* a :class:`sim.node.ServingNode`: admission (FCFS, budget ``B``, prefill
counted in the batch), KV memory, swapping (LIFO/FIFO/random victims), cancellation at step
boundaries and the pacing credit of :class:`sim.node.Sequence` all come from ``sim/node.py``
unchanged. Only the driver differs: instead of SimPy's ``_loop`` an asyncio task runs
``_drop_cancelled -> _plan -> asyncio.sleep(d0 + d1 * batch_tokens) -> _make_token`` against
``time.monotonic()``. The node is constructed with a tiny stand-in for the SimPy environment
(``now`` is the monotonic clock, ``process()`` discards the SimPy loop), so no SimPy process ever
runs.

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
from collections.abc import Callable, Iterable
from typing import Any

from scenarios.schema import ServerSpec
from sim.node import FINISHED, RUNNING, Sequence, ServingNode
from sim.workload import RNG_VICTIM, rng_for

__all__ = ["VOCABULARY", "EngineLog", "LiveEngine", "LiveSequence", "NullLog", "TeeLog", "TextGenerator"]

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
    """What the engine reports (sim.node.NodeLog); subclass and override what you need."""

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
                 on_token: Callable[[float, int], None], alive: Callable[[], bool] | None = None) -> None:
        super().__init__(req_id, arrival_s, prompt_tokens, output_tokens, on_token)
        self.alive: Callable[[], bool] = alive if alive is not None else (lambda: True)
        self.detached_s: float | None = None  # when the server first noticed the client was gone
        self.generated_at_detach: int | None = None
        self.zombie = False  # got a token from a step planned after detached_s (LiveEngine counts it)

    def mark_detached(self, now: float) -> None:
        if self.detached_s is None:
            self.detached_s = now
            self.generated_at_detach = self.generated


class _Clock:
    """The two things ServingNode asks of its SimPy environment outside ``_loop``."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock

    @property
    def now(self) -> float:
        return self._clock()

    def process(self, generator: Any) -> None:
        generator.close()  # the SimPy step loop never runs; LiveEngine.run drives the node


def _no_token(t_s: float, idx: int) -> None:
    """A sequence that has left the engine makes no more tokens (stands in for its handler's callback)."""


def _gone() -> bool:
    return False


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the token engine stopped", exc_info=task.exception())


class LiveEngine(ServingNode):
    """sim.node.ServingNode driven by asyncio in real time. Call :meth:`start` inside a running loop.

    A server runs for days, so nothing may pile up per request: a sequence that finishes or is
    cancelled drops its callbacks at once (they hold the handler's connection, buffers, stream state
    and text generator: kept, they grew the server by ~14 KB a stream in ``bench/soak.py``), and
    ``all_seqs`` keeps the last ``keep_seqs`` sequences only (None: all of them, which a recording
    needs for its request traces).
    """

    def __init__(self, spec: ServerSpec | None = None, *, seed: int = 1, log: Any = None,
                 clock: Callable[[], float] = time.monotonic, keep_seqs: int | None = None) -> None:
        self.clock = clock
        self.tee = TeeLog([log])
        super().__init__(_Clock(clock), spec or ServerSpec(),  # type: ignore[arg-type,call-arg]
                         rng_for(seed, RNG_VICTIM), self.tee)
        if keep_seqs is not None:
            self.all_seqs = deque(maxlen=keep_seqs)  # type: ignore[assignment]
        self.seed = seed
        self._event: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.stepping = False  # a step is in flight
        self.last_step: tuple[float, int, int, float] | None = None  # (t, batch_size, batch_tokens, duration)
        self.tokens_generated = 0
        self.tokens_after_detach = 0  # tokens made for sequences whose client was already seen gone
        self.zombie_streams = 0  # sequences given a token by a step planned after their client left

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
                     on_token: Callable[[float, int], None], alive: Callable[[], bool] | None = None) -> LiveSequence:
        return LiveSequence(req_id, self.clock(), max(1, prompt_tokens), max(1, output_tokens), on_token, alive)

    def wake(self) -> None:
        if self._event is not None:
            self._event.set()

    def detach(self, seq: LiveSequence) -> None:
        """The client is gone: record what it had, and drop it at the next step boundary."""
        seq.mark_detached(self.clock())
        self.cancel(seq)

    def active(self) -> int:
        return len(self.waiting) + len(self.running) + len(self.swapped)

    # ------------------------------------------------------------------ the step loop
    @staticmethod
    def _release(s: Sequence) -> None:
        """``s`` has left (finished or cancelled): let go of its handler's callbacks."""
        s.on_token = _no_token
        if isinstance(s, LiveSequence):
            s.alive = _gone

    def _drop_cancelled(self, now: float) -> None:
        dropped = [s for queue in (self.waiting, self.running, self.swapped) for s in queue if s.cancel_requested]
        super()._drop_cancelled(now)
        for s in dropped:
            self._release(s)

    def _reap(self, now: float) -> bool:
        """Mark the sequences whose client is gone; True if there were any."""
        found = False
        for queue in (self.waiting, self.running, self.swapped):
            for s in queue:
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

    async def run(self) -> None:
        assert self._event is not None
        event = self._event
        spec = self.spec
        d0, d1 = spec.d0_s, spec.d1_s
        prev_end: float | None = None  # nominal end of the previous step while the node stays busy
        while True:
            now = self.clock()
            # drop what cancel() or a closed transport marked (ServingNode skips the scan when nothing was)
            if self._reap(now) or getattr(self, "_cancel_pending", True):
                self._cancel_pending = False
                self._drop_cancelled(now)
            planned_s = now  # departures seen by now have been dropped above
            decodes, prefills = self._plan(now)
            if not decodes and not prefills:
                prev_end = None
                event.clear()
                ready = min((s.ready_at(now) for s in self.running), default=float("inf"))  # = _next_ready
                timeout = max(ready - now, 1e-4) if ready < float("inf") else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), timeout)
                continue
            batch_tokens = len(decodes) + sum(s.prompt_tokens for s in prefills)
            duration = d0 + d1 * batch_tokens
            self.steps += 1
            # back-to-back steps keep their nominal schedule: a late wake-up is made up next step
            start = prev_end if prev_end is not None and 0 <= now - prev_end <= MAX_LATE_S else now
            end = start + duration
            self.stepping = True
            try:
                await asyncio.sleep(max(0.0, end - self.clock()))
            finally:
                self.stepping = False
            prev_end = end
            self.busy_s += duration
            now = self.clock()
            made = 0
            for s in prefills:
                self._make_token(s, now)
                self._count_detached(s, planned_s)
                if s.state == FINISHED:
                    self._release(s)
                made += 1
            for s in decodes:
                if s.state == RUNNING:
                    self._make_token(s, now)
                    self._count_detached(s, planned_s)
                    if s.state == FINISHED:
                        self._release(s)
                    made += 1
            self.tokens_generated += made
            self.last_step = (now, len(decodes) + len(prefills), batch_tokens, duration)
            self.log.step(now, self.steps, len(decodes) + len(prefills), batch_tokens, duration,
                          len(self.waiting), len(self.running), len(self.swapped), self.completed, self.kv_used)

