"""live.lab.tunlink's link model is the simulator's: the same packets offered to the downlink
``live.lab.tunlink.path_schedules`` builds (a ``sim.model.path.Bottleneck``) and to the SimPy ``sim.link.Link``
that ``sim.network.build_path`` builds arrive at the same instants (bit for bit) and are dropped the same
way. No root needed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import simpy

from live.lab.tunlink import DelaySchedule, path_schedules, prestart_schedule
from scenarios.schema import PathSpec, Scenario
from sim.link import call_at
from sim.model.path import Bottleneck, ConstantCapacity, PathModel
from sim.network import build_path

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "scenarios"
LOSS_SEED = 1234


@dataclass
class _Pkt:
    size_bytes: int
    i: int


def _faults(*faults: dict) -> list:  # type: ignore[type-arg]
    """Validated fault models, as ``scenario.faults_for(path)`` hands them out."""
    scn = Scenario.model_validate({"name": "t", "workload": {"arrivals": {"kind": "poisson", "rate_per_s": 1},
                                                             "streams": 1},
                                   "paths": {"p": {"rate_mbps": 1}}, "faults": list(faults)})
    return scn.faults_for("p")


def _packets(seed: int, n: int, mean_rate_bps: float) -> list[tuple[float, int]]:
    """Bursts above the link rate (to fill the queue and tail-drop) and lulls below it (to drain it)."""
    rng = np.random.default_rng(seed)
    sizes = rng.choice([52, 52, 120, 576, 1500, 1500, 1500, 1500], size=n)
    out: list[tuple[float, int]] = []
    t = 0.0
    for i, size in enumerate(sizes):
        load = 1.6 if (i // 300) % 2 == 0 else 0.4  # offered load / mean rate
        t += rng.exponential(size * 8 / (mean_rate_bps * load))
        if i % 97 == 0:
            t = float(np.nextafter(t, math.inf))  # and a few packets a hair apart
        out.append((t, int(size)))
    out.insert(n // 2, (out[n // 2 - 1][0], 1500))  # two packets at the same instant
    return out


def _sim_outcomes(spec: PathSpec, faults: list, packets: list[tuple[float, int]]) -> list[object]:  # type: ignore[type-arg]
    env = simpy.Environment()
    path = build_path(env, "p", spec, faults, SCENARIO_DIR, np.random.default_rng(LOSS_SEED))
    link = path.link
    out: list[object] = ["never"] * len(packets)

    def on_arrive(pkt: _Pkt) -> None:
        out[pkt.i] = env.now

    def sender(i: int, size: int):  # type: ignore[no-untyped-def]
        def fire(ev: object) -> None:
            before = link.random_drops
            if not link.send(_Pkt(size, i), on_arrive):
                out[i] = "tail"
            elif link.random_drops > before:
                out[i] = "random"

        return fire

    for i, (t, size) in enumerate(packets):
        call_at(env, t, sender(i, size))
    env.run(until=packets[-1][0] + 3600)
    return out


def _schedule_outcomes(spec: PathSpec, faults: list, packets: list[tuple[float, int]]  # type: ignore[type-arg]
                       ) -> tuple[list[object], Bottleneck, DelaySchedule]:
    down, up = path_schedules(spec, faults, SCENARIO_DIR, np.random.default_rng(LOSS_SEED))
    out: list[object] = []
    for t, size in packets:
        before = down.random_drops
        arr = down.offer(t, size)
        if arr is None:
            out.append("random" if down.random_drops > before else "tail")
        else:
            out.append("never" if arr == math.inf else arr)
    return out, down, up


CASES: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {
    "constant": ({"rate_mbps": 10, "rtt_ms": 40}, []),
    "constant-small-queue-bernoulli": ({"rate_mbps": 5, "rtt_ms": 30, "queue_bytes": 20_000,
                                        "loss": {"kind": "bernoulli", "p": 0.05}}, []),
    "schedule-with-zero": ({"rate_schedule": [{"at_s": 0, "rate_mbps": 10}, {"at_s": 1.5, "rate_mbps": 2},
                                              {"at_s": 3, "rate_mbps": 0}, {"at_s": 3.4, "rate_mbps": 8}],
                            "rtt_ms": 50}, []),
    "schedule-ends-at-zero": ({"rate_schedule": [{"at_s": 0, "rate_mbps": 6}, {"at_s": 2.5, "rate_mbps": 0}],
                               "rtt_ms": 20, "queue_bytes": 1_000_000}, []),
    "trace": ({"trace": "traces/Verizon-LTE-short.down", "rtt_ms": 60, "queue_bytes": 150_000}, []),
    "constant-faults": (
        {"rate_mbps": 8, "rtt_ms": 40, "loss": {"kind": "gilbert_elliott", "p": 0.02, "r": 0.3}},
        [{"kind": "outage", "at_s": 1.0, "duration_s": 0.7},
         {"kind": "rate", "at_s": 2.0, "duration_s": 0.5, "factor": 0.5},
         {"kind": "rate", "at_s": 3.0, "duration_s": 0.5, "rate_mbps": 3},
         {"kind": "delay", "at_s": 0.5, "duration_s": 1.0, "delay_ms": 30},
         {"kind": "delay", "at_s": 1.2, "duration_s": 0.6, "delay_ms": 10},
         {"kind": "loss", "at_s": 2.2, "duration_s": 0.8, "p": 0.2},
         {"kind": "gilbert_elliott", "at_s": 3.6, "duration_s": 0.5, "p": 0.1, "r": 0.5}]),
    "trace-faults": ({"trace": "traces/TMobile-UMTS-driving.down", "rtt_ms": 120, "queue_bytes": 100_000},
                     [{"kind": "outage", "at_s": 0.8, "duration_s": 1.0},
                      {"kind": "rate", "at_s": 2.0, "duration_s": 1.5, "factor": 0.4},
                      {"kind": "loss", "at_s": 1.0, "duration_s": 2.0, "p": 0.03}]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_link_schedule_matches_the_simulator_link(case: str) -> None:
    spec_d, faults_d = CASES[case]
    spec = PathSpec.model_validate(spec_d)
    faults = _faults(*faults_d)
    packets = _packets(7, 3000, PathModel.from_spec(spec, faults, SCENARIO_DIR).nominal_rate_bps)
    want = _sim_outcomes(spec, faults, packets)
    got, down, up = _schedule_outcomes(spec, faults, packets)
    mismatches = [(i, w, g) for i, (w, g) in enumerate(zip(want, got, strict=True)) if w != g]
    assert not mismatches, f"{len(mismatches)} packets differ, first: {mismatches[:5]}"
    # the case exercises what it claims to, and the counters add up
    delivered = sum(isinstance(x, float) for x in got)
    assert delivered > 100
    assert down.passed_pkts == delivered
    assert down.offered_pkts == len(packets) == delivered + down.stuck_pkts + down.random_drops + down.tail_drops
    assert down.max_backlog_bytes <= down.queue_bytes
    if "loss" in spec_d or any(f["kind"] in ("loss", "gilbert_elliott") for f in faults_d):
        assert down.random_drops > 0
    if case in ("constant-small-queue-bernoulli", "trace-faults"):
        assert down.tail_drops > 0
    if case == "schedule-ends-at-zero":
        assert down.stuck_pkts > 0
    assert up.delay_s == spec.rtt_ms / 2000
    assert up.offer(1.25, 52) == 1.25 + spec.rtt_ms / 2000


def test_arrivals_are_in_order_and_bounded_by_the_queue() -> None:
    spec = PathSpec.model_validate({"rate_mbps": 10, "rtt_ms": 20, "queue_bytes": 25_000})
    down, _ = path_schedules(spec, [], SCENARIO_DIR, np.random.default_rng(0))
    arrivals = [a for t, s in _packets(3, 2000, 10e6) if (a := down.offer(t, s)) is not None]
    assert arrivals == sorted(arrivals)
    # a packet accepted into a full queue waits at most queue_bytes at the link rate (+ its own transmission)
    down2, _ = path_schedules(spec, [], SCENARIO_DIR, np.random.default_rng(0))
    worst = max(a - t for t, s in _packets(3, 2000, 10e6) if (a := down2.offer(t, s)) is not None)
    assert worst <= 0.010 + 25_000 * 8 / 10e6 + 1e-12


def test_prestart_serves_the_t0_conditions() -> None:
    rng = np.random.default_rng(0)
    sched = {"rate_schedule": [{"at_s": 0, "rate_mbps": 4}, {"at_s": 5, "rate_mbps": 20}], "rtt_ms": 30}
    pre = prestart_schedule(PathSpec.model_validate(sched), _faults({"kind": "delay", "at_s": 0, "duration_s": 2,
                                                                      "delay_ms": 25}), SCENARIO_DIR, rng)
    assert isinstance(pre.capacity, ConstantCapacity) and pre.capacity.rate_bps == 4e6
    assert pre.prop_delay_s == pytest.approx(0.015 + 0.025)
    # any clock: a monotonic reading of hours works the same
    assert pre.offer(9000.0, 1500) == pytest.approx(9000.0 + 1500 * 8 / 4e6 + 0.040)
    # an outage at t=0 would block set-up traffic: the nominal rate instead
    pre = prestart_schedule(PathSpec.model_validate({"rate_mbps": 10}), _faults({"kind": "outage", "at_s": 0,
                                                                                 "duration_s": 3}), SCENARIO_DIR, rng)
    assert pre.capacity.rate_bps == 10e6  # type: ignore[attr-defined]
    # a rate fault at 0 counts; a trace plays its mean rate; a loss fault at 0 is the loss model
    pre = prestart_schedule(PathSpec.model_validate({"trace": "traces/Verizon-LTE-short.down"}),
                            _faults({"kind": "rate", "at_s": 0, "duration_s": 3, "factor": 0.5},
                                    {"kind": "loss", "at_s": 0, "duration_s": 3, "p": 1.0}), SCENARIO_DIR, rng)
    from scenarios.traces import load_mahimahi, mean_rate_bps, resolve_trace

    mean = mean_rate_bps(load_mahimahi(resolve_trace("traces/Verizon-LTE-short.down", SCENARIO_DIR)))
    assert pre.capacity.rate_bps == pytest.approx(mean * 0.5)  # type: ignore[attr-defined]
    assert all(pre.offer(9000.0 + i, 100) is None for i in range(20))  # p = 1 at t=0, whatever the clock


def test_clock_start_carries_the_queue_over() -> None:
    """Packets queued before the clock starts keep their place: splitting one constant-rate link at the
    start instant changes no arrival (beyond float rounding of the clock shift)."""
    spec = PathSpec.model_validate({"rate_mbps": 5, "rtt_ms": 40, "queue_bytes": 60_000})
    packets = [(1000.0 + t, s) for t, s in _packets(11, 1500, 5e6)]
    t_start = packets[700][0] + 1e-4
    whole, _ = path_schedules(spec, [], SCENARIO_DIR, np.random.default_rng(0))
    want = [whole.offer(t, s) for t, s in packets]
    pre = prestart_schedule(spec, [], SCENARIO_DIR, np.random.default_rng(0))
    main, _ = path_schedules(spec, [], SCENARIO_DIR, np.random.default_rng(0))
    got: list[float | None] = []
    started = False
    for t, s in packets:
        if t < t_start:
            got.append(pre.offer(t, s))
            continue
        if not started:
            assert pre.backlog_bytes(t_start) > 0  # there is something to carry over
            main.continue_from(pre, t_start, t_start)
            started = True
        a = main.offer(t - t_start, s)
        got.append(None if a is None else a + t_start)
    assert [g is None for g in got] == [w is None for w in want]
    for g, w in zip(got, want, strict=True):
        if g is not None:
            assert g == pytest.approx(w, abs=1e-9)
