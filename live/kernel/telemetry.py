"""Kernel TCP telemetry with eBPF: per-socket RTT, retransmits and window state, once per interval.

Two stable tracepoints do the work — ``tcp:tcp_probe`` (every segment an established socket
receives: srtt, cwnd, ssthresh, snd_wnd, snd_nxt, snd_una, sock_cookie) and
``tcp:tcp_retransmit_skb`` — filtered in the kernel by the server's local port(s) and aggregated
per socket in an LRU hash keyed by the socket cookie (``live/kernel/bpf/tcp_telemetry.c``). Python reads
the map once per control interval and turns the cumulative counters into per-interval
:class:`~live.kernel.source.SocketStats`; nothing crosses to userspace per packet, so the probes cost a
few hundred nanoseconds per ACK and nothing per token.

Units: the tracepoint's ``srtt`` is ``tp->srtt_us >> 3``, the smoothed RTT in microseconds (the
kernel keeps it scaled by 8), the same number ``ss -ti`` prints as ``rtt:`` in milliseconds.
``rtt_min_us``/``rtt_max_us`` are exact over the interval's probe hits; ``rtt_p95_us`` comes from a
log-linear histogram (8 buckets per power of two: within ~6 %, then clamped into [min, max]).
``retrans`` counts retransmitted skbs — one or more MSS segments each under TSO/GSO, so it can be
lower than the kernel's segment counter (``TcpRetransSegs``, ``ss``'s ``retrans:``).

    with BccTelemetry(ports=[8000], interval_s=0.1) as tel:
        while serving:
            for cookie, stats in tel.poll().items(): ...

``python -m live.kernel.telemetry --ebpf`` prints the C program as compiled (BCC tools' hidden flag).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes as ct
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import numpy as np

from live.kernel.source import SocketStats

__all__ = [
    "BCC_DIST_PACKAGES",
    "BPF_DIR",
    "BccTelemetry",
    "BccUnavailable",
    "Drain",
    "HostInterval",
    "RttHistogram",
    "bpf_run_stats",
    "import_bcc",
    "main",
    "tracepoint_has_field",
]

BPF_DIR = Path(__file__).with_name("bpf")
C_SOURCE = BPF_DIR / "tcp_telemetry.c"
BCC_DIST_PACKAGES = "/usr/lib/python3/dist-packages"  # Debian's python3-bpfcc: pure Python over libbcc
TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
TCP_INFINITE_SSTHRESH = 0x7FFFFFFF


class BccUnavailable(ImportError):
    pass


def import_bcc() -> ModuleType:
    """The ``bcc`` module, from the system's dist-packages when this interpreter has none of its own.

    Debian ships bcc for its own python3 only; the module is pure Python over ``libbcc`` (ctypes),
    so any CPython 3 can use it once that directory is on ``sys.path`` (appended: it never shadows
    this interpreter's packages).
    """
    try:
        import bcc  # type: ignore[import-not-found]

        return bcc  # type: ignore[no-any-return]
    except ImportError:
        pass
    if BCC_DIST_PACKAGES not in sys.path and Path(BCC_DIST_PACKAGES, "bcc").is_dir():
        sys.path.append(BCC_DIST_PACKAGES)
    try:
        import bcc

        return bcc  # type: ignore[no-any-return]
    except Exception as exc:  # ImportError, or OSError when libbcc.so is missing
        raise BccUnavailable(f"bcc is not importable: run `python -m live doctor` ({exc})") from exc


def tracefs_dir() -> Path | None:
    for d in TRACEFS_DIRS:
        if Path(d, "events").is_dir():
            return Path(d)
    return None


def tracepoint_format(category: str, event: str) -> str | None:
    base = tracefs_dir()
    if base is None:
        return None
    try:
        return Path(base, "events", category, event, "format").read_text()
    except OSError:
        return None


def tracepoint_has_field(category: str, event: str, name: str) -> bool:
    """Whether the tracepoint's format (tracefs) declares a field called ``name``."""
    for line in (tracepoint_format(category, event) or "").splitlines():
        line = line.strip()
        if line.startswith("field:"):
            decl = line[len("field:"):].split(";")[0]
            if decl.split()[-1].lstrip("*").split("[")[0] == name:
                return True
    return False


# --------------------------------------------------------------------------- the RTT histogram
@dataclass(frozen=True)
class RttHistogram:
    """Log-linear buckets: exact below 2^sub_bits us, then 2^sub_bits buckets per power of two."""

    sub_bits: int = 3
    max_log2: int = 26  # srtt values above 2^27 us (134 s) share the last bucket

    @property
    def nbuckets(self) -> int:
        return (self.max_log2 - self.sub_bits + 2) << self.sub_bits

    def bucket(self, v_us: int) -> int:
        """The index the kernel uses for ``v_us`` (mirrors rtt_bucket() in the C; tests compare)."""
        s = 1 << self.sub_bits
        if v_us < s:
            return v_us
        v_us = min(v_us, (2 << self.max_log2) - 1)
        o = v_us.bit_length() - 1
        sub = (v_us >> (o - self.sub_bits)) & (s - 1)
        return min((o - self.sub_bits + 1) * s + sub, self.nbuckets - 1)

    def bounds(self, idx: int) -> tuple[int, int]:
        """[lo, hi) of the values in bucket ``idx``."""
        s = 1 << self.sub_bits
        if idx < s:
            return idx, idx + 1
        o = idx // s - 1 + self.sub_bits
        sub = idx % s
        width = 1 << (o - self.sub_bits)
        lo = (1 << o) + sub * width
        return lo, lo + width

    def quantile(self, counts: Sequence[int] | np.ndarray, q: float) -> float | None:
        """Nearest-rank quantile of the histogram, as the midpoint of its bucket (None when empty)."""
        cum = np.cumsum(np.asarray(counts, dtype=np.int64))
        n = int(cum[-1]) if len(cum) else 0
        if n <= 0:
            return None
        rank = max(1, math.ceil(q * n))
        lo, hi = self.bounds(int(np.searchsorted(cum, rank, side="left")))
        return (lo + hi - 1) / 2


# --------------------------------------------------------------------------- what a drain returns
@dataclass(frozen=True, slots=True)
class HostInterval:
    """All matched sockets together over one interval (what seed 001's net_data.csv rows hold)."""

    t_s: float  # time.monotonic() at the drain
    wall_s: float  # time.time() at the drain
    interval_s: float  # since the previous drain
    sockets: int  # sockets with probe hits or retransmits this interval
    samples: int
    rtt_min_us: int | None
    rtt_max_us: int | None
    rtt_avg_us: float | None
    rtt_p95_us: float | None
    retrans: int
    acked_bytes: int


@dataclass(frozen=True)
class Drain:
    stats: dict[int, SocketStats]
    host: HostInterval


@dataclass
class _Prev:
    """The cumulative counters of one socket at the previous drain."""

    samples: int = 0
    srtt_sum_us: int = 0
    retrans: int = 0
    acked_bytes: int = 0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


# --------------------------------------------------------------------------- the probe
class BccTelemetry:
    """eBPF telemetry source for the sockets whose local port is in ``ports`` (empty = every TCP socket).

    ``start()`` compiles and attaches the probes (root, bcc, tracefs: see ``python -m live doctor``);
    ``poll()`` drains the interval since the previous poll; ``close()`` detaches. Sockets are reported
    while they are active and for ``idle_timeout_s`` after their last event (with ``samples == 0``
    and the last known srtt, cwnd, inflight), so an outage shows up as silence, not absence;
    closed sockets are reported once more after close, then forgotten.
    """

    def __init__(self, ports: Iterable[int], interval_s: float = 0.1, *, max_sockets: int = 16384,
                 idle_timeout_s: float = 30.0, histogram: RttHistogram | None = None) -> None:
        self.ports = sorted({int(p) for p in ports})
        for p in self.ports:
            if not 0 < p < 65536:
                raise ValueError(f"port {p} out of range")
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.interval_s = interval_s
        self.max_sockets = max_sockets
        self.idle_timeout_s = idle_timeout_s
        self.hist = histogram or RttHistogram()
        self._bpf: Any = None
        self._prev: dict[int, _Prev] = {}
        self._epoch = 0
        self._last_drain_s: float | None = None
        self._features: dict[str, bool] = {}

    # ------------------------------------------------------------------ the C program
    def cflags(self) -> list[str]:
        has_err = tracepoint_has_field("tcp", "tcp_retransmit_skb", "err")
        has_destroy = tracepoint_has_field("tcp", "tcp_destroy_sock", "sock_cookie")
        self._features = {"retrans_err": has_err, "destroy_sock": has_destroy}
        flags = [
            f"-DTP_SUB_BITS={self.hist.sub_bits}",
            f"-DTP_MAX_LOG2={self.hist.max_log2}",
            f"-DTP_NBUCKETS={self.hist.nbuckets}",
            f"-DTP_MAX_SOCKS={self.max_sockets}",
        ]
        if has_err:
            flags.append("-DTP_RETRANS_HAS_ERR")
        if has_destroy:
            flags.append("-DTP_HAVE_DESTROY")
        return flags

    def c_text(self) -> str:
        """The program as BCC compiles it: the -D parameters as #defines, then the .c file."""
        defines = []
        for f in self.cflags():
            name, _, value = f[2:].partition("=")
            defines.append(f"#define {name} {value}".rstrip())
        return "\n".join(defines) + "\n" + C_SOURCE.read_text()

    def print_c(self, file: Any = None) -> None:
        print(self.c_text(), file=file or sys.stdout)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._bpf is not None:
            return
        bcc = import_bcc()
        BPF = bcc.BPF
        for tp in ("tcp_probe", "tcp_retransmit_skb"):
            if not BPF.tracepoint_exists("tcp", tp):
                raise RuntimeError(f"tracepoint tcp:{tp} not found (is tracefs mounted? run `python -m live doctor`)")
        if not tracepoint_has_field("tcp", "tcp_probe", "sock_cookie"):
            raise RuntimeError("tcp:tcp_probe has no sock_cookie on this kernel (needs Linux >= 5.x)")
        self._bpf = BPF(text=self.c_text().encode())  # TRACEPOINT_PROBEs attach themselves
        try:
            cfg = self._bpf[b"config"]
            cfg[ct.c_int(0)] = ct.c_uint32(1 if self.ports else 0)
            ports = self._bpf[b"ports"]
            for p in self.ports:
                ports[ct.c_int(p)] = ct.c_uint8(1)
            self._bpf[b"epoch"][ct.c_int(0)] = ct.c_uint32(self._epoch)
        except Exception:
            self.close()
            raise
        self._last_drain_s = time.monotonic()

    def close(self) -> None:
        if self._bpf is not None:
            try:
                self._bpf.cleanup()
            finally:
                self._bpf = None
        self._prev.clear()

    def __enter__(self) -> BccTelemetry:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def started(self) -> bool:
        return self._bpf is not None

    def probe_runtime(self) -> dict[str, tuple[int, int]]:
        """(run count, total run time in ns) of each attached program, from /proc/self/fdinfo.

        The kernel counts only while BPF run-time stats are enabled (``bpf_run_stats()`` or
        ``sysctl kernel.bpf_stats_enabled=1``); otherwise both stay 0.
        """
        out: dict[str, tuple[int, int]] = {}
        if self._bpf is None:
            return out
        for name, fn in self._bpf.funcs.items():
            info: dict[str, int] = {}
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/self/fdinfo/{fn.fd}").read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key in ("run_cnt", "run_time_ns"):
                        info[key] = int(value.strip())
            label = name.decode() if isinstance(name, bytes) else str(name)
            out[label.removeprefix("tracepoint__")] = (info.get("run_cnt", 0), info.get("run_time_ns", 0))
        return out

    # ------------------------------------------------------------------ draining
    def poll(self) -> dict[int, SocketStats]:
        """Per-socket stats of the interval since the previous poll (keyed by socket cookie)."""
        return self.drain().stats

    def drain(self) -> Drain:
        """Per-socket stats and the host-level aggregate of the interval since the previous drain."""
        if self._bpf is None:
            raise RuntimeError("BccTelemetry.poll() before start()")
        now_s = time.monotonic()
        wall_s = time.time()
        interval_s = now_s - (self._last_drain_s if self._last_drain_s is not None else now_s)
        self._last_drain_s = now_s
        # close the interval: new samples go to the other min/max slot from here on
        closing = self._epoch
        self._epoch = (self._epoch + 1) & 0xFFFFFFFF
        self._bpf[b"epoch"][ct.c_int(0)] = ct.c_uint32(self._epoch)

        socks = self._bpf[b"socks"]
        slot = closing & 1
        now_ns = time.monotonic_ns()
        idle_ns = int(self.idle_timeout_s * 1e9)
        nb = self.hist.nbuckets
        out: dict[int, SocketStats] = {}
        host_hist = np.zeros(nb, dtype=np.int64)
        h_samples = h_retrans = h_acked = h_sockets = 0
        h_sum = 0
        h_min: int | None = None
        h_max: int | None = None
        stale: list[Any] = []
        seen: set[int] = set()
        for k, v in socks.items():
            cookie = int(k.value)
            seen.add(cookie)
            prev = self._prev.get(cookie)
            if prev is None or v.samples < prev.samples or v.retrans < prev.retrans:
                # new, or evicted by the LRU and re-created since the last drain: count from zero
                prev = self._prev[cookie] = _Prev(hist=np.zeros(nb, dtype=np.int64))
            d_samples = v.samples - prev.samples
            d_sum = v.srtt_sum_us - prev.srtt_sum_us
            d_retrans = v.retrans - prev.retrans
            d_acked = v.acked_bytes - prev.acked_bytes
            d_hist: np.ndarray | None = None
            if d_samples > 0:  # an idle socket's histogram has not moved: skip the copy
                hist_now = np.ctypeslib.as_array(v.hist).astype(np.int64)
                d_hist = hist_now - prev.hist
                prev.hist = hist_now
            prev.samples, prev.srtt_sum_us, prev.retrans, prev.acked_bytes = (
                v.samples, v.srtt_sum_us, v.retrans, v.acked_bytes)
            rmin = rmax = None
            if d_samples > 0 and v.mm_epoch[slot] == closing and v.mm_min[slot] != 0:
                rmin, rmax = int(v.mm_min[slot]), int(v.mm_max[slot])
            p95: int | None = None
            if d_hist is not None:
                q = self.hist.quantile(d_hist, 0.95)
                if q is not None:
                    p95 = round(q)
                    if rmin is not None and rmax is not None:
                        p95 = min(max(p95, rmin), rmax)
            active = d_samples > 0 or d_retrans > 0
            idle = now_ns - int(v.last_ns) > idle_ns
            if active or not idle:
                out[cookie] = SocketStats(
                    cookie=cookie,
                    srtt_us=int(v.srtt_us) if v.samples else None,
                    rtt_min_us=rmin,
                    rtt_max_us=rmax,
                    rtt_p95_us=p95,
                    retrans=int(d_retrans),
                    cwnd_pkts=int(v.cwnd) if v.samples else None,
                    ssthresh_pkts=int(v.ssthresh) if v.samples and v.ssthresh < TCP_INFINITE_SSTHRESH else None,
                    snd_wnd_bytes=int(v.snd_wnd) if v.samples else None,
                    inflight_bytes=int(v.inflight),
                    acked_bytes=int(d_acked),
                    samples=int(d_samples),
                )
            if active:
                h_sockets += 1
                h_samples += d_samples
                h_sum += d_sum
                h_retrans += d_retrans
                h_acked += d_acked
                if d_hist is not None:
                    host_hist += d_hist
                if rmin is not None:
                    h_min = rmin if h_min is None else min(h_min, rmin)
                if rmax is not None:
                    h_max = rmax if h_max is None else max(h_max, rmax)
            if (v.closed and not active) or (idle and not active):
                stale.append(k)
        for k in stale:
            with contextlib.suppress(KeyError):
                del socks[k]
            self._prev.pop(int(k.value), None)
        for cookie in list(self._prev):  # evicted by the LRU
            if cookie not in seen:
                del self._prev[cookie]
        h_p95 = self.hist.quantile(host_hist, 0.95) if h_samples else None
        if h_p95 is not None and h_min is not None and h_max is not None:
            h_p95 = min(max(h_p95, h_min), h_max)
        host = HostInterval(
            t_s=now_s, wall_s=wall_s, interval_s=interval_s, sockets=h_sockets, samples=h_samples,
            rtt_min_us=h_min, rtt_max_us=h_max, rtt_avg_us=(h_sum / h_samples) if h_samples else None,
            rtt_p95_us=h_p95, retrans=h_retrans, acked_bytes=h_acked,
        )
        return Drain(out, host)


@contextlib.contextmanager
def bpf_run_stats() -> Iterator[bool]:
    """Enable the kernel's per-program run-time accounting inside the block (BPF_ENABLE_STATS).

    Scoped to an fd, so it switches itself off when the block ends (or the process dies); yields
    False when the kernel or libbpf cannot do it.
    """
    fd = -1
    try:
        libbpf = ct.CDLL("libbpf.so.1", use_errno=True)
        fd = int(libbpf.bpf_enable_stats(ct.c_int(0)))  # BPF_STATS_RUN_TIME
    except (OSError, AttributeError):
        fd = -1
    try:
        yield fd >= 0
    finally:
        if fd >= 0:
            os.close(fd)


# --------------------------------------------------------------------------- a small CLI
def main(argv: Sequence[str] | None = None) -> int:
    """Print per-socket stats each interval (or, with --ebpf, the C program) — a debugging aid."""
    ap = argparse.ArgumentParser(prog="python -m live.kernel.telemetry", description=main.__doc__)
    ap.add_argument("--port", type=int, action="append", default=[], help="server port (repeat; none = all)")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between drains")
    ap.add_argument("--count", type=int, default=0, help="stop after this many intervals (0 = until Ctrl-C)")
    ap.add_argument("--ebpf", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    tel = BccTelemetry(args.port, args.interval)
    if args.ebpf:
        tel.print_c()
        return 0
    n = 0
    with tel:
        try:
            while args.count == 0 or n < args.count:
                time.sleep(args.interval)
                n += 1
                for s in tel.poll().values():
                    print(f"{s.cookie:#018x} srtt={s.srtt_us}us min={s.rtt_min_us} p95={s.rtt_p95_us} "
                          f"max={s.rtt_max_us} retrans={s.retrans} cwnd={s.cwnd_pkts} inflight={s.inflight_bytes} "
                          f"acked={s.acked_bytes} samples={s.samples}")
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
