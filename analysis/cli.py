"""The command line: ``python -m analysis DIR`` turns a results folder into numbers and pictures.

It reads the folder (run.json and each controller's CSV files), recomputes summary.json from
the raw files, draws the plots into DIR/plots/, writes DIR/report.html, prints the comparison
table and the report's path. ``python -m analysis report DIR`` is the same thing spelled out.
``python -m analysis compare SIM_DIR LIVE_DIR`` measures the simulator's fidelity against a lab
run of the same scenario (:mod:`analysis.compare`). ``python -m analysis train INPUT`` fits the
telemetry models (anomaly detector, RTT forecaster) on telemetry and reports their quality
(:mod:`analysis.train`).

Every command ends through :func:`scenarios.cli_errors.run_cli`. Bad input -- a folder that is
missing, a file or not a results folder, an ``--out`` that is a file, an option out of range, a CSV
with a missing column, a cut-off row or a cell that is not a number, run.json of the wrong shape,
bytes that are not UTF-8 -- ends with exit code 2 and ``error:`` lines naming the file (and column
or key) or the flag, never a traceback. Exit 1 is kept for our own bugs: one line, and ``--debug``
(or ``TOKENPACE_DEBUG=1``) shows the traceback.

A run that did not complete (run.json ``status`` ``running`` or ``interrupted``: killed, or stopped
by Ctrl-C) is analysed for the controllers it lists as ``finished``; one ``warning:`` line per
problem on stderr names what is missing, the report says the run is incomplete, and the exit
code is 0. When no controller finished there is nothing to analyse: exit 2, saying so. ``compare``
works on the controllers both folders finished.
"""

from __future__ import annotations

import argparse
import math
import os
import stat
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.results import REQUIRED_FILES, RESULTS_FOLDER_HOLDS, ResultsFormatError, Run, load_run
from scenarios.cli_errors import EXIT_BAD_INPUT, EXIT_OK, BadInput, printable, run_cli

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["DEFAULT_COMMAND", "SUBCOMMANDS", "build_parser", "main"]

PROG = "python -m analysis"
DEFAULT_COMMAND = "report"
#: a first argument that is none of these is a results folder for the default command.
SUBCOMMANDS: tuple[str, ...] = ("report", "compare", "train", "capacity", "runs", "sweep-export")
PROGRESS_MIN_CONTROLLERS = 3  # show a progress bar while plotting from this many controllers


def _add_report(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "report",
        help="summarise a results folder, draw its plots and write report.html (the default)",
        description="Recompute DIR/summary.json from the run's files, draw DIR/plots/*.png, write "
        "DIR/report.html and print the comparison table.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            A run that did not complete (killed, Ctrl-C) is analysed for the controllers it lists
            as finished; a warning line on stderr names each one missing.
            exit codes: 0 done; 2 bad input (missing or malformed results files, named on stderr;
            or a run in which no controller finished); 1 internal error (rerun with --debug)."""),
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="results folder written by a sim or live run")
    p.add_argument(
        "--no-plots", action="store_true", help="skip the plots (summary.json and report.html are still written)"
    )
    p.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    p.set_defaults(func=_cmd_report)


def _add_compare(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "compare",
        help="simulator fidelity: compare a simulated results folder with a lab one",
        description="For every controller in both folders compare TTFT, ITL, stall, waste and effective "
        "throughput (sim value, lab value, absolute percentage error; median APE per metric), check "
        "that both rank the controllers alike by qoe_mean (same best, Kendall tau), draw srtt/rate "
        "trajectories per controller and write fidelity.json (into LIVE_DIR unless --out is given).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            APE = |lab - sim| / |sim|; when sim is 0 the absolute error is reported instead and the
            entry is flagged sim_zero (never a division by zero). See analysis/compare.py.
            exit codes: 0 done; 2 bad input (missing or malformed results files, named on stderr);
            1 internal error (rerun with --debug for the traceback)."""),
    )
    p.add_argument("sim_dir", type=Path, metavar="SIM_DIR", help="results folder of the simulated run")
    p.add_argument("live_dir", type=Path, metavar="LIVE_DIR", help="results folder of the lab (live) run")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        default=None,
        help="folder for fidelity.json and plots/fidelity_*.png (default: LIVE_DIR)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the trajectory plots (telemetry.csv not needed)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    p.set_defaults(func=_cmd_compare)


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from analysis.train import add_arguments

    p = sub.add_parser(
        "train",
        help="fit the anomaly detector and the RTT forecaster on telemetry; report how good they are",
        description="Fit Pipeline(StandardScaler, IsolationForest) on every interval's anomaly features and a "
        "gradient-boosted next-interval p95 RTT forecaster, score the forecaster on a time-ordered hold-out "
        "against persistence, and write anomaly.skops, rtt_forecast.skops, training_metrics.json and "
        "model_result.png. INPUT is seed 001's net_data.csv, a telemetry.csv or a results folder.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            The features are those of controllers/features.py (the controllers compute the same online).
            exit codes: 0 done; 2 bad input (missing file or column, a cell that is not a number, too few
            rows to train, an option out of range; named on stderr); 1 internal error (rerun with --debug)."""),
    )
    add_arguments(p)
    p.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    p.set_defaults(func=_cmd_train)


def _add_capacity(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "capacity",
        help="the figure and table of a capacity search (python -m sim capacity)",
        description="Draw DIR/plots/capacity.png from DIR/capacity.csv -- mean QoE, P99 TTFT and effective "
        "throughput against the request rate, one line per scheduler x controller, each pair's capacity "
        "marked (Andes' figure) -- and print the largest sustainable rate per pair from DIR/capacity.json.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            DIR is the folder `python -m sim capacity` wrote (capacity.csv, capacity.json, run.json).
            exit codes: 0 done; 2 bad input (no capacity.csv, a malformed row or capacity.json, named on
            stderr); 1 internal error (rerun with --debug)."""),
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="folder written by python -m sim capacity")
    p.add_argument("--no-plots", action="store_true", help="print the table only")
    p.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    p.set_defaults(func=_cmd_capacity)


def _add_runs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from analysis.runs import EPILOG, add_arguments

    p = sub.add_parser(
        "runs",
        help="experiment management: list, show, compare, archive, export runs under ROOT; stats",
        description="Manage the runs under ROOT (folders holding run.json: sim, live, lab, capacity, sweep): "
        "list them, show one, compare two metric by metric against the seed spread, archive old ones, "
        "export one as a tarball, and total them up (seed 002's manage_experiments.sh).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    add_arguments(p)
    p.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    p.set_defaults(func=_cmd_runs)


def _add_sweep_export(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from analysis.seed004 import FORMATS

    p = sub.add_parser(
        "sweep-export",
        help="seed 004's CSV (gpu_scaling, batch_analysis, cache_experiments) from a sweep folder",
        description="Write seed 004's result CSV from a folder python -m sim sweep wrote: gpu_scaling "
        "(parallelism,total_throughput,scale_factor,gpu_distribution,execution_time) from a sweep over "
        "server.replicas, batch_analysis (batch_size,avg_wait_ms,avg_latency_ms,throughput_req_per_sec,"
        "total_requests,efficiency_notes) from a sweep over server.max_running or server.batch_tokens, "
        "cache_experiments (strategy,total_requests,cache_hits,hit_rate_percent,avg_latency_ms,strategy_config) "
        "from a sweep over server.prefix_cache. "
        "One row per value of the swept key, means over seeds (analysis/seed004.py defines each column).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            Writes DIR/<format>.csv (or --out FILE) and prints each row with its 95% interval over seeds.
            exit codes: 0 done; 2 bad input (not a sweep folder, a grid key not pinned, a malformed file,
            named on stderr); 1 internal error (rerun with --debug)."""),
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="folder written by python -m sim sweep")
    p.add_argument("--format", required=True, choices=[*FORMATS, "cache_experiments"],
                   help="which of seed 004's CSVs (cache_experiments: a sweep over server.prefix_cache)")
    p.add_argument("--controller", default=None, help="whose runs (default: the sweep's first controller)")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                   help="pin another grid key to one of its values (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="the CSV file (default: DIR/<format>.csv)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    p.set_defaults(func=_cmd_sweep_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Analyse tokenpace results: per-controller QoE, stall, TTFT, waste and plots.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            usage forms:
              python -m analysis DIR [--no-plots]          same as: python -m analysis report DIR
              python -m analysis report DIR [--no-plots]
              python -m analysis compare SIM_DIR LIVE_DIR [--out DIR] [--no-plots]
              python -m analysis train INPUT [--out DIR] [--contamination 0.15] [--estimators 200] ...
              python -m analysis capacity DIR [--no-plots]    a capacity search's figure and table
              python -m analysis runs ROOT list|show|compare|archive|export|stats   manage runs
              python -m analysis sweep-export DIR --format gpu_scaling|batch_analysis|cache_experiments

            DIR holds run.json and one folder per controller with streams.csv and tokens.csv
            (plus telemetry.csv, server.csv, request_traces.csv, events.csv, links.csv when
            the run wrote them). Writes DIR/summary.json, DIR/plots/*.png, DIR/report.html.
            Run 'python -m analysis report --help' for the options."""),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_report(sub)
    _add_compare(sub)
    _add_train(sub)
    _add_capacity(sub)
    _add_runs(sub)
    _add_sweep_export(sub)
    return parser


def _console(stderr: bool = False) -> Console:
    """A console that prints text as it is: no markup, so a path or a label holding ``[/]`` is shown,
    not parsed (rich would raise on it). A pipe or a log file gets 200 columns, not 80."""
    from rich.console import Console

    out = Console(stderr=stderr, markup=False)
    return out if out.is_terminal else Console(stderr=stderr, markup=False, width=200)


def _warn(lines: Sequence[str]) -> None:
    for line in lines:
        print(f"warning: {printable(line)}", file=sys.stderr)


# --------------------------------------------------------------------------- checking paths
def _stat(where: str, path: Path) -> os.stat_result | None:
    """``os.stat`` of a path given on the command line; None when nothing is there."""
    try:
        return path.stat()
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise BadInput(where, "not found (a part of the path is a file, not a folder)") from None
    except (OSError, ValueError) as exc:
        raise BadInput(where, f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None


def _results_dir(flag: str, path: Path) -> Path:
    """A results folder given as ``flag`` (DIR, SIM_DIR, LIVE_DIR): there, a folder, and one."""
    where = f"{flag} {path}"
    st = _stat(where, path)
    if st is None:
        raise BadInput(where, f"no such folder ({RESULTS_FOLDER_HOLDS})")
    if not stat.S_ISDIR(st.st_mode):
        raise BadInput(where, f"is a file, not a results folder ({RESULTS_FOLDER_HOLDS})")
    try:
        entries = list(path.iterdir())
    except OSError as exc:
        raise BadInput(where, f"cannot list the folder: {exc.strerror or exc}") from None
    has_run_json = any(e.name == "run.json" for e in entries)
    has_controller = any(e.is_dir() and any((e / f).exists() for f in REQUIRED_FILES) for e in entries)
    if not has_run_json and not has_controller:
        raise BadInput(where, f"not a results folder: no run.json and no controller folders ({RESULTS_FOLDER_HOLDS})")
    return path


def _out_dir(flag: str, path: Path | None) -> Path | None:
    """An output folder: it may not exist yet, but neither it nor a parent may be a file."""
    if path is None:
        return None
    where = f"{flag} {path}"
    st = _stat(where, path)
    if st is not None:
        if not stat.S_ISDIR(st.st_mode):
            raise BadInput(where, "is a file, not a folder")
        return path
    for parent in path.absolute().parents:
        pst = _stat(where, parent)
        if pst is None:
            continue
        if not stat.S_ISDIR(pst.st_mode):
            raise BadInput(where, f"cannot be created: {parent} is a file")
        break
    return path


def _input_path(flag: str, path: Path) -> Path:
    """train's INPUT: a CSV file or a folder."""
    where = f"{flag} {path}"
    st = _stat(where, path)
    if st is None:
        raise BadInput(where, "not found (give net_data.csv, a telemetry.csv or a results folder)")
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise BadInput(where, "not a regular file or a folder")
    return path


# --------------------------------------------------------------------------- the commands
def _draw_plots(run: Run, summary: dict[str, object]) -> list[Path]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from analysis.plots import plot_jobs

    jobs = plot_jobs(run, run.path / "plots", summary)
    err = _console(stderr=True)
    paths: list[Path] = []
    if len(run.controllers) < PROGRESS_MIN_CONTROLLERS or not err.is_terminal:
        for job in jobs:
            if (p := job.make()) is not None:
                paths.append(p)
        return paths
    columns = (TextColumn("plotting {task.description:<32}", markup=False), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("", total=len(jobs))
        for job in jobs:
            progress.update(task, description=job.name)
            if (p := job.make()) is not None:
                paths.append(p)
            progress.advance(task)
    return paths


def _cmd_report(args: argparse.Namespace) -> int:
    from analysis.metrics import format_table, summarize_run
    from analysis.report import write_report
    from analysis.style import controller_style
    from analysis.sweep import is_sweep_folder, report_sweep

    if is_sweep_folder(_results_dir("DIR", args.dir)):  # python -m sim sweep's folder: its figures
        return report_sweep(args.dir, plots=not args.no_plots, console=_console(), warn=_warn)
    run = load_run(_results_dir("DIR", args.dir))
    _warn(run.warnings)
    summary = summarize_run(run)
    plots = [] if args.no_plots else _draw_plots(run, summary)
    report = write_report(run, summary, plots)
    out = _console()
    labels = {n: controller_style(run, n).label for n in run.controller_names}
    out.print(format_table(summary, controller_labels=labels))
    if not run.complete:
        out.print(f"incomplete run: analysed {', '.join(run.controller_names)}; missing {', '.join(run.missing)}",
                  highlight=False, soft_wrap=True)
    out.print(f"summary: {run.path / 'summary.json'}", highlight=False, soft_wrap=True)
    out.print(f"report: {report}", highlight=False, soft_wrap=True)
    return EXIT_OK


def _cmd_compare(args: argparse.Namespace) -> int:
    from analysis.compare import compare_runs, fidelity_tables

    sim_dir = _results_dir("SIM_DIR", args.sim_dir)
    live_dir = _results_dir("LIVE_DIR", args.live_dir)
    out_dir = _out_dir("--out", args.out)
    sim, lab = load_run(sim_dir), load_run(live_dir)
    _warn([*sim.warnings, *lab.warnings])
    if not (sim.complete and lab.complete) and not set(sim.controller_names) & set(lab.controller_names):
        raise BadInput(f"LIVE_DIR {lab.path}", "no controller finished in both runs (SIM_DIR finished: "
                       f"{', '.join(sim.controller_names)}; LIVE_DIR finished: {', '.join(lab.controller_names)})")
    result, path = compare_runs(sim, lab, out_dir=out_dir, plots=not args.no_plots)
    out = _console()
    for renderable in fidelity_tables(result):
        out.print(renderable)
    out_folder = path.parent
    for name in result["plots"].values():
        out.print(f"plot: {out_folder / name}", highlight=False, soft_wrap=True)
    out.print(f"fidelity: {path}", highlight=False, soft_wrap=True)
    return EXIT_OK


#: train's numeric options: flag, attribute, lowest, highest, whether the ends are allowed.
TRAIN_RANGES: tuple[tuple[str, str, float, float, tuple[bool, bool]], ...] = (
    ("--contamination", "contamination", 0.0, 0.5, (False, True)),
    ("--estimators", "estimators", 1, 10_000, (True, True)),
    ("--max-samples", "max_samples", 2, 10_000_000, (True, True)),
    ("--holdout", "holdout", 0.0, 1.0, (False, False)),
    ("--seed", "seed", 0, 2**32 - 1, (True, True)),  # what numpy and scikit-learn take as a seed
    ("--max-rows", "max_rows", 1, math.inf, (True, True)),
)


def _check_train_args(args: argparse.Namespace) -> None:
    """Every out-of-range option at once, each on its own line, named with its flag."""
    problems: list[tuple[str, str]] = []
    for flag, attr, low, high, (low_ok, high_ok) in TRAIN_RANGES:
        value = getattr(args, attr, None)
        if value is None:
            continue
        above = value >= low if low_ok else value > low
        below = value <= high if high_ok else value < high
        if not (math.isfinite(value) and above and below):
            lo, hi = ("[" if low_ok else "("), ("]" if high_ok else ")")
            span = f"at least {low}" if math.isinf(high) else f"in {lo}{low}, {high}{hi}"
            problems.append((flag, f"must be {span}, got {value!r}"))
    if problems:
        raise BadInput.many(problems)


def _cmd_train(args: argparse.Namespace) -> int:
    from analysis.train import format_metrics, options_from_args, train

    _check_train_args(args)
    _input_path("INPUT", args.input)
    _out_dir("--out", args.out)
    options = options_from_args(args)
    try:
        options.check()
    except ValueError as exc:
        raise BadInput("", str(exc)) from None
    try:
        result = train(args.input, args.out, options, plots=not args.no_plots)
    except ImportError as exc:  # the ml extra is not installed: the user can fix that
        raise BadInput("", f"{exc.name or exc} is not importable: pip install 'tokenpace[ml]'") from None
    out = _console()
    out.print(format_metrics(result.metrics))
    for name, path in result.files.items():
        out.print(f"{name}: {path}", highlight=False, soft_wrap=True)
    return EXIT_OK


def _cmd_capacity(args: argparse.Namespace) -> int:
    from analysis.capacity import (
        CAPACITY_CSV,
        CAPACITY_JSON,
        capacity_table,
        plot_capacity,
        read_capacity_csv,
        read_capacity_json,
    )
    from analysis.results import read_json

    where = f"DIR {args.dir}"
    st = _stat(where, args.dir)
    if st is None or not stat.S_ISDIR(st.st_mode):
        problem = "no such folder" if st is None else "is a file, not a folder"
        raise BadInput(where, f"{problem} (give the folder `python -m sim capacity` wrote: capacity.csv, ...)")
    if not (args.dir / CAPACITY_CSV).exists():
        raise BadInput(where, f"no {CAPACITY_CSV}: not a capacity search's folder (python -m sim capacity writes one)")
    rows = read_capacity_csv(args.dir / CAPACITY_CSV)
    info = read_capacity_json(args.dir / CAPACITY_JSON) if (args.dir / CAPACITY_JSON).exists() else None
    out = _console()
    if info is None:
        _warn([f"{args.dir / CAPACITY_JSON}: missing (the search was killed before its first rate was "
               "evaluated): no table, the figure has no capacities"])
    else:
        out.print(capacity_table(info))
    if not args.no_plots:
        if not rows:
            _warn([f"{args.dir / CAPACITY_CSV}: no probes yet: no figure"])
        else:
            colors = {}
            if (args.dir / "run.json").is_file():
                ctrl_info = read_json(args.dir / "run.json").get("controller_info")
                if isinstance(ctrl_info, dict):
                    colors = {n: e.get("color") for n, e in ctrl_info.items() if isinstance(e, dict)}
            figure = plot_capacity(rows, info, args.dir / "plots", colors)
            out.print(f"figure: {figure}", highlight=False, soft_wrap=True)
    return EXIT_OK


def _cmd_runs(args: argparse.Namespace) -> int:
    from analysis.runs import run_action

    return run_action(args, _console(), _warn)


def _cmd_sweep_export(args: argparse.Namespace) -> int:
    from analysis.seed004 import write_export
    from analysis.sweep import is_sweep_folder

    folder = _results_dir("DIR", args.dir)
    if not is_sweep_folder(folder):
        raise BadInput(f"DIR {args.dir}", "not a sweep folder (its run.json has no mode: sweep; python -m sim "
                       "sweep writes one)")
    where = {}
    for item in args.where:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadInput("--where", f"expected KEY=VALUE (got {item!r})")
        where[key] = value
    out = args.out if args.out is not None else folder / f"{args.format}.csv"
    st = _stat(f"--out {out}", out)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise BadInput(f"--out {out}", "is a folder, not a file")
    written, result = write_export(folder, args.format, args.controller, out, where)
    if result is None:  # cache_experiments
        _console().print(written.read_text(encoding="utf-8").rstrip(), highlight=False, soft_wrap=True)
        _console().print(f"csv: {written}", soft_wrap=True)
        return EXIT_OK
    console = _console()
    console.print(f"{args.format} ({result.controller}, over {result.key}; means over seeds, 95% interval):")
    for row, ivs in zip(result.rows, result.intervals, strict=True):
        spread = ", ".join(f"{k} {v['mean']:.4g}" + ("" if v["half_width"] is None else f" ± {v['half_width']:.2g}")
                           for k, v in ivs.items() if v["mean"] is not None)
        console.print(f"  {','.join(str(x) for x in row.values())}   [{spread}]", soft_wrap=True)
    console.print(f"csv: {out}", soft_wrap=True)
    return EXIT_OK


def _normalise(argv: Sequence[str]) -> list[str]:
    """Put the default subcommand in front of a bare ``DIR`` (``python -m analysis DIR``)."""
    args = list(argv)
    if args and args[0] not in SUBCOMMANDS and args[0] not in ("-h", "--help"):
        args.insert(0, DEFAULT_COMMAND)
    return args


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args_list = _normalise(argv)
    if not args_list:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    args = parser.parse_args(args_list)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except BrokenPipeError:
        raise
    except OSError as exc:  # the disk, not the code: a folder not writable, a full disk, a file that vanished
        where = exc.filename if exc.filename is not None else ""
        raise BadInput(str(where), f"cannot read or write: {exc.strerror or exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 done, 2 bad input, 1 our bug, 130 Ctrl-C).

    It ends through :func:`scenarios.cli_errors.run_cli`: bad input becomes ``error:`` lines naming
    the file (and column or key) or the flag, and an unexpected error one line that says how to see
    its traceback (``--debug`` or ``TOKENPACE_DEBUG=1``).
    """
    return run_cli(_main, argv, PROG, bad_input=(ResultsFormatError,))
