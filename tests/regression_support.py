"""Shared by the regression tests and scripts/regen_goldens.py: run a built-in scenario with every
registered controller (the scenario's parameters where it gives them, defaults otherwise)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import controllers
from sim.runner import make_plan, run_plan

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


def all_controllers() -> list[str]:
    return sorted(controllers.REGISTRY)


def run_all_controllers(scenario: str, out: Path, jobs: int = 2) -> dict[str, Any]:
    plan = make_plan(scenario, out, all_controllers(), None)
    summary, _ = run_plan(plan, jobs=jobs, show_progress=False)
    return summary
