"""Mahimahi link traces: one integer millisecond per 1500-byte delivery opportunity.

One loader serves the simulator (TraceCapacity) and live mode (replaying the rate on a qdisc).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

MTU_BYTES = 1500  # bytes one delivery opportunity carries
TRACE_DIR = Path(__file__).parent / "traces"


class TraceError(ValueError):
    pass


def builtin_traces() -> list[str]:
    return sorted(p.name for p in TRACE_DIR.glob("*.down"))


def resolve_trace(name: str, base_dir: Path | None = None) -> Path:
    """A trace path as written in a scenario: relative to the scenario's folder, else a built-in name."""
    candidates = [Path(name)] if Path(name).is_absolute() else []
    if base_dir is not None and not Path(name).is_absolute():
        candidates.append(base_dir / name)
    candidates.append(TRACE_DIR / Path(name).name)
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise TraceError(f"trace file {name!r} not found (looked in {', '.join(str(c.parent) for c in candidates)})")


@lru_cache(maxsize=16)
def load_mahimahi(path: str | Path) -> np.ndarray:
    """Opportunity timestamps (ms, int64, non-decreasing). Raises TraceError naming the line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read: {exc.strerror}") from None
    values = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            values.append(int(line))
        except ValueError:
            raise TraceError(f"{path}:{lineno}: not an integer millisecond: {line[:40]!r}") from None
    if not values:
        raise TraceError(f"{path}: empty trace")
    ms = np.asarray(values, dtype=np.int64)
    if np.any(np.diff(ms) < 0) or ms[0] < 0:
        raise TraceError(f"{path}: timestamps must be non-negative and non-decreasing")
    ms.setflags(write=False)
    return ms


def trace_period_ms(ms: np.ndarray) -> int:
    """The loop period: the last timestamp (a file holding just `1` is a 1 ms period)."""
    return max(int(ms[-1]), 1)


def mean_rate_bps(ms: np.ndarray) -> float:
    return len(ms) * MTU_BYTES * 8 / (trace_period_ms(ms) / 1000.0)


def rate_series_bps(ms: np.ndarray, bin_s: float = 0.1) -> np.ndarray:
    """Capacity per bin over one period (bits/s); live mode replays this on a qdisc."""
    period_ms = trace_period_ms(ms)
    nbins = max(1, int(np.ceil(period_ms / (bin_s * 1000))))
    counts = np.bincount(np.minimum((ms / (bin_s * 1000)).astype(int), nbins - 1), minlength=nbins)
    return counts * MTU_BYTES * 8 / bin_s
