"""From a run's files to the numbers that compare controllers.

Everything here is recomputed from the token timestamps and the stream table, so the summary
means the same thing whether the simulator or live mode wrote the files (the ``qoe``,
``stall_s`` and ``ttft_s`` columns of streams.csv are what the writer thought; they are not
trusted here).

Per stream: **QoE** (:func:`analysis.qoe.andes_qoe`), **stall** (time the reader waited for a
token that was due, :func:`analysis.qoe.stream_stall_s`), **TTFT** (arrival to first token on
screen). Per controller (keys of summary.json):

* ``streams``, ``completed``, ``abandoned``, ``cancelled`` — counts by outcome.
* ``ttft_p50_s``, ``ttft_p99_s`` — over streams that showed at least one token.
* ``itl_p50_s``, ``itl_p99_s`` — gaps between consecutive token arrivals at the client
  (``t_received``), pooled over all streams.
* ``stall_ratio`` — Σ stall / Σ (time from a stream's first token on screen to its end); the
  share of "reading time" spent staring at a stalled screen.
* ``qoe_mean``, ``qoe_p10`` — over all streams (a stream that showed nothing scores 0).
* ``slo_attainment`` — share of streams with QoE >= ``slo_qoe`` (run.json, default 0.9).
* ``tokens_generated``, ``tokens_displayed``, ``tokens_wasted``, ``waste_frac`` — generated
  tokens never shown to anyone were wasted GPU work.
* ``run_time_s`` — the latest ``end_s`` of any stream. **Run time** for the rates below.
* ``effective_tps`` — tokens displayed / run time: useful output per second.
* ``gpu_busy_frac`` — Σ batch_duration (server.csv) / run time; with ``server.replicas`` N > 1,
  Σ batch_duration over replicas.csv / (N × run time): the mean busy fraction of a GPU. Null without
  either file.
* ``peak_queued_bytes`` — most bytes written but not yet acked for one stream
  (telemetry.csv); ``mean_rate_tps`` — mean paced rate over telemetry rows that were paced.
* Only when the node looked prefixes up in a prefix cache (``server.prefix_cache``; events.csv's
  ``cache_hit`` / ``cache_miss`` rows): ``cache_lookups``, ``cache_hits``, ``cache_hit_rate``,
  ``cache_prefill_tokens_saved`` (prefix tokens the hits did not prefill) and ``cache_evictions``.

Quantiles use numpy's "linear" rule. A metric over an empty set is ``None`` (JSON null).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.qoe import StallIntervals, stall_intervals, stream_qoe
from analysis.results import (
    REPLICAS_COLUMNS,
    REPLICAS_CSV,
    ControllerRun,
    ResultsFormatError,
    Run,
    Table,
    load_controller_dir,
    load_run,
    read_csv,
    to_jsonable,
    write_json,
)

if TYPE_CHECKING:
    from rich.table import Table as RichTable

__all__ = [
    "METRIC_KEYS",
    "QOE_TIE",
    "TABLE_COLUMNS",
    "TIE_RULE",
    "WASTE_TIE",
    "StreamMetrics",
    "TableColumn",
    "best_text",
    "format_table",
    "format_value",
    "rank_controllers",
    "rank_labels",
    "ranking_text",
    "stream_intervals",
    "stream_metrics",
    "stream_tokens",
    "summarize_controller",
    "summarize_run",
    "tied_best",
]

Metric = float | int | None

#: every key summarize_controller returns, in a sensible reading order.
METRIC_KEYS: tuple[str, ...] = (
    "streams",
    "completed",
    "abandoned",
    "cancelled",
    "qoe_mean",
    "qoe_p10",
    "slo_attainment",
    "ttft_p50_s",
    "ttft_p99_s",
    "itl_p50_s",
    "itl_p99_s",
    "stall_ratio",
    "tokens_generated",
    "tokens_displayed",
    "tokens_wasted",
    "waste_frac",
    "run_time_s",
    "effective_tps",
    "gpu_busy_frac",
    "peak_queued_bytes",
    "mean_rate_tps",
)


@dataclass(frozen=True, eq=False)
class StreamMetrics:
    """Per-stream results recomputed from the files, one array entry per row of streams.csv."""

    stream_id: np.ndarray
    path: np.ndarray
    outcome: np.ndarray
    arrival_s: np.ndarray
    end_s: np.ndarray
    qoe: np.ndarray
    stall_s: np.ndarray
    ttft_s: np.ndarray  # NaN when nothing was displayed
    first_display_s: np.ndarray  # run clock; NaN when nothing was displayed
    displayed_tokens: np.ndarray
    itl_s: np.ndarray  # pooled inter-arrival gaps at the client, all streams

    def __len__(self) -> int:
        return int(self.stream_id.size)

    def index_of(self, stream_id: str) -> int:
        hits = np.flatnonzero(self.stream_id == stream_id)
        if hits.size == 0:
            raise KeyError(stream_id)
        return int(hits[0])


_TOKENS_CACHE: weakref.WeakKeyDictionary[ControllerRun, dict[str, np.ndarray]] = weakref.WeakKeyDictionary()
_METRICS_CACHE: weakref.WeakKeyDictionary[ControllerRun, StreamMetrics] = weakref.WeakKeyDictionary()


def stream_tokens(ctrl: ControllerRun) -> Mapping[str, np.ndarray]:
    """stream_id -> row numbers of its tokens in tokens.csv, ordered by ``idx``."""
    cached = _TOKENS_CACHE.get(ctrl)
    if cached is not None:
        return cached
    ids = ctrl.tokens["stream_id"]
    order = np.lexsort((ctrl.tokens["idx"], ids))
    groups: dict[str, np.ndarray] = {}
    if order.size:
        sorted_ids = ids[order]
        cuts = np.flatnonzero(sorted_ids[1:] != sorted_ids[:-1]) + 1
        for chunk in np.split(order, cuts):
            groups[str(ids[chunk[0]])] = chunk
    _TOKENS_CACHE[ctrl] = groups
    return groups


def _stream_value(
    streams: Table, column: str, row: int, *, positive: bool = False, at_least: float | None = None
) -> float:
    value = float(streams[column][row])
    ok = math.isfinite(value) and (not positive or value > 0) and (at_least is None or value >= at_least)
    if not ok:
        need = "a positive number" if positive else f"a number >= {at_least:g}" if at_least is not None else "a number"
        raise ResultsFormatError(
            streams.path,
            f"stream {str(streams['stream_id'][row])!r}: {'empty' if math.isnan(value) else value!r} is not {need}",
            column=column,
            line=row + 2,
        )
    return value


def stream_intervals(ctrl: ControllerRun, row: int) -> StallIntervals:
    """Stall intervals of the stream in row ``row`` of streams.csv."""
    streams = ctrl.streams
    sid = str(streams["stream_id"][row])
    rows = stream_tokens(ctrl).get(sid, np.zeros(0, dtype=np.intp))
    r = _stream_value(streams, "reading_tps", row, positive=True)
    return stall_intervals(
        r,
        ctrl.tokens["t_received"][rows],
        ctrl.tokens["t_displayed"][rows],
        end_s=float(streams["end_s"][row]),
        abandoned=streams["outcome"][row] == "abandoned",
    )


def stream_metrics(ctrl: ControllerRun) -> StreamMetrics:
    """QoE, stall, TTFT per stream and the pooled inter-token gaps (cached per loaded run)."""
    cached = _METRICS_CACHE.get(ctrl)
    if cached is not None:
        return cached
    streams, tokens = ctrl.streams, ctrl.tokens
    groups = stream_tokens(ctrl)
    n = len(streams)
    qoe = np.zeros(n)
    stall = np.zeros(n)
    first = np.full(n, np.nan)
    shown_count = np.zeros(n, dtype=np.int64)
    gaps: list[np.ndarray] = []
    t_recv, t_disp = tokens["t_received"], tokens["t_displayed"]
    empty = np.zeros(0, dtype=np.intp)
    for row in range(n):
        sid = str(streams["stream_id"][row])
        rows = groups.get(sid, empty)
        arrival = _stream_value(streams, "arrival", row)
        r = _stream_value(streams, "reading_tps", row, positive=True)
        n_tokens = int(_stream_value(streams, "output_tokens", row, at_least=1))
        ttft_e = _stream_value(streams, "ttft_expected_s", row, at_least=0)
        disp = t_disp[rows]
        end_s = float(streams["end_s"][row])
        abandoned = bool(streams["outcome"][row] == "abandoned")
        qoe[row] = stream_qoe(arrival, ttft_e, r, n_tokens, disp, end_s=end_s, abandoned=abandoned)
        stall[row] = stall_intervals(r, t_recv[rows], disp, end_s=end_s, abandoned=abandoned).total_s
        shown = disp[~np.isnan(disp)]
        shown_count[row] = shown.size
        if shown.size:
            first[row] = shown.min()
        recv = t_recv[rows]
        recv = recv[~np.isnan(recv)]
        if recv.size > 1:
            gaps.append(np.diff(recv))
    arrival_s = streams["arrival"]
    result = StreamMetrics(
        stream_id=streams["stream_id"],
        path=streams["path"],
        outcome=streams["outcome"],
        arrival_s=arrival_s,
        end_s=streams["end_s"],
        qoe=qoe,
        stall_s=stall,
        ttft_s=first - arrival_s,
        first_display_s=first,
        displayed_tokens=shown_count,
        itl_s=np.concatenate(gaps) if gaps else np.zeros(0),
    )
    _METRICS_CACHE[ctrl] = result
    return result


def _quantile(values: np.ndarray, q: float) -> float | None:
    values = values[~np.isnan(values)]
    return float(np.quantile(values, q, method="linear")) if values.size else None


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 and math.isfinite(den) else None


def _nanmax(table: Table | None, column: str) -> float | None:
    if table is None:
        return None
    values = table[column]
    values = values[~np.isnan(values)]
    return float(values.max()) if values.size else None


def summarize_controller(ctrl: ControllerRun | Path | str, slo_qoe: float = 0.9,
                         replicas: int = 1) -> dict[str, Metric]:
    """The metrics of one controller (keys: :data:`METRIC_KEYS`; see the module text). ``replicas`` is
    the run's ``server.replicas`` (its steps are in replicas.csv when it is above 1)."""
    if not isinstance(ctrl, ControllerRun):
        ctrl = load_controller_dir(ctrl)
    sm = stream_metrics(ctrl)
    n = len(sm)
    counts = {o: int(np.count_nonzero(sm.outcome == o)) for o in ("completed", "abandoned")}
    shown = ~np.isnan(sm.first_display_s)
    end = np.where(np.isnan(sm.end_s), sm.first_display_s, sm.end_s)  # unfinished: no reading time
    reading_and_stall = float(np.sum((end - sm.first_display_s)[shown]))
    tokens_generated = len(ctrl.tokens)
    tokens_displayed = int(np.count_nonzero(~np.isnan(ctrl.tokens["t_displayed"])))
    ends = sm.end_s[~np.isnan(sm.end_s)]
    run_time_s = float(ends.max()) if ends.size else None
    busy = None
    if ctrl.server is not None and run_time_s:
        busy = float(np.nansum(ctrl.server["batch_duration"])) / run_time_s
    elif replicas > 1 and run_time_s and (ctrl.path / REPLICAS_CSV).exists():
        steps = read_csv(ctrl.path / REPLICAS_CSV, REPLICAS_COLUMNS)
        busy = float(np.nansum(steps["batch_duration"])) / (replicas * run_time_s)
    rates = ctrl.telemetry["rate_tps"] if ctrl.telemetry is not None else np.zeros(0)
    rates = rates[~np.isnan(rates)]
    summary: dict[str, Metric] = {
        "streams": n,
        "completed": counts["completed"],
        "abandoned": counts["abandoned"],
        "cancelled": n - counts["completed"] - counts["abandoned"],
        "qoe_mean": float(sm.qoe.mean()) if n else None,
        "qoe_p10": _quantile(sm.qoe, 0.10),
        "slo_attainment": float(np.mean(sm.qoe >= slo_qoe)) if n else None,
        "ttft_p50_s": _quantile(sm.ttft_s, 0.50),
        "ttft_p99_s": _quantile(sm.ttft_s, 0.99),
        "itl_p50_s": _quantile(sm.itl_s, 0.50),
        "itl_p99_s": _quantile(sm.itl_s, 0.99),
        "stall_ratio": _ratio(float(np.sum(sm.stall_s[shown])), reading_and_stall),
        "tokens_generated": tokens_generated,
        "tokens_displayed": tokens_displayed,
        "tokens_wasted": tokens_generated - tokens_displayed,
        "waste_frac": _ratio(tokens_generated - tokens_displayed, tokens_generated),
        "run_time_s": run_time_s,
        "effective_tps": _ratio(tokens_displayed, run_time_s) if run_time_s is not None else None,
        "gpu_busy_frac": busy,
        "peak_queued_bytes": _nanmax(ctrl.telemetry, "queued_bytes"),
        "mean_rate_tps": float(rates.mean()) if rates.size else None,
    }
    summary.update(cache_metrics(ctrl.events))
    return summary


CACHE_METRIC_KEYS: tuple[str, ...] = (
    "cache_lookups", "cache_hits", "cache_hit_rate", "cache_prefill_tokens_saved", "cache_evictions",
)


def cache_metrics(events: Table | None) -> dict[str, Metric]:
    """The prefix cache's counts from events.csv (keys :data:`CACHE_METRIC_KEYS`); none without lookups."""
    if events is None or len(events) == 0:
        return {}
    kinds = events["event_type"]
    hit = kinds == "cache_hit"
    hits = int(np.count_nonzero(hit))
    lookups = hits + int(np.count_nonzero(kinds == "cache_miss"))
    if lookups == 0:
        return {}
    saved = sum(int(str(d).rsplit("tokens=", 1)[1]) for d in events["details"][hit])
    return {
        "cache_lookups": lookups,
        "cache_hits": hits,
        "cache_hit_rate": hits / lookups,
        "cache_prefill_tokens_saved": saved,
        "cache_evictions": int(np.count_nonzero(kinds == "cache_evict")),
    }


def replicas_of(scenario: Mapping[str, Any]) -> int:
    """``server.replicas`` of a resolved scenario (1 when it does not say)."""
    server = scenario.get("server") if isinstance(scenario, Mapping) else None
    value = server.get("replicas", 1) if isinstance(server, Mapping) else 1
    return value if isinstance(value, int) and value >= 1 else 1


def summarize_run(run: Run | Path | str, *, write: bool = True) -> dict[str, Any]:
    """Summaries of every controller of a run; written to ``DIR/summary.json`` unless ``write=False``.

    Returns exactly what the file holds: ``{"scenario": name, "controllers": {name: metrics}}``
    with floats rounded to 6 significant digits and NaN as None, so two analyses of the same
    files give byte-identical summary.json files.
    """
    if not isinstance(run, Run):
        run = load_run(run)
    slo = run.slo_qoe
    raw = {
        "scenario": run.scenario_name,
        "controllers": {c.name: summarize_controller(c, slo, replicas_of(run.scenario)) for c in run},
    }
    summary: dict[str, Any] = to_jsonable(raw, 6)
    if write:
        write_json(run.path / "summary.json", summary)
    return summary


def _sort_value(value: Any, *, higher_is_better: bool) -> float:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.inf
    return -float(value) if higher_is_better else float(value)


QOE_TIE = 0.005  # QoE differences below this are noise (nudging a parameter moves a scenario's QoE ~0.005)


def rank_controllers(summary: Mapping[str, Any], *, qoe_tie: float = QOE_TIE) -> list[str]:
    """Controller names best first. The best is, of the controllers whose ``qoe_mean`` is within
    ``qoe_tie`` of the highest, the one that wasted the fewest tokens (``tokens_wasted``, else
    ``waste_frac``; then higher QoE, then name): QoE a reader cannot tell apart is a tie, and the GPU
    time thrown away decides it. The rest are ranked the same way in turn. ``qoe_tie=0`` ranks by QoE.

    Accepts a whole summary (with a ``"controllers"`` key) or just its controllers mapping.
    Missing values rank last.
    """
    ctrls: Mapping[str, Mapping[str, Any]] = summary.get("controllers", summary)

    def qoe(name: str) -> float:
        return -_sort_value(ctrls[name].get("qoe_mean"), higher_is_better=True)  # -inf when missing

    def waste(name: str) -> float:
        m = ctrls[name]
        value = m.get("tokens_wasted")
        return _sort_value(value if value is not None else m.get("waste_frac"), higher_is_better=False)

    left = sorted(ctrls)
    ranked: list[str] = []
    while left:
        top = max(qoe(n) for n in left)
        tied = [n for n in left if qoe(n) >= top - qoe_tie] if math.isfinite(top) else left
        best = min(tied, key=lambda n: (waste(n), -qoe(n), n))
        ranked.append(best)
        left.remove(best)
    return ranked


WASTE_TIE = 0.005  # waste fractions this close (half a point of the tokens generated) are the same waste


def tied_best(summary: Mapping[str, Any], *, qoe_tie: float = QOE_TIE, waste_tie: float = WASTE_TIE) -> list[str]:
    """The controllers nobody could tell from :func:`rank_controllers`' best: QoE within ``qoe_tie`` of
    the best's and ``waste_frac`` within ``waste_tie`` of it (best first, then in rank order). When
    several controllers serve readers equally and waste equally, which of them comes first is noise;
    two runs agree on the best if each one's best is in the other's tied set."""
    ctrls: Mapping[str, Mapping[str, Any]] = summary.get("controllers", summary)
    ranked = rank_controllers(ctrls, qoe_tie=qoe_tie)
    if not ranked:
        return []

    def value(name: str, key: str) -> float | None:
        v = ctrls[name].get(key)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    best_q, best_w = value(ranked[0], "qoe_mean"), value(ranked[0], "waste_frac")
    out = [ranked[0]]
    for name in ranked[1:]:
        q, w = value(name, "qoe_mean"), value(name, "waste_frac")
        if None in (q, w, best_q, best_w):
            continue
        if abs(q - best_q) <= qoe_tie and abs(w - best_w) <= waste_tie:  # type: ignore[operator]
            out.append(name)
    return out


TIE_RULE = f"QoE within {QOE_TIE:g} and waste within {100 * WASTE_TIE:g} points"  # how a tie is said


def rank_labels(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(rank as shown, name) in :func:`rank_controllers`' order: ``"=1"`` for each controller of
    :func:`tied_best` when it holds more than one (which of them comes first is noise), else the
    position. Only the display differs from the ranking; its order is kept."""
    ctrls: Mapping[str, Mapping[str, Any]] = summary.get("controllers", summary)
    tied = set(tied_best(ctrls))
    return [("=1" if len(tied) > 1 and name in tied else str(rank), name)
            for rank, name in enumerate(rank_controllers(ctrls), start=1)]


def best_text(summary: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> str:
    """``best: NAME``, or ``best: a tie of A, B, ... (QoE within 0.005 and waste within 0.5 points)``."""
    ctrls: Mapping[str, Mapping[str, Any]] = summary.get("controllers", summary)
    tied = [(labels or {}).get(n, n) for n in tied_best(ctrls)]
    if not tied:
        return "best: none (no controllers)"
    if len(tied) == 1:
        return f"best: {tied[0]}"
    return f"best: a tie of {', '.join(tied)} ({TIE_RULE})"


def ranking_text(summary: Mapping[str, Any]) -> str:
    """The ranking as ``a > b > c``; controllers tied for the best, when they lead it, as ``a = b > c``."""
    ctrls: Mapping[str, Mapping[str, Any]] = summary.get("controllers", summary)
    ranked = rank_controllers(ctrls)
    tied = tied_best(ctrls)
    if len(tied) > 1 and set(ranked[: len(tied)]) == set(tied):
        return " > ".join([" = ".join(ranked[: len(tied)]), *ranked[len(tied):]])
    return " > ".join(ranked)


@dataclass(frozen=True)
class TableColumn:
    """One column of the comparison table: metric key, heading, how to print a value."""

    key: str
    heading: str
    fmt: str  # format spec; "%" shows a fraction as a percentage


TABLE_COLUMNS: tuple[TableColumn, ...] = (
    TableColumn("qoe_mean", "QoE mean", ".3f"),
    TableColumn("qoe_p10", "QoE p10", ".3f"),
    TableColumn("slo_attainment", "SLO att.", "%"),
    TableColumn("ttft_p50_s", "TTFT p50 s", ".3f"),
    TableColumn("ttft_p99_s", "TTFT p99 s", ".3f"),
    TableColumn("itl_p99_s", "ITL p99 s", ".3f"),
    TableColumn("stall_ratio", "stall", "%"),
    TableColumn("waste_frac", "waste", "%"),
    TableColumn("effective_tps", "eff. tok/s", ".1f"),
    TableColumn("gpu_busy_frac", "GPU busy", "%"),
    TableColumn("peak_queued_bytes", "peak queue KB", "kB"),
    TableColumn("completed", "done", "d"),
    TableColumn("abandoned", "aband.", "d"),
    TableColumn("cancelled", "canc.", "d"),
)


def format_value(value: Any, fmt: str) -> str:
    """A metric as table text ("–" when missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if fmt == "%":
        return f"{100.0 * float(value):.1f}%"
    if fmt == "kB":
        return f"{float(value) / 1000.0:.1f}"
    if fmt == "d":
        return str(int(value))
    return format(float(value), fmt)


def format_table(
    summary: Mapping[str, Any],
    *,
    controller_labels: Mapping[str, str] | None = None,
    keys: Sequence[str] | None = None,
) -> RichTable:
    """The comparison as a rich Table, controllers best first (see :func:`rank_controllers`); the
    controllers tied for the best (:func:`tied_best`, when several) are each ranked ``=1``.

    ``keys`` picks and orders the metric columns (default: all of :data:`TABLE_COLUMNS`).
    Headings break between words so the table stays narrow (about 130 characters).
    """
    from rich.table import Table as RichTable

    ctrls: Mapping[str, Mapping[str, Any]] = summary.get("controllers", summary)
    columns = TABLE_COLUMNS if keys is None else tuple(c for k in keys for c in TABLE_COLUMNS if c.key == k)
    title = f"tokenpace — {summary['scenario']}" if "scenario" in summary else "tokenpace"
    table = RichTable(title=title, header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("controller", style="bold")
    table.add_column("streams", justify="right")
    for col in columns:
        table.add_column(col.heading.replace(" ", "\n", 1), justify="right")
    for rank, name in rank_labels(ctrls):
        m = ctrls[name]
        label = (controller_labels or {}).get(name, name)
        table.add_row(
            rank,
            label,
            format_value(m.get("streams"), "d"),
            *(format_value(m.get(col.key), col.fmt) for col in columns),
        )
    return table
