"""Anomaly: seed 000's "AI plane" -- an Isolation Forest decides whether the path looks abnormal, and
its verdict gates the sigmoid rate.

Origin: seed 000 (eBPF-TokenFlow / SmartNetDiag): the hint server runs an Isolation Forest over RTT
and retransmit features and lowers the token rate when it flags the link. Here the forest is the one
``python -m analysis train`` fits (a StandardScaler + IsolationForest pipeline over the scale-free
features of :mod:`controllers.features`; default: the bundled ``controllers/models/anomaly.skops``,
trained on simulator telemetry by ``scripts/train_default_models.py``).

The law, per interval:

* the stream's :class:`~controllers.features.FeatureState` takes the observation; the forest scores
  its anomaly vector: ``s`` = sklearn's ``decision_function`` (negative = anomalous);
* the sigmoid controller's health-based rate ``r_sig`` (seed 000's mapping, :mod:`controllers.sigmoid`);
* gate ``g = 1`` for ``s >= 0``, falling linearly to 0 at ``s = -gate_width``;
* rate ``min_tps + g * (r_sig - min_tps)``: a normal-looking path gets the sigmoid rate, a path the
  forest finds abnormal is throttled towards ``min_tps`` in proportion to how abnormal.

Before the stream has an RTT the gate is open (nothing to judge). Cost: one compiled forest
evaluation per call (tens of microseconds; ``bench/model_speed.py``).
"""

from __future__ import annotations

from pydantic import Field

from controllers.base import Controller, Decision, Observation
from controllers.features import FeatureState
from controllers.registry import register
from controllers.sigmoid import Sigmoid, SigmoidParams


class AnomalyParams(SigmoidParams):
    model: str | None = Field(default=None, description="anomaly model file (.skops); default: the bundled one")
    gate_width: float = Field(default=0.1, gt=0, description="anomaly score below 0 at which the gate is shut")


@register("Isolation Forest gate (seed 000)", "#e377c2")
class Anomaly(Controller):
    name = "anomaly"
    Params = AnomalyParams
    params: AnomalyParams

    def __init__(self, params: AnomalyParams | None = None) -> None:
        from controllers.telemetry_models import AnomalyDetector

        p = params if params is not None else AnomalyParams()
        self._detector = AnomalyDetector.load(p.model)  # loaded once per file and process (cached)
        self._sigmoid = Sigmoid(SigmoidParams(**{k: getattr(p, k) for k in SigmoidParams.model_fields}))
        super().__init__(p)

    def reset(self) -> None:
        self._features = FeatureState()
        self._sigmoid.reset()
        self.score = 0.0
        self.gate = 1.0

    def decide(self, obs: Observation) -> Decision:
        p = self.params
        sig = self._sigmoid.decide(obs).rate_tps
        assert sig is not None
        self._features.update(obs.t_s, obs.srtt_ms, obs.rtt_p95_ms, obs.rtt_min_ms, obs.retrans)
        vector = self._features.anomaly_vector()
        if vector is not None:
            self.score = self._detector.score(vector)
            self.gate = 1.0 if self.score >= 0 else max(0.0, 1.0 + self.score / p.gate_width)
        lo = min(p.min_tps, p.max_tps)
        return Decision(lo + self.gate * max(0.0, sig - lo))
