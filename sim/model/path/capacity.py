"""How fast a bottleneck drains, as a function of time: the capacity models of the path.

A constant rate, a piecewise-constant schedule, a Mahimahi delivery-opportunity trace (Netravali
et al., "Mahimahi: Accurate Record-and-Replay for HTTP", USENIX ATC 2015), or any of those with
fault windows (outages, rate caps, rate factors) laid over it. Each answers one question exactly:
when does a transmission of n bytes that starts at t finish. Time is an argument; the simulator's
link (``sim.link``) and the live user-space link (``live.lab.tunlink``) ask the same objects.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

__all__ = [
    "MTU_BYTES",
    "Capacity",
    "ConstantCapacity",
    "FaultedCapacity",
    "RateWindow",
    "ScheduleCapacity",
    "TraceCapacity",
]

MTU_BYTES = 1500  # one Mahimahi delivery opportunity
_BITS_PER_BYTE = 8


class Capacity:
    """How fast the bottleneck drains, as a function of time.

    Subclasses implement `_serve`, the one primitive everything else is built on: serve up to
    `nbytes` starting at `start_s`, at `scale` times this capacity, but stop at `limit_s`.
    `FaultedCapacity` uses the limit to hand over to a fault window mid-packet.

    Calls must come with non-decreasing `start_s` (the link guarantees it): the trace model keeps
    the position of the current delivery opportunity between packets.
    """

    __slots__ = ()

    def _serve(self, start_s: float, nbytes: float, limit_s: float, scale: float) -> tuple[float, float]:
        """Return `(t_s, bytes_left)`: the finish time and 0 if done before `limit_s`, else `(limit_s, left)`."""
        raise NotImplementedError

    def tx_finish_s(self, start_s: float, nbytes: int) -> float:
        """When a transmission of `nbytes` starting at `start_s` completes (inf: never)."""
        t_s, left = self._serve(start_s, nbytes, math.inf, 1.0)
        return t_s if left <= 0 else math.inf

    def rate_bps_at(self, t_s: float) -> float:
        """The link rate at `t_s`, for plots and oracles."""
        raise NotImplementedError


def _serve_at_rate(start_s: float, nbytes: float, limit_s: float, rate_bps: float) -> tuple[float, float]:
    """Constant-rate service, the building block of the rate-based models."""
    if rate_bps <= 0:
        return limit_s, nbytes
    finish_s = start_s + nbytes * _BITS_PER_BYTE / rate_bps
    if finish_s <= limit_s:
        return finish_s, 0.0
    return limit_s, nbytes - (limit_s - start_s) * rate_bps / _BITS_PER_BYTE


class ConstantCapacity(Capacity):
    """A fixed rate."""

    __slots__ = ("rate_bps", "s_per_byte")

    def __init__(self, rate_bps: float) -> None:
        if rate_bps <= 0:
            raise ValueError(f"rate_bps must be > 0, got {rate_bps}")
        self.rate_bps = float(rate_bps)
        self.s_per_byte = _BITS_PER_BYTE / self.rate_bps

    def _serve(self, start_s: float, nbytes: float, limit_s: float, scale: float) -> tuple[float, float]:
        return _serve_at_rate(start_s, nbytes, limit_s, self.rate_bps * scale)

    def tx_finish_s(self, start_s: float, nbytes: int) -> float:
        return start_s + nbytes * self.s_per_byte  # the same arithmetic as Bottleneck.offer's inlined copy

    def rate_bps_at(self, t_s: float) -> float:
        return self.rate_bps


class ScheduleCapacity(Capacity):
    """Piecewise-constant rate: `points` are `(t_s, rate_bps)`, each rate holding from its `t_s`
    until the next point; before the first point the first rate applies. A rate may be 0."""

    __slots__ = ("_rates_bps", "_times_s")

    def __init__(self, points: Sequence[tuple[float, float]]) -> None:
        if not points:
            raise ValueError("ScheduleCapacity needs at least one (t_s, rate_bps) point")
        pts = sorted((float(t), float(r)) for t, r in points)
        if any(r < 0 for _, r in pts):
            raise ValueError("rates must be >= 0")
        self._times_s = [t for t, _ in pts]
        self._rates_bps = [r for _, r in pts]

    def _serve(self, start_s: float, nbytes: float, limit_s: float, scale: float) -> tuple[float, float]:
        times, rates = self._times_s, self._rates_bps
        i = max(bisect_right(times, start_s) - 1, 0)
        t_s, left = start_s, nbytes
        while True:
            seg_end_s = times[i + 1] if i + 1 < len(times) else math.inf
            t_s, left = _serve_at_rate(t_s, left, min(seg_end_s, limit_s), rates[i] * scale)
            if left <= 0 or t_s >= limit_s:
                return t_s, left
            i += 1

    def rate_bps_at(self, t_s: float) -> float:
        return self._rates_bps[max(bisect_right(self._times_s, t_s) - 1, 0)]


class TraceCapacity(Capacity):
    """Mahimahi trace: each entry is a millisecond at which one 1500-byte delivery opportunity occurs.

    Repeated values are several opportunities in the same millisecond. With `loop` the trace repeats
    with period = its last timestamp (1 ms if that is 0), as Mahimahi's link does; without it, the
    link stops delivering when the trace ends.

    Bytes are served from opportunities: a packet consumes byte credit from successive
    opportunities and departs at the one that carries its last byte. Credit an opportunity has left
    after a packet serves the next packet if that one is already waiting at that instant (the queue
    was busy); otherwise the instant passes and the credit is lost. State: the current opportunity
    (a global index counting across loops) and the fraction of its credit left.
    """

    __slots__ = ("_frac", "_g", "_loop", "_n", "_opp_ms", "_period_ms")

    def __init__(self, opportunities_ms: np.ndarray | Sequence[int], loop: bool = True) -> None:
        arr = np.asarray(opportunities_ms, dtype=np.int64)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError("a trace needs at least one opportunity")
        if arr[0] < 0 or np.any(np.diff(arr) < 0):
            raise ValueError("trace timestamps must be non-negative and non-decreasing")
        # A Python list searched with bisect, not np.searchsorted: on one scalar it costs a fraction
        # of a numpy call, and this runs for every packet that finds the queue idle.
        self._opp_ms: list[int] = arr.tolist()
        self._n = len(self._opp_ms)
        self._period_ms = max(self._opp_ms[-1], 1)
        self._loop = loop
        self._g = 0  # current opportunity (global index)
        self._frac = 0.0  # fraction of its credit still unused; 0 = none

    @classmethod
    def from_file(cls, path: str, loop: bool = True) -> TraceCapacity:
        """Read a Mahimahi `.down`/`.up` file (one integer millisecond per line)."""
        return cls(np.loadtxt(path, dtype=np.int64, ndmin=1), loop=loop)

    def _time_s(self, g: int) -> float:
        """Time of global opportunity `g` (inf past the end of a non-looping trace)."""
        n = self._n
        if g >= n and not self._loop:
            return math.inf
        return (self._opp_ms[g % n] + (g // n) * self._period_ms) / 1000.0

    def _first_at_or_after(self, t_s: float) -> int:
        """Global index of the first opportunity at or after `t_s` (n when a non-looping trace is over)."""
        if t_s == math.inf:
            return self._n if not self._loop else 1 << 62
        # A hair below t: an opportunity computed as ms/1000 must count as "at" t after the round trip.
        t_ms = t_s * 1000.0 - 1e-9
        k = max(math.floor(t_ms / self._period_ms), 0) if self._loop else 0
        i = bisect_left(self._opp_ms, t_ms - k * self._period_ms)
        if i == self._n and self._loop:
            k, i = k + 1, 0
        return k * self._n + i

    def _serve(self, start_s: float, nbytes: float, limit_s: float, scale: float) -> tuple[float, float]:
        credit_bytes = MTU_BYTES * scale
        g, frac = self._g, self._frac
        if frac <= 0.0 or start_s > self._time_s(g):
            g, frac = self._first_at_or_after(start_s), 1.0
        t_s = self._time_s(g)
        if t_s >= limit_s:
            self._g, self._frac = g, frac
            return limit_s, nbytes
        avail = frac * credit_bytes
        if nbytes <= avail * (1 + 1e-12):
            frac -= nbytes / credit_bytes
            self._g, self._frac = (g, frac) if frac > 1e-9 else (g + 1, 1.0)
            return t_s, 0.0
        need = nbytes - avail
        m = math.ceil(need / credit_bytes - 1e-9)  # further opportunities the rest needs
        t_last_s = self._time_s(g + m)
        if t_last_s >= limit_s:
            # Runs into the limit (or the end of the trace): use every opportunity before it.
            g_lim = self._first_at_or_after(limit_s)
            if not self._loop:
                g_lim = min(g_lim, self._n)
            self._g, self._frac = g_lim, 1.0
            return limit_s, need - (g_lim - g - 1) * credit_bytes
        frac = m - need / credit_bytes
        self._g, self._frac = (g + m, frac) if frac > 1e-9 else (g + m + 1, 1.0)
        return t_last_s, 0.0

    def rate_bps_at(self, t_s: float) -> float:
        """Average rate over the 100 ms window centred on `t_s` (clamped to start at 0)."""
        window_s = 0.1
        lo_s = max(t_s - window_s / 2, 0.0)
        count = self._first_at_or_after(lo_s + window_s) - self._first_at_or_after(lo_s)
        return count * MTU_BYTES * _BITS_PER_BYTE / window_s


@dataclass(frozen=True)
class RateWindow:
    """A fault window on the link rate over `[start_s, end_s)`: exactly one of `outage` (rate 0),
    `rate_bps` (this absolute rate) or `factor` (the base rate times this)."""

    start_s: float
    end_s: float
    factor: float | None = None
    rate_bps: float | None = None
    outage: bool = False

    def __post_init__(self) -> None:
        if not self.end_s > self.start_s:
            raise ValueError(f"RateWindow needs end_s > start_s, got [{self.start_s}, {self.end_s})")
        given = (self.factor is not None) + (self.rate_bps is not None) + bool(self.outage)
        if given != 1:
            raise ValueError("RateWindow needs exactly one of factor, rate_bps, outage")
        if (self.factor is not None and self.factor < 0) or (self.rate_bps is not None and self.rate_bps < 0):
            raise ValueError("factor and rate_bps must be >= 0")


class FaultedCapacity(Capacity):
    """A base capacity with fault windows laid over it (windows must not overlap).

    Service is integrated piece by piece, so a transmission that spans a window edge finishes
    exactly when its bytes have been served at the rates in force on each side. A factor scales
    a trace's opportunities (1500 x factor bytes each); an outage or an absolute rate replaces
    the base for the window's duration.
    """

    __slots__ = ("_base", "_const_rate_bps", "_ends_s", "_starts_s", "_windows")

    def __init__(self, base: Capacity, windows: Iterable[RateWindow]) -> None:
        ws = sorted(windows, key=lambda w: w.start_s)
        for a, b in pairwise(ws):
            if b.start_s < a.end_s:
                raise ValueError(f"rate windows overlap: {a} and {b}")
        self._base = base
        self._const_rate_bps = base.rate_bps if type(base) is ConstantCapacity else 0.0
        self._windows = ws
        self._starts_s = [w.start_s for w in ws]
        self._ends_s = [w.end_s for w in ws]

    def tx_finish_s(self, start_s: float, nbytes: int) -> float:
        rate_bps = self._const_rate_bps
        if rate_bps:
            # A constant base and a packet that starts and ends between windows (most packets): the
            # first piece of `_serve`, inlined with the same arithmetic (rate * scale 1.0 is rate).
            starts = self._starts_s
            i = bisect_right(starts, start_s) - 1
            if i < 0 or start_s >= self._ends_s[i]:
                finish_s = start_s + nbytes * _BITS_PER_BYTE / rate_bps
                if i + 1 == len(starts) or finish_s <= starts[i + 1]:
                    return finish_s
        return super().tx_finish_s(start_s, nbytes)

    def _serve(self, start_s: float, nbytes: float, limit_s: float, scale: float) -> tuple[float, float]:
        t_s, left = start_s, nbytes
        while t_s < limit_s:
            i = bisect_right(self._starts_s, t_s) - 1
            w = self._windows[i] if i >= 0 and t_s < self._ends_s[i] else None
            if w is None:
                next_start_s = self._starts_s[i + 1] if i + 1 < len(self._starts_s) else math.inf
                t_s, left = self._base._serve(t_s, left, min(next_start_s, limit_s), scale)
            elif w.outage or w.factor == 0:
                t_s = min(w.end_s, limit_s)
            elif w.rate_bps is not None:
                t_s, left = _serve_at_rate(t_s, left, min(w.end_s, limit_s), w.rate_bps * scale)
            else:
                assert w.factor is not None
                t_s, left = self._base._serve(t_s, left, min(w.end_s, limit_s), scale * w.factor)
            if left <= 0:
                return t_s, 0.0
        return limit_s, left

    def rate_bps_at(self, t_s: float) -> float:
        i = bisect_right(self._starts_s, t_s) - 1
        if i >= 0 and t_s < self._ends_s[i]:
            w = self._windows[i]
            if w.outage:
                return 0.0
            if w.rate_bps is not None:
                return w.rate_bps
            assert w.factor is not None
            return self._base.rate_bps_at(t_s) * w.factor
        return self._base.rate_bps_at(t_s)


