"""Schedulers x controllers on every built-in scenario (issue #12).

Each scenario runs once per session with the scheduler entries of tests/regression_support.py
(``unpaced``, ``buffer`` and ``oracle`` on andes, tokenflow and tokenpace, and ``mpc`` on tokenpace);
the summary is pinned exactly in tests/golden/schedulers/<scenario>.json. The same scenario on fcfs with
every controller is tests/test_regression.py's, pinned in tests/golden/<scenario>.json: the claims below
compare the two, reading the fcfs side from its golden (which that suite holds to the run).

After an intended change: ``python scripts/regen_goldens.py --only schedulers`` and review the diff.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from regression_support import GOLDEN_DIR, SCHEDULER_ENTRIES, SCHEDULER_GOLDEN_DIR, run_scheduler_entries

from analysis.golden import compare, moved_table
from analysis.metrics import QOE_TIE
from scenarios import builtin_scenarios

pytestmark = [pytest.mark.regression, pytest.mark.slow]

SCENARIOS = sorted(builtin_scenarios())
# Where KV memory binds: the head of the queue waits for memory on fcfs (scenarios/kv-*.yaml say why).
# Elsewhere no request ever waits for memory, and the buffer-aware schedulers must decide exactly as fcfs.
KV_BOUND = ["kv-broadband", "kv-mobile"]
PACED = ("buffer", "mpc", "oracle")


def fcfs_golden(scenario: str) -> dict[str, Any]:
    return json.loads((GOLDEN_DIR / f"{scenario}.json").read_text())


@pytest.fixture(scope="session")
def entries(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    cache: dict[str, dict[str, Any]] = {}

    def get(scenario: str) -> dict[str, Any]:
        if scenario not in cache:
            cache[scenario] = run_scheduler_entries(scenario, tmp_path_factory.mktemp(f"sched-{scenario}"), jobs=2)
        return cache[scenario]["controllers"]

    return get


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scheduler_entries_match_golden(scenario: str, entries) -> None:  # type: ignore[no-untyped-def]
    path = SCHEDULER_GOLDEN_DIR / f"{scenario}.json"
    assert path.is_file(), f"no golden for {scenario}: run python scripts/regen_goldens.py {scenario} --only schedulers"
    moved = compare({"controllers": entries(scenario)}, json.loads(path.read_text()))
    assert not moved, "\n" + moved_table(scenario, moved)


def check_never_the_wrong_advice(ctrls: dict[str, Any], unpaced_fcfs: dict[str, Any], scheduler: str) -> None:
    """Each paced controller on ``scheduler`` scores no more than QOE_TIE below unpaced on fcfs."""
    floor = unpaced_fcfs["qoe_mean"] - QOE_TIE
    low = {c: ctrls[f"{c}@{scheduler}" if scheduler else c]["qoe_mean"] for c in PACED}
    bad = {c: q for c, q in low.items() if q < floor}
    assert not bad, f"below unpaced@fcfs {unpaced_fcfs['qoe_mean']:.4f} - {QOE_TIE}: {bad}"


# Measured and NOT met (README "Targets not met"); asserted as written, strict: green turns into a failure.
NOT_MET_ADVICE = {
    "bursty-loss": "mpc@tokenpace 0.9847 vs unpaced@fcfs 0.9927 - 0.005: not memory (no request waits for it "
    "here, and mpc scores the same on fcfs) but mpc itself under bursty loss; buffer 0.9951 and the oracle 0.9988 "
    "are above unpaced",
}


@pytest.mark.parametrize("scenario", [
    pytest.param(s, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=NOT_MET_ADVICE[s]))
    if s in NOT_MET_ADVICE else s
    for s in SCENARIOS
])
def test_pacing_is_never_the_wrong_advice_with_tokenpace(scenario: str, entries) -> None:  # type: ignore[no-untyped-def]
    """Issue #12: with the tokenpace scheduler, buffer, mpc and the oracle each score no more than 0.005 QoE
    below fcfs + unpaced, on every built-in scenario."""
    check_never_the_wrong_advice(entries(scenario), fcfs_golden(scenario)["unpaced"], "tokenpace")


@pytest.mark.parametrize("scenario", KV_BOUND)
def test_the_advice_check_fails_for_pacing_on_fcfs_where_memory_binds(scenario: str) -> None:
    """On fcfs, pacing holds KV memory (the reason for the claim above): there the same check fails."""
    fcfs = fcfs_golden(scenario)
    with pytest.raises(AssertionError, match="below unpaced@fcfs"):
        check_never_the_wrong_advice(fcfs, fcfs["unpaced"], "")


@pytest.mark.parametrize("scenario", sorted(set(SCENARIOS) - set(KV_BOUND)))
@pytest.mark.parametrize("scheduler", ["tokenflow", "tokenpace"])
def test_buffer_aware_schedulers_are_fcfs_where_memory_never_binds(scenario: str, scheduler: str,
                                                                  entries) -> None:  # type: ignore[no-untyped-def]
    """No request waits for memory here, so tokenflow and tokenpace decide as fcfs does: every metric of
    every controller equal, to the last printed digit."""
    fcfs = fcfs_golden(scenario)
    got = entries(scenario)
    as_fcfs = {name.split("@")[0]: got[name] for name in SCHEDULER_ENTRIES if name.endswith(f"@{scheduler}")}
    moved = compare({"controllers": as_fcfs}, {c: fcfs[c] for c in as_fcfs})
    assert not moved, "\n" + moved_table(f"{scenario} ({scheduler} against fcfs)", moved)


@pytest.mark.parametrize("scenario", KV_BOUND)
def test_where_memory_binds_every_buffer_aware_scheduler_beats_fcfs(scenario: str,
                                                                   entries) -> None:  # type: ignore[no-untyped-def]
    """Where memory binds, a scheduler that takes memory from streams ahead of their readers serves readers
    better than fcfs with the same controller (unpaced, and each paced one it runs)."""
    fcfs = fcfs_golden(scenario)
    got = entries(scenario)
    for name in SCHEDULER_ENTRIES:
        controller = name.split("@")[0]
        assert got[name]["qoe_mean"] > fcfs[controller]["qoe_mean"] + QOE_TIE, (name, got[name]["qoe_mean"],
                                                                              fcfs[controller]["qoe_mean"])
