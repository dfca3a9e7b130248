"""The serving node in the simulator: a SimPy process driving :class:`sim.model.serving.ServingCore`.

The node's logic (steps, budget, KV memory, preemption and its cost, pacing credit, the scheduler)
lives in ``sim/model/serving.py`` with time passed in; this module only lets simulated time pass:
``plan(env.now)``, a timeout of the step's duration, ``finish(step, env.now)``; when nothing can
step, sleep until ``next_ready`` or a wake-up (arrival, cancel, a new rate).

The live engine (``live/serve/backends/engine.py``) drives the same core from an asyncio task. The node's state is
the core's: ``node.core.running``, ``node.core.kv_used``, ``node.core.all_seqs``, ...
"""

from __future__ import annotations

import numpy as np
import simpy

from controllers import Decision, Observation
from scenarios.schema import ServerSpec
from sim.model.serving import CANCELLED, FINISHED, NodeLog, Sequence, ServingCore

__all__ = ["ServingNode"]


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
