"""AIMD: additive increase per clean interval, multiplicative decrease on a congestion signal.

Origin: Chiu and Jain, "Analysis of the Increase and Decrease Algorithms for Congestion
Avoidance in Computer Networks" (1989), the law TCP Reno's window follows (RFC 5681), applied
here to the token rate instead of the congestion window.

An interval is *congested* when it retransmitted a segment, or when queueing shows in the RTT:
srtt, or the interval's p95 RTT, above ``rtt_factor`` times the baseline (the smallest RTT seen
on the stream). Then ``rate *= beta``; otherwise ``rate += alpha_tps``. The rate starts at
``start_tps`` and stays in ``[min_tps, max_tps]``. Only an interval that brought fresh RTT
samples (ACKs came back) counts as clean; one with neither samples nor retransmits leaves the rate
alone. Like the seeds' laws it does not look at the reader.
"""

from __future__ import annotations

from pydantic import Field

from controllers.base import Controller, Decision, Observation, Params
from controllers.registry import register
from controllers.signals import RttBaseline


class AimdParams(Params):
    min_tps: float = Field(default=1.0, gt=0, description="lowest rate (tokens/s)")
    max_tps: float = Field(default=60.0, gt=0, description="highest rate (tokens/s)")
    start_tps: float = Field(default=20.0, gt=0, description="rate of a new stream (tokens/s)")
    alpha_tps: float = Field(default=2.0, gt=0, description="additive increase per clean interval (tokens/s)")
    beta: float = Field(default=0.5, gt=0, lt=1, description="multiplicative decrease factor on a congested interval")
    rtt_factor: float = Field(default=2.0, gt=1, description="RTT above baseline × this is congestion")


@register("AIMD", "#bcbd22")
class Aimd(Controller):
    name = "aimd"
    Params = AimdParams
    params: AimdParams

    def reset(self) -> None:
        self._baseline = RttBaseline()
        p = self.params
        self.rate_tps = min(max(p.start_tps, min(p.min_tps, p.max_tps)), max(p.min_tps, p.max_tps))

    def congested(self, obs: Observation) -> bool:
        if obs.retrans > 0:
            return True
        limit = self._baseline.min_ms * self.params.rtt_factor
        return any(v is not None and v > limit for v in (obs.srtt_ms, obs.rtt_p95_ms))

    def decide(self, obs: Observation) -> Decision:
        p = self.params
        lo, hi = min(p.min_tps, p.max_tps), max(p.min_tps, p.max_tps)
        congested = self.congested(obs)  # against the baseline before this interval's samples
        self._baseline.update(obs)
        if congested:
            self.rate_tps *= p.beta
        elif obs.rtt_p95_ms is not None:  # fresh ACKs came back: the path is alive and clean
            self.rate_tps += p.alpha_tps
        self.rate_tps = min(max(self.rate_tps, lo), hi)
        return Decision(self.rate_tps)
