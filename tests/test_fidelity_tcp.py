"""Fidelity of the packet-level TCP model against what theory and real links say.

1. A bulk flow fills its bottleneck: wire goodput (payload + headers, as the link counts it)
   between 0.95 R and R.
2. Reno under random loss follows Mathis et al. (1997): throughput = MSS/RTT * sqrt(3/2) / sqrt(p)
   with one ACK per segment, within 25 %, over p x RTT. The link runs at 10x the prediction with a
   queue that never fills, so the only losses are the random ones. RTT is the mean of the flow's
   own RTT samples after warm-up: Mathis' RTT is the one the flow sees; here it exceeds the base
   RTT only by serialization and by the queue left from the first slow start (under 1.5 %).
   Throughput is payload bytes delivered in order, as Mathis counts MSS-sized segments.
3. A drop-tail queue of Q bytes at rate R adds at most Q/R of queueing delay, and drops when full.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pytest
import simpy

from sim.link import BernoulliLoss, ConstantCapacity, Link, TraceCapacity
from sim.tcp import TcpConfig, TcpConnection

MSS = 1448
WIRE = MSS + 52


class DelayProbeLink(Link):
    """Records each delivered packet's queueing delay: arrival - propagation - (send + own transmission)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.queue_delays_s: list[float] = []

    def send(self, pkt, on_arrive):  # type: ignore[no-untyped-def]
        env = self._env
        unqueued_s = self.capacity.tx_finish_s(env.now, pkt.size_bytes) + self.prop_delay_s

        def arrive(p):  # type: ignore[no-untyped-def]
            self.queue_delays_s.append(env.now - unqueued_s)
            on_arrive(p)

        return super().send(pkt, arrive)


# ---------------------------------------------------------------------------- 1. utilisation


@pytest.mark.parametrize(
    ("cc", "capacity", "rate_bps"),
    [
        ("reno", lambda: ConstantCapacity(20e6), 20e6),
        ("cubic", lambda: ConstantCapacity(20e6), 20e6),
        ("cubic", lambda: TraceCapacity(np.array([1])), 12e6),  # Mahimahi's "one MTU per ms"
    ],
)
def test_bulk_flow_fills_the_link(cc: Literal["reno", "cubic"], capacity, rate_bps: float):  # type: ignore[no-untyped-def]
    env = simpy.Environment()
    rtt_s = 0.04
    bdp_bytes = int(rate_bps / 8 * rtt_s)
    link = Link(env, capacity(), rtt_s / 2, queue_bytes=bdp_bytes)
    conn = TcpConnection(env, link, rtt_s / 2, TcpConfig(cc=cc), bulk=True)
    env.run(until=5.0)  # past slow start
    b0 = link.delivered_bytes
    window_s = 25.0
    env.run(until=5.0 + window_s)
    goodput_bps = (link.delivered_bytes - b0) * 8 / window_s
    assert 0.95 * rate_bps <= goodput_bps <= rate_bps + WIRE * 8 / window_s
    assert link.tail_drops > 0 and conn.retrans_segs > 0  # it did probe the buffer and recover


# ---------------------------------------------------------------------------- 2. Mathis


def mathis_bps(p: float, rtt_s: float) -> float:
    """Payload throughput in bits/s for one ACK per segment."""
    return MSS * 8 / rtt_s * math.sqrt(1.5 / p)


def run_reno_under_loss(p: float, rtt_s: float, losses: int = 400, seed: int = 0) -> dict[str, float]:
    """A bulk Reno flow through Bernoulli loss `p` on a link 10x faster than Mathis predicts."""
    predicted_bps = mathis_bps(p, rtt_s)
    rate_bps = 10 * predicted_bps * WIRE / MSS
    env = simpy.Environment()
    link = Link(env, ConstantCapacity(rate_bps), rtt_s / 2, 10**9, BernoulliLoss(p, np.random.default_rng(seed)))
    conn = TcpConnection(env, link, rtt_s / 2, TcpConfig(cc="reno"), bulk=True)
    # Long enough for `losses` random losses at the predicted rate (several losses in one window
    # make one loss event: ~300 events at p = 2 %), after a warm-up of 20 % of that.
    run_s = losses / p / (predicted_bps / 8 / MSS)
    env.run(until=0.2 * run_s)
    bytes0, rtos0, recoveries0 = conn.rcv_nxt, conn.rto_events, conn.recovery_events
    conn.drain_rtt_samples()
    env.run(until=1.2 * run_s)
    rtt_mean_s = float(np.mean(conn.drain_rtt_samples()))
    measured_bps = (conn.rcv_nxt - bytes0) * 8 / run_s
    return {
        "predicted_bps": mathis_bps(p, rtt_mean_s),
        "measured_bps": measured_bps,
        "rtt_mean_s": rtt_mean_s,
        "timeouts": conn.rto_events - rtos0,
        "loss_events": conn.recovery_events - recoveries0 + conn.rto_events - rtos0,
        "tail_drops": link.tail_drops,
    }


GRID = [(p, rtt) for p in (0.001, 0.005, 0.01, 0.02) for rtt in (0.02, 0.05, 0.1, 0.2)]


@pytest.mark.slow
@pytest.mark.parametrize(("p", "rtt_s"), GRID)
def test_reno_follows_mathis(p: float, rtt_s: float):
    r = run_reno_under_loss(p, rtt_s, seed=GRID.index((p, rtt_s)))
    assert r["loss_events"] >= 200 and r["tail_drops"] == 0
    assert r["rtt_mean_s"] == pytest.approx(rtt_s, rel=0.02)
    assert r["measured_bps"] == pytest.approx(r["predicted_bps"], rel=0.25)


# ---------------------------------------------------------------------------- 3. queue bound


def test_queueing_delay_is_bounded_by_queue_over_rate_under_overload():
    env = simpy.Environment()
    rate_bps, queue_bytes = 10e6, 30_000
    link = DelayProbeLink(env, ConstantCapacity(rate_bps), 0.01, queue_bytes)

    def cbr():  # type: ignore[no-untyped-def]
        while env.now < 1.0:  # 1500 B every 0.6 ms: 20 Mbit/s into 10 Mbit/s
            link.send(_Pkt(1500), lambda _p: None)
            yield env.timeout(0.0006)

    env.process(cbr())
    env.run()
    bound_s = queue_bytes * 8 / rate_bps
    assert max(link.queue_delays_s) <= bound_s + 1e-12
    assert max(link.queue_delays_s) >= bound_s - 2 * 1500 * 8 / rate_bps  # the queue did fill
    assert link.tail_drops > 0.4 * link.sent_pkts  # about half the offered load is dropped


def test_competing_tcp_flows_fill_and_overflow_a_small_queue():
    env = simpy.Environment()
    rate_bps, queue_bytes = 10e6, 50_000
    link = DelayProbeLink(env, ConstantCapacity(rate_bps), 0.02, queue_bytes)
    flows = [TcpConnection(env, link, 0.02, TcpConfig(cc="cubic"), bulk=True) for _ in range(4)]
    env.run(until=20.0)
    bound_s = queue_bytes * 8 / rate_bps
    assert link.tail_drops > 0 and all(f.retrans_segs > 0 for f in flows)
    assert bound_s - 2 * WIRE * 8 / rate_bps <= max(link.queue_delays_s) <= bound_s + 1e-12
    # the flows' RTT estimates see the standing queue: base 40 ms plus up to 40 ms of queueing
    assert all(0.04 < (f.srtt_s or 0.0) < 0.04 + bound_s + 0.005 for f in flows)


class _Pkt:
    __slots__ = ("size_bytes",)

    def __init__(self, size_bytes: int) -> None:
        self.size_bytes = size_bytes
