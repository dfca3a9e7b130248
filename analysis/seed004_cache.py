"""Seed 004's cache_experiments CSV from a prefix-cache sweep folder (``sweeps/prefix-cache.yaml``).

Seed 004 (InferTuner, ``results/cache_experiments/cache_experiments_*.csv``) writes one row per cache
sizing strategy::

    strategy,total_requests,cache_hits,hit_rate_percent,avg_latency_ms,strategy_config
    STATIC,80,55,68.7,1067.6,固定大小=5

Here a row is one value of the sweep's ``server.prefix_cache`` key (``NONE`` is the no-cache baseline)
for one controller, pooled over the sweep's seeds: ``total_requests`` and ``cache_hits`` are summed over
the seeds (a request counts once it was admitted and looked its prefix up: the node's ``cache_hit`` and
``cache_miss`` events; without a cache, the admitted requests), ``hit_rate_percent`` is their ratio and
``avg_latency_ms`` the mean arrival-to-completion time of the completed requests (request_traces.csv's
``total_delay``). ``strategy_config`` is the strategy's parameters as run, ``;``-separated (seed 004's
has bare commas, which break its CSV).

:func:`cache_stats` gives the same figures per seed, their mean with a 95% Student-t interval over
seeds, and each strategy's difference from the others paired by seed (the runs of one seed share
their requests: common random numbers), which is how the strategies are ranked.

Reads files only (run.json, events.csv, request_traces.csv); analysis never imports sim.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from analysis.results import read_json
from analysis.sweep import t_interval

__all__ = ["CACHE_EXPERIMENTS_COLUMNS", "cache_rows", "cache_stats", "main", "strategy_config",
           "write_cache_experiments"]

CACHE_EXPERIMENTS_COLUMNS = ("strategy", "total_requests", "cache_hits", "hit_rate_percent", "avg_latency_ms",
                             "strategy_config")
CACHE_KEY = "server.prefix_cache"


def strategy_config(cache: Mapping[str, Any] | None) -> str:
    """Seed 004's ``strategy_config`` text for a resolved ``server.prefix_cache`` (None: no cache)."""
    if not cache:
        return "no cache"
    s = cache["strategy"]
    if s == "static":
        return f"size={cache['size']}"
    bounds = f"range={cache['min_size']}-{cache['max_size']};every={cache['adjust_every']} lookups"
    if s == "fluid":
        return (f"initial={cache['size']};window={cache['window_s'] * 1000:g}ms;grow>{cache['grow_above']:g}x"
                f" x{cache['grow_factor']:g};shrink<{cache['shrink_below']:g}x /{cache['shrink_factor']:g};{bounds}")
    return (f"initial={cache['size']};target_hit_rate={cache['target_hit_rate']:g};buckets={cache['buckets']};"
            f"{bounds}")


def _run_figures(ctrl_dir: Path) -> dict[str, Any]:
    """One controller's run: lookups, hits, admitted requests, completed requests' latencies (s), and the
    streams' TTFT on screen (s, those that showed a token) and QoE (streams.csv)."""
    lookups = hits = admitted = 0
    with (ctrl_dir / "events.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            kind = row["event_type"]
            if kind == "cache_hit":
                hits += 1
                lookups += 1
            elif kind == "cache_miss":
                lookups += 1
            elif kind == "admit":
                admitted += 1
    latencies = []
    with (ctrl_dir / "request_traces.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            if row["total_delay"] not in ("", "nan", "None"):
                latencies.append(float(row["total_delay"]))
    ttfts, qoes = [], []
    with (ctrl_dir / "streams.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            qoes.append(float(row["qoe"]))
            if row["ttft_s"] not in ("", "nan", "None"):
                ttfts.append(float(row["ttft_s"]))
    return {"lookups": lookups, "hits": hits, "admitted": admitted, "latencies": latencies, "ttfts": ttfts,
            "qoes": qoes}


def _sweep_runs(sweep_dir: Path, controller: str | None) -> tuple[str, list[dict[str, Any]]]:
    """(controller, one record per cell and seed: strategy, config, seed and the run's figures)."""
    info = read_json(sweep_dir / "run.json")
    if CACHE_KEY not in info.get("grid", {}):
        raise ValueError(f"{sweep_dir}: not a prefix-cache sweep (its grid has no {CACHE_KEY})")
    controllers = info["controllers"]
    if controller is None:
        controller = "unpaced" if "unpaced" in controllers else controllers[0]
    elif controller not in controllers:
        raise ValueError(f"{sweep_dir}: no controller {controller!r} (controllers: {', '.join(controllers)})")
    out = []
    for cell in info["cells"]:
        for seed in info["seeds"]:
            run_dir = sweep_dir / "cells" / cell["id"] / f"seed-{seed}"
            if not (run_dir / controller / "events.csv").exists():
                continue  # not run yet (an interrupted sweep): left out
            cache = read_json(run_dir / "run.json")["scenario"]["server"].get("prefix_cache")
            out.append({"strategy": (cache or {}).get("strategy", "none").upper(), "config": strategy_config(cache),
                        "seed": seed, "cached": cache is not None, **_run_figures(run_dir / controller)})
    return controller, out


def cache_rows(sweep_dir: Path | str, controller: str | None = None) -> list[dict[str, Any]]:
    """Seed 004's rows (see the module text), in the sweep's grid order."""
    _, runs = _sweep_runs(Path(sweep_dir), controller)
    rows: dict[str, dict[str, Any]] = {}
    for r in runs:
        row = rows.setdefault(r["strategy"], {"strategy": r["strategy"], "total_requests": 0, "cache_hits": 0,
                                              "latencies": [], "strategy_config": r["config"]})
        row["total_requests"] += r["lookups"] if r["cached"] else r["admitted"]
        row["cache_hits"] += r["hits"]
        row["latencies"] += r["latencies"]
    out = []
    for row in rows.values():
        lat = row.pop("latencies")
        total = row["total_requests"]
        row["hit_rate_percent"] = round(100.0 * row["cache_hits"] / total, 1) if total else None
        row["avg_latency_ms"] = round(1000.0 * math.fsum(lat) / len(lat), 1) if lat else None
        out.append({k: row[k] for k in CACHE_EXPERIMENTS_COLUMNS})
    return out


def write_cache_experiments(sweep_dir: Path | str, out_csv: Path | str, controller: str | None = None) -> Path:
    """Write seed 004's ``cache_experiments`` CSV for a prefix-cache sweep folder; returns its path.
    ``controller``: whose runs (default ``unpaced`` if the sweep ran it, else its first controller)."""
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(CACHE_EXPERIMENTS_COLUMNS)
        for row in cache_rows(sweep_dir, controller):
            w.writerow(["" if row[k] is None else row[k] for k in CACHE_EXPERIMENTS_COLUMNS])
    return out_csv


def _paired(a: Mapping[int, float], b: Mapping[int, float]) -> dict[str, Any]:
    return t_interval([a[s] - b[s] for s in sorted(a) if s in b])


def cache_stats(sweep_dir: Path | str, controller: str | None = None) -> dict[str, Any]:
    """Per strategy: hit rate (%), mean latency (ms), mean TTFT on screen (ms) and mean QoE per seed, with
    their mean and 95% Student-t interval over seeds; and for every pair of strategies the difference
    paired by seed."""
    controller, runs = _sweep_runs(Path(sweep_dir), controller)
    per: dict[str, dict[str, dict[int, float]]] = {}
    for r in runs:
        d = per.setdefault(r["strategy"], {"hit_rate_percent": {}, "avg_latency_ms": {}, "ttft_ms": {},
                                           "qoe_mean": {}})
        total = r["lookups"] if r["cached"] else r["admitted"]
        d["hit_rate_percent"][r["seed"]] = 100.0 * r["hits"] / total if total else 0.0
        if r["latencies"]:
            d["avg_latency_ms"][r["seed"]] = 1000.0 * float(np.mean(r["latencies"]))
        if r["ttfts"]:
            d["ttft_ms"][r["seed"]] = 1000.0 * float(np.mean(r["ttfts"]))
        if r["qoes"]:
            d["qoe_mean"][r["seed"]] = float(np.mean(r["qoes"]))
    names = list(per)
    return {
        "controller": controller,
        "strategies": {s: {m: {"per_seed": v, **t_interval(list(v.values()))} for m, v in per[s].items()}
                       for s in names},
        "differences": {f"{a}-{b}": {m: _paired(per[a][m], per[b][m]) for m in per[a]}
                        for a in names for b in names if a != b},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m analysis.seed004_cache SWEEP_DIR OUT.csv [CONTROLLER]``: write the CSV, print the CIs."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (2, 3):
        print("usage: python -m analysis.seed004_cache SWEEP_DIR OUT.csv [CONTROLLER]", file=sys.stderr)
        return 2
    controller = args[2] if len(args) == 3 else None
    print(write_cache_experiments(args[0], args[1], controller).read_text(encoding="utf-8"), end="")
    stats = cache_stats(args[0], controller)
    print(f"controller {stats['controller']}: mean over seeds [95% CI]")
    for s, ms in stats["strategies"].items():
        print(f"  {s:10s}" + "  ".join(f"{m} {_f(v['mean'])} [{_f(v['ci_low'])}, {_f(v['ci_high'])}]"
                                      for m, v in ms.items()))
    for pair, ms in stats["differences"].items():
        print(f"  {pair:21s}" + "  ".join(f"{m} {_f(v['mean'])} [{_f(v['ci_low'])}, {_f(v['ci_high'])}]"
                                         for m, v in ms.items()))
    return 0


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
