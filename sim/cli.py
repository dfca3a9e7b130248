"""``python -m sim``: run a scenario with every pacing controller and compare them.

    python -m sim SCENARIO [--out DIR] [--controllers a,b@tokenpace] [--schedulers fcfs,andes] [--seed N]
                  [--jobs N] [--resume]
    python -m sim check SCENARIO [--controllers a,b] [--schedulers ...]   validate everything, run nothing
    python -m sim schema          print the scenario JSON Schema
    python -m sim list            built-in scenarios and controllers

SCENARIO is a YAML file or the name of a built-in scenario. A controller entry is ``NAME`` (on the
scenario's ``server.scheduler``) or ``NAME@SCHEDULER`` (on that scheduler, with the scenario's
parameters for it when it is the same one, else its defaults); ``--schedulers a,b`` makes each plain
entry one per scheduler. An entry names its results folder and its key in summary.json. Every command ends through
:func:`scenarios.cli_errors.run_cli`: bad input exits 2 with one line per problem, each naming the
file and key or the flag (all problems at once, so one rerun fixes them all); an internal error
exits 1 with one line and the way to its traceback (``--debug``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

import controllers
from scenarios import LoadedScenario, ScenarioError, builtin_scenarios, json_schema, load_scenario
from scenarios.cli_errors import DEBUG_ENV, BadInput, run_cli
from scenarios.loader import (
    MAX_INT,
    did_you_mean,
    entry_params,
    entry_params_key,
    entry_problems,
    expand_entries,
    find_scenario,
    key_text,
    split_entry,
)
from scenarios.traces import TraceError
from sim.model import schedulers

PROG = "python -m sim"
EPILOG = (
    "Other commands: `python -m sim check SCENARIO` validates a scenario (and --controllers) without running it; "
    "`python -m sim schema` prints the scenario JSON Schema; `python -m sim list` lists built-in scenarios and "
    "controllers; `python -m sim stability SCENARIO` the largest arrival rate the node sustains (fluid fixed "
    "point). Plots and a report: `python -m analysis DIR`. Bad input exits 2 with one line per problem; "
    f"an internal error exits 1 with one line: add --debug anywhere (or set {DEBUG_ENV}=1) for its traceback."
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Simulate a serving node streaming tokens over TCP to readers, once per pacing controller, "
        "with common random numbers, and compare how well each keeps readers fed and how much GPU work it wastes.",
        epilog=EPILOG,
    )
    p.add_argument("scenario", help="scenario YAML file, or a built-in scenario name (see `python -m sim list`)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: results/<scenario name>)")
    _controllers_flag(p)
    _schedulers_flag(p)
    # seed and jobs are checked by _seed/_jobs, so a bad value is named like every other problem
    p.add_argument("--seed", default=None, help="random seed, 0 <= N < 2**63 (default: the scenario's `seed`)")
    p.add_argument("--jobs", default="1", help="controllers simulated in parallel processes (default 1)")
    p.add_argument("--resume", action="store_true",
                   help="skip controllers whose results a previous interrupted run of the same scenario and seed "
                   "already finished; see run.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    p.add_argument("--engine", choices=("discrete", "fluid"), default="discrete",
                   help="discrete: the packet-level simulator (default); fluid: the ODE model of sim/fluid/ "
                   "(fcfs; controllers unpaced, fixed, buffer; summary.json without per-stream metrics: "
                   "qoe, slo_attainment, ttft and itl quantiles and mean_rate_tps are null, "
                   "ttft_mean_s and kv_mean_tokens are added; server.csv and links.csv as time series)")
    return p


def _controllers_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--controllers", default=None,
                   help="comma-separated controller entries, NAME or NAME@SCHEDULER (default: the scenario's "
                   "`controllers`)")


def _schedulers_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--schedulers", default=None,
                   help="comma-separated scheduler names: run each controller once per scheduler, as entries "
                   "NAME@SCHEDULER (default: the scenario's `server.scheduler` only)")


def _check_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} check", epilog=EPILOG, description=(
        "Check a scenario as a run would (the file, its traces and request CSV, the controllers and their "
        "parameters) and print `ok`, without simulating anything."))
    p.add_argument("scenario", help="scenario YAML file, or a built-in scenario name")
    _controllers_flag(p)
    _schedulers_flag(p)
    return p


def _shown(text: str, limit: int = 40) -> str:
    shown = key_text(text)  # as the loader prints a key: itself, or its repr when it would break the line
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _int_flag(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:  # not an integer, or more digits than Python converts
        return None


def _seed_problem(text: str | None) -> str | None:
    """numpy's generators take seeds in [0, 2**63) here (``default_rng([seed, k])``)."""
    if text is None:
        return None
    seed = _int_flag(text)
    if seed is None or seed < 0:
        return f"must be a non-negative integer (got {_shown(text)})"
    if seed > MAX_INT:
        return f"must be below 2**63 (got {_shown(text)})"
    return None


def _jobs_problem(text: str) -> str | None:
    jobs = _int_flag(text)
    return None if jobs is not None and jobs >= 1 else f"must be a positive integer (got {_shown(text)})"


def _names(text: str) -> list[str]:
    return list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))


def _controller_names(text: str | None) -> tuple[list[str] | None, list[tuple[str, str]]]:
    """The entries ``--controllers`` gives (None: the scenario's), and a problem per unknown controller
    or scheduler (``NAME@SCHEDULER``), each with the closest known name; the last of each kind lists them all."""
    if text is None:
        return None, []
    names = _names(text)
    known = ", ".join(sorted(controllers.REGISTRY))
    if not names:
        return None, [("--controllers", f"no controller named (got {_shown(text)}); known: {known}")]
    problems = [("--controllers", msg) for n in names
                for msg in entry_problems(n, list(controllers.REGISTRY), list(schedulers.REGISTRY), with_known=False)]
    known_schedulers = ", ".join(sorted(schedulers.REGISTRY))
    for kind, listed in (("unknown controller ", known), ("unknown scheduler ", known_schedulers)):
        last = [i for i, (_, msg) in enumerate(problems) if msg.startswith(kind)]
        if last:
            problems[last[-1]] = ("--controllers", f"{problems[last[-1]][1]}; known: {listed}")
    return names, problems


def _scheduler_names(text: str | None) -> tuple[list[str] | None, list[tuple[str, str]]]:
    """The schedulers ``--schedulers`` gives (None: no expansion), and a problem per unknown name."""
    if text is None:
        return None, []
    names = _names(text)
    known = list(schedulers.REGISTRY)
    if not names:
        return None, [("--schedulers", f"no scheduler named (got {_shown(text)}); known: {', '.join(sorted(known))}")]
    problems = [("--schedulers", f"unknown scheduler {_shown(repr(n))}{did_you_mean(n, known)}")
                for n in names if n not in known]
    if problems:
        problems[-1] = ("--schedulers", f"{problems[-1][1]}; known: {', '.join(sorted(known))}")
    return names, problems


def _controller_problems(loaded: LoadedScenario, file: Path, names: list[str] | None) -> list[tuple[str, str]]:
    """The scenario's own entries (when --controllers does not choose): known controllers and schedulers
    (``NAME@SCHEDULER``), with valid parameters (an entry's own, else its controller's)."""
    scn = loaded.scenario
    chosen = names if names is not None else list(scn.controllers)
    problems: list[tuple[str, str]] = []
    if not chosen:
        problems.append(("controllers", "no controllers listed (name some here or with --controllers)"))
    for name in chosen:
        wrong = entry_problems(name, list(controllers.REGISTRY), list(schedulers.REGISTRY))
        if wrong:
            if names is None:
                problems.extend((f"controllers.{key_text(name)}", msg) for msg in wrong)
            continue
        key_of = entry_params_key(scn, name)
        for key, msg in controllers.validate_params(split_entry(name)[0], entry_params(scn, name)):
            problems.append((f"controllers.{key_text(key_of or name)}.{key_text(key)}", msg))
    return [(f"{file}: {key}", msg) for key, msg in problems]


def _scheduler_problems(loaded: LoadedScenario, file: Path) -> list[tuple[str, str]]:
    """server.scheduler: a known name, with valid parameters (as a controller's)."""
    spec = loaded.scenario.server.scheduler
    if spec.name not in schedulers.REGISTRY:
        return [(f"{file}: server.scheduler.name", str(schedulers.UnknownScheduler(spec.name)))]
    return [(f"{file}: server.scheduler.params.{key_text(key)}", msg)
            for key, msg in schedulers.validate_params(spec.name, spec.params)]


def _out_problems(out: Path, flag: bool, create: bool) -> list[tuple[str, str]]:
    """The results folder: not a file, creatable, writable. ``create`` makes it (a run would anyway)."""
    where = "--out" if flag else f"{out} (the default results folder; choose another with --out)"
    try:
        if out.exists() and not out.is_dir():
            return [(where, f"{out} is a file, not a folder")]
        if not create:
            return []
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return [(where, f"cannot create folder {out}: {exc.strerror or exc}")]
    try:
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        return [(where, f"cannot write in {out}: {exc.strerror or exc}")]
    return []


def _load(scenario: str, names: list[str] | None, problems: list[tuple[str, str]]) -> LoadedScenario | None:
    """Load and check the scenario and the controllers, adding every problem found to ``problems``."""
    try:
        loaded = load_scenario(scenario)
    except ScenarioError as exc:
        problems.extend(exc.problems)
        return None
    problems.extend(_controller_problems(loaded, find_scenario(scenario), names))
    problems.extend(_scheduler_problems(loaded, find_scenario(scenario)))
    return loaded


def _check(argv: list[str]) -> int:
    args = _check_parser().parse_args(argv)
    names, problems = _controller_names(args.controllers)
    scheds, sched_problems = _scheduler_names(args.schedulers)
    problems += sched_problems
    loaded = _load(args.scenario, names, problems)
    if problems:
        raise BadInput.many(problems)
    assert loaded is not None
    scn = loaded.scenario
    chosen = expand_entries(names if names is not None else list(scn.controllers), scheds)
    print(f"ok: {find_scenario(args.scenario)} (scenario {scn.name!r}: {scn.workload.streams} streams, "
          f"{len(scn.paths)} path(s), {len(scn.faults)} fault(s); controllers {', '.join(chosen)})")
    return 0


def _list() -> None:
    from rich.console import Console

    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print("[bold]Built-in scenarios[/bold] (python -m sim NAME):")
    for name, path in builtin_scenarios().items():
        desc = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("description", "").strip().splitlines()
        console.print(f"  {name:<24} {desc[0] if desc else ''}")
    console.print("[bold]Controllers[/bold] (--controllers a,b):")
    for name, info in sorted(controllers.REGISTRY.items()):
        doc = (info.cls.__doc__ or "").strip().splitlines()
        console.print(f"  {name:<12} {doc[0] if doc else info.label}{'  (sim only)' if info.sim_only else ''}")
    console.print("[bold]Schedulers[/bold] (server.scheduler, --schedulers a,b, or an entry CONTROLLER@SCHEDULER):")
    for name, cls in sorted(schedulers.REGISTRY.items()):
        console.print(f"  {name:<12} {cls.label or name}")
    sweeps = sorted((Path(__file__).resolve().parent.parent / "sweeps").glob("*.yaml"))
    if sweeps:  # a source checkout's sweeps/ (the files name their base scenarios relative to themselves)
        console.print("[bold]Built-in sweeps[/bold] (python -m sim sweep sweeps/NAME.yaml):")
        for path in sweeps:
            desc = str((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("description", "")).strip()
            console.print(f"  {path.stem:<24} {desc.splitlines()[0] if desc else ''}")


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    problems = _out_problems(args.out, flag=True, create=False) if args.out is not None else []
    names, named = _controller_names(args.controllers)
    scheds, sched_problems = _scheduler_names(args.schedulers)
    problems += named + sched_problems
    for flag, problem in (("--seed", _seed_problem(args.seed)), ("--jobs", _jobs_problem(args.jobs))):
        if problem is not None:
            problems.append((flag, problem))
    loaded = _load(args.scenario, names, problems)
    if not problems and loaded is not None:  # everything else is right: make the folder the run needs
        out = args.out if args.out is not None else Path("results") / loaded.scenario.name
        problems.extend(_out_problems(out, flag=args.out is not None, create=True))
    if problems:
        raise BadInput.many(problems)

    from rich.console import Console
    from rich.markup import escape

    from analysis.metrics import best_text, format_table, ranking_text
    from sim.runner import make_plan, run_plan

    console = Console() if sys.stdout.isatty() else Console(width=200)
    seed = None if args.seed is None else int(args.seed)
    if args.engine == "fluid" and names is None:
        # the scenario's controllers that are laws of the fluid state (the others are said, not run)
        from sim.fluid.pacing import SUPPORTED

        listed = list(loaded.scenario.controllers) if loaded is not None else []
        names = [n for n in listed if n in SUPPORTED] or ["unpaced"]
        skipped = [n for n in listed if n not in SUPPORTED]
        if skipped and not args.quiet:
            print(f"{PROG}: --engine fluid runs {', '.join(names)}; not {', '.join(skipped)} (not laws of the "
                  f"fluid state: use --engine discrete)", file=sys.stderr)
    plan = make_plan(args.scenario, args.out, names, seed, scheds)
    if args.engine == "fluid":
        from sim.fluid.run import run_fluid_plan

        summary, sim_s, wall_s = run_fluid_plan(plan)
        if not args.quiet:
            console.print(format_table(summary))
            console.print(f"fluid engine: {sim_s:.0f} simulated s in {wall_s:.1f} s; results in {plan.out}/",
                          highlight=False)
        return 0
    summary, stats = run_plan(plan, jobs=int(args.jobs), show_progress=not args.quiet and sys.stderr.isatty(),
                              resume=args.resume)
    if not args.quiet:
        console.print(format_table(summary))
        console.print(f"[bold]{escape(best_text(summary))}[/bold]   ranking (QoE, then fewest wasted tokens): "
                      f"{escape(ranking_text(summary))}", highlight=False)
        sim_s = sum(s.sim_end_s for s in stats)
        wall_s = sum(s.wall_s for s in stats)
        console.print(f"{sim_s:.0f} simulated s in {wall_s:.1f} s of CPU; results in {plan.out}/ "
                      f"(plots: python -m analysis {plan.out})", highlight=False)
    return 0


def _capacity(argv: list[str]) -> int:
    """``python -m sim capacity``: the largest arrival rate per scheduler x controller (:mod:`sim.capacity`)."""
    from sim.capacity import main_capacity

    return main_capacity(argv)


def _sweep(argv: list[str]) -> int:
    """``python -m sim sweep``: a grid over scenario keys x seeds x controllers (:mod:`sim.sweep`)."""
    from sim.sweep import main_sweep

    return main_sweep(argv)


def _main(argv: list[str]) -> int:
    if argv[:1] == ["schema"]:
        argparse.ArgumentParser(prog=f"{PROG} schema", description="Print the scenario JSON Schema.",
                                epilog=EPILOG).parse_args(argv[1:])
        print(json.dumps(json_schema(), indent=2))
        return 0
    if argv[:1] == ["list"]:
        argparse.ArgumentParser(prog=f"{PROG} list", description="List built-in scenarios and controllers.",
                                epilog=EPILOG).parse_args(argv[1:])
        _list()
        return 0
    if argv[:1] == ["check"]:
        return _check(argv[1:])
    if argv[:1] == ["capacity"]:
        return _capacity(argv[1:])
    if argv[:1] == ["sweep"]:
        return _sweep(argv[1:])
    if argv[:1] == ["stability"]:
        from sim.fluid.stability import main_stability

        return main_stability(argv[1:])
    return _run(argv)


def main(argv: list[str] | None = None) -> int:
    """Every ``python -m sim`` command, through :func:`run_cli`: never a traceback without ``--debug``."""
    return run_cli(_main, argv, PROG, bad_input=(TraceError,))
