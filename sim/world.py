"""One run of one controller over one scenario: build the world, run it, record it.

The world is a serving node, one bottleneck per network path, and a stream per request; a
single control process visits every generating stream once per control interval, asks its
controller for a rate and records the observation. Everything is written to the results
layout of DESIGN.md as it happens (a stream's rows shortly after it ends).

With ``server.replicas`` N > 1 there are N serving nodes (each its own ServingCore, SimPy process, victim
random stream and log: replicas.csv, see sim/record.py) behind ``server.router`` (sim/model/router.py). A
stream is routed when its request reaches the server (the handshake's last ACK, the node's arrival time),
so the router sees every request routed before it in the cores' queues; until then the stream has no
replica (nothing to cancel, observe or wake there). N = 1 is the single node, exactly as before.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import simpy

import controllers
from controllers import Decision, Observation
from scenarios import LoadedScenario
from scenarios.schema import ServerSpec
from sim.model import router as routers
from sim.model.path import PathModel
from sim.model.serving import NodeLog, Sequence, ServingCore
from sim.model.workload import RNG_LOSS_BASE, RNG_VICTIM, Request, rng_for
from sim.network import PathRuntime, build_path
from sim.node import ServingNode
from sim.oracle import PathKnowledge, SimOracleView
from sim.record import Recorder, ReplicaLog
from sim.stream import SimStream

FINALIZE_GRACE_S = 5.0  # a stream's rows are written this long after it ends (late ACKs fill t_acked)
ACK_DRAIN_S = 2.0  # after the last reader finishes, the last ACKs are still on their way back


@dataclass(frozen=True)
class RunStats:
    controller: str
    sim_end_s: float
    wall_s: float
    events: int  # SimPy events scheduled
    streams: int
    packets: int = 0  # data segments offered to the bottlenecks (retransmissions and cross traffic included)
    tokens: int = 0  # tokens generated


def run_controller(loaded: LoadedScenario, requests: list[Request], name: str, params: dict[str, Any] | None,
                   out_dir: Path, seed: int, progress: Callable[[float], None] | None = None) -> RunStats:
    """Simulate the scenario with controller ``name`` and write DIR/<name>/*.csv."""
    wall0 = time.perf_counter()
    with _no_gc_passes():
        end_s, events, packets, tokens = _simulate(loaded, requests, name, params, out_dir, seed, progress)
    return RunStats(name, end_s, time.perf_counter() - wall0, events, len(requests), packets, tokens)


class Replicas:
    """``server.replicas`` serving nodes behind ``server.router``; ``seqs``: every request routed, in order."""

    def __init__(self, env: simpy.Environment, spec: ServerSpec, seed: int, logs: list[NodeLog]) -> None:
        # replica 0 draws victims from the single node's stream; replica i > 0 from its own
        self.nodes = [ServingNode(env, spec, rng_for(seed, RNG_VICTIM) if i == 0
                                  else np.random.default_rng([seed, RNG_VICTIM, i]), log)
                      for i, log in enumerate(logs)]
        self.cores: list[ServingCore] = [n.core for n in self.nodes]
        self.router = routers.make(spec.router)
        self.seqs: list[Sequence] = []

    def route(self, seq: Sequence) -> ServingNode:
        self.seqs.append(seq)
        return self.nodes[self.router.choose(seq, self.cores)]


class RoutedNode:
    """One stream's serving node among the replicas: what SimStream calls a node (``env``, ``submit``,
    ``cancel``, ``observe``, ``wake``), routed at ``submit``; what the oracle calls a core (``memory_short``)."""

    __slots__ = ("env", "node", "replicas")

    def __init__(self, env: simpy.Environment, replicas: Replicas) -> None:
        self.env = env
        self.replicas = replicas
        self.node: ServingNode | None = None

    def submit(self, seq: Sequence) -> None:
        self.node = node = self.replicas.route(seq)
        node.submit(seq)
        if seq.cancel_requested:  # the client left before its request arrived: the replica drops it
            node.cancel(seq)

    def cancel(self, seq: Sequence) -> None:
        if self.node is not None:
            self.node.cancel(seq)
        else:
            seq.cancel_requested = True

    def observe(self, req_id: str, obs: Observation, decision: Decision) -> None:
        if self.node is not None:
            self.node.observe(req_id, obs, decision)

    def wake(self) -> None:
        if self.node is not None:
            self.node.wake()

    def memory_short(self) -> bool:
        return self.node is not None and self.node.core.memory_short()


@contextmanager
def _no_gc_passes() -> Iterator[None]:
    """Run without CPython's cyclic garbage collector, then turn it back on (if it was on).

    A run allocates containers (events, segments, rows) at a high rate while its state grows, and
    the collector keeps re-scanning that state: 5-10% of a run, to find almost nothing -- the model
    makes no cyclic garbage per event or per token (a finished stream leaves a few objects in
    cycles, freed by the first pass after the run). Reference counting frees everything else.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _simulate(loaded: LoadedScenario, requests: list[Request], name: str, params: dict[str, Any] | None,
              out_dir: Path, seed: int, progress: Callable[[float], None] | None) -> tuple[float, int, int, int]:
    scn = loaded.scenario
    env = simpy.Environment()
    out_dir.mkdir(parents=True, exist_ok=True)
    n_replicas = scn.server.replicas
    with Recorder(out_dir, scn.clients.ttft_expected_s, scn.server.kv_tokens, n_replicas) as rec:
        replicas: Replicas | None = None
        if n_replicas == 1:
            node = ServingNode(env, scn.server, rng_for(seed, RNG_VICTIM), rec)
        else:
            replicas = Replicas(env, scn.server, seed, [ReplicaLog(rec, i) for i in range(n_replicas)])
        paths: dict[str, PathRuntime] = {
            pname: build_path(env, pname, spec, scn.faults_for(pname), loaded.base_dir,
                              rng_for(seed, RNG_LOSS_BASE + i))
            for i, (pname, spec) in enumerate(scn.paths.items())
        }
        knowledge = {
            pname: PathKnowledge(PathModel.from_spec(spec, scn.faults_for(pname), loaded.base_dir),
                                 scn.max_duration_s)
            for pname, spec in scn.paths.items()
        } if controllers.get(name).cls.needs_oracle else {}
        stop = env.event()
        active: list[SimStream] = []
        all_streams: list[SimStream] = []
        remaining = [len(requests)]
        bpt = scn.workload.bytes_per_token

        def finalize(stream: SimStream) -> None:
            rec.stream(stream)

        def on_end(stream: SimStream) -> None:
            env.timeout(FINALIZE_GRACE_S).callbacks.append(lambda _e: finalize(stream))
            remaining[0] -= 1
            if remaining[0] == 0 and not stop.triggered:
                stop.succeed()

        def arrivals():  # type: ignore[no-untyped-def]
            for req in requests:
                if req.arrival_s > env.now:
                    yield env.timeout(req.arrival_s - env.now)
                controller = controllers.make(name, params)
                where: Any = node if replicas is None else RoutedNode(env, replicas)
                if controller.needs_oracle:
                    controller.attach_oracle(SimOracleView(req, knowledge[req.path], bpt,
                                                           node.core if replicas is None else where))
                s = SimStream(req, bpt, where, paths[req.path], controller, on_end, scn.clients.ttft_expected_s)
                active.append(s)
                all_streams.append(s)

        def control_loop():  # type: ignore[no-untyped-def]
            interval = scn.control_interval_s
            tick = 0
            while True:
                now = env.now
                keep = []
                if knowledge:
                    for k in knowledge.values():
                        k.generating = 0
                    for s in active:
                        if s.generating:
                            knowledge[s.req.path].generating += 1
                for s in active:
                    if s.generating:
                        obs = s.control(now)
                        rec.telemetry(obs, s.ctl.rate_tps)
                        keep.append(s)
                active[:] = keep
                for p in paths.values():
                    rec.link(now, p.name, p.capacity.rate_bps_at(now), p.link.backlog_bytes())
                tick += 1
                if progress is not None and tick % 10 == 0:
                    progress(now)
                yield env.timeout(interval)

        def deadline():  # type: ignore[no-untyped-def]
            yield env.timeout(scn.max_duration_s)
            if not stop.triggered:
                stop.succeed()

        env.process(arrivals())
        env.process(control_loop())
        env.process(deadline())
        if requests:
            env.run(until=stop)
        end_s = env.now
        if end_s < scn.max_duration_s:
            env.run(until=end_s + ACK_DRAIN_S)
        for s in all_streams:  # streams cut off by max_duration_s, and those still in their grace period
            if not s.ended:
                s.reader.cut(end_s)
        rec.flush_streams(all_streams)
        seqs = node.core.all_seqs if replicas is None else replicas.seqs
        rec.request_traces(seqs)
        events = next(env._eid)  # SimPy keeps the event count only here
    packets = sum(p.link.sent_pkts for p in paths.values())
    return end_s, events, packets, sum(q.generated for q in seqs)
