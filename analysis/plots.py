"""Pictures of a run, drawn from its files alone.

Each plot is a function taking the loaded :class:`~analysis.results.Run` and an output folder
and returning the path of the PNG it wrote (or ``None`` when the files it needs are absent):

* :func:`plot_timeline` — up to four streams over time (the worst on a faulted path, the
  worst, the median, the best, the 10th percentile QoE): RTT, the pacing rate the controller chose against the reader's
  pace, the client's buffer, tokens generated/received/displayed against what the reader
  expected, and the path's capacity. Stalls are shaded red, fault windows grey. This is where
  the pacing effect is visible: when RTT climbs, does the rate follow, and does the reader
  stall?
* :func:`plot_cdf` — the distribution of per-stream stall time or QoE, one line per controller.
* :func:`plot_system_dynamics` — the serving node: queues, memory, batch time, completions,
  throughput (server.csv).
* :func:`plot_request_timeline` — a Gantt chart of 20 requests: waiting, running, swapped.
* :func:`plot_comparison` — bars of the headline metrics per controller.

Controllers are drawn with the label and colour run.json gives under ``controller_info``
(``{"name": {"label": ..., "color": ...}}``), or a fixed palette. Figures are drawn on the Agg
canvas directly (no pyplot), so importing this module changes no global matplotlib state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis.metrics import stream_intervals, stream_metrics, stream_tokens, summarize_run
from analysis.results import ControllerRun, Run, Table
from analysis.style import controller_style, safe_name

__all__ = [
    "FaultWindow",
    "PickedStream",
    "PlotJob",
    "fault_windows",
    "make_plots",
    "pick_streams",
    "plot_cdf",
    "plot_comparison",
    "plot_jobs",
    "plot_request_timeline",
    "plot_system_dynamics",
    "plot_timeline",
]

STALL_COLOR = "#d62728"
FAULT_COLOR = "#7f7f7f"
DPI = 110


def _figure(nrows: int, ncols: int, width_in: float, height_in: float, **kw: Any) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _save(fig: Figure, out_dir: Path, file_name: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / file_name
    fig.savefig(path, dpi=DPI)
    return path


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


# --------------------------------------------------------------------------- faults and picks
@dataclass(frozen=True)
class FaultWindow:
    """A scenario fault: ``kind`` on ``path`` (None = every path) from ``start_s`` to ``end_s``."""

    kind: str
    path: str | None
    start_s: float
    end_s: float


def fault_windows(run: Run) -> list[FaultWindow]:
    """The faults run.json's scenario lists (``faults: [{kind, at_s, duration_s, path}]``)."""
    faults = run.scenario.get("faults")
    out: list[FaultWindow] = []
    if not isinstance(faults, list):
        return out
    for f in faults:
        if not isinstance(f, Mapping):
            continue
        try:
            start = float(f.get("at_s", math.nan))
            end = start + float(f.get("duration_s", math.nan))
        except (TypeError, ValueError):
            continue
        if math.isfinite(start) and math.isfinite(end):
            path = f.get("path")
            out.append(FaultWindow(str(f.get("kind", "fault")), None if path is None else str(path), start, end))
    return out


def _faults_on(faults: Sequence[FaultWindow], path: str) -> list[FaultWindow]:
    return [f for f in faults if f.path is None or f.path == path]


@dataclass(frozen=True)
class PickedStream:
    """A stream chosen for the timeline: its row in streams.csv and why it was chosen."""

    row: int
    stream_id: str
    reason: str


def pick_streams(run: Run, ctrl: ControllerRun, max_streams: int = 4) -> list[PickedStream]:
    """Representative streams: worst on a faulted path (if any), worst, median, best, p10 QoE.

    A stream is on a faulted path when one of the scenario's faults hits its path while the
    stream is alive. Ties go to the earlier row, so the choice is deterministic.
    """
    sm = stream_metrics(ctrl)
    if len(sm) == 0:
        return []
    order = np.argsort(sm.qoe, kind="stable")
    faults = fault_windows(run)
    candidates: list[tuple[int, str]] = []
    if faults:
        end = np.where(np.isnan(sm.end_s), np.inf, sm.end_s)
        hit = np.zeros(len(sm), dtype=bool)
        for f in faults:
            on_path = np.ones(len(sm), dtype=bool) if f.path is None else sm.path == f.path
            hit |= on_path & (sm.arrival_s < f.end_s) & (end > f.start_s)
        by_path: dict[str, int] = {}
        for row in order:
            if hit[row] and str(sm.path[row]) not in by_path:
                by_path[str(sm.path[row])] = int(row)
        for path, row in sorted(by_path.items())[:2]:
            candidates.append((row, f"worst during a fault on {path}"))
    candidates += [
        (int(order[0]), "worst QoE"),
        (int(order[len(order) // 2]), "median QoE"),
        (int(order[-1]), "best QoE"),
        (int(order[len(order) // 10]), "10th percentile QoE"),
    ]
    reasons: dict[int, list[str]] = {}
    for row, reason in candidates:  # one panel per stream, with every reason it was chosen for
        if row in reasons or len(reasons) < max_streams:
            reasons.setdefault(row, []).append(reason)
    return [PickedStream(row, str(sm.stream_id[row]), ", ".join(why)) for row, why in reasons.items()]


def _merge_close(start_s: np.ndarray, end_s: np.ndarray, gap_s: float) -> list[tuple[float, float]]:
    """Stall intervals for drawing: those separated by less than ``gap_s`` become one band."""
    merged: list[tuple[float, float]] = []
    for s0, s1 in zip(start_s.tolist(), end_s.tolist(), strict=True):
        if merged and s0 - merged[-1][1] < gap_s:
            merged[-1] = (merged[-1][0], max(merged[-1][1], s1))
        else:
            merged.append((s0, s1))
    return merged


# --------------------------------------------------------------------------- timeline
def _rows_of(table: Table | None, column: str, value: str, time_column: str) -> Table | None:
    if table is None:
        return None
    rows = np.flatnonzero(table[column] == value)
    rows = rows[np.argsort(table[time_column][rows], kind="stable")]
    return table.take(rows)


def _cumulative(ax: Axes, times: np.ndarray, label: str, color: str, style: str = "-") -> None:
    t = np.sort(times[~np.isnan(times)])
    if t.size:
        ax.step(
            np.r_[t[0], t],
            np.r_[0, np.arange(1, t.size + 1)],
            where="post",
            color=color,
            linestyle=style,
            label=label,
            linewidth=1.3,
        )


def plot_timeline(run: Run, out_dir: Path | str, controller: str, *, max_streams: int = 4) -> Path | None:
    """``timeline_<controller>.png``: representative streams of one controller over time."""
    ctrl = run.controllers[controller]
    picks = pick_streams(run, ctrl, max_streams)
    if not picks:
        return None
    sm = stream_metrics(ctrl)
    groups = stream_tokens(ctrl)
    faults = fault_windows(run)
    panels = ["rtt", "rate", "buffer", "tokens"] + (["link"] if ctrl.links is not None else [])
    heights = {"rtt": 1.0, "rate": 1.0, "buffer": 0.8, "tokens": 1.3, "link": 0.9}
    fig, axes = _figure(
        len(panels),
        len(picks),
        4.6 * len(picks) + 0.6,
        2.0 * sum(heights[p] for p in panels) + 0.6,
        sharex="col",
        gridspec_kw={"height_ratios": [heights[p] for p in panels]},
    )
    style = controller_style(run, controller)
    fig.suptitle(
        f"{style.label}: representative streams (red = reader stalled, stalls less than one "
        "token apart drawn as one band; grey = fault on the stream's path)",
        fontsize=11,
    )
    for col, pick in enumerate(picks):
        row = pick.row
        sid, path = pick.stream_id, str(sm.path[row])
        streams = ctrl.streams
        arrival = float(sm.arrival_s[row])
        r = float(streams["reading_tps"][row])
        tok = ctrl.tokens.take(groups.get(sid, np.zeros(0, dtype=np.intp)))
        tel = _rows_of(ctrl.telemetry, "stream_id", sid, "t")
        link = _rows_of(ctrl.links, "path", path, "t")
        last = np.nanmax(np.r_[sm.end_s[row], tok["t_displayed"], tok["t_received"], arrival])
        left, right = arrival, max(last, arrival + 1e-3)
        pad = 0.03 * (right - left)
        ax_of = {p: axes[i, col] for i, p in enumerate(panels)}
        outcome = str(sm.outcome[row])
        axes[0, col].set_title(
            f"{sid} on {path} — {pick.reason}\nQoE {sm.qoe[row]:.3f}, stall {sm.stall_s[row]:.2f} s, {outcome}",
            fontsize=10,
        )

        ax = ax_of["rtt"]
        if tel is not None and len(tel):
            ax.plot(tel["t"], tel["srtt_ms"], color="#1f77b4", label="srtt")
            ax.plot(tel["t"], tel["rtt_p95_ms"], color="#ff7f0e", linewidth=0.9, label="rtt p95")
            ax.plot(tel["t"], tel["rtt_min_ms"], color="0.5", linewidth=0.8, linestyle=":", label="rtt min")
        else:
            _note(ax, "no telemetry")
        ax.set_ylabel("RTT (ms)")

        ax = ax_of["rate"]
        if tel is not None and len(tel):
            ax.step(tel["t"], tel["rate_tps"], where="post", color=style.color, label="paced rate")
            if np.isnan(tel["rate_tps"]).all():
                _note(ax, "unpaced")
        ax.axhline(r, color="k", linestyle="--", linewidth=1.0, label="reading pace")
        ax.set_ylabel("rate (tok/s)")
        ax.set_ylim(bottom=0)

        ax = ax_of["buffer"]
        if tel is not None and len(tel):
            ax.plot(tel["t"], tel["client_buffer_est"], color="#2ca02c", label="client buffer (est.)")
        else:
            _note(ax, "no telemetry")
        ax.set_ylabel("buffer (tok)")

        ax = ax_of["tokens"]
        n = int(streams["output_tokens"][row])
        ttft_e = float(streams["ttft_expected_s"][row])
        due = arrival + ttft_e + np.arange(n) / r
        _cumulative(ax, due[due <= right + pad], "reader expects", "0.55", "--")  # keep the y scale readable
        _cumulative(ax, tok["t_generated"], "generated", "#9467bd")
        _cumulative(ax, tok["t_received"], "received", "#1f77b4")
        _cumulative(ax, tok["t_displayed"], "displayed", "k")
        ax.set_ylabel("tokens")

        if "link" in ax_of:
            ax = ax_of["link"]
            if link is not None and len(link):
                ax.step(link["t"], link["rate_bps"] / 1e6, where="post", color="#8c564b", label="capacity")
                twin = ax.twinx()
                twin.plot(link["t"], link["backlog_bytes"] / 1e3, color="#e377c2", linewidth=0.9)
                twin.set_ylabel("backlog (KB)", color="#e377c2", fontsize=9)
                twin.tick_params(axis="y", labelsize=8, colors="#e377c2")
                twin.set_ylim(bottom=0)
            else:
                _note(ax, f"no link samples for {path}")
            ax.set_ylabel("capacity (Mbit/s)")
            ax.set_ylim(bottom=0)

        stalls = stream_intervals(ctrl, row)
        bands = _merge_close(stalls.start_s, stalls.end_s, gap_s=1.01 / r)  # brief reading between stalls
        for ax in axes[:, col]:
            for f in _faults_on(faults, path):
                ax.axvspan(f.start_s, f.end_s, color=FAULT_COLOR, alpha=0.15, linewidth=0)
            for s0, s1 in bands:
                ax.axvspan(s0, s1, color=STALL_COLOR, alpha=0.25, linewidth=0)
            if outcome == "abandoned":
                ax.axvline(float(sm.end_s[row]), color=STALL_COLOR, linestyle=":", linewidth=1.2)
            ax.grid(True, alpha=0.3)
            ax.tick_params(labelsize=8)
        axes[-1, col].set_xlim(left - pad, right + pad)
        axes[-1, col].set_xlabel("time since run start (s)")
        if col == 0:
            for ax in axes[:, 0]:
                if ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=7, loc="best", framealpha=0.7)
    return _save(fig, Path(out_dir), f"timeline_{safe_name(controller)}.png")


# --------------------------------------------------------------------------- CDFs
def plot_cdf(run: Run, out_dir: Path | str, metric: Literal["stall_s", "qoe"]) -> Path:
    """``cdf_stall.png`` or ``cdf_qoe.png``: per-stream distribution, one line per controller."""
    fig, axes = _figure(1, 1, 6.4, 4.2)
    ax = axes[0, 0]
    for ctrl in run:
        values = np.sort(getattr(stream_metrics(ctrl), metric))
        if values.size == 0:
            continue
        style = controller_style(run, ctrl.name)
        y = np.arange(1, values.size + 1) / values.size
        ax.step(
            np.r_[values[0], values],
            np.r_[0.0, y],
            where="post",
            color=style.color,
            label=f"{style.label} (n={values.size})",
            linewidth=1.6,
        )
    if metric == "qoe":
        ax.axvline(run.slo_qoe, color="k", linestyle="--", linewidth=1, label=f"SLO {run.slo_qoe:g}")
        ax.set_xlabel("QoE per stream (1 = every token on time)")
        ax.set_title(f"{run.scenario_name}: QoE per stream (a line further right is better)")
        ax.set_xlim(-0.02, 1.02)
        name = "cdf_qoe.png"
    else:
        ax.set_xlabel("stall time per stream (s)")
        ax.set_title(f"{run.scenario_name}: reader stall per stream (a line further up-left is better)")
        ax.set_xlim(left=0)
        name = "cdf_stall.png"
    ax.set_ylabel("fraction of streams")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # QoE lines hug the right, stall lines the left
        ax.legend(fontsize=9, loc="upper left" if metric == "qoe" else "lower right")
    return _save(fig, Path(out_dir), name)


# --------------------------------------------------------------------------- server side
def _moving_throughput(end_s: np.ndarray, tokens: np.ndarray, window_s: float) -> np.ndarray:
    """Tokens per second over the ``window_s`` before each batch end."""
    cum = np.cumsum(tokens)
    before = np.searchsorted(end_s, end_s - window_s, side="right")
    prior = np.where(before > 0, cum[np.maximum(before - 1, 0)], 0.0)
    return (cum - prior) / window_s


def plot_system_dynamics(run: Run, out_dir: Path | str, controller: str) -> Path | None:
    """``system_dynamics_<controller>.png``: six panels of the serving node from server.csv."""
    server = run.controllers[controller].server
    if server is None or len(server) == 0:
        return None
    server = server.take(np.argsort(server["time"], kind="stable"))
    t = server["time"]
    style = controller_style(run, controller)
    fig, axes = _figure(3, 2, 12.0, 9.0, sharex=True)
    fig.suptitle(f"{style.label}: serving node over time ({run.scenario_name})", fontsize=12)

    ax = axes[0, 0]
    for col, color in (("waiting_count", "#1f77b4"), ("running_count", "#2ca02c"), ("swapped_count", "#d62728")):
        ax.step(t, server[col], where="post", color=color, label=col.removesuffix("_count"))
    ax.set_title("queue state")
    ax.set_ylabel("requests")
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    ax.plot(t, server["gpu_memory_used"], color="#9467bd")
    ax.set_title("GPU memory used")
    ax.set_ylabel("as logged (server.csv units)")

    ax = axes[1, 0]
    util = server["memory_utilization"]
    finite = util[~np.isnan(util)]
    scale = 100.0 if finite.size and finite.max() <= 1.0 else 1.0
    ax.plot(t, util * scale, color="#ff7f0e")
    ax.set_title("memory utilisation")
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)

    ax = axes[1, 1]
    ax.plot(t, server["batch_duration"] * 1e3, color="#8c564b", linewidth=0.8, marker=".", markersize=2)
    ax.set_title("batch execution time")
    ax.set_ylabel("ms")

    ax = axes[2, 0]
    done = np.nan_to_num(server["completed_count"])
    if np.any(np.diff(done) < 0):  # per-batch counts, not a running total
        done = np.cumsum(done)
    ax.step(t, done, where="post", color="#2ca02c")
    ax.set_title("completed requests (cumulative)")
    ax.set_ylabel("requests")

    ax = axes[2, 1]
    span = float(np.nanmax(t) - np.nanmin(t)) if len(t) else 0.0
    window = max(1.0, span / 50.0)
    ax.plot(t, _moving_throughput(t, np.nan_to_num(server["batch_tokens"]), window), color="#17becf")
    ax.set_title(f"throughput ({window:.2g} s moving average)")
    ax.set_ylabel("tokens/s")

    for ax in axes.ravel():
        ax.grid(True, alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("time since run start (s)")
    return _save(fig, Path(out_dir), f"system_dynamics_{safe_name(controller)}.png")


def plot_request_timeline(run: Run, out_dir: Path | str, controller: str, *, n_requests: int = 20) -> Path | None:
    """``request_timeline_<controller>.png``: Gantt chart of ``n_requests`` requests.

    Requests are taken evenly spaced in arrival order (deterministic). Each shows waiting
    (blue, arrival to first run) then execution (green, to completion); swapped-out spans from
    events.csv are overlaid in orange and labelled ``S:n`` with the number of swaps.
    """
    ctrl = run.controllers[controller]
    traces = ctrl.request_traces
    if traces is None or len(traces) == 0:
        return None
    order = np.argsort(traces["arrival_time"], kind="stable")
    picks = order[np.unique(np.linspace(0, len(order) - 1, min(n_requests, len(order))).round().astype(int))]
    events = ctrl.events
    fig, axes = _figure(1, 1, 11.0, 0.32 * len(picks) + 1.6)
    ax = axes[0, 0]
    style = controller_style(run, controller)
    ax.set_title(f"{style.label}: request timeline ({len(picks)} of {len(traces)} requests)")
    horizon = float(
        np.nanmax(
            np.r_[traces["completion_time"], traces["arrival_time"], events["time"] if events is not None else []]
        )
    )
    labels: list[str] = []
    for y, i in enumerate(picks):
        rid = str(traces["req_id"][i])
        labels.append(rid)
        arrive = float(traces["arrival_time"][i])
        start = float(traces["first_enter_running_time"][i])
        finish = float(traces["completion_time"][i])
        ev_t = ev_kind = None
        if events is not None:
            mine = np.flatnonzero(events["req_id"] == rid)
            mine = mine[np.argsort(events["time"][mine], kind="stable")]
            ev_t, ev_kind = events["time"][mine], events["event_type"][mine]
        if math.isnan(finish):  # never completed: up to its last event (or the end of the run)
            finish = float(ev_t[-1]) if ev_t is not None and ev_t.size else horizon
        wait_end = finish if math.isnan(start) else start
        ax.barh(y, wait_end - arrive, left=arrive, height=0.6, color="#1f77b4")
        if not math.isnan(start):
            ax.barh(y, finish - start, left=start, height=0.6, color="#2ca02c")
        swaps = 0
        if ev_t is not None and ev_kind is not None:
            outs = ev_t[ev_kind == "swap_out"]
            ins = ev_t[ev_kind == "swap_in"]
            swaps = int(outs.size)
            for s0 in outs:
                back = ins[ins >= s0]
                s1 = float(back[0]) if back.size else finish
                ax.barh(y, s1 - s0, left=s0, height=0.6, color="#ff7f0e")
            if np.any(ev_kind == "cancel"):
                ax.plot(finish, y, marker="x", color="k", markersize=6)
        if not swaps and not math.isnan(float(traces["swap_count"][i])):
            swaps = int(traces["swap_count"][i])
        if swaps:
            ax.text(finish, y, f"  S:{swaps}", va="center", fontsize=8, color="#d62728")
    ax.set_yticks(range(len(picks)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time since run start (s)")
    ax.grid(True, axis="x", alpha=0.3)
    from matplotlib.patches import Patch

    ax.legend(
        handles=[
            Patch(color="#1f77b4", label="waiting"),
            Patch(color="#2ca02c", label="executing"),
            Patch(color="#ff7f0e", label="swapped out"),
        ],
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
    )
    return _save(fig, Path(out_dir), f"request_timeline_{safe_name(controller)}.png")


# --------------------------------------------------------------------------- comparison
COMPARISON_METRICS: tuple[tuple[str, str], ...] = (
    ("qoe_mean", "mean QoE (higher is better)"),
    ("waste_frac", "wasted tokens (fraction, lower is better)"),
    ("stall_ratio", "stall ratio (lower is better)"),
    ("effective_tps", "effective tokens/s (displayed / run time)"),
)


def plot_comparison(run: Run, out_dir: Path | str, summary: Mapping[str, Any] | None = None) -> Path:
    """``comparison.png``: qoe_mean, waste_frac, stall_ratio, effective_tps per controller."""
    if summary is None:
        summary = summarize_run(run, write=False)
    ctrls: Mapping[str, Mapping[str, Any]] = summary["controllers"]
    names = [n for n in run.controller_names if n in ctrls]
    styles = [controller_style(run, n) for n in names]
    fig, axes = _figure(2, 2, max(8.0, 1.3 * len(names) + 5.0), 7.0)
    fig.suptitle(f"{run.scenario_name}: controllers compared", fontsize=12)
    x = np.arange(len(names))
    for ax, (key, title) in zip(axes.ravel(), COMPARISON_METRICS, strict=True):
        values = [ctrls[n].get(key) for n in names]
        heights = [float(v) if v is not None else 0.0 for v in values]
        ax.bar(x, heights, color=[s.color for s in styles], width=0.65)
        for xi, v, h in zip(x, values, heights, strict=True):
            ax.annotate(
                "n/a" if v is None else f"{float(v):.3g}",
                (xi, h),
                textcoords="offset points",
                xytext=(0, 2),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_title(title, fontsize=10)
        ax.set_xticks(x, [s.label for s in styles], rotation=20 if len(names) > 4 else 0, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        ax.margins(y=0.15)
        if key == "qoe_mean":
            ax.axhline(run.slo_qoe, color="k", linestyle="--", linewidth=0.8)
    return _save(fig, Path(out_dir), "comparison.png")


# --------------------------------------------------------------------------- all of them
@dataclass(frozen=True)
class PlotJob:
    """One plot to draw: a short description and the call that draws it."""

    name: str
    make: Callable[[], Path | None]


def plot_jobs(run: Run, out_dir: Path | str, summary: Mapping[str, Any] | None = None) -> list[PlotJob]:
    """Every plot of a run as a list of jobs (the CLI runs them under a progress bar)."""
    out = Path(out_dir)
    jobs = [
        PlotJob("comparison", lambda: plot_comparison(run, out, summary)),
        PlotJob("cdf_qoe", lambda: plot_cdf(run, out, "qoe")),
        PlotJob("cdf_stall", lambda: plot_cdf(run, out, "stall_s")),
    ]
    for name in run.controller_names:
        jobs += [
            PlotJob(f"timeline {name}", partial(plot_timeline, run, out, name)),
            PlotJob(f"system dynamics {name}", partial(plot_system_dynamics, run, out, name)),
            PlotJob(f"request timeline {name}", partial(plot_request_timeline, run, out, name)),
        ]
    return jobs


def make_plots(run: Run, out_dir: Path | str, summary: Mapping[str, Any] | None = None) -> list[Path]:
    """Draw every plot into ``out_dir``; returns the PNGs written."""
    return [p for job in plot_jobs(run, out_dir, summary) if (p := job.make()) is not None]
