"""A user-space link between two network namespaces: the simulator's link model, applied to real packets.

Like Mahimahi's ``mm-link``: two TUN devices, ``<name>a`` in namespace ``<name>-a`` (the server side) and
``<name>b`` in ``<name>-b`` (the client side), addressed point-to-point (``10.202.N.1`` <-> ``10.202.N.2``),
and one process in the root namespace that reads every IP packet one side sends and writes it into the
other side at the time the path model says it arrives. No qdisc is involved, so this works on kernels
without sch_netem or fq, and it reproduces what tbf + a dropper cannot: the path's propagation delay
(``rtt_ms``), delay faults, and Mahimahi traces packet by packet.

The model is the simulator's, not a copy of its behaviour: the downlink (a -> b: data) is the path
model's ``sim.model.path.Bottleneck``, built by ``PathModel.from_spec(spec, faults, base_dir)`` as the
simulator's ``sim.network.build_path`` builds its link -- the same capacity object (constant rate,
schedule or trace, with rate and outage faults), the same loss object (Bernoulli / Gilbert-Elliott plus
loss-fault windows, seeded like the simulator's path) and the same ``offer`` arithmetic: random loss
first, then a drop-tail FIFO virtual queue of ``queue_bytes``, departure =
``capacity.tx_finish_s(max(now, last_departure), size)``, arrival = departure + rtt/2 + the delay faults
covering the departure, arrivals never overtaking. The uplink (b -> a: ACKs, requests) is what the
simulator's ``DelayLine`` is, a pure delay of rtt/2 with no queue and no loss (:class:`DelaySchedule`).
A packet's size is its IP length as read from the TUN device, headers included — what ``sim.tcp``
counts too (MSS + 52 bytes of IP + TCP + timestamp option headers: 1500 for a full segment).

Several paths (a scenario's ``wifi`` and ``wired``, say) share one TUN pair: the client side gets one
address per path (``10.202.N.2``, ``.3``, ...), each path its own :class:`Bottleneck` and
:class:`DelaySchedule`, its own loss stream (the simulator's for that path's index), and a packet
takes the path of its client-side address -- the destination on the downlink, the source on the
uplink. A client socket bound to a path's address therefore crosses that path both ways; one that
does not bind gets path 0. All paths share one release heap; each keeps its own FIFO order and
timing, as in the simulator, where every path is an independent link.

Time 0 of the path's timeline (rate schedule, trace, faults) is :meth:`LinkProcess.start_clock`.
Before it the link serves at the t=0 conditions: the rate in force at t=0 as a constant (a trace's
mean rate; if that rate is 0 — an outage or a schedule starting at 0 — the path's nominal rate, so
that set-up traffic such as a readiness check can cross), the loss model and the delay in force at
t=0. Packets still queued at the start are carried over into the timeline's queue.

The shuttle runs in a child process (``python -m live.lab.tunlink``) so that it never fights the caller
for the GIL: one thread, epoll over both TUN fds, a control pipe and a ``timerfd`` armed (in
nanoseconds, absolute CLOCK_MONOTONIC) at the earliest pending arrival — epoll's own timeout is
millisecond-granular. The parent talks to it over stdin/stdout in the JSON lines of
:mod:`live.lab.protocol`:

* ``{"cmd": "start", "t0": T}`` -> ``{"event": "started", "t0": T}`` (T: a ``time.monotonic()`` instant;
  without it, now);
* ``{"cmd": "stats"}`` -> ``{"event": "stats", ...}``;  ``{"cmd": "quit"}`` (or EOF: the parent died)
  -> ``{"event": "exit", ...}``; anything else -> ``{"event": "error", "error": ...}``.

The child runs SCHED_FIFO (``rt_priority``, default 10; its own children do not inherit it). It sleeps
between packets, so it takes only the CPU the traffic needs (~14 % of a core at 10 Mbit/s), but when it
wakes it runs at once: on this busy 2-core VM that took packet lateness (written minus computed arrival)
at 10 Mbit/s from p99 3-40 ms under normal scheduling to p50 ~60 us, p99 ~0.2-1.2 ms. The rest of the
tail is the host stalling the whole VM (a SCHED_FIFO sleeper on each vCPU sees the same few-ms stalls
at the same instants); no busy-waiting would remove it. ``stats()`` reports the lateness distribution.

What differs from the simulator is the traffic, not the link: the real downlink also carries the
server's pure ACKs, SYN-ACKs and FINs, the uplink the requests; the kernel's TCP (its MSS from the
1500-byte MTU, its congestion control) replaces ``sim.tcp``. The link applies none of the path's TCP
settings (``cc``, ``mss_bytes``, ``init_cwnd_pkts``) nor its ``cross_traffic``: the lab sets ``cc`` on
the server's sockets and generates cross traffic itself (:mod:`live.lab.crosstraffic`).

Use it like :func:`live.kernel.netns.veth_pair`::

    with tun_pair(spec, scn.faults_for("mobile"), loaded.base_dir, seed=scn.seed) as pair:
        server = pair.popen("a", [...])          # nsenter into pair.ns_a
        pair.link.start_clock()                  # t=0: the load starts now
        ...
        print(pair.link.stats())

Everything is removed on exit, also after an exception or SIGTERM: the child closes its TUN fds
(non-persistent TUN devices vanish with their fd) and deletes the namespaces; the parent then deletes
whatever is left.
If the parent is killed outright the child sees EOF on its stdin and cleans up by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import fcntl
import itertools
import json
import math
import os
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from heapq import heappop, heappush
from pathlib import Path
from typing import Any

import numpy as np

from live.kernel.netns import NETNS_DIR, VethPair, die_with_parent, run
from live.lab.protocol import Events, ProtocolError, emit, read_message, send
from sim.model.path import Bottleneck, ConstantCapacity, LossModel, PathModel

__all__ = [
    "DelaySchedule",
    "LinkProcess",
    "PathPlay",
    "TunLink",
    "TunPair",
    "main",
    "open_tun",
    "path_schedules",
    "prestart_schedule",
    "tun_pair",
]

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MTU_BYTES = 1500
READ_BYTES = 65536
PACKET_LOG_ENV = "TOKENPACE_TUNLINK_LOG"
SUBNET_PREFIX = "10.202"
READY_TIMEOUT_S = 30.0
RT_PRIORITY = 10  # SCHED_FIFO priority of the shuttle (see --rt-priority)
_HIST_BIN_S = 1e-6  # lateness histogram: 1 us bins ...
_HIST_BINS = 200_000  # ... up to 200 ms (later ones land in the last bin; the max is kept exactly)
_SUMMED = ("offered_pkts", "offered_bytes", "passed_pkts", "passed_bytes", "random_drops", "tail_drops", "stuck_pkts")
MAX_PATHS = 8  # client-side addresses 10.202.N.2 .. 10.202.N.9
_counter = itertools.count()


# ============================================================================================ model
class DelaySchedule:
    """The reverse path of ``sim.link.DelayLine``: every packet arrives ``delay_s`` after it was offered."""

    __slots__ = ("delay_s", "offered_bytes", "offered_pkts")

    def __init__(self, delay_s: float) -> None:
        if delay_s < 0:
            raise ValueError("delay_s must be >= 0")
        self.delay_s = delay_s
        self.offered_pkts = self.offered_bytes = 0

    def offer(self, now_s: float, size_bytes: int) -> float:
        self.offered_pkts += 1
        self.offered_bytes += size_bytes
        return now_s + self.delay_s

    def counters(self) -> dict[str, int]:
        return {"offered_pkts": self.offered_pkts, "offered_bytes": self.offered_bytes}


class _AtZero(LossModel):
    """A loss model asked only about t = 0 (the conditions before the clock starts)."""

    __slots__ = ("_inner",)

    def __init__(self, inner: LossModel) -> None:
        self._inner = inner

    def lost(self, t_s: float) -> bool:
        return self._inner.lost(0.0)


def _loss_rng(seed: int | None, path_index: int, phase: int) -> np.random.Generator:
    """The simulator's loss stream for path ``path_index`` (``rng_for(seed, RNG_LOSS_BASE + i)``) for
    the timeline (phase 0); an independent one for the traffic before the clock starts (phase 1)."""
    from sim.model.workload import RNG_LOSS_BASE, rng_for

    if seed is None:
        return np.random.default_rng()
    return rng_for(seed, RNG_LOSS_BASE + path_index) if phase == 0 else np.random.default_rng(
        [seed, RNG_LOSS_BASE + path_index, phase])


@dataclass(frozen=True)
class PathPlay:
    """One scenario path a link plays: its name, ``PathSpec``, faults and index in the scenario (which
    picks the simulator's loss stream for it)."""

    name: str
    spec: Any
    faults: Sequence[Any] = ()
    index: int = 0


def path_schedules(spec: Any, faults: Sequence[Any], base_dir: str | Path, rng: np.random.Generator
                   ) -> tuple[Bottleneck, DelaySchedule]:
    """The downlink and the uplink of a ``scenarios.schema.PathSpec`` with its faults: the path model's
    bottleneck (``sim.network.build_path`` builds the simulator's link from the same model) and its
    one-way delay."""
    model = PathModel.from_spec(spec, faults, Path(base_dir))
    return model.bottleneck(rng), DelaySchedule(model.one_way_s)


def prestart_schedule(spec: Any, faults: Sequence[Any], base_dir: str | Path, rng: np.random.Generator
                      ) -> Bottleneck:
    """The downlink before the clock starts: the t=0 conditions held constant (see the module doc).
    Its clock may be any (the live link feeds it ``time.monotonic()``)."""
    model = PathModel.from_spec(spec, faults, Path(base_dir))
    shape = model.shape_at(0.0)
    loss = model.loss(rng)
    return Bottleneck(ConstantCapacity(shape.rate_bps if shape.rate_bps > 0 else model.nominal_rate_bps),
                      shape.one_way_s, shape.queue_bytes, None if loss is None else _AtZero(loss))


# ============================================================================================ I/O
def open_tun(name: str) -> int:
    """Create TUN device ``name`` (IFF_TUN | IFF_NO_PI: reads and writes are bare IP packets) in the
    current network namespace; returns its non-blocking fd. The device lives as long as the fd."""
    if len(name.encode()) > 15:
        raise ValueError(f"interface name {name!r} is longer than 15 bytes")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _TimerFd:
    """A CLOCK_MONOTONIC timerfd armed at absolute instants (Python 3.11 has no os.timerfd_*)."""

    CLOCK_MONOTONIC = 1
    TFD_TIMER_ABSTIME = 1
    TFD_NONBLOCK = 0o4000
    TFD_CLOEXEC = 0o2000000

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = self._libc.timerfd_create(self.CLOCK_MONOTONIC, self.TFD_NONBLOCK | self.TFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")
        self.fd = fd
        self._spec = _Itimerspec()
        self._settime = self._libc.timerfd_settime

    def arm(self, t_s: float) -> None:
        sec = int(t_s)
        spec = self._spec
        spec.it_value.tv_sec = sec
        spec.it_value.tv_nsec = max(1, min(999_999_999, int((t_s - sec) * 1e9)))
        self._settime(self.fd, self.TFD_TIMER_ABSTIME, ctypes.byref(spec), None)

    def disarm(self) -> None:
        spec = self._spec
        spec.it_value.tv_sec = spec.it_value.tv_nsec = 0
        self._settime(self.fd, 0, ctypes.byref(spec), None)

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)

    def close(self) -> None:
        os.close(self.fd)


class _Lateness:
    """How late packets were written compared with their computed arrival (1 us bins, exact max).

    An ``array('q')``: incremented per packet as cheaply as a list, summarized through numpy without a copy."""

    __slots__ = ("bins", "max_s", "n")

    def __init__(self) -> None:
        self.bins = array("q", bytes(8 * _HIST_BINS))
        self.n = 0
        self.max_s = 0.0

    def summary(self) -> dict[str, float | int | None]:
        out: dict[str, float | int | None] = {"n": self.n}
        cum = np.cumsum(np.frombuffer(self.bins, dtype=np.int64)) if self.n else None
        for key, q in (("p50_us", 0.5), ("p90_us", 0.9), ("p99_us", 0.99), ("p999_us", 0.999)):
            if cum is None:
                out[key] = None
                continue
            i = int(np.searchsorted(cum, q * self.n))  # first bin where the count reaches q * n
            out[key] = round(min((i + 0.5) * _HIST_BIN_S, self.max_s) * 1e6, 1)
        out["max_us"] = round(self.max_s * 1e6, 1)
        return out


class TunLink:
    """The shuttle between two TUN fds: ``a`` (server side) -> downlink -> ``b``; ``b`` -> uplink -> ``a``.

    One thread: :meth:`run` loops until :meth:`stop` (or the control channel says quit). ``pre_down``
    serves the downlink before :meth:`start_clock` on the raw monotonic clock; ``None`` starts the
    clock at construction.

    Several paths: ``down``, ``up`` and ``pre_down`` may be lists, one entry per path. Path i is the
    client-side address ``10.202.N.(2+i)``: a downlink packet takes the path of its destination
    address, an uplink packet the path of its source address (the last octet, minus 2; anything else
    takes path 0). Each path has its own bottleneck, queue, loss and delay, as in the simulator.
    """

    def __init__(self, fd_a: int, fd_b: int, down: Bottleneck | Sequence[Bottleneck],
                 up: DelaySchedule | Sequence[DelaySchedule], *,
                 pre_down: Bottleneck | Sequence[Bottleneck] | None = None) -> None:
        self.fd_a, self.fd_b = fd_a, fd_b
        self.downs: list[Bottleneck] = [down] if isinstance(down, Bottleneck) else list(down)
        self.ups: list[DelaySchedule] = [up] if isinstance(up, DelaySchedule) else list(up)
        self.pre_downs: list[Bottleneck] | None = (
            None if pre_down is None else [pre_down] if isinstance(pre_down, Bottleneck) else list(pre_down))
        if len(self.ups) != len(self.downs) or (self.pre_downs is not None and len(self.pre_downs) != len(self.downs)):
            raise ValueError("one downlink, uplink (and pre-start downlink) per path")
        self.t0: float | None = None if self.pre_downs is not None else time.monotonic()
        self._heap: list[tuple[float, int, int, bytes]] = []
        self._seq = itertools.count()
        self.io = {"down_read_pkts": 0, "down_read_bytes": 0, "down_written_pkts": 0, "down_written_bytes": 0,
                   "up_read_pkts": 0, "up_read_bytes": 0, "up_written_pkts": 0, "up_written_bytes": 0,
                   "write_errors": 0, "max_pending_pkts": 0}
        self.late_down, self.late_up = _Lateness(), _Lateness()
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._created_s = time.monotonic()
        self._cpu0 = self._cpu_s()
        self._clock_cpu_s = self._cpu0
        self.timer_backend = "timerfd"
        self.sched = "other"
        # TOKENPACE_TUNLINK_LOG=FILE: one line per downlink packet (t offered, IP bytes, t due or drop,
        # TCP ports and flags, payload bytes), for comparing the lab's packets with the simulator's.
        log_path = os.environ.get(PACKET_LOG_ENV)
        self._pkt_log = open(log_path, "a", buffering=1 << 16) if log_path else None  # noqa: SIM115

    # ------------------------------------------------------------------ control
    def start_clock(self, t0: float | None = None) -> float:
        """Time 0 of the path's timeline is ``t0`` (a ``time.monotonic()`` instant; default now)."""
        t0 = time.monotonic() if t0 is None else float(t0)
        if self.t0 is not None:
            return self.t0
        if self.pre_downs is not None:
            for down, pre in zip(self.downs, self.pre_downs, strict=True):
                down.continue_from(pre, t0, t0)
        self.t0 = t0
        self._clock_cpu_s = self._cpu_s()
        return t0

    def stop(self) -> None:
        """Make :meth:`run` return (thread-safe, signal-safe)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    @staticmethod
    def _cpu_s() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        per_path = [self._down_counters(i) for i in range(len(self.downs))]
        down = dict(per_path[0])
        for other in per_path[1:]:
            for k in _SUMMED:
                down[k] += other[k]
            down["max_backlog_bytes"] = max(down["max_backlog_bytes"], other["max_backlog_bytes"])
        if len(per_path) > 1:
            down["paths"] = per_path
        cpu_s = self._cpu_s()
        since_clock_s = now - self.t0 if self.t0 is not None else None
        return {
            "t0": self.t0,
            "since_clock_s": None if since_clock_s is None else round(since_clock_s, 6),
            "uptime_s": round(now - self._created_s, 6),
            "down": down,
            "up": {k: sum(u.counters()[k] for u in self.ups) for k in self.ups[0].counters()},
            "io": dict(self.io),
            "pending_pkts": len(self._heap),
            "lateness_down": self.late_down.summary(),
            "lateness_up": self.late_up.summary(),
            "cpu_s": round(cpu_s - self._cpu0, 4),
            "cpu_pct": round(100 * (cpu_s - self._cpu0) / max(now - self._created_s, 1e-9), 2),
            "cpu_pct_since_clock": None if self.t0 is None or since_clock_s is None or since_clock_s <= 0
            else round(100 * (cpu_s - self._clock_cpu_s) / since_clock_s, 2),
            "timer": self.timer_backend,
            "sched": self.sched,
        }

    def _down_counters(self, i: int) -> dict[str, Any]:
        down: dict[str, Any] = dict(self.downs[i].counters())
        if self.pre_downs is not None:
            pre = self.pre_downs[i].counters()
            for k in _SUMMED:
                down[k] += pre[k]
            down["max_backlog_bytes"] = max(down["max_backlog_bytes"], pre["max_backlog_bytes"])
            down["prestart"] = pre
        return down

    # ------------------------------------------------------------------ the loop
    def _ingest_down(self) -> None:
        fd, out_fd, heap, io = self.fd_a, self.fd_b, self._heap, self.io
        downs, n_paths = self.downs, len(self.downs)
        mono = time.monotonic
        while True:
            try:
                pkt = os.read(fd, READ_BYTES)
            except BlockingIOError:
                return
            now = mono()
            n = len(pkt)
            io["down_read_pkts"] += 1
            io["down_read_bytes"] += n
            i = pkt[19] - 2 if n_paths > 1 and n >= 20 else 0  # the destination address picks the path
            if not 0 <= i < n_paths:
                i = 0
            t0 = self.t0
            if t0 is None:
                assert self.pre_downs is not None
                arr = self.pre_downs[i].offer(now, n)
            else:
                arr = downs[i].offer(now - t0, n)
                if arr is not None:
                    arr += t0
            if self._pkt_log is not None:
                self._log_packet(now, pkt, arr)
            if arr is None or arr == math.inf:
                continue
            heappush(heap, (arr, next(self._seq), out_fd, pkt))

    def _log_packet(self, now: float, pkt: bytes, arr: float | None) -> None:
        t0 = self.t0 if self.t0 is not None else now
        ihl = (pkt[0] & 0x0F) * 4 if pkt else 0
        tcp = pkt[ihl:] if len(pkt) >= ihl + 20 and pkt[9] == 6 else b""
        sport, dport = (int.from_bytes(tcp[0:2], "big"), int.from_bytes(tcp[2:4], "big")) if tcp else (0, 0)
        flags = tcp[13] if tcp else 0
        payload = len(pkt) - ihl - (tcp[12] >> 4) * 4 if tcp else 0
        due = "drop" if arr is None else f"{arr - t0:.6f}"
        assert self._pkt_log is not None
        self._pkt_log.write(f"{now - t0:.6f} {len(pkt)} {due} {sport} {dport} {flags:#04x} {payload}\n")

    def _ingest_up(self) -> None:
        fd, out_fd, heap, io, ups = self.fd_b, self.fd_a, self._heap, self.io, self.ups
        n_paths = len(ups)
        mono = time.monotonic
        while True:
            try:
                pkt = os.read(fd, READ_BYTES)
            except BlockingIOError:
                return
            n = len(pkt)
            io["up_read_pkts"] += 1
            io["up_read_bytes"] += n
            i = pkt[15] - 2 if n_paths > 1 and n >= 20 else 0  # the source address picks the path
            if not 0 <= i < n_paths:
                i = 0
            heappush(heap, (ups[i].offer(mono(), n), next(self._seq), out_fd, pkt))

    def _release(self) -> None:
        heap, io, fd_b = self._heap, self.io, self.fd_b
        if len(heap) > io["max_pending_pkts"]:
            io["max_pending_pkts"] = len(heap)
        mono = time.monotonic
        write = os.write
        while heap:
            now = mono()
            due = heap[0][0]
            if due > now:
                return
            _, _, fd, pkt = heappop(heap)
            late = now - due
            try:
                write(fd, pkt)
            except OSError:
                io["write_errors"] += 1
                continue
            if fd == fd_b:
                io["down_written_pkts"] += 1
                io["down_written_bytes"] += len(pkt)
                lat = self.late_down
            else:
                io["up_written_pkts"] += 1
                io["up_written_bytes"] += len(pkt)
                lat = self.late_up
            lat.n += 1
            i = int(late / _HIST_BIN_S)
            lat.bins[i if i < _HIST_BINS else _HIST_BINS - 1] += 1
            if late > lat.max_s:
                lat.max_s = late

    def run(self, control: Callable[[], bool] | None = None, control_fd: int | None = None) -> None:
        """Shuttle packets until :meth:`stop`. ``control`` is called when ``control_fd`` is readable;
        it returns False to stop."""
        ep = select.epoll()
        timer: _TimerFd | None
        try:
            timer = _TimerFd()
        except (OSError, AttributeError):
            timer, self.timer_backend = None, "epoll-ms"
        fd_a, fd_b = self.fd_a, self.fd_b
        ep.register(fd_a, select.EPOLLIN)
        ep.register(fd_b, select.EPOLLIN)
        ep.register(self._wake_r, select.EPOLLIN)
        if timer is not None:
            ep.register(timer.fd, select.EPOLLIN)
        if control_fd is not None:
            ep.register(control_fd, select.EPOLLIN | select.EPOLLHUP)
        timer_fd = -1 if timer is None else timer.fd
        heap = self._heap
        armed: float | None = None
        try:
            while not self._stopping:
                timeout: float = -1
                if heap:
                    due = heap[0][0]
                    if timer is not None:
                        if due != armed:
                            timer.arm(due)
                            armed = due
                    else:
                        timeout = max(0.0, due - time.monotonic())
                elif armed is not None and timer is not None:
                    timer.disarm()
                    armed = None
                for fd, _ in ep.poll(timeout):
                    if fd == fd_a:
                        self._ingest_down()
                    elif fd == fd_b:
                        self._ingest_up()
                    elif fd == timer_fd:
                        assert timer is not None
                        timer.clear()
                        armed = None
                    elif fd == control_fd:
                        if control is None or not control():
                            self._stopping = True
                    elif fd == self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 64)
                self._release()
        finally:
            ep.close()
            if timer is not None:
                timer.close()

    def close(self) -> None:
        if self._pkt_log is not None:
            self._pkt_log.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


# ============================================================================================ the child
def _setup_devices(ns_a: str, ns_b: str, if_a: str, if_b: str, addr_a: str, addrs_b: Sequence[str], mtu: int
                   ) -> tuple[int, int]:
    """Create both TUN devices here (the root namespace), move each into its namespace, address them.
    The client side has one address per path (``addrs_b``); the first is the point-to-point peer, so a
    socket that does not bind gets path 0."""
    fds: list[int] = []
    addr_b = addrs_b[0]
    try:
        for ifname, ns, addr, peer in ((if_a, ns_a, addr_a, addr_b), (if_b, ns_b, addr_b, addr_a)):
            fds.append(open_tun(ifname))
            run(["ip", "link", "set", ifname, "netns", ns])  # the fd keeps working across the move
            run(["ip", "link", "set", "lo", "up"], ns=ns)
            # IPv4 only: no router solicitations or MLD reports crossing the link and its counters
            run(["sysctl", "-q", "-w", f"net.ipv6.conf.{ifname}.disable_ipv6=1"], ns=ns, check=False)
            run(["ip", "addr", "add", f"{addr}/32", "peer", peer, "dev", ifname], ns=ns)
            run(["ip", "link", "set", ifname, "mtu", str(mtu), "up"], ns=ns)
        for extra in addrs_b[1:]:  # the other paths' client addresses, routed over the same TUN pair
            run(["ip", "addr", "add", f"{extra}/32", "dev", if_b], ns=ns_b)
            run(["ip", "route", "add", f"{extra}/32", "dev", if_a, "src", addr_a], ns=ns_a)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds[0], fds[1]


def _set_realtime(priority: int) -> str:
    """SCHED_FIFO for this process (not its children); what scheduling it got, for the stats."""
    if priority <= 0:
        return "other"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
    except (OSError, AttributeError) as exc:
        print(f"[tunlink] SCHED_FIFO refused ({exc}): normal scheduling", file=sys.stderr)
        return "other"
    return f"fifo:{priority}"


def _remove_ns(name: str) -> None:
    if os.path.exists(f"{NETNS_DIR}/{name}"):
        run(["ip", "netns", "delete", name], check=False)


_HELP = """\
A user-space link between two network namespaces (like Mahimahi's mm-link), playing one scenario path
with the simulator's own link model. Needs root.

  namespace <name>-a: TUN <name>a, 10.202.N.1   (the server side)
  namespace <name>-b: TUN <name>b, 10.202.N.2   (the client side; path i of several: 10.202.N.(2+i))

Packets a -> b (the downlink) cross the path's bottleneck: random loss (the path's loss model and loss
faults), a drop-tail queue of queue_bytes, the rate (constant, schedule or Mahimahi trace, with rate and
outage faults), then rtt/2 plus any delay fault. Packets b -> a get rtt/2, nothing else. Time 0 of the
path's timeline is {"cmd": "start"} on stdin (or --start-now); before it the t=0 conditions hold.

This process runs in the root namespace, holds both TUN fds and shuttles the packets; when it exits the
devices vanish, and so do the namespaces it created (or all of them with --delete-netns)."""

_EPILOG = """\
control (stdin, one JSON command a line; see live.lab.protocol):
  {"cmd": "start", "t0": T}   t=0 of the path = T, a time.monotonic() instant (without "t0": now)
  {"cmd": "stats"}            print the counters (packets/bytes each way, drops, max backlog, lateness, CPU)
  {"cmd": "quit"}             exit (so does EOF: the parent is gone)
stdout: JSON lines -- {"event": "ready", ...} first, then "started" / "stats" / "error" replies,
{"event": "exit", ...} last.

example:
  python -m live.lab.tunlink flash-outage --path mobile --name demo --start-now --no-control &
  nsenter --net=/run/netns/demo-a -- iperf3 -s -1 &
  nsenter --net=/run/netns/demo-b -- iperf3 -c 10.202.N.1 -R     # N: see the "ready" line
  kill -INT %1                                                  # prints the final stats

From Python: `with live.lab.tunlink.tun_pair(spec, faults, base_dir) as pair:` starts this as a child and
hands back a live.kernel.netns.VethPair-like object (pair.run / pair.popen / pair.link.start_clock())."""


def _child_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m live.lab.tunlink", formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=_HELP, epilog=_EPILOG)
    p.add_argument("scenario", nargs="?", help="scenario file or built-in name (or give --path-json)")
    p.add_argument("--path", action="append",
                   help="which of the scenario's paths (repeatable; default: all of them, one client address each)")
    p.add_argument("--path-json", help="a PathSpec as JSON, instead of a scenario")
    p.add_argument("--faults-json", default="[]", help="with --path-json: the path's faults as a JSON list")
    p.add_argument("--paths-json",
                   help="several paths instead of --path-json: a JSON list of {\"name\", \"spec\" (a PathSpec), "
                   "\"faults\", \"index\"}; path i gets client address 10.202.N.(2+i)")
    p.add_argument("--base-dir", default=".", help="with --path(s)-json: where relative trace files are")
    p.add_argument("--path-index", type=int, default=None,
                   help="with --path-json: the path's index in the scenario (picks the simulator's loss stream)")
    p.add_argument("--seed", type=int, default=None, help="loss seed (default: the scenario's; none: random)")
    p.add_argument("--name", help="base of the namespace and device names (<= 12 chars)")
    p.add_argument("--subnet", type=int, help="N of 10.202.N.0 (default: derived from the pid)")
    p.add_argument("--mtu", type=int, default=MTU_BYTES)
    p.add_argument("--netns-exist", action="store_true", help="the namespaces exist already (else created)")
    p.add_argument("--delete-netns", action="store_true",
                   help="delete the namespaces at exit even if they existed (default: only those created)")
    p.add_argument("--start-now", action="store_true", help="start the path's clock at once")
    p.add_argument("--no-control", action="store_true", help="ignore stdin; run until SIGINT / SIGTERM")
    p.add_argument("--stats-file", type=Path, help="also write the final stats JSON here")
    p.add_argument("--rt-priority", type=int, default=RT_PRIORITY,
                   help="run the shuttle SCHED_FIFO at this priority (0: normal scheduling). On a busy machine "
                   "this is what keeps packets on time: the loop sleeps between packets, so it takes only the "
                   "CPU the traffic needs (default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _child_parser().parse_args(argv)
    from pydantic import TypeAdapter

    from scenarios.schema import Fault, PathSpec

    seed = args.seed
    plays: list[PathPlay]
    fault_list = TypeAdapter(list[Fault])
    if args.paths_json is not None:
        plays = [PathPlay(str(d.get("name", f"p{i}")), PathSpec.model_validate(d["spec"]),
                          fault_list.validate_python(d.get("faults", [])), int(d.get("index", i)))
                 for i, d in enumerate(json.loads(args.paths_json))]
        base_dir = Path(args.base_dir)
    elif args.path_json is not None:
        plays = [PathPlay("path", PathSpec.model_validate_json(args.path_json),
                          fault_list.validate_json(args.faults_json), args.path_index or 0)]
        base_dir = Path(args.base_dir)
    elif args.scenario is not None:
        from scenarios import ScenarioError, load_scenario

        try:
            loaded = load_scenario(args.scenario)
        except ScenarioError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        scn = loaded.scenario
        names = args.path or list(scn.paths)
        bad = [n for n in names if n not in scn.paths]
        if bad:
            print(f"error: --path {bad[0]!r} is not one of {', '.join(scn.paths)}", file=sys.stderr)
            return 2
        plays = [PathPlay(n, scn.paths[n], scn.faults_for(n), list(scn.paths).index(n)) for n in names]
        base_dir = loaded.base_dir
        seed = scn.seed if seed is None else seed
    else:
        print("error: give a scenario or --path-json", file=sys.stderr)
        return 2
    if not 1 <= len(plays) <= MAX_PATHS:
        print(f"error: a link plays 1 to {MAX_PATHS} paths, not {len(plays)}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("error: needs root (TUN devices, network namespaces)", file=sys.stderr)
        return 2
    n = next(_counter)
    base = args.name or f"tt{os.getpid() % 100000}x{n}"
    if len(base) > 12:
        print(f"error: --name {base!r} is longer than 12 characters", file=sys.stderr)
        return 2
    subnet = args.subnet if args.subnet is not None else (os.getpid() + n) % 250 + 1
    ns_a, ns_b, if_a, if_b = f"{base}-a", f"{base}-b", f"{base}a", f"{base}b"
    addr_a = f"{SUBNET_PREFIX}.{subnet}.1"
    addrs_b = [f"{SUBNET_PREFIX}.{subnet}.{2 + i}" for i in range(len(plays))]

    downs, ups, pres = [], [], []
    for play in plays:  # each path's own loss stream: the simulator's for (seed, the path's index)
        down, up = path_schedules(play.spec, play.faults, base_dir, _loss_rng(seed, play.index, 0))
        downs.append(down)
        ups.append(up)
        pres.append(prestart_schedule(play.spec, play.faults, base_dir, _loss_rng(seed, play.index, 1)))

    # SIGINT / SIGTERM / SIGHUP: leave the loop and clean up (the loop watches a wake-up pipe)
    link_ref: list[TunLink] = []

    def on_signal(signum: int, frame: object) -> None:
        if link_ref:
            link_ref[0].stop()
        else:
            raise KeyboardInterrupt

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    created: list[str] = []
    fds: tuple[int, int] | None = None
    link: TunLink | None = None
    final: dict[str, Any] | None = None
    try:
        for ns in (ns_a, ns_b):
            if not os.path.exists(f"{NETNS_DIR}/{ns}"):
                if args.netns_exist:
                    raise RuntimeError(f"namespace {ns} does not exist")
                run(["ip", "netns", "add", ns])
                created.append(ns)
        fds = _setup_devices(ns_a, ns_b, if_a, if_b, addr_a, addrs_b, args.mtu)
        link = TunLink(fds[0], fds[1], downs, ups, pre_down=pres)
        link_ref.append(link)
        link.sched = _set_realtime(args.rt_priority)
        if args.start_now:
            link.start_clock()
        emit("ready", pid=os.getpid(), ns_a=ns_a, ns_b=ns_b, if_a=if_a, if_b=if_b, addr_a=addr_a,
             addr_b=addrs_b[0], addrs_b={p.name: a for p, a in zip(plays, addrs_b, strict=True)},
             queue_bytes=downs[0].queue_bytes, one_way_s=ups[0].delay_s, t0=link.t0)

        control_fd: int | None = None
        control: Callable[[], bool] | None = None
        if not args.no_control:
            control_fd = sys.stdin.fileno()
            os.set_blocking(control_fd, False)
            buf = bytearray()

            def control() -> bool:
                assert link is not None
                try:
                    chunk = os.read(control_fd, 4096)
                except BlockingIOError:
                    return True
                if not chunk:
                    return False  # EOF: the parent is gone
                buf.extend(chunk)
                while b"\n" in buf:
                    line, _, rest = bytes(buf).partition(b"\n")
                    buf[:] = rest
                    try:
                        msg = read_message(line)
                        if msg is None:
                            continue
                        cmd = msg.get("cmd")
                        if cmd == "start":
                            t0 = msg.get("t0")
                            emit("started", t0=link.start_clock(None if t0 is None else float(t0)))
                        elif cmd == "stats":
                            emit("stats", **link.stats())
                        elif cmd == "quit":
                            return False
                        else:
                            emit("error", error=f"unknown command {cmd!r} (start, stats, quit)")
                    except (ProtocolError, TypeError, ValueError) as exc:
                        emit("error", error=str(exc))
                return True

        try:
            link.run(control, control_fd)
            final = link.stats()
        except OSError as exc:  # a TUN device went away under us (its namespace deleted): stop, say why
            print(f"[tunlink] stopped: {exc}", file=sys.stderr)
            final = {**link.stats(), "error": str(exc)}
    except KeyboardInterrupt:
        pass
    finally:
        if fds is not None:
            for fd in fds:  # a non-persistent TUN device goes with its last fd
                with contextlib.suppress(OSError):
                    os.close(fd)
        if link is not None:
            link.close()
        for ns in (ns_a, ns_b):
            if ns in created or args.delete_netns:
                _remove_ns(ns)
    if final is not None:
        if args.stats_file is not None:
            args.stats_file.write_text(json.dumps(final, indent=1))
        with contextlib.suppress(OSError):
            emit("exit", stats=final)
    return 0


# ============================================================================================ the parent
class LinkProcess:
    """The parent's handle on the ``python -m live.lab.tunlink`` child: clock, stats, stop."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.t0: float | None = None
        self._events = Events(proc, f"tunlink child {proc.pid}")
        self._lock = threading.Lock()

    @property
    def final_stats(self) -> dict[str, Any] | None:
        """The stats of the child's exit event, once it has sent it."""
        return None if self._events.exit is None else self._events.exit.get("stats")

    def _wait_for(self, event: str, timeout_s: float) -> dict[str, Any]:
        return self._events.wait(event, timeout_s)

    def _send(self, cmd: str, **fields: Any) -> None:
        assert self.proc.stdin is not None
        send(self.proc.stdin, cmd, **fields)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> dict[str, Any]:
        return self._wait_for("ready", timeout_s)

    def start_clock(self, t0: float | None = None, timeout_s: float = 5.0) -> float:
        """Time 0 of the path's timeline (faults, schedules, traces) = ``t0``, a ``time.monotonic()``
        instant (the clock is system-wide); default: now. Returns t0."""
        t0 = time.monotonic() if t0 is None else t0
        with self._lock:
            self._send("start", t0=t0)
            self.t0 = float(self._wait_for("started", timeout_s)["t0"])
        return self.t0

    def stats(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """The link's counters now (after :meth:`close`: its last ones). See ``TunLink.stats``."""
        if self.proc.poll() is not None or self.final_stats is not None:
            if self.final_stats is None:
                raise RuntimeError(f"tunlink child {self.pid} exited (rc={self.proc.returncode}) without stats")
            return self.final_stats
        with self._lock:
            self._send("stats")
            msg = self._wait_for("stats", timeout_s)
        msg.pop("event", None)
        return msg

    def close(self, timeout_s: float = 10.0) -> dict[str, Any] | None:
        """Ask the child to quit (it removes its devices and the namespaces), wait; the final stats."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self._send("quit")
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(5.0)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5.0)
        self._events.join(2.0)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError, ValueError):
                    f.close()
        return self.final_stats


@dataclass(frozen=True)
class TunPair(VethPair):
    """A :class:`live.kernel.netns.VethPair` whose two ends are TUN devices joined by the user-space link ``link``."""

    prefix_len: int = 32
    link: LinkProcess = field(default=None, compare=False, repr=False)  # type: ignore[assignment]
    addrs_b: dict[str, str] = field(default_factory=dict)  # path name -> its client-side address


def _json_of(model: Any) -> Any:
    return json.loads(model.model_dump_json()) if hasattr(model, "model_dump_json") else model


@contextlib.contextmanager
def tun_pair(spec: Any, faults: Sequence[Any] = (), base_dir: str | Path = ".", *, seed: int | None = None,
             path_index: int = 0, paths: Sequence[PathPlay] | None = None, name: str | None = None,
             mtu: int = MTU_BYTES, rt_priority: int = RT_PRIORITY, handle_sigterm: bool = True,
             ready_timeout_s: float = READY_TIMEOUT_S) -> Iterator[TunPair]:
    """Namespaces ``<name>-a`` / ``<name>-b`` joined by a user-space link playing path ``spec`` (a
    ``scenarios.schema.PathSpec``) with ``faults`` (``scenario.faults_for(path)``; traces resolved
    against ``base_dir``). Loss draws come from the simulator's stream for (``seed``, ``path_index``).
    The link process runs SCHED_FIFO at ``rt_priority`` (0: normal scheduling; see ``--rt-priority``).

    ``paths`` (instead of ``spec``, ``faults``, ``path_index``): several paths on one link, path i
    reached at client address ``pair.addrs_b[name]`` (``10.202.N.(2+i)``; ``pair.addr_b`` is path 0's).
    A client socket bound to a path's address crosses that path's bottleneck both ways.

    The path's clock starts with ``pair.link.start_clock()``. On exit — also after an exception, or
    SIGTERM when ``handle_sigterm`` and the caller has no SIGTERM handler of its own (it then raises
    ``SystemExit(143)`` in the main thread) — the link process, both TUN devices and both
    namespaces are gone.
    """
    n = next(_counter)
    base = name or f"tt{os.getpid() % 100000}x{n}"
    if len(base) > 12:
        raise ValueError(f"tun_pair name {base!r} is longer than 12 characters")
    subnet = (os.getpid() + n) % 250 + 1
    ns_a, ns_b = f"{base}-a", f"{base}-b"
    old_handler: Any = None
    if (handle_sigterm and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL):

        def on_sigterm(signum: int, frame: object) -> None:
            raise SystemExit(128 + signum)

        old_handler = signal.signal(signal.SIGTERM, on_sigterm)
    link: LinkProcess | None = None
    try:
        for ns in (ns_a, ns_b):
            run(["ip", "netns", "add", ns])
        if paths is None:
            paths = [PathPlay("path", spec, tuple(faults), path_index)]
        if not 1 <= len(paths) <= MAX_PATHS:
            raise ValueError(f"a link plays 1 to {MAX_PATHS} paths, not {len(paths)}")
        plays = [{"name": p.name, "spec": _json_of(p.spec), "faults": [_json_of(f) for f in p.faults],
                  "index": p.index} for p in paths]
        argv = [sys.executable, "-m", "live.lab.tunlink", "--paths-json", json.dumps(plays),
                "--base-dir", str(Path(base_dir).resolve()), "--name", base, "--subnet", str(subnet), "--mtu", str(mtu),
                "--rt-priority", str(rt_priority), "--netns-exist", "--delete-netns"]
        if seed is not None:
            argv += ["--seed", str(seed)]
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # its own session: a Ctrl-C at the terminal reaches the caller, which then stops the link in order
        # ... and SIGTERM when the caller dies (as well as the EOF on its stdin): it cleans up at once
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                env=env, start_new_session=True, preexec_fn=die_with_parent())
        link = LinkProcess(proc)
        info = link.wait_ready(ready_timeout_s)
        yield TunPair(ns_a=info["ns_a"], ns_b=info["ns_b"], if_a=info["if_a"], if_b=info["if_b"],
                      addr_a=info["addr_a"], addr_b=info["addr_b"], link=link, addrs_b=dict(info["addrs_b"]))
    finally:
        try:
            if link is not None:
                link.close()
        finally:
            for ns in (ns_a, ns_b):
                _remove_ns(ns)
            if old_handler is not None:
                signal.signal(signal.SIGTERM, old_handler)


if __name__ == "__main__":
    raise SystemExit(main())
