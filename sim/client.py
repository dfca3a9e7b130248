"""The reader model (:mod:`sim.model.reader`) on SimPy's clock, fed by a TCP receiver's byte stream.

Display times follow from arrival times, so they are computed when a segment arrives; the only
event a reader needs is its patience deadline, kept as one lazily re-armed timer (SimPy cannot
cancel a timeout): a deadline that moves later re-arms when the pending timer fires, one that moves
earlier (the first token in, a patience shorter than the first-token patience) arms a new timer and
the pending one is ignored when it fires.
"""

from __future__ import annotations

from collections.abc import Callable

import simpy

from sim.model.reader import COMPLETED, READING, ReaderModel


class Reader(ReaderModel):
    """A reader in a simulated run: ``on_end(reader)`` is called once, when it completes or abandons."""

    __slots__ = ("_bpt", "_on_end", "_timer_at_s", "env")

    def __init__(self, env: simpy.Environment, arrival_s: float, n_tokens: int, reading_tps: float,
                 patience_s: float, first_patience_s: float, on_end: Callable[[Reader], None],
                 bytes_per_token: int = 1) -> None:
        super().__init__(arrival_s, n_tokens, reading_tps, patience_s, first_patience_s)
        self.env = env
        self._on_end = on_end
        self._bpt = bytes_per_token
        self._timer_at_s = float("inf")  # when the pending timer fires (inf: none pending)
        self._arm()

    def on_bytes(self, nbytes: int) -> None:
        """The client's in-order byte stream reached ``nbytes`` (the TCP receiver calls this per segment)."""
        if not self.receive(nbytes // self._bpt, self.env.now):
            return  # no token completed (a part of one): nothing changes, the deadline included
        if self.state == COMPLETED:
            self._on_end(self)
        elif self.deadline_s < self._timer_at_s:
            self._arm()  # the deadline moved earlier: a new timer

    def _arm(self) -> None:
        self._timer_at_s = self.deadline_s
        delay = max(0.0, self.deadline_s - self.env.now)
        self.env.timeout(delay).callbacks.append(lambda _e, at=self._timer_at_s: self._on_timer(at))

    def _on_timer(self, at_s: float) -> None:
        if self.state != READING or at_s != self._timer_at_s:
            return  # ended, or superseded by an earlier timer
        self._timer_at_s = float("inf")
        if self.expire(self.env.now):
            self._on_end(self)
        else:
            self._arm()  # tokens came in meanwhile: wait for the new deadline
