"""The bottleneck of a path: random loss, then a drop-tail FIFO queue, then propagation.

A packet offered to it first meets random loss (a lossy radio, a netem ``loss`` rule); if it
survives and the queue has room it waits behind the packets already queued, is transmitted at
whatever rate the capacity model gives at that moment, and reaches the far end one propagation
delay (plus any delay-fault windows covering its departure) later.

The queue is a *virtual queue*: service is first-in first-out and deterministic, so a packet's
departure time is known the moment it is enqueued -- its transmission starts when the previous
packet has left (or now, if the queue is empty) and lasts as long as the capacity model says. The
backlog at any instant is the bytes of the packets whose departure lies in the future. Nothing runs
in the background and time is an argument: the simulator's ``sim.link.Link`` turns each arrival into
one SimPy event, the live ``live.lab.tunlink`` into one timer deadline.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

from sim.model.path.capacity import Capacity, ConstantCapacity
from sim.model.path.loss import LossModel, NoLoss

__all__ = ["Bottleneck"]


class Bottleneck:
    """``offer(now_s, size_bytes)`` -> the packet's arrival time at the far end, or None if it is dropped.

    Random loss first (None, counted in ``random_drops``), then the drop-tail FIFO virtual queue of
    ``queue_bytes`` (None when the packet does not fit, counted in ``tail_drops``), departure from the
    capacity model, arrival = departure + ``prop_delay_s`` + the ``delay_windows`` ``(start_s, end_s,
    added_s)`` covering the departure, clamped so that arrivals never overtake (a packet whose delay
    shrinks arrives no earlier than the one before it). ``math.inf`` means the capacity never serves
    the packet (a trace or schedule that ends): it stays in the queue for good (``stuck_pkts``).
    Calls must come with non-decreasing ``now_s``.

    Counters: ``offered_pkts`` / ``offered_bytes`` (everything offered, dropped or not),
    ``passed_pkts`` / ``passed_bytes`` (given a finite arrival), ``random_drops``, ``tail_drops``,
    ``stuck_pkts``, ``max_backlog_bytes``.
    """

    __slots__ = (
        "_backlog_bytes",
        "_delay_windows",
        "_last_arr_s",
        "_last_dep_s",
        "_queue",
        "_s_per_byte",
        "_tx_finish_s",
        "_unpassed_bytes",
        "capacity",
        "loss",
        "max_backlog_bytes",
        "offered_bytes",
        "offered_pkts",
        "prop_delay_s",
        "queue_bytes",
        "random_drops",
        "stuck_pkts",
        "tail_dropped",
        "tail_drops",
    )

    def __init__(self, capacity: Capacity, prop_delay_s: float, queue_bytes: int, loss: LossModel | None = None,
                 delay_windows: Iterable[tuple[float, float, float]] = ()) -> None:
        if prop_delay_s < 0 or queue_bytes <= 0:
            raise ValueError("prop_delay_s must be >= 0 and queue_bytes > 0")
        self.capacity = capacity
        self._tx_finish_s = capacity.tx_finish_s  # bound once: called per packet
        self._s_per_byte = capacity.s_per_byte if type(capacity) is ConstantCapacity else 0.0
        self.prop_delay_s = prop_delay_s
        self.queue_bytes = queue_bytes
        self.loss = None if isinstance(loss, NoLoss) else loss  # None: no random loss
        self._delay_windows = list(delay_windows)
        self._queue: deque[tuple[float, int]] = deque()  # (departure_s, size_bytes) of packets not yet gone
        self._backlog_bytes = 0
        self._last_dep_s = -math.inf
        self._last_arr_s = -math.inf
        self.offered_pkts = self.offered_bytes = self._unpassed_bytes = 0
        self.random_drops = self.tail_drops = self.stuck_pkts = self.max_backlog_bytes = 0
        self.tail_dropped = False  # whether the last packet dropped was a tail drop (else a random loss)

    @property
    def passed_pkts(self) -> int:
        """Packets given a finite arrival time (derived: `offer` counts only what it must, per packet)."""
        return self.offered_pkts - self.random_drops - self.tail_drops - self.stuck_pkts

    @property
    def passed_bytes(self) -> int:
        return self.offered_bytes - self._unpassed_bytes

    def backlog_bytes(self, now_s: float) -> int:
        """Bytes queued or in transmission at ``now_s``."""
        q = self._queue
        while q and q[0][0] <= now_s:
            self._backlog_bytes -= q.popleft()[1]
        return self._backlog_bytes

    def offer(self, now_s: float, size_bytes: int) -> float | None:
        """The arrival time at the far end of a packet offered at ``now_s``; None if the link drops it.

        ``sim.link.Link.send`` holds an inlined copy of this, on this object's fields (the simulator's
        per-packet fast path, issue #13): change both together; tests/test_path_model.py pins them.
        """
        self.offered_pkts += 1
        self.offered_bytes += size_bytes
        if self.loss is not None and self.loss.lost(now_s):
            self.random_drops += 1
            self._unpassed_bytes += size_bytes
            self.tail_dropped = False
            return None
        q = self._queue
        while q and q[0][0] <= now_s:  # the same as backlog_bytes(), inlined
            self._backlog_bytes -= q.popleft()[1]
        backlog = self._backlog_bytes + size_bytes
        if backlog > self.queue_bytes:
            self.tail_drops += 1
            self._unpassed_bytes += size_bytes
            self.tail_dropped = True
            return None
        last_dep_s = self._last_dep_s
        start_s = last_dep_s if last_dep_s > now_s else now_s
        s_per_byte = self._s_per_byte  # a constant rate: tx_finish_s inlined
        dep_s = start_s + size_bytes * s_per_byte if s_per_byte else self._tx_finish_s(start_s, size_bytes)
        self._last_dep_s = dep_s
        q.append((dep_s, size_bytes))
        self._backlog_bytes = backlog
        if backlog > self.max_backlog_bytes:
            self.max_backlog_bytes = backlog
        if dep_s == math.inf:
            self.stuck_pkts += 1
            self._unpassed_bytes += size_bytes
            return math.inf
        arr_s = dep_s + self.prop_delay_s
        if self._delay_windows:
            arr_s += sum(d for s, e, d in self._delay_windows if s <= dep_s < e)
        if arr_s < self._last_arr_s:
            arr_s = self._last_arr_s
        self._last_arr_s = arr_s
        return arr_s

    def continue_from(self, other: Bottleneck, now_other_s: float, shift_s: float) -> None:
        """Take over the packets ``other`` still holds at ``now_other_s`` on its clock, which reads
        ``shift_s`` more than this one's: the queue, the last departure and the last arrival."""
        other.backlog_bytes(now_other_s)
        for dep_s, size in other._queue:
            self._queue.append((dep_s - shift_s, size))
            self._backlog_bytes += size
        self._last_dep_s = max(self._last_dep_s, other._last_dep_s - shift_s)
        self._last_arr_s = max(self._last_arr_s, other._last_arr_s - shift_s)

    def counters(self) -> dict[str, int]:
        return {"offered_pkts": self.offered_pkts, "offered_bytes": self.offered_bytes,
                "passed_pkts": self.passed_pkts, "passed_bytes": self.passed_bytes,
                "random_drops": self.random_drops, "tail_drops": self.tail_drops, "stuck_pkts": self.stuck_pkts,
                "max_backlog_bytes": self.max_backlog_bytes}
