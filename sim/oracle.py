"""What the simulator knows that no live server could: the ``OracleView`` the oracle controller reads.

Capacity comes from a per-path grid (100 ms bins) computed from the same scenario spec the link
uses, on fresh capacity objects (the link's own objects keep a cursor and must only move forward).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scenarios.schema import GilbertElliott, GilbertElliottFault, LossFault, PathSpec
from sim.model.serving import ServingCore
from sim.model.workload import Request
from sim.network import faulted_capacity

GRID_S = 0.1


def capacity_grid_bps(spec: PathSpec, faults: list, base_dir: Path, horizon_s: float) -> np.ndarray:
    cap = faulted_capacity(spec, faults, base_dir)
    n = int(np.ceil(horizon_s / GRID_S)) + 1
    return np.array([cap.rate_bps_at((i + 0.5) * GRID_S) for i in range(n)])


def _mean_loss(m: object) -> float:
    if isinstance(m, GilbertElliott | GilbertElliottFault):
        return m.mean_loss
    return float(getattr(m, "p", 0.0))


@dataclass
class PathKnowledge:
    spec: PathSpec
    faults: list
    grid_bps: np.ndarray
    generating: int = 0  # streams on this path generating now (kept by the world's control loop)
    _loss_windows: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self._loss_windows = [f for f in self.faults if isinstance(f, LossFault | GilbertElliottFault)]

    def capacity_bps(self, t0_s: float, t1_s: float) -> float:
        i0 = max(0, int(t0_s / GRID_S))
        i1 = max(i0 + 1, int(np.ceil(t1_s / GRID_S)))
        seg = self.grid_bps[min(i0, len(self.grid_bps) - 1):min(i1, len(self.grid_bps))]
        return float(seg.mean()) if len(seg) else float(self.grid_bps[-1])

    def loss_rate(self, t_s: float) -> float:
        for f in reversed(self._loss_windows):
            if f.at_s <= t_s < f.end_s:
                return _mean_loss(f)
        return 0.0 if self.spec.loss is None else _mean_loss(self.spec.loss)


class SimOracleView:
    """One stream's view: its reader exactly, its path's future capacity and current sharing."""

    def __init__(self, req: Request, path: PathKnowledge, bytes_per_token: int,
                 core: ServingCore | None = None) -> None:
        self.reading_tps = req.reading_tps
        self.patience_s = req.patience_s
        self.output_tokens = req.output_tokens
        self.bytes_per_token = bytes_per_token
        self.base_rtt_s = path.spec.rtt_ms / 1000
        self._path = path
        self._core = core

    def capacity_bps(self, t0_s: float, t1_s: float) -> float:
        return self._path.capacity_bps(t0_s, t1_s)

    def loss_rate(self, t_s: float) -> float:
        return self._path.loss_rate(t_s)

    def streams_on_path(self, t_s: float) -> int:
        return max(1, self._path.generating)

    def memory_short(self, t_s: float) -> bool:
        """The node's state now (the view is asked at the present only): see ServingCore.memory_short."""
        return self._core is not None and self._core.memory_short()
