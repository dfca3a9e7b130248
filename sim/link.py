"""The simulator's side of the network path: the bottleneck and the reverse path as SimPy events.

The path model itself -- capacity, loss, the drop-tail FIFO virtual queue -- is clock-free and lives
in ``sim.model.path``; live mode's user-space link (``live.lab.tunlink``) runs the same objects. Here a
`Link` offers each packet to a ``Bottleneck`` and turns its arrival time into one scheduled event
(nothing runs per packet in the background), and `DelayLine` is the reverse (ACK) path: a fixed
delay, no queue, no loss.

The capacity and loss classes are importable from here too while ``tests/test_tcp.py`` and
``tests/test_fidelity_tcp.py`` still do (issue #13: the old import paths go at the end of the move).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from heapq import heappush
from typing import Protocol, TypeVar

import simpy
from simpy.events import NORMAL, Event

from sim.model.path import (
    BernoulliLoss,
    Bottleneck,
    Capacity,
    ConstantCapacity,
    GilbertElliottLoss,
    LossModel,
    TraceCapacity,
)

__all__ = [
    "BernoulliLoss",
    "ConstantCapacity",
    "DelayLine",
    "GilbertElliottLoss",
    "Link",
    "LossModel",
    "TraceCapacity",
    "call_at",
]


class Packet(Protocol):
    """All the link needs to know about a packet."""

    size_bytes: int


P = TypeVar("P", bound=Packet)


_new_event = Event.__new__


def call_at(env: simpy.Environment, t_s: float, fn: Callable[[Event], None], value: object = None) -> Event:
    """Call `fn(event)` at absolute simulated time `t_s`, with `event.value` = `value`.

    Why not `env.timeout(t_s - env.now)`: `now + (t - now)` can come out one ulp early or late,
    which could swap two packets that a FIFO link must deliver in order. This pushes the same
    tuple `Environment.schedule` pushes, with the exact time, and skips `Event.__init__` (it is
    on the per-packet path; `Link.send` and `DelayLine.send` inline the same lines).
    """
    ev = _new_event(Event)
    ev.env = env
    ev.callbacks = [fn]
    ev._ok = True
    ev._value = value
    heappush(env._queue, (t_s, NORMAL, next(env._eid), ev))  # type: ignore[attr-defined]
    return ev


class Link:
    """A bottleneck (``sim.model.path.Bottleneck``: random loss, a drop-tail FIFO queue of
    `queue_bytes`, propagation plus `delay_windows`) on the simulator's clock.

    `send` returns False only for a tail drop; a random loss is silent (the sender cannot tell it
    from a packet in flight, like the real thing) and returns True. Counters: `sent_pkts` (offered
    to the link, including dropped ones), `delivered_bytes` (bytes that have reached the far end),
    `tail_drops`, `random_drops`; the bottleneck's own in `bottleneck.counters()`.
    """

    __slots__ = ("_arrive_cb", "_env", "bottleneck", "delivered_bytes", "name")

    def __init__(
        self,
        env: simpy.Environment,
        capacity: Capacity,
        prop_delay_s: float,
        queue_bytes: int,
        loss: LossModel | None = None,
        delay_windows: Iterable[tuple[float, float, float]] = (),
        name: str = "",
    ) -> None:
        self._env = env
        self.bottleneck = Bottleneck(capacity, prop_delay_s, queue_bytes, loss, delay_windows)
        self._arrive_cb = self._arrive
        self.name = name
        self.delivered_bytes = 0

    @property
    def capacity(self) -> Capacity:
        return self.bottleneck.capacity

    @property
    def prop_delay_s(self) -> float:
        return self.bottleneck.prop_delay_s

    @property
    def queue_bytes(self) -> int:
        return self.bottleneck.queue_bytes

    @property
    def sent_pkts(self) -> int:
        return self.bottleneck.offered_pkts

    @property
    def tail_drops(self) -> int:
        return self.bottleneck.tail_drops

    @property
    def random_drops(self) -> int:
        return self.bottleneck.random_drops

    def backlog_bytes(self) -> int:
        """Bytes queued or in transmission at `env.now`."""
        return self.bottleneck.backlog_bytes(self._env.now)

    def send(self, pkt: P, on_arrive: Callable[[P], None]) -> bool:
        """Offer `pkt`; on success `on_arrive(pkt)` is called when it reaches the far end.

        A fast path (issue #13): this is ``Bottleneck.offer``'s arithmetic inlined on the bottleneck's
        own fields, because the simulator offers every packet and the extra call layers cost ~1-2% of a
        run. Keep the two in step: tests/test_path_model.py pins this copy against ``offer`` on random
        offer sequences (arrivals, drops, backlog, counters).
        """
        env = self._env
        now = env.now
        b = self.bottleneck
        size = pkt.size_bytes
        b.offered_pkts += 1
        b.offered_bytes += size
        if b.loss is not None and b.loss.lost(now):
            b.random_drops += 1
            b._unpassed_bytes += size
            b.tail_dropped = False
            return True  # a random loss is silent
        q = b._queue
        while q and q[0][0] <= now:
            b._backlog_bytes -= q.popleft()[1]
        backlog = b._backlog_bytes + size
        if backlog > b.queue_bytes:
            b.tail_drops += 1
            b._unpassed_bytes += size
            b.tail_dropped = True
            return False
        last_dep_s = b._last_dep_s
        start_s = last_dep_s if last_dep_s > now else now
        s_per_byte = b._s_per_byte
        dep_s = start_s + size * s_per_byte if s_per_byte else b._tx_finish_s(start_s, size)
        b._last_dep_s = dep_s
        q.append((dep_s, size))
        b._backlog_bytes = backlog
        if backlog > b.max_backlog_bytes:
            b.max_backlog_bytes = backlog
        if dep_s == math.inf:
            b.stuck_pkts += 1
            b._unpassed_bytes += size
            return True  # the capacity never serves it (a trace that ended): stuck in the queue for good
        arr_s = dep_s + b.prop_delay_s
        if b._delay_windows:
            arr_s += sum(d for s, e, d in b._delay_windows if s <= dep_s < e)
        if arr_s < b._last_arr_s:
            arr_s = b._last_arr_s
        b._last_arr_s = arr_s
        # call_at(env, arr_s, self._arrive_cb, (pkt, on_arrive)), inlined: this runs for every packet.
        ev = _new_event(Event)
        ev.env = env
        ev.callbacks = [self._arrive_cb]
        ev._ok = True
        ev._value = (pkt, on_arrive)
        heappush(env._queue, (arr_s, NORMAL, next(env._eid), ev))  # type: ignore[attr-defined]
        return True

    def _arrive(self, ev: Event) -> None:
        pkt, on_arrive = ev._value
        self.delivered_bytes += pkt.size_bytes
        on_arrive(pkt)

class DelayLine:
    """The reverse (ACK) path: every item arrives `delay_s` after it was sent, in order.

    No queue and no loss: we model the downlink as the bottleneck and assume the uplink that
    carries ACKs is uncongested (ACKs are small and few compared with the data they acknowledge).
    Order is kept without clamping: a fixed delay added to a non-decreasing clock is non-decreasing.
    """

    __slots__ = ("_env", "delay_s")

    def __init__(self, env: simpy.Environment, delay_s: float) -> None:
        if delay_s < 0:
            raise ValueError("delay_s must be >= 0")
        self._env = env
        self.delay_s = delay_s

    def send(self, item: object, on_arrive: Callable[[Event], None]) -> None:
        """Call `on_arrive(event)` `delay_s` from now, with `event.value` = `item`.

        The callback takes the event (SimPy's callback signature) rather than the item so that no
        adapter runs per item: this is once per ACK.
        """
        env = self._env
        # call_at(env, env.now + self.delay_s, on_arrive, item), inlined.
        ev = _new_event(Event)
        ev.env = env
        ev.callbacks = [on_arrive]
        ev._ok = True
        ev._value = item
        heappush(env._queue, (env.now + self.delay_s, NORMAL, next(env._eid), ev))  # type: ignore[attr-defined]
