"""A capacity search's files, its table and its figure (``python -m analysis capacity DIR``).

``python -m sim capacity`` (:mod:`sim.capacity`) bisects the arrival rate of a scenario for each
scheduler x controller pair and writes, into its folder:

* ``capacity.csv``: one row per probe and seed -- :data:`KEY_COLUMNS` then the run's summary
  metrics (:data:`METRIC_COLUMNS` first, the other keys of summary.json after), flushed as it goes;
* ``capacity.json``: per pair the capacity (largest rate factor at which every SLO held on the
  mean over seeds), the bracket around it, each probe and the SLO means there, the seeds, the SLO;
* ``run.json`` with ``mode: capacity``.

This module reads those files only (analysis never imports sim). Its figure is Andes' (arXiv
2404.16283, Fig. 11: QoE against request rate, one line per scheduler): mean QoE, P99 TTFT and
effective throughput (TokenFlow's, arXiv 2510.02758: tokens the readers displayed per second)
against the request rate, one line per pair, each point the mean over seeds of the probes at that
rate, each pair's capacity marked, and the SLO threshold drawn on the panel of its metric.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.metrics import METRIC_KEYS
from analysis.results import ResultsFormatError, read_growing_csv, read_json
from analysis.style import PALETTE

if TYPE_CHECKING:
    from rich.table import Table as RichTable

__all__ = [
    "BASELINE",
    "CAPACITY_CSV",
    "CAPACITY_JSON",
    "CSV_COLUMNS",
    "KEY_COLUMNS",
    "METRIC_COLUMNS",
    "PLOT_FILE",
    "CurvePoint",
    "capacity_table",
    "curves",
    "pair_label",
    "plot_capacity",
    "read_capacity_csv",
    "read_capacity_json",
]

CAPACITY_CSV = "capacity.csv"
CAPACITY_JSON = "capacity.json"
PLOT_FILE = "capacity.png"
#: the pair every other is compared with: vLLM's first come first served, generating unpaced.
BASELINE = ("fcfs", "unpaced")
KEY_COLUMNS: tuple[str, ...] = ("scheduler", "controller", "seed", "rate_factor", "rate_per_s")
#: the metrics the brief of issue #12 names first; every other summary metric follows them.
METRIC_COLUMNS: tuple[str, ...] = (
    "qoe_mean", "ttft_p99_s", "effective_tps", "slo_attainment", "streams", "completed", "abandoned",
    "gpu_busy_frac")
CSV_COLUMNS: tuple[str, ...] = KEY_COLUMNS + METRIC_COLUMNS + tuple(k for k in METRIC_KEYS if k not in METRIC_COLUMNS)
_TEXT = ("scheduler", "controller")
#: the figure's panels: metric, axis label.
PANELS: tuple[tuple[str, str], ...] = (
    ("qoe_mean", "mean QoE"), ("ttft_p99_s", "P99 TTFT (s)"), ("effective_tps", "effective throughput (tok/s)"))


def pair_label(scheduler: str, controller: str) -> str:
    return f"{scheduler}+{controller}"


def read_capacity_csv(path: Path | str) -> list[dict[str, Any]]:
    """The rows of capacity.csv: scheduler and controller as text, seed as int, every other cell a float
    or None (empty). A last row cut off mid-write (no newline at its end) is dropped; any other bad
    row is a :class:`ResultsFormatError` naming the file, line and column."""
    path = Path(path)
    header, rows = read_growing_csv(path, KEY_COLUMNS)
    out: list[dict[str, Any]] = []
    for line, cells in rows:
        row: dict[str, Any] = {}
        for name, cell in zip(header, cells, strict=True):
            cell = cell.strip()
            if name in _TEXT:
                row[name] = cell
                continue
            try:
                value = float(cell) if cell else None
            except ValueError:
                raise ResultsFormatError(path, f"not a number: {cell[:40]!r}", column=name, line=line) from None
            if value is not None and not math.isfinite(value):
                raise ResultsFormatError(path, f"not a finite number: {cell!r}", column=name, line=line)
            if name == "seed" or name in ("rate_factor", "rate_per_s"):
                if value is None or (name == "seed" and value != int(value)) or value < 0:
                    raise ResultsFormatError(path, f"must be a number >= 0{' (an integer)' * (name == 'seed')}, "
                                             f"got {cell!r}", column=name, line=line)
                value = int(value) if name == "seed" else value
            row[name] = value
        out.append(row)
    return out


def read_capacity_json(path: Path | str) -> dict[str, Any]:
    """capacity.json, checked for the keys the table reads."""
    info = read_json(path)
    pairs = info.get("pairs")
    if not isinstance(pairs, list) or not all(isinstance(p, Mapping) for p in pairs):
        raise ResultsFormatError(path, "must be a list of objects", key="pairs")
    for i, p in enumerate(pairs):
        for key, kind in (("scheduler", str), ("controller", str), ("capacity_factor", (int, float))):
            if not isinstance(p.get(key), kind) or isinstance(p.get(key), bool):
                raise ResultsFormatError(path, f"pairs[{i}] has no {key} of the right type", key=key)
    return info


@dataclass(frozen=True)
class CurvePoint:
    rate_factor: float
    rate_per_s: float
    seeds: int
    means: dict[str, float | None]  # metric -> mean over the seeds probed at this rate (None if any had none)


def curves(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], list[CurvePoint]]:
    """Per pair (in order of first appearance), one point per rate probed, by increasing rate."""
    grouped: dict[tuple[str, str], dict[float, list[Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        grouped[(row["scheduler"], row["controller"])][row["rate_factor"]].append(row)
    out: dict[tuple[str, str], list[CurvePoint]] = {}
    for pair, by_rate in grouped.items():
        points = []
        for k in sorted(by_rate):
            probe = by_rate[k]
            means: dict[str, float | None] = {}
            for metric, _ in PANELS:
                values = [r.get(metric) for r in probe]
                means[metric] = None if any(v is None for v in values) else math.fsum(values) / len(values)
            points.append(CurvePoint(k, float(probe[0]["rate_per_s"]), len(probe), means))
        out[pair] = points
    return out


def _number(x: Any) -> float | None:
    """``x`` when it is a finite number (capacity.json is read, not trusted), else None."""
    ok = isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
    return float(x) if ok else None


def _list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else []


def _fmt(x: Any, digits: int = 3) -> str:
    value = _number(x)
    return "-" if value is None else f"{value:.{digits}g}"


def capacity_table(info: Mapping[str, Any]) -> RichTable:
    """The largest sustainable rate per scheduler x controller (capacity.json), with the ratio to
    fcfs + unpaced when that pair is in the run."""
    from rich.table import Table

    pairs = [p for p in _list(info.get("pairs")) if isinstance(p, Mapping)]
    base = next((p for p in pairs if (p.get("scheduler"), p.get("controller")) == BASELINE), None)
    slo = " and ".join(str(s) for s in _list(info.get("slo"))) or "the SLO"
    seeds = _list(info.get("seeds"))
    title = f"Largest sustainable arrival rate with {slo} (mean over {len(seeds)} seed{'s' * (len(seeds) != 1)})"
    if info.get("status") not in (None, "complete"):
        title += f" [{info.get('status')}: searches cut short]"
    table = Table(title=title)
    for name, justify in (("scheduler", "left"), ("controller", "left"), ("rate factor", "right"),
                          ("rate (req/s)", "right"), ("bracket (req/s)", "right"), ("probes", "right"),
                          ("x fcfs+unpaced", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    base_cap = _number(base.get("capacity_factor")) if base is not None else None
    for p in pairs:
        factor = _number(p.get("capacity_factor"))
        rate = _number(p.get("capacity_rate_per_s"))
        lo, hi = [*_list(p.get("bracket_rate_per_s")), None, None][:2]
        outcome = p.get("outcome")
        if outcome == "unbounded":
            bracket = f">= {_fmt(lo)} (never failed)"
        elif outcome == "none":
            bracket = f"< {_fmt(hi)} (never held)"
        elif outcome == "searching":
            bracket = f"[{_fmt(lo)}, {_fmt(hi)}] (unfinished)"
        else:
            bracket = f"[{_fmt(lo)}, {_fmt(hi)}]"
        if outcome == "searching" and lo is None:  # nothing held yet: no capacity to show
            factor = rate = None
        ratio = "-"
        if base_cap and factor is not None:
            ratio = f"{factor / base_cap:.2f}"
        table.add_row(str(p.get("scheduler")), str(p.get("controller")), _fmt(factor, 4), _fmt(rate, 4), bracket,
                      str(len(_list(p.get("probes")))), ratio)
    return table


#: line style and marker per scheduler (in order of appearance): pairs that coincide stay visible.
SCHEDULER_STYLES: tuple[tuple[str, str], ...] = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))


def plot_capacity(rows: Sequence[Mapping[str, Any]], info: Mapping[str, Any] | None, out_dir: Path,
                  colors: Mapping[str, str] | None = None) -> Path:
    """Draw DIR/plots/capacity.png (see the module text); returns its path. A controller has one colour
    (``colors``: run.json's ``controller_info``, else the palette), a scheduler one line style."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import is_color_like
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(PANELS), squeeze=False)[0]
    pairs = [p for p in _list((info or {}).get("pairs")) if isinstance(p, Mapping)]
    capacity = {(p.get("scheduler"), p.get("controller")): p for p in pairs}
    slos = [s for s in _list((info or {}).get("slo_parsed")) if isinstance(s, Mapping)]
    data = curves(rows)
    ctrls = list(dict.fromkeys(c for _, c in data))
    scheds = list(dict.fromkeys(s for s, _ in data))
    for pair, points in data.items():
        wanted = (colors or {}).get(pair[1])
        color = wanted if isinstance(wanted, str) and is_color_like(wanted) else PALETTE[ctrls.index(pair[1]) % 10]
        ls, marker = SCHEDULER_STYLES[scheds.index(pair[0]) % len(SCHEDULER_STYLES)]
        x = [p.rate_per_s for p in points]
        cap = _number(capacity.get(pair, {}).get("capacity_rate_per_s"))
        has_cap = cap is not None and cap > 0
        label = pair_label(*pair) + (f" (capacity {cap:.3g}/s)" if has_cap else "")
        for ax, (metric, _) in zip(axes, PANELS, strict=True):
            y = [math.nan if p.means[metric] is None else p.means[metric] for p in points]
            ax.plot(x, y, ls=ls, marker=marker, ms=4, lw=1.5, color=color, label=label)
            if has_cap:
                ax.axvline(cap, color=color, lw=0.8, ls=ls, alpha=0.5)
    for i, (ax, (metric, ylabel)) in enumerate(zip(axes, PANELS, strict=True)):
        lines = [ax.axhline(s["threshold"], color="0.3", lw=1.0, ls=(0, (5, 3)), label=f"SLO {s.get('text', '')}")
                 for s in slos if s.get("metric") == metric and _number(s.get("threshold")) is not None]
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7, loc="best")
        elif lines:
            ax.legend(handles=lines, fontsize=7, loc="best")
    scenario = (info or {}).get("scenario", "")
    fig.suptitle(f"Capacity search{': ' + str(scenario) if scenario else ''} "
                 "(points: mean over seeds; vertical lines: each pair's capacity)")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / PLOT_FILE
    fig.savefig(path, dpi=110)
    return path
