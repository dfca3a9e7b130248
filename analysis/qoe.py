"""How good a stream felt to the person reading it: Andes QoE and stall time.

**The reader.** Tokens land in the client's buffer and are put on screen at the reader's pace:
token i appears no earlier than it arrived and no earlier than ``1/reading_tps`` after token
i-1 appeared. When token i is due on screen but has not arrived, the reader *stalls*; when it
arrives, reading resumes and the rest of the schedule is shifted by the stall (like video
rebuffering). After ``patience_s`` of one continuous stall the reader leaves (abandons).

**QoE** (after Andes, arXiv 2404.16283). Measure time from the request's arrival. The reader
expects the first token after ``ttft_expected_s`` and then one token every ``1/reading_tps``.
Let E(t) be how many tokens the reader expected to have seen by time t and A(t) how many were
actually on screen. Then::

    QoE = ∫ min(A, E) dt / ∫ E dt   over [0, T_E]

Taking ``min(A, E)`` means being early earns nothing; every token that is late costs the area
between the curves while it is late. 1.0 means every token was there when the reader wanted
it. A reader who left keeps what was on screen (A stays flat), a stream that showed nothing
scores 0. Both curves are step functions here, so the integral is exact: a sum over the
intervals between consecutive steps, no sampling.

*Which E.* Written as a line, E(t) = min(n, 1 + (t - ttft_expected_s)·reading_tps) after
``ttft_expected_s``; but tokens are whole, and a stream that puts token j on screen exactly at
``ttft_expected_s + j/reading_tps`` then scores below 1 (its step curve A lies under the line
between the steps; for n tokens the loss is 1/(n+1)). The default, ``expected="step"``, therefore
counts E in whole tokens: E(t) = number of j in 0..n-1 with ``ttft_expected_s + j/reading_tps``
<= t, i.e. the line rounded down. The window ends at T_E = ``ttft_expected_s + n/reading_tps``,
when the reader has finished reading the last token (so the last token's lateness counts too).
With that, a stream exactly on schedule scores 1.0, and displaying every token d seconds late
(d >= 0) scores ``1 - Σ_{m=1..n} min(m/r, d) / (n(n+1)/(2r))`` with r = ``reading_tps``.
``expected="linear"`` is the literal line with T_E = ``ttft_expected_s + (n-1)/reading_tps``
(when the line reaches n); for n = 1 that window is empty and the score is 1.0 if the token was
on screen by ``ttft_expected_s``, else 0.0.

**Stall.** Stall time is the time the reader spent waiting for a token that was due: for
each displayed token i >= 1, ``max(0, t_received_i - (t_displayed_{i-1} + 1/reading_tps))``,
plus, for a reader who left, the wait from the next token's due time to leaving. Waiting for
the *first* token is not stall (that is TTFT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["StallIntervals", "andes_qoe", "stall_intervals", "stream_qoe", "stream_stall_s"]

ArrayLike = npt.ArrayLike


def _check_reader(reading_tps: float, n_tokens: int, ttft_expected_s: float) -> None:
    if not (math.isfinite(reading_tps) and reading_tps > 0):
        raise ValueError(f"reading_tps must be a positive finite number, got {reading_tps!r}")
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be at least 1, got {n_tokens!r}")
    if not (math.isfinite(ttft_expected_s) and ttft_expected_s >= 0):
        raise ValueError(f"ttft_expected_s must be finite and >= 0, got {ttft_expected_s!r}")


def _shown_since_arrival(arrival_s: float, display_times_s: ArrayLike) -> np.ndarray:
    shown = np.asarray(display_times_s, dtype=np.float64).ravel()
    shown = shown[~np.isnan(shown)] - arrival_s
    return np.sort(shown)


def andes_qoe(
    arrival_s: float,
    ttft_expected_s: float,
    reading_tps: float,
    n_tokens: int,
    display_times_s: ArrayLike,
    *,
    expected: Literal["step", "linear"] = "step",
) -> float:
    """Andes QoE of one stream, exactly (see the module text for the definition).

    ``display_times_s`` are the run-clock times tokens appeared on screen (any order; NaN for
    tokens never shown); ``arrival_s`` is the request's arrival on the same clock; ``n_tokens``
    is how many tokens the request asked for. Returns a number in [0, 1].
    """
    n = int(n_tokens)
    r = float(reading_tps)
    t0 = float(ttft_expected_s)
    _check_reader(r, n, t0)
    shown = _shown_since_arrival(float(arrival_s), display_times_s)
    if shown.size == 0:
        return 0.0
    if expected == "step":
        return _qoe_step(t0, r, n, shown)
    if expected == "linear":
        return _qoe_linear(t0, r, n, shown)
    raise ValueError(f"expected must be 'step' or 'linear', got {expected!r}")


def stream_qoe(
    arrival_s: float,
    ttft_expected_s: float,
    reading_tps: float,
    n_tokens: int,
    display_times_s: ArrayLike,
    *,
    end_s: float | None = None,
    abandoned: bool = False,
) -> float:
    """QoE of one recorded stream: :func:`andes_qoe` of the tokens on screen, where a reader who left
    (``abandoned``, at ``end_s``) saw none displayed after leaving (A stays flat from ``end_s`` on).

    The one QoE of the project: the writer's ``qoe`` column (:class:`analysis.results.RunRecorder`)
    and the metrics (:func:`analysis.metrics.stream_metrics`) both come from here.
    """
    shown = np.asarray(display_times_s, dtype=np.float64)
    if abandoned and end_s is not None and math.isfinite(end_s):
        shown = np.where(shown > end_s, np.nan, shown)
    return andes_qoe(arrival_s, ttft_expected_s, reading_tps, n_tokens, shown)


def _qoe_step(t0: float, r: float, n: int, shown: np.ndarray) -> float:
    due = t0 + np.arange(n, dtype=np.float64) / r  # when the reader wants token j
    end = t0 + n / r  # the reader has finished the last token
    # Both curves are right-continuous steps: merge their step times, evaluate on each piece.
    cuts = np.unique(np.concatenate(([0.0, end], due, np.clip(shown, 0.0, end))))
    left, width = cuts[:-1], np.diff(cuts)
    e = np.searchsorted(due, left, side="right")
    a = np.searchsorted(shown, left, side="right")
    got = float(np.dot(np.minimum(a, e), width))
    want = n * (n + 1) / (2.0 * r)  # = Σ_j (end - due_j)
    return min(1.0, max(0.0, got / want))


def _qoe_linear(t0: float, r: float, n: int, shown: np.ndarray) -> float:
    span = (n - 1) / r  # E rises from 1 at t0 to n at t0 + span
    if span == 0.0:
        return 1.0 if shown[0] <= t0 else 0.0
    # In u = t - t0, E(u) = 1 + r·u on [0, span]. Before t0 E is 0, so nothing counts there.
    u = np.clip(shown - t0, 0.0, span)
    cuts = np.unique(np.concatenate(([0.0, span], u)))
    a = np.searchsorted(u, cuts[:-1], side="right").astype(np.float64)  # A on each piece
    got = float(np.sum(_area_min_line(a, r, cuts[1:]) - _area_min_line(a, r, cuts[:-1])))
    want = span + r * span * span / 2.0
    return min(1.0, max(0.0, got / want))


def _area_min_line(k: np.ndarray, r: float, u: np.ndarray) -> np.ndarray:
    """∫_0^u min(k, 1 + r·v) dv for step heights k >= 0 (0 where k = 0)."""
    cross = np.maximum(k - 1.0, 0.0) / r  # where the line reaches k
    below = np.minimum(u, cross)
    area = below + r * below * below / 2.0 + k * np.maximum(u - cross, 0.0)
    return np.where(k > 0, area, 0.0)


@dataclass(frozen=True)
class StallIntervals:
    """When one reader was stalled: ``start_s[i]`` to ``end_s[i]`` on the run clock."""

    start_s: np.ndarray
    end_s: np.ndarray

    @property
    def total_s(self) -> float:
        return float(np.sum(self.end_s - self.start_s))

    def __len__(self) -> int:
        return int(self.start_s.size)


def stall_intervals(
    reading_tps: float,
    received_s: ArrayLike,
    displayed_s: ArrayLike,
    end_s: float | None = None,
    abandoned: bool = False,
) -> StallIntervals:
    """The stalls of one stream, from its tokens in index order.

    ``received_s``/``displayed_s`` are per token (NaN = never). A token displayed after
    ``1/reading_tps`` following its predecessor's display but received later than that makes
    the reader stall from the due time until it arrived. If ``abandoned``, the reader also
    stalled from the next token's due time until it left at ``end_s``.
    """
    r = float(reading_tps)
    if not (math.isfinite(r) and r > 0):
        raise ValueError(f"reading_tps must be a positive finite number, got {reading_tps!r}")
    recv = np.asarray(received_s, dtype=np.float64).ravel()
    disp = np.asarray(displayed_s, dtype=np.float64).ravel()
    if recv.shape != disp.shape:
        raise ValueError("received_s and displayed_s must have one entry per token")
    shown = ~np.isnan(disp)
    recv, disp = recv[shown], disp[shown]
    if disp.size == 0:
        return StallIntervals(np.zeros(0), np.zeros(0))
    due = disp[:-1] + 1.0 / r  # when tokens 1.. were due
    late = recv[1:] > due  # NaN compares False: no stall without a receive time
    starts, ends = due[late], recv[1:][late]
    if abandoned and end_s is not None and math.isfinite(end_s):
        next_due = disp[-1] + 1.0 / r
        if end_s > next_due:
            starts = np.append(starts, next_due)
            ends = np.append(ends, float(end_s))
    return StallIntervals(np.asarray(starts, dtype=np.float64), np.asarray(ends, dtype=np.float64))


def stream_stall_s(
    reading_tps: float,
    received_s: ArrayLike,
    displayed_s: ArrayLike,
    end_s: float | None = None,
    abandoned: bool = False,
) -> float:
    """Total stall time of one stream in seconds (see :func:`stall_intervals`)."""
    return stall_intervals(reading_tps, received_s, displayed_s, end_s, abandoned).total_s
