"""Shared by the regression tests and scripts/regen_goldens.py: run a built-in scenario with every
registered controller (the scenario's parameters where it gives them, defaults otherwise) on the
scenario's scheduler, and with the scheduler entries (``CONTROLLER@SCHEDULER``) on the other schedulers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import controllers
from sim.runner import make_plan, run_plan

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
SCHEDULER_GOLDEN_DIR = GOLDEN_DIR / "schedulers"

# Schedulers x controllers: every built-in scenario runs on fcfs (its scheduler) with every controller, and
# with these entries on the three other schedulers -- unpaced (the baseline each scheduler is judged by),
# buffer (the best paced controller on most scenarios) and the oracle on each, plus mpc on tokenpace (the
# three paced controllers the "pacing is never the wrong advice" claim names).
OTHER_SCHEDULERS = ("andes", "tokenflow", "tokenpace")
SCHEDULER_ENTRIES = [f"{c}@{s}" for s in OTHER_SCHEDULERS for c in ("unpaced", "buffer", "oracle")] + ["mpc@tokenpace"]


def all_controllers() -> list[str]:
    return sorted(controllers.REGISTRY)


def run_all_controllers(scenario: str, out: Path, jobs: int = 2) -> dict[str, Any]:
    plan = make_plan(scenario, out, all_controllers(), None)
    summary, _ = run_plan(plan, jobs=jobs, show_progress=False)
    return summary


def run_scheduler_entries(scenario: str, out: Path, jobs: int = 2) -> dict[str, Any]:
    plan = make_plan(scenario, out, SCHEDULER_ENTRIES, None)
    summary, _ = run_plan(plan, jobs=jobs, show_progress=False)
    return summary
