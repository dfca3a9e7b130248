"""``python -m sim sweep``: a grid over scenario keys x seeds x controllers, on a process pool or Ray.

    python -m sim sweep SWEEP.yaml [--backend local|ray] [--jobs N] [--address ADDR] [--resume]
                                   [--out DIR] [--quiet]

A sweep file (:mod:`sim.sweep_file`) names a base scenario, a grid over its keys, seeds and
controllers. Each cell of the grid and each seed is one ``python -m sim`` run of every controller with
common random numbers (:func:`sim.runner.run_plan`: the requests are drawn once from the seed and
every random process is seeded from it, so the controllers differ only in what they decide), written
in the standard layout to ``DIR/cells/<cell>/seed-<s>/``. That run depends on nothing but its scenario,
seed and controllers, so any backend, any order and any number of interruptions give the same files.

Backends: ``local`` runs (cell, seed) runs in ``--jobs`` processes (one in this process when 1);
``ray`` (:mod:`sim.sweep_ray`, the optional extra ``pip install 'tokenpace[ray]'``) submits the same
runs as Ray tasks to a local Ray instance with ``--jobs`` CPUs, or to the cluster at ``--address``.
Files: ``sweep.csv`` (a row per cell x controller x seed, appended and flushed as runs end, rewritten
in grid order at the end), ``sweep.json`` (mean and 95% Student-t interval over seeds,
:func:`analysis.sweep.aggregate`) and run.json (``mode: sweep``; ``status`` running / interrupted /
complete, as ``python -m sim`` keeps it; ``finished`` lists ``<cell>/seed-<s>`` as each run's folder is
complete). Ctrl-C or SIGTERM stops the workers and leaves those files; ``--resume`` keeps every finished
run (checked to be this sweep's) and runs the rest, so an interrupted sweep loses at most the runs in
flight, and its sweep.csv is the same, byte for byte, as an uninterrupted one's. Figures: ``python -m
analysis DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from analysis.results import (
    COMPLETE,
    INTERRUPTED,
    RUNNING,
    read_run_json,
    sigterm_as_ctrl_c,
    started_at,
    to_jsonable,
    write_json_durably,
    write_run_json,
)
from analysis.seed004 import write_export
from analysis.sweep import (
    SWEEP_CSV,
    SWEEP_JSON,
    SWEEP_MODE,
    aggregate,
    csv_columns,
    sweep_table,
    value_text,
)
from scenarios.cli_errors import BadInput
from sim.model.entries import Plan, entry_info
from sim.sweep_cell import run_cell, unpack_folder
from sim.sweep_file import Cell, SweepPlan, load_sweep

PROG = "python -m sim sweep"
BACKENDS = ("local", "ray")
RunKey = tuple[str, int]  # (cell id, seed)
Done = Callable[[int, dict[str, Any]], None]  # (index of the run, run_cell's result)


# --------------------------------------------------------------------------- backends
def run_local(plans: list[Plan], jobs: int, done: Done, tick: Callable[[], None]) -> None:
    """Each plan in this process (``jobs`` 1) or in ``jobs`` worker processes; ``done`` as each ends."""
    if jobs <= 1 or len(plans) <= 1:
        for i, plan in enumerate(plans):
            done(i, run_cell(plan))
        return
    from sim.runner import _stop_pool, _worker_init

    pool = ProcessPoolExecutor(max_workers=min(jobs, len(plans)), initializer=_worker_init, initargs=(os.getpid(),))
    try:
        futures: dict[Future[dict[str, Any]], int] = {pool.submit(run_cell, p): i for i, p in enumerate(plans)}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            for f in sorted(finished, key=futures.__getitem__):
                done(futures[f], f.result())
            tick()
    except BaseException:
        _stop_pool(pool)
        raise
    pool.shutdown(wait=True)


# --------------------------------------------------------------------------- files
def _row_cells(row: dict[str, Any], columns: list[str]) -> list[str]:
    out = []
    for c in columns:
        v = row.get(c)
        out.append("" if v is None else repr(v) if isinstance(v, float) else str(v))
    return out


def rows_of(plan: SweepPlan, cell: Cell, seed: int, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """sweep.csv's rows of one run: one per entry, the metrics as summary.json holds them."""
    ctrls = summary.get("controllers") or {}
    rows = []
    for entry in plan.entries:
        metrics = ctrls.get(entry) or {}
        rows.append({"cell": cell.id, **{k: value_text(v) for k, v in cell.values.items()}, "controller": entry,
                     "seed": seed, **{m: metrics.get(m) for m in plan.metrics}})
    return rows


def _sort_rows(plan: SweepPlan, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Grid order, then the sweep's controller order, then its seed order."""
    cell_at = {c.id: i for i, c in enumerate(plan.cells)}
    entry_at = {e: i for i, e in enumerate(plan.entries)}
    seed_at = {s: i for i, s in enumerate(plan.seeds)}
    return sorted(rows, key=lambda r: (cell_at[r["cell"]], entry_at[r["controller"]], seed_at[r["seed"]]))


def write_csv_durably(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow(_row_cells(row, columns))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sweep_info(plan: SweepPlan, status: str, finished: list[str], backend: str, jobs: int) -> dict[str, Any]:
    """What the sweep's run.json says (:func:`analysis.results.write_run_json` adds where and when it ran)."""
    probe = plan.run_plan(plan.cells[0], plan.seeds[0])
    return {
        "mode": SWEEP_MODE,
        "name": plan.name,
        "sweep_file": str(plan.file.resolve()),
        "scenario_file": str(plan.base.path),
        "scenario": plan.base.resolved(),
        "grid": plan.grid,
        "grid_keys": list(plan.grid),  # JSON files here sort their keys: the grid's order is kept here
        "cells": [{"id": c.id, "values": c.values} for c in plan.cells],
        "seeds": plan.seeds,
        "controllers": plan.entries,
        "controller_info": {e: entry_info(probe, e) for e in plan.entries},
        "backend": backend,
        "jobs": jobs,
        "status": status,
        "finished": finished,
    }


def _run_name(cell_id: str, seed: int) -> str:
    return f"{cell_id}/seed-{seed}"


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(to_jsonable(obj), sort_keys=True))


def _resume_problems(plan: SweepPlan, info: dict[str, Any]) -> list[str]:
    """Why the folder holds another sweep (resuming would mix two experiments)."""
    if info.get("mode") != SWEEP_MODE:
        return [f"run.json is a {info.get('mode')!r} run, not a sweep"]
    from sim.runner import _differences

    new = _jsonable(sweep_info(plan, RUNNING, [], "", 0))
    problems = []
    for key, what in (("scenario", "the base scenario"), ("grid", "the grid"), ("grid_keys", "the grid's keys"),
                      ("seeds", "the seeds"),
                      ("controllers", "the controllers")):
        diffs = _differences(info.get(key), new[key], key)
        if diffs:
            problems.append(f"{what} differs: " + "; ".join(diffs))
    return problems


def _finished_runs(plan: SweepPlan, resume: bool) -> dict[RunKey, dict[str, Any]]:
    """The runs a resumed sweep keeps, with their summary.json: complete folders of this sweep."""
    info = read_run_json(plan.out)
    if not resume:
        if info is not None and info.get("mode") == SWEEP_MODE:
            if info.get("status") != COMPLETE:
                print(f"{PROG}: {plan.out} held an unfinished sweep; starting it over (--resume would have "
                      "continued it)", file=sys.stderr)
            shutil.rmtree(plan.out / "cells", ignore_errors=True)
        return {}
    if info is None:
        print(f"{PROG}: --resume: no sweep run.json in {plan.out}: nothing to resume, running every cell",
              file=sys.stderr)
        return {}
    problems = _resume_problems(plan, info)
    if problems:
        raise BadInput.many([("--resume", f"{plan.out} holds another sweep: {p}") for p in problems])
    kept: dict[RunKey, dict[str, Any]] = {}
    for cell in plan.cells:
        for seed in plan.seeds:
            folder = plan.run_dir(cell, seed)
            run = read_run_json(folder)
            if run is None or run.get("status") != COMPLETE or run.get("seed") != seed:
                continue
            if run.get("controllers") != plan.entries:
                continue
            try:
                summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            kept[(cell.id, seed)] = summary
    return kept


class _Bar:
    """A rich bar over cells (a cell is done when all its seeds are), with runs (cell x seed) beside it."""

    def __init__(self, cells: int, seeds: int, enabled: bool) -> None:
        self.seeds = seeds
        self.cells = cells
        self._p: Any = None
        if enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._p = Progress(TextColumn("sweep"), BarColumn(), TextColumn("{task.fields[text]}"),
                               TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
            self._task = self._p.add_task("cells", total=cells, text="")

    def __enter__(self) -> _Bar:
        if self._p is not None:
            self._p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()

    def update(self, cells_done: int, runs_done: int) -> None:
        if self._p is not None:
            text = f"{cells_done}/{self.cells} cells  {runs_done}/{self.cells * self.seeds} runs"
            self._p.update(self._task, completed=runs_done / self.seeds, text=text)


def run_sweep(plan: SweepPlan, backend: str = "local", jobs: int = 1, address: str | None = None,
              resume: bool = False, show_progress: bool = False) -> dict[str, Any]:
    """Run every (cell, seed) not finished yet; write sweep.csv, sweep.json and run.json; return sweep.json."""
    plan.out.mkdir(parents=True, exist_ok=True)
    kept = _finished_runs(plan, resume)
    order = [(c, s) for c in plan.cells for s in plan.seeds]
    todo = [(c, s) for c, s in order if (c.id, s) not in kept]
    for cell, seed in todo:  # a folder an interrupted run left is started over
        shutil.rmtree(plan.run_dir(cell, seed), ignore_errors=True)
    columns = csv_columns(list(plan.grid), plan.metrics)
    cell_of = {c.id: c for c in plan.cells}
    rows: list[dict[str, Any]] = []
    for (cid, seed), summary in kept.items():
        rows += rows_of(plan, cell_of[cid], seed, summary)
    finished = [k for k in ((c.id, s) for c, s in order) if k in kept]

    def names() -> list[str]:
        at = {(c.id, s): i for i, (c, s) in enumerate(order)}
        return [_run_name(*k) for k in sorted(finished, key=at.__getitem__)]

    (plan.out / SWEEP_JSON).unlink(missing_ok=True)  # written again at the end, never left stale
    static = sweep_info(plan, RUNNING, [], backend, jobs)
    started = started_at(plan.out, keep=resume)
    write_run_json(plan.out, {**static, "finished": names()}, started=started)
    write_csv_durably(plan.out / SWEEP_CSV, columns, _sort_rows(plan, rows))
    if resume and kept:
        print(f"{PROG}: --resume: {len(kept)} of {len(order)} runs finished already; running {len(todo)}",
              file=sys.stderr)
    log = (plan.out / SWEEP_CSV).open("a", encoding="utf-8", newline="")
    writer = csv.writer(log, lineterminator="\n")
    seeds_done: dict[str, int] = {}
    for cid, _ in finished:
        seeds_done[cid] = seeds_done.get(cid, 0) + 1
    plans = [plan.run_plan(c, s) for c, s in todo]
    status = INTERRUPTED
    with _Bar(len(plan.cells), len(plan.seeds), show_progress) as bar:

        def tick() -> None:
            bar.update(sum(n == len(plan.seeds) for n in seeds_done.values()), len(finished))

        def done(i: int, result: dict[str, Any]) -> None:
            cell, seed = todo[i]
            if result.get("files") is not None:
                unpack_folder(result["files"], plan.run_dir(cell, seed))
            new = rows_of(plan, cell, seed, result["summary"])
            rows.extend(new)
            for row in new:
                writer.writerow(_row_cells(row, columns))
            log.flush()
            finished.append((cell.id, seed))
            seeds_done[cell.id] = seeds_done.get(cell.id, 0) + 1
            write_json_durably(plan.out / "run.json", {**static, "finished": names()})
            tick()

        tick()
        try:
            with sigterm_as_ctrl_c():
                if todo and backend == "ray":
                    from sim.sweep_ray import run_ray

                    run_ray(plans, jobs, address, done, tick)
                elif todo:
                    run_local(plans, jobs, done, tick)
            status = COMPLETE
        finally:
            with contextlib.suppress(OSError):
                log.close()
            write_csv_durably(plan.out / SWEEP_CSV, columns, _sort_rows(plan, rows))
            result = {"name": plan.name, "status": status, "grid": plan.grid, "grid_keys": list(plan.grid),
                      "seeds": plan.seeds,
                      "controllers": plan.entries, "ci_level": 0.95,
                      "cells": aggregate(rows, [{"id": c.id, "values": c.values} for c in plan.cells], plan.entries,
                                         plan.metrics)}
            write_json_durably(plan.out / SWEEP_JSON, result)
            write_run_json(plan.out, {**static, "status": status, "finished": names()}, started=started)
    for fmt in plan.exports:  # the sweep file's ``export``: seed 004's CSVs, once every run has finished
        write_export(plan.out, fmt)
    return result


# --------------------------------------------------------------------------- the command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Run a base scenario over a grid of its keys, once per seed, with every controller of the "
        "sweep on common random numbers; one results folder per cell and seed (DIR/cells/<cell>/seed-<s>/), "
        "sweep.csv (every cell x controller x seed x metric) and sweep.json (mean and 95%% CI across seeds). "
        "Figures: python -m analysis DIR.",
    )
    p.add_argument("sweep", help="sweep YAML file (base:, grid:, seeds:, controllers:)")
    p.add_argument("--backend", default="local", help="local (a process pool, the default) or ray "
                   "(pip install 'tokenpace[ray]')")
    p.add_argument("--jobs", default="1", help="runs at once: processes of the pool, or the CPUs of the local "
                   "Ray instance (default 1)")
    p.add_argument("--address", default=None, help="with --backend ray: the Ray cluster to use (ray.init(address)); "
                   "default: start a local Ray instance")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: results/<sweep name>)")
    p.add_argument("--resume", action="store_true", help="keep the runs a previous interrupted run of this sweep "
                   "finished in DIR and run the rest")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    return p


def ray_missing() -> str | None:
    """Why ``--backend ray`` cannot run here (None: it can)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        return "ray is not installed: pip install 'tokenpace[ray]' (or use --backend local)"
    return None


def make_sweep_plan(args: argparse.Namespace) -> SweepPlan:
    """Every flag and the sweep file checked, all problems at once."""
    from sim.cli import _jobs_problem, _out_problems

    problems: list[tuple[str, str]] = []
    if args.backend not in BACKENDS:
        problems.append(("--backend", f"must be one of {', '.join(BACKENDS)} (got {value_text(args.backend)[:40]})"))
    elif args.backend == "ray" and (why := ray_missing()) is not None:
        problems.append(("--backend", why))
    if args.address is not None and args.backend != "ray":
        problems.append(("--address", "only with --backend ray"))
    if (why := _jobs_problem(args.jobs)) is not None:
        problems.append(("--jobs", why))
    if args.out is not None:
        problems += _out_problems(args.out, flag=True, create=False)
    plan = None
    try:
        plan = load_sweep(args.sweep, args.out)
    except BadInput as exc:
        problems += exc.problems
    if plan is not None and not problems:
        problems += _out_problems(plan.out, flag=args.out is not None, create=True)
    if problems or plan is None:
        raise BadInput.many(problems)
    return plan


def main_sweep(argv: list[str]) -> int:
    """``python -m sim sweep ...`` (called through :func:`sim.cli.main`, so through ``run_cli``)."""
    args = _parser().parse_args(argv)
    plan = make_sweep_plan(args)
    show = not args.quiet and sys.stderr.isatty()
    info = run_sweep(plan, backend=args.backend, jobs=int(args.jobs), address=args.address, resume=args.resume,
                     show_progress=show)
    if not args.quiet:
        from rich.console import Console

        console = Console() if sys.stdout.isatty() else Console(width=200)
        console.print(sweep_table(info["cells"], list(plan.grid)))
        console.print(f"{len(plan.cells)} cells x {len(plan.seeds)} seeds x {len(plan.entries)} controllers; "
                      f"results in {plan.out}/ (figures: python -m analysis {plan.out})", highlight=False)
        for fmt in plan.exports:
            console.print(f"{fmt}: {plan.out / f'{fmt}.csv'}", highlight=False, soft_wrap=True)
    return 0
