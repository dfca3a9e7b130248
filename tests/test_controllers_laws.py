"""Each controller's own law, checked with numbers that would come out wrong if the law were wrong."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

import controllers
from controllers import Observation
from controllers.aimd import Aimd, AimdParams
from controllers.anomaly import Anomaly, AnomalyParams
from controllers.buffer import Buffer, BufferParams
from controllers.ewma import Ewma, EwmaParams
from controllers.mpc import Mpc, MpcParams
from controllers.oracle import HEADER_BYTES, Oracle, OracleParams
from controllers.pid import Pid, PidParams
from controllers.predictive import Predictive
from controllers.sigmoid import Sigmoid, SigmoidParams
from controllers.signals import DeliveryMeter


def obs(t_s: float = 0.0, **kw: Any) -> Observation:
    base: dict[str, Any] = dict(
        t_s=t_s, stream_id="s", srtt_ms=None, rtt_min_ms=None, rtt_p95_ms=None, retrans=0, cwnd_pkts=10,
        inflight_bytes=0, queued_bytes=0, acked_tokens=0, generated_tokens=0, reading_tps=10.0, client_buffer_est=0.0)
    base.update(kw)
    return Observation(**base)


def test_every_controller_is_registered_with_label_and_colour():
    names = {"unpaced", "fixed", "sigmoid", "ewma", "pid", "aimd", "buffer", "mpc", "oracle"}
    assert names <= set(controllers.REGISTRY)
    assert controllers.get("oracle").sim_only and not controllers.get("mpc").sim_only
    for name in names:
        info = controllers.get(name)
        assert info.label and info.color.startswith("#")


# ---------------------------------------------------------------- sigmoid
def test_sigmoid_clean_path_is_exactly_max_and_dead_path_min():
    c = Sigmoid()
    assert c.decide(obs(srtt_ms=20.0, rtt_min_ms=20.0)).rate_tps == 60.0
    assert c.decide(obs(0.1, srtt_ms=2000.0)).rate_tps == pytest.approx(5.0, abs=1e-9)
    assert c.decide(obs(0.2, srtt_ms=20.0, retrans=100)).rate_tps == pytest.approx(5.0, abs=1e-9)


def test_sigmoid_midpoint_number():
    # srtt = 2 x baseline: h = sigmoid(0) / sigmoid(4) = 0.5 / 0.98201 = 0.50916 -> 5 + 0.50916 * 55
    c = Sigmoid()
    c.decide(obs(srtt_ms=20.0))
    assert c.decide(obs(0.1, srtt_ms=40.0)).rate_tps == pytest.approx(5 + 55 * 0.5 / (1 / (1 + math.exp(-4))), rel=1e-9)


def test_sigmoid_monotone_in_rtt_and_retransmits():
    def rate(srtt: float, retrans: int) -> float | None:
        c = Sigmoid(SigmoidParams())
        c.decide(obs(srtt_ms=10.0))
        return c.decide(obs(0.1, srtt_ms=srtt, retrans=retrans)).rate_tps

    by_rtt = [rate(s, 0) for s in (10, 12, 15, 20, 30, 50, 100, 1000)]
    by_retx = [rate(15, k) for k in range(8)]
    assert by_rtt == sorted(by_rtt, reverse=True) and by_rtt[0] > by_rtt[-1]
    assert by_retx == sorted(by_retx, reverse=True) and by_retx[0] > by_retx[-1]


def test_sigmoid_keeps_health_when_the_interval_says_nothing():
    c = Sigmoid()
    c.decide(obs(srtt_ms=10.0))
    r = c.decide(obs(0.1, srtt_ms=25.0)).rate_tps
    assert c.decide(obs(0.2)).rate_tps == r


# ---------------------------------------------------------------- ewma
def test_ewma_converges_with_its_factor():
    c = Ewma(EwmaParams(alpha=0.3))
    # p95 300 ms is half-way between good (100) and bad (500): q = 0.5, target 5 + 0.5 * 55 = 32.5
    assert c.decide(obs(rtt_p95_ms=300.0)).rate_tps == pytest.approx(32.5)
    rates = [c.decide(obs(0.1 * (k + 1), rtt_p95_ms=50.0)).rate_tps for k in range(10)]
    assert rates[0] == pytest.approx(60 - 27.5 * 0.7)
    assert rates[9] == pytest.approx(60 - 27.5 * 0.7**10)


def test_ewma_quality_from_retransmits_and_srtt_fallback():
    c = Ewma()
    assert c.quality(50.0, 5) == 0.0 and c.quality(50.0, 1) == pytest.approx(0.8)
    assert c.decide(obs(srtt_ms=500.0)).rate_tps == pytest.approx(5.0)  # no p95 this interval: srtt


# ---------------------------------------------------------------- pid
def test_pid_first_call_is_proportional_on_top_of_reading_pace():
    c = Pid(PidParams(setpoint_s=20.0, kp_tps_per_s=2.0))
    # buffer 150 tokens at 10 tok/s = 15 s; error 5 s -> 10 + 2 * 5
    assert c.decide(obs(client_buffer_est=150.0)).rate_tps == pytest.approx(20.0)


def test_pid_integral_clamps_at_the_output_limit_under_sustained_error():
    c = Pid(PidParams(setpoint_s=20.0, ki_tps_per_s2=0.1, max_tps=60.0))
    rates = [c.decide(obs(0.1 * k, client_buffer_est=0.0)).rate_tps for k in range(1000)]
    # the integral would be 0.1 * 20 * 99.9 = 199.8 unclamped; it stops at max - reading = 50
    assert c.integral_tps == pytest.approx(50.0)
    assert max(rates) == 60.0
    # the buffer recovers: without windup the output leaves the limit as soon as P + I allow it
    r = c.decide(obs(100.0, client_buffer_est=450.0)).rate_tps  # 45 s: error -25 s -> 10 - 50 + 50 - D
    assert r < 60.0


def test_pid_output_stays_within_limits():
    c = Pid(PidParams(min_tps=1.0, max_tps=40.0))
    assert c.decide(obs(client_buffer_est=1e6)).rate_tps == 1.0
    assert c.decide(obs(0.1, client_buffer_est=0.0)).rate_tps == 40.0
    c.reset()
    assert c.integral_tps == 0.0


def test_pid_derivative_acts_on_measurement():
    p = PidParams(ki_tps_per_s2=1e-9, kd_tps=0.5)
    a, b = Pid(p), Pid(p)
    a.decide(obs(0.0, client_buffer_est=100.0))
    b.decide(obs(0.0, client_buffer_est=100.0))
    ra = a.decide(obs(0.1, client_buffer_est=100.0)).rate_tps
    rb = b.decide(obs(0.1, client_buffer_est=110.0)).rate_tps  # buffer rose 1 s in 0.1 s: D = -0.5 * 10
    assert ra - rb == pytest.approx(2.0 * 1.0 + 5.0, abs=1e-6)  # P shrinks by 2 (1 s less error), D by 5


# ---------------------------------------------------------------- aimd
def test_aimd_halves_on_a_retransmit_interval_and_adds_alpha_per_clean_one():
    c = Aimd(AimdParams(start_tps=20.0, alpha_tps=2.0, beta=0.5))
    assert c.decide(obs(0.0, srtt_ms=30.0, rtt_p95_ms=30.0)).rate_tps == 22.0
    assert c.decide(obs(0.1, srtt_ms=30.0, rtt_p95_ms=30.0)).rate_tps == 24.0
    assert c.decide(obs(0.2, srtt_ms=30.0, rtt_p95_ms=30.0, retrans=1)).rate_tps == 12.0
    assert c.decide(obs(0.3, srtt_ms=30.0)).rate_tps == 12.0  # no fresh samples: no evidence either way


def test_aimd_rtt_above_baseline_times_factor_is_congestion():
    c = Aimd(AimdParams(start_tps=40.0, rtt_factor=2.0))
    c.decide(obs(0.0, srtt_ms=30.0, rtt_min_ms=30.0, rtt_p95_ms=31.0))  # baseline 30 ms, +2
    assert c.decide(obs(0.1, srtt_ms=59.0, rtt_p95_ms=59.0)).rate_tps == 44.0
    assert c.decide(obs(0.2, srtt_ms=45.0, rtt_p95_ms=61.0)).rate_tps == 22.0


def test_aimd_stays_within_limits():
    c = Aimd(AimdParams(min_tps=1.0, max_tps=30.0, start_tps=25.0))
    rates = [c.decide(obs(0.1 * k, rtt_p95_ms=20.0)).rate_tps for k in range(10)]
    assert rates[-1] == 30.0
    rates = [c.decide(obs(1 + 0.1 * k, retrans=3)).rate_tps for k in range(20)]
    assert rates[-1] == 1.0


# ---------------------------------------------------------------- buffer
def test_buffer_three_regions():
    c = Buffer(BufferParams(reservoir_s=2.0, cushion_s=18.0, max_tps=60.0))
    # reading 10 tok/s: below 2 s -> 60; above 20 s -> 10; at 11 s (half the cushion) -> 35
    assert c.decide(obs(client_buffer_est=15.0)).rate_tps == 60.0
    assert c.decide(obs(0.1, client_buffer_est=250.0)).rate_tps == 10.0
    assert c.decide(obs(0.2, client_buffer_est=110.0)).rate_tps == pytest.approx(35.0)


def test_buffer_counts_backlog_and_caps_it_by_the_ack_rate():
    c = Buffer(BufferParams(reservoir_s=2.0, cushion_s=18.0, inflight_s=0.5, min_inflight_tokens=8.0))
    # 100 acked ahead + 5 in flight = 10.5 s: inside the cushion, in-flight is counted
    r = c.decide(obs(0.0, acked_tokens=200, generated_tokens=205, client_buffer_est=100.0)).rate_tps
    assert r == pytest.approx(60 - (10.5 - 2) / 18 * 50)
    # the path stops acking: once the backlog reaches the floor of 8 tokens the stream pauses
    assert c.decide(obs(0.1, acked_tokens=200, generated_tokens=208, client_buffer_est=99.0)).rate_tps == 0.0
    # a path acking 40 tok/s over the window allows 20 tokens of backlog
    c2 = Buffer()
    c2.decide(obs(0.0, acked_tokens=0, generated_tokens=0))
    assert c2.decide(obs(1.0, acked_tokens=40, generated_tokens=59, client_buffer_est=0.0)).rate_tps == 60.0
    assert c2.decide(obs(1.1, acked_tokens=44, generated_tokens=65, client_buffer_est=0.0)).rate_tps == 0.0


def test_delivery_meter_window():
    m = DeliveryMeter(window_s=1.0)
    for k in range(30):
        m.update(0.1 * k, 10 * k)  # 100 tok/s
    assert m.rate_tps() == pytest.approx(100.0)
    assert m.last_delta_tokens == 10 and m.last_dt_s == pytest.approx(0.1)


# ---------------------------------------------------------------- mpc
def feed_mpc(c: Mpc, ack_tps: float, n: int = 20, backlog: int = 40, t0: float = 0.0) -> float | None:
    """Intervals of 0.1 s with a standing queue of ``backlog`` tokens drained at ``ack_tps``."""
    rate: float | None = math.nan
    for k in range(n):
        acked = round(ack_tps * 0.1 * k) + 1000
        o = obs(t0 + 0.1 * k, srtt_ms=50.0, rtt_min_ms=50.0, rtt_p95_ms=60.0, acked_tokens=acked,
                generated_tokens=acked + backlog, client_buffer_est=30.0)
        rate = c.decide(o).rate_tps
    return rate


def test_mpc_harmonic_mean_and_robust_discount():
    c = Mpc(MpcParams(history_intervals=3))
    c._samples.extend([10.0, 20.0, math.inf])
    assert c._harmonic_mean() == pytest.approx(20.0)  # 3 / (1/10 + 1/20): the unconstrained sample adds nothing
    c._samples.append(0.0)
    assert c._harmonic_mean() == 0.0


def test_mpc_healthy_path_and_empty_buffer_goes_max_then_holds_at_reading_pace():
    c = Mpc()
    assert c.decide(obs(0.0, client_buffer_est=0.0)).rate_tps == 60.0
    # past the cushion (30 s of reading = 300 tokens) it does not run further ahead
    assert c.decide(obs(0.1, acked_tokens=400, generated_tokens=400, client_buffer_est=350.0)).rate_tps <= 10.0


def test_mpc_picks_a_lower_rate_when_the_predicted_delivery_rate_falls():
    fast, slow = Mpc(), Mpc()
    # a standing queue of 8 tokens: the path, not the generator, sets the pace
    r_fast = feed_mpc(fast, ack_tps=40.0, backlog=8)
    r_slow = feed_mpc(slow, ack_tps=4.0, backlog=8)
    assert fast.predicted_tps == pytest.approx(40.0, rel=0.15)
    assert slow.predicted_tps == pytest.approx(4.0, rel=0.6) and slow.predicted_tps <= 4.0
    assert 20.0 <= r_fast <= fast.predicted_tps  # feeds the path, never beyond what it carries
    assert r_slow <= slow.predicted_tps < r_fast


def test_mpc_stops_feeding_a_dead_path():
    c = Mpc()
    assert feed_mpc(c, ack_tps=0.0, backlog=30) == 0.0
    assert c.predicted_tps == 0.0


# ---------------------------------------------------------------- anomaly, predictive


@dataclass
class FixedScore:
    value: float

    def score(self, vector: Any) -> float:
        return self.value


@pytest.mark.parametrize(("score", "gate"), [(0.05, 1.0), (0.0, 1.0), (-0.05, 0.5), (-0.1, 0.0), (-0.3, 0.0)])
def test_anomaly_gate_scales_the_sigmoid_rate_towards_min(score: float, gate: float):
    c = Anomaly(AnomalyParams(gate_width=0.1))
    c._detector = FixedScore(score)  # type: ignore[assignment]
    sig = Sigmoid()
    o = obs(1.0, srtt_ms=80.0, rtt_min_ms=40.0, rtt_p95_ms=90.0, retrans=1)
    r_sig = sig.decide(o).rate_tps
    assert r_sig is not None
    assert c.decide(o).rate_tps == pytest.approx(5.0 + gate * (r_sig - 5.0))
    assert c.gate == pytest.approx(gate)


def test_anomaly_bundled_forest_flags_a_tail_spike_the_sigmoid_ignores():
    c, sig = Anomaly(), Sigmoid()
    for k in range(30):
        o = obs(0.1 * k, srtt_ms=40.0, rtt_min_ms=40.0, rtt_p95_ms=41.0)
        rate = c.decide(o).rate_tps
        sig.decide(o)
    assert c.score >= 0 and rate == pytest.approx(60.0)  # a steady path: the sigmoid's full rate
    # srtt barely moves but the interval's p95 triples: the sigmoid (srtt-driven) stays near max,
    # the forest (trained on p95 inflation too) calls it anomalous and shuts the gate
    spike = obs(3.0, srtt_ms=44.0, rtt_min_ms=40.0, rtt_p95_ms=120.0)
    r_sig, r_anom = sig.decide(spike).rate_tps, c.decide(spike).rate_tps
    assert r_sig is not None and r_sig > 55.0
    assert c.score < 0 and r_anom is not None and r_anom < 0.5 * r_sig


@dataclass
class FixedForecast:
    factor: float

    def predict_p95_ms(self, state: Any) -> float | None:
        return None if state.p95_ms is None else state.p95_ms * self.factor


def test_predictive_is_mpc_while_no_rise_is_forecast():
    plain, pred = Mpc(), Predictive()
    pred._forecaster = FixedForecast(1.05)  # type: ignore[assignment]  # within the 10% deadband
    assert feed_mpc(plain, ack_tps=10.0, backlog=8) == feed_mpc(pred, ack_tps=10.0, backlog=8)
    assert pred.predicted_tps == plain.predicted_tps


def test_predictive_scales_the_predicted_capacity_by_the_forecast_rise():
    plain, pred = Mpc(), Predictive()
    pred._forecaster = FixedForecast(2.0)  # the next p95 forecast at twice today's
    r_plain = feed_mpc(plain, ack_tps=30.0, backlog=8)
    r_pred = feed_mpc(pred, ack_tps=30.0, backlog=8)
    assert pred.predicted_tps == pytest.approx(plain.predicted_tps / 2)
    assert r_pred is not None and r_plain is not None and r_pred < r_plain
    floor = Predictive()
    floor._forecaster = FixedForecast(100.0)
    feed_mpc(floor, ack_tps=30.0, backlog=8)
    assert floor.predicted_tps == pytest.approx(plain.predicted_tps * 0.25)  # min_scale


# ---------------------------------------------------------------- oracle
@dataclass
class FakeView:
    """A known future: capacity by time (bit/s), a fixed number of streams, a reader."""

    capacity: list[tuple[float, float, float]] = field(default_factory=list)  # (t0, t1, bps); else 10 Mbit/s
    streams: int = 1
    reading_tps: float = 10.0
    patience_s: float = 5.0
    output_tokens: int = 1000
    bytes_per_token: int = 200
    base_rtt_s: float = 0.05
    loss: float = 0.0
    short: list[tuple[float, float]] = field(default_factory=list)  # (t0, t1): the node's memory is short

    def _bps(self, t: float) -> float:
        return next((bps for a, b, bps in self.capacity if a <= t < b), 10e6)

    def capacity_bps(self, t0_s: float, t1_s: float) -> float:
        n = 20
        return sum(self._bps(t0_s + (i + 0.5) * (t1_s - t0_s) / n) for i in range(n)) / n

    def loss_rate(self, t_s: float) -> float:
        return self.loss

    def streams_on_path(self, t_s: float) -> int:
        return self.streams

    def memory_short(self, t_s: float) -> bool:
        return any(a <= t_s < b for a, b in self.short)


def oracle(view: FakeView, **params) -> Oracle:
    c = Oracle(OracleParams(**params))
    c.attach_oracle(view)
    return c


def test_oracle_steady_path_keeps_just_the_margin():
    c = oracle(FakeView(), margin_s=3.0)
    # 3 s margin = 30 tokens buffered: hold at the reader's pace; below it catch up within a second
    assert c.decide(obs(0.0, acked_tokens=100, generated_tokens=100, client_buffer_est=30.0)).rate_tps == 10.0
    assert c.decide(obs(0.1, acked_tokens=100, generated_tokens=100, client_buffer_est=20.0)).rate_tps == 20.0


def test_oracle_does_not_hold_memory_a_waiting_request_needs():
    """While the node's memory is short (and its scheduler would not take a paced stream's memory), a
    paced stream holds memory a waiting request needs: the oracle finishes the stream instead."""
    c = oracle(FakeView(short=[(1.0, 2.0)]), margin_s=3.0)
    at_margin = {"acked_tokens": 100, "generated_tokens": 100, "client_buffer_est": 30.0}
    assert c.decide(obs(0.5, **at_margin)).rate_tps == 10.0
    assert c.decide(obs(1.0, **at_margin)).rate_tps is None
    assert c.decide(obs(2.0, **at_margin)).rate_tps == 10.0


def test_oracle_banks_the_reading_time_an_outage_ahead_will_cost():
    c = oracle(FakeView(capacity=[(5.0, 15.0, 0.0)]), margin_s=3.0)
    assert c.needed_buffer_tokens(0.0, to_read=1000, reading_tps=10.0, sharing=1) == pytest.approx(100.0)
    assert c.decide(obs(0.0, acked_tokens=50, generated_tokens=50, client_buffer_est=30.0)).rate_tps == 60.0
    # with everything it needs banked it goes back to the reader's pace
    assert c.decide(obs(0.1, acked_tokens=150, generated_tokens=150, client_buffer_est=130.0)).rate_tps == 10.0


def test_oracle_never_generates_faster_than_the_path_delivers_once_backlogged():
    # 64 kbit/s shared by 2: 64000 / 8 / 252 / 2 = 15.87 tokens/s each
    view = FakeView(capacity=[(0.0, 100.0, 64e3)], streams=2)
    share = 64e3 / 8 / (200 + HEADER_BYTES) / 2
    c = oracle(view)
    c.decide(obs(0.0, acked_tokens=0, generated_tokens=20, client_buffer_est=0.0))
    # the connection acked 40 tokens/s over the last second, so the link's share is what binds
    r = c.decide(obs(1.0, acked_tokens=40, generated_tokens=60, client_buffer_est=0.0)).rate_tps
    assert r == pytest.approx(share)
    view.capacity = [(0.0, 100.0, 0.0)]  # an outage: nothing, whatever the reader needs
    assert oracle(view).decide(obs(1.0, acked_tokens=10, generated_tokens=13, client_buffer_est=0.0)).rate_tps == 0.0


def test_oracle_follows_a_stuck_connection_even_on_a_good_link():
    c = oracle(FakeView())  # 10 Mbit/s for one stream: the link could carry 4960 tokens/s
    c.decide(obs(0.0, acked_tokens=100, generated_tokens=120, client_buffer_est=0.0))
    # nothing acked for a second (RTO backoff): the backlog is not fed further
    assert c.decide(obs(1.0, acked_tokens=100, generated_tokens=120, client_buffer_est=0.0)).rate_tps == 0.0


def test_oracle_requires_its_view():
    with pytest.raises(RuntimeError):
        Oracle().decide(obs())


def test_observation_helper_is_frozen():
    o = obs()
    assert replace(o, t_s=1.0).t_s == 1.0
