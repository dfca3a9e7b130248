"""The server's estimate of where a reader is, from ACKs alone.

The server cannot see the client's screen. It knows which tokens the client has acked and the
pace the client asked for, so it replays the reader: the estimated read position advances at
``reading_tps`` while acked-but-unread tokens remain, and stops (the reader stalls) when they
run out. ``client_buffer_est`` is acked tokens minus that position. Sim and live use this one
class so both halves compute the observation the same way.
"""

from __future__ import annotations


class ReaderEstimate:
    __slots__ = ("_last_t_s", "position", "reading_tps")

    def __init__(self, reading_tps: float) -> None:
        self.reading_tps = reading_tps
        self.position = 0.0  # tokens the reader has consumed (estimate)
        self._last_t_s: float | None = None

    def update(self, t_s: float, acked_tokens: int) -> float:
        """Advance to t_s and return the estimated client buffer (tokens)."""
        if acked_tokens <= 0:
            self._last_t_s = None  # the reading clock starts at the first acked token
            return 0.0
        if self._last_t_s is None:
            self.position = 1.0  # the first token is displayed on arrival
        else:
            self.position += self.reading_tps * (t_s - self._last_t_s)
        self.position = min(self.position, float(acked_tokens))
        self._last_t_s = t_s
        return acked_tokens - self.position
