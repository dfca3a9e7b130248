"""Predictive: seed 000's GBDT RTT forecast, feeding the ``mpc`` controller's capacity prediction.

Origin: seed 000's hint server predicts the link's next RTT with a gradient-boosted model and paces
ahead of it. Here the forecaster is the one ``python -m analysis train`` fits (a
HistGradientBoostingRegressor predicting the next interval's p95 RTT from lags of RTT inflation and
retransmits, :mod:`controllers.features`; default: the bundled ``controllers/models/rtt_forecast.skops``),
and its forecast feeds :class:`controllers.mpc.Mpc`, which plans the rate.

The law: RobustMPC exactly (``controllers/mpc.py``), except its predicted delivery rate ``C``. A
queue growing at the bottleneck shows as RTT rising before it shows as delivery falling, and with
the window it has a flow delivers about cwnd / RTT; so when the forecast p95 RTT of the next
interval, ``f``, exceeds the current p95 ``p`` by more than ``deadband``, the prediction is scaled by
``max(min_scale, p / f)``. When MPC had no path-limited sample (``C`` infinite: we, not the path,
limited delivery), the measured delivery rate scaled the same way stands in, so a forecast rise
throttles generation before the backlog appears. Otherwise MPC runs unchanged.
"""

from __future__ import annotations

import math

from pydantic import Field

from controllers.base import Observation
from controllers.features import FeatureState
from controllers.mpc import Mpc, MpcParams
from controllers.registry import register


class PredictiveParams(MpcParams):
    model: str | None = Field(default=None, description="RTT forecast model file (.skops); default: the bundled one")
    deadband: float = Field(default=0.1, ge=0, description="relative forecast rise ignored (noise)")
    min_scale: float = Field(default=0.25, gt=0, le=1, description="floor on the capacity scaling")


@register("GBDT RTT forecast + MPC (seed 000)", "#17becf")
class Predictive(Mpc):
    name = "predictive"
    Params = PredictiveParams
    params: PredictiveParams

    def __init__(self, params: PredictiveParams | None = None) -> None:
        from controllers.telemetry_models import RttForecaster

        p = params if params is not None else PredictiveParams()
        self._forecaster = RttForecaster.load(p.model)  # loaded once per file and process (cached)
        super().__init__(p)

    def reset(self) -> None:
        super().reset()
        self._features = FeatureState()
        self.forecast_ms: float | None = None

    def predict_capacity(self, obs: Observation) -> float:
        c = super().predict_capacity(obs)
        f = self._features
        f.update(obs.t_s, obs.srtt_ms, obs.rtt_p95_ms, obs.rtt_min_ms, obs.retrans)
        self.forecast_ms = self._forecaster.predict_p95_ms(f)
        now_ms = f.p95_ms
        if self.forecast_ms is None or now_ms is None or self.forecast_ms <= now_ms * (1 + self.params.deadband):
            return c
        scale = max(self.params.min_scale, now_ms / self.forecast_ms)
        if math.isinf(c):
            measured = self._meter.rate_tps()
            return measured * scale if measured > 0 else c
        return c * scale
