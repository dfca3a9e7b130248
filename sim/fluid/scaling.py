"""The fluid limit: a scenario scaled by k, run by both engines.

``scale(loaded, k)``: arrival rates, ``workload.streams``, KV memory, ``max_running``, the batch budget
and every path's capacity (rates, schedules, cross-traffic flows and queue sizes) times k, and the
per-token step cost ``d1_s`` divided by k, so that a step over k times the batch takes as long as
before: every stream sees the same node and the same share of its path at every k, and only the
number of streams grows. As k grows the discrete simulator's averages should approach the fluid
engine's (law of large numbers over streams). ``compare(loaded, k)`` runs both and returns, for each,
the throughput (tokens generated per second while the arrivals last: up to the last arrival of the
discrete run, up to the end of the fluid's arrival rate), mean KV use over the same window (per
replica), mean TTFT, and ``effective_tps`` (tokens displayed over the run time: its denominator, the
latest end of any stream, is an extreme value -- one long answer read slowly sets it -- and need not
converge).
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from analysis.metrics import stream_metrics, summarize_controller
from analysis.results import load_controller_dir, read_csv
from scenarios import LoadedScenario
from scenarios.loader import parse_scenario
from sim.capacity_search import _scale as scale_rates
from sim.fluid.engine import simulate
from sim.model.workload import draw_requests
from sim.world import run_controller


def scale(loaded: LoadedScenario, k: float) -> LoadedScenario:
    """``loaded`` scaled by ``k`` (see the module text); validated as a scenario file."""
    raw = copy.deepcopy(loaded.raw)
    w = raw["workload"] = dict(raw["workload"])
    w["arrivals"] = scale_rates(w["arrivals"], k)
    w["streams"] = round(w["streams"] * k)
    srv = raw["server"] = dict(raw.get("server") or {})
    base = loaded.scenario.server
    srv["kv_tokens"] = round(base.kv_tokens * k)
    srv["batch_tokens"] = round(base.batch_tokens * k)
    srv["d1_s"] = base.d1_s / k
    if base.max_running is not None:
        srv["max_running"] = round(base.max_running * k)
    paths = raw["paths"] = {name: dict(p) for name, p in raw["paths"].items()}
    for name, p in paths.items():
        spec = loaded.scenario.paths[name]
        if spec.trace is not None:
            raise ValueError(f"path {name!r}: a trace cannot be scaled (its opportunities are fixed)")
        if spec.rate_mbps is not None:
            p["rate_mbps"] = spec.rate_mbps * k
        if spec.rate_schedule is not None:
            p["rate_schedule"] = [{"at_s": x.at_s, "rate_mbps": x.rate_mbps * k} for x in spec.rate_schedule]
        if spec.queue_bytes is not None:
            p["queue_bytes"] = int(spec.queue_bytes * k)
        if spec.cross_traffic is not None:
            p["cross_traffic"] = {**spec.cross_traffic.model_dump(), "flows": round(spec.cross_traffic.flows * k)}
    raw["faults"] = [{**f, "rate_mbps": f["rate_mbps"] * k} if f.get("rate_mbps") is not None else f
                     for f in raw.get("faults") or []]
    return LoadedScenario(parse_scenario(raw, loaded.path), loaded.path, raw)


def discrete_kv_mean(server: Any, run_time_s: float) -> float:
    """Time-mean of KV in use over [0, run time] from server.csv (each step's value holds to the next)."""
    t, kv = np.asarray(server["time"]), np.asarray(server["gpu_memory_used"])
    edges = np.clip(np.append(t, run_time_s), 0.0, run_time_s)
    return float(np.sum(kv * np.diff(edges)) / run_time_s)


def compare(loaded: LoadedScenario, k: float, controller: str = "unpaced", seed: int | None = None) -> dict[str, Any]:
    """Both engines on ``scale(loaded, k)``: {"discrete": {...}, "fluid": {...}} with ``effective_tps``,
    ``ttft_mean_s`` and ``kv_mean_tokens``."""
    scaled = scale(loaded, k)
    scn = scaled.scenario
    seed = scn.seed if seed is None else seed
    params = scn.controllers.get(controller, {})
    requests = draw_requests(scn, scaled.base_dir, seed)
    with tempfile.TemporaryDirectory(prefix="fl-limit-") as tmp:
        folder = Path(tmp) / controller
        run_controller(scaled, requests, controller, params, folder, seed)
        summary = summarize_controller(folder, scn.slo.qoe, scn.server.replicas)
        ctrl = load_controller_dir(folder)
        ttft = stream_metrics(ctrl).ttft_s
        made = read_csv(folder / "tokens.csv")["t_generated"]
        last = max(r.arrival_s for r in requests)  # the discrete run's arrivals end here
        discrete = {"throughput_tps": float(np.count_nonzero(made <= last)) / last,
                    "effective_tps": summary["effective_tps"], "ttft_mean_s": float(np.nanmean(ttft)),
                    "kv_mean_tokens": discrete_kv_mean(read_csv(folder / "server.csv"), last)}
    run = simulate(scaled, controller, params, seed)
    window = run.arrivals.end_s
    upto = run.t <= window
    kv = np.array([run.node_at(i)["kv"] for i in np.flatnonzero(upto)])
    generated = [run.acc("generated", i) for i in range(len(run.t))]
    fluid = {"throughput_tps": float(np.interp(window, run.t, generated)) / window,
             "effective_tps": run.summary["effective_tps"], "ttft_mean_s": run.summary["ttft_mean_s"],
             "kv_mean_tokens": float(np.trapezoid(kv, run.t[upto]) / window)}
    return {"discrete": discrete, "fluid": fluid}
