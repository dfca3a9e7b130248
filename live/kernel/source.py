"""The seam between the kernel and the server: per-socket TCP state, drained once per control interval.

A telemetry source is anything with ``poll() -> dict[cookie, SocketStats]``. The eBPF source
(``live/kernel/telemetry.py``) fills it from the ``tcp:tcp_probe`` and ``tcp:tcp_retransmit_skb``
tracepoints; :class:`FakeTelemetry` replays scripted samples so the server and controllers run in
tests without root. The server maps a cookie to its stream with ``getsockopt(SO_COOKIE)``.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

SO_COOKIE = getattr(socket, "SO_COOKIE", 57)  # Linux >= 4.13; value from asm-generic/socket.h


@dataclass(frozen=True, slots=True)
class SocketStats:
    """One socket over one interval, as the kernel saw it (what the probes aggregate)."""

    cookie: int
    srtt_us: int | None  # last smoothed RTT (tcp_probe srtt, us)
    rtt_min_us: int | None  # min / max / p95 of the srtt values seen this interval
    rtt_max_us: int | None
    rtt_p95_us: int | None
    retrans: int  # retransmitted segments this interval
    cwnd_pkts: int | None
    ssthresh_pkts: int | None
    snd_wnd_bytes: int | None
    inflight_bytes: int  # snd_nxt - snd_una at the last probe
    acked_bytes: int  # bytes newly acked this interval
    samples: int  # probe hits this interval


class TelemetrySource(Protocol):
    def start(self) -> None: ...
    def poll(self) -> dict[int, SocketStats]: ...
    def close(self) -> None: ...


def socket_cookie(sock: socket.socket) -> int:
    """The kernel's stable id of a socket (what tcp_probe reports as sock_cookie)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8)
    return int(struct.unpack("<Q", raw)[0])


class FakeTelemetry:
    """Scripted telemetry: each poll() returns the next dict of samples (then empty dicts)."""

    def __init__(self, script: Iterable[dict[int, SocketStats]] = ()) -> None:
        self._script: Iterator[dict[int, SocketStats]] = iter(list(script))
        self.polls = 0
        self.started = False
        self.closed = False
        self.pending: dict[int, SocketStats] = {}

    def push(self, stats: SocketStats) -> None:
        """Queue a sample for the next poll (tests drive the source this way)."""
        self.pending[stats.cookie] = stats

    def start(self) -> None:
        self.started = True

    def poll(self) -> dict[int, SocketStats]:
        self.polls += 1
        out = next(self._script, {})
        if self.pending:
            out = {**out, **self.pending}
            self.pending = {}
        return out

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeTelemetry:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
