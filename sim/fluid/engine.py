"""Run the fluid model over a scenario and summarise it as a run of the discrete simulator is.

The inputs (``sim/fluid/inputs.py``) change at known instants: arrival phases, rate schedules, fault
windows, cross traffic starting or stopping, a trace's bins. Between two of them the right-hand side
(``sim/fluid/model.py``) is smooth in time and scipy's ``solve_ivp`` (RK45) integrates it; each
breakpoint starts a new ``solve_ivp`` call from the state reached, and a terminal event ends the run
once the arrivals are over and every request has been read. ``server.replicas`` N > 1 is one replica
with 1/N of the arrivals and of every path (round robin and least outstanding split a fluid evenly).

Summary (keys of DESIGN.md's summary.json): ``streams``, ``completed``, ``cancelled`` (still unread
at ``max_duration_s``), ``tokens_generated``, ``tokens_displayed``, ``tokens_wasted``, ``waste_frac``,
``run_time_s``, ``effective_tps``, ``gpu_busy_frac``, ``stall_ratio`` (readers' time at a starved
buffer over their reading time), ``peak_queued_bytes`` (the largest per-request backlog of a class);
and the fluid's own ``ttft_mean_s``, ``kv_mean_tokens`` (per replica, over the run time),
``kv_peak_tokens``, ``waiting_peak``; ``abandoned`` is the mass that left at its patience's hazard
(``sim/fluid/model.py``). Null: ``qoe_mean``, ``qoe_p10``,
``slo_attainment``, ``ttft_p50_s``, ``ttft_p99_s``, ``itl_p50_s``, ``itl_p99_s``, ``mean_rate_tps``
(per-stream distributions are not in a fluid).

Run time is the discrete run's "latest end of any stream": each request's end is its arrival + the
fluid's time to first token at that instant (FCFS waiting time from the cumulative arrival and
admission curves, the node's step, two round trips) + the longer of its generation and its reading
((o - 1) / pace, slowed by the fluid's stall share). Over the drawn requests (``inputs="requests"``)
it is their latest end; over the distribution, the time by which fewer than ln 2 requests are
expected to be unfinished (the median of the last end, for independent requests).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.integrate import solve_ivp

from analysis.results import LINKS_COLUMNS, SERVER_COLUMNS, CsvRecorder, write_json
from scenarios import LoadedScenario
from scenarios.schema import RequestCsv
from sim.fluid.inputs import (
    ArrivalRate,
    Classes,
    PathRates,
    patience_hazards,
    request_arrivals,
    request_classes,
    scenario_arrivals,
    scenario_classes,
    scenario_paths,
)
from sim.fluid.model import ACC, ACC_CLASS, STAGES, FluidModel
from sim.fluid.pacing import pacing_law
from sim.model.workload import Request, draw_requests

SAMPLE_S = 0.5  # the time series' resolution (server.csv, links.csv)
RUN_TIME_DRAWS = 20000  # requests drawn (arrival time and class sample) for the run time
DONE_BELOW = 0.01  # requests (per replica) still unread when the run may end (after the last arrival)
SCHEDULERS = ("fcfs",)
NULL_KEYS = ("qoe_mean", "qoe_p10", "slo_attainment", "ttft_p50_s", "ttft_p99_s", "itl_p50_s",
             "itl_p99_s", "mean_rate_tps")


def refusals(loaded: LoadedScenario, scheduler: str | None = None) -> list[tuple[str, str]]:
    """Why the fluid engine cannot run this scenario (on ``scheduler``), as (where, message) pairs."""
    scn, where = loaded.scenario, f"{loaded.path}: server"
    out = []
    name = scheduler or scn.server.scheduler.name
    if name not in SCHEDULERS:
        out.append((f"{where}.scheduler", f"scheduler {name!r} is not a fluid law (it ranks single streams by "
                    f"their QoE or buffer); the fluid engine runs {', '.join(SCHEDULERS)} (or use --engine discrete)"))
    if scn.server.prefix_cache is not None:
        out.append((f"{where}.prefix_cache", "a prefix cache's hits depend on which prefixes single requests "
                    "carry; the fluid engine runs without one (or use --engine discrete)"))
    if scn.server.router == "prefix_affinity":
        out.append((f"{where}.router", "prefix_affinity routes single requests by their prefix; the fluid engine "
                    "splits arrivals evenly (round_robin, least_outstanding) (or use --engine discrete)"))
    return out


@dataclass
class FluidRun:
    """One fluid run: the sampled trajectory and what was made of it."""

    model: FluidModel
    classes: Classes
    arrivals: ArrivalRate
    paths: list[PathRates]
    t: np.ndarray
    y: np.ndarray  # states at ``t`` (rows)
    replicas: int
    end_s: float
    wall_s: float
    rhs_calls: int
    summary: dict[str, Any] = field(default_factory=dict)

    def acc(self, name: str, row: int = -1) -> float:
        """An accumulator (over all replicas), at sample ``row``."""
        v = self.model.lay.split(self.y[row])
        if name in ACC_CLASS:
            return float(v["acc_c"][ACC_CLASS.index(name)].sum()) * self.replicas
        return float(v["acc"][ACC.index(name)]) * (1 if name in ("busy", "kv_area") else self.replicas)

    def node_at(self, i: int) -> dict[str, Any]:
        """The node's rates at sample ``i``, with the inputs in force then."""
        t = float(self.t[i])
        self.model.set_segment(self.arrivals.at(t), t, [p.index(t) for p in self.paths])
        return self.model.node(self.model.lay.split(self.y[i]))

    def series(self, name: str) -> np.ndarray:
        """A block of the state at every sample, e.g. ``series("wait")`` -> (samples, C)."""
        return np.array([self.model.lay.split(row)[name] for row in self.y])


def simulate(loaded: LoadedScenario, controller: str = "unpaced", params: dict[str, Any] | None = None,
             seed: int | None = None, inputs: str = "scenario", requests: list[Request] | None = None,
             stages: int = STAGES, sample_s: float = SAMPLE_S, abandonment: bool = True) -> FluidRun:
    """Integrate the fluid model of ``loaded`` with ``controller``; ``inputs``: "scenario" (its distributions)
    or "requests" (the requests the discrete simulator draws for ``seed``, or ``requests``)."""
    wall0 = time.perf_counter()
    scn = loaded.scenario
    seed = scn.seed if seed is None else seed
    horizon = scn.max_duration_s
    reqs: list[Request] | None = None
    if isinstance(scn.workload.arrivals, RequestCsv):
        inputs = "requests"
    if inputs == "requests":
        reqs = requests if requests is not None else draw_requests(scn, loaded.base_dir, seed)
        classes = request_classes(reqs, list(scn.paths))
        arrivals = request_arrivals(reqs, horizon)
    else:
        classes = scenario_classes(scn, seed)
        arrivals = scenario_arrivals(scn)
    paths = scenario_paths(scn, loaded.base_dir, horizon)
    replicas = scn.server.replicas
    model = FluidModel(scn.server, classes, paths, scn.workload.bytes_per_token, pacing_law(controller, params),
                       share=1.0 / replicas, stages=stages,
                       patience=patience_hazards(scn, seed) if abandonment else None)
    breaks = sorted({b for b in arrivals.breakpoints() for b in [b] if 0 <= b < horizon}
                    | {float(b) for p in paths for b in p.breaks if b < horizon} | {0.0})
    ends = [*breaks[1:], horizon]
    y = model.initial()
    ts, ys = [0.0], [y.copy()]
    calls = [0]
    arrivals_end = arrivals.end_s
    lay = model.lay

    def rhs(t: float, state: np.ndarray) -> np.ndarray:
        calls[0] += 1
        return model.rhs(t, state)

    def finished(t: float, state: np.ndarray) -> float:
        if t < arrivals_end:
            return 1.0
        v = lay.split(state)
        gone = v["acc_c"][ACC_CLASS.index("done")].sum() + v["acc_c"][ACC_CLASS.index("abandoned")].sum()
        return float(v["acc_c"][0].sum() - gone) - DONE_BELOW

    finished.terminal = True  # type: ignore[attr-defined]
    finished.direction = -1  # type: ignore[attr-defined]
    end_s = horizon
    for lo, hi in zip(breaks, ends, strict=True):
        if hi <= lo:
            continue
        model.set_segment(arrivals.at(lo), lo, [p.index(lo) for p in paths])
        grid = np.arange(math.ceil(lo / sample_s + 1e-9) * sample_s, hi, sample_s)
        grid = grid[grid > lo]
        sol = solve_ivp(rhs, (lo, hi), y, method="RK45", t_eval=np.append(grid, hi), rtol=1e-3, atol=1e-3,
                        events=finished if lo >= arrivals_end else None)
        if not sol.success:
            raise RuntimeError(f"fluid solver failed at t={sol.t[-1]:.3f} s: {sol.message}")
        t_out, y_out = np.asarray(sol.t), np.asarray(sol.y).reshape(len(y), -1)
        ts.extend(t_out.tolist())
        ys.extend(y_out.T)
        if sol.status == 1:  # every request read
            end_s = float(sol.t_events[0][0])
            ts.append(end_s)
            ys.append(sol.y_events[0][0])
            break
        y = y_out[:, -1].copy()
    order = np.argsort(np.array(ts), kind="stable")
    run = FluidRun(model, classes, arrivals, paths, np.array(ts)[order], np.array(ys)[order], replicas, end_s,
                   0.0, calls[0])
    run.summary = _summary(run, scn.server.kv_tokens, reqs, horizon)
    run.wall_s = time.perf_counter() - wall0
    return run


# --------------------------------------------------------------------------- what a run comes to
def _node_series(run: FluidRun) -> dict[str, np.ndarray]:
    """The node's rates at every sample (step time, busy, KV, decodes, generation rate per class)."""
    rows = [run.node_at(i) for i in range(len(run.t))]
    return {"tau": np.array([r["tau"] for r in rows]), "busy": np.array([r["busy"] for r in rows]),
            "kv": np.array([r["kv"] for r in rows]), "decodes": np.array([r["decodes"] for r in rows]),
            "gamma": np.array([r["gamma"] for r in rows]), "adm": np.array([r["adm"] for r in rows])}


def _first_reach(cum: np.ndarray, t: np.ndarray, target: np.ndarray) -> np.ndarray:
    """When the non-decreasing ``cum`` (sampled at ``t``) first reaches each ``target`` (interpolated)."""
    cum = np.maximum.accumulate(cum)
    i = np.clip(np.searchsorted(cum, target, side="left"), 1, len(cum) - 1)
    lo, hi = cum[i - 1], cum[i]
    frac = np.clip((target - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)
    return t[i - 1] + frac * (t[i] - t[i - 1])


def _at_arrival(run: FluidRun, node: dict[str, np.ndarray], a: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """For requests arriving at ``a``: time to first token and generation rate per class, (len(a), C)
    each, and the readers' mean share of their pace the network lets them read at (1 - the share of reading
    time stalled with the class's tokens in the network; stalls waiting for the GPU are in the ends' catch-up)."""
    m, t, cl = run.model, run.t, run.classes
    views = [m.lay.split(y) for y in run.y]
    arrived = np.array([v["acc_c"][0].sum() for v in views])
    admitted = np.array([v["acc_c"][1].sum() for v in views])
    # FCFS: a request is admitted when the admissions reach the arrivals before it (those that left the
    # queue counted as admitted: capped at the last admission)
    when_admitted = _first_reach(admitted, t, np.minimum(np.interp(a, t, arrived), admitted[-1]))
    wait = np.maximum(when_admitted - a, 0.0)
    q = np.array([m.per_path(np.maximum(v["inq"], 0.0)) + np.maximum(v["bulkq"], 0.0) for v in views])
    cap = np.array([[p.capacity_Bps[p.index(x)] / run.replicas for p in run.paths] for x in t])
    rtt0 = np.array([[p.rtt_s[p.index(x)] for p in run.paths] for x in t])
    delay = np.stack([np.interp(a, t, 2 * q[:, j] / np.maximum(cap[:, j], 1e3) + 2 * rtt0[:, j])
                      for j in range(len(run.paths))], axis=1)  # (len(a), paths)
    step = np.interp(a, t, node["busy"] * node["tau"] / 2 + m.srv.d0_s + m.srv.d1_s * node["decodes"])
    ttft = (wait + step)[:, None] + m.srv.d1_s * cl.prompt[None, :] + delay[:, cl.path]
    gamma = np.stack([np.interp(a, t, node["gamma"][:, c]) for c in range(len(cl))], axis=1)
    read_area, net_stall = run.acc("read_area"), run.acc("net_stall_area")
    return ttft, gamma, 1.0 - (net_stall / read_area if read_area > 0 else 0.0)


def _cumulative(t: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """The integral of ``rate`` (sampled at ``t``) from ``t[0]``, by trapezoids."""
    return np.concatenate([[0.0], np.cumsum(np.diff(t) * (rate[1:] + rate[:-1]) / 2)])


def _ends(run: FluidRun, node: dict[str, np.ndarray], cls: np.ndarray, first: np.ndarray, out: np.ndarray,
          rd: np.ndarray, pace: float, horizon: float) -> np.ndarray:
    """When each request (its class, first token, output and reading pace) is read to the end.

    Its tokens come at its class's generation rate over time (which changes as the batch and the steps do:
    the rate at arrival alone misses a queue that drains). Its reader shows token i at
    max(made_i, shown_{i-1} + 1 / pace), so the last is shown at max over i of made_i + (out - 1 - i) / pace:
    a reader that catches up with generation waits for it, one that does not reads at its pace. ``pace`` is
    the share of their pace the readers get from the network (1 - the stall share no generation explains).
    As in the discrete run, a stream generated before the horizon is read past it (its display times are
    set as its tokens arrive) and one that is not is cut at the horizon."""
    t = run.t
    ends = np.empty(len(cls))
    for c in np.unique(cls):
        sel = np.flatnonzero(cls == c)
        g = node["gamma"][:, c]
        cum = _cumulative(t, g)
        f, n, r = first[sel], out[sel] - 1, rd[sel] * pace
        target = np.interp(f, t, cum) + n
        made = np.where(target > cum[-1], t[-1] + (target - cum[-1]) / max(float(g[-1]), 1e-9),
                        _first_reach(cum, t, np.minimum(target, cum[-1])))
        # made_i + (n - i) / r at every sample between the first token and the last
        i = np.clip(cum[None, :] - np.interp(f, t, cum)[:, None], 0.0, n[:, None])
        inside = (t[None, :] >= f[:, None]) & (t[None, :] <= made[:, None])
        catch = np.max(np.where(inside, t[None, :] + (n[:, None] - i) / r[:, None], -np.inf), axis=1, initial=-np.inf)
        ends[sel] = np.where(made > horizon, horizon, np.maximum.reduce([made, f + n / r, catch]))
    return ends


def _run_time(run: FluidRun, node: dict[str, np.ndarray], requests: list[Request] | None, horizon: float) -> float:
    """When the last request is read to the end: the max over the drawn requests, or over the scenario's
    (``RUN_TIME_DRAWS`` draws of arrival time and request, each standing for its share of the expected
    requests) the time by which fewer than ln 2 expected requests are still unread (the median of the max)."""
    cl = run.classes
    if requests is not None:
        names = [p.name for p in run.paths]
        out = np.array([r.output_tokens for r in requests], dtype=float)
        rd = np.array([r.reading_tps for r in requests])
        # each request's class: the nearest class of its path in (output, reading)
        path = np.array([names.index(r.path) for r in requests])
        dist = (np.abs(np.log(out[:, None] / cl.output[None, :])) + np.abs(np.log(rd[:, None] / cl.reading[None, :]))
                + 1e9 * (path[:, None] != cl.path[None, :]))
        cls = np.argmin(dist, axis=1)
        arrival = np.array([r.arrival_s for r in requests])
        ttft, _, pace = _at_arrival(run, node, arrival)
        first = arrival + ttft[np.arange(len(requests)), cls]
        return float(np.max(_ends(run, node, cls, first, out, rd, pace, horizon)))
    rng = np.random.default_rng(0)
    a = np.arange(0.0, run.arrivals.end_s, SAMPLE_S) + SAMPLE_S / 2
    expected = np.array([run.arrivals.at(x) for x in a]) * SAMPLE_S  # arrivals per grid cell
    cell = rng.choice(len(a), size=RUN_TIME_DRAWS, p=expected / expected.sum())
    pick = rng.choice(len(cl.samples_class), size=RUN_TIME_DRAWS)
    s_cls, s_out, s_rd = cl.samples_class[pick], cl.samples_output[pick], cl.samples_reading[pick]
    ttft, _, pace = _at_arrival(run, node, a)
    ends = _ends(run, node, s_cls, a[cell] + ttft[cell, s_cls], s_out, s_rd, pace, horizon)
    order = np.argsort(ends)[::-1]
    unfinished = np.arange(1, len(order) + 1) * (expected.sum() / RUN_TIME_DRAWS)  # expected still unread
    i = int(np.searchsorted(unfinished, math.log(2)))
    return float(ends[order][min(i, len(order) - 1)])


def _summary(run: FluidRun, kv_tokens: int, requests: list[Request] | None, horizon: float) -> dict[str, Any]:
    node = _node_series(run)
    run_time = _run_time(run, node, requests, horizon)
    t = run.t
    upto = t <= run_time
    arrived, done = run.acc("arrived"), run.acc("done")
    generated, displayed = run.acc("generated"), run.acc("displayed")
    admitted = run.acc("admitted")
    m = run.model
    backlog = []
    for y in run.y:
        v = m.lay.split(y)
        senders = np.maximum(v["run"], 0).sum(1) + np.maximum(v["read"], 0).sum(1)
        backlog.append(np.max(np.maximum(v["sock"] + v["inq"], 0) / np.maximum(senders, 1.0)))
    kv_mean = float(np.trapezoid(node["kv"][upto], t[upto]) / run_time) if run_time > 0 else None
    busy = float(np.trapezoid(node["busy"][upto], t[upto]) / run_time) if run_time > 0 else None
    waiting = np.array([np.maximum(m.lay.split(y)["wait"], 0).sum() for y in run.y]) * run.replicas
    summary: dict[str, Any] = {
        "streams": arrived,
        "completed": done,
        "abandoned": run.acc("abandoned"),
        "cancelled": max(arrived - done - run.acc("abandoned"), 0.0),
        "ttft_mean_s": (run.acc("wait_area") + run.acc("ttft_area")) / admitted if admitted > 0 else None,
        "stall_ratio": max(run.acc("stall_area"), 0.0) / run.acc("read_area") if run.acc("read_area") > 0 else None,
        "tokens_generated": generated,
        "tokens_displayed": displayed,
        "tokens_wasted": max(generated - displayed, 0.0),
        "waste_frac": max(generated - displayed, 0.0) / generated if generated > 0 else None,
        "run_time_s": run_time,
        "effective_tps": displayed / run_time if run_time > 0 else None,
        "gpu_busy_frac": busy,
        "peak_queued_bytes": float(max(backlog)),
        "kv_mean_tokens": kv_mean,
        "kv_peak_tokens": float(node["kv"].max()),
        "kv_utilization_mean": kv_mean / kv_tokens if kv_mean is not None else None,
        "waiting_peak": float(waiting.max()),
    }
    summary.update(dict.fromkeys(NULL_KEYS))
    return summary


# --------------------------------------------------------------------------- files
def write_series(run: FluidRun, folder: Path) -> None:
    """server.csv (one row per sample: counts summed over replicas, step time, KV and busy fraction per
    replica; ``batch_id`` is the sample's number) and links.csv (capacity and queue per path)."""
    folder.mkdir(parents=True, exist_ok=True)
    m, n = run.model, run.replicas
    node = _node_series(run)
    kv_total = m.srv.kv_tokens
    with CsvRecorder(folder / "server.csv", (*SERVER_COLUMNS, "busy_frac")) as rec:
        for i, (t, y) in enumerate(zip(run.t, run.y, strict=True)):
            v = m.lay.split(y)
            tau = node["tau"][i]
            prefill = float((node["adm"][i] * run.classes.prompt).sum()) * tau
            rec.write([round(t, 6), i, round((node["decodes"][i] + node["adm"][i].sum() * tau) * n, 4),
                       round((node["decodes"][i] + prefill) * n, 4), round(tau, 6),
                       round(float(np.maximum(v["wait"], 0).sum()) * n, 4),
                       round(float(np.maximum(v["run"], 0).sum()) * n, 4),
                       round(float(np.maximum(v["swap"], 0).sum()) * n, 4),
                       round(float(v["acc_c"][2].sum()) * n, 4), round(node["kv"][i], 2),
                       round(node["kv"][i] / kv_total, 6), round(node["busy"][i], 6)])
    with CsvRecorder(folder / "links.csv", LINKS_COLUMNS) as rec:
        for t, y in zip(run.t, run.y, strict=True):
            v = m.lay.split(y)
            q = m.per_path(np.maximum(v["inq"], 0.0)) + np.maximum(v["bulkq"], 0.0)
            for j, p in enumerate(run.paths):
                rec.write([round(t, 6), p.name, round(p.capacity_Bps[p.index(t)] * 8, 1), round(q[j] * n, 1)])


def write_summary(out: Path, scenario: str, summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """summary.json as ``analysis.metrics.summarize_run`` writes it (6 significant digits)."""
    summary = {"scenario": scenario, "controllers": summaries}
    write_json(out / "summary.json", summary, sig_digits=6)
    from analysis.results import read_json

    return read_json(out / "summary.json")
