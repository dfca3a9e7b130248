"""MPC: RobustMPC's predict-then-optimise loop, with the reader's buffer in place of the player's.

Origin: Yin, Jindal, Sekar, Sinopoli, "A Control-Theoretic Approach for Dynamic Adaptive Video
Streaming over HTTP" (SIGCOMM 2015). RobustMPC predicts throughput as the harmonic mean of the
last chunks' throughputs divided by (1 + the largest recent relative prediction error), then picks
the bitrate that maximises QoE over the next few chunks, applies the first step and re-plans.

Prediction. Each interval gives a delivery sample: tokens acked per second over the last
``sample_window_s`` (a token rides in its own segment, so per-interval counts are too lumpy to
average harmonically: one empty interval would zero the mean). A sample only measures the *path*
when the path was the bottleneck -- when a standing queue was left behind (backlog beyond what one
base RTT of our own generation explains, more than ``min_queue_tokens``).
Otherwise we were the bottleneck and the path is assumed to keep up (the sample is +inf, which the
harmonic mean ignores). Predicted delivery ``C = harmonic_mean(last history_intervals samples) /
(1 + max recent relative error)``; errors are capped at 1 (a zero sample would make them infinite).

Plan. For each candidate rate g (0, C, multiples of the reader's pace r, ``max_tps``), held over
``horizon_intervals`` intervals of length dt, roll the buffers forward exactly: backlog q += g dt;
the path delivers min(q, C dt) into the client buffer b; the reader takes r dt from b, and any
shortfall is stall. Cost, in seconds of reading (lower is better):

* ``stall_weight * stall_s`` -- predicted stall;
* waste: tokens generated beyond what the reader consumes within the horizon, in seconds of
  reading, weighted by the chance the reader leaves before they are of use. For the client buffer
  ``b_H`` that is ``leave_prob_per_s * horizon + stall_s / patience_s`` (a stalled reader gives up);
  the undelivered backlog ``q_H`` waits ``q_H / C`` longer first, so its chance grows by
  ``leave_prob_per_s * q_H / C`` -- certain on a dead path;
* ``cushion_weight * max(0, target_buffer_s - b_H / r)`` -- the plan's value beyond the horizon:
  a buffer short of the cushion is risk of future stall. (RobustMPC's five chunks look ~20 s of
  video ahead; half a second of tokens does not, so the buffer's worth beyond it is priced here.)
* ``smooth_weight * |g - g_prev| / r`` -- rate changes.

The cheapest candidate wins; ties go to the lower rate. About 8 candidates x 5 steps per call.
"""

from __future__ import annotations

import math
from collections import deque

from pydantic import Field

from controllers.base import Controller, Decision, Observation, Params
from controllers.registry import register
from controllers.signals import DeliveryMeter, RttBaseline, backlog_tokens

DEFAULT_INTERVAL_S = 0.1  # planning step before two observations have given the real one
ERROR_CAP = 1.0


class MpcParams(Params):
    target_buffer_s: float = Field(default=30.0, gt=0, description="cushion the plan aims to end with (s of reading)")
    max_tps: float = Field(default=60.0, gt=0, description="fastest generation rate (tokens/s)")
    horizon_intervals: int = Field(default=5, gt=0, le=50, description="planning horizon (control intervals)")
    history_intervals: int = Field(default=5, gt=0, le=100, description="delivery samples in the harmonic mean")
    sample_window_s: float = Field(default=0.5, gt=0, description="span of one delivery sample (s)")
    min_queue_tokens: float = Field(default=4.0, gt=0, description="standing queue that marks a sample path-limited")
    patience_s: float = Field(default=5.0, gt=0, description="assumed reader patience: stall before leaving (s)")
    leave_prob_per_s: float = Field(default=0.01, gt=0, le=1, description="chance per second a reader leaves anyway")
    stall_weight: float = Field(default=1.0, gt=0, description="cost per second of predicted stall")
    cushion_weight: float = Field(default=0.1, gt=0, description="cost per second of cushion short at the horizon")
    smooth_weight: float = Field(default=0.001, gt=0, description="cost per reader-pace of rate change")


@register("RobustMPC", "#1f77b4")
class Mpc(Controller):
    name = "mpc"
    Params = MpcParams
    params: MpcParams

    def reset(self) -> None:
        self._meter = DeliveryMeter(self.params.sample_window_s)
        self._baseline = RttBaseline()
        self._samples: deque[float] = deque(maxlen=self.params.history_intervals)
        self._errors: deque[float] = deque(maxlen=self.params.history_intervals)
        self._last_generated: int | None = None
        self.rate_tps = 0.0
        self.predicted_tps = math.inf

    def _harmonic_mean(self) -> float:
        if not self._samples:
            return math.inf
        inv = sum(0.0 if math.isinf(s) else (math.inf if s <= 0 else 1.0 / s) for s in self._samples)
        return math.inf if inv == 0 else len(self._samples) / inv

    def _observe(self, obs: Observation) -> None:
        self._meter.update(obs.t_s, obs.acked_tokens)
        base_ms = self._baseline.update(obs)
        dt = self._meter.last_dt_s
        gen_prev, self._last_generated = self._last_generated, obs.generated_tokens
        if dt <= 0 or gen_prev is None:
            return
        gen_tps = max(0, obs.generated_tokens - gen_prev) / dt
        # before the first RTT sample nothing of the backlog is explained by the path's delay
        queue = backlog_tokens(obs) - gen_tps * (base_ms / 1000 if math.isfinite(base_ms) else 0.0)
        if queue <= self.params.min_queue_tokens:
            sample = math.inf  # we, not the path, limited delivery
        else:
            sample = self._meter.rate_tps()
            pred = self._harmonic_mean()
            if math.isfinite(pred):
                self._errors.append(min(ERROR_CAP, abs(pred - sample) / max(sample, 1.0)))
        self._samples.append(sample)

    def plan_cost(self, g: float, b: float, q: float, c: float, r: float, dt: float) -> float:
        p = self.params
        stall_s = 0.0
        for _ in range(p.horizon_intervals):
            q += g * dt
            got = min(q, c * dt)
            q -= got
            b += got - r * dt
            if b < 0:
                stall_s -= b / r
                b = 0.0
        horizon_s = p.horizon_intervals * dt
        p_leave = min(1.0, p.leave_prob_per_s * horizon_s + stall_s / p.patience_s)
        wait_s = q / c if c > 0 else math.inf  # q > 0 on a dead path: never delivered
        p_leave_q = min(1.0, p_leave + p.leave_prob_per_s * wait_s) if q > 0 else 0.0
        return (p.stall_weight * stall_s + (p_leave * b + p_leave_q * q) / r
                + p.cushion_weight * max(0.0, p.target_buffer_s - b / r)
                + p.smooth_weight * abs(g - self.rate_tps) / r)

    def predict_capacity(self, obs: Observation) -> float:
        """Predicted delivery (tokens/s; inf = the path is not the limit): RobustMPC's discounted
        harmonic mean. Called once per decision, after the observation is taken in."""
        return self._harmonic_mean() / (1.0 + max(self._errors, default=0.0))

    def decide(self, obs: Observation) -> Decision:
        p = self.params
        self._observe(obs)
        c = self.predict_capacity(obs)
        self.predicted_tps = c
        r = max(obs.reading_tps, 1e-6)
        top = p.max_tps
        dt = self._meter.last_dt_s or DEFAULT_INTERVAL_S
        candidates = {0.0, top, *(min(top, k * r) for k in (0.5, 1.0, 1.5, 2.0, 3.0))}
        if math.isfinite(c):
            candidates.add(min(top, c))
        b, q = max(0.0, obs.client_buffer_est), float(backlog_tokens(obs))
        best = min(sorted(candidates), key=lambda g: self.plan_cost(g, b, q, c, r, dt))
        self.rate_tps = best
        return Decision(best)
