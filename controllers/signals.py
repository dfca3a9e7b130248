"""Small estimators several controllers share, computed from successive observations only.

* ``backlog_tokens`` — tokens generated but not yet acked by the client (unsent + in flight). They
  are not yet useful to the reader, and every one of them is wasted if the reader leaves now.
* :class:`DeliveryMeter` — how fast the path has been acking this stream's tokens: a sliding
  window of ``(t_s, acked_tokens)`` points, so a rate over the last ``window_s`` seconds, and the
  last interval's delta for controllers that keep their own history.
* :class:`RttBaseline` — the smallest RTT seen on the stream: the propagation delay without
  queueing, the baseline that RTT-driven laws compare against (as BBR's min_rtt, without expiry:
  streams live for tens of seconds).
"""

from __future__ import annotations

import math
from collections import deque

from controllers.base import Observation


def backlog_tokens(obs: Observation) -> int:
    return max(0, obs.generated_tokens - obs.acked_tokens)


class DeliveryMeter:
    """Acked tokens per second over a sliding window, from the observations' ``t_s`` alone."""

    __slots__ = ("_points", "last_delta_tokens", "last_dt_s", "window_s")

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._points: deque[tuple[float, int]] = deque()
        self.last_delta_tokens = 0  # acked in the last interval
        self.last_dt_s = 0.0  # its length (0 before the second observation)

    def update(self, t_s: float, acked_tokens: int) -> None:
        pts = self._points
        if pts and t_s <= pts[-1][0]:
            return  # time did not advance: nothing new to learn
        if pts:
            self.last_delta_tokens = max(0, acked_tokens - pts[-1][1])
            self.last_dt_s = t_s - pts[-1][0]
        pts.append((t_s, acked_tokens))
        while len(pts) > 2 and t_s - pts[1][0] >= self.window_s:
            pts.popleft()  # keep one point at or beyond the window's start

    def rate_tps(self) -> float:
        """Tokens acked per second over the window (0 until two observations are in)."""
        pts = self._points
        if len(pts) < 2:
            return 0.0
        (t0, a0), (t1, a1) = pts[0], pts[-1]
        return max(0, a1 - a0) / (t1 - t0)


class RttBaseline:
    """min over the stream of srtt and the per-interval minimum RTT sample (ms)."""

    __slots__ = ("min_ms",)

    def __init__(self) -> None:
        self.min_ms = math.inf

    def update(self, obs: Observation) -> float:
        for v in (obs.srtt_ms, obs.rtt_min_ms):
            if v is not None and 0 < v < self.min_ms:
                self.min_ms = v
        return self.min_ms

    def ratio(self, rtt_ms: float | None) -> float:
        """rtt / baseline (1.0 when either is unknown)."""
        if rtt_ms is None or not math.isfinite(self.min_ms):
            return 1.0
        return max(1.0, rtt_ms / self.min_ms)
