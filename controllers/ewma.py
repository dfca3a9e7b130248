"""EWMA: a link-quality coefficient from p95 RTT and retransmits, smoothed into a token rate.

Origin: seed 001, NetDiag-LLM's ``adaptive_token_pacer.py`` ("将 p95 RTT 与重传计数映射为链路质量
系数，用指数滑动平均调整 target token/s"; its CLI defaults ``--min-tps 5 --max-tps 60``, ``80`` for
the hint server). Like the seed it is blind to the reader and uses absolute RTT thresholds.

The law, per interval:

* ``q_rtt = clip((rtt_bad_ms - p95) / (rtt_bad_ms - rtt_good_ms), 0, 1)``: 1 at or below a good
  RTT, 0 at or above a bad one (``srtt_ms`` when the interval had no RTT sample);
* ``q_retx = clip(1 - retrans / retrans_bad, 0, 1)``: retransmits this interval;
* ``q = q_rtt * q_retx`` in [0, 1], kept from the last interval when there is nothing new;
* target ``min_tps + q * (max_tps - min_tps)``, and the rate follows it by an exponentially
  weighted moving average: ``rate += alpha * (target - rate)`` (the first rate is the target).
"""

from __future__ import annotations

from pydantic import Field

from controllers.base import Controller, Decision, Observation, Params
from controllers.registry import register


class EwmaParams(Params):
    min_tps: float = Field(default=5.0, gt=0, description="rate at link quality 0 (tokens/s)")
    max_tps: float = Field(default=60.0, gt=0, description="rate at link quality 1 (tokens/s)")
    alpha: float = Field(default=0.3, gt=0, le=1, description="EWMA weight of the new target")
    rtt_good_ms: float = Field(default=100.0, gt=0, description="p95 RTT at or below which q_rtt = 1")
    rtt_bad_ms: float = Field(default=500.0, gt=0, description="p95 RTT at or above which q_rtt = 0")
    retrans_bad: float = Field(default=5.0, gt=0, description="retransmits per interval at which q_retx = 0")


def _clip01(x: float) -> float:
    return 0.0 if x < 0 else 1.0 if x > 1 else x


@register("EWMA link quality (seed 001)", "#8c564b")
class Ewma(Controller):
    name = "ewma"
    Params = EwmaParams
    params: EwmaParams

    def reset(self) -> None:
        self._q = 1.0
        self._rate_tps: float | None = None

    def quality(self, rtt_ms: float | None, retrans: int) -> float:
        p = self.params
        span = max(p.rtt_bad_ms - p.rtt_good_ms, 1e-9)
        q_rtt = 1.0 if rtt_ms is None else _clip01((p.rtt_bad_ms - rtt_ms) / span)
        return q_rtt * _clip01(1.0 - max(0, retrans) / p.retrans_bad)

    def target_tps(self) -> float:
        p = self.params
        return p.min_tps + self._q * (p.max_tps - p.min_tps)

    def decide(self, obs: Observation) -> Decision:
        rtt = obs.rtt_p95_ms if obs.rtt_p95_ms is not None else obs.srtt_ms
        if rtt is not None or obs.retrans > 0:
            self._q = self.quality(rtt, obs.retrans)
        target = self.target_tps()
        if self._rate_tps is None:
            self._rate_tps = target
        else:
            self._rate_tps += self.params.alpha * (target - self._rate_tps)
        return Decision(self._rate_tps)
