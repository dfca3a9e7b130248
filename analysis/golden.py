"""Pinned metrics: compare a run's summary with a checked-in golden summary.

The controller regression suite keeps, per built-in scenario, the summary metrics of every
controller in ``tests/golden/<scenario>.json``. A change that moves a metric beyond its
tolerance is reported as a :class:`Moved` row; :func:`moved_table` prints what moved and by how
much. Tolerances are absolute for fractions in [0, 1] and relative for everything else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# metric -> (absolute tolerance, relative tolerance); a value passes if within either
TOLERANCES: Mapping[str, tuple[float, float]] = {
    "qoe_mean": (0.01, 0.0),
    "qoe_p10": (0.02, 0.0),
    "slo_attainment": (0.02, 0.0),
    "stall_ratio": (0.005, 0.0),
    "waste_frac": (0.005, 0.0),
    "gpu_busy_frac": (0.01, 0.0),
    "completed": (2, 0.0),
    "abandoned": (2, 0.0),
    "tokens_wasted": (50, 0.05),
    "tokens_generated": (0, 0.02),
    "effective_tps": (0, 0.02),
    "ttft_p50_s": (0.005, 0.05),
    "ttft_p99_s": (0.02, 0.10),
    "itl_p50_s": (0.002, 0.05),
    "itl_p99_s": (0.01, 0.10),
}
PINNED = tuple(TOLERANCES)


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


def _within(metric: str, golden: Any, actual: Any) -> bool:
    if golden is None or actual is None:
        return golden is None and actual is None
    g, a = float(golden), float(actual)
    if math.isnan(g) or math.isnan(a):
        return math.isnan(g) and math.isnan(a)
    abs_tol, rel_tol = TOLERANCES.get(metric, (0.0, 1e-6))
    return abs(a - g) <= max(abs_tol, rel_tol * abs(g)) + 1e-12


def pinned(summary: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The pinned part of a summary.json: controller -> {metric: value}."""
    return {c: {m: v.get(m) for m in PINNED} for c, v in sorted(summary["controllers"].items())}


def compare(actual: Mapping[str, Any], golden: Mapping[str, Any]) -> list[Moved]:
    """Metrics of ``actual`` (a summary) beyond tolerance from ``golden`` (a pinned summary)."""
    out: list[Moved] = []
    got = pinned(actual)
    for controller in sorted(set(golden) | set(got)):
        g, a = golden.get(controller), got.get(controller)
        if g is None or a is None:
            out.append(Moved(controller, "(controller missing)" if a is None else "(not in golden)", None, None))
            continue
        for metric in PINNED:
            if not _within(metric, g.get(metric), a.get(metric)):
                out.append(Moved(controller, metric, g.get(metric), a.get(metric)))
    return out


def moved_table(scenario: str, moved: list[Moved]) -> str:
    """A plain-text table of what moved (printed by a failing regression test)."""
    lines = [f"{scenario}: {len(moved)} metric(s) moved beyond tolerance",
             f"  {'controller':<12} {'metric':<18} {'golden':>12} {'now':>12} {'delta':>12}  tolerance"]
    for m in moved:
        tol = TOLERANCES.get(m.metric)
        tol_s = "" if tol is None else f"abs {tol[0]:g} / rel {tol[1]:g}"
        lines.append(f"  {m.controller:<12} {m.metric:<18} {fmt(m.golden):>12} {fmt(m.actual):>12} "
                     f"{fmt(m.delta):>12}  {tol_s}")
    return "\n".join(lines)


def fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.6g}"
