"""Features of one stream's RTT and retransmit history, the same code for training and for serving.

The telemetry models (:mod:`controllers.telemetry_models`) see a stream through the vectors a
:class:`FeatureState` builds. Training (``python -m analysis train``) runs the very same class over
each stream of a telemetry file (:func:`series_features`), so a model never meets a feature computed
differently from the ones it learned on.

Every interval (one row of telemetry.csv, one controller call) the state gets the interval's smoothed
RTT, the p95 and minimum of its RTT samples, and its retransmit count. An RTT that is missing (no
sample this interval: ``None``, NaN, an empty cell, or 0 as seed 001's agent writes it; also inf) is
forward-filled with the last value known on the stream; a p95 never seen falls back to srtt and vice
versa. The **baseline** ``b`` is the smallest RTT seen on the stream so far (rtt_min, srtt or p95,
whichever is smaller, over every interval) — the path's propagation delay, as
:class:`controllers.signals.RttBaseline`. Every feature is a ratio to ``b`` (a log of one), a count or
a count of baseline RTTs, so a model trained on a 20 ms path reads a 200 ms path alike.

Anomaly vector (:meth:`FeatureState.anomaly_vector`, for the Isolation Forest), available from the
first interval with an RTT:

====================  ==========================================================================
``p95_rel``           log(p95 / b): queueing delay in the tail of this interval's RTT samples
``srtt_rel``          log(srtt / b): the same for the kernel's smoothed RTT
``retrans``           log(1 + retransmits this interval)
``p95_trend``         log(p95 / mean p95 over the last ``WINDOW`` intervals, this one included)
``sample_age``        log(1 + ms since the last interval that had a p95 sample / b): 0 while ACKs flow,
                      large when the path has gone silent (an outage keeps p95 forward-filled)
====================  ==========================================================================

Forecast vector (:meth:`FeatureState.forecast_vector`, for the next-interval p95 regressor),
available once ``LAGS`` intervals with an RTT are in:

====================  ==========================================================================
``p95_rel_lag{k}``    log(p95 / b) k intervals ago, k = 0..LAGS-1 (lags relative to the current b)
``retrans_lag{k}``    log(1 + retransmits) k intervals ago, k = 0..LAGS-1
``srtt_rel``          log(srtt / b)
``p95_mean_rel``      log(mean p95 over the last ``WINDOW`` intervals / b)
``sample_age``        as above
====================  ==========================================================================

The forecast is ``log(p95_next / b)`` with ``p95_next`` the *measured* p95 of the stream's next
interval (rows whose next interval has no sample are not training targets) and ``b`` the baseline now;
it goes back to ms as ``b * exp(pred)`` (:meth:`FeatureState.to_ms`). The trees learn it as a change
over persistence (:data:`FORECAST_TARGET`): ``pred = p95_rel_lag0 + tree_sum``. Trees are piecewise
constant and cannot reproduce the identity map that persistence (next p95 = this p95, forward-filled)
is, so fitting the residual makes "no change" what an uninformative tree predicts.

``FEATURE_VERSION`` names this definition; model files record it and refuse to load under another.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "ANOMALY_FEATURES",
    "FEATURE_VERSION",
    "FORECAST_FEATURES",
    "FORECAST_TARGET",
    "LAGS",
    "WINDOW",
    "FeatureState",
    "SeriesFeatures",
    "series_features",
    "series_features_from_columns",
]

FEATURE_VERSION = "tokenpace-features-1"
WINDOW = 10  # intervals in the rolling mean of p95 (1 s at the default 0.1 s control interval)
LAGS = 6  # past intervals of p95 and retransmits the forecaster sees

ANOMALY_FEATURES: tuple[str, ...] = ("p95_rel", "srtt_rel", "retrans", "p95_trend", "sample_age")
FORECAST_FEATURES: tuple[str, ...] = (
    *(f"p95_rel_lag{k}" for k in range(LAGS)),
    *(f"retrans_lag{k}" for k in range(LAGS)),
    "srtt_rel",
    "p95_mean_rel",
    "sample_age",
)

#: what the forecaster's trees output: the log change of p95 over the current (lag 0) value.
FORECAST_TARGET = "log(p95_next / p95_now)"

_log = math.log
_log1p = math.log1p


def _rtt(value: object) -> float | None:
    """An RTT cell as a positive finite float, or None (missing: None, '', NaN, inf, 0 or negative)."""
    if value is None:
        return None
    if type(value) is not float:
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return None
        value = float(value)  # type: ignore[arg-type]
    return value if 0.0 < value < math.inf else None  # NaN compares False


def _count(value: object) -> float:
    """A retransmit count (missing = 0)."""
    if value is None:
        return 0.0
    if type(value) is not float:
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return 0.0
        value = float(value)  # type: ignore[arg-type]
    return value if 0.0 < value < math.inf else 0.0


class FeatureState:
    """One stream's feature history. Call :meth:`update` once per interval, in time order."""

    __slots__ = ("_age_ms", "_base_ms", "_last_sample_t_s", "_p95_hist", "_p95_ms", "_retr_hist", "_srtt_ms")

    def __init__(self) -> None:
        self._base_ms = math.inf
        self._srtt_ms: float | None = None
        self._p95_ms: float | None = None
        self._last_sample_t_s: float | None = None
        self._age_ms = 0.0
        n = max(WINDOW, LAGS)
        self._p95_hist: deque[float] = deque(maxlen=n)  # forward-filled p95 per interval, newest last
        self._retr_hist: deque[float] = deque(maxlen=n)  # log1p(retransmits) per interval

    def update(
        self,
        t_s: float,
        srtt_ms: float | None,
        rtt_p95_ms: float | None,
        rtt_min_ms: float | None,
        retrans: float | None,
    ) -> None:
        """Take one interval. RTTs may be None (or NaN, '' or 0): no sample, keep the last value."""
        srtt = _rtt(srtt_ms)
        p95 = _rtt(rtt_p95_ms)
        low = _rtt(rtt_min_ms)
        for v in (low, srtt, p95):
            if v is not None and v < self._base_ms:
                self._base_ms = v
        if p95 is not None:
            self._p95_ms = p95
            self._last_sample_t_s = t_s
        elif self._p95_ms is None and srtt is not None:
            self._p95_ms = srtt  # no p95 yet: the smoothed RTT stands in
        if srtt is not None:
            self._srtt_ms = srtt
        elif self._srtt_ms is None:
            self._srtt_ms = self._p95_ms
        if self._p95_ms is None:
            return  # no RTT ever: nothing to describe yet
        if self._last_sample_t_s is None:
            self._last_sample_t_s = t_s  # srtt without a p95: count the age from here
        self._age_ms = max(0.0, (t_s - self._last_sample_t_s) * 1000.0)
        self._p95_hist.append(self._p95_ms)
        self._retr_hist.append(_log1p(_count(retrans)))

    # ------------------------------------------------------------------ what the models read
    @property
    def baseline_ms(self) -> float | None:
        """The smallest RTT seen on the stream (None before the first)."""
        return self._base_ms if self._base_ms < math.inf else None

    @property
    def p95_ms(self) -> float | None:
        """The current p95 RTT, forward-filled: the persistence forecast of the next interval's."""
        return self._p95_ms

    @property
    def srtt_ms(self) -> float | None:
        return self._srtt_ms

    @property
    def intervals(self) -> int:
        """Intervals with an RTT seen so far (capped at the history length)."""
        return len(self._p95_hist)

    def anomaly_vector(self) -> np.ndarray | None:
        """The anomaly features (``ANOMALY_FEATURES``), or None before the first RTT."""
        hist = self._p95_hist
        if not hist:
            return None
        b = self._base_ms
        p95 = hist[-1]
        recent = list(hist)[-WINDOW:]
        mean = sum(recent) / len(recent)
        return np.array(
            (
                _log(p95 / b),
                _log(self._srtt_ms / b),  # type: ignore[operator]
                self._retr_hist[-1],
                _log(p95 / mean),
                _log1p(self._age_ms / b),
            )
        )

    def forecast_vector(self) -> np.ndarray | None:
        """The forecast features (``FORECAST_FEATURES``), or None before ``LAGS`` intervals with an RTT."""
        hist = self._p95_hist
        if len(hist) < LAGS:
            return None
        b = self._base_ms
        p95s = list(hist)
        retr = list(self._retr_hist)
        recent = p95s[-WINDOW:]
        mean = sum(recent) / len(recent)
        values = [_log(p95s[-1 - k] / b) for k in range(LAGS)]
        values.extend(retr[-1 - k] for k in range(LAGS))
        values.append(_log(self._srtt_ms / b))  # type: ignore[operator]
        values.append(_log(mean / b))
        values.append(_log1p(self._age_ms / b))
        return np.array(values)

    def to_ms(self, log_ratio: float) -> float:
        """A forecast target (log of p95 over the baseline) back in ms."""
        return self._base_ms * math.exp(log_ratio)


# ------------------------------------------------------------------ the offline path
class SeriesFeatures(NamedTuple):
    """What :func:`series_features` returns. Anomaly rows and forecast rows are different subsets of
    the input rows; ``meta`` says which (row indices into the input, stream ids, times)."""

    X_anom: np.ndarray  # [n_anom, len(ANOMALY_FEATURES)]
    X_fcst: np.ndarray  # [n_fcst, len(FORECAST_FEATURES)]
    y_fcst_log: np.ndarray  # log(next interval's p95 / baseline now)
    y_fcst_ms: np.ndarray  # next interval's measured p95 (ms)
    persist_ms: np.ndarray  # this interval's p95, forward-filled (the persistence forecast)
    t: np.ndarray  # time of each forecast row (s)
    meta: dict[str, np.ndarray]
    # meta: "anom_row", "anom_t", "anom_stream" (per X_anom row); "fcst_row", "fcst_stream",
    # "fcst_target_t" (time of the interval the target was measured in), "fcst_baseline_ms" (per X_fcst row)


_COLUMNS = ("t", "stream_id", "srtt_ms", "rtt_p95_ms", "rtt_min_ms", "retrans")


def _as_float_array(values: Iterable[object]) -> np.ndarray:
    out = []
    for v in values:
        if v is None or (isinstance(v, str) and not v.strip()):
            out.append(math.nan)
        else:
            out.append(float(v))  # type: ignore[arg-type]
    return np.asarray(out, dtype=np.float64)


def series_features(rows: Sequence[Mapping[str, Any]]) -> SeriesFeatures:
    """Features of telemetry rows (dicts with keys t, stream_id, srtt_ms, rtt_p95_ms, rtt_min_ms,
    retrans; values numbers, numeric strings, '' or None), each stream in time order."""
    columns = {
        "t": _as_float_array(r["t"] for r in rows),
        "stream_id": np.asarray([str(r["stream_id"]) for r in rows], dtype=str),
        "srtt_ms": _as_float_array(r.get("srtt_ms") for r in rows),
        "rtt_p95_ms": _as_float_array(r.get("rtt_p95_ms") for r in rows),
        "rtt_min_ms": _as_float_array(r.get("rtt_min_ms") for r in rows),
        "retrans": _as_float_array(r.get("retrans") for r in rows),
    }
    return series_features_from_columns(columns)


def series_features_from_columns(columns: Mapping[str, np.ndarray]) -> SeriesFeatures:
    """:func:`series_features` on columns (numpy arrays, NaN = missing) instead of row dicts."""
    t = np.asarray(columns["t"], dtype=np.float64)
    sid = np.asarray(columns["stream_id"]).astype(str)
    srtt = np.asarray(columns["srtt_ms"], dtype=np.float64).tolist()
    p95 = np.asarray(columns["rtt_p95_ms"], dtype=np.float64).tolist()
    low = np.asarray(columns["rtt_min_ms"], dtype=np.float64).tolist()
    retr = np.asarray(columns["retrans"], dtype=np.float64).tolist()
    n = len(t)
    # each stream's rows in time order (stable: equal times keep the file's order)
    order = np.lexsort((np.arange(n), t, sid)) if n else np.zeros(0, dtype=np.intp)
    anom_rows: list[int] = []
    anom_vecs: list[np.ndarray] = []
    fc_rows: list[int] = []
    fc_vecs: list[np.ndarray] = []
    fc_target_rows: list[int] = []
    fc_base: list[float] = []
    fc_persist: list[float] = []
    tl = t.tolist()
    prev_sid: str | None = None
    state = FeatureState()
    pending: tuple[int, np.ndarray, float, float] | None = None  # last forecast row, waiting for its target
    for i in order.tolist():
        s = sid[i]
        if s != prev_sid:
            state = FeatureState()
            prev_sid = s
            pending = None
        if pending is not None:
            nxt = _rtt(p95[i])
            if nxt is not None:
                j, vec, base, persist = pending
                fc_rows.append(j)
                fc_vecs.append(vec)
                fc_target_rows.append(i)
                fc_base.append(base)
                fc_persist.append(persist)
            pending = None
        state.update(tl[i], srtt[i], p95[i], low[i], retr[i])
        a = state.anomaly_vector()
        if a is not None:
            anom_rows.append(i)
            anom_vecs.append(a)
        f = state.forecast_vector()
        if f is not None:
            pending = (i, f, state._base_ms, state.p95_ms)  # type: ignore[assignment]
    n_a, n_f = len(ANOMALY_FEATURES), len(FORECAST_FEATURES)
    X_anom = np.vstack(anom_vecs) if anom_vecs else np.zeros((0, n_a))
    X_fcst = np.vstack(fc_vecs) if fc_vecs else np.zeros((0, n_f))
    fc_idx = np.asarray(fc_rows, dtype=np.intp)
    tgt_idx = np.asarray(fc_target_rows, dtype=np.intp)
    base = np.asarray(fc_base, dtype=np.float64)
    y_ms = np.asarray([p95[j] for j in fc_target_rows], dtype=np.float64)
    anom_idx = np.asarray(anom_rows, dtype=np.intp)
    meta = {
        "anom_row": anom_idx,
        "anom_t": t[anom_idx],
        "anom_stream": sid[anom_idx],
        "fcst_row": fc_idx,
        "fcst_stream": sid[fc_idx],
        "fcst_target_t": t[tgt_idx],
        "fcst_baseline_ms": base,
    }
    y_log = np.log(y_ms / base) if len(base) else np.zeros(0)
    return SeriesFeatures(
        X_anom=X_anom,
        X_fcst=X_fcst,
        y_fcst_log=y_log,
        y_fcst_ms=y_ms,
        persist_ms=np.asarray(fc_persist, dtype=np.float64),
        t=t[fc_idx],
        meta=meta,
    )
