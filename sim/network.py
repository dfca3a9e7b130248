"""Build a scenario's network paths: a bottleneck Link per path with its fault windows,
the reverse (ACK) delay, TCP settings, and any bulk cross-traffic flows sharing it.

Faults are known in advance, so they become windows on the link's capacity, loss and delay
rather than processes that poke at it: the link computes exact departure times with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import simpy

from scenarios.schema import (
    Bernoulli,
    DelayFault,
    GilbertElliott,
    GilbertElliottFault,
    LossFault,
    OutageFault,
    PathSpec,
    RateFault,
)
from scenarios.traces import load_mahimahi, mean_rate_bps, resolve_trace
from sim.link import (
    BernoulliLoss,
    Capacity,
    ConstantCapacity,
    FaultedCapacity,
    GilbertElliottLoss,
    Link,
    LossModel,
    RateWindow,
    ScheduleCapacity,
    TimedLoss,
    TraceCapacity,
)
from sim.tcp import TcpConfig, TcpConnection

MIN_QUEUE_BYTES = 64 * 1024  # default buffer floor: a small home router


@dataclass
class PathRuntime:
    name: str
    spec: PathSpec
    link: Link
    capacity: Capacity
    ack_delay_s: float
    tcp: TcpConfig
    cross: list[TcpConnection] = field(default_factory=list)


def _loss_model(spec: Bernoulli | GilbertElliott | GilbertElliottFault | LossFault,
                rng: np.random.Generator) -> LossModel:
    if isinstance(spec, Bernoulli | LossFault):
        return BernoulliLoss(spec.p, rng)
    return GilbertElliottLoss(spec.p, spec.r, spec.loss_bad, spec.loss_good, rng)


def base_capacity(spec: PathSpec, base_dir: Path) -> Capacity:
    if spec.rate_mbps is not None:
        return ConstantCapacity(spec.rate_mbps * 1e6)
    if spec.rate_schedule is not None:
        return ScheduleCapacity([(p.at_s, p.rate_mbps * 1e6) for p in spec.rate_schedule])
    assert spec.trace is not None
    return TraceCapacity(load_mahimahi(resolve_trace(spec.trace, base_dir)))


def nominal_rate_bps(spec: PathSpec, base_dir: Path) -> float:
    if spec.rate_mbps is not None:
        return spec.rate_mbps * 1e6
    if spec.rate_schedule is not None:
        return max(p.rate_mbps for p in spec.rate_schedule) * 1e6
    assert spec.trace is not None
    return mean_rate_bps(load_mahimahi(resolve_trace(spec.trace, base_dir)))


def default_queue_bytes(spec: PathSpec, base_dir: Path) -> int:
    bdp = nominal_rate_bps(spec, base_dir) / 8 * spec.rtt_ms / 1000
    return int(max(MIN_QUEUE_BYTES, bdp))


def faulted_capacity(spec: PathSpec, faults: list, base_dir: Path) -> Capacity:
    """The path's capacity with its rate and outage faults laid over it (a fresh object: capacity
    models keep a cursor, so the link and anyone reading ahead must not share one)."""
    capacity = base_capacity(spec, base_dir)
    windows = [
        RateWindow(f.at_s, f.end_s, factor=f.factor, rate_bps=None if f.rate_mbps is None else f.rate_mbps * 1e6,
                   outage=False)
        if isinstance(f, RateFault)
        else RateWindow(f.at_s, f.end_s, factor=None, rate_bps=None, outage=True)
        for f in faults
        if isinstance(f, RateFault | OutageFault)
    ]
    return FaultedCapacity(capacity, windows) if windows else capacity


def loss_model_for(spec: PathSpec, faults: list, rng: np.random.Generator) -> LossModel | None:
    """The path's loss process: its base loss with the loss faults as time windows over it (None: no loss).

    Every model draws from `rng`, so the same seed gives the same losses wherever the model runs
    (the simulator's link, or `live.tunlink`'s user-space link)."""
    loss: LossModel | None = None if spec.loss is None else _loss_model(spec.loss, rng)
    loss_windows = [(f.at_s, f.end_s, _loss_model(f, rng))
                    for f in faults if isinstance(f, LossFault | GilbertElliottFault)]
    if loss_windows:
        from sim.link import NoLoss

        loss = TimedLoss(loss or NoLoss(), loss_windows)
    return loss


def build_path(env: simpy.Environment, name: str, spec: PathSpec, faults: list, base_dir: Path,
               rng: np.random.Generator) -> PathRuntime:
    capacity = faulted_capacity(spec, faults, base_dir)
    loss = loss_model_for(spec, faults, rng)
    delay_windows = [(f.at_s, f.end_s, f.delay_ms / 1000) for f in faults if isinstance(f, DelayFault)]
    one_way_s = spec.rtt_ms / 2000
    queue = spec.queue_bytes or default_queue_bytes(spec, base_dir)
    link = Link(env, capacity, one_way_s, queue, loss, delay_windows=delay_windows, name=name)
    tcp = TcpConfig(cc=spec.cc, mss_bytes=spec.mss_bytes, init_cwnd_pkts=spec.init_cwnd_pkts)
    path = PathRuntime(name, spec, link, capacity, one_way_s, tcp)
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
