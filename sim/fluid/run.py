"""``python -m sim SCENARIO --engine fluid``: the fluid engine on a run plan, in the results layout.

The same scenario file and plan as the discrete run (:func:`sim.runner.make_plan`); per entry
``DIR/<entry>/server.csv`` and ``links.csv`` (the fluid's time series, ``sim/fluid/engine.py``), no
per-token or per-stream files; ``DIR/summary.json`` with the metric keys the fluid computes (the rest
null) and ``DIR/run.json`` as a discrete run writes it, with ``mode: fluid`` and a ``fluid`` section.
Entries the fluid engine cannot run (a controller or scheduler that is not a law of the fluid state,
a prefix cache) are refused before anything runs, each naming why (exit 2).
"""

from __future__ import annotations

from typing import Any

from analysis.results import COMPLETE, now_utc, write_run_json
from scenarios.cli_errors import BadInput
from sim.fluid.engine import SAMPLE_S, refusals, simulate, write_series, write_summary
from sim.fluid.model import STAGES
from sim.fluid.pacing import UnsupportedController, pacing_law
from sim.runner import Plan, run_info


def check_plan(plan: Plan) -> None:
    """Every reason the fluid engine refuses the plan, at once (BadInput)."""
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    for entry, params in plan.controllers.items():
        for where, msg in refusals(plan.loaded, plan.scheduler_of(entry)):
            if msg not in seen:
                seen.add(msg)
                problems.append((where, msg))
        try:
            pacing_law(plan.controller_of(entry), params)
        except UnsupportedController as exc:
            problems.append(("--engine fluid", str(exc)))
    if problems:
        raise BadInput.many(problems)


def run_fluid_plan(plan: Plan, inputs: str = "scenario") -> tuple[dict[str, Any], float, float]:
    """Run every entry of ``plan`` on the fluid engine; returns (summary, simulated s, wall s)."""
    check_plan(plan)
    started = now_utc()
    plan.out.mkdir(parents=True, exist_ok=True)
    (plan.out / "summary.json").unlink(missing_ok=True)
    summaries: dict[str, dict[str, Any]] = {}
    sim_s = wall_s = 0.0
    runs = {}
    for entry, params in plan.controllers.items():
        run = simulate(plan.scenario_for(entry), plan.controller_of(entry), params, plan.seed, inputs=inputs)
        write_series(run, plan.out / entry)
        summaries[entry] = run.summary
        runs[entry] = run
        sim_s += float(run.t[-1])
        wall_s += run.wall_s
    info = run_info(plan, COMPLETE, list(plan.controllers))
    info["mode"] = "fluid"
    info["fluid"] = {"inputs": inputs, "stages": STAGES, "sample_s": SAMPLE_S, "solver": "scipy solve_ivp RK45",
                     "classes": {e: len(r.classes) for e, r in runs.items()},
                     "rhs_calls": {e: r.rhs_calls for e, r in runs.items()}}
    write_run_json(plan.out, info, started=started)
    return write_summary(plan.out, plan.loaded.scenario.name, summaries), sim_s, wall_s
