"""The person reading, clock-free: tokens arrive in a buffer and are displayed at the reader's own pace.

Token i is displayed no earlier than it arrives and no earlier than ``1/reading_tps`` after token
i-1 was displayed; the first token is displayed on arrival. If a token is due and has not arrived
the reader stalls, and the schedule shifts by the stall (video rebuffering, applied to text). After
``patience_s`` of continuous stall, or ``first_patience_s`` of waiting for the first token, the
reader gives up.

Display times follow from arrival times alone, so they are computed when tokens arrive; the only
time-driven event is giving up, at :attr:`ReaderModel.deadline_s` unless more tokens arrive first.
Time is an argument here: the simulator drives this model on SimPy's clock (:mod:`sim.client`) and
the live load client on asyncio's (:mod:`live.loadgen.client`), each with its own timer for the deadline.
"""

from __future__ import annotations

import math

READING, COMPLETED, ABANDONED, CANCELLED = "reading", "completed", "abandoned", "cancelled"
# A timer set for the deadline may fire a rounding error before it (SimPy's now + (deadline - now)).
DEADLINE_TOLERANCE_S = 1e-9


class ReaderModel:
    """One reader's display schedule, stall time and outcome; every method is told the time."""

    __slots__ = (
        "arrival_s",
        "deadline_s",
        "end_s",
        "n_tokens",
        "patience_s",
        "reading_tps",
        "received",
        "stall_s",
        "state",
        "t_displayed",
        "t_received",
    )

    def __init__(self, arrival_s: float, n_tokens: int, reading_tps: float, patience_s: float,
                 first_patience_s: float) -> None:
        self.arrival_s = arrival_s
        self.n_tokens = n_tokens
        self.reading_tps = reading_tps
        self.patience_s = patience_s
        self.t_received: list[float] = [math.nan] * n_tokens
        self.t_displayed: list[float] = [math.nan] * n_tokens
        self.received = 0
        self.stall_s = 0.0
        self.state = READING
        self.end_s = math.nan
        self.deadline_s = arrival_s + first_patience_s  # when the reader gives up unless tokens arrive

    def due_s(self) -> float:
        """When the next token is due on screen."""
        if self.received == 0:
            return self.arrival_s
        return self.t_displayed[self.received - 1] + 1.0 / self.reading_tps

    def receive(self, count: int, now: float) -> bool:
        """The first ``count`` tokens are in the buffer at ``now`` (in order). False when nothing changed
        (no new token, or the reader has left); otherwise the reader either completed or has a new
        :attr:`deadline_s`."""
        i = self.received
        if count <= i or self.state != READING:
            return False
        n = self.n_tokens
        if count > n:
            count = n
        gap = 1.0 / self.reading_tps
        received, displayed = self.t_received, self.t_displayed
        # Token j is shown at max(arrival, shown_{j-1} + gap); the first token on arrival. Written with
        # locals: the simulator calls this once per delivered segment.
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
        else:
            self.deadline_s = shown + gap + self.patience_s  # due_s() + patience
        return True

    def expire(self, now: float) -> bool:
        """The deadline timer fired at ``now``: abandon (True) if the deadline has come, else keep reading."""
        if self.state != READING or now + DEADLINE_TOLERANCE_S < self.deadline_s:
            return False
        self.abandon(now)
        return True

    def abandon(self, now: float) -> None:
        """The reader leaves at ``now``; a wait after the first token counts as stall up to then."""
        if self.received:
            self.stall_s += now - self.due_s()
        self.state = ABANDONED
        self.end_s = now

    def cut(self, now: float) -> None:
        """The run ended while this reader was still reading (outcome ``cancelled``)."""
        self.state = CANCELLED
        self.end_s = now

    def finish_short(self) -> None:
        """The server ended the stream after fewer tokens than asked: complete at that length."""
        n = self.received
        self.n_tokens = n
        self.t_received = self.t_received[:n]
        self.t_displayed = self.t_displayed[:n]
        self.state = COMPLETED
        self.end_s = self.t_displayed[-1]
