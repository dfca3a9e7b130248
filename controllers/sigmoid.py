"""Sigmoid: a health score from RTT inflation and retransmits, mapped through a logistic curve.

Origin: seed 000, eBPF-TokenFlow's hint server ("基于 RTT 和重传计数动态调整速率（使用 Sigmoid
映射）"): the network's health decides the token rate, blind to the reader.

The law, per interval:

* RTT inflation ``x = srtt / baseline`` where the baseline is the smallest RTT seen on the stream
  (the path's propagation delay; queueing makes srtt grow above it). ``rtt_p95_ms`` stands in
  when srtt is unknown; with neither, the previous health is kept.
* congestion score ``z = steepness * ((x - rtt_ratio_mid) + retrans_weight * retrans)``: each
  retransmitted segment this interval counts like ``retrans_weight`` of RTT inflation.
* health ``h = sigmoid(-z) / sigmoid(-z_best)``, where ``z_best`` is the score of a perfect
  interval (x = 1, no retransmits): exactly 1 on a clean path, -> 0 as the path degrades, and
  0.5-ish at ``x = rtt_ratio_mid``.
* rate ``min_tps + h * (max_tps - min_tps)``: monotone non-increasing in RTT and retransmits.
"""

from __future__ import annotations

import math

from pydantic import Field

from controllers.base import Controller, Decision, Observation, Params
from controllers.registry import register
from controllers.signals import RttBaseline


class SigmoidParams(Params):
    min_tps: float = Field(default=5.0, gt=0, description="rate on a dead path (tokens/s)")
    max_tps: float = Field(default=60.0, gt=0, description="rate on a healthy path (tokens/s)")
    rtt_ratio_mid: float = Field(default=2.0, gt=1, description="srtt / baseline at the sigmoid's midpoint")
    steepness: float = Field(default=4.0, gt=0, description="logistic slope per unit of RTT ratio")
    retrans_weight: float = Field(default=0.5, gt=0, description="RTT-ratio units one retransmitted segment counts as")


def _sigmoid(u: float) -> float:
    if u >= 0:
        return 1.0 / (1.0 + math.exp(-u))
    e = math.exp(u)  # no overflow for very negative u
    return e / (1.0 + e)


@register("Sigmoid health (seed 000)", "#9467bd")
class Sigmoid(Controller):
    name = "sigmoid"
    Params = SigmoidParams
    params: SigmoidParams

    def reset(self) -> None:
        self._baseline = RttBaseline()
        self._health = 1.0

    def health(self, rtt_ratio: float, retrans: int) -> float:
        p = self.params
        z = p.steepness * ((rtt_ratio - p.rtt_ratio_mid) + p.retrans_weight * max(0, retrans))
        z_best = p.steepness * (1.0 - p.rtt_ratio_mid)
        return min(1.0, _sigmoid(-z) / _sigmoid(-z_best))

    def decide(self, obs: Observation) -> Decision:
        p = self.params
        self._baseline.update(obs)
        rtt = obs.srtt_ms if obs.srtt_ms is not None else obs.rtt_p95_ms
        if rtt is not None or obs.retrans > 0:
            ratio = self._baseline.ratio(rtt) if rtt is not None else 1.0
            self._health = self.health(ratio, obs.retrans)
        lo, hi = min(p.min_tps, p.max_tps), max(p.min_tps, p.max_tps)
        return Decision(lo + self._health * (hi - lo))
