"""Seed 004's (InferTuner) result CSVs from a sweep folder: GPU scaling and the batch trade-off.

``python -m analysis sweep-export DIR --format gpu_scaling|batch_analysis`` reads a folder that
``python -m sim sweep`` wrote (``sweeps/gpu-scaling.yaml``, ``sweeps/batch-tradeoff.yaml``) and writes
``DIR/<format>.csv`` with seed 004's columns, one row per value of the swept key, each figure the mean
over the sweep's seeds of one controller's runs (``--controller``, default the sweep's first).

What is measured, per run (one cell, one seed, that controller), from its files only:

* The **requests** are the rows of ``streams.csv`` (every request the workload drew); a request *reached
  the server* when it has a row in ``request_traces.csv`` and *completed* when its ``completion_time``
  (the node made its last token) is set there.
* **execution time** = the last ``completion_time`` minus the first ``arrival_time`` (arrival at the
  server, i.e. the handshake's last ACK) in ``request_traces.csv``: the server's makespan, in seconds.
  Seed 004 times its Flink job from the first request to the last response the same way.
* **throughput** = completed requests / execution time (requests per second).

GPU scaling (``--format gpu_scaling``; the swept key is ``server.replicas``):

* ``parallelism``: ``server.replicas`` of the cell (read from the cell run's run.json).
* ``total_throughput``: throughput, requests per second over all replicas.
* ``scale_factor``: ``total_throughput`` / ``total_throughput`` of the cell with ``parallelism`` 1 (the
  smallest parallelism swept when 1 is not).
* ``gpu_distribution``: ``GPU0:n0;GPU1:n1;...``, n_i the requests replica i completed (the last
  ``completed_count`` of its rows in ``replicas.csv``; ``server.csv`` for one replica), averaged over
  seeds and rounded half up to an integer.
* ``execution_time``: execution time, seconds.

Batch trade-off (``--format batch_analysis``; the swept key is ``server.max_running``, else
``server.batch_tokens``, the node's batch limit in streams or in tokens per step):

* ``batch_size``: the swept key's value in the cell.
* ``avg_wait_ms``: mean over requests that started of ``waiting_time`` (arrival at the server to first
  entering the batch: queueing for a batch slot or memory), milliseconds.
* ``avg_latency_ms``: mean over completed requests of ``total_delay`` (arrival at the server to the last
  token made), milliseconds.
* ``throughput_req_per_sec``: throughput.
* ``total_requests``: requests (rows of ``streams.csv``).
* ``efficiency_notes``: ``baseline`` for the smallest batch limit; for the others the throughput,
  latency and wait against that baseline (``throughput x1.80; latency x1.05; wait +120 ms``).

Other grid keys must take one value, or be pinned with ``--where KEY=VALUE``. Seed 004's CSVs carry no
seed spread; :func:`export` also returns each figure's 95% Student-t interval over seeds
(:func:`analysis.sweep.t_interval`), which the command prints.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from analysis.results import REPLICAS_COLUMNS, REPLICAS_CSV, ResultsFormatError, read_csv, read_json
from analysis.sweep import SWEEP_MODE, t_interval, value_text

__all__ = [
    "BATCH_ANALYSIS_COLUMNS",
    "BATCH_KEYS",
    "EXPORT_FORMATS",
    "FORMATS",
    "GPU_SCALING_COLUMNS",
    "REPLICAS_KEY",
    "Export",
    "RunFigures",
    "export",
    "export_problem",
    "run_figures",
    "write_export",
]

GPU_SCALING_COLUMNS = ("parallelism", "total_throughput", "scale_factor", "gpu_distribution", "execution_time")
BATCH_ANALYSIS_COLUMNS = ("batch_size", "avg_wait_ms", "avg_latency_ms", "throughput_req_per_sec",
                          "total_requests", "efficiency_notes")
REPLICAS_KEY = "server.replicas"
BATCH_KEYS = ("server.max_running", "server.batch_tokens")
_TRACE_COLUMNS = ("arrival_time", "completion_time", "waiting_time", "total_delay")


@dataclass(frozen=True)
class RunFigures:
    """One run's figures (see the module text)."""

    requests: int
    completed: int
    execution_time_s: float | None
    throughput_rps: float | None
    avg_wait_ms: float | None
    avg_latency_ms: float | None
    per_replica_completed: tuple[int, ...]


def _mean(x: np.ndarray) -> float | None:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else None


def run_figures(controller_dir: Path, replicas: int) -> RunFigures:
    """The figures of one controller's folder of one run with ``replicas`` replicas."""
    streams = read_csv(controller_dir / "streams.csv", ("stream_id",))
    traces = read_csv(controller_dir / "request_traces.csv", _TRACE_COLUMNS)
    done = traces["completion_time"]
    done = done[~np.isnan(done)]
    arrivals = traces["arrival_time"]
    span = float(done.max() - np.nanmin(arrivals)) if done.size and len(arrivals) else None
    per_replica = [0] * replicas
    if replicas == 1:
        server_path = controller_dir / "server.csv"
        if server_path.exists():
            server = read_csv(server_path, ("completed_count",))
            per_replica[0] = int(np.nanmax(server["completed_count"])) if len(server) else 0
        else:
            per_replica[0] = int(done.size)
    else:
        steps = read_csv(controller_dir / REPLICAS_CSV, REPLICAS_COLUMNS)
        rep = steps["replica"]
        for i in range(replicas):
            mine = steps["completed_count"][rep == i]
            per_replica[i] = int(np.nanmax(mine)) if mine.size else 0
    return RunFigures(
        requests=len(streams),
        completed=int(done.size),
        execution_time_s=span,
        throughput_rps=done.size / span if span else None,
        avg_wait_ms=None if (w := _mean(traces["waiting_time"])) is None else w * 1000,
        avg_latency_ms=None if (d := _mean(traces["total_delay"])) is None else d * 1000,
        per_replica_completed=tuple(per_replica),
    )


@dataclass
class Export:
    """What :func:`export` made: the CSV text, its rows, and per row each figure's interval over seeds."""

    format: str
    controller: str
    key: str
    text: str
    rows: list[dict[str, Any]]
    intervals: list[dict[str, dict[str, Any]]] = field(default_factory=list)


# --------------------------------------------------------------------------- reading the sweep
def _sweep(folder: Path) -> dict[str, Any]:
    path = folder / "run.json"
    info = read_json(path)
    if info.get("mode") != SWEEP_MODE:
        raise ResultsFormatError(path, f"a {info.get('mode')!r} run, not a sweep (python -m sim sweep writes one)",
                                 key="mode")
    for key, kind in (("grid", dict), ("cells", list), ("seeds", list), ("controllers", list)):
        if not isinstance(info.get(key), kind):
            raise ResultsFormatError(path, f"expected {'a mapping' if kind is dict else 'a list'}", key=key)
    for i, cell in enumerate(info["cells"]):
        if not (isinstance(cell, dict) and isinstance(cell.get("id"), str) and isinstance(cell.get("values"), dict)):
            raise ResultsFormatError(path, "expected {id, values}", key=f"cells[{i}]")
    return info


def _replicas_of(run_dir: Path) -> int:
    info = read_json(run_dir / "run.json")
    scenario = info.get("scenario")
    server = scenario.get("server") if isinstance(scenario, dict) else None
    n = server.get("replicas", 1) if isinstance(server, dict) else 1
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ResultsFormatError(run_dir / "run.json", f"not a replica count: {n!r}", key="scenario.server.replicas")
    return n


def _pick_cells(info: Mapping[str, Any], key: str, where: Mapping[str, str], folder: Path) -> list[dict[str, Any]]:
    grid: dict[str, list[Any]] = info["grid"]
    for k, v in where.items():
        if k not in grid:
            raise ResultsFormatError(folder / "run.json", f"--where {k}: not a grid key (grid: {', '.join(grid)})")
        if v not in [value_text(x) for x in grid[k]]:
            raise ResultsFormatError(folder / "run.json", f"--where {k}={v}: not one of its values "
                                     f"({', '.join(value_text(x) for x in grid[k])})")
    loose = [k for k, vals in grid.items() if k != key and k not in where and len(vals) > 1]
    if loose:
        raise ResultsFormatError(folder / "run.json", f"grid key {loose[0]} takes {len(grid[loose[0]])} values: "
                                 f"pin it with --where {loose[0]}=VALUE")
    return [c for c in info["cells"] if all(value_text(c["values"].get(k)) == v for k, v in where.items())]


def _stat(values: Sequence[float | int | None]) -> dict[str, Any]:
    return t_interval(list(values))


def _fmt(x: float | None, digits: int) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _csv_text(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([r[c] for c in columns])
    return buf.getvalue()


def _per_seed(folder: Path, info: Mapping[str, Any], cell: Mapping[str, Any], controller: str
              ) -> tuple[int, list[RunFigures]]:
    out, replicas = [], 1
    for seed in info["seeds"]:
        run_dir = folder / "cells" / cell["id"] / f"seed-{seed}"
        if not (run_dir / controller).is_dir():
            continue  # not finished (an interrupted sweep): left out, as sweep.json leaves it out
        replicas = _replicas_of(run_dir)
        out.append(run_figures(run_dir / controller, replicas))
    return replicas, out


# --------------------------------------------------------------------------- the two formats
def _gpu_scaling(folder: Path, info: Mapping[str, Any], cells: Sequence[Mapping[str, Any]], controller: str
                 ) -> tuple[list[dict[str, Any]], list[dict[str, dict[str, Any]]]]:
    found = []
    for cell in cells:
        n, figs = _per_seed(folder, info, cell, controller)
        if figs:
            found.append((n, figs))
    found.sort(key=lambda nf: nf[0])
    if not found:
        return [], []
    base = _stat([f.throughput_rps for f in found[0][1]])["mean"]
    rows, intervals = [], []
    for n, figs in found:
        thr = _stat([f.throughput_rps for f in figs])
        span = _stat([f.execution_time_s for f in figs])
        per = [sum(f.per_replica_completed[i] for f in figs) / len(figs) for i in range(n)]
        scale = thr["mean"] / base if thr["mean"] is not None and base else None
        rows.append({
            "parallelism": n,
            "total_throughput": _fmt(thr["mean"], 2),
            "scale_factor": _fmt(scale, 2),
            "gpu_distribution": ";".join(f"GPU{i}:{math.floor(c + 0.5)}" for i, c in enumerate(per)),
            "execution_time": _fmt(span["mean"], 1),
        })
        intervals.append({"total_throughput": thr, "execution_time": span,
                          "scale_factor": _stat([f.throughput_rps / base if f.throughput_rps and base else None
                                                 for f in figs])})
    return rows, intervals


def _note(r: Mapping[str, Any], b: Mapping[str, Any], base_size: Any) -> str:
    parts = []
    if r["thr"] and b["thr"]:
        parts.append(f"throughput x{r['thr'] / b['thr']:.2f}")
    if r["lat"] and b["lat"]:
        parts.append(f"latency x{r['lat'] / b['lat']:.2f}")
    if r["wait"] is not None and b["wait"] is not None:
        parts.append(f"wait {r['wait'] - b['wait']:+.0f} ms")
    return "; ".join(parts) + f" vs batch_size {base_size}" if parts else "no completed requests"


def _batch_analysis(folder: Path, info: Mapping[str, Any], cells: Sequence[Mapping[str, Any]], controller: str,
                    key: str) -> tuple[list[dict[str, Any]], list[dict[str, dict[str, Any]]]]:
    found = []
    for cell in cells:
        _, figs = _per_seed(folder, info, cell, controller)
        if figs:
            found.append((cell["values"][key], figs))
    numeric = all(isinstance(v, int | float) for v, _ in found)
    found.sort(key=lambda vf: vf[0] if numeric else value_text(vf[0]))
    means, intervals = [], []
    for value, figs in found:
        st = {"throughput_req_per_sec": _stat([f.throughput_rps for f in figs]),
              "avg_wait_ms": _stat([f.avg_wait_ms for f in figs]),
              "avg_latency_ms": _stat([f.avg_latency_ms for f in figs]),
              "total_requests": _stat([f.requests for f in figs])}
        intervals.append(st)
        means.append({"value": value, "thr": st["throughput_req_per_sec"]["mean"], "wait": st["avg_wait_ms"]["mean"],
                      "lat": st["avg_latency_ms"]["mean"], "n": st["total_requests"]["mean"]})
    rows = []
    for i, m in enumerate(means):
        rows.append({
            "batch_size": value_text(m["value"]),
            "avg_wait_ms": _fmt(m["wait"], 1),
            "avg_latency_ms": _fmt(m["lat"], 1),
            "throughput_req_per_sec": _fmt(m["thr"], 2),
            "total_requests": "" if m["n"] is None else f"{math.floor(m['n'] + 0.5)}",
            "efficiency_notes": "baseline" if i == 0 else _note(m, means[0], value_text(means[0]["value"])),
        })
    return rows, intervals


def _scaling_key(grid: Mapping[str, Any], folder: Path) -> str:
    return REPLICAS_KEY


def _batch_key(grid: Mapping[str, Any], folder: Path) -> str:
    for k in BATCH_KEYS:
        if k in grid and len(grid[k]) > 1:
            return k
    raise ResultsFormatError(folder / "run.json", f"the grid sweeps none of {', '.join(BATCH_KEYS)} "
                             "(the batch limit)", key="grid")


#: format -> (its columns, the swept key from the grid).
FORMATS: dict[str, tuple[tuple[str, ...], Callable[[Mapping[str, Any], Path], str]]] = {
    "gpu_scaling": (GPU_SCALING_COLUMNS, _scaling_key),
    "batch_analysis": (BATCH_ANALYSIS_COLUMNS, _batch_key),
}


def export(folder: Path | str, fmt: str, controller: str | None = None, where: Mapping[str, str] | None = None
           ) -> Export:
    """Seed 004's CSV ``fmt`` (a key of :data:`FORMATS`) of the sweep in ``folder`` (nothing written)."""
    folder = Path(folder)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    info = _sweep(folder)
    ctrl = controller if controller is not None else (info["controllers"] or [None])[0]
    if ctrl not in info["controllers"]:
        raise ResultsFormatError(folder / "run.json", f"no controller {ctrl!r} in this sweep "
                                 f"(controllers: {', '.join(map(str, info['controllers']))})", key="controllers")
    columns, key_of = FORMATS[fmt]
    key = key_of(info["grid"], folder)
    cells = _pick_cells(info, key, dict(where or {}), folder)
    if fmt == "gpu_scaling":
        rows, intervals = _gpu_scaling(folder, info, cells, ctrl)
    else:
        rows, intervals = _batch_analysis(folder, info, cells, ctrl, key)
    return Export(fmt, ctrl, key, _csv_text(columns, rows), rows, intervals)


#: every CSV ``python -m analysis sweep-export`` and a sweep file's ``export`` key write, and the grid
#: key each needs swept (any one of them).
EXPORT_FORMATS: dict[str, tuple[str, ...]] = {
    "gpu_scaling": (REPLICAS_KEY,),
    "batch_analysis": BATCH_KEYS,
    "cache_experiments": ("server.prefix_cache",),
}


def export_problem(fmt: str, grid: Mapping[str, Any]) -> str | None:
    """Why a sweep over ``grid`` cannot give seed 004's CSV ``fmt`` (None when it can)."""
    if fmt not in EXPORT_FORMATS:
        return f"unknown format {fmt!r}; known: {', '.join(EXPORT_FORMATS)}"
    keys = EXPORT_FORMATS[fmt]
    if not any(k in grid and len(grid[k]) > 1 for k in keys):
        return f"{fmt} needs the grid to sweep {' or '.join(keys)} over two values or more"
    return None


def write_export(folder: Path | str, fmt: str, controller: str | None = None, out: Path | str | None = None,
                 where: Mapping[str, str] | None = None) -> tuple[Path, Export | None]:
    """Write seed 004's CSV ``fmt`` of the sweep in ``folder`` to ``out`` (default ``DIR/<fmt>.csv``);
    returns the file and, for gpu_scaling and batch_analysis, what :func:`export` made (its intervals)."""
    folder = Path(folder)
    path = Path(out) if out is not None else folder / f"{fmt}.csv"
    if fmt == "cache_experiments":
        from analysis.seed004_cache import write_cache_experiments

        return write_cache_experiments(folder, path, controller=controller), None
    result = export(folder, fmt, controller, where)
    if not result.rows:
        raise ResultsFormatError(folder / "run.json", f"no finished run of {result.controller} to export")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(result.text, encoding="utf-8")
    return path, result
