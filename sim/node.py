"""The serving node in the simulator: a SimPy process driving :class:`sim.model.serving.ServingCore`.

The node's logic (steps, budget, KV memory, preemption and its cost, pacing credit, the scheduler)
lives in ``sim/model/serving.py`` with time passed in; this module only lets simulated time pass:
``plan(env.now)``, a timeout of the step's duration, ``finish(step, env.now)``; when nothing can
step, sleep until ``next_ready`` or a wake-up (arrival, cancel, a new rate).

The attributes and private methods the live engine used when it subclassed this class
(``waiting``, ``running``, ``_plan``, ``_make_token``, ``_drop_cancelled``, ...) delegate to the core
until the live engine composes the core itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import simpy

from controllers import Decision, Observation
from scenarios.schema import ServerSpec
from sim.model.serving import (
    _EPS,
    _READY,
    CANCELLED,
    CREDIT_CAP_TOKENS,
    FINISHED,
    RUNNING,
    SWAPPED,
    SWAPPING_IN,
    WAITING,
    NodeLog,
    PacingCredit,
    Sequence,
    ServingCore,
    Step,
)

__all__ = ["CANCELLED", "CREDIT_CAP_TOKENS", "FINISHED", "RUNNING", "SWAPPED", "SWAPPING_IN", "WAITING", "NodeLog",
           "PacingCredit", "Sequence", "ServingCore", "ServingNode", "Step"]
_ = (_EPS, _READY)  # re-exported for old importers


class ServingNode:
    def __init__(self, env: simpy.Environment, spec: ServerSpec, rng: np.random.Generator, log: NodeLog) -> None:
        self.env = env
        self.spec = spec
        self.rng = rng
        self.log = log
        self.core = ServingCore(spec, rng, log)
        self._keep_obs = self.core.scheduler.uses_observations
        self._wake: simpy.Event | None = None
        env.process(self._loop())

    # ------------------------------------------------------------------ inputs
    def submit(self, seq: Sequence) -> None:
        self.core.add(seq, self.env.now)
        self.wake()

    def cancel(self, seq: Sequence) -> None:
        """The client left: the stream is dropped at the next step boundary."""
        if seq.state in (FINISHED, CANCELLED):
            return
        seq.cancel_requested = True  # (also for a sequence the core was never given)
        self.core.cancel_pending = True
        self.wake()

    def observe(self, req_id: str, obs: Observation, decision: Decision) -> None:
        if self._keep_obs:
            self.core.observe(req_id, obs, decision)

    def wake(self) -> None:
        """Something changed (arrival, cancel, a new rate): an idle node re-plans now."""
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    # ------------------------------------------------------------------ the step loop
    def _loop(self):  # type: ignore[no-untyped-def]
        env = self.env
        core = self.core
        while True:
            now = env.now
            step = core.plan(now)
            if step is None:
                self._wake = env.event()
                ready = core.next_ready(now)
                if ready is not None:
                    yield env.any_of([self._wake, env.timeout(max(ready - now, 1e-6))])
                else:
                    yield self._wake
                self._wake = None
                continue
            yield env.timeout(step.duration_s)
            core.finish(step, env.now)

    # ------------------------------------------------------------------ the core's state, by its old names
    @property
    def waiting(self) -> list[Sequence]:
        return self.core.waiting

    @property
    def running(self) -> list[Sequence]:
        return self.core.running

    @property
    def swapped(self) -> list[Sequence]:
        return self.core.swapped

    @property
    def all_seqs(self) -> list[Sequence]:
        return self.core.all_seqs

    @all_seqs.setter
    def all_seqs(self, seqs: list[Sequence]) -> None:  # the live engine bounds it with a deque
        self.core.all_seqs = seqs

    @property
    def kv_used(self) -> int:
        return self.core.kv_used

    @property
    def completed(self) -> int:
        return self.core.completed

    @property
    def steps(self) -> int:
        return self.core.steps

    @steps.setter
    def steps(self, value: int) -> None:
        self.core.steps = value

    @property
    def busy_s(self) -> float:
        return self.core.busy_s

    @busy_s.setter
    def busy_s(self, value: float) -> None:
        self.core.busy_s = value

    @property
    def _cancel_pending(self) -> bool:
        return self.core.cancel_pending

    @_cancel_pending.setter
    def _cancel_pending(self, value: bool) -> None:
        self.core.cancel_pending = value

    def _drop_cancelled(self, now: float) -> None:
        self.core.drop_cancelled(now)

    def _next_ready(self, now: float) -> float:
        ready = self.core.next_ready(now)
        return float("inf") if ready is None else ready

    def _make_token(self, s: Sequence, now: float) -> None:
        self.core._make_token(s, now)

    def _plan(self, now: float) -> tuple[list[Sequence], list[Sequence]]:
        """(decodes, prefills) for a driver that counts steps and logs them itself (the old interface:
        it knows no recomputations, so it serves only ``preemption: swap`` without a swap link)."""
        core = self.core
        if core.incoming:
            core._land(now)
        decodes, prefills, recomputes = core.scheduler.schedule(core, now)
        if recomputes or core.incoming:
            raise NotImplementedError("this driver predates recompute and swap costs: use ServingCore.plan")
        core._preempted = core._resumed = None
        for s in decodes:
            s.last_step_s = now
            if s.rate_tps is not None:
                s.credit -= 1.0
        for s in prefills:
            s.last_step_s = now
            if s.rate_tps is not None:
                s.accrue(now)
                s.credit -= 1.0
        return decodes, prefills

    def __getattr__(self, name: str) -> Any:  # anything else the core has
        if name == "core":
            raise AttributeError(name)
        return getattr(self.core, name)
