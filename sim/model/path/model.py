"""A scenario path as one model: ``PathModel.from_spec(spec, faults, base_dir)``.

What a ``scenarios.schema.PathSpec`` and its faults mean, written once for every user: the capacity
(constant, schedule or trace, with rate and outage faults as windows over it), the loss process
(the path's loss with the loss faults as windows over it), the propagation delay with the delay
faults, the nominal rate and the default queue. Faults are known in advance, so they become windows
on capacity, loss and delay rather than processes that poke at a link.

Users: the simulator's link (``sim.network.build_path``), the live user-space link
(``live.lab.tunlink``: the timeline and the conditions before it starts), the oracle's view of the
future (``sim.oracle``), and the live fault player's queue rule (``live.kernel.faults``).

The model itself holds no state that moves: ``capacity()``, ``loss(rng)`` and ``bottleneck(rng)``
make fresh objects (a capacity keeps a cursor and a loss model its random stream, so the link and
anyone reading ahead must not share one), and one model can feed several of them -- the live link
builds its timeline and its pre-start link from one model with two random streams.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
from sim.model.path.bottleneck import Bottleneck
from sim.model.path.capacity import (
    Capacity,
    ConstantCapacity,
    FaultedCapacity,
    RateWindow,
    ScheduleCapacity,
    TraceCapacity,
)
from sim.model.path.loss import (
    BernoulliLoss,
    GilbertElliottLoss,
    LossModel,
    NoLoss,
    TimedLoss,
    gilbert_elliott_mean_loss,
)

__all__ = [
    "CAPACITY_GRID_S",
    "MIN_QUEUE_BYTES",
    "CapacityGrid",
    "PathModel",
    "PathShape",
    "default_queue_bytes",
    "nominal_rate_bps",
]

MIN_QUEUE_BYTES = 64 * 1024  # default buffer floor: a small home router
CAPACITY_GRID_S = 0.1  # bins of the capacity read ahead (CapacityGrid)

_LossSpec = Bernoulli | GilbertElliott | GilbertElliottFault | LossFault


def nominal_rate_bps(spec: PathSpec, trace_ms: np.ndarray | None = None) -> float:
    """The rate the path is sold at: its constant rate, the top of its schedule, or its trace's mean
    rate (``trace_ms``: the trace's opportunities, needed for a trace path only)."""
    if spec.rate_mbps is not None:
        return spec.rate_mbps * 1e6
    if spec.rate_schedule is not None:
        return max(p.rate_mbps for p in spec.rate_schedule) * 1e6
    if trace_ms is None:
        raise ValueError("a trace path's nominal rate needs its trace")
    return mean_rate_bps(trace_ms)


def default_queue_bytes(nominal_bps: float, rtt_ms: float) -> int:
    """The bottleneck buffer when the path gives none: one bandwidth-delay product at the nominal
    rate, at least ``MIN_QUEUE_BYTES``. Sized for the nominal rate, not the rate in force: a real
    router's buffer does not shrink when its link fades."""
    return int(max(MIN_QUEUE_BYTES, nominal_bps / 8 * rtt_ms / 1000))


def _loss_of(spec: _LossSpec, rng: np.random.Generator) -> LossModel:
    if isinstance(spec, Bernoulli | LossFault):
        return BernoulliLoss(spec.p, rng)
    return GilbertElliottLoss(spec.p, spec.r, spec.loss_bad, spec.loss_good, rng)


def _mean_loss(spec: _LossSpec) -> float:
    if isinstance(spec, GilbertElliott | GilbertElliottFault):
        return gilbert_elliott_mean_loss(spec.p, spec.r, spec.loss_bad, spec.loss_good)
    return float(spec.p)


@dataclass(frozen=True)
class PathShape:
    """The path at one instant, as a rate shaper would be set for it."""

    rate_bps: float  # the rate in force (a trace counted at its mean rate; 0 in an outage)
    one_way_s: float  # propagation delay plus the delay faults in force
    loss_rate: float  # long-run loss rate of the loss model in force
    queue_bytes: int


@dataclass(frozen=True)
class CapacityGrid:
    """The path's capacity read ahead: its rate at the middle of each ``CAPACITY_GRID_S`` bin up to a
    horizon (what the oracle knows of the future)."""

    bps: np.ndarray

    def capacity_bps(self, t0_s: float, t1_s: float) -> float:
        """Mean rate of the bins over ``[t0_s, t1_s)`` (at least one bin; past the horizon, the last)."""
        grid = self.bps
        i0 = max(0, int(t0_s / CAPACITY_GRID_S))
        i1 = max(i0 + 1, int(np.ceil(t1_s / CAPACITY_GRID_S)))
        seg = grid[min(i0, len(grid) - 1):min(i1, len(grid))]
        return float(seg.mean()) if len(seg) else float(grid[-1])


@dataclass(frozen=True)
class PathModel:
    """One scenario path with its faults (build with :meth:`from_spec`)."""

    spec: PathSpec
    faults: tuple[Any, ...]  # the path's faults (scenarios.schema models)
    trace_ms: np.ndarray | None  # a trace path's delivery opportunities (ms)
    nominal_rate_bps: float
    queue_bytes: int  # the spec's, else default_queue_bytes at the nominal rate
    one_way_s: float  # propagation delay each way, rtt / 2
    delay_windows: tuple[tuple[float, float, float], ...]  # (start_s, end_s, added one-way delay s)
    rate_windows: tuple[RateWindow, ...]  # the rate and outage faults

    @classmethod
    def from_spec(cls, spec: PathSpec, faults: Sequence[Any], base_dir: Path) -> PathModel:
        """``faults``: the path's, as ``scenario.faults_for(path)`` gives them; a trace is resolved
        against ``base_dir`` (the scenario's folder)."""
        trace_ms = None if spec.trace is None else load_mahimahi(resolve_trace(spec.trace, base_dir))
        nominal = nominal_rate_bps(spec, trace_ms)
        rate_windows = tuple(
            RateWindow(f.at_s, f.end_s, factor=f.factor,
                       rate_bps=None if f.rate_mbps is None else f.rate_mbps * 1e6, outage=False)
            if isinstance(f, RateFault)
            else RateWindow(f.at_s, f.end_s, factor=None, rate_bps=None, outage=True)
            for f in faults
            if isinstance(f, RateFault | OutageFault)
        )
        return cls(
            spec=spec,
            faults=tuple(faults),
            trace_ms=trace_ms,
            nominal_rate_bps=nominal,
            queue_bytes=spec.queue_bytes or default_queue_bytes(nominal, spec.rtt_ms),
            one_way_s=spec.rtt_ms / 2000,
            delay_windows=tuple((f.at_s, f.end_s, f.delay_ms / 1000) for f in faults if isinstance(f, DelayFault)),
            rate_windows=rate_windows,
        )

    # ------------------------------------------------------------------ fresh stateful parts
    def base_capacity(self) -> Capacity:
        """The path's own capacity, without its faults."""
        spec = self.spec
        if spec.rate_mbps is not None:
            return ConstantCapacity(spec.rate_mbps * 1e6)
        if spec.rate_schedule is not None:
            return ScheduleCapacity([(p.at_s, p.rate_mbps * 1e6) for p in spec.rate_schedule])
        assert self.trace_ms is not None
        return TraceCapacity(self.trace_ms)

    def capacity(self) -> Capacity:
        """The path's capacity with its rate and outage faults laid over it (a fresh object)."""
        base = self.base_capacity()
        return FaultedCapacity(base, self.rate_windows) if self.rate_windows else base

    def loss(self, rng: np.random.Generator) -> LossModel | None:
        """The path's loss process: its base loss with the loss faults as time windows over it (None:
        no loss). Every model draws from ``rng``, so the same seed loses the same packets wherever the
        model runs."""
        loss = None if self.spec.loss is None else _loss_of(self.spec.loss, rng)
        windows = [(f.at_s, f.end_s, _loss_of(f, rng))
                   for f in self.faults if isinstance(f, LossFault | GilbertElliottFault)]
        if windows:
            return TimedLoss(loss or NoLoss(), windows)
        return loss

    def bottleneck(self, rng: np.random.Generator) -> Bottleneck:
        """The downlink's bottleneck: capacity, queue, loss (drawn from ``rng``) and delay windows."""
        return Bottleneck(self.capacity(), self.one_way_s, self.queue_bytes, self.loss(rng), self.delay_windows)

    # ------------------------------------------------------------------ reading the model
    def loss_rate(self, t_s: float) -> float:
        """Long-run loss rate of the loss model in force at ``t_s`` (the last loss fault covering it,
        else the path's own loss)."""
        for f in reversed(self.faults):
            if isinstance(f, LossFault | GilbertElliottFault) and f.at_s <= t_s < f.end_s:
                return _mean_loss(f)
        return 0.0 if self.spec.loss is None else _mean_loss(self.spec.loss)

    def shape_at(self, t_s: float) -> PathShape:
        """The path at ``t_s`` as one constant shape: the rate in force (a trace at its mean rate, with
        the rate faults over it), the one-way delay with the delay faults in force, the loss rate in
        force and the queue."""
        base = ConstantCapacity(self.nominal_rate_bps) if self.trace_ms is not None else self.base_capacity()
        rate_bps = (FaultedCapacity(base, self.rate_windows) if self.rate_windows else base).rate_bps_at(t_s)
        one_way_s = self.one_way_s + sum(d for s, e, d in self.delay_windows if s <= t_s < e)
        return PathShape(rate_bps, one_way_s, self.loss_rate(t_s), self.queue_bytes)

    def capacity_grid(self, horizon_s: float) -> CapacityGrid:
        """The capacity read ahead over ``[0, horizon_s]`` (from a fresh capacity object)."""
        cap = self.capacity()
        n = int(np.ceil(horizon_s / CAPACITY_GRID_S)) + 1
        return CapacityGrid(np.array([cap.rate_bps_at((i + 0.5) * CAPACITY_GRID_S) for i in range(n)]))
