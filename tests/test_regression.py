"""Controller regression suite: every built-in scenario x every controller.

Each scenario is simulated once per session with all registered controllers; the summary is
compared with tests/golden/<scenario>.json (tolerances in analysis/golden.py), and the issue's
claims about pacing are asserted on the same runs. After an intended change:
``python scripts/regen_goldens.py`` and review the diff.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from regression_support import GOLDEN_DIR, run_all_controllers

import controllers
from analysis.golden import compare, moved_table
from analysis.metrics import rank_controllers
from scenarios import builtin_scenarios

pytestmark = [pytest.mark.regression, pytest.mark.slow]

SCENARIOS = sorted(builtin_scenarios())
FAULT_SCENARIOS = ["wifi-fade", "bursty-loss", "flash-outage", "cellular-trace"]


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
    QOE_TIE of the top is a tie, which the fewer wasted tokens break)."""
    s = summary["controllers"]
    return rank_controllers({c: m for c, m in s.items() if not controllers.get(c).sim_only})[0]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_metrics_match_golden(scenario: str, summaries) -> None:  # type: ignore[no-untyped-def]
    golden_path = GOLDEN_DIR / f"{scenario}.json"
    assert golden_path.is_file(), f"no golden for {scenario}: run python scripts/regen_goldens.py {scenario}"
    moved = compare(summaries(scenario), json.loads(golden_path.read_text()))
    assert not moved, "\n" + moved_table(scenario, moved)


# Targets of issue 3 that are measured and NOT met (see README "Targets not met"). They stay asserted as
# written: strict xfail turns green into a failure, so the day a controller meets one, this list must shrink.
NOT_MET_STALL = {
    "wifi-fade": "best (buffer) stall_ratio 0.0384 vs unpaced 0.0059 + 0.01: pacing keeps readers unpaced loses "
    "(6 abandoned vs 21), and their stall through the fade counts; the oracle is at 0.0504 too",
    "cellular-trace": "best (mpc) stall_ratio 0.0546 vs unpaced 0.0439 + 0.01: the UMTS trace is nearly dead "
    "from ~29 s to ~80 s; unpaced had delivered whole responses before it; the oracle is at 0.0609 too",
}


@pytest.mark.parametrize("scenario", [
    pytest.param(s, marks=pytest.mark.xfail(strict=True, reason=NOT_MET_STALL[s])) if s in NOT_MET_STALL else s
    for s in FAULT_SCENARIOS
])
def test_pacing_cuts_waste_without_more_stalls(scenario: str, summaries) -> None:  # type: ignore[no-untyped-def]
    s = summaries(scenario)["controllers"]
    best = best_non_oracle(summaries(scenario))
    unpaced = s["unpaced"]
    assert s[best]["tokens_wasted"] <= 0.25 * unpaced["tokens_wasted"], (best, s[best]["tokens_wasted"],
                                                                         unpaced["tokens_wasted"])
    assert s[best]["stall_ratio"] <= unpaced["stall_ratio"] + 0.01, (best, s[best]["stall_ratio"],
                                                                     unpaced["stall_ratio"])


@pytest.mark.xfail(strict=True, reason=(
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


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_best_reaches_ninety_percent_of_oracle(scenario: str, summaries) -> None:  # type: ignore[no-untyped-def]
    summary = summaries(scenario)
    s = summary["controllers"]
    best = best_non_oracle(summary)
    assert s[best]["qoe_mean"] >= 0.9 * s["oracle"]["qoe_mean"], (best, s[best]["qoe_mean"], s["oracle"]["qoe_mean"])
