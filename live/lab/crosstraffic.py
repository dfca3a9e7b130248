"""Bulk cross traffic for the lab: the simulator's competing downloads, as real kernel TCP flows.

The simulator's ``cross_traffic`` (``scenarios.schema.CrossTraffic``, played by
``sim.network._cross_traffic``) opens ``flows`` bulk TCP connections at ``start_s``, each with an
endless backlog, from the server side to the client side over the path's bottleneck, and aborts
them at ``stop_s`` (never, when None). Here the same thing happens on the lab's network: a
**sender** in namespace ``a`` (the server's) opens ``flows`` connections to a **sink** in namespace
``b`` (the client's), so the data crosses the same link as the paced streams (the user-space link of
:mod:`live.lab.tunlink` or a shaped veth), in the same direction, behind the same queue. Like the
simulator's bulk connections, each flow

* has an endless backlog: one thread per flow keeps its socket's send buffer full (``send`` of a
  256 KiB buffer in a loop on a blocking socket), so the flow is limited only by its congestion
  window and the path;
* runs the scenario's congestion control: ``TCP_CONGESTION`` is set per socket, before ``connect``,
  so the handshake already belongs to it, and the kernel's default (``net.ipv4.tcp_congestion_control``)
  is not touched (the paced server sets its own connections' likewise);
* starts at ``start_s`` and is aborted at ``stop_s`` on the scenario's clock. Time 0 comes from the
  lab as for the server and the client (``{"cmd": "t0", ...}`` on the sender's stdin, :mod:`live.lab.protocol`). The
  abort is an RST (``SO_LINGER`` 0): what is still in the send buffer is thrown away, as
  ``TcpConnection.close`` stops a simulated flow at once. A graceful close would let the kernel
  drain up to a few MB of send buffer into the bottleneck after ``stop_s`` -- seconds at 8 Mbit/s.

What differs from the simulator is TCP itself: the kernel's (its MSS from the 1500-byte MTU, its
initial window, pacing, TSO autosizing, its own reno / cubic), not ``sim.tcp``; the receiver's window
is the kernel's receive-buffer autotuning rather than unlimited, which can cap a flow on a long fat
path; and each flow begins with a handshake, so its first data leaves one RTT (plus the SYN's trip
through the queue) after ``start_s``, where the simulator's bulk connection sends at once. The sink
reads whatever arrives at once and throws it away, so the receive window never closes for want of a
reader.

Two child processes do the work, so the flows never compete with the lab for the GIL:
``python -m live.lab.crosstraffic sink`` and ``python -m live.lab.crosstraffic send`` (see ``--help``).
Each prints one JSON line when ready and one at exit (byte counts, start and stop instants). The lab
uses :func:`cross_traffic`::

    with cross_traffic(pair, spec.cross_traffic, server_addr=pair.addr_a, client_addr=pair.addr_b,
                       port=CROSS_PORT) as cross:
        ...                        # start the server and the client
        cross.start(t0)            # the same time 0 as theirs
        ...                        # the run
    record(cross.summary())       # {"sender": {...}, "sink": {...}}

Both children stop on SIGTERM / SIGINT, and by themselves when their parent dies (they watch their
parent pid), so an endless backlog cannot outlive the lab.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from live.kernel.netns import VethPair
from live.lab.protocol import Events, ProtocolError, emit, read_t0, send

if TYPE_CHECKING:
    from scenarios.schema import CrossTraffic as CrossTrafficSpec

__all__ = ["CHUNK_BYTES", "CrossTraffic", "CrossTrafficError", "available_cc", "cross_traffic", "main"]

CHUNK_BYTES = 256 * 1024  # one send() / recv_into() at most: few syscalls per MB, little memory
AVAILABLE_CC_FILE = "/proc/sys/net/ipv4/tcp_available_congestion_control"
READY_TIMEOUT_S = 20.0  # a child's interpreter start, on a busy machine
STOP_TIMEOUT_S = 5.0  # SIGTERM -> exit, before SIGKILL
CONNECT_TIMEOUT_S = 5.0
PARENT_POLL_S = 0.5  # how often a child checks that its parent is still there
EXIT_USAGE = 2
_TCPI_TOTAL_RETRANS = 100  # offsets in struct tcp_info (include/uapi/linux/tcp.h)
_TCPI_BYTES_ACKED = 120
_TCP_INFO_LEN = 136


class CrossTrafficError(RuntimeError):
    pass


def available_cc() -> list[str]:
    """The congestion controls this kernel has loaded (what ``TCP_CONGESTION`` accepts without a module load)."""
    try:
        return Path(AVAILABLE_CC_FILE).read_text().split()
    except OSError:
        return []


def _install_stop_handlers(on_stop: Callable[[], None]) -> None:
    def handler(signum: int, frame: object) -> None:
        on_stop()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def _watch_parent(stop: threading.Event, on_gone: Callable[[], None]) -> None:
    """Call ``on_gone`` when this process is re-parented (its parent died without stopping it).

    ``nsenter --net`` execs the command, so the parent is the lab itself; a stdin EOF cannot serve
    the sender here, since the lab closes its stdin right after time 0.
    """
    ppid = os.getppid()

    def watch() -> None:
        while not stop.wait(PARENT_POLL_S):
            if os.getppid() != ppid:
                on_gone()
                return

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


# ============================================================================================ sink
def run_sink(host: str, port: int) -> int:
    """Accept any number of connections on ``host:port`` and discard what they send, until told to stop.

    One thread and a selector: the listener, every connection, stdin (EOF = stop) and a wake-up pipe
    for signals. Reads go into one preallocated buffer, so nothing is allocated per read.
    """
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, port))
    lsock.listen(128)
    lsock.setblocking(False)
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    stopping = threading.Event()

    def stop() -> None:
        stopping.set()
        with contextlib.suppress(OSError):
            wake_w.send(b"x")

    _install_stop_handlers(stop)
    _watch_parent(stopping, stop)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, "listen")
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    with contextlib.suppress(ValueError, OSError):  # stdin may be closed or /dev/null
        sel.register(sys.stdin.fileno(), selectors.EVENT_READ, "stdin")
    buf = bytearray(CHUNK_BYTES)
    view = memoryview(buf)
    total = 0
    accepted = 0
    conns: set[socket.socket] = set()

    def drain(c: socket.socket) -> bool:
        """Read what ``c`` holds now; False once it is finished (EOF, reset)."""
        nonlocal total
        while True:
            try:
                n = c.recv_into(view)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if n == 0:
                return False
            total += n
            if n < CHUNK_BYTES:
                return True

    def drop(c: socket.socket) -> None:
        sel.unregister(c)
        conns.discard(c)
        c.close()

    emit("ready", port=lsock.getsockname()[1])
    while not stopping.is_set():
        for key, _ in sel.select():
            what = key.data
            if what == "listen":
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    while True:
                        c, _addr = lsock.accept()
                        c.setblocking(False)
                        conns.add(c)
                        accepted += 1
                        sel.register(c, selectors.EVENT_READ, "conn")
            elif what == "stdin":
                if not os.read(key.fd, 4096):
                    stopping.set()
            elif what == "wake":
                with contextlib.suppress(OSError):
                    wake_r.recv(64)
            elif not drain(key.fileobj):  # type: ignore[arg-type]
                drop(key.fileobj)  # type: ignore[arg-type]
    for c in list(conns):  # what arrived before the stop counts too
        drain(c)
        drop(c)
    lsock.close()
    emit("exit", bytes=total, connections=accepted)
    return 0


# ============================================================================================ sender
def _tcp_info(sock: socket.socket) -> tuple[int | None, int | None]:
    """(bytes acked, total retransmitted segments) of a connected socket, from TCP_INFO."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except OSError:
        return None, None
    if len(raw) < _TCP_INFO_LEN:
        return None, None
    (retrans,) = struct.unpack_from("I", raw, _TCPI_TOTAL_RETRANS)
    (acked,) = struct.unpack_from("Q", raw, _TCPI_BYTES_ACKED)
    return acked, retrans


class _Flow:
    """One bulk connection: connect, then keep the send buffer full until :meth:`halt`, then abort (RST)."""

    def __init__(self, index: int, dest: tuple[str, int], cc: str, bind: str | None, t0: float) -> None:
        self.index, self.dest, self.cc, self.bind, self.t0 = index, dest, cc, bind, t0
        self.sent = 0
        self.acked: int | None = None
        self.retrans: int | None = None
        self.cc_effective: str | None = None
        self.connected_at_s: float | None = None
        self.error: str | None = None
        self._halted = threading.Event()
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"flow{index}")

    def _run(self) -> None:
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            with self._lock:
                self._sock = s
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, self.cc.encode())  # before the SYN
            if self.bind:
                s.bind((self.bind, 0))
            s.settimeout(CONNECT_TIMEOUT_S)
            s.connect(self.dest)
            s.settimeout(None)  # blocking from here on: the thread sleeps while the buffer is full
            self.connected_at_s = time.monotonic() - self.t0
            self.cc_effective = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).split(b"\0")[0].decode()
        except OSError as exc:
            if not self._halted.is_set():
                self.error = f"flow {self.index}: connect to {self.dest[0]}:{self.dest[1]} failed: {exc}"
            self._close()
            return
        data = memoryview(bytes(CHUNK_BYTES))
        while not self._halted.is_set():
            try:
                self.sent += s.send(data)
            except OSError as exc:  # EPIPE after halt()'s shutdown; anything else is the peer's doing
                if not self._halted.is_set():
                    self.error = f"flow {self.index}: send failed: {exc}"
                break
        self._close()

    def _close(self) -> None:
        with self._lock:
            s, self._sock = self._sock, None
        if s is None:
            return
        self.acked, self.retrans = _tcp_info(s)
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST, buffer dropped
        s.close()

    def halt(self) -> None:
        """Stop sending now: wakes a send() blocked on a full buffer (EPIPE) without closing the fd under it."""
        self._halted.set()
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_WR)


def _read_epoch(stop: threading.Event) -> float | None:
    """Time 0 from the first stdin line, a ``{"cmd": "t0", ...}`` (None: EOF or a stop; a line that is
    not a t0 command is reported on stderr and taken as a stop)."""
    box: list[str] = []

    def read() -> None:
        box.append(sys.stdin.readline())
        stop_reading.set()

    stop_reading = threading.Event()
    threading.Thread(target=read, daemon=True, name="stdin").start()
    while not stop_reading.wait(0.1):
        if stop.is_set():
            return None
    if not box or not box[0]:
        return None
    try:
        return read_t0(box[0])
    except ProtocolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _sleep_until(stop: threading.Event, deadline: float | None) -> bool:
    """Sleep until the ``time.monotonic()`` instant ``deadline`` (None: forever); True if ``stop`` came first."""
    while True:
        left = PARENT_POLL_S if deadline is None else deadline - time.monotonic()
        if left <= 0:
            return stop.is_set()
        if stop.wait(left):  # wakes at once when a signal handler sets it
            return True


def run_sender(dest: tuple[str, int], flows: int, start_s: float, stop_s: float | None, cc: str,
               bind: str | None) -> int:
    """The sender's life: ready, time 0 from stdin, flows from t0+start_s to t0+stop_s (or a stop)."""
    if cc not in available_cc():
        print(f"error: congestion control {cc!r} is not available on this kernel "
              f"(available: {' '.join(available_cc()) or 'unknown'})", file=sys.stderr)
        return EXIT_USAGE
    stop = threading.Event()
    _install_stop_handlers(stop.set)
    _watch_parent(stop, stop.set)
    emit("ready")
    t0 = _read_epoch(stop)
    out: dict[str, Any] = {"cc": cc, "flows": flows, "t0": t0, "bytes_sent": [], "bytes_acked": [],
                           "retrans_segs": [], "cc_effective": [], "connected_at_s": [], "started_at_s": None,
                           "stopped_at_s": None, "errors": []}
    if t0 is None:  # EOF or a stop before time 0: nothing was started
        emit("exit", **out)
        return 0
    if _sleep_until(stop, t0 + start_s) or (stop_s is not None and stop_s <= start_s):
        emit("exit", **out)
        return 0
    out["started_at_s"] = round(time.monotonic() - t0, 6)
    running = [_Flow(i, dest, cc, bind, t0) for i in range(flows)]
    for f in running:
        f.thread.start()
    _sleep_until(stop, None if stop_s is None else t0 + stop_s)
    for f in running:
        f.halt()
    for f in running:
        f.thread.join(CONNECT_TIMEOUT_S + 1.0)
    out["stopped_at_s"] = round(time.monotonic() - t0, 6)
    out["bytes_sent"] = [f.sent for f in running]
    out["bytes_acked"] = [f.acked for f in running]
    out["retrans_segs"] = [f.retrans for f in running]
    out["cc_effective"] = [f.cc_effective for f in running]
    out["connected_at_s"] = [None if f.connected_at_s is None else round(f.connected_at_s, 6) for f in running]
    out["errors"] = [f.error for f in running if f.error]
    emit("exit", **out)
    return 1 if out["errors"] else 0


# ============================================================================================ CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m live.lab.crosstraffic",
        description="Bulk TCP cross traffic for the lab (the simulator's cross_traffic on a real kernel). "
                    "Run `sink` on the client side and `send` on the server side; each prints one JSON line "
                    "when ready and one at exit.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sink = sub.add_parser(
        "sink", help="accept connections and discard everything they send",
        description="Listen on HOST:PORT, accept any number of connections, read and discard all they send. "
                    'Prints {"event": "ready", "port": P} once listening; stops on SIGTERM, SIGINT or EOF on '
                    'stdin and then prints {"event": "exit", "bytes": N, "connections": K}.')
    sink.add_argument("--host", required=True, help="address to listen on (the client side's)")
    sink.add_argument("--port", type=int, required=True, help="port to listen on (0: any; the ready line says which)")
    send = sub.add_parser(
        "send", help="bulk flows with an endless backlog, from time 0 + START to time 0 + STOP",
        description='Prints {"event": "ready"}, then reads one line {"cmd": "t0", "t0": T} from stdin, T a '
                    "time.monotonic() value: time 0 of the scenario. At T0 + START it opens FLOWS connections "
                    "to ADDR:PORT with the congestion control CC (set per socket before connect) and keeps each "
                    "send buffer full until T0 + STOP (with STOP none: until SIGTERM / SIGINT), then aborts them "
                    '(RST) and prints {"event": "exit", "bytes_sent": [...], "bytes_acked": [...], "cc": CC, '
                    '"started_at_s": ..., "stopped_at_s": ..., "errors": [...]} with times relative to T0. '
                    "Exits 2 if CC is not in " + AVAILABLE_CC_FILE + ", 1 if a flow failed.")
    send.add_argument("--to", required=True, metavar="ADDR:PORT", help="the sink")
    send.add_argument("--flows", type=int, default=1, help="number of parallel connections (default 1)")
    send.add_argument("--start-s", type=float, default=0.0, help="when the flows open, seconds after T0")
    send.add_argument("--stop-s", default="none", help="when they are aborted, seconds after T0, or `none`")
    send.add_argument("--cc", default="cubic", help="TCP congestion control of every flow (default cubic)")
    send.add_argument("--bind", default=None, metavar="LOCALADDR", help="local address of the flows")
    return p


def _parse_dest(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"--to {text!r} is not ADDR:PORT")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "sink":
        return run_sink(args.host, args.port)
    try:
        dest = _parse_dest(args.to)
        stop_s = None if args.stop_s.lower() == "none" else float(args.stop_s)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.flows < 1 or args.start_s < 0 or (stop_s is not None and stop_s < 0):
        print("error: --flows must be >= 1, --start-s and --stop-s >= 0", file=sys.stderr)
        return EXIT_USAGE
    return run_sender(dest, args.flows, args.start_s, stop_s, args.cc, args.bind)


# ============================================================================================ API
class _Child:
    """A child started by ``pair.popen``: its stdout lines as JSON events, the tail of its stderr."""

    def __init__(self, name: str, proc: subprocess.Popen[str]) -> None:
        self.name, self.proc = name, proc
        self.events = Events(proc, f"cross-traffic {name}")
        self.stderr_tail: list[str] = []
        self._stderr = threading.Thread(target=self._read_stderr, daemon=True, name=f"{name}-err")
        self._stderr.start()

    @property
    def exit(self) -> dict[str, Any] | None:
        """Its exit event, once sent."""
        return self.events.exit

    def _read_stderr(self) -> None:
        if self.proc.stderr is None:
            return
        with contextlib.suppress(OSError, ValueError):
            for line in self.proc.stderr:
                self.stderr_tail = [*self.stderr_tail[-19:], line.rstrip()]

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        try:
            return self.events.wait("ready", timeout_s)
        except TimeoutError:
            raise CrossTrafficError(f"cross-traffic {self.name} not ready within {timeout_s:g} s") from None
        except ProtocolError as exc:
            with contextlib.suppress(subprocess.TimeoutExpired):  # it ended, or will: its last words
                self.proc.wait(STOP_TIMEOUT_S)
                self._stderr.join(2.0)
            raise CrossTrafficError(f"{exc}: {' | '.join(self.stderr_tail[-3:])}") from None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> dict[str, Any]:
        """SIGTERM to its process group, wait, SIGKILL after ``timeout_s``; its exit JSON plus ``rc``."""
        proc = self.proc
        VethPair.stop(proc, timeout_s)
        self.events.join(2.0)
        self._stderr.join(2.0)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError, ValueError):
                    f.close()
        out = dict(self.exit or {})
        out.pop("event", None)
        out["rc"] = proc.returncode
        if self.exit is None or proc.returncode not in (0, None):
            out["stderr"] = "\n".join(self.stderr_tail[-5:])
        return out


class CrossTraffic:
    """The running cross traffic of one lab run: :meth:`start` at time 0, :meth:`summary` afterwards."""

    def __init__(self, sender: _Child, sink: _Child, spec: dict[str, Any]) -> None:
        self._sender, self._sink, self.spec = sender, sink, spec
        self.t0: float | None = None
        self._summary: dict[str, Any] | None = None

    @property
    def procs(self) -> tuple[subprocess.Popen[str], subprocess.Popen[str]]:
        """(sender, sink) processes."""
        return self._sender.proc, self._sink.proc

    def start(self, t0: float) -> None:
        """Hand the sender time 0 (a ``time.monotonic()`` instant); its flows open at t0 + start_s."""
        if self.t0 is not None:
            raise CrossTrafficError("cross traffic already started")
        stdin = self._sender.proc.stdin
        if stdin is None:
            raise CrossTrafficError("the sender has no stdin")
        self.t0 = t0
        try:
            send(stdin, "t0", t0=t0)
            stdin.close()  # the sender watches its parent pid instead of stdin from here on
        except (BrokenPipeError, ValueError) as exc:
            raise CrossTrafficError(f"cross-traffic sender is gone (rc={self._sender.proc.poll()})") from exc
        self._sender.proc.stdin = None  # nothing may flush it again

    def summary(self) -> dict[str, Any]:
        """``{"spec": ..., "t0": ..., "sender": <its exit JSON + rc>, "sink": <its exit JSON + rc>}``,
        once the context has exited (the children's exit lines are written as they stop)."""
        if self._summary is None:
            raise CrossTrafficError("summary() is available once the cross_traffic context has exited")
        return self._summary

    def _stop(self) -> None:
        # the sender first: its flows end, then the sink counts what reached it
        sender = self._sender.stop()
        sink = self._sink.stop()
        self._summary = {"spec": self.spec, "t0": self.t0, "sender": sender, "sink": sink}


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _spec_dict(spec: Any) -> dict[str, Any]:
    return {"flows": spec.flows, "start_s": spec.start_s, "stop_s": spec.stop_s, "cc": spec.cc}


@contextlib.contextmanager
def cross_traffic(pair: Any, spec_cross: CrossTrafficSpec, *, server_addr: str, client_addr: str, port: int,
                  ready_timeout_s: float = READY_TIMEOUT_S) -> Iterator[CrossTraffic]:
    """The sink in namespace ``b`` on ``client_addr:port``, the sender in ``a`` bound to ``server_addr``,
    both ready; the flows open at ``start(t0)`` + ``spec_cross.start_s``.

    ``pair`` is a :class:`live.kernel.netns.VethPair` (or ``live.lab.tunlink.TunPair``): its ``popen`` runs each
    child in its namespace and in a session of its own, so a Ctrl-C at the terminal reaches only the
    caller. On exit -- also after an exception or KeyboardInterrupt -- both children are stopped
    (SIGTERM to the group, SIGKILL after a timeout) and their exit lines collected for :meth:`CrossTraffic.summary`.
    """
    py = sys.executable
    env = _child_env()
    stop_s = "none" if spec_cross.stop_s is None else repr(float(spec_cross.stop_s))
    sink: _Child | None = None
    sender: _Child | None = None
    ct: CrossTraffic | None = None
    try:
        sink = _Child("sink", pair.popen("b", [py, "-m", "live.lab.crosstraffic", "sink", "--host", client_addr,
                                               "--port", str(port)],
                                         stdin=subprocess.PIPE, env=env, bufsize=1))
        sink.wait_ready(ready_timeout_s)
        sender = _Child("sender", pair.popen("a", [py, "-m", "live.lab.crosstraffic", "send", "--to",
                                                   f"{client_addr}:{port}", "--flows", str(spec_cross.flows),
                                                   "--start-s", repr(float(spec_cross.start_s)), "--stop-s", stop_s,
                                                   "--cc", spec_cross.cc, "--bind", server_addr],
                                             stdin=subprocess.PIPE, env=env, bufsize=1))
        sender.wait_ready(ready_timeout_s)
        ct = CrossTraffic(sender, sink, _spec_dict(spec_cross))
        yield ct
    finally:
        if ct is not None:
            ct._stop()
        else:
            for child in (sender, sink):
                if child is not None:
                    child.stop()


if __name__ == "__main__":
    raise SystemExit(main())
