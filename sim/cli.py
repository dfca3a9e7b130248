"""``python -m sim``: run a scenario with every pacing controller and compare them.

    python -m sim SCENARIO [--out DIR] [--controllers a,b] [--seed N] [--jobs N]
    python -m sim schema          print the scenario JSON Schema
    python -m sim list            built-in scenarios and controllers

SCENARIO is a YAML file or the name of a built-in scenario. Bad input exits with code 2 and one
line naming the file and the key.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

import controllers
from analysis.metrics import format_table, rank_controllers
from scenarios import ScenarioError, builtin_scenarios, json_schema
from scenarios.traces import TraceError

EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sim",
        description="Simulate a serving node streaming tokens over TCP to readers, once per pacing controller, "
        "with common random numbers, and compare how well each keeps readers fed and how much GPU work it wastes.",
        epilog="Other commands: `python -m sim schema` prints the scenario JSON Schema; `python -m sim list` lists "
        "built-in scenarios and controllers. Plots and a report: `python -m analysis DIR`.",
    )
    p.add_argument("scenario", help="scenario YAML file, or a built-in scenario name (see `python -m sim list`)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: results/<scenario name>)")
    p.add_argument("--controllers", default=None,
                   help="comma-separated controller names (default: the scenario's `controllers`)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the scenario's `seed`)")
    p.add_argument("--jobs", type=int, default=1, help="controllers simulated in parallel processes (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    return p


def _list(console: Console) -> None:
    console.print("[bold]Built-in scenarios[/bold] (python -m sim NAME):")
    for name, path in builtin_scenarios().items():
        import yaml

        desc = (yaml.safe_load(path.read_text()) or {}).get("description", "").strip().splitlines()
        console.print(f"  {name:<24} {desc[0] if desc else ''}")
    console.print("[bold]Controllers[/bold] (--controllers a,b):")
    for name, info in sorted(controllers.REGISTRY.items()):
        doc = (info.cls.__doc__ or "").strip().splitlines()
        console.print(f"  {name:<12} {doc[0] if doc else info.label}{'  (sim only)' if info.sim_only else ''}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    console = Console() if sys.stdout.isatty() else Console(width=200)
    if argv[:1] == ["schema"]:
        print(json.dumps(json_schema(), indent=2))
        return 0
    if argv[:1] == ["list"]:
        _list(console)
        return 0
    args = _parser().parse_args(argv)
    from sim.runner import make_plan, run_plan

    names = [n.strip() for n in args.controllers.split(",") if n.strip()] if args.controllers else None
    try:
        plan = make_plan(args.scenario, args.out, names, args.seed)
    except (ScenarioError, TraceError) as exc:
        print(f"error: {exc}", file=sys.stderr)  # one plain line: no wrapping, no markup
        return EXIT_BAD_INPUT
    summary, stats = run_plan(plan, jobs=args.jobs, show_progress=not args.quiet and sys.stderr.isatty())
    if not args.quiet:
        console.print(format_table(summary))
        ranking = rank_controllers(summary)
        console.print(f"best (QoE, ties within 0.005 by wasted tokens): [bold]{ranking[0]}[/bold]   "
                      f"ranking: {' > '.join(ranking)}")
        sim_s = sum(s.sim_end_s for s in stats)
        wall_s = sum(s.wall_s for s in stats)
        console.print(f"{sim_s:.0f} simulated s in {wall_s:.1f} s of CPU; results in {plan.out}/ "
                      f"(plots: python -m analysis {plan.out})", highlight=False)
    return 0
