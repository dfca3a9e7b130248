"""report.html: one page to read a run.

The page is plain HTML with its styling inline and no scripts: the scenario (name,
description, how it was run), the comparison table with controllers best first, what the
metrics mean, and the plots. Images are linked by paths relative to the report (``plots/...``),
so the results folder can be moved or archived as a whole and still open in any browser.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from analysis.metrics import TABLE_COLUMNS, best_text, format_value, rank_labels
from analysis.results import STATUS_COMPLETE, STATUS_MEANING, Run
from analysis.style import PER_CONTROLLER_PREFIXES, controller_style, safe_name

__all__ = ["incomplete_notice", "render_report", "summary_html_table", "write_report"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; }
.desc { color: #444; max-width: 60em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f0f0f0; }
td.name { text-align: left; font-weight: bold; }
tr.best td { background: #eef8ee; }
table.info td, table.info th { text-align: left; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.4em;
          vertical-align: middle; border-radius: 2px; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9em; }
dl.metrics dt { font-weight: bold; margin-top: 0.4em; }
dl.metrics dd { margin-left: 1.5em; color: #444; }
"""

# inline, so that the report of a complete run is what it always was
_NOTICE_STYLE = "background: #fff4e0; border: 1px solid #e0a040; padding: 0.6em 0.8em; max-width: 60em;"

_METRIC_NOTES: tuple[tuple[str, str], ...] = (
    (
        "QoE",
        "Andes QoE per stream: the area under min(tokens shown, tokens the reader expected) "
        "over the area under the expected curve. 1 = every token on screen when the reader "
        "wanted it; being early earns nothing.",
    ),
    ("SLO att.", "share of streams whose QoE reached the SLO threshold."),
    ("TTFT", "request arrival to first token on screen, over streams that showed one."),
    ("ITL", "gap between consecutive token arrivals at the client, pooled over streams."),
    ("stall", "time the reader waited for a token that was due, over time from first token to the end."),
    ("waste", "generated tokens never displayed (the reader left or the request was cancelled)."),
    ("eff. tok/s", "tokens displayed per second of run time (latest stream end)."),
    ("GPU busy", "sum of batch execution time over run time."),
    ("peak queue KB", "most bytes written to a stream's socket but not yet acknowledged."),
)


def summary_html_table(
    summary: Mapping[str, Any], labels: Mapping[str, str] | None = None, colors: Mapping[str, str] | None = None
) -> str:
    """The comparison table as an HTML ``<table>``, best controller first (the controllers tied for the
    best, :func:`analysis.metrics.tied_best`, each ranked ``=1`` and marked best)."""
    ctrls: Mapping[str, Mapping[str, Any]] = summary.get("controllers", summary)
    head = "".join(f"<th>{html.escape(c.heading)}</th>" for c in TABLE_COLUMNS)
    rows = []
    for rank, name in rank_labels(ctrls):
        m = ctrls[name]
        swatch = ""
        if colors and name in colors:
            swatch = f'<span class="swatch" style="background:{html.escape(colors[name])}"></span>'
        label = html.escape((labels or {}).get(name, name))
        cells = "".join(f"<td>{html.escape(format_value(m.get(c.key), c.fmt))}</td>" for c in TABLE_COLUMNS)
        cls = ' class="best"' if rank in ("1", "=1") else ""
        rows.append(
            f'<tr{cls}><td>{rank}</td><td class="name">{swatch}{label}</td>'
            f"<td>{format_value(m.get('streams'), 'd')}</td>{cells}</tr>"
        )
    return (
        f'<table class="summary"><thead><tr><th>#</th><th>controller</th><th>streams</th>{head}</tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _info_rows(run: Run) -> str:
    info = run.info
    items: list[tuple[str, str]] = [
        ("mode", str(info.get("mode", "?"))),
        ("seed", str(info.get("seed", "?"))),
        ("git revision", str(info.get("git_rev", "?"))),
        ("QoE SLO", f"{run.slo_qoe:g}"),
        ("controllers", ", ".join(run.controller_names)),
    ]
    if not run.complete:
        items.insert(1, ("status", f"{run.status}: incomplete"))
        items.append(("missing (not analysed)", ", ".join(run.missing) or "none"))
    versions = info.get("versions")
    if isinstance(versions, Mapping) and versions:
        items.append(("versions", ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))))
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in items)


def incomplete_notice(run: Run) -> str:
    """One sentence for a run that did not complete: what finished, what is missing, why."""
    if run.complete:
        return ""
    if run.status == STATUS_COMPLETE:
        why = "run.json lists controllers whose folders are not there"
    else:
        why = f"status {run.status}: {STATUS_MEANING.get(run.status, 'unknown')}"
    return (f"This run is incomplete ({why}). Only the controllers that finished are analysed: "
            f"{', '.join(run.controller_names) or 'none'}; missing: {', '.join(run.missing) or 'none'}.")


def _figure(path: Path, report_dir: Path, caption: str) -> str:
    rel = Path(os.path.relpath(path, report_dir)).as_posix()
    src = html.escape(rel, quote=True)
    return (
        f'<figure><a href="{src}"><img src="{src}" alt="{html.escape(caption)}"></a>'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _caption(path: Path, labels: Mapping[str, str]) -> str:  # labels: by file-safe name
    stem = path.stem
    captions = {
        "comparison": "Headline metrics per controller (dashed line: QoE SLO).",
        "cdf_qoe": "Distribution of per-stream QoE, one line per controller.",
        "cdf_stall": "Distribution of per-stream stall time, one line per controller.",
    }
    if stem in captions:
        return captions[stem]
    for prefix, text in (
        (
            "timeline_",
            "Representative streams: RTT, pacing rate, client buffer, tokens, "
            "link capacity; red = reader stalled, grey = fault window.",
        ),
        ("system_dynamics_", "Serving node: queues, memory, batch time, completions, throughput."),
        (
            "request_timeline_",
            "Requests waiting (blue), executing (green), swapped out (orange); S:n = number of swaps.",
        ),
    ):
        if stem.startswith(prefix):
            name = stem.removeprefix(prefix)
            return f"{labels.get(name, name)} — {text}"
    return stem


def render_report(
    run: Run, summary: Mapping[str, Any], plots: Sequence[Path] = (), report_dir: Path | None = None
) -> str:
    """The report as an HTML string; plot paths are written relative to ``report_dir``."""
    report_dir = report_dir or run.path
    styles = {n: controller_style(run, n) for n in run.controller_names}
    labels = {n: s.label for n, s in styles.items()}
    colors = {n: s.color for n, s in styles.items()}
    file_labels = {safe_name(n): s.label for n, s in styles.items()}
    title = html.escape(run.scenario_name)
    description = str(run.scenario.get("description") or "")
    own = {n: [f"{pre}{safe_name(n)}.png" for pre in PER_CONTROLLER_PREFIXES] for n in run.controller_names}
    owned = {f for files in own.values() for f in files}
    shared = [p for p in plots if p.name not in owned]
    notice = incomplete_notice(run)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>tokenpace — {title}</title><style>{_CSS}</style></head><body>",
        f"<h1>tokenpace — {title}</h1>",
        f'<p class="desc">{html.escape(description)}</p>' if description else "",
        f'<p style="{_NOTICE_STYLE}"><strong>{html.escape(notice)}</strong></p>' if notice else "",
        f'<table class="info">{_info_rows(run)}</table>',
        "<h2>Controllers, best first</h2>",
        summary_html_table(summary, labels, colors),
        f'<p class="best">{html.escape(best_text(summary, labels))}</p>',
        '<details><summary>What the columns mean</summary><dl class="metrics">',
        "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in _METRIC_NOTES),
        "</dl></details>",
    ]
    if shared:
        parts.append("<h2>Comparison</h2>")
        parts += [_figure(p, report_dir, _caption(p, file_labels)) for p in shared]
    for name in run.controller_names:
        mine = sorted((p for p in plots if p.name in own[name]), key=lambda p: own[name].index(p.name))
        if mine:
            parts.append(f"<h2>{html.escape(labels[name])}</h2>")
            parts += [_figure(p, report_dir, _caption(p, file_labels)) for p in mine]
    if not plots:
        parts.append("<p><em>Plots were not drawn for this report (--no-plots).</em></p>")
    parts.append("</body></html>\n")
    return "\n".join(p for p in parts if p)


def write_report(
    run: Run, summary: Mapping[str, Any], plots: Sequence[Path] = (), path: Path | str | None = None
) -> Path:
    """Write ``report.html`` (default: in the results folder) and return its path."""
    out = Path(path) if path is not None else run.path / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(run, summary, plots, out.parent), encoding="utf-8")
    return out
