"""Controller regression suite: every built-in scenario x every controller.

Each scenario is simulated once per session with all registered controllers; the summary is
compared with tests/golden/<scenario>.json (pinned exactly: analysis/golden.py), and the issue's
claims about pacing are asserted on the same runs. After an intended change:
``python scripts/regen_goldens.py`` and review the diff.

Each claim is asserted only where the goldens say it can fail, and a unit check beside it shows that
it does fail for ``unpaced``: a check that ``unpaced`` itself would pass proves nothing about pacing.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from regression_support import GOLDEN_DIR, run_all_controllers

import controllers
from analysis.golden import ABS_TOL, REGEN_COMMAND, REL_TOL, compare, moved_table, pinned
from analysis.metrics import QOE_TIE, rank_controllers
from scenarios import builtin_scenarios

pytestmark = [pytest.mark.regression, pytest.mark.slow]

SCENARIOS = sorted(builtin_scenarios())


def golden(scenario: str) -> dict[str, Any]:
    """A golden as a summary (``{"controllers": ...}``), so the helpers below take either."""
    return {"scenario": scenario, "controllers": json.loads((GOLDEN_DIR / f"{scenario}.json").read_text())}


@pytest.fixture(scope="session")
def summaries(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    cache: dict[str, dict[str, Any]] = {}

    def get(scenario: str) -> dict[str, Any]:
        if scenario not in cache:
            cache[scenario] = run_all_controllers(scenario, tmp_path_factory.mktemp(scenario), jobs=2)
        return cache[scenario]

    return get


def best_non_oracle(summary: dict[str, Any]) -> str:
    """The best controller a live server could run (analysis.metrics.rank_controllers: QoE within
    QOE_TIE of the top is a tie, which the fewer wasted tokens break). May be ``unpaced``."""
    s = summary["controllers"]
    return rank_controllers({c: m for c, m in s.items() if not controllers.get(c).sim_only})[0]


def best_paced(summary: dict[str, Any]) -> str:
    """The best controller that paces and a live server could run: neither the oracle nor ``unpaced``."""
    s = summary["controllers"]
    return rank_controllers({c: m for c, m in s.items() if c != "unpaced" and not controllers.get(c).sim_only})[0]


# --------------------------------------------------------------------------- pinned metrics
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_metrics_match_golden(scenario: str, summaries) -> None:  # type: ignore[no-untyped-def]
    golden_path = GOLDEN_DIR / f"{scenario}.json"
    assert golden_path.is_file(), f"no golden for {scenario}: run {REGEN_COMMAND} {scenario}"
    moved = compare(summaries(scenario), json.loads(golden_path.read_text()))
    assert not moved, "\n" + moved_table(scenario, moved)


def test_golden_pinning_catches_the_smallest_printed_change() -> None:
    """summary.json rounds to 6 digits; a change in the last of them is a moved metric, float noise is not."""
    summary = golden("wifi-fade")
    pins = pinned(summary)
    assert compare(summary, pins) == []
    nudged = copy.deepcopy(summary)
    nudged["controllers"]["buffer"]["qoe_mean"] += 1e-6
    nudged["controllers"]["mpc"]["tokens_wasted"] += 1
    noise = copy.deepcopy(summary)
    noise["controllers"]["buffer"]["qoe_mean"] *= 1 + REL_TOL / 10
    noise["controllers"]["aimd"]["stall_ratio"] += ABS_TOL / 10
    assert compare(noise, pins) == []
    moved = compare(nudged, pins)
    assert [(m.controller, m.metric) for m in moved] == [("buffer", "qoe_mean"), ("mpc", "tokens_wasted")]
    table = moved_table("wifi-fade", moved)
    assert "buffer       qoe_mean" in table and "0.896831" in table and "+1e-06" in table
    assert "mpc          tokens_wasted" in table and "164" in table and "165" in table and "+0.61%" in table
    assert f"{REGEN_COMMAND} wifi-fade" in table
    del nudged["controllers"]["pid"]
    assert ("pid", "(controller missing)") in [(m.controller, m.metric) for m in compare(nudged, pins)]


# --------------------------------------------------------------------------- pacing cuts waste
# Where unpaced wastes tokens (the goldens: cellular-trace 4402, flash-outage 369, wifi-fade 2038: 0.66% to
# 7.7% of what it made). On bursty-loss, gpu-overload, shared-bottleneck and steady-broadband it wastes none,
# on kv-broadband and kv-mobile one token in ~110k (0.001%): no reader leaves mid-stream with tokens in
# flight, nothing is there for pacing to cut, and the check would be 0 <= 0 -- passed by unpaced itself.
# "Wastes" means at least WASTE_FRAC_MIN of the tokens made. test_case_lists_match_the_goldens keeps this
# list honest.
WASTE_SCENARIOS = ["cellular-trace", "flash-outage", "wifi-fade"]
WASTE_FRAC_MIN = 0.001

# Targets of issue 3 that are measured and NOT met (see README "Targets not met"). They stay asserted as
# written: strict xfail turns green into a failure, so the day a controller meets one, this list must shrink.
NOT_MET_STALL = {
    "wifi-fade": "best (buffer) stall_ratio 0.0384 vs unpaced 0.0059 + 0.01: pacing keeps readers unpaced loses "
    "(6 abandoned vs 21), and their stall through the fade counts; the oracle is at 0.0504 too",
    "cellular-trace": "best (mpc) stall_ratio 0.0546 vs unpaced 0.0439 + 0.01: the UMTS trace is nearly dead "
    "from ~29 s to ~80 s; unpaced had delivered whole responses before it; the oracle is at 0.0609 too",
}


def check_cuts_waste_without_more_stalls(summary: dict[str, Any], best: str) -> None:
    s = summary["controllers"]
    unpaced = s["unpaced"]
    assert s[best]["tokens_wasted"] <= 0.25 * unpaced["tokens_wasted"], (best, s[best]["tokens_wasted"],
                                                                         unpaced["tokens_wasted"])
    assert s[best]["stall_ratio"] <= unpaced["stall_ratio"] + 0.01, (best, s[best]["stall_ratio"],
                                                                     unpaced["stall_ratio"])


@pytest.mark.parametrize("scenario", [
    pytest.param(s, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=NOT_MET_STALL[s]))
    if s in NOT_MET_STALL else s
    for s in WASTE_SCENARIOS
])
def test_pacing_cuts_waste_without_more_stalls(scenario: str, summaries) -> None:  # type: ignore[no-untyped-def]
    summary = summaries(scenario)
    check_cuts_waste_without_more_stalls(summary, best_non_oracle(summary))


@pytest.mark.parametrize("scenario", WASTE_SCENARIOS)
def test_waste_check_fails_for_unpaced(scenario: str) -> None:
    """Were the ranking to name unpaced the best, the waste check would fail on every case above."""
    with pytest.raises(AssertionError, match="unpaced"):
        check_cuts_waste_without_more_stalls(golden(scenario), "unpaced")


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "every controller displays every token in the same run time (effective_tps 968.0 vs 968.0): in a d0 + d1*tokens "
    "node decoding is work-conserving, so pacing can only raise throughput by removing waste, and unpaced wastes "
    "nothing here (no reader leaves mid-stream); per-stream generation under overload is below reading pace, so no "
    "pacing rule binds"))
def test_pacing_frees_gpu_under_overload(summaries) -> None:  # type: ignore[no-untyped-def]
    summary = summaries("gpu-overload")
    s = summary["controllers"]
    best = best_non_oracle(summary)
    assert s[best]["effective_tps"] >= 1.2 * s["unpaced"]["effective_tps"], (best, s[best]["effective_tps"],
                                                                             s["unpaced"]["effective_tps"])
    assert s[best]["slo_attainment"] >= s["unpaced"]["slo_attainment"]


# --------------------------------------------------------------------------- pacing closes the QoE gap
# The oracle (sim only: it knows the path's future) bounds what pacing can win over unpaced. The gap is
# "real" where it is at least two QoE ties (analysis.metrics.QOE_TIE = 0.005, the noise of nudging a
# parameter): by the goldens, wifi-fade (oracle 0.9188 - unpaced 0.8654 = 0.0533) and cellular-trace
# (0.8386 - 0.8235 = 0.0150). Elsewhere it is at most 0.0061 (bursty-loss), 0.0001 (gpu-overload), 0.00005
# (shared-bottleneck), 0.00001 (flash-outage) and 0 (steady-broadband): nothing to close. On kv-broadband and
# kv-mobile the oracle is 0.135 and 0.154 *below* unpaced: on fcfs a paced stream holds KV memory a waiting
# request needs (the oracle goes unpaced only once a request waits, too late); with the tokenpace scheduler it
# is not (tests/test_regression_schedulers.py). The best paced
# controller closes 59% of it on wifi-fade (buffer 0.8968) and 119% on cellular-trace (mpc 0.8415, above the
# oracle's 0.8386: the oracle knows the path, not the readers' patience), so the stated claim is "at least
# half"; losing 0.005 QoE on wifi-fade would break it.
REAL_GAP_QOE = 2 * QOE_TIE
GAP_CLOSED_MIN = 0.5
REAL_GAP_SCENARIOS = ["cellular-trace", "wifi-fade"]


def gap_closed(summary: dict[str, Any], controller: str) -> float:
    """The part of the oracle's QoE lead over unpaced that ``controller`` wins (0 = none, 1 = all of it)."""
    s = summary["controllers"]
    lead = s["oracle"]["qoe_mean"] - s["unpaced"]["qoe_mean"]
    return (s[controller]["qoe_mean"] - s["unpaced"]["qoe_mean"]) / lead


def check_best_paced_closes_the_gap(summary: dict[str, Any]) -> None:
    s = summary["controllers"]
    lead = s["oracle"]["qoe_mean"] - s["unpaced"]["qoe_mean"]
    assert lead > REAL_GAP_QOE, f"oracle - unpaced QoE {lead:.4f} is no longer a real gap (> {REAL_GAP_QOE})"
    best = best_paced(summary)
    closed = gap_closed(summary, best)
    assert closed >= GAP_CLOSED_MIN, (
        f"best paced {best} QoE {s[best]['qoe_mean']:.4f} closes {closed:.0%} of the gap from unpaced "
        f"{s['unpaced']['qoe_mean']:.4f} to the oracle {s['oracle']['qoe_mean']:.4f} (< {GAP_CLOSED_MIN:.0%})")


@pytest.mark.parametrize("scenario", REAL_GAP_SCENARIOS)
def test_best_paced_closes_half_the_gap_to_the_oracle(scenario: str, summaries) -> None:  # type: ignore[no-untyped-def]
    check_best_paced_closes_the_gap(summaries(scenario))


@pytest.mark.parametrize("scenario", REAL_GAP_SCENARIOS)
def test_gap_check_fails_if_unpaced_were_the_best(scenario: str) -> None:
    """Swap the names of unpaced and the best paced controller in the golden: the check must fail."""
    summary = golden(scenario)
    assert gap_closed(summary, "unpaced") == 0.0
    s = summary["controllers"]
    best = best_paced(summary)
    s["unpaced"], s[best] = s[best], s["unpaced"]
    with pytest.raises(AssertionError, match=r"closes|no longer a real gap"):
        check_best_paced_closes_the_gap(summary)


def test_case_lists_match_the_goldens() -> None:
    """The scenarios each claim is asserted on are exactly those where the goldens let it fail."""
    g = {name: golden(name)["controllers"] for name in SCENARIOS}
    wasteful = [n for n in SCENARIOS if g[n]["unpaced"]["waste_frac"] >= WASTE_FRAC_MIN]
    real_gap = [n for n in SCENARIOS if g[n]["oracle"]["qoe_mean"] - g[n]["unpaced"]["qoe_mean"] > REAL_GAP_QOE]
    assert wasteful == WASTE_SCENARIOS
    assert real_gap == REAL_GAP_SCENARIOS
    assert set(NOT_MET_STALL) <= set(WASTE_SCENARIOS)
