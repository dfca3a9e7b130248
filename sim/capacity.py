"""``python -m sim capacity``: the largest arrival rate each scheduler x controller pair sustains.

    python -m sim capacity SCENARIO --slo "qoe_mean>=0.9" [--slo ...] [--schedulers a,b]
        [--controllers a,b] [--seeds N] [--tol 0.05] [--jobs N] [--out DIR] [--resume] [--quiet]

Andes (arXiv 2404.16283) reports a scheduler by the request rate it serves at mean QoE >= 0.9;
TokenFlow (arXiv 2510.02758) by effective throughput under load. For each pair this searches the
rate factor k (every arrival rate of the scenario times k, :func:`sim.capacity_search.scaled_scenario`)
at which every ``--slo`` holds on the mean over seeds: bracket by doubling or halving from k = 1,
then bisect to ``--tol`` (:class:`sim.capacity_search.Search`). A probe is one simulation of one
(scheduler, controller, k, seed), run by the simulator's own entry (:func:`sim.world.run_controller`)
into a scratch folder and summarised by :func:`analysis.metrics.summarize_controller`, exactly as a
``python -m sim`` run is. Common random numbers: every pair and every k uses seeds scenario seed,
seed + 1, ..., so at each k the pairs see the same requests and differ only in policy.

``--jobs N`` runs probes in N processes (the bisections of different pairs, and the seeds of one
probe, in parallel). Each probe's row goes to capacity.csv as it ends (flushed), capacity.json is
rewritten after every evaluated rate, and run.json says ``running`` / ``interrupted`` / ``complete``;
Ctrl-C or SIGTERM leaves what was found so far, and ``--resume`` reuses every probe already in
capacity.csv (a run of the same scenario and parameters: run.json is checked).
Files: :mod:`analysis.capacity`; figure and table: ``python -m analysis capacity DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import controllers
from analysis.capacity import BASELINE, CAPACITY_CSV, CAPACITY_JSON, CSV_COLUMNS, capacity_table, read_capacity_csv
from analysis.metrics import summarize_controller
from analysis.results import (
    COMPLETE,
    INTERRUPTED,
    RUNNING,
    ResultsFormatError,
    read_run_json,
    sigterm_as_ctrl_c,
    started_at,
    to_jsonable,
    write_json_durably,
    write_run_json,
)
from scenarios import LoadedScenario
from scenarios.cli_errors import BadInput
from scenarios.loader import entry_params, expand_entries, split_entry
from sim.capacity_search import Search, Slo, check_scalable, parse_slos, scaled_scenario, slos_hold
from sim.model import schedulers
from sim.model.workload import draw_requests
from sim.world import run_controller

PROG = "python -m sim capacity"
MAX_SEEDS = 1000
Pair = tuple[str, str]  # (scheduler, controller)
ProbeKey = tuple[str, str, int, float]  # (scheduler, controller, seed, rate factor)


@dataclass(frozen=True)
class CapacityPlan:
    loaded: LoadedScenario
    slos: list[Slo]
    schedulers: dict[str, dict[str, Any]]  # name -> params
    pair_params: dict[Pair, dict[str, Any]]  # (scheduler, controller) -> the controller's params
    seeds: list[int]
    tol: float
    out: Path
    rate_key: str  # the first rate field of the arrivals: the nominal rate is k x its value
    base_rate: float

    @property
    def pairs(self) -> list[Pair]:
        return list(self.pair_params)

    @property
    def controllers(self) -> list[str]:
        return list(dict.fromkeys(c for _, c in self.pair_params))


# --------------------------------------------------------------------------- one probe
def run_probe(loaded: LoadedScenario, controller: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """One simulation of ``loaded`` (already scaled, its scheduler set) with ``controller`` and ``seed``;
    its summary metrics rounded as summary.json rounds them (6 significant digits)."""
    requests = draw_requests(loaded.scenario, loaded.base_dir, seed)
    with tempfile.TemporaryDirectory(prefix="tokenpace-capacity-") as tmp:
        folder = Path(tmp) / "probe"
        run_controller(loaded, requests, controller, params, folder, seed)
        summary = summarize_controller(folder, loaded.scenario.slo.qoe, loaded.scenario.server.replicas)
    out: dict[str, Any] = to_jsonable(summary, 6)
    return out


class _Inline(Executor):
    """``--jobs 1``: each probe runs when submitted, in this process."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        f: Future[Any] = Future()
        f.set_result(fn(*args, **kwargs))
        return f


# --------------------------------------------------------------------------- files
def _cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


class _CsvLog:
    """capacity.csv, one row per probe and seed, flushed after each."""

    def __init__(self, path: Path, rows: list[dict[str, Any]]) -> None:
        self._f: IO[str] = path.open("w", newline="", encoding="utf-8")
        self._w = csv.writer(self._f, lineterminator="\n")
        self._w.writerow(CSV_COLUMNS)
        for row in rows:
            self._w.writerow([_cell(row.get(c)) for c in CSV_COLUMNS])
        self._f.flush()

    def add(self, row: dict[str, Any]) -> None:
        self._w.writerow([_cell(row.get(c)) for c in CSV_COLUMNS])
        self._f.flush()

    def close(self) -> None:
        self._f.flush()
        with contextlib.suppress(OSError):
            os.fsync(self._f.fileno())
        self._f.close()


def run_info(plan: CapacityPlan, status: str) -> dict[str, Any]:
    """What run.json says about the search (:func:`analysis.results.write_run_json` adds where and when it ran)."""
    return {
        "mode": "capacity",
        "scenario": plan.loaded.resolved(),
        "scenario_file": str(plan.loaded.path),
        "schedulers": list(plan.schedulers),
        "scheduler_params": plan.schedulers,
        "controllers": plan.controllers,
        "pairs": [list(p) for p in plan.pairs],
        "pair_params": {f"{s}+{c}": params for (s, c), params in plan.pair_params.items()},
        "controller_info": {n: controllers.display_info()[n] for n in plan.controllers},
        "seeds": plan.seeds,
        "slo": [str(s) for s in plan.slos],
        "tol": plan.tol,
        "status": status,
    }


def _resume_problems(plan: CapacityPlan, info: dict[str, Any]) -> list[str]:
    """Why the probes in the folder were not made by this search's simulations (SLO, tolerance and
    seed count may differ: they decide which probes are asked for, not what a probe gives)."""
    new = to_jsonable(run_info(plan, RUNNING))
    problems = []
    if info.get("mode") != "capacity":
        problems.append(f"run.json is a {info.get('mode')!r} run, not a capacity search")
        return problems
    if info.get("scenario") != new["scenario"]:
        old = info.get("scenario") if isinstance(info.get("scenario"), dict) else {}
        keys = sorted({k for k in set(old) | set(new["scenario"]) if old.get(k) != new["scenario"].get(k)}, key=str)
        problems.append(f"the scenario differs (in {', '.join(map(str, keys[:5]))})")
    for kind in ("scheduler_params", "pair_params"):
        old = info.get(kind) if isinstance(info.get(kind), dict) else {}
        for name, params in new[kind].items():
            if name in old and old[name] != params:
                problems.append(f"the parameters of {name} differ ({kind}): {old[name]} in run.json, {params} now")
    return problems


def _previous_probes(plan: CapacityPlan, resume: bool) -> list[dict[str, Any]]:
    """The rows of capacity.csv a resumed search keeps (none without ``resume``)."""
    path = plan.out / CAPACITY_CSV
    if not resume:
        return []
    info = read_run_json(plan.out)
    if info is None or not path.is_file():
        print(f"{PROG}: --resume: no run.json and capacity.csv in {plan.out}: nothing to resume, "
              "starting the search", file=sys.stderr)
        return []
    problems = _resume_problems(plan, info)
    if problems:
        raise BadInput.many([("--resume", f"{plan.out} holds another search: {p}") for p in problems])
    try:
        return read_capacity_csv(path)
    except ResultsFormatError as exc:
        raise BadInput("--resume", f"{exc} (remove the folder, or run without --resume)") from None


# --------------------------------------------------------------------------- the search
class _Progress:
    """A rich bar per pair, in probes (its total grows as the bisection's length becomes known)."""

    def __init__(self, pairs: list[Pair], enabled: bool) -> None:
        self._p: Any = None
        self._tasks: dict[Pair, Any] = {}
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(TextColumn("{task.description:>24}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("probes  {task.fields[where]}"), TimeElapsedColumn(), transient=False)
            self._tasks = {p: self._p.add_task(f"{p[0]}+{p[1]}", total=None, where="") for p in pairs}

    def __enter__(self) -> _Progress:
        if self._p is not None:
            self._p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()

    def update(self, pair: Pair, search: Search, seeds: int, running: float | None) -> None:
        if self._p is None:
            return
        done = len(search.probes) * seeds
        lo = "?" if search.lo is None else f"{search.lo:.4g}"
        hi = "?" if search.hi is None else f"{search.hi:.4g}"
        where = f"k in [{lo}, {hi}]" + (f", probing {running:.4g}" if running is not None else "")
        if search.done:
            where = f"capacity k = {search.capacity:.4g} ({search.outcome})"
        self._p.update(self._tasks[pair], completed=done, total=done + search.probes_left() * seeds, where=where)


def _pair_result(plan: CapacityPlan, pair: Pair, search: Search, log: list[dict[str, Any]]) -> dict[str, Any]:
    lo, hi = search.lo, search.hi
    return {
        "scheduler": pair[0],
        "controller": pair[1],
        "outcome": search.outcome,
        "capacity_factor": search.capacity,
        "capacity_rate_per_s": search.capacity * plan.base_rate,
        "bracket": [lo, hi],
        "bracket_rate_per_s": [None if x is None else x * plan.base_rate for x in (lo, hi)],
        "probes": log,
    }


def result_info(plan: CapacityPlan, searches: dict[Pair, Search], logs: dict[Pair, list[dict[str, Any]]],
                status: str, notes: list[str]) -> dict[str, Any]:
    """What capacity.json holds."""
    pairs = [_pair_result(plan, p, searches[p], logs[p]) for p in plan.pairs]
    base = next((r for r in pairs if (r["scheduler"], r["controller"]) == BASELINE), None)
    for r in pairs:
        r["ratio_to_fcfs_unpaced"] = (r["capacity_factor"] / base["capacity_factor"]
                                      if base is not None and base["capacity_factor"] > 0 else None)
    return {
        "scenario": plan.loaded.scenario.name,
        "status": status,
        "slo": [str(s) for s in plan.slos],
        "slo_parsed": [{"metric": s.metric, "op": s.op, "threshold": s.threshold, "text": str(s)} for s in plan.slos],
        "seeds": plan.seeds,
        "tol": plan.tol,
        "rate_key": plan.rate_key,
        "base_rate_per_s": plan.base_rate,
        "pairs": pairs,
        "notes": notes,
    }


def run_capacity(plan: CapacityPlan, jobs: int = 1, show_progress: bool = False,
                 resume: bool = False) -> dict[str, Any]:
    """Search every pair; write capacity.csv, capacity.json and run.json; return capacity.json's content."""
    plan.out.mkdir(parents=True, exist_ok=True)
    kept = _previous_probes(plan, resume)
    cache: dict[ProbeKey, dict[str, Any]] = {
        (r["scheduler"], r["controller"], r["seed"], r["rate_factor"]): r for r in kept}
    (plan.out / CAPACITY_JSON).unlink(missing_ok=True)
    started = started_at(plan.out, keep=resume)
    write_run_json(plan.out, run_info(plan, RUNNING), started=started)
    log_csv = _CsvLog(plan.out / CAPACITY_CSV, kept)
    searches = {p: Search(plan.tol) for p in plan.pairs}
    logs: dict[Pair, list[dict[str, Any]]] = {p: [] for p in plan.pairs}
    notes: list[str] = []
    variants: dict[tuple[str, float], LoadedScenario] = {}
    streams = plan.loaded.scenario.workload.streams
    timed = plan.loaded.scenario.workload.arrivals.kind == "phases"
    futures: dict[Future[dict[str, Any]], ProbeKey] = {}
    waiting: dict[Pair, tuple[float, set[int]]] = {}
    reused = 0

    def variant(scheduler: str, k: float) -> LoadedScenario:
        if (scheduler, k) not in variants:
            variants[(scheduler, k)] = scaled_scenario(plan.loaded, k, scheduler, plan.schedulers[scheduler])
        return variants[(scheduler, k)]

    def evaluate(pair: Pair, k: float) -> None:
        per_seed = [cache[(*pair, seed, k)] for seed in plan.seeds]
        holds, means = slos_hold(plan.slos, per_seed)
        searches[pair].record(k, holds)
        logs[pair].append({"rate_factor": k, "rate_per_s": k * plan.base_rate, "holds": holds, "means": means})
        # with ``phases`` arrivals the timeline decides how many arrive (``streams`` is only a cap)
        short = [] if timed else [m.get("streams") for m in per_seed if (m.get("streams") or 0) < streams]
        if short:
            note = (f"at rate factor {k:g}, {min(short):g} of {streams} requests arrived before max_duration_s "
                    f"({pair[0]}+{pair[1]}): the probe measured fewer requests; raise max_duration_s")
            notes.append(note)
        write_json_durably(plan.out / CAPACITY_JSON, result_info(plan, searches, logs, RUNNING, notes))

    def advance(pair: Pair, pool: Executor, bar: _Progress) -> None:
        """Ask the pair's search for its next rate until one needs simulating (or it is over)."""
        nonlocal reused
        search = searches[pair]
        while (k := search.next_k()) is not None:
            missing = {seed for seed in plan.seeds if (*pair, seed, k) not in cache}
            reused += len(plan.seeds) - len(missing)
            if not missing:
                evaluate(pair, k)
                continue
            waiting[pair] = (k, set(missing))
            bar.update(pair, search, len(plan.seeds), k)
            for seed in sorted(missing):
                loaded = variant(pair[0], k)
                futures[pool.submit(run_probe, loaded, pair[1], plan.pair_params[pair], seed)] = (*pair, seed, k)
            return
        bar.update(pair, search, len(plan.seeds), None)

    def collect(f: Future[dict[str, Any]], pool: Executor, bar: _Progress) -> None:
        key = futures.pop(f)
        sched, ctrl, seed, k = key
        row = {"scheduler": sched, "controller": ctrl, "seed": seed, "rate_factor": k,
               "rate_per_s": k * plan.base_rate, **f.result()}
        cache[key] = row
        log_csv.add(row)
        pair = (sched, ctrl)
        waiting[pair][1].discard(seed)
        if not waiting[pair][1]:
            del waiting[pair]
            evaluate(pair, k)
            advance(pair, pool, bar)

    from sim.runner import _stop_pool, _worker_init

    status = INTERRUPTED
    with sigterm_as_ctrl_c(), _Progress(plan.pairs, show_progress) as bar:
        pool: Executor = _Inline() if jobs <= 1 else ProcessPoolExecutor(
            max_workers=jobs, initializer=_worker_init, initargs=(os.getpid(),))
        try:
            for pair in plan.pairs:
                advance(pair, pool, bar)
                if isinstance(pool, _Inline):  # each probe ran when submitted: take its result now
                    while futures:
                        collect(next(iter(futures)), pool, bar)
            while futures:
                finished, _ = wait(list(futures), timeout=0.5, return_when=FIRST_COMPLETED)
                for f in sorted(finished, key=lambda f: futures[f]):
                    collect(f, pool, bar)
            status = COMPLETE
        finally:
            if isinstance(pool, ProcessPoolExecutor):
                if status == COMPLETE:
                    pool.shutdown(wait=True)
                else:
                    _stop_pool(pool)
            log_csv.close()
            info = result_info(plan, searches, logs, status, notes)
            write_json_durably(plan.out / CAPACITY_JSON, info)
            write_run_json(plan.out, {**run_info(plan, status), "probes_reused": reused}, started=started)
    return info


# --------------------------------------------------------------------------- the command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="For each scheduler x controller pair, find the largest arrival rate (the scenario's rates "
        "times a factor k) at which every --slo holds on the mean over seeds: bracket k by doubling or halving "
        "from 1, then bisect. Writes capacity.csv (every probe), capacity.json (per pair) and run.json; "
        "`python -m analysis capacity DIR` draws QoE, P99 TTFT and effective throughput against the rate.",
    )
    p.add_argument("scenario", help="scenario YAML file, or a built-in scenario name (see `python -m sim list`)")
    p.add_argument("--slo", action="append", default=None, metavar="'METRIC OP NUMBER'",
                   help="an objective on a summary.json metric, e.g. 'qoe_mean>=0.9' or 'ttft_p99_s<2' "
                   "(OP: >=, <=, >, <); repeat the flag for several, all must hold")
    p.add_argument("--schedulers", default=None,
                   help="comma-separated scheduler names (default: the scenario's server.scheduler)")
    p.add_argument("--controllers", default=None,
                   help="comma-separated controller names (default: the scenario's `controllers`)")
    p.add_argument("--seeds", default="1", help=f"seeds per probe, 1..{MAX_SEEDS}: the scenario's seed, seed+1, ... "
                   "(default 1)")
    p.add_argument("--tol", default="0.05", help="relative width at which bisection stops, (hi - lo) <= tol x lo, "
                   "0 < tol < 1 (default 0.05)")
    p.add_argument("--jobs", default="1", help="probes simulated in parallel processes (default 1)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default: results/<scenario>-capacity)")
    p.add_argument("--resume", action="store_true", help="reuse the probes already in DIR/capacity.csv")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    return p


def _number_problem(text: str, low: float, high: float, integer: bool) -> str | None:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = math.nan
    kind = "an integer" if integer else "a number"
    if not (math.isfinite(value) and low <= value <= high) or (not integer and value in (0.0, 1.0)):
        span = f"in [{low:g}, {high:g}]" if integer else "strictly between 0 and 1"
        return f"must be {kind} {span} (got {text[:40]!r})"
    return None


def make_capacity_plan(args: argparse.Namespace) -> CapacityPlan:
    """Check every flag and the scenario (all problems at once, each named) and build the plan.

    The pairs are each controller entry on each ``--schedulers`` name (default: the scenario's
    ``server.scheduler``); an entry ``CONTROLLER@SCHEDULER`` is that one pair. A scheduler runs with
    the scenario's parameters when it is the scenario's, else with its defaults."""
    from sim.cli import _controller_names, _jobs_problem, _load, _out_problems, _scheduler_names

    problems: list[tuple[str, str]] = []
    if args.out is not None:
        problems += _out_problems(args.out, flag=True, create=False)
    slos: list[Slo] = []
    try:
        slos = parse_slos(args.slo or [])
    except BadInput as exc:
        problems += exc.problems
    sched_names, named = _scheduler_names(args.schedulers)
    problems += named
    entries, named = _controller_names(args.controllers)
    problems += named
    for flag, problem in (("--seeds", _number_problem(args.seeds, 1, MAX_SEEDS, True)),
                          ("--tol", _number_problem(args.tol, 0.0, 1.0, False)),
                          ("--jobs", _jobs_problem(args.jobs))):
        if problem is not None:
            problems.append((flag, problem))
    loaded = _load(args.scenario, entries, problems)
    rate_key, base_rate = "", 0.0
    if loaded is not None:
        try:
            rate_key, base_rate = check_scalable(loaded)
        except BadInput as exc:
            problems += exc.problems
    if problems or loaded is None:
        raise BadInput.many(problems)
    scn = loaded.scenario
    own = scn.server.scheduler
    pair_params: dict[Pair, dict[str, Any]] = {}
    for entry in expand_entries(entries if entries is not None else list(scn.controllers), sched_names or [own.name]):
        controller, scheduler = split_entry(entry)
        pair_params.setdefault((scheduler or own.name, controller), dict(entry_params(scn, entry)))
    chosen_scheds: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(s for s, _ in pair_params):
        params = dict(own.params) if name == own.name else {}
        problems += [("--schedulers", f"{name}: its default parameters: {k}: {m}")
                     for k, m in schedulers.validate_params(name, params)]
        chosen_scheds[name] = params
    out = args.out if args.out is not None else Path("results") / f"{scn.name}-capacity"
    problems += _out_problems(out, flag=args.out is not None, create=not problems)
    if problems:
        raise BadInput.many(problems)
    seeds = [scn.seed + i for i in range(int(args.seeds))]
    return CapacityPlan(loaded, slos, chosen_scheds, pair_params, seeds, float(args.tol), out, rate_key, base_rate)


def main_capacity(argv: list[str]) -> int:
    """``python -m sim capacity ...`` (called through :func:`sim.cli.main`, so through ``run_cli``)."""
    args = _parser().parse_args(argv)
    plan = make_capacity_plan(args)
    from rich.console import Console

    show = not args.quiet and sys.stderr.isatty()
    info = run_capacity(plan, jobs=int(args.jobs), show_progress=show, resume=args.resume)
    for note in dict.fromkeys(info["notes"]):
        print(f"{PROG}: note: {note}", file=sys.stderr)
    if not args.quiet:
        console = Console() if sys.stdout.isatty() else Console(width=200)
        console.print(capacity_table(info))
        console.print(f"results in {plan.out}/ (figure: python -m analysis capacity {plan.out})", highlight=False)
    return 0
