"""Run every controller on one scenario with common random numbers, then summarise.

The requests (arrivals, lengths, paths, readers) are drawn once and handed to each
controller's run, and each path's loss process is seeded the same way in every run, so the
controllers differ only in what they decided. Runs go to separate processes when ``jobs > 1``.

A run keeps its folder honest (run.json ``status`` and ``finished``, see :mod:`analysis.results.run_json`): a
controller is listed as finished once its files are closed and on disk, Ctrl-C and SIGTERM leave
``interrupted``, and a SIGKILL leaves ``running``. ``resume=True`` (``python -m sim ... --resume``)
then runs only the controllers that did not finish. That gives the same summary.json, byte for byte,
as an uninterrupted run: each controller's run depends only on the scenario, the seed and its own
parameters (the requests are drawn from the seed, every random process is seeded from it, and
nothing carries over from one controller's run to the next in a process), and the summary is made
from the controllers' files alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import sys
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import controllers
from analysis.metrics import summarize_run
from analysis.results import (
    COMPLETE,
    INTERRUPTED,
    RUNNING,
    fsync_files,
    git_rev,
    in_order,
    name_list,
    read_run_json,
    sigterm_as_ctrl_c,
    started_at,
    to_jsonable,
    update_run_json,
    write_run_json,
)
from scenarios import ScenarioError, load_scenario
from scenarios.cli_errors import BadInput
from scenarios.loader import entry_params, entry_params_key, entry_problems, expand_entries, split_entry
from sim.model import schedulers
from sim.model.entries import Plan, entry_info
from sim.model.workload import Request, draw_requests
from sim.world import RunStats, run_controller


def make_plan(scenario: str | Path, out: Path | None, names: list[str] | None, seed: int | None,
              scheduler_names: list[str] | None = None) -> Plan:
    """Load and check everything a run needs; every problem is a ScenarioError naming file and key.

    ``names`` are entries (``CONTROLLER`` or ``CONTROLLER@SCHEDULER``; default: the scenario's
    ``controllers``); ``scheduler_names`` (``--schedulers``) expands each plain one per scheduler."""
    loaded = load_scenario(scenario)
    scn = loaded.scenario
    sched = scn.server.scheduler
    if sched.name not in schedulers.REGISTRY:
        raise ScenarioError(loaded.path, "server.scheduler.name", str(schedulers.UnknownScheduler(sched.name)))
    for key, msg in schedulers.validate_params(sched.name, sched.params):
        raise ScenarioError(loaded.path, f"server.scheduler.params.{key}", msg)
    for name in scheduler_names or []:
        if name not in schedulers.REGISTRY:
            raise BadInput("--schedulers", str(schedulers.UnknownScheduler(name)))
    chosen: dict[str, dict[str, Any]] = {}
    used: dict[str, str] = {}
    for name in expand_entries(names or list(scn.controllers), scheduler_names):
        problems = entry_problems(name, list(controllers.REGISTRY), list(schedulers.REGISTRY))
        if problems:
            key = "--controllers" if names else f"controllers.{name}"
            raise ScenarioError(loaded.path, key, problems[0])
        params = entry_params(scn, name)
        for key, msg in controllers.validate_params(split_entry(name)[0], params):
            raise ScenarioError(loaded.path, f"controllers.{entry_params_key(scn, name) or name}.{key}", msg)
        chosen[name] = params
        used[name] = split_entry(name)[1] or sched.name
    seed = scn.seed if seed is None else seed
    return Plan(loaded, chosen, seed, out or Path("results") / scn.name, used)


def run_info(plan: Plan, status: str = RUNNING, finished: Iterable[str] = ()) -> dict[str, Any]:
    """What run.json says about a run of ``plan`` (:func:`analysis.results.write_run_json` adds where and
    when it ran)."""
    scn = plan.loaded.scenario
    return {
        "mode": "sim",
        "scenario": plan.loaded.resolved(),
        "scenario_file": str(plan.loaded.path),
        "controllers": list(plan.controllers),
        "controller_params": plan.controllers,
        "controller_info": {n: entry_info(plan, n) for n in plan.controllers},
        "entries": {n: {"controller": plan.controller_of(n), "scheduler": plan.scheduler_of(n)}
                    for n in plan.controllers},
        "seed": plan.seed,
        "slo_qoe": scn.slo.qoe,
        "control_interval_s": scn.control_interval_s,
        "status": status,
        "finished": in_order(plan.controllers, finished),
    }


def _note(message: str) -> None:
    print(f"python -m sim: {message}", file=sys.stderr, flush=True)


def _jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from run.json (tuples as lists, and so on)."""
    return json.loads(json.dumps(to_jsonable(obj), sort_keys=True))


def _differences(old: Any, new: Any, where: str = "", limit: int = 3) -> list[str]:
    """Up to ``limit`` key paths where two JSON values differ, each with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{where}.{key}" if where else str(key)
            if key not in old or key not in new:
                out.append(f"{path}: {'absent' if key not in old else _short(old[key])} in run.json, "
                           f"{'absent' if key not in new else _short(new[key])} now")
            elif old[key] != new[key]:
                out.extend(_differences(old[key], new[key], path, limit - len(out)))
            if len(out) >= limit:
                break
        return out[:limit]
    if old == new:
        return []
    return [f"{where + ': ' if where else ''}{_short(old)} in run.json, {_short(new)} now"]


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _resume_problems(plan: Plan, info: dict[str, Any], finished: list[str]) -> list[str]:
    """Why the run in the folder is not this run: resuming it would mix two different experiments."""
    problems = []
    if info.get("mode", "sim") != "sim":
        problems.append(f"run.json is a {info.get('mode')!r} run, not a `python -m sim` one")
    diffs = _differences(info.get("scenario"), _jsonable(plan.loaded.resolved()))
    if diffs:
        problems.append("the scenario differs: " + "; ".join(diffs))
    if info.get("seed") != plan.seed:
        problems.append(f"the seed differs: {_short(info.get('seed'))} in run.json, {plan.seed} now")
    old_names = name_list(info.get("controllers"))
    if set(old_names) != set(plan.controllers):
        problems.append(f"the controllers differ: {', '.join(old_names) or 'none'} in run.json, "
                        f"{', '.join(plan.controllers)} now")
    old_params = info.get("controller_params") if isinstance(info.get("controller_params"), dict) else {}
    for name in finished:
        diffs = _differences(old_params.get(name), _jsonable(plan.controllers.get(name, {})), name)
        if diffs:
            problems.append("the parameters of finished controller " + name + " differ: " + "; ".join(diffs))
    return problems


def _previous_run(plan: Plan, resume: bool) -> list[str]:
    """The controllers already finished in ``plan.out`` that this run keeps (only with ``resume``).

    Without ``resume`` the folder is overwritten as before; a run there that did not complete is
    mentioned, with the flag that would have continued it. With ``resume`` and no run.json there is
    nothing to continue: every controller runs (so ``--resume`` can always be given, say by a script
    that reruns until done). A run.json of another experiment is a :class:`BadInput` naming the
    differences.
    """
    path = plan.out / "run.json"
    if not path.exists():
        if resume:
            _note(f"--resume: no run.json in {plan.out}: nothing to resume, running every controller")
        return []
    info = read_run_json(plan.out)
    if info is None:
        if resume:
            raise BadInput("--resume", f"{path}: not a readable JSON object, so there is no run to resume "
                           "(remove the folder, or run without --resume to overwrite it)")
        return []
    status = info.get("status", COMPLETE)
    listed = info.get("finished")
    if listed is None:  # a run.json from before `finished`: it was written by a run that completed
        listed = info.get("controllers") if status == COMPLETE else []
    finished = name_list(listed)
    if not resume:
        if status != COMPLETE:
            _note(f"{plan.out} held an unfinished run (status {status}; finished: {', '.join(finished) or 'none'}); "
                  "starting it over (--resume would have continued it)")
        return []
    problems = _resume_problems(plan, info, [n for n in finished if n in plan.controllers])
    if problems:
        raise BadInput.many([("--resume", f"{path} is another run: {p}") for p in problems])
    kept = [n for n in plan.controllers if n in finished and (plan.out / n / "streams.csv").is_file()]
    gone = [n for n in plan.controllers if n in finished and n not in kept]
    if gone:
        _note(f"--resume: {', '.join(gone)} finished but {'their folders are' if len(gone) > 1 else 'its folder is'} "
              "gone: running again")
    if info.get("git_rev") not in (None, "unknown", git_rev()):
        _note(f"--resume: the finished controllers ran at git {info.get('git_rev')}, this is {git_rev()}")
    return kept


def _run_one(plan: Plan, name: str, requests: list[Request], report: Any = None) -> RunStats:
    """One controller's run; ``report(name, sim_now)`` (a queue's put in workers) feeds the bar.

    Returns once every file of the run is closed and on disk (the caller then calls it finished)."""
    progress = None if report is None else (lambda now: report((name, now)))
    stats = run_controller(plan.scenario_for(name), requests, plan.controller_of(name), plan.controllers[name],
                           plan.out / name, plan.seed, progress)
    fsync_files(plan.out / name)
    if report is not None:
        report((name, None))
    return stats


def _worker_init(parent_pid: int) -> None:
    """In each pool worker: leave Ctrl-C and SIGTERM to the parent, which stops the workers itself
    (a worker forked from it would otherwise inherit its SIGTERM handler), and die with the parent
    (a SIGKILLed ``python -m sim`` must not leave simulations running)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Stop the workers now (no waiting for their simulations to end), then the pool."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.terminate()
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.join(2.0)
            if proc.is_alive():
                proc.kill()
                proc.join(2.0)
    pool.shutdown(wait=True, cancel_futures=True)


def run_plan(plan: Plan, jobs: int = 1, show_progress: bool = True,
             resume: bool = False) -> tuple[dict[str, Any], list[RunStats]]:
    """Run each controller, write run.json and summary.json; returns (summary, stats of the runs made).

    run.json says ``running`` from the start and lists each controller in ``finished`` as its files
    are closed; Ctrl-C or SIGTERM (or an error) makes it ``interrupted`` and re-raises; it says
    ``complete`` once summary.json is written. ``resume``: keep the controllers a previous run of the
    same scenario, seed and controllers finished in ``plan.out`` and run only the others (their
    unfinished folders are deleted first); see :func:`_previous_run`.
    """
    plan.out.mkdir(parents=True, exist_ok=True)
    names = list(plan.controllers)
    kept = _previous_run(plan, resume)
    to_run = [n for n in names if n not in kept]
    if resume:  # an unfinished folder's files stop where that run stopped (without it: overwritten, as ever)
        for name in to_run:
            if (plan.out / name).is_dir():
                shutil.rmtree(plan.out / name)
    (plan.out / "summary.json").unlink(missing_ok=True)  # written again at the end, never left stale
    write_run_json(plan.out, run_info(plan, RUNNING, kept), started=started_at(plan.out, keep=resume))
    if resume and kept:
        _note(f"--resume: {', '.join(kept)} finished already; "
              + (f"running {', '.join(to_run)}" if to_run else "nothing left to run, rewriting summary.json"))
    finished = list(kept)
    stats: dict[str, RunStats] = {}

    def done(name: str, result: RunStats) -> None:
        stats[name] = result
        finished.append(name)
        update_run_json(plan.out, {"finished": in_order(names, finished)})

    with sigterm_as_ctrl_c():
        try:
            if to_run:
                _run_all(plan, to_run, jobs, show_progress, done)
        except BaseException:
            update_run_json(plan.out, {"status": INTERRUPTED, "finished": in_order(names, finished)})
            raise
    summary = summarize_run(plan.out)
    update_run_json(plan.out, {"status": COMPLETE, "finished": in_order(names, finished)})
    return summary, [stats[n] for n in to_run]


def _run_all(plan: Plan, names: list[str], jobs: int, show_progress: bool, done: Any) -> None:
    """Run ``names``, calling ``done(name, stats)`` as each one's files are complete."""
    requests = draw_requests(plan.loaded.scenario, plan.loaded.base_dir, plan.seed)
    horizon = max((r.arrival_s for r in requests), default=1.0)
    from sim.progress import RunProgress

    parallel = jobs > 1 and len(names) > 1
    with RunProgress(names, horizon, enabled=show_progress, cross_process=parallel) as bar:
        if not parallel:
            for name in names:
                done(name, _run_one(plan, name, requests, bar.report))
            return
        pool = ProcessPoolExecutor(max_workers=min(jobs, len(names)), initializer=_worker_init,
                                   initargs=(os.getpid(),))
        try:
            futures: dict[Future[RunStats], str] = {
                pool.submit(_run_one, plan, name, requests, bar.report): name for name in names}
            pending = set(futures)
            while pending:
                if show_progress:
                    bar.drain(timeout_s=0.2)
                finished_now, pending = wait(pending, timeout=0 if show_progress else 0.5,
                                             return_when=FIRST_COMPLETED)
                for f in sorted(finished_now, key=lambda f: names.index(futures[f])):
                    done(futures[f], f.result())
            bar.drain()
        except BaseException:
            _stop_pool(pool)
            raise
        pool.shutdown(wait=True)


def default_jobs() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
