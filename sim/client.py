"""The person reading: tokens arrive in a buffer and are displayed at the reader's own pace.

Token i is displayed no earlier than it arrives and no earlier than ``1/reading_tps`` after
token i-1 was displayed. If it is due and has not arrived the reader stalls, and the schedule
shifts by the stall (video rebuffering, applied to text). After ``patience_s`` of continuous
stall, or of waiting for the first token, the reader gives up.

Display times follow from arrival times alone, so they are computed when a token arrives; the
only event the reader needs is a lazily re-armed patience timer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import simpy

READING, COMPLETED, ABANDONED, CANCELLED = "reading", "completed", "abandoned", "cancelled"


class Reader:
    __slots__ = (
        "_bpt",
        "_deadline_s",
        "_on_end",
        "_timer_at_s",
        "arrival_s",
        "end_s",
        "env",
        "first_patience_s",
        "n_tokens",
        "patience_s",
        "reading_tps",
        "received",
        "stall_s",
        "state",
        "t_displayed",
        "t_received",
    )

    def __init__(self, env: simpy.Environment, arrival_s: float, n_tokens: int, reading_tps: float,
                 patience_s: float, first_patience_s: float, on_end: Callable[[Reader], None],
                 bytes_per_token: int = 1) -> None:
        self.env = env
        self.arrival_s = arrival_s
        self.n_tokens = n_tokens
        self.reading_tps = reading_tps
        self.patience_s = patience_s
        self.first_patience_s = first_patience_s
        self.t_received: list[float] = [math.nan] * n_tokens
        self.t_displayed: list[float] = [math.nan] * n_tokens
        self.received = 0
        self.stall_s = 0.0
        self.state = READING
        self.end_s = math.nan
        self._on_end = on_end
        self._bpt = bytes_per_token  # for on_bytes
        self._deadline_s = arrival_s + first_patience_s
        self._timer_at_s = float("inf")  # when the pending timer fires (inf: none pending)
        self._arm()

    @property
    def displayed(self) -> int:
        return self.received  # every received token is displayed by the time the reader leaves

    def due_s(self) -> float:
        """When the next token is due on screen."""
        if self.received == 0:
            return self.arrival_s
        return self.t_displayed[self.received - 1] + 1.0 / self.reading_tps

    def on_tokens(self, count: int) -> None:
        """``count`` tokens are now in the client's buffer (in order)."""
        self.on_bytes(count * self._bpt)

    def on_bytes(self, nbytes: int) -> None:
        """The client's in-order byte stream reached ``nbytes`` (the TCP receiver calls this per segment)."""
        i = self.received
        count = nbytes // self._bpt
        if count <= i or self.state != READING:
            return  # no token completed (a part of one): nothing changes, the deadline included
        n = self.n_tokens
        if count > n:
            count = n
        now = self.env.now
        gap = 1.0 / self.reading_tps
        received, displayed = self.t_received, self.t_displayed
        # Display times follow from arrival times: token i is shown at max(arrival, shown_{i-1} + gap);
        # the first token is shown on arrival. Written with locals: this runs once per packet.
        shown = now if i == 0 else displayed[i - 1]
        for j in range(i, count):
            received[j] = now
            if j:
                due = shown + gap
                if now > due:
                    self.stall_s += now - due
                shown = max(now, due)
            displayed[j] = shown
        self.received = count
        if count >= n:
            self.state = COMPLETED
            self.end_s = shown
            self._on_end(self)
            return
        self._deadline_s = shown + gap + self.patience_s  # due_s() + patience
        if self._deadline_s < self._timer_at_s:
            self._arm()  # the deadline moved earlier (first token in, shorter patience): a new timer

    def _arm(self) -> None:
        """One pending timer; a later deadline re-arms when it fires, an earlier one replaces it."""
        if self.state != READING:
            return
        self._timer_at_s = self._deadline_s
        delay = max(0.0, self._deadline_s - self.env.now)
        self.env.timeout(delay).callbacks.append(lambda _e, at=self._timer_at_s: self._on_timer(at))

    def _on_timer(self, at_s: float) -> None:
        if self.state != READING or at_s != self._timer_at_s:
            return  # ended, or superseded by an earlier timer
        self._timer_at_s = float("inf")
        if self.env.now + 1e-9 >= self._deadline_s:
            self.abandon()
        else:
            self._arm()  # tokens came in meanwhile: wait for the new deadline

    def abandon(self) -> None:
        if self.received:
            self.stall_s += self.env.now - self.due_s()
        self.state = ABANDONED
        self.end_s = self.env.now
        self._on_end(self)

    def cut(self, t_s: float) -> None:
        """The run ended while this reader was still reading (outcome ``cancelled``)."""
        self.state = CANCELLED
        self.end_s = t_s
