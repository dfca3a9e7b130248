"""The bottleneck link: capacity arithmetic, drop-tail FIFO queue, delay windows, loss models."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import simpy

from sim.link import DelayLine, Link
from sim.model.path import (
    BernoulliLoss,
    ConstantCapacity,
    FaultedCapacity,
    GilbertElliottLoss,
    LossModel,
    NoLoss,
    RateWindow,
    ScheduleCapacity,
    TimedLoss,
    TraceCapacity,
)

MS = 1e-3


@dataclass
class Pkt:
    size_bytes: int
    tag: int = 0


def offer(link: Link, env: simpy.Environment, sends: list[tuple[float, int]]) -> tuple[list, list[bool]]:
    """Offer packets (t_s, size) to `link`; return the (arrival time, tag) log and send() results."""
    log: list[tuple[float, int]] = []
    results: list[bool] = []

    def proc():  # type: ignore[no-untyped-def]
        for tag, (t, size) in enumerate(sends):
            yield env.timeout(t - env.now)
            results.append(link.send(Pkt(size, tag), lambda p: log.append((env.now, p.tag))))

    env.process(proc())
    env.run()
    return log, results


def finishes(cap, sends: list[tuple[float, int]]) -> list[float]:  # type: ignore[no-untyped-def]
    """Departure times of a busy FIFO server: each starts at max(arrival, previous departure)."""
    out: list[float] = []
    last = -math.inf
    for t, size in sends:
        last = cap.tx_finish_s(max(t, last), size)
        out.append(last)
    return out


# ---------------------------------------------------------------------------- capacity


def test_ten_mtu_packets_at_12_mbps_leave_one_per_ms():
    env = simpy.Environment()
    link = Link(env, ConstantCapacity(12e6), prop_delay_s=0.0, queue_bytes=10**6)
    log, _ = offer(link, env, [(0.0, 1500)] * 10)
    assert [t for t, _ in log] == pytest.approx([k * MS for k in range(1, 11)], abs=1e-12)
    assert log[-1][0] == pytest.approx(10 * MS, abs=1e-12)
    assert link.delivered_bytes == 15000


def test_propagation_delay_is_added_after_transmission():
    env = simpy.Environment()
    link = Link(env, ConstantCapacity(12e6), prop_delay_s=0.02, queue_bytes=10**6)
    log, _ = offer(link, env, [(0.0, 1500), (0.5, 750)])
    assert [t for t, _ in log] == pytest.approx([0.021, 0.5205], abs=1e-12)


def test_schedule_transmission_spanning_a_rate_change():
    cap = ScheduleCapacity([(0.0, 12e6), (0.0005, 6e6)])
    # 750 B in the first 0.5 ms at 12 Mbit/s, the other 750 B at 6 Mbit/s take 1 ms
    assert cap.tx_finish_s(0.0, 1500) == pytest.approx(0.0015, abs=1e-12)
    assert cap.rate_bps_at(0.0004) == 12e6 and cap.rate_bps_at(0.0005) == 6e6


def test_schedule_before_first_point_uses_first_rate_and_zero_rate_pauses():
    cap = ScheduleCapacity([(1.0, 12e6), (2.0, 0.0), (3.0, 12e6)])
    assert cap.tx_finish_s(0.0, 1500) == pytest.approx(0.001)
    # starts at 1.9995: 750 B before the pause, the rest after it at 3.0
    assert cap.tx_finish_s(1.9995, 1500) == pytest.approx(3.0005)


def test_trace_one_opportunity_per_ms_is_12_mbps():
    cap = TraceCapacity(np.array([1]))
    assert finishes(cap, [(0.0, 1500)] * 10) == pytest.approx([k * MS for k in range(1, 11)])
    assert cap.rate_bps_at(5.0) == pytest.approx(12e6)


def test_trace_loops_with_period_of_last_timestamp():
    # opportunities at 0, 0, 5 ms; period 5 ms -> 0,0,5 | 5,5,10 | 10,10,15 ...
    cap = TraceCapacity(np.array([0, 0, 5]))
    got = finishes(cap, [(0.0, 1500)] * 8)
    assert got == pytest.approx([0, 0, 5 * MS, 5 * MS, 5 * MS, 10 * MS, 10 * MS, 10 * MS])
    # an idle link: a packet at 12 ms waits for the next opportunity, 15 ms
    assert cap.tx_finish_s(0.012, 1500) == pytest.approx(0.015)


def test_trace_partial_credit_serves_a_waiting_packet_but_is_lost_when_idle():
    cap = TraceCapacity(np.array([1]))
    assert cap.tx_finish_s(0.0, 500) == pytest.approx(0.001)  # 1000 B of credit left at 1 ms
    assert cap.tx_finish_s(0.001, 500) == pytest.approx(0.001)  # queued behind it: same opportunity
    assert cap.tx_finish_s(0.001, 1000) == pytest.approx(0.002)  # 500 B left at 1 ms, 500 B more at 2 ms
    # the 2 ms opportunity has 1000 B left, but the queue is empty when it passes: lost
    assert cap.tx_finish_s(0.0025, 500) == pytest.approx(0.003)


def test_trace_without_loop_stops_delivering():
    cap = TraceCapacity(np.array([1, 2]), loop=False)
    assert finishes(cap, [(0.0, 1500)] * 3) == [pytest.approx(0.001), pytest.approx(0.002), math.inf]


def test_trace_rate_is_averaged_over_100_ms():
    cap = TraceCapacity(np.array([0, 0, 1]))  # looped: 0,0,1 | 1,1,2 | 2,2,3 ... -> 3 per ms after the first
    assert cap.rate_bps_at(1.0) == pytest.approx(3 * 12e6)


def test_factor_window_scales_the_rate():
    cap = FaultedCapacity(ConstantCapacity(12e6), [RateWindow(1.0, 2.0, factor=0.5)])
    assert cap.tx_finish_s(1.0, 1500) == pytest.approx(1.002)
    assert cap.tx_finish_s(2.0, 1500) == pytest.approx(2.001)
    assert cap.rate_bps_at(1.5) == 6e6 and cap.rate_bps_at(2.5) == 12e6


def test_outage_delays_a_packet_to_the_end_of_the_window():
    cap = FaultedCapacity(ConstantCapacity(12e6), [RateWindow(1.0, 2.0, outage=True)])
    assert cap.tx_finish_s(1.5, 1500) == pytest.approx(2.001)
    # a transmission that spans the outage's start: 750 B before, 750 B after
    assert cap.tx_finish_s(0.9995, 1500) == pytest.approx(2.0005)
    assert cap.rate_bps_at(1.5) == 0.0


def test_absolute_rate_window():
    cap = FaultedCapacity(ConstantCapacity(12e6), [RateWindow(0.0, 1.0, rate_bps=6e6)])
    assert cap.tx_finish_s(0.0, 1500) == pytest.approx(0.002)
    # 375 B at 6 Mbit/s before 1.0 s, the other 1125 B at 12 Mbit/s: 0.75 ms more
    assert cap.tx_finish_s(0.9995, 1500) == pytest.approx(1.00075)


def test_factor_on_a_trace_shrinks_each_opportunity():
    cap = FaultedCapacity(TraceCapacity(np.array([1])), [RateWindow(0.0, 1.0, factor=0.5)])
    # 750 B per opportunity: a 1500 B packet needs the 1 ms and 2 ms opportunities
    assert finishes(cap, [(0.0, 1500)] * 2) == pytest.approx([0.002, 0.004])
    assert cap.rate_bps_at(0.5) == pytest.approx(6e6)


def test_outage_on_a_trace_skips_its_opportunities():
    cap = FaultedCapacity(TraceCapacity(np.array([1])), [RateWindow(0.0, 0.0035, outage=True)])
    assert cap.tx_finish_s(0.0, 1500) == pytest.approx(0.004)


def test_rate_window_validation():
    with pytest.raises(ValueError):
        RateWindow(1.0, 2.0)
    with pytest.raises(ValueError):
        RateWindow(1.0, 2.0, factor=0.5, outage=True)
    with pytest.raises(ValueError):
        FaultedCapacity(ConstantCapacity(1e6), [RateWindow(0, 2, outage=True), RateWindow(1, 3, factor=0.5)])


# ---------------------------------------------------------------------------- queue


def test_tail_drop_when_the_queue_is_full():
    env = simpy.Environment()
    link = Link(env, ConstantCapacity(12e6), prop_delay_s=0.0, queue_bytes=3000)
    # two 1500 B packets fill 3000 B; the third is dropped; at 1 ms one has left, so the fourth fits
    log, results = offer(link, env, [(0.0, 1500), (0.0, 1500), (0.0, 1500), (0.001, 1500)])
    assert results == [True, True, False, True]
    assert link.tail_drops == 1 and link.sent_pkts == 4
    assert log == [(pytest.approx(0.001), 0), (pytest.approx(0.002), 1), (pytest.approx(0.003), 3)]


def test_backlog_counts_bytes_not_yet_departed():
    env = simpy.Environment()
    link = Link(env, ConstantCapacity(12e6), prop_delay_s=0.05, queue_bytes=10**6)
    seen = []

    def proc():  # type: ignore[no-untyped-def]
        for _ in range(4):
            link.send(Pkt(1500), lambda p: None)
        seen.append(link.backlog_bytes())
        yield env.timeout(0.0025)  # two have left, the third is half transmitted
        seen.append(link.backlog_bytes())
        yield env.timeout(0.01)
        seen.append(link.backlog_bytes())

    env.process(proc())
    env.run()
    assert seen == [6000, 3000, 0]


def test_fifo_order_survives_a_shrinking_delay():
    env = simpy.Environment()
    # packets departing in [0, 1.5 ms) get +50 ms; the later two depart after it and would overtake
    link = Link(env, ConstantCapacity(12e6), 0.01, 10**6, delay_windows=[(0.0, 0.0015, 0.05)])
    log, _ = offer(link, env, [(0.0, 1500), (0.0015, 1500), (0.002, 1500)])
    assert [tag for _, tag in log] == [0, 1, 2]
    assert [t for t, _ in log] == pytest.approx([0.061, 0.061, 0.061])


def test_arrivals_at_one_instant_keep_send_order():
    env = simpy.Environment()
    link = Link(env, ConstantCapacity(1e12), 0.01, 10**9)  # near-zero transmission: equal-ish times
    log, _ = offer(link, env, [(0.0, 40)] * 200)
    assert [tag for _, tag in log] == list(range(200))


def test_random_loss_is_silent_and_counted():
    env = simpy.Environment()
    link = Link(env, ConstantCapacity(12e6), 0.0, 10**6, loss=BernoulliLoss(1.0, np.random.default_rng(0)))
    log, results = offer(link, env, [(0.0, 1500)] * 3)
    assert results == [True, True, True] and log == []
    assert link.random_drops == 3 and link.tail_drops == 0 and link.delivered_bytes == 0


def test_delay_line_keeps_order_and_delay():
    env = simpy.Environment()
    line = DelayLine(env, 0.02)
    got = []

    def proc():  # type: ignore[no-untyped-def]
        for i in range(3):
            line.send(i, lambda ev: got.append((env.now, ev.value)))
            yield env.timeout(0.001)

    env.process(proc())
    env.run()
    assert got == [(pytest.approx(0.02), 0), (pytest.approx(0.021), 1), (pytest.approx(0.022), 2)]


# ---------------------------------------------------------------------------- loss models


def draws(model: LossModel, n: int) -> np.ndarray:
    return np.fromiter((model.lost(0.0) for _ in range(n)), dtype=bool, count=n)


def test_bernoulli_rate():
    x = draws(BernoulliLoss(0.02, np.random.default_rng(1)), 200_000)
    assert abs(x.mean() - 0.02) < 0.001  # ~3 standard errors


def test_gilbert_elliott_long_run_rate_and_burst_length():
    p, r, bad, good = 0.01, 0.1, 0.5, 0.001
    model = GilbertElliottLoss(p, r, bad, good, np.random.default_rng(2))
    x = draws(model, 1_000_000)
    expected = p / (p + r) * bad + r / (p + r) * good
    assert model.mean_loss == pytest.approx(expected)
    assert x.mean() == pytest.approx(expected, rel=0.06)
    # with loss_bad = 1 every loss run is a stay in Bad: mean length 1 / r
    x = draws(GilbertElliottLoss(0.02, 0.25, 1.0, 0.0, np.random.default_rng(3)), 500_000)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], x.astype(np.int8), [0]))))
    runs = edges[1::2] - edges[::2]
    assert runs.mean() == pytest.approx(1 / 0.25, rel=0.05)


def test_gilbert_elliott_moves_before_deciding():
    # netem order: the first packet may already move G->B and be lost in Bad
    assert GilbertElliottLoss(1.0, 0.0, 1.0, 0.0, np.random.default_rng(0)).lost(0.0) is True
    with pytest.raises(ValueError):
        GilbertElliottLoss(0.1, 0.1)


def test_loss_models_are_deterministic_given_the_generator():
    a = draws(GilbertElliottLoss(0.05, 0.3, 0.8, 0.01, np.random.default_rng(7)), 10_000)
    b = draws(GilbertElliottLoss(0.05, 0.3, 0.8, 0.01, np.random.default_rng(7)), 10_000)
    c = draws(GilbertElliottLoss(0.05, 0.3, 0.8, 0.01, np.random.default_rng(8)), 10_000)
    assert (a == b).all() and not (a == c).all()


def test_timed_loss_last_covering_window_wins():
    always = BernoulliLoss(1.0, np.random.default_rng(0))
    never = BernoulliLoss(0.0, np.random.default_rng(0))
    model = TimedLoss(NoLoss(), [(1.0, 3.0, always), (2.0, 2.5, never)])
    assert [model.lost(t) for t in (0.5, 1.0, 1.9, 2.0, 2.4, 2.5, 3.0)] == [
        False, True, True, False, False, True, False,
    ]  # fmt: skip
