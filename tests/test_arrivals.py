"""Arrival processes (sim/model/workload.py): Gamma renewal arrivals and piecewise ``phases`` timelines.

The statistical bounds come from the Gamma law itself, not from runs: for N i.i.d. gaps with mean
mu and shape k (variance mu^2 / k, skewness 2 / sqrt(k), excess kurtosis 6 / k) the sample mean has
standard error mu / sqrt(k N), and by the delta method the sample CV^2 = s^2 / m^2 has variance
(2 + 2 / k) / (k^2 N). Every check allows four standard errors.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scenarios import parse_scenario
from sim.cli import main
from sim.model.workload import RNG_ARRIVALS, _PhaseProcess, draw_requests
from tests.cli_fuzz import call_main, run_module

Z = 4.0  # standard errors allowed in a sampling check


def scenario(arrivals: dict[str, Any], streams: int = 50, **extra: Any) -> Any:
    return parse_scenario({"name": "t", "workload": {"arrivals": arrivals, "streams": streams},
                           "paths": {"a": {"rate_mbps": 10}}, **extra})


def times(arrivals: dict[str, Any], streams: int = 50, seed: int | None = None, **extra: Any) -> np.ndarray:
    return np.array([r.arrival_s for r in draw_requests(scenario(arrivals, streams, **extra), Path("."), seed)])


def phases(*spec: tuple[float, dict[str, Any]], repeat: bool = False) -> dict[str, Any]:
    return {"kind": "phases", "repeat": repeat, "phases": [{"duration_s": d, "arrivals": a} for d, a in spec]}


# --------------------------------------------------------------------------- gamma
@pytest.mark.parametrize("shape", [0.1, 1.0, 4.0])
def test_gamma_gaps_have_the_mean_rate_and_cv2_of_the_law(shape: float) -> None:
    n, rate = 40_000, 4.0
    t = times({"kind": "gamma", "rate_per_s": rate, "shape": shape}, n)
    gaps = np.diff(t, prepend=0.0)
    assert len(gaps) == n and np.all(gaps >= 0)
    mu = 1 / rate
    assert abs(gaps.mean() - mu) <= Z * mu / math.sqrt(shape * n)
    cv2 = gaps.var() / gaps.mean() ** 2
    assert abs(cv2 - 1 / shape) <= Z * math.sqrt((2 + 2 / shape) / (shape**2 * n))


def test_gamma_with_shape_one_is_poisson_in_law_and_shape_01_is_bursty() -> None:
    """Andes' burst (shape 0.1): half of the gaps are under 0.6% of the mean gap -- the median of
    Gamma(0.1, scale 10) is 0.0059339 (scipy.stats.gamma(0.1, scale=10).median()) -- so requests
    land in clumps, while for shape 1 the median gap is ln 2 of the mean."""
    n = 40_000
    for shape, median in [(0.1, 0.0059339), (1.0, math.log(2))]:
        gaps = np.diff(times({"kind": "gamma", "rate_per_s": 1.0, "shape": shape}, n), prepend=0.0)
        # the share of gaps under the law's median is 1/2, binomial standard error 1/(2 sqrt(n))
        assert abs(np.mean(gaps < median) - 0.5) <= Z * 0.5 / math.sqrt(n)


# --------------------------------------------------------------------------- phases
def test_phases_switch_at_their_boundaries() -> None:
    """Periodic phases land on exact times: every 0.5 s for 5 s, every 2 s for 4 s, every 1 s for 3 s;
    each starts at its phase's start and none falls on or past its end."""
    spec = phases((5, {"kind": "periodic", "rate_per_s": 2}), (4, {"kind": "periodic", "rate_per_s": 0.5}),
                  (3, {"kind": "periodic", "rate_per_s": 1}))
    expected = [0.5 * i for i in range(10)] + [5.0, 7.0] + [9.0, 10.0, 11.0]
    assert times(spec, 100).tolist() == expected  # the timeline ends after 12 s: 15 requests, not 100
    assert times(spec, 12).tolist() == expected[:12]  # ... and streams caps it
    assert times(dict(spec, repeat=True), 20).tolist() == expected + [12 + x for x in expected[:5]]


def test_random_phases_keep_their_rates_and_their_own_streams() -> None:
    """Poisson 10/s for 50 s, a Gamma(0.1) burst at 50/s for 10 s, Poisson 1/s for 40 s. Counts:
    a Poisson count has variance its mean; a renewal count over T has variance about T rate CV^2."""
    quiet, burst, tail = ({"kind": "poisson", "rate_per_s": 10}, {"kind": "gamma", "rate_per_s": 50, "shape": 0.1},
                          {"kind": "poisson", "rate_per_s": 1})
    t = times(phases((50, quiet), (10, burst), (40, tail)), 10_000)
    counts = np.histogram(t, bins=[0, 50, 60, 100])[0]
    assert abs(counts[0] - 500) <= Z * math.sqrt(500)
    assert abs(counts[1] - 500) <= Z * math.sqrt(10 * 50 * 10)
    assert abs(counts[2] - 40) <= Z * math.sqrt(40)
    assert t.max() < 100 and np.all(np.diff(t) >= 0)
    # the burst's arrivals are its own stream's Gamma process, started at 50 s
    own = _PhaseProcess(scenario(phases((10, burst))).workload.arrivals.phases[0].arrivals,
                        np.random.default_rng([1, RNG_ARRIVALS, 1])).times(50.0, 10.0, 10_000)
    assert t[(t >= 50) & (t < 60)].tolist() == own.tolist()
    # a busier first phase moves no arrival of the later ones
    t2 = times(phases((50, dict(quiet, rate_per_s=20)), (10, burst), (40, tail)), 10_000)
    assert t2[t2 >= 50].tolist() == t[t >= 50].tolist()


def test_repeating_phases_continue_their_streams_and_stop_at_streams() -> None:
    spec = phases((3, {"kind": "poisson", "rate_per_s": 5}), (2, {"kind": "gamma", "rate_per_s": 20, "shape": 0.1}),
                  repeat=True)
    t = times(spec, 2_000)
    assert len(t) == 2_000 and np.all(np.diff(t) >= 0)
    cycle1, cycle2 = t[t < 5], t[(t >= 5) & (t < 10)] - 5
    assert len(cycle1) and cycle1.tolist() != cycle2.tolist()  # the next cycle draws fresh gaps
    # with repeat, arrivals stop at max_duration_s (the run ends there anyway)
    assert times(spec, 100_000, max_duration_s=30).max() < 30


# --------------------------------------------------------------------------- common random numbers
SINGLE = [
    {"kind": "poisson", "rate_per_s": 3.0},
    {"kind": "periodic", "rate_per_s": 3.0},
    {"kind": "bursty", "rate_on_per_s": 3.0, "on_s": 7, "off_s": 0},
    {"kind": "gamma", "rate_per_s": 3.0, "shape": 0.1},
    {"kind": "gamma", "rate_per_s": 3.0, "shape": 2.5},
]


def _scaled(a: dict[str, Any], k: float) -> dict[str, Any]:
    return {key: (v * k if key in ("rate_per_s", "rate_on_per_s") else v) for key, v in a.items()}


@pytest.mark.parametrize("arrivals", SINGLE, ids=lambda a: f"{a['kind']}-{a.get('shape', '')}")
def test_scaling_the_rate_by_k_scales_arrival_times_by_1_over_k(arrivals: dict[str, Any]) -> None:
    base = times(arrivals, 3_000, seed=7)
    # k a power of two: dividing by 2r or by r then 2 round alike, so the times are equal to the bit
    assert (times(_scaled(arrivals, 2.0), 3_000, seed=7) * 2.0).tolist() == base.tolist()
    assert (times(_scaled(arrivals, 0.25), 3_000, seed=7) * 0.25).tolist() == base.tolist()
    # any other k: the same requests in the same order, to rounding (a few ulps)
    np.testing.assert_allclose(times(_scaled(arrivals, 3.0), 3_000, seed=7) * 3.0, base, rtol=1e-13, atol=0)


def test_scaling_phase_rates_scales_each_phases_offsets_by_1_over_k() -> None:
    """Phase boundaries are times, not rates: at k times the rate each phase holds more arrivals,
    and those of the slower timeline, their offsets from the phase start divided by k, come first."""
    spec = [(20, {"kind": "poisson", "rate_per_s": 2.0}), (10, {"kind": "gamma", "rate_per_s": 8.0, "shape": 0.1}),
            (20, {"kind": "poisson", "rate_per_s": 2.0})]
    slow = times(phases(*spec), 100_000)
    fast = times(phases(*[(d, _scaled(a, 2.0)) for d, a in spec]), 100_000)
    for start, end in [(0, 20), (20, 30), (30, 50)]:
        s, f = slow[(slow >= start) & (slow < end)] - start, fast[(fast >= start) & (fast < end)] - start
        assert len(f) > len(s) > 0
        # exact in the offsets; adding the phase's start and taking it off again rounds (ulps of 50 s)
        np.testing.assert_allclose(f[: len(s)] * 2.0, s, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- bad specs
BAD = [
    ({"kind": "gamma", "rate_per_s": 1}, "workload.arrivals.shape: Field required"),
    ({"kind": "gamma", "rate_per_s": 1, "shape": 0}, "workload.arrivals.shape: Input should be greater than 0 (got 0)"),
    ({"kind": "gamma", "rate_per_s": -2, "shape": 1},
     "workload.arrivals.rate_per_s: Input should be greater than 0 (got -2)"),
    ({"kind": "phases", "phases": []},
     "workload.arrivals.phases: List should have at least 1 item after validation, not 0"),
    (phases((5, {"kind": "bursty", "rate_on_per_s": 1, "on_s": 1, "off_s": 1})),
     "workload.arrivals.phases.0.arrivals.kind: unknown kind 'bursty' (one of: poisson, gamma, periodic)"),
    (phases((5, {"kind": "poisson", "rate_per_s": 1}), (0, {"kind": "poisson", "rate_per_s": 1})),
     "workload.arrivals.phases.1.duration_s: Input should be greater than 0 (got 0)"),
    ({"kind": "phases", "phases": [{"durations": 5, "arrivals": {"kind": "poisson", "rate_per_s": 1}}]},
     "workload.arrivals.phases.0.durations: unknown key (did you mean duration_s?)"),
    (phases((0.004, {"kind": "poisson", "rate_per_s": 1}), repeat=True),
     "workload.arrivals.phases: must last at least 0.01 s in all to repeat"),
]


@pytest.mark.parametrize(("arrivals", "line"), BAD, ids=[b[1].split(":")[0] + str(i) for i, b in enumerate(BAD)])
def test_bad_arrival_specs_exit_2_naming_the_key(tmp_path: Path, arrivals: dict[str, Any], line: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\nworkload: {{arrivals: {arrivals!r}, streams: 3}}\npaths: {{a: {{rate_mbps: 1}}}}\n")
    ended = call_main(main, ["check", str(path)]).check()
    assert ended.code == 2
    assert f"error: {path}: {line}" in ended.err.splitlines(), ended.err


def test_bad_phases_exit_2_from_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nworkload: {arrivals: {kind: phases, phases: [{duration_s: 5, arrivals: "
                    "{kind: gamma, rate_per_s: 1}}]}, streams: 3}\npaths: {a: {rate_mbps: 1}}\n")
    ended = run_module("sim", ["check", str(path)], timeout_s=60)
    assert ended.code == 2 and "Traceback" not in ended.err
    assert ended.err.splitlines() == [f"error: {path}: workload.arrivals.phases.0.arrivals.shape: Field required"]
