"""Simulator fidelity: how close a simulated run is to the lab run of the same scenario.

``python -m analysis compare SIM_DIR LIVE_DIR`` reads two results folders (nothing else: this
module never imports ``sim`` or ``live``), recomputes each controller's metrics from the raw
files (:func:`analysis.metrics.summarize_run`, floats at 6 significant digits, the same numbers
summary.json holds) and compares them, for every controller present in both folders.

**Per controller and metric** (:data:`FIDELITY_METRICS`): the simulator's value ``sim``, the
lab's value ``lab``, ``abs_error = |lab - sim|`` and the absolute percentage error
``ape = |lab - sim| / |sim|`` as a *fraction* (0.1 means 10 %).

*When sim is 0* there is nothing to divide by, so nothing is divided: the entry carries
``sim_zero: true`` and the absolute error stands in for the relative one. If lab is 0 too, the two
agree exactly and ``ape`` is 0.0; otherwise ``ape`` is null and the entry is left out of the
median (``n_sim_zero`` counts those per metric, so a reader sees what was left out). When either
value is missing (a metric over an empty set, e.g. no inter-token gaps), ``missing: true``, ``ape``
is null and the entry is left out of the median too.

**Per metric**: ``median_ape`` over the controllers whose ``ape`` is a number (null when none is),
``n`` (how many went into it), ``n_sim_zero``, ``n_missing`` and ``within_target`` (median_ape <=
:data:`TARGET_MEDIAN_APE`; null when there is no median). The target is informational.

**Ranking**: each folder's controllers (those in both) ranked by
:func:`analysis.metrics.rank_controllers` (QoE within 0.005 of the best is a tie, which the
fewer wasted tokens break); ``same_best`` says whether both put the same controller first, and ``kendall_tau``
is :func:`scipy.stats.kendalltau` of the two rank orders (null with fewer than two controllers).
``sim_tied_best`` / ``lab_tied_best`` (:func:`analysis.metrics.tied_best`) list the controllers each
cannot tell from its best (QoE within 0.005 and waste within half a point): when they serve readers
and waste alike, which comes first is noise, and ``best_within_ties`` says whether each side's best
is in the other's tied set.

**Trajectories**: for each controller, one PNG ``plots/fidelity_<controller>.png`` with two
panels, smoothed RTT (``srtt_ms``) and decided rate (``rate_tps``) over time, simulator and lab
overlaid. Each curve is the mean across streams per control-interval bin
(:func:`binned_mean`): a row at time ``t`` falls in bin ``floor(t / dt)``, drawn at the bin's
start ``k * dt``; ``dt`` is the scenario's ``control_interval_s`` (run.json, else 0.1 s).
Empty cells (no RTT sample, an unpaced interval) are skipped, and a bin with no value is not
drawn. The trajectories need each controller's telemetry.csv: a missing one is bad input
(exit 2 naming the file), unless plots are turned off.

Everything goes into ``fidelity.json`` (in LIVE_DIR, or the ``--out`` folder) via
:func:`analysis.results.write_json`, so the same two folders always give the same bytes.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.metrics import rank_controllers, summarize_run, tied_best
from analysis.results import ResultsFormatError, Run, Table, load_run, write_json

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = [
    "DEFAULT_CONTROL_INTERVAL_S",
    "FIDELITY_FILE",
    "FIDELITY_METRICS",
    "TARGET_MEDIAN_APE",
    "TRAJECTORY_COLUMNS",
    "ape_entry",
    "binned_mean",
    "compare_runs",
    "compare_summaries",
    "control_interval_s",
    "fidelity_tables",
    "plot_trajectories",
    "ranking_agreement",
]

FIDELITY_FILE = "fidelity.json"
FIDELITY_METRICS: tuple[str, ...] = (
    "ttft_p50_s",
    "ttft_p99_s",
    "itl_p50_s",
    "itl_p99_s",
    "stall_ratio",
    "waste_frac",
    "effective_tps",
)
#: the issue's target: median APE per metric at most 10 %; reported, not enforced.
TARGET_MEDIAN_APE = 0.10
DEFAULT_CONTROL_INTERVAL_S = 0.1
TRAJECTORY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("srtt_ms", "smoothed RTT (ms)"),
    ("rate_tps", "decided rate (tokens/s)"),
)
SIM_STYLE = {"color": "#1f77b4", "linestyle": "-", "label": "simulator"}
LAB_STYLE = {"color": "#d62728", "linestyle": "--", "label": "lab"}


def _number(value: Any) -> float | None:
    if value is None:
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def ape_entry(sim: Any, lab: Any) -> dict[str, Any]:
    """One controller's one metric: sim, lab, abs_error, ape (fraction), sim_zero, missing.

    ``ape`` is ``|lab - sim| / |sim|``; with ``sim == 0`` nothing is divided (``sim_zero``:
    ape 0.0 when lab is 0 too, else null, the absolute error standing in); a missing value gives
    ``missing`` and null errors.
    """
    s, v = _number(sim), _number(lab)
    if s is None or v is None:
        return {"sim": s, "lab": v, "abs_error": None, "ape": None, "sim_zero": False, "missing": True}
    err = abs(v - s)
    if s == 0.0:
        return {
            "sim": s,
            "lab": v,
            "abs_error": err,
            "ape": 0.0 if err == 0.0 else None,
            "sim_zero": True,
            "missing": False,
        }
    return {"sim": s, "lab": v, "abs_error": err, "ape": err / abs(s), "sim_zero": False, "missing": False}


def ranking_agreement(sim_ctrls: Mapping[str, Any], lab_ctrls: Mapping[str, Any]) -> dict[str, Any]:
    """Both rankings (best first) of the controllers in both, ``same_best`` and ``kendall_tau``."""
    common = [n for n in sim_ctrls if n in lab_ctrls]
    sim_rank = rank_controllers({n: sim_ctrls[n] for n in common})
    lab_rank = rank_controllers({n: lab_ctrls[n] for n in common})
    tau: float | None = None
    if len(common) >= 2:
        from scipy.stats import kendalltau

        names = sorted(common)
        res = kendalltau([sim_rank.index(n) for n in names], [lab_rank.index(n) for n in names])
        tau = _number(res.statistic)
    sim_tied = tied_best({n: sim_ctrls[n] for n in common})
    lab_tied = tied_best({n: lab_ctrls[n] for n in common})
    return {
        "sim_ranking": sim_rank,
        "lab_ranking": lab_rank,
        "sim_best": sim_rank[0] if sim_rank else None,
        "lab_best": lab_rank[0] if lab_rank else None,
        "same_best": bool(sim_rank) and sim_rank[0] == lab_rank[0],
        "sim_tied_best": sim_tied,
        "lab_tied_best": lab_tied,
        "best_within_ties": bool(sim_rank) and sim_rank[0] in lab_tied and lab_rank[0] in sim_tied,
        "kendall_tau": tau,
    }


def compare_summaries(
    sim_summary: Mapping[str, Any],
    lab_summary: Mapping[str, Any],
    metrics: Sequence[str] = FIDELITY_METRICS,
) -> dict[str, Any]:
    """The numbers of fidelity.json from two summaries (as :func:`summarize_run` returns them).

    Controllers are taken in the simulator's order; those in only one folder are listed under
    ``only_sim`` / ``only_lab`` and compared with nothing.
    """
    sim_ctrls: Mapping[str, Mapping[str, Any]] = sim_summary.get("controllers", sim_summary)
    lab_ctrls: Mapping[str, Mapping[str, Any]] = lab_summary.get("controllers", lab_summary)
    common = [n for n in sim_ctrls if n in lab_ctrls]
    per_ctrl = {n: {m: ape_entry(sim_ctrls[n].get(m), lab_ctrls[n].get(m)) for m in metrics} for n in common}
    per_metric: dict[str, Any] = {}
    for m in metrics:
        entries = [per_ctrl[n][m] for n in common]
        apes = [e["ape"] for e in entries if e["ape"] is not None]
        median = float(statistics.median(apes)) if apes else None
        per_metric[m] = {
            "median_ape": median,
            "n": len(apes),
            "n_sim_zero": sum(1 for e in entries if e["sim_zero"] and e["ape"] is None),
            "n_missing": sum(1 for e in entries if e["missing"]),
            "within_target": None if median is None else median <= TARGET_MEDIAN_APE,
        }
    return {
        "controllers": common,
        "only_sim": [n for n in sim_ctrls if n not in lab_ctrls],
        "only_lab": [n for n in lab_ctrls if n not in sim_ctrls],
        "metrics": list(metrics),
        "per_controller": per_ctrl,
        "per_metric": per_metric,
        "ranking": ranking_agreement(sim_ctrls, lab_ctrls),
        "target_median_ape": TARGET_MEDIAN_APE,
    }


# --------------------------------------------------------------------------- trajectories
def control_interval_s(run: Run) -> float:
    """The scenario's ``control_interval_s`` from run.json, else :data:`DEFAULT_CONTROL_INTERVAL_S`."""
    try:
        value = _number(run.scenario.get("control_interval_s"))
    except (TypeError, ValueError):
        value = None
    return value if value is not None and value > 0 else DEFAULT_CONTROL_INTERVAL_S


def binned_mean(t: np.ndarray, values: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` per bin ``floor(t / dt)`` (NaN skipped); returns (bin start times, means).

    Bins without a finite value are left out. A time a hair below a bin edge (``0.3 / 0.1``)
    counts as on the edge.
    """
    t = np.asarray(t, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(t) & np.isfinite(values)
    if not ok.any():
        return np.zeros(0), np.zeros(0)
    bins = np.floor(t[ok] / dt + 1e-9).astype(np.int64)
    keys, inverse = np.unique(bins, return_inverse=True)
    sums = np.bincount(inverse, weights=values[ok])
    counts = np.bincount(inverse)
    return keys * dt, sums / counts


def _telemetry(run: Run, name: str) -> Table:
    tel = run.controllers[name].telemetry
    if tel is None:
        raise ResultsFormatError(
            run.path / name / "telemetry.csv", "file not found (compare needs it for the trajectories)"
        )
    return tel


def plot_trajectories(sim: Run, lab: Run, name: str, out_dir: Path | str) -> Path:
    """``fidelity_<controller>.png``: srtt_ms and rate_tps over time, simulator and lab overlaid."""
    from analysis.plots import DPI, _figure
    from analysis.style import safe_name

    tels = ((sim, _telemetry(sim, name), SIM_STYLE), (lab, _telemetry(lab, name), LAB_STYLE))
    fig, axes = _figure(len(TRAJECTORY_COLUMNS), 1, 9.0, 5.5, sharex=True)
    fig.suptitle(f"{name}: simulator vs lab (mean across streams per control interval)", fontsize=11)
    for ax, (column, title) in zip(axes[:, 0], TRAJECTORY_COLUMNS, strict=True):
        drawn = False
        for run, tel, style in tels:
            x, y = binned_mean(tel["t"], tel[column], control_interval_s(run))
            if x.size:
                ax.plot(x, y, drawstyle="steps-post", linewidth=1.2, **style)
                drawn = True
        if drawn:
            ax.legend(fontsize=8, loc="upper right")
        else:
            ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", va="center", color="0.4")
        ax.set_ylabel(title, fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[-1, 0].set_xlabel("time since run start (s)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"fidelity_{safe_name(name)}.png"
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


# --------------------------------------------------------------------------- the whole thing
def compare_runs(
    sim_dir: Path | str | Run,
    lab_dir: Path | str | Run,
    *,
    out_dir: Path | str | None = None,
    plots: bool = True,
) -> tuple[dict[str, Any], Path]:
    """Compare two results folders; write fidelity.json (and the PNGs) into ``out_dir``.

    ``out_dir`` defaults to ``lab_dir``; the plots go to ``out_dir/plots``. Returns what
    fidelity.json holds and its path. Missing or malformed files raise
    :class:`~analysis.results.ResultsFormatError` naming the file; no controller in common is
    one too. Neither folder's summary.json is touched.
    """
    # a folder, or one the caller already read (the command line does, to print its warnings)
    sim = sim_dir if isinstance(sim_dir, Run) else load_run(sim_dir)
    lab = lab_dir if isinstance(lab_dir, Run) else load_run(lab_dir)
    sim_summary = summarize_run(sim, write=False)
    lab_summary = summarize_run(lab, write=False)
    result = compare_summaries(sim_summary, lab_summary)
    if not result["controllers"]:
        raise ResultsFormatError(
            lab.path,
            f"no controller in common with {sim.path} (sim has: {', '.join(sim.controller_names)}; "
            f"lab has: {', '.join(lab.controller_names)})",
        )
    out = Path(out_dir) if out_dir is not None else lab.path
    plot_files: dict[str, str] = {}
    if plots:
        for name in result["controllers"]:  # check every telemetry.csv before drawing anything
            _telemetry(sim, name)
            _telemetry(lab, name)
        for name in result["controllers"]:
            path = plot_trajectories(sim, lab, name, out / "plots")
            plot_files[name] = path.relative_to(out).as_posix()
    result.update(
        {
            "sim_dir": str(sim.path),
            "lab_dir": str(lab.path),
            "sim_mode": sim.info.get("mode"),
            "lab_mode": lab.info.get("mode"),
            "scenario": {"sim": sim.scenario_name, "lab": lab.scenario_name},
            "plots": plot_files,
        }
    )
    path = write_json(out / FIDELITY_FILE, result, sig_digits=6)
    return result, path


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100.0 * float(value):.1f}%"


def _num(value: Any) -> str:
    return "–" if value is None else f"{float(value):.4g}"


def fidelity_tables(result: Mapping[str, Any]) -> list[RenderableType]:
    """Rich renderables for the terminal: per controller × metric, then medians and ranking."""
    from rich.table import Table as RichTable
    from rich.text import Text

    detail = RichTable(title="simulator fidelity — per controller", header_style="bold")
    for heading, justify in (
        ("metric", "left"),
        ("controller", "left"),
        ("sim", "right"),
        ("lab", "right"),
        ("|lab−sim|", "right"),
        ("APE", "right"),
    ):
        detail.add_column(heading, justify=justify)  # type: ignore[arg-type]
    for m in result["metrics"]:
        for n in result["controllers"]:
            e = result["per_controller"][n][m]
            ape = "n/a" if e["missing"] else ("sim=0" if e["ape"] is None else _pct(e["ape"]))
            detail.add_row(m, n, _num(e["sim"]), _num(e["lab"]), _num(e["abs_error"]), ape)
        detail.add_section()
    medians = RichTable(
        title=f"median APE per metric (target ≤ {_pct(result['target_median_ape'])})", header_style="bold"
    )
    for heading in ("metric", "median APE", "n", "sim=0", "missing", "target"):
        medians.add_column(heading, justify="left" if heading == "metric" else "right")
    for m in result["metrics"]:
        s = result["per_metric"][m]
        ok = s["within_target"]
        mark = Text("–") if ok is None else Text("met", style="green") if ok else Text("missed", style="red")
        medians.add_row(m, _pct(s["median_ape"]), str(s["n"]), str(s["n_sim_zero"]), str(s["n_missing"]), mark)
    r = result["ranking"]
    tau = "–" if r["kendall_tau"] is None else f"{r['kendall_tau']:.3f}"
    ranking = Text.assemble(
        "ranking (QoE, ties within 0.005 by wasted tokens) — sim: ",
        ", ".join(r["sim_ranking"]),
        "; lab: ",
        ", ".join(r["lab_ranking"]),
        "\nsame best controller: ",
        ("yes" if r["same_best"] else "no", "green" if r["same_best"] else "red"),
        f" (sim {r['sim_best']}, lab {r['lab_best']}); Kendall tau {tau}",
    )
    if not r["same_best"] and r.get("best_within_ties"):
        ranking.append(f"\n  within the ties (QoE within 0.005, waste within 0.5 points): sim "
                       f"{{{', '.join(r['sim_tied_best'])}}}, lab {{{', '.join(r['lab_tied_best'])}}} -- each "
                       "best is among the other's", style="yellow")
    out: list[RenderableType] = [detail, medians, ranking]
    if result["only_sim"] or result["only_lab"]:
        out.append(
            Text(
                f"not compared — only in sim: {', '.join(result['only_sim']) or '–'}; "
                f"only in lab: {', '.join(result['only_lab']) or '–'}"
            )
        )
    return out
