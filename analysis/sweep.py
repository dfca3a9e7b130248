"""A sweep's files, its aggregation across seeds, its table and its figures.

``python -m sim sweep SWEEP.yaml`` (:mod:`sim.sweep`) runs a base scenario once per cell of a grid
(the cartesian product of the values of some scenario keys), per seed, with every controller of
the sweep on common random numbers, and writes into its folder:

* ``cells/<cell>/seed-<s>/``: one ordinary results folder (run.json, summary.json, one folder per
  controller) per cell and seed;
* ``sweep.csv``: one row per cell x controller x seed -- ``cell``, each grid key, ``controller``,
  ``seed``, then every summary metric (:data:`analysis.metrics.METRIC_KEYS`, and the prefix cache's
  :data:`analysis.metrics.CACHE_METRIC_KEYS` when a cell keeps a prefix cache); rows are appended
  as runs finish and the file is rewritten in grid order at the end, so a resumed sweep's file is
  the same as an uninterrupted one's;
* ``sweep.json``: per cell x controller x metric the mean over seeds, its 95% confidence interval
  by Student's t (:func:`t_interval`) and n;
* ``run.json`` with ``mode: sweep``, the grid, the cells and which (cell, seed) runs finished.

This module reads and aggregates those files (analysis never imports sim); ``python -m analysis
DIR`` on a sweep folder draws each metric against the first grid key, one line per controller
with its 95% band, one panel per value of the other keys (:func:`plot_sweep`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.metrics import CACHE_METRIC_KEYS, METRIC_KEYS
from analysis.results import ResultsFormatError, read_growing_csv, read_json, to_jsonable
from analysis.style import PALETTE, safe_name

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table as RichTable

__all__ = [
    "CI_LEVEL",
    "SWEEP_CSV",
    "SWEEP_JSON",
    "SWEEP_MODE",
    "TABLE_METRICS",
    "aggregate",
    "csv_columns",
    "is_sweep_folder",
    "plot_sweep",
    "read_sweep_csv",
    "report_sweep",
    "sweep_metrics",
    "sweep_table",
    "t_interval",
    "table_metrics",
    "value_text",
]

SWEEP_CSV = "sweep.csv"
SWEEP_JSON = "sweep.json"
SWEEP_MODE = "sweep"
CI_LEVEL = 0.95
#: the metrics the printed table shows (every metric is in sweep.json and has a figure).
TABLE_METRICS: tuple[str, ...] = ("qoe_mean", "slo_attainment", "ttft_p99_s", "waste_frac", "effective_tps")
_TEXT_COLUMNS = ("cell", "controller")


def csv_columns(grid_keys: Sequence[str], metrics: Sequence[str] = METRIC_KEYS) -> list[str]:
    """sweep.csv's header: cell, each grid key, controller, seed, every summary metric (``metrics``: the
    prefix cache's too when the sweep's scenarios keep one, :func:`sweep_metrics`)."""
    return ["cell", *grid_keys, "controller", "seed", *metrics]


def sweep_metrics(prefix_cache: bool) -> tuple[str, ...]:
    """The metrics a sweep's rows carry: every summary metric, and the prefix cache's counts
    (:data:`analysis.metrics.CACHE_METRIC_KEYS`) when any of its scenarios keeps a prefix cache."""
    return (*METRIC_KEYS, *CACHE_METRIC_KEYS) if prefix_cache else METRIC_KEYS


def value_text(value: Any) -> str:
    """A grid value as sweep.csv and the figures show it: scalars as written, anything else as compact JSON."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) or value is None:
        return json.dumps(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------- confidence intervals
def t_interval(values: Sequence[float | None], level: float = CI_LEVEL) -> dict[str, Any]:
    """Mean and two-sided ``level`` confidence interval of the mean of ``values`` (None left out) by
    Student's t: mean +- t(1 - (1 - level)/2, n - 1) x s / sqrt(n), s the sample standard deviation
    (n - 1 in the denominator). With one value the interval is unknown (None); with none, so is the mean."""
    from scipy.stats import t as student_t

    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    out: dict[str, Any] = {"mean": None, "ci_low": None, "ci_high": None, "half_width": None, "n": n}
    if n == 0:
        return out
    mean = math.fsum(xs) / n
    out["mean"] = mean
    if n >= 2:
        sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
        half = float(student_t.ppf(1.0 - (1.0 - level) / 2.0, n - 1)) * sd / math.sqrt(n)
        out.update(ci_low=mean - half, ci_high=mean + half, half_width=half)
    return out


def aggregate(rows: Sequence[Mapping[str, Any]], cells: Sequence[Mapping[str, Any]],
              controllers: Sequence[str], metrics: Sequence[str] = METRIC_KEYS) -> list[dict[str, Any]]:
    """sweep.json's ``cells``: for each cell (``{"id", "values"}``, grid order) its ``controllers``
    mapping entry -> metric -> :func:`t_interval` over the seeds of ``rows``, 6 significant digits.
    A cell or controller with no row yet is left out."""
    by_key: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        by_key[(str(row["cell"]), str(row["controller"]))].append(row)
    out = []
    for cell in cells:
        per_ctrl = {}
        for entry in controllers:
            seeds = by_key.get((str(cell["id"]), entry))
            if seeds:
                per_ctrl[entry] = {m: t_interval([r.get(m) for r in seeds]) for m in metrics}
                per_ctrl[entry]["seeds"] = sorted(int(r["seed"]) for r in seeds)
        if per_ctrl:
            out.append({"id": cell["id"], "values": dict(cell["values"]), "controllers": per_ctrl})
    result: list[dict[str, Any]] = to_jsonable(out, 6)
    return result


# --------------------------------------------------------------------------- reading the files
def is_sweep_folder(path: Path) -> bool:
    """Whether ``path`` holds a sweep's run.json (``mode: sweep``)."""
    try:
        info = json.loads((Path(path) / "run.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(info, dict) and info.get("mode") == SWEEP_MODE


def read_sweep_csv(path: Path | str, grid_keys: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of sweep.csv: cell, controller and the grid keys as text, seed an int, every metric a
    float or None (empty). A last row cut off mid-write is dropped; any other bad row is a
    :class:`ResultsFormatError` naming the file, line and column."""
    path = Path(path)
    header, table = read_growing_csv(path, ("cell", *grid_keys, "controller", "seed"))
    text_cols = set(_TEXT_COLUMNS) | set(grid_keys)
    rows = []
    for line, cells in table:
        row: dict[str, Any] = {}
        for name, cell in zip(header, cells, strict=True):
            if name in text_cols:
                row[name] = cell
                continue
            try:
                value = float(cell) if cell.strip() else None
            except ValueError:
                raise ResultsFormatError(path, f"not a number: {cell[:40]!r}", column=name, line=line) from None
            if value is not None and not math.isfinite(value):
                raise ResultsFormatError(path, f"not a finite number: {cell!r}", column=name, line=line)
            if name == "seed":
                if value is None or value != int(value) or value < 0:
                    raise ResultsFormatError(path, f"not a non-negative integer: {cell!r}", column=name, line=line)
                row[name] = int(value)
            else:
                row[name] = value
        rows.append(row)
    return rows


def _sweep_info(folder: Path) -> dict[str, Any]:
    """run.json of a sweep, its shape checked: grid (key -> values), cells, controllers."""
    path = folder / "run.json"
    info = read_json(path)
    grid = info.get("grid")
    keys = info.get("grid_keys")
    cells = info.get("cells")
    ctrls = info.get("controllers")
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ResultsFormatError(path, "expected a mapping of key -> non-empty list of values", key="grid")
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(grid):
        raise ResultsFormatError(path, "expected the grid's keys, in the sweep file's order", key="grid_keys")
    info["grid"] = {k: grid[k] for k in keys}  # JSON sorts keys: back to the sweep file's order
    if not isinstance(cells, list) or not all(isinstance(c, dict) and isinstance(c.get("id"), str)
                                              and isinstance(c.get("values"), dict) for c in cells):
        raise ResultsFormatError(path, "expected a list of {id, values}", key="cells")
    if not isinstance(ctrls, list) or not all(isinstance(c, str) for c in ctrls):
        raise ResultsFormatError(path, "expected a list of controller entries", key="controllers")
    return info


# --------------------------------------------------------------------------- the table
def _pm(stat: Mapping[str, Any]) -> str:
    mean, half = stat.get("mean"), stat.get("half_width")
    if mean is None:
        return "-"
    return f"{mean:.4g}" if half is None else f"{mean:.4g} ± {half:.2g}"


def table_metrics(cells: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The table's columns: :data:`TABLE_METRICS`, and the cache hit rate when the cells have it."""
    has_cache = any("cache_hit_rate" in m for c in cells for m in c.get("controllers", {}).values())
    return (*TABLE_METRICS, "cache_hit_rate") if has_cache else TABLE_METRICS


def sweep_table(cells: Sequence[Mapping[str, Any]], grid_keys: Sequence[str],
                metrics: Sequence[str] | None = None) -> RichTable:
    """Per cell and controller: the mean over seeds ± the 95% CI half-width of ``metrics`` (default:
    :func:`table_metrics`)."""
    from rich.table import Table

    metrics = table_metrics(cells) if metrics is None else metrics
    table = Table(title=f"sweep: mean over seeds ± {CI_LEVEL:.0%} CI (Student t)")
    for key in grid_keys:
        table.add_column(key)
    table.add_column("controller")
    table.add_column("n", justify="right")
    for m in metrics:
        table.add_column(m, justify="right")
    for cell in cells:
        for entry, stats in cell["controllers"].items():
            n = max((s["n"] for m, s in stats.items() if m in metrics), default=0)
            table.add_row(*(value_text(cell["values"].get(k)) for k in grid_keys), entry, str(n),
                          *(_pm(stats[m]) for m in metrics))
    return table


# --------------------------------------------------------------------------- the figures
def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def plot_sweep(cells: Sequence[Mapping[str, Any]], grid: Mapping[str, Sequence[Any]], controllers: Sequence[str],
               out_dir: Path, styles: Mapping[str, tuple[str, str]] | None = None,
               metrics: Sequence[str] = METRIC_KEYS) -> list[Path]:
    """One figure per metric, ``out_dir/sweep_<metric>.png``: the metric (mean over seeds) against the
    first grid key, one line per controller with its 95% band (Student t), one panel per combination
    of the other keys' values (for a 2-D grid: per value of the second key). ``styles``: entry ->
    (label, colour). A metric no cell has a value of gets no figure. Returns the paths written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = list(grid)
    x_key = keys[0] if keys else None
    xs = list(grid[x_key]) if x_key else [None]
    numeric = bool(x_key) and all(_is_number(v) for v in xs)
    xpos = [float(v) for v in xs] if numeric else list(range(len(xs)))
    panels = list(product(*(grid[k] for k in keys[1:])))
    lookup = {(value_text(c["values"].get(x_key)) if x_key else "",
               tuple(value_text(c["values"].get(k)) for k in keys[1:])): c for c in cells}
    styles = styles or {}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for metric in metrics:
        if not any(s.get(metric, {}).get("mean") is not None for c in cells for s in c["controllers"].values()):
            continue
        ncols = min(4, len(panels))
        nrows = math.ceil(len(panels) / ncols)
        fig = Figure(figsize=(4.2 * ncols + 1.0, 3.4 * nrows + 0.6), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
        for ax, combo in zip(axes, panels, strict=False):
            combo_text = tuple(value_text(v) for v in combo)
            for i, entry in enumerate(controllers):
                label, color = styles.get(entry, (entry, PALETTE[i % len(PALETTE)]))
                mean, lo, hi = [], [], []
                for x in xs:
                    cell = lookup.get((value_text(x) if x_key else "", combo_text))
                    stat = (cell or {}).get("controllers", {}).get(entry, {}).get(metric, {})
                    mean.append(math.nan if stat.get("mean") is None else stat["mean"])
                    lo.append(math.nan if stat.get("ci_low") is None else stat["ci_low"])
                    hi.append(math.nan if stat.get("ci_high") is None else stat["ci_high"])
                ax.plot(xpos, mean, marker="o", ms=4, lw=1.5, color=color, label=label)
                ax.fill_between(xpos, lo, hi, color=color, alpha=0.18, lw=0)
            if combo:
                ax.set_title(", ".join(f"{k}={value_text(v)}" for k, v in zip(keys[1:], combo, strict=True)),
                             fontsize=9)
            ax.set_xlabel(x_key or "")
            if not numeric:
                ax.set_xticks(xpos, [value_text(x) if x_key else "base" for x in xs], rotation=20, fontsize=8)
            ax.grid(alpha=0.3)
        for ax in axes[len(panels):]:
            ax.set_visible(False)
        axes[0].set_ylabel(metric)
        axes[0].legend(fontsize=7, loc="best")
        fig.suptitle(f"{metric}: mean over seeds, band = {CI_LEVEL:.0%} CI (Student t)")
        path = out_dir / f"sweep_{safe_name(metric)}.png"
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- python -m analysis DIR
def _styles(info: Mapping[str, Any], controllers: Sequence[str]) -> dict[str, tuple[str, str]]:
    from matplotlib.colors import is_color_like

    given = info.get("controller_info") if isinstance(info.get("controller_info"), dict) else {}
    out = {}
    for i, entry in enumerate(controllers):
        e = given.get(entry) if isinstance(given.get(entry), dict) else {}
        color = e.get("color")
        out[entry] = (str(e.get("label") or entry),
                      color if isinstance(color, str) and is_color_like(color) else PALETTE[i % len(PALETTE)])
    return out


def report_sweep(folder: Path, plots: bool, console: Console, warn: Callable[[Sequence[str]], None]) -> int:
    """``python -m analysis DIR`` on a sweep folder: print the table and draw DIR/plots/sweep_*.png from
    sweep.csv. An unfinished sweep is analysed for the runs it finished (a warning names how many are
    missing); none finished is a :class:`ResultsFormatError` (exit 2)."""
    info = _sweep_info(folder)
    grid = info["grid"]
    controllers = info["controllers"]
    rows = read_sweep_csv(folder / SWEEP_CSV, list(grid))
    if not rows:
        raise ResultsFormatError(folder / SWEEP_CSV, "no finished run yet: nothing to analyse")
    seeds = info.get("seeds") if isinstance(info.get("seeds"), list) else []
    expected = len(info["cells"]) * len(seeds)
    done = len({(r["cell"], r["seed"]) for r in rows})
    if info.get("status") != "complete" or done < expected:
        warn([f"{folder}: incomplete sweep (status {info.get('status')}): {done} of {expected} runs (cell x seed) "
              f"finished; analysing those (python -m sim sweep ... --resume finishes it)"])
    cells = aggregate(rows, info["cells"], controllers, sweep_metrics(any(k in rows[0] for k in CACHE_METRIC_KEYS)))
    console.print(sweep_table(cells, list(grid)))
    if plots:
        paths = plot_sweep(cells, grid, controllers, folder / "plots", _styles(info, controllers))
        console.print(f"figures: {len(paths)} in {folder / 'plots'} (sweep_<metric>.png)", highlight=False,
                      soft_wrap=True)
    return 0
