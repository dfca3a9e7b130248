"""Build a scenario's network paths on the simulator's clock: a bottleneck Link per path over the
clock-free path model (``sim.model.path.PathModel``: capacity, loss, queue and delay with the faults
as windows), the reverse (ACK) delay, TCP settings, and any bulk cross-traffic flows sharing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import simpy

from scenarios.schema import PathSpec
from sim.link import Link
from sim.model.path import Capacity, PathModel
from sim.tcp import TcpConfig, TcpConnection


@dataclass
class PathRuntime:
    name: str
    spec: PathSpec
    link: Link
    capacity: Capacity
    ack_delay_s: float
    tcp: TcpConfig
    cross: list[TcpConnection] = field(default_factory=list)


def build_path(env: simpy.Environment, name: str, spec: PathSpec, faults: list, base_dir: Path,
               rng: np.random.Generator) -> PathRuntime:
    """Path ``name`` with its faults; its losses draw from ``rng`` (the path's own stream)."""
    model = PathModel.from_spec(spec, faults, base_dir)
    capacity = model.capacity()
    link = Link(env, capacity, model.one_way_s, model.queue_bytes, model.loss(rng),
                delay_windows=model.delay_windows, name=name)
    tcp = TcpConfig(cc=spec.cc, mss_bytes=spec.mss_bytes, init_cwnd_pkts=spec.init_cwnd_pkts)
    path = PathRuntime(name, spec, link, capacity, model.one_way_s, tcp)
    if spec.cross_traffic is not None:
        ct = spec.cross_traffic
        cfg = TcpConfig(cc=ct.cc, mss_bytes=spec.mss_bytes, init_cwnd_pkts=spec.init_cwnd_pkts)
        env.process(_cross_traffic(env, path, ct.flows, ct.start_s, ct.stop_s, cfg))
    return path


def _cross_traffic(env: simpy.Environment, path: PathRuntime, flows: int, start_s: float, stop_s: float | None,
                   cfg: TcpConfig):  # type: ignore[no-untyped-def]
    yield env.timeout(start_s)
    for i in range(flows):
        path.cross.append(TcpConnection(env, path.link, path.ack_delay_s, cfg, bulk=True, name=f"{path.name}-bulk{i}"))
    if stop_s is not None:
        yield env.timeout(max(0.0, stop_s - start_s))
        for c in path.cross:
            c.close()
