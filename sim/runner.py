"""Run every controller on one scenario with common random numbers, then summarise.

The requests (arrivals, lengths, paths, readers) are drawn once and handed to each
controller's run, and each path's loss process is seeded the same way in every run, so the
controllers differ only in what they decided. Runs go to separate processes when ``jobs > 1``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import controllers
from analysis.metrics import summarize_run
from analysis.results import write_json
from scenarios import LoadedScenario, ScenarioError, load_scenario
from sim.workload import Request, draw_requests
from sim.world import RunStats, run_controller


@dataclass(frozen=True)
class Plan:
    loaded: LoadedScenario
    controllers: dict[str, dict[str, Any]]  # name -> params
    seed: int
    out: Path


def make_plan(scenario: str | Path, out: Path | None, names: list[str] | None, seed: int | None) -> Plan:
    """Load and check everything a run needs; every problem is a ScenarioError naming file and key."""
    loaded = load_scenario(scenario)
    scn = loaded.scenario
    chosen: dict[str, dict[str, Any]] = {}
    for name in names or list(scn.controllers):
        if name not in controllers.REGISTRY:
            key = "--controllers" if names else f"controllers.{name}"
            raise ScenarioError(loaded.path, key, str(controllers.UnknownController(name)))
        params = scn.controllers.get(name, {})
        for key, msg in controllers.validate_params(name, params):
            raise ScenarioError(loaded.path, f"controllers.{name}.{key}", msg)
        chosen[name] = params
    seed = scn.seed if seed is None else seed
    return Plan(loaded, chosen, seed, out or Path("results") / scn.name)


def git_rev() -> str:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=False).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("tokenpace", "simpy", "numpy", "pydantic"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_run_json(plan: Plan) -> None:
    scn = plan.loaded.scenario
    write_json(plan.out / "run.json", {
        "mode": "sim",
        "scenario": plan.loaded.resolved(),
        "scenario_file": str(plan.loaded.path),
        "controllers": list(plan.controllers),
        "controller_params": plan.controllers,
        "controller_info": {n: controllers.display_info()[n] for n in plan.controllers},
        "seed": plan.seed,
        "slo_qoe": scn.slo.qoe,
        "control_interval_s": scn.control_interval_s,
        "versions": versions(),
        "git_rev": git_rev(),
    })


def _run_one(plan: Plan, name: str, requests: list[Request], report: Any = None) -> RunStats:
    """One controller's run; ``report(name, sim_now)`` (a queue's put in workers) feeds the bar."""
    progress = None if report is None else (lambda now: report((name, now)))
    stats = run_controller(plan.loaded, requests, name, plan.controllers[name], plan.out / name, plan.seed, progress)
    if report is not None:
        report((name, None))
    return stats


def run_plan(plan: Plan, jobs: int = 1, show_progress: bool = True) -> tuple[dict[str, Any], list[RunStats]]:
    """Run each controller, write run.json and summary.json; returns (summary, per-run stats)."""
    plan.out.mkdir(parents=True, exist_ok=True)
    write_run_json(plan)
    names = list(plan.controllers)
    requests = draw_requests(plan.loaded.scenario, plan.loaded.base_dir, plan.seed)
    horizon = max((r.arrival_s for r in requests), default=1.0)
    from sim.progress import RunProgress

    parallel = jobs > 1 and len(names) > 1
    with RunProgress(names, horizon, enabled=show_progress, cross_process=parallel) as bar:
        if not parallel:
            stats = [_run_one(plan, name, requests, bar.report) for name in names]
        else:
            with ProcessPoolExecutor(max_workers=min(jobs, len(names))) as pool:
                futures = [pool.submit(_run_one, plan, name, requests, bar.report) for name in names]
                while not all(f.done() for f in futures):
                    bar.drain(timeout_s=0.2)
                stats = [f.result() for f in futures]
                bar.drain()
    summary = summarize_run(plan.out)
    return summary, stats


def default_jobs() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
