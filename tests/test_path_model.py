"""The clock-free path model (``sim.model.path``) checked by hand: the bottleneck's queue and timing,
the Gilbert-Elliott mean loss, and what ``PathModel`` reads from a path spec with faults.

The simulator's link and the live user-space link drive this one model; ``tests/test_tunlink_model.py``
pins that both drivers give the same arrivals, ``tests/test_link.py`` the capacity and loss models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import simpy
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from live.kernel.faults import shape_at as live_shape_at
from scenarios.schema import Fault, PathSpec
from scenarios.traces import load_mahimahi, mean_rate_bps, resolve_trace
from sim.link import Link
from sim.model.path import (
    MIN_QUEUE_BYTES,
    BernoulliLoss,
    Bottleneck,
    ConstantCapacity,
    GilbertElliottLoss,
    PathModel,
    ScheduleCapacity,
    TimedLoss,
    default_queue_bytes,
    gilbert_elliott_mean_loss,
)

_FAULTS: TypeAdapter[list[object]] = TypeAdapter(list[Fault])
SCENARIO_DIR = Path(__file__).resolve().parents[1] / "scenarios"


def path(**kw: object) -> PathSpec:
    return PathSpec.model_validate(kw)


def faults(*kws: dict[str, object]) -> list[object]:
    return _FAULTS.validate_python(list(kws))


# --------------------------------------------------------------------------- the bottleneck
def test_one_mbps_link_serves_a_1500_byte_packet_in_12_ms_and_drops_at_queue_bytes():
    link = Bottleneck(ConstantCapacity(1e6), prop_delay_s=0.010, queue_bytes=3 * 1500)
    # three packets at t=0 queue back to back: departures 12, 24, 36 ms; arrivals 10 ms later
    assert [link.offer(0.0, 1500) for _ in range(3)] == pytest.approx([0.022, 0.034, 0.046])
    assert link.backlog_bytes(0.0) == 4500
    assert link.offer(0.0, 1) is None  # 4500 + 1 > 4500: tail drop
    assert link.tail_drops == 1 and link.tail_dropped
    assert link.backlog_bytes(0.012) == 3000  # the first has left at 12 ms
    # exactly queue_bytes fits: it starts when the third leaves (36 ms) and takes 12 ms
    assert link.offer(0.012, 1500) == pytest.approx(0.048 + 0.010)
    assert link.backlog_bytes(0.013) == 4500 and link.max_backlog_bytes == 4500
    assert link.offer(0.013, 1500) is None
    # an idle link serves at once: offered at 1 s, 40 bytes take 0.32 ms
    assert link.offer(1.0, 40) == pytest.approx(1.0 + 40 * 8 / 1e6 + 0.010)
    assert link.counters() == {"offered_pkts": 7, "offered_bytes": 3 * 1500 + 1 + 1500 + 1500 + 40,
                               "passed_pkts": 5, "passed_bytes": 4 * 1500 + 40, "random_drops": 0,
                               "tail_drops": 2, "stuck_pkts": 0, "max_backlog_bytes": 4500}


def test_random_loss_comes_before_the_queue_and_takes_no_room():
    link = Bottleneck(ConstantCapacity(1e6), 0.0, 1500, BernoulliLoss(1.0, np.random.default_rng(0)))
    assert link.offer(0.0, 1500) is None and link.random_drops == 1 and not link.tail_dropped
    assert link.backlog_bytes(0.0) == 0
    link.loss = None  # the loss stops: the queue was never touched
    assert link.offer(0.0, 1500) == pytest.approx(0.012)
    assert link.passed_pkts == 1 and link.passed_bytes == 1500


def test_delay_windows_add_at_departure_and_arrivals_never_overtake():
    # +50 ms for departures in [0, 13 ms): the first leaves at 12 ms and arrives at 62 ms; the second
    # leaves at 24 ms, after the window, and would arrive at 24 ms: held back to 62 ms, behind the first
    link = Bottleneck(ConstantCapacity(1e6), 0.0, 10**6, delay_windows=[(0.0, 0.013, 0.050)])
    first = link.offer(0.0, 1500)
    assert first == pytest.approx(0.062)
    assert link.offer(0.0, 1500) == first
    assert link.offer(0.1, 1500) == pytest.approx(0.112)  # idle again: no window, no clamp


def test_a_packet_the_capacity_never_serves_is_stuck_for_good():
    link = Bottleneck(ScheduleCapacity([(0.0, 1e6), (0.006, 0.0)]), 0.0, 10**6)
    assert link.offer(0.0, 1500) == math.inf  # half served when the rate drops to 0 for good
    assert link.stuck_pkts == 1 and link.passed_pkts == 0 and link.backlog_bytes(100.0) == 1500


def test_continue_from_carries_the_queue_over_a_clock_shift():
    pre = Bottleneck(ConstantCapacity(1e6), 0.0, 10**6)
    pre.offer(1000.0, 1500)
    pre.offer(1000.0, 1500)  # departures 1000.012, 1000.024 on the pre-start clock
    main = Bottleneck(ConstantCapacity(1e6), 0.0, 10**6)
    main.continue_from(pre, 1000.006, 1000.0)  # time 0 of `main` is 1000 on `pre`'s clock
    assert main.backlog_bytes(0.0) == 3000
    assert main.offer(0.0, 1500) == pytest.approx(0.036)  # behind the two carried over


_SIZES = st.integers(1, 3000)
_TIMES = st.sampled_from([0.0, 0.002, 0.01, 0.05, 0.2, 0.5])
_OFFERS = st.lists(st.tuples(st.sampled_from([0.0, 0.0005, 0.004, 0.03]), _SIZES), max_size=60)  # (gap_s, bytes)
_CAPACITIES = st.one_of(
    st.floats(2e5, 5e7).map(ConstantCapacity),
    st.lists(st.tuples(_TIMES, st.sampled_from([0.0, 3e5, 2e6, 1e7])), min_size=1, max_size=4)
    .map(ScheduleCapacity),
    st.tuples(st.sampled_from([3e5, 2e6]), _TIMES)  # a rate that drops to 0 for good leaves packets stuck
    .map(lambda rate_at: ScheduleCapacity([(0.0, rate_at[0]), (rate_at[1], 0.0)])),
)
_WINDOWS = st.lists(st.tuples(_TIMES, _TIMES, st.sampled_from([0.0, 0.005, 0.05, 0.2])), max_size=3)


@given(capacity=_CAPACITIES, prop_delay_s=st.sampled_from([0.0, 0.01, 0.0371]), queue_bytes=st.integers(1, 20000),
       loss_p=st.sampled_from([None, 0.0, 0.3, 1.0]),
       windows=_WINDOWS,
       offers=_OFFERS)
@example(ConstantCapacity(1e6), 0.0, 10**6, None, [(0.0, 0.013, 0.05)], [(0.0, 1500), (0.0, 1500)])  # clamped arrival
@example(ConstantCapacity(8e6), 0.0, 500, None, [], [(0.0, 500), (0.0005, 500)])  # leaves exactly as the next comes
def test_the_simulators_inlined_link_send_is_bottleneck_offer(capacity, prop_delay_s, queue_bytes, loss_p, windows,
                                                             offers):
    """``sim.link.Link.send`` inlines ``Bottleneck.offer`` (the per-packet fast path, issue #13): on any
    offer sequence both give the same arrival times, the same drops of each kind, backlog and counters."""
    windows = [(s, s + d, added) for s, d, added in windows]

    def loss() -> BernoulliLoss | None:
        return None if loss_p is None else BernoulliLoss(loss_p, np.random.default_rng(7))

    env = simpy.Environment()
    link = Link(env, capacity, prop_delay_s, queue_bytes, loss(), windows)
    ref = Bottleneck(capacity, prop_delay_s, queue_bytes, loss(), windows)
    arrived: dict[int, float] = {}
    want: dict[int, float] = {}

    class Pkt:
        def __init__(self, i: int, size_bytes: int) -> None:
            self.i, self.size_bytes = i, size_bytes

    t = 0.0
    for i, (gap_s, size) in enumerate(offers):
        t += gap_s
        if t > env.now:
            env.run(until=t)
        now = env.now
        arr = ref.offer(now, size)
        sent = link.send(Pkt(i, size), lambda p: arrived.__setitem__(p.i, env.now))
        assert sent == (arr is not None or not ref.tail_dropped)  # False for a tail drop only
        assert link.bottleneck.tail_dropped == ref.tail_dropped
        if arr is not None and arr != math.inf:
            want[i] = arr
        assert link.backlog_bytes() == ref.backlog_bytes(now)
    env.run()
    assert arrived == want
    assert link.bottleneck.counters() == ref.counters()
    assert link.delivered_bytes == ref.passed_bytes


# --------------------------------------------------------------------------- loss
def test_gilbert_elliott_mean_loss_weights_the_states_by_p_over_p_plus_r():
    # pi_bad = 0.05 / (0.05 + 0.2) = 0.2
    assert gilbert_elliott_mean_loss(0.05, 0.2, 0.8, 0.01) == pytest.approx(0.2 * 0.8 + 0.8 * 0.01)
    assert gilbert_elliott_mean_loss(0.1, 0.3) == pytest.approx(0.25)  # loss_bad 1, loss_good 0
    assert gilbert_elliott_mean_loss(0.0, 0.0, 0.9, 0.03) == 0.03  # never leaves Good, where it starts
    ge = GilbertElliottLoss(0.05, 0.2, 0.8, 0.01, np.random.default_rng(0))
    assert ge.mean_loss == gilbert_elliott_mean_loss(0.05, 0.2, 0.8, 0.01)


def test_path_loss_is_the_last_fault_in_force_else_the_paths_own():
    spec = path(rate_mbps=10, loss={"kind": "bernoulli", "p": 0.01})
    model = PathModel.from_spec(spec, faults(
        {"kind": "gilbert_elliott", "at_s": 1, "duration_s": 2, "p": 0.05, "r": 0.2, "loss_bad": 0.8,
         "loss_good": 0.01},
        {"kind": "loss", "at_s": 2, "duration_s": 2, "p": 0.3}), SCENARIO_DIR)
    assert model.loss_rate(0.5) == 0.01
    assert model.loss_rate(1.5) == pytest.approx(0.168)
    assert model.loss_rate(2.5) == 0.3  # both cover 2.5: the later fault in the list wins
    assert model.loss_rate(4.0) == 0.01  # windows are [at_s, at_s + duration_s)
    loss = model.loss(np.random.default_rng(0))
    assert isinstance(loss, TimedLoss)
    assert PathModel.from_spec(path(rate_mbps=10), [], SCENARIO_DIR).loss(np.random.default_rng(0)) is None


# --------------------------------------------------------------------------- the path spec
def test_nominal_rate_and_default_queue():
    # one BDP at the nominal rate, at least 64 KiB
    assert default_queue_bytes(10e6, 100) == 125_000
    assert default_queue_bytes(1e6, 40) == MIN_QUEUE_BYTES == 65_536
    sched = PathModel.from_spec(path(rate_schedule=[{"at_s": 0, "rate_mbps": 4}, {"at_s": 5, "rate_mbps": 40}],
                                     rtt_ms=50), [], SCENARIO_DIR)
    assert sched.nominal_rate_bps == 40e6 and sched.queue_bytes == 250_000  # the top of the schedule
    trace = "traces/Verizon-LTE-short.down"
    lte = PathModel.from_spec(path(trace=trace, rtt_ms=60), [], SCENARIO_DIR)
    mean = mean_rate_bps(load_mahimahi(resolve_trace(trace, None)))
    assert lte.nominal_rate_bps == mean and lte.queue_bytes == int(max(MIN_QUEUE_BYTES, mean / 8 * 0.060))
    given = PathModel.from_spec(path(rate_mbps=10, rtt_ms=100, queue_bytes=20_000), [], SCENARIO_DIR)
    assert given.queue_bytes == 20_000 and given.one_way_s == 0.05


FADE = ({"kind": "rate", "at_s": 1, "duration_s": 2, "factor": 0.25},
        {"kind": "delay", "at_s": 2, "duration_s": 2, "delay_ms": 50},
        {"kind": "loss", "at_s": 2, "duration_s": 1, "p": 0.1},
        {"kind": "outage", "at_s": 5, "duration_s": 1})


def test_shape_at_on_a_fade_keeps_the_nominal_queue():
    model = PathModel.from_spec(path(rate_mbps=20, rtt_ms=30), faults(*FADE), SCENARIO_DIR)
    s = model.shape_at(0.5)
    assert (s.rate_bps, s.one_way_s, s.loss_rate, s.queue_bytes) == (20e6, 0.015, 0.0, 75_000)
    s = model.shape_at(2.5)  # faded to a quarter, 50 ms more each way, 10 % loss; the buffer stays
    assert s.rate_bps == 5e6 and s.one_way_s == pytest.approx(0.065) and s.loss_rate == 0.1
    assert s.queue_bytes == 75_000
    assert model.shape_at(5.5).rate_bps == 0.0 and model.shape_at(6.0).rate_bps == 20e6
    # a trace is shaped at its mean rate, faded by the factor
    trace = PathModel.from_spec(path(trace="traces/Verizon-LTE-short.down"), faults(*FADE), SCENARIO_DIR)
    assert trace.shape_at(1.5).rate_bps == pytest.approx(trace.nominal_rate_bps * 0.25)


def test_the_live_fault_player_sizes_the_queue_at_the_nominal_rate_too():
    base = path(rate_mbps=20, rtt_ms=30)
    fade = faults({"kind": "rate", "at_s": 30, "duration_s": 25, "rate_mbps": 0.2})  # wifi-fade's fault
    s = live_shape_at(40.0, fade, base)
    assert s.rate_mbps == 0.2 and s.queue_bytes == 75_000  # 20 Mbit/s x 30 ms, not the 64 KiB floor of 0.2
    assert s.queue_bytes == PathModel.from_spec(base, fade, SCENARIO_DIR).shape_at(40.0).queue_bytes
    # no path rate to go by (faults alone): sized at the rate in force, as before
    assert live_shape_at(40.0, faults({"kind": "rate", "at_s": 30, "duration_s": 25, "rate_mbps": 100})
                         ).queue_bytes == 500_000


def test_capacity_grid_reads_ahead_in_100_ms_bins():
    model = PathModel.from_spec(path(rate_schedule=[{"at_s": 0, "rate_mbps": 10}, {"at_s": 1, "rate_mbps": 2}]),
                                faults({"kind": "outage", "at_s": 1.5, "duration_s": 0.2}), SCENARIO_DIR)
    grid = model.capacity_grid(2.0)
    assert len(grid.bps) == 21  # bin middles 0.05 .. 2.05
    assert grid.capacity_bps(0.0, 1.0) == 10e6
    assert grid.capacity_bps(0.5, 1.5) == pytest.approx((5 * 10e6 + 5 * 2e6) / 10)
    assert grid.capacity_bps(1.5, 1.7) == 0.0  # the outage
    assert grid.capacity_bps(1.52, 1.53) == 0.0  # a short span still reads one bin
    assert grid.capacity_bps(5.0, 6.0) == 2e6  # past the horizon: the last bin
