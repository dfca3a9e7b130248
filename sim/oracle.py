"""What the simulator knows that no live server could: the ``OracleView`` the oracle controller reads.

Capacity and loss come from the path model (``sim.model.path.PathModel``) the link itself is built
from: the capacity read ahead in 100 ms bins up to the run's horizon (on a fresh capacity object: the
link's own keeps a cursor and must only move forward), the loss rate of the model in force.
"""

from __future__ import annotations

from sim.model.path import PathModel
from sim.model.serving import ServingCore
from sim.model.workload import Request


class PathKnowledge:
    """One path as the oracle knows it: its model read ahead to ``horizon_s``, and how many streams
    share it now (``generating``, kept by the world's control loop)."""

    def __init__(self, model: PathModel, horizon_s: float) -> None:
        self.model = model
        self.grid = model.capacity_grid(horizon_s)
        self.generating = 0

    def capacity_bps(self, t0_s: float, t1_s: float) -> float:
        return self.grid.capacity_bps(t0_s, t1_s)

    def loss_rate(self, t_s: float) -> float:
        return self.model.loss_rate(t_s)


class SimOracleView:
    """One stream's view: its reader exactly, its path's future capacity and current sharing."""

    def __init__(self, req: Request, path: PathKnowledge, bytes_per_token: int,
                 core: ServingCore | None = None) -> None:
        self.reading_tps = req.reading_tps
        self.patience_s = req.patience_s
        self.output_tokens = req.output_tokens
        self.bytes_per_token = bytes_per_token
        self.base_rtt_s = path.model.spec.rtt_ms / 1000
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
