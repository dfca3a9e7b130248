"""Pinned metrics: compare a run's summary with a checked-in golden summary.

The controller regression suite keeps, per built-in scenario, the summary metrics of every
controller in ``tests/golden/<scenario>.json``. A simulation with the same scenario and seed is
byte-identical from run to run (and with ``--jobs 1`` or ``2``), and ``summary.json`` already rounds
its numbers, so a golden is pinned exactly, up to float representation: within ``REL_TOL`` /
``ABS_TOL``. Any wider band would hide real changes -- a QoE band of 0.01 is wider than the spread
of all eleven controllers on gpu-overload. A metric that moves is reported as a :class:`Moved` row
and :func:`moved_table` prints what moved and by how much; after an intended change, regenerate
with ``python scripts/regen_goldens.py [SCENARIO ...]`` and review the diff.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PINNED: tuple[str, ...] = (
    "qoe_mean",
    "qoe_p10",
    "slo_attainment",
    "stall_ratio",
    "waste_frac",
    "gpu_busy_frac",
    "completed",
    "abandoned",
    "tokens_wasted",
    "tokens_generated",
    "effective_tps",
    "ttft_p50_s",
    "ttft_p99_s",
    "itl_p50_s",
    "itl_p99_s",
)
# Float noise only: the values are identical from run to run; these absorb a last-bit difference of
# the same rounded number (e.g. a libm on another machine), never a change of the number.
REL_TOL = 1e-9
ABS_TOL = 1e-12
REGEN_COMMAND = "python scripts/regen_goldens.py"


@dataclass(frozen=True)
class Moved:
    controller: str
    metric: str
    golden: float | None
    actual: float | None

    @property
    def delta(self) -> float | None:
        if self.golden is None or self.actual is None:
            return None
        return self.actual - self.golden


def _within(golden: Any, actual: Any) -> bool:
    if golden is None or actual is None:
        return golden is None and actual is None
    g, a = float(golden), float(actual)
    if math.isnan(g) or math.isnan(a):
        return math.isnan(g) and math.isnan(a)
    return math.isclose(a, g, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def pinned(summary: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The pinned part of a summary.json: controller -> {metric: value}."""
    return {c: {m: v.get(m) for m in PINNED} for c, v in sorted(summary["controllers"].items())}


def compare(actual: Mapping[str, Any], golden: Mapping[str, Any]) -> list[Moved]:
    """Metrics of ``actual`` (a summary) that differ from ``golden`` (a pinned summary)."""
    out: list[Moved] = []
    got = pinned(actual)
    for controller in sorted(set(golden) | set(got)):
        g, a = golden.get(controller), got.get(controller)
        if g is None or a is None:
            out.append(Moved(controller, "(controller missing)" if a is None else "(not in golden)", None, None))
            continue
        for metric in PINNED:
            if not _within(g.get(metric), a.get(metric)):
                out.append(Moved(controller, metric, g.get(metric), a.get(metric)))
    return out


def moved_table(scenario: str, moved: list[Moved]) -> str:
    """A plain-text table of what moved (printed by a failing regression test), and what to do."""
    lines = [f"{scenario}: {len(moved)} pinned metric(s) moved (pinned to rel {REL_TOL:g} / abs {ABS_TOL:g})",
             f"  {'controller':<12} {'metric':<18} {'golden':>14} {'now':>14} {'delta':>11} {'rel':>9}"]
    for m in moved:
        rel = None if m.delta is None or not m.golden else m.delta / abs(float(m.golden))
        lines.append(f"  {m.controller:<12} {m.metric:<18} {fmt(m.golden):>14} {fmt(m.actual):>14} "
                     f"{fmt(m.delta, '+.4g'):>11} {_fmt_rel(rel):>9}")
    lines.append(f"  intended? regenerate with `{REGEN_COMMAND} {scenario}` and review the diff")
    return "\n".join(lines)


def fmt(x: float | None, spec: str = ".10g") -> str:
    return "—" if x is None else format(x, spec)


def _fmt_rel(rel: float | None) -> str:
    if rel is None:
        return "—"
    return f"{rel:+.1e}" if abs(rel) < 1e-4 else f"{rel:+.2%}"
