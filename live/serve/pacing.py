"""The per-connection control loop: kernel telemetry in, one controller decision per stream out.

Every ``control_interval_s`` the loop polls the telemetry source once (one ``poll()`` for all
streams), folds each socket's sample into its connection (matched by SO_COOKIE, taken from the
transport's socket when the connection is first seen), and for every stream that is still
generating reads its transport into a :class:`sim.model.control.TransportSnapshot` and runs the
stream's control step (:class:`sim.model.control.StreamControl`, the one the simulator's streams run:
it builds the :class:`controllers.Observation`), which asks the stream's own controller for a rate
and applies it as pacing credit (:meth:`sim.model.serving.PacingCredit.set_rate`: the built-in
engine's sequences are one, and the upstream proxy releases through one). The Observation and the
controller's Decision also go to the stream's ``observer`` when it has one: the built-in engine's
scheduler, when it uses them (as the simulator hands them to its node).

Byte accounting is exact: every connection's transport is wrapped so the bytes handed to it are
counted (HTTP headers and chunked framing included), and each token's SSE event ends at a known
offset of the connection's byte stream. What the client has acked is read from the socket itself at
every tick (:meth:`ConnState.sync_kernel`): ``ioctl(SIOCOUTQ)`` is write_seq - snd_una, the bytes in
the kernel not yet acked, and ``SIOCOUTQNSD`` the part of them not yet sent, so acked = bytes the
kernel took - SIOCOUTQ and in flight = SIOCOUTQ - SIOCOUTQNSD, both as of now. That gives
``acked_tokens`` (tokens whose last byte the client acked), ``queued_bytes`` (generated or written by
the app, not yet acked) and ``t_acked`` per token, as the simulator has them. RTT min and p95 and
retransmits come from the telemetry's interval stats.

Why not the telemetry's snd_una: ``tcp:tcp_probe`` fires at the top of ``tcp_rcv_established``,
before the incoming ACK is processed, so the snd_una it reports lags by one ACK -- and when a paced
stream goes quiet its last ACK is never reported at all (measured: 20 writes of 256 B on loopback,
all acked, the probe's sum stays 256 B short). A controller holding back until the backlog drains
then waits for an ACK it will never see. The telemetry's ``acked_bytes`` remains the fallback where
the socket cannot be asked (a transport without a socket, tests' fakes).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fcntl
import logging
import math
import struct
import termios
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from controllers import Controller, Decision, Observation
from controllers.ewma import Ewma
from live.kernel.source import SocketStats, TelemetrySource, socket_cookie
from sim.model.control import RateTarget, StreamControl, TransportSnapshot

__all__ = [
    "ConnState",
    "LiveMetrics",
    "NullTelemetry",
    "PacedStream",
    "PacingLoop",
    "link_health",
    "track_connection",
]

log = logging.getLogger("tokenpace.live")
_HEALTH = Ewma()  # seed 001's link-quality coefficient, default thresholds: the /hint "health"


def link_health(rtt_ms: float | None, retrans: int) -> float:
    """Seed 001's link quality in [0, 1] from p95 RTT and retransmits (1 = healthy)."""
    return _HEALTH.quality(rtt_ms, retrans)


class NullTelemetry:
    """No kernel: every poll is empty (streams are controlled on what the server knows alone)."""

    def start(self) -> None:
        pass

    def poll(self) -> dict[int, SocketStats]:
        return {}

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- connections
class ConnState:
    """One TCP connection as the server sees it: bytes written (exact), acked (the socket's SIOCOUTQ, else
    the telemetry's), TCP state (telemetry)."""

    __slots__ = (
        "__weakref__",
        "acked",
        "cookie",
        "cwnd_pkts",
        "fd",
        "inflight_bytes",
        "retrans_total",
        "samples",
        "srtt_us",
        "transport",
        "written",
    )

    def __init__(self, transport: Any, cookie: int | None, fd: int | None = None) -> None:
        self.transport = transport
        self.cookie = cookie
        self.fd = fd  # the socket's fd, for SIOCOUTQ (None: only the telemetry's count)
        self.written = 0  # bytes handed to the transport (headers, chunk framing and all)
        self.acked = 0  # cumulative acked bytes: the socket's (sync_kernel), else the telemetry's
        self.srtt_us: int | None = None
        self.cwnd_pkts: int | None = None
        self.inflight_bytes = 0
        self.samples = 0
        self.retrans_total = 0

    @property
    def closed(self) -> bool:
        t = self.transport
        return t is None or t.is_closing()

    def update(self, st: SocketStats) -> None:
        self.acked = min(self.acked + max(0, st.acked_bytes), self.written) if self.written else self.acked
        if st.srtt_us is not None:
            self.srtt_us = st.srtt_us
        if st.cwnd_pkts is not None:
            self.cwnd_pkts = st.cwnd_pkts
        self.inflight_bytes = max(0, st.inflight_bytes)
        self.samples += st.samples
        self.retrans_total += max(0, st.retrans)

    def sync_kernel(self) -> bool:
        """Acked and in-flight bytes as of now, from the socket (see the module doc). False when the
        socket cannot be asked (closed, no fd): the telemetry's values stand."""
        fd, t = self.fd, self.transport
        if fd is None or t is None or t.is_closing():
            return False
        try:
            outq = _ioctl_int(fd, SIOCOUTQ)
            unsent = _ioctl_int(fd, SIOCOUTQNSD)
            in_app = t.get_write_buffer_size()  # handed to the transport, not yet to the kernel
        except (OSError, AttributeError, RuntimeError):
            self.fd = None
            return False
        in_kernel = self.written - in_app
        self.acked = min(max(self.acked, in_kernel - outq), self.written)
        self.inflight_bytes = max(0, outq - unsent)
        return True


SIOCOUTQ = termios.TIOCOUTQ  # write_seq - snd_una (linux/sockios.h: SIOCOUTQ == TIOCOUTQ)
SIOCOUTQNSD = 0x894B  # write_seq - snd_nxt: queued in the kernel, not yet sent
_INT0 = b"\0\0\0\0"


def _ioctl_int(fd: int, request: int) -> int:
    return int(struct.unpack("i", fcntl.ioctl(fd, request, _INT0))[0])


def _set_congestion_control(sock: Any, cc: str) -> None:
    """TCP_CONGESTION on one connection, before its first response byte. Per socket, because a network
    namespace may only default to the algorithms in ``tcp_allowed_congestion_control`` (here reno
    and bbr), while a process with CAP_NET_ADMIN may give any loaded one to its own sockets."""
    import socket

    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
    except OSError as exc:
        log.warning("cannot set TCP_CONGESTION=%s on a connection: %s", cc, exc)


def track_connection(transport: Any, tcp_congestion: str | None = None) -> ConnState:
    """The connection state of a transport, created (and the transport wrapped, and its congestion
    control set to ``tcp_congestion`` unless None) on first sight."""
    conn = getattr(transport, "_tokenpace_conn", None)
    if conn is not None:
        return conn
    cookie: int | None = None
    fd: int | None = None
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        try:
            cookie = socket_cookie(sock)  # type: ignore[arg-type]
        except (OSError, AttributeError):
            cookie = None
        try:
            fd = sock.fileno()
            _ioctl_int(fd, SIOCOUTQ)  # a TCP socket answers; anything else drops to the telemetry's count
        except (OSError, AttributeError, ValueError):
            fd = None
        if tcp_congestion is not None and fd is not None:
            _set_congestion_control(sock, tcp_congestion)
    conn = ConnState(transport, cookie, fd)
    if transport is None:
        return conn
    write, writelines = transport.write, transport.writelines

    def counting_write(data: Any) -> None:
        conn.written += memoryview(data).nbytes
        write(data)

    def counting_writelines(chunks: Iterable[Any]) -> None:
        chunks = list(chunks)
        conn.written += sum(memoryview(c).nbytes for c in chunks)
        writelines(chunks)

    try:
        transport.write = counting_write
        transport.writelines = counting_writelines
        transport._tokenpace_conn = conn
    except AttributeError:  # a C transport (uvloop): counting falls back to nothing
        log.warning("cannot count bytes on %r; acked_tokens will be wrong", type(transport).__name__)
    return conn


# --------------------------------------------------------------------------- streams
class PacedStream:
    """One streamed response: its bytes, tokens and control step (controller, reader estimate)."""

    def __init__(self, stream_id: str, conn: ConnState | None, controller: Controller | None, *,
                 reading_tps: float, arrival_s: float, prompt_tokens: int, output_tokens: int,
                 path: str = "live", kind: str = "engine") -> None:
        self.stream_id = stream_id
        self.conn = conn
        self.base = conn.written if conn is not None else 0  # connection offset of this response's first byte
        # the control step (None: no controller, or let go once recorded)
        self.ctl = StreamControl(stream_id, reading_tps, controller) if controller is not None else None
        self.reading_tps = reading_tps
        self.arrival_s = arrival_s
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.path = path
        self.kind = kind
        self.target: RateTarget | None = None  # the engine's Sequence or the proxy's PacingCredit
        self.wake: Callable[[], None] | None = None
        # (stream_id, obs, decision) each control interval: the engine's scheduler, if it uses them
        self.observer: Callable[[str, Observation, Decision], None] | None = None
        self.rate_tps: float | None = None  # the rate applied (kept for /hint once the control step is let go)
        self.retrans_segs = 0  # the retransmits the telemetry reported on the socket while this stream was controlled
        self.t_generated: list[float] = []
        self.t_sent: list[float] = []
        self.t_acked: list[float] = []
        self.token_end: list[int] = []  # response-relative offset just past token i's SSE event
        self.generated = 0
        self.pending_bytes = 0  # generated, not yet handed to the transport (wire size)
        self.done_generating = False
        self.ended = False
        self.end_s: float | None = None
        self.outcome = ""  # completed | cancelled (the client decides abandoned)
        self.detached_s: float | None = None
        self.generated_at_detach: int | None = None
        self.last_obs: Observation | None = None
        self.recorded = False
        self.final_written: int | None = None

    # ------------------------------------------------------------------ bytes and tokens
    @property
    def written_bytes(self) -> int:
        """Bytes of this response handed to the transport (frozen when it ends: keep-alive reuses the conn)."""
        if self.final_written is not None:
            return self.final_written
        return self.conn.written - self.base if self.conn is not None else 0

    @property
    def acked_bytes(self) -> int:
        if self.conn is None:
            return 0
        return max(0, min(self.conn.acked - self.base, self.written_bytes))

    @property
    def sent(self) -> int:
        return len(self.token_end)

    @property
    def n_acked(self) -> int:
        return len(self.t_acked)

    @property
    def generating(self) -> bool:
        return not self.ended and not self.done_generating and self.detached_s is None

    def on_generated(self, t_s: float, wire_bytes: int = 0) -> None:
        self.t_generated.append(t_s)
        self.generated += 1
        self.pending_bytes += wire_bytes
        if self.generated >= self.output_tokens:
            self.done_generating = True

    def on_sent(self, t_s: float, wire_bytes: int = 0) -> None:
        """Token ``self.sent`` is in the kernel now (written and drained)."""
        self.token_end.append(self.written_bytes)
        self.t_sent.append(t_s)
        self.pending_bytes = max(0, self.pending_bytes - wire_bytes)

    def update_acks(self, now: float) -> int:
        acked = self.acked_bytes
        n = bisect.bisect_right(self.token_end, acked)
        for _ in range(self.n_acked, n):
            self.t_acked.append(now)
        return n

    def detach(self, now: float) -> None:
        if self.detached_s is None:
            self.detached_s = now
            self.generated_at_detach = self.generated

    def end(self, now: float, outcome: str) -> None:
        if not self.ended:
            self.final_written = self.written_bytes
            self.ended = True
            self.end_s = now
            self.outcome = outcome

    # ------------------------------------------------------------------ control
    def snapshot(self, now: float, st: SocketStats | None) -> TransportSnapshot:
        """This stream's transport now: the connection's TCP state (telemetry, socket), the interval's RTT
        and retransmits (``st``, the socket's stats this interval; None: none), and this response's
        bytes (generated ones not yet written included) and tokens, acked ones counted as of now."""
        conn = self.conn
        acked_tokens = self.update_acks(now)
        if st is not None:
            self.retrans_segs += max(0, st.retrans)
        srtt = conn.srtt_us if conn is not None else None
        return TransportSnapshot(
            srtt_ms=None if srtt is None else srtt / 1000.0,
            rtt_samples_s=(),
            rtt_min_ms=None if st is None or st.rtt_min_us is None else st.rtt_min_us / 1000.0,
            rtt_p95_ms=None if st is None or st.rtt_p95_us is None else st.rtt_p95_us / 1000.0,
            retrans_segs=self.retrans_segs,
            cwnd_pkts=conn.cwnd_pkts if conn is not None else None,
            inflight_bytes=conn.inflight_bytes if conn is not None else 0,
            written_bytes=self.written_bytes + self.pending_bytes,
            acked_bytes=self.acked_bytes,
            acked_tokens=acked_tokens,
            generated_tokens=self.generated,
        )

    def control(self, now: float, st: SocketStats | None) -> Observation:
        """One control interval (sim.model.control): observe, decide, show the observer, apply."""
        assert self.ctl is not None
        obs = self.ctl.step(now, self.snapshot(now, st), self, self.observer)
        self.last_obs = obs
        return obs

    def set_rate(self, now: float, rate_tps: float | None) -> None:
        """The control step decided a new rate: to the pacing credit, and wake whoever releases tokens."""
        self.rate_tps = rate_tps
        if self.target is not None:
            self.target.set_rate(now, rate_tps)
        if self.wake is not None:
            self.wake()

    def hint(self) -> dict[str, Any]:
        """The seeds' /hint shape for this stream, plus what the controller saw."""
        o = self.last_obs
        rtt = None if o is None else (o.rtt_p95_ms if o.rtt_p95_ms is not None else o.srtt_ms)
        rate = self.rate_tps
        return {
            "stream": self.stream_id,
            "token_rate": rate,
            "sleep_seconds": 0.0 if rate is None else (1.0 / rate if rate > 0 else None),
            "health": link_health(rtt, 0 if o is None else o.retrans),
            "paced": rate is not None,
            "cookie": None if self.conn is None else self.conn.cookie,
            "generated_tokens": self.generated,
            "sent_tokens": self.sent,
            "acked_tokens": self.n_acked,
            "srtt_ms": None if o is None else o.srtt_ms,
            "rtt_p95_ms": None if o is None else o.rtt_p95_ms,
            "retrans": None if o is None else o.retrans,
            "queued_bytes": None if o is None else o.queued_bytes,
            "client_buffer_est": None if o is None else o.client_buffer_est,
            "reading_tps": self.reading_tps,
            "state": "ended" if self.ended else "generating" if self.generating else "sending",
        }


# --------------------------------------------------------------------------- metrics
class LiveMetrics:
    """Prometheus metrics of one server (its own registry, so several servers can share a process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.active_streams = Gauge("tokenpace_active_streams", "streams being generated or sent", registry=r)
        self.paced_streams = Gauge("tokenpace_paced_streams", "active streams with a paced rate", registry=r)
        self.tokens_generated = Counter("tokenpace_tokens_generated", "tokens generated", registry=r)
        self.tokens_sent = Counter("tokenpace_tokens_sent", "tokens written to the socket and drained", registry=r)
        self.streams = Counter("tokenpace_streams", "streams that ended, by outcome", ["outcome"], registry=r)
        self.disconnects = Counter("tokenpace_client_disconnects", "clients that left mid-stream", registry=r)
        self.decided_rate = Histogram(
            "tokenpace_decided_rate_tps", "paced rates decided by the controller (tokens/s)",
            buckets=(1, 2, 5, 8, 12, 16, 20, 30, 45, 60, 90, 120, 240), registry=r)
        self.mean_rate = Gauge("tokenpace_mean_decided_rate_tps", "mean decided rate over paced streams", registry=r)
        self.srtt = Histogram(
            "tokenpace_srtt_seconds", "smoothed RTT of the streams' sockets at each control interval",
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=r)
        self.retrans = Counter("tokenpace_retransmits", "retransmitted segments on stream sockets", registry=r)
        self.queued_bytes = Gauge("tokenpace_queued_bytes", "bytes generated but not acked, all streams", registry=r)
        self.steps = Counter("tokenpace_engine_steps", "decode steps run by the engine", registry=r)
        self.busy = Counter("tokenpace_engine_busy_seconds", "time the engine spent stepping", registry=r)
        self.batch_size = Gauge("tokenpace_engine_batch_size", "streams in the last decode step", registry=r)
        self.kv_used = Gauge("tokenpace_engine_kv_tokens", "KV memory in use (tokens)", registry=r)
        self.waiting = Gauge("tokenpace_engine_waiting", "requests waiting for admission", registry=r)
        self.polls = Counter("tokenpace_telemetry_polls", "telemetry polls", registry=r)

    # the engine's log (sim.model.serving.NodeLog)
    def step(self, t: float, batch_id: int, batch_size: int, batch_tokens: int, duration_s: float,
             waiting: int, running: int, swapped: int, completed: int, kv_used: int) -> None:
        self.steps.inc()
        self.busy.inc(duration_s)
        self.batch_size.set(batch_size)
        self.kv_used.set(kv_used)
        self.waiting.set(waiting)

    def event(self, t: float, kind: str, req_id: str, details: str = "") -> None:
        pass

    def memory(self, t: float, kind: str, req_id: str, before: int, after: int, reason: str) -> None:
        pass


# --------------------------------------------------------------------------- the loop
class PacingLoop:
    """Polls the telemetry once per interval and runs every generating stream's controller."""

    def __init__(self, source: TelemetrySource, *, interval_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic, recorder: Any = None,
                 metrics: LiveMetrics | None = None, ack_grace_s: float = 2.0,
                 tcp_congestion: str | None = None) -> None:
        self.source = source
        self.tcp_congestion = tcp_congestion  # set on each connection when first seen (None: leave it)
        self.interval_s = interval_s
        self.clock = clock
        self.recorder = recorder
        self.metrics = metrics
        self.ack_grace_s = ack_grace_s
        self.streams: dict[str, PacedStream] = {}  # registered, not yet recorded
        self.conns: dict[int, ConnState] = {}  # by cookie
        self.ticks = 0
        self.last_tick_s: float | None = None
        self._task: asyncio.Task[None] | None = None
        self.finished: list[PacedStream] = []  # recent ended streams, for tests and /hint (bounded)
        self.keep_finished = 256  # each keeps its per-token times (~12 KB for 100 tokens)
        self._counter = 0

    # ------------------------------------------------------------------ registration
    def connection(self, transport: Any) -> ConnState:
        conn = track_connection(transport, self.tcp_congestion)
        if conn.cookie is not None:
            self.conns[conn.cookie] = conn
        return conn

    def unique_id(self, wanted: str | None) -> str:
        """``wanted`` (the client's stream id) unless a live or recent stream has it; else c000001, ..."""
        if wanted is None:
            self._counter += 1
            wanted = f"c{self._counter:06d}"
        base = wanted
        sid, k = base, 1
        while sid in self.streams:  # only a stream still registered forces a new id
            k += 1
            sid = f"{base}~{k}"
        return sid

    def register(self, stream: PacedStream) -> None:
        self.streams[stream.stream_id] = stream
        if self.metrics is not None:
            self.metrics.active_streams.inc()

    def end(self, stream: PacedStream, outcome: str, now: float | None = None) -> None:
        """The handler is done with the stream (rows are written once its bytes are acked or given up)."""
        if stream.ended:
            return
        stream.end(self.clock() if now is None else now, outcome)
        if self.metrics is not None:
            self.metrics.active_streams.dec()
            self.metrics.streams.labels(outcome).inc()
            if outcome == "cancelled":
                self.metrics.disconnects.inc()

    def get(self, stream_id: str) -> PacedStream | None:
        s = self.streams.get(stream_id)
        if s is not None:
            return s
        return next((f for f in reversed(self.finished) if f.stream_id == stream_id), None)

    # ------------------------------------------------------------------ one interval
    def poll(self) -> dict[int, SocketStats]:
        try:
            stats = self.source.poll()
        except Exception:  # the kernel side failing must not stop the streams
            log.exception("telemetry poll failed")
            stats = {}
        if self.metrics is not None:
            self.metrics.polls.inc()
        return stats

    def tick(self, now: float, stats: dict[int, SocketStats]) -> list[Observation]:
        self.ticks += 1
        self.last_tick_s = now
        for cookie, sample in stats.items():
            conn = self.conns.get(cookie)
            if conn is not None:
                conn.update(sample)
                if self.metrics is not None and sample.retrans > 0:
                    self.metrics.retrans.inc(sample.retrans)
        synced: set[int] = set()
        for s in self.streams.values():  # acked bytes as of now, from each socket (module doc)
            c = s.conn
            if c is not None and id(c) not in synced:
                synced.add(id(c))
                c.sync_kernel()
        observations: list[Observation] = []
        rates: list[float] = []
        queued = 0
        m = self.metrics
        for s in list(self.streams.values()):
            st = stats.get(s.conn.cookie) if s.conn is not None and s.conn.cookie is not None else None
            if s.generating and s.ctl is not None:
                obs = s.control(now, st)
                rate = s.rate_tps
                observations.append(obs)
                if self.recorder is not None:
                    self.recorder.telemetry(obs, rate)
                queued += obs.queued_bytes
                if rate is not None:
                    rates.append(rate)
                if m is not None:
                    if rate is not None:
                        m.decided_rate.observe(rate)
                    if obs.srtt_ms is not None:
                        m.srtt.observe(obs.srtt_ms / 1000.0)
                continue
            n_acked = s.update_acks(now)
            if s.ended:
                conn_gone = s.conn is None or s.conn.closed
                all_acked = n_acked >= s.sent
                if all_acked or conn_gone or now - (s.end_s or now) >= self.ack_grace_s:
                    self._retire(s)
            else:
                queued += max(0, s.written_bytes + s.pending_bytes - s.acked_bytes)
        if m is not None:
            m.paced_streams.set(len(rates))
            m.mean_rate.set(sum(rates) / len(rates) if rates else math.nan)
            m.queued_bytes.set(queued)
        for cookie in [c for c, conn in self.conns.items() if conn.closed]:
            del self.conns[cookie]
        return observations

    def _retire(self, s: PacedStream) -> None:
        self.streams.pop(s.stream_id, None)
        if not s.recorded:
            s.recorded = True
            if self.recorder is not None:
                self.recorder.server_stream(s)
        # kept for /hint only: let go of what a retired stream no longer uses (its controller's state;
        # a closed connection's transport, which holds the handler and its buffers)
        s.ctl = None
        if s.conn is not None and s.conn.closed:
            s.conn.transport = None
            s.conn.fd = None
        self.finished.append(s)
        if len(self.finished) > self.keep_finished:
            del self.finished[: len(self.finished) - self.keep_finished]

    def flush(self) -> None:
        """Record every stream now (shutdown): ended ones and the ones still running."""
        now = self.clock()
        for s in list(self.streams.values()):
            s.update_acks(now)
            if not s.ended:
                s.end(now, "cancelled")
            self._retire(s)

    def host_hint(self) -> dict[str, Any]:
        """The seeds' host-wide /hint: one recommended rate for the whole server."""
        active = [s for s in self.streams.values() if s.generating]
        paced = [s.rate_tps for s in active if s.rate_tps is not None]
        rate = sum(paced) / len(paced) if paced else None
        obs = [s.last_obs for s in active if s.last_obs is not None]
        rtts = [r for o in obs if (r := o.rtt_p95_ms if o.rtt_p95_ms is not None else o.srtt_ms) is not None]
        retrans = sum(o.retrans for o in obs)
        rtt = sorted(rtts)[int(0.95 * (len(rtts) - 1))] if rtts else None
        return {
            "token_rate": rate,
            "sleep_seconds": 0.0 if rate is None else (1.0 / rate if rate > 0 else None),
            "health": link_health(rtt, retrans // max(1, len(obs))),
            "streams": len(active),
            "paced_streams": len(paced),
            "rtt_p95_ms": rtt,
            "retrans": retrans,
            "t": self.last_tick_s,
        }

    # ------------------------------------------------------------------ the task
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="tokenpace-pacing")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        next_t = self.clock()
        while True:
            now = self.clock()
            try:
                self.tick(now, self.poll())
            except Exception:
                log.exception("control tick failed")
            next_t += self.interval_s
            delay = next_t - self.clock()
            if delay < 0:  # overran: skip the missed ticks rather than bunching them
                next_t = self.clock()
                delay = 0.0
            await asyncio.sleep(delay)
