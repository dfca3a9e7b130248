"""The command line: ``python -m analysis DIR`` turns a results folder into numbers and pictures.

It reads the folder (run.json and each controller's CSV files), recomputes summary.json from
the raw files, draws the plots into DIR/plots/, writes DIR/report.html, prints the comparison
table and the report's path. ``python -m analysis report DIR`` is the same thing spelled out.
``python -m analysis compare SIM_DIR LIVE_DIR`` measures the simulator's fidelity against a lab
run of the same scenario (:mod:`analysis.compare`). ``python -m analysis train INPUT`` fits the
telemetry models (anomaly detector, RTT forecaster) on telemetry and reports their quality
(:mod:`analysis.train`).

Bad input — a missing folder or file, a CSV with a missing column or a cell that is not a
number — ends with exit code 2 and one line naming the file (and column), never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

from analysis.results import ResultsFormatError, Run, load_run

__all__ = ["DEFAULT_COMMAND", "SUBCOMMANDS", "build_parser", "main"]

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_COMMAND = "report"
#: a first argument that is none of these is a results folder for the default command.
SUBCOMMANDS: tuple[str, ...] = ("report", "compare", "train")
PROGRESS_MIN_CONTROLLERS = 3  # show a progress bar while plotting from this many controllers


def _add_report(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "report",
        help="summarise a results folder, draw its plots and write report.html (the default)",
        description="Recompute DIR/summary.json from the run's files, draw DIR/plots/*.png, write "
        "DIR/report.html and print the comparison table.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            exit codes: 0 done; 2 bad input (missing or malformed results files, named on stderr);
            1 internal error (rerun with --debug for the traceback)."""),
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analysis",
        description="Analyse tokenpace results: per-controller QoE, stall, TTFT, waste and plots.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            usage forms:
              python -m analysis DIR [--no-plots]          same as: python -m analysis report DIR
              python -m analysis report DIR [--no-plots]
              python -m analysis compare SIM_DIR LIVE_DIR [--out DIR] [--no-plots]
              python -m analysis train INPUT [--out DIR] [--contamination 0.15] [--estimators 200] ...

            DIR holds run.json and one folder per controller with streams.csv and tokens.csv
            (plus telemetry.csv, server.csv, request_traces.csv, events.csv, links.csv when
            the run wrote them). Writes DIR/summary.json, DIR/plots/*.png, DIR/report.html.
            Run 'python -m analysis report --help' for the options."""),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_report(sub)
    _add_compare(sub)
    _add_train(sub)
    return parser


def _draw_plots(run: Run, summary: dict[str, object]) -> list[Path]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from analysis.plots import plot_jobs

    jobs = plot_jobs(run, run.path / "plots", summary)
    err = Console(stderr=True)
    paths: list[Path] = []
    if len(run.controllers) < PROGRESS_MIN_CONTROLLERS or not err.is_terminal:
        for job in jobs:
            if (p := job.make()) is not None:
                paths.append(p)
        return paths
    columns = (TextColumn("plotting {task.description:<32}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("", total=len(jobs))
        for job in jobs:
            progress.update(task, description=job.name)
            if (p := job.make()) is not None:
                paths.append(p)
            progress.advance(task)
    return paths


def _cmd_report(args: argparse.Namespace) -> int:
    from rich.console import Console

    from analysis.metrics import format_table, summarize_run
    from analysis.report import write_report
    from analysis.style import controller_style

    run = load_run(args.dir)
    summary = summarize_run(run)
    plots = [] if args.no_plots else _draw_plots(run, summary)
    report = write_report(run, summary, plots)
    out = Console()
    if not out.is_terminal:
        out = Console(width=200)  # a pipe or a log file: do not squeeze the table into 80 columns
    labels = {n: controller_style(run, n).label for n in run.controller_names}
    out.print(format_table(summary, controller_labels=labels))
    out.print(f"summary: {run.path / 'summary.json'}", highlight=False, soft_wrap=True)
    out.print(f"report: {report}", highlight=False, soft_wrap=True)
    return EXIT_OK


def _cmd_compare(args: argparse.Namespace) -> int:
    from rich.console import Console

    from analysis.compare import compare_runs, fidelity_tables

    result, path = compare_runs(args.sim_dir, args.live_dir, out_dir=args.out, plots=not args.no_plots)
    out = Console()
    if not out.is_terminal:
        out = Console(width=200)
    for renderable in fidelity_tables(result):
        out.print(renderable)
    out_dir = path.parent
    for name in result["plots"].values():
        out.print(f"plot: {out_dir / name}", highlight=False, soft_wrap=True)
    out.print(f"fidelity: {path}", highlight=False, soft_wrap=True)
    return EXIT_OK


def _cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from analysis.train import format_metrics, options_from_args, train

    try:
        options = options_from_args(args)
        options.check()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        result = train(args.input, args.out, options, plots=not args.no_plots)
    except ImportError as exc:  # the ml extra is not installed
        print(f"error: {exc.name or exc} is not importable: pip install 'tokenpace[ml]'", file=sys.stderr)
        return EXIT_INTERNAL
    out = Console()
    if not out.is_terminal:
        out = Console(width=200)
    out.print(format_metrics(result.metrics))
    for name, path in result.files.items():
        out.print(f"{name}: {path}", highlight=False, soft_wrap=True)
    return EXIT_OK


def _normalise(argv: Sequence[str]) -> list[str]:
    """Put the default subcommand in front of a bare ``DIR`` (``python -m analysis DIR``)."""
    args = list(argv)
    if args and args[0] not in SUBCOMMANDS and args[0] not in ("-h", "--help"):
        args.insert(0, DEFAULT_COMMAND)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args_list = _normalise(sys.argv[1:] if argv is None else argv)
    if not args_list:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    args = parser.parse_args(args_list)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ResultsFormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user; --debug shows the traceback
        if getattr(args, "debug", False):
            raise
        print(
            f"error: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
