"""Faults on a real interface, on the scenario's timeline: what ``faults:`` in a scenario file says,
applied with tc / nftables / a tc-bpf program to the egress of one interface (the downlink).

At every instant the active faults (plus the path's own shape, when given) fold into one
:class:`Shape` — rate, added delay and jitter, a loss model, outage or not — and a backend makes
the interface look like that shape. A thread walks the timeline and applies each change.

Backends (``detect_backend()`` picks the first that works here; the choice is printed at start):

================  ==========================  ================================================
fault             ``netem`` (stock distros)   ``fallback`` (no sch_netem: tbf + tc-bpf)
================  ==========================  ================================================
rate              netem ``rate``              tbf ``rate`` (queue = ``queue_bytes`` or 1 BDP)
delay / jitter    netem ``delay D J``         **unsupported** (no delaying qdisc without
                                              netem): skipped with a warning, or an error
                                              with ``strict=True``
loss (Bernoulli)  netem ``loss random P%``    tc-bpf dropper, per packet, p to 2^-32
Gilbert-Elliott   netem ``loss gemodel``      tc-bpf dropper, netem's gemodel state machine
outage            netem ``loss 100%``         tc-bpf dropper drops everything
================  ==========================  ================================================

``fallback-nft`` is used when bcc is missing too: nftables (table ``netdev tokenpace``,
``numgen random mod 1000000 < p*1e6 drop``) for Bernoulli loss and outages, Gilbert-Elliott
approximated by Bernoulli at its stationary loss rate. Its drops are *local*: the sending stack
gets NET_XMIT_DROP and simply sends again, so TCP sees far fewer losses than asked for (measured
here: a 2 % drop rule gave 0.03 % retransmitted segments). The tc-bpf dropper returns
TC_ACT_STOLEN instead — the send "succeeds" and the packet vanishes, as on a real path (2 % gave
2.1 %). Loss applies per skb: under TSO/GSO one skb is up to ~45 MSS segments, which makes
losses burstier than per-segment loss (netem does the same).

Everything created is tagged so cleanup removes only ours: the root qdisc handle ``7a1e:``, the
clsact egress filter preference 31262 (0x7a1e), the nft table ``tokenpace`` (chain
``egress_<iface>``), and a state file ``/run/tokenpace/faults-<netns>-<iface>.json`` that records
what was created. ``cleanup_main(iface)`` (``python -m live cleanup --iface X``) undoes it.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes as ct
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, ClassVar, Literal

from pydantic import TypeAdapter

from live.kernel.netns import netns_cmd
from scenarios.schema import (
    Bernoulli,
    DelayFault,
    Fault,
    GilbertElliott,
    GilbertElliottFault,
    LossFault,
    OutageFault,
    PathSpec,
    RateFault,
)
from sim.model.path import MIN_QUEUE_BYTES, default_queue_bytes, gilbert_elliott_mean_loss, nominal_rate_bps

__all__ = [
    "BACKENDS",
    "FILTER_PREF",
    "NFT_TABLE",
    "QDISC_HANDLE",
    "STATE_DIR",
    "FaultPlayer",
    "GeLoss",
    "Shape",
    "UnsupportedFault",
    "cleanup",
    "cleanup_main",
    "detect_backend",
    "main",
    "netem_available",
    "shape_at",
]

Backend = Literal["netem", "fallback", "fallback-nft"]
BACKENDS: tuple[Backend, ...] = ("netem", "fallback", "fallback-nft")
QDISC_HANDLE = "7a1e:"  # major 0x7a1e ("tokenpace" in a hex-ish mood): our root qdisc
FILTER_PREF = 0x7A1E  # our clsact egress filter's preference
NFT_TABLE = "tokenpace"  # family netdev
STATE_DIR = Path("/run/tokenpace")
DROPPER_C = Path(__file__).with_name("bpf") / "tc_loss.c"
DEFAULT_MTU_BYTES = 1514
NFT_SCALE = 1_000_000  # nft loss granularity: parts per million
NETEM_UNLIMITED_RATE = "1000gbit"  # "no rate" for a netem that had one: 0.5 us per 64 KB skb
# A step applied later than this is reported: a trace replays as 100 ms rate bins, and a step that
# late has lost a whole bin (a control interval, in the built-in scenarios).
LATE_WARN_S = 0.1


class UnsupportedFault(RuntimeError):
    pass


# --------------------------------------------------------------------------- the shape of a link
@dataclass(frozen=True)
class GeLoss:
    """netem's gemodel: p = P(good->bad), r = P(bad->good), loss probability in each state."""

    p: float
    r: float
    loss_bad: float = 1.0
    loss_good: float = 0.0

    @property
    def mean_loss(self) -> float:
        """Stationary loss rate (the path model's formula)."""
        return gilbert_elliott_mean_loss(self.p, self.r, self.loss_bad, self.loss_good)


LossModel = float | GeLoss  # a float is Bernoulli's p


@dataclass(frozen=True)
class Shape:
    """What the interface's egress should look like at one instant."""

    rate_mbps: float | None = None  # None = not shaped
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: LossModel | None = None
    outage: bool = False
    queue_bytes: int | None = None  # bottleneck buffer for the rate limiter

    @property
    def is_clear(self) -> bool:
        return self.rate_mbps is None and self.delay_ms == 0 and self.loss is None and not self.outage

    def describe(self) -> str:
        if self.is_clear:
            return "clear"
        parts = []
        if self.outage:
            parts.append("OUTAGE")
        if self.rate_mbps is not None:
            parts.append(f"rate {self.rate_mbps:g} Mbit/s")
        if self.delay_ms:
            parts.append(f"delay {self.delay_ms:g} ms" + (f" ± {self.jitter_ms:g}" if self.jitter_ms else ""))
        if isinstance(self.loss, GeLoss):
            g = self.loss
            parts.append(f"GE loss p={g.p:g} r={g.r:g} bad={g.loss_bad:g} good={g.loss_good:g}")
        elif self.loss is not None:
            parts.append(f"loss {self.loss * 100:g}%")
        return ", ".join(parts)


def _combine_loss(a: LossModel | None, b: LossModel | None) -> LossModel | None:
    """Two independent loss processes on one packet stream (exact when at most one is GE)."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, GeLoss) and isinstance(b, GeLoss):
        return b  # two Markov chains do not fold into one: the later fault wins
    if isinstance(b, GeLoss):
        a, b = b, a
    assert isinstance(b, float)
    if isinstance(a, GeLoss):
        return replace(a, loss_bad=1 - (1 - a.loss_bad) * (1 - b), loss_good=1 - (1 - a.loss_good) * (1 - b))
    return 1 - (1 - a) * (1 - b)


def _base_rate(base: PathSpec | None, t_s: float) -> float | None:
    if base is None:
        return None
    if base.rate_mbps is not None:
        return base.rate_mbps
    if base.rate_schedule is not None:
        rate = base.rate_schedule[0].rate_mbps
        for pt in base.rate_schedule:
            if pt.at_s <= t_s:
                rate = pt.rate_mbps
        return rate
    return None  # trace-driven paths: not replayed by the player


def _queue_bytes(base: PathSpec | None, rate_mbps: float | None) -> int | None:
    """The path's queue, else the simulator's default (``sim.model.path.default_queue_bytes``): one BDP
    at the path's nominal rate, which does not shrink while a fault fades the link. A path whose rate
    the player does not know (none given, or a trace it does not replay) is sized at the rate in force."""
    if base is not None and base.queue_bytes is not None:
        return base.queue_bytes
    rtt_ms = base.rtt_ms if base is not None else 40.0
    if base is not None and base.trace is None:
        return default_queue_bytes(nominal_rate_bps(base), rtt_ms)
    if rate_mbps is None:
        return None
    return default_queue_bytes(rate_mbps * 1e6, rtt_ms)


def shape_at(t_s: float, faults: Sequence[Any], base: PathSpec | None = None, *, base_delay: bool = True) -> Shape:
    """The shape at ``t_s`` seconds into the run: the path's own shape with the active faults on top.

    Delays add; Bernoulli losses combine as independent drops; a rate fault caps the rate (``factor``
    scales the path's rate at that time); any active outage makes the link drop everything.
    """
    base_rate = _base_rate(base, t_s)
    rate = base_rate
    delay = base.rtt_ms if (base is not None and base_delay) else 0.0
    jitter = 0.0
    loss: LossModel | None = None
    if base is not None and base.loss is not None:
        loss = float(base.loss.p) if isinstance(base.loss, Bernoulli) else _ge(base.loss)
    outage = False
    for f in sorted(faults, key=lambda f: f.at_s):
        if not (f.at_s <= t_s < f.at_s + f.duration_s):
            continue
        if isinstance(f, DelayFault):
            delay += f.delay_ms
            jitter = max(jitter, f.jitter_ms)
        elif isinstance(f, LossFault):
            loss = _combine_loss(loss, float(f.p))
        elif isinstance(f, GilbertElliottFault):
            loss = _combine_loss(loss, _ge(f))
        elif isinstance(f, RateFault):
            if f.rate_mbps is not None:
                capped = f.rate_mbps
            else:
                if base_rate is None:
                    raise UnsupportedFault("a rate fault with `factor` needs the path's base rate (pass base=PathSpec)")
                capped = base_rate * (f.factor or 1.0)
            rate = capped if rate is None else min(rate, capped)
        elif isinstance(f, OutageFault):
            outage = True
    return Shape(rate_mbps=rate, delay_ms=delay, jitter_ms=jitter, loss=loss, outage=outage,
                 queue_bytes=_queue_bytes(base, rate))


def _ge(m: GilbertElliott | GilbertElliottFault) -> GeLoss:
    return GeLoss(p=m.p, r=m.r, loss_bad=m.loss_bad, loss_good=m.loss_good)


def change_times(faults: Sequence[Any], base: PathSpec | None = None) -> list[float]:
    """Every instant the shape may change: fault starts and ends, rate-schedule points."""
    ts = {0.0}
    for f in faults:
        ts.add(float(f.at_s))
        ts.add(float(f.at_s + f.duration_s))
    if base is not None and base.rate_schedule:
        ts.update(float(p.at_s) for p in base.rate_schedule)
    return sorted(ts)


# --------------------------------------------------------------------------- commands
def _run(argv: Sequence[str], netns: str | None, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = netns_cmd(netns, argv)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (rc={proc.returncode}): {proc.stderr.strip()}")
    return proc


def netem_available() -> bool:
    """Whether sch_netem can be instantiated: try it on the loopback of a throwaway namespace."""
    try:
        proc = subprocess.run(["unshare", "--net", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


def _bcc_ok() -> bool:
    try:
        from live.kernel.telemetry import import_bcc

        import_bcc()
    except ImportError:
        return False
    return True


def detect_backend() -> Backend:
    if netem_available():
        return "netem"
    if _bcc_ok() and _bpffs_dir() is not None:
        return "fallback"
    return "fallback-nft"


def _bpffs_dir() -> Path | None:
    p = Path("/sys/fs/bpf")
    try:
        if os.path.ismount(p):
            return p
    except OSError:
        pass
    return None


def _fmt_pct(p: float) -> str:
    return f"{p * 100:.6g}%"


def _fmt_rate(mbps: float) -> str:
    return f"{max(1.0, mbps * 1e6):.0f}bit"


def _tbf_args(shape: Shape, mtu_bytes: int) -> list[str]:
    assert shape.rate_mbps is not None
    rate_bps = shape.rate_mbps * 1e6 / 8
    burst = max(2 * mtu_bytes, int(rate_bps * 0.002))  # ~2 ms of tokens, at least two full frames
    limit = max(shape.queue_bytes or MIN_QUEUE_BYTES, burst)
    return ["tbf", "rate", _fmt_rate(shape.rate_mbps), "burst", str(burst), "limit", str(limit)]


def _netem_args(shape: Shape, mtu_bytes: int) -> list[str]:
    args = ["netem"]
    queue = shape.queue_bytes or MIN_QUEUE_BYTES * 16
    args += ["limit", str(max(16, math.ceil(queue / mtu_bytes)))]
    if shape.delay_ms > 0:
        args += ["delay", f"{shape.delay_ms:g}ms"]
        if shape.jitter_ms > 0:
            args += [f"{shape.jitter_ms:g}ms", "distribution", "normal"]
    if shape.outage:
        args += ["loss", "random", "100%"]
    elif isinstance(shape.loss, GeLoss):
        g = shape.loss
        args += ["loss", "gemodel", _fmt_pct(g.p), _fmt_pct(g.r), _fmt_pct(g.loss_bad), _fmt_pct(g.loss_good)]
    elif shape.loss is not None and shape.loss > 0:
        args += ["loss", "random", _fmt_pct(shape.loss)]
    if shape.rate_mbps is not None:
        args += ["rate", _fmt_rate(shape.rate_mbps)]
    return args


# --------------------------------------------------------------------------- state file
def _state_path(iface: str, netns: str | None) -> Path:
    return STATE_DIR / f"faults-{netns or 'root'}-{iface}.json"


@dataclass
class _Created:
    """What this player created on the interface (written to the state file as it happens)."""

    iface: str
    netns: str | None
    backend: str
    pid: int = field(default_factory=os.getpid)
    root_qdisc: bool = False
    clsact: bool = False
    filter: bool = False
    nft_chain: bool = False

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        path = _state_path(self.iface, self.netns)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=1))
        tmp.replace(path)


# --------------------------------------------------------------------------- backends
class _Dropper:
    """The tc-bpf loss program (live/kernel/bpf/tc_loss.c) on clsact egress; its config map is updated live."""

    MODES: ClassVar[dict[str, int]] = {"off": 0, "bernoulli": 1, "ge": 2, "drop_all": 3}  # tc_loss.c MODE_*

    def __init__(self, iface: str, netns: str | None, created: _Created) -> None:
        self.iface, self.netns, self.created = iface, netns, created
        self._bpf: Any = None
        self.mode = "off"

    def attach(self) -> None:
        from live.kernel.telemetry import import_bcc

        bpffs = _bpffs_dir()
        if bpffs is None:
            raise RuntimeError("bpffs is not mounted at /sys/fs/bpf: run scripts/setup_live.sh")
        bcc = import_bcc()
        self._bpf = bcc.BPF(src_file=str(DROPPER_C).encode())
        fn = self._bpf.load_func(b"tokenpace_loss", bcc.BPF.SCHED_CLS)
        self.set(Shape())
        lib = bcc.libbcc.lib
        lib.bpf_obj_pin.argtypes = [ct.c_int, ct.c_char_p]
        lib.bpf_obj_pin.restype = ct.c_int
        pin = bpffs / f"tokenpace-{os.getpid()}-{self.netns or 'root'}-{self.iface}"
        with contextlib.suppress(FileNotFoundError):
            pin.unlink()
        if lib.bpf_obj_pin(fn.fd, str(pin).encode()) != 0:
            raise RuntimeError(f"could not pin the tc-bpf program at {pin}")
        try:
            qd = _run(["tc", "qdisc", "show", "dev", self.iface], self.netns).stdout
            if "qdisc clsact" not in qd:
                _run(["tc", "qdisc", "add", "dev", self.iface, "clsact"], self.netns)
                self.created.clsact = True
                self.created.save()
            _run(["tc", "filter", "replace", "dev", self.iface, "egress", "pref", str(FILTER_PREF), "handle", "1",
                  "bpf", "direct-action", "object-pinned", str(pin)], self.netns)
            self.created.filter = True
            self.created.save()
        finally:
            with contextlib.suppress(FileNotFoundError):
                pin.unlink()  # tc holds its own reference now

    def set(self, shape: Shape) -> None:
        cfg_map = self._bpf[b"loss_cfg"]
        cfg = cfg_map.Leaf()

        def thr(p: float) -> int:
            return round(min(max(p, 0.0), 1.0) * (1 << 32))

        if shape.outage:
            self.mode = "drop_all"
        elif isinstance(shape.loss, GeLoss):
            self.mode = "ge"
            g = shape.loss
            cfg.thr_to_bad, cfg.thr_to_good = thr(g.p), thr(g.r)
            cfg.thr_loss_bad, cfg.thr_loss_good = thr(g.loss_bad), thr(g.loss_good)
        elif shape.loss is not None and shape.loss > 0:
            self.mode = "bernoulli"
            cfg.thr_loss = thr(shape.loss)
        else:
            self.mode = "off"
        cfg.mode = self.MODES[self.mode]
        cfg_map[ct.c_int(0)] = cfg

    def counters(self) -> tuple[int, int]:
        """(passed, dropped) packets since attach."""
        if self._bpf is None:
            return 0, 0
        st = self._bpf[b"loss_state"][ct.c_int(0)]
        return int(st.passed), int(st.dropped)

    def close(self) -> None:
        if self._bpf is not None:
            with contextlib.suppress(Exception):
                self._bpf.cleanup()
            self._bpf = None


class _Applier:
    """Makes the interface's egress look like a Shape with one backend; remembers what it created."""

    def __init__(self, iface: str, netns: str | None, backend: Backend, created: _Created, mtu_bytes: int,
                 log: Callable[[str], None]) -> None:
        self.iface, self.netns, self.backend, self.created = iface, netns, backend, created
        self.mtu_bytes = mtu_bytes
        self.log = log
        self.dropper: _Dropper | None = None
        self._root: str | None = None  # "netem" | "tbf" while our root qdisc is installed
        self._root_args: list[str] | None = None  # what it was last given (the same again is not re-sent)
        self._netem_rated = False  # the installed netem has been given a rate (it keeps one until deleted)

    def prepare(self, shapes: Iterable[Shape]) -> None:
        """What takes long, done before time 0: the dropper's compile and attach (it drops nothing
        until set), or the empty nftables chain, so that a loss step is a map update or one rule."""
        needs_drop = any(s.outage or s.loss is not None for s in shapes)
        if self.backend == "fallback" and needs_drop:
            self.dropper = _Dropper(self.iface, self.netns, self.created)
            self.dropper.attach()
        elif self.backend == "fallback-nft" and needs_drop:
            self._nft_chain_create()

    def apply(self, shape: Shape) -> None:
        if self.backend == "netem":
            args = None if shape.is_clear else _netem_args(shape, self.mtu_bytes)
            if args is not None and shape.rate_mbps is None and self._root == "netem" and self._netem_rated:
                # `tc qdisc change` without `rate` leaves netem's rate as it was (the kernel updates it
                # only when the attribute is sent, and tc never sends a zero rate): lift it explicitly.
                # Deleting and re-adding the qdisc would drop the packets queued in it instead.
                args += ["rate", NETEM_UNLIMITED_RATE]
            self._root_qdisc(args, "netem")
            self._netem_rated = args is not None and "rate" in args
            return
        self._root_qdisc(_tbf_args(shape, self.mtu_bytes) if shape.rate_mbps is not None else None, "tbf")
        if self.backend == "fallback":
            if self.dropper is not None:
                self.dropper.set(shape)
        else:
            self._nft(shape)

    def _root_qdisc(self, args: list[str] | None, kind: str) -> None:
        if args is None:
            if self._root is not None:
                _run(["tc", "qdisc", "del", "dev", self.iface, "root", "handle", QDISC_HANDLE], self.netns, check=False)
                self._root = self._root_args = None
            return
        if self._root == kind and args == self._root_args:
            return  # in place already (the t=0 rate, installed by prepare): a step stays a map update
        verb = "change" if self._root == kind else "replace"
        _run(["tc", "qdisc", verb, "dev", self.iface, "root", "handle", QDISC_HANDLE, *args], self.netns)
        self._root_args = list(args)
        if self._root is None:
            self.created.root_qdisc = True
            self.created.save()
        self._root = kind

    def _nft(self, shape: Shape) -> None:
        chain = _nft_chain(self.iface)
        if shape.outage:
            rule = "counter drop"
        elif shape.loss is not None:
            p = shape.loss.mean_loss if isinstance(shape.loss, GeLoss) else shape.loss
            n = round(p * NFT_SCALE)
            rule = f"numgen random mod {NFT_SCALE} < {n} counter drop" if n > 0 else ""
        else:
            rule = ""
        if not rule:
            if self.created.nft_chain:
                _run(["nft", "flush", "chain", "netdev", NFT_TABLE, chain], self.netns, check=False)
            return
        self._nft_chain_create()
        script = f"flush chain netdev {NFT_TABLE} {chain}\nadd rule netdev {NFT_TABLE} {chain} {rule}\n"
        proc = subprocess.run(netns_cmd(self.netns, ["nft", "-f", "-"]), input=script, capture_output=True,
                              text=True, timeout=20, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"nft failed: {proc.stderr.strip()}")

    def _nft_chain_create(self) -> None:
        if self.created.nft_chain:
            return
        _run(["nft", "add", "table", "netdev", NFT_TABLE], self.netns)
        _run(["nft", "add", "chain", "netdev", NFT_TABLE, _nft_chain(self.iface),
              f"{{ type filter hook egress device \"{self.iface}\" priority 0; policy accept; }}"], self.netns)
        self.created.nft_chain = True
        self.created.save()

    def close(self) -> None:
        if self.dropper is not None:
            self.dropper.close()
            self.dropper = None


def _nft_chain(iface: str) -> str:
    return "egress_" + "".join(c if c.isalnum() or c == "_" else "_" for c in iface)


# --------------------------------------------------------------------------- cleanup
def cleanup(iface: str, netns: str | None = None, *, log: Callable[[str], None] = print) -> list[str]:
    """Remove everything tokenpace created on ``iface`` (in ``netns``); returns what was removed.

    Uses the state file when there is one, and in any case removes what carries our tags: the root
    qdisc with handle 7a1e:, the clsact egress filter of preference 31262, the nft chain
    ``egress_<iface>`` (and the ``tokenpace`` table once empty). A clsact qdisc is removed only when
    the state file says we added it and no other filter is left on it.
    """
    removed: list[str] = []
    state_file = _state_path(iface, netns)
    state: dict[str, Any] = {}
    if state_file.exists():
        with contextlib.suppress(ValueError, OSError):
            state = json.loads(state_file.read_text())
    if netns is not None and not Path("/run/netns", netns).exists():
        state_file.unlink(missing_ok=True)
        return removed  # the namespace (and the interface in it) is gone
    if _run(["ip", "link", "show", "dev", iface], netns, check=False).returncode != 0:
        state_file.unlink(missing_ok=True)
        return removed
    qd = _run(["tc", "qdisc", "show", "dev", iface], netns, check=False).stdout
    for line in qd.splitlines():
        words = line.split()
        if len(words) >= 3 and words[2] == QDISC_HANDLE and "root" in words:
            _run(["tc", "qdisc", "del", "dev", iface, "root", "handle", QDISC_HANDLE], netns, check=False)
            removed.append(f"qdisc {words[1]} {QDISC_HANDLE} (root)")
    if "qdisc clsact" in qd:
        flt = _run(["tc", "filter", "show", "dev", iface, "egress"], netns, check=False).stdout
        if f"pref {FILTER_PREF} " in flt:
            _run(["tc", "filter", "del", "dev", iface, "egress", "pref", str(FILTER_PREF)], netns, check=False)
            removed.append(f"tc filter egress pref {FILTER_PREF}")
        if state.get("clsact"):
            left = _run(["tc", "filter", "show", "dev", iface, "egress"], netns, check=False).stdout.strip()
            left_in = _run(["tc", "filter", "show", "dev", iface, "ingress"], netns, check=False).stdout.strip()
            if not left and not left_in:
                _run(["tc", "qdisc", "del", "dev", iface, "clsact"], netns, check=False)
                removed.append("qdisc clsact")
    tables = _run(["nft", "list", "tables"], netns, check=False).stdout
    if f"table netdev {NFT_TABLE}" in tables:
        chain = _nft_chain(iface)
        if _run(["nft", "list", "chain", "netdev", NFT_TABLE, chain], netns, check=False).returncode == 0:
            _run(["nft", "delete", "chain", "netdev", NFT_TABLE, chain], netns, check=False)
            removed.append(f"nft chain netdev {NFT_TABLE} {chain}")
        listing = _run(["nft", "list", "table", "netdev", NFT_TABLE], netns, check=False).stdout
        if "chain " not in listing:
            _run(["nft", "delete", "table", "netdev", NFT_TABLE], netns, check=False)
            removed.append(f"nft table netdev {NFT_TABLE}")
    state_file.unlink(missing_ok=True)
    for what in removed:
        log(f"[faults] removed {what} from {iface}" + (f" (netns {netns})" if netns else ""))
    return removed


def cleanup_main(iface: str, netns: str | None = None) -> int:
    """``python -m live cleanup --iface X [--netns N]``: remove tokenpace's qdiscs/filters/nft rules."""
    try:
        removed = cleanup(iface, netns)
    except Exception as exc:  # a CLI: say what failed, exit non-zero
        print(f"cleanup of {iface} failed: {exc}", file=sys.stderr)
        return 1
    if not removed:
        print(f"nothing of tokenpace's on {iface}")
    return 0


# --------------------------------------------------------------------------- the player
_FAULTS = TypeAdapter(list[Fault])


class FaultPlayer:
    """Plays a fault timeline on the egress of ``iface`` (optionally inside network namespace ``netns``).

    ``prepare()`` does everything slow, before anybody picks time 0: detects or checks the backend,
    prints it with what it will and will not emulate, removes leftovers, compiles and attaches the
    tc-bpf dropper (seconds on a busy 2-core machine) and installs the path's own shape at t=0
    without its losses. ``start()`` (which prepares first if that was not done) applies the shape at
    t=0 and starts a thread that applies every later change; only cheap steps are left by then
    (a map update, a ``tc qdisc change``). A step applied more than ``LATE_WARN_S`` after its time,
    or one whose successor was already due (its whole window missed), is logged with how late it
    was and kept in ``late_steps``. ``stop()`` restores the interface (idempotent; also run at exit
    and on SIGTERM/SIGINT while prepared or playing).
    Time 0 is ``t0_s`` (a ``time.monotonic()`` value shared with the rest of a run) or ``start()``.
    ``base`` is the path's own shape (rate / rtt / loss / rate schedule) applied under the faults;
    without it, faults alone are applied (a ``factor`` rate fault then needs ``base``).
    It refuses an interface that another live player shapes, or whose root qdisc somebody else
    configured (``force=True`` replaces it; cleanup then leaves the kernel default).
    """

    def __init__(self, iface: str, faults: Sequence[Any] = (), backend: Backend | None = None, *,
                 netns: str | None = None, base: PathSpec | None = None, base_delay: bool = True,
                 strict: bool = False, t0_s: float | None = None, mtu_bytes: int = DEFAULT_MTU_BYTES,
                 log: Callable[[str], None] | None = None, handle_signals: bool = True, force: bool = False) -> None:
        self.iface = iface
        self.netns = netns
        self.faults = list(faults) if all(not isinstance(f, dict) for f in faults) else _FAULTS.validate_python(
            list(faults))
        self.base = base
        self.base_delay = base_delay
        self.backend: Backend | None = backend
        self.strict = strict
        self.t0_s = t0_s
        self.mtu_bytes = mtu_bytes
        self._log = log or (lambda msg: print(msg, flush=True))
        self.handle_signals = handle_signals
        self.force = force  # replace a root qdisc somebody else installed
        self.history: list[tuple[float, Shape]] = []  # (t_s since t0, shape applied)
        self.late_steps: list[tuple[float, float]] = []  # (planned t_s, late by s): steps not applied on time
        self.prepare_s: float | None = None  # how long prepare() took (the dropper's compile, mostly)
        self._plan: list[tuple[float, Shape]] | None = None  # prepared, not yet handed to start()
        self.unsupported: list[str] = []
        self.error: BaseException | None = None
        self._applier: _Applier | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._stopped = True
        self._old_handlers: dict[int, Any] = {}

    # ------------------------------------------------------------------ planning
    def plan(self) -> list[tuple[float, Shape]]:
        """(time, shape) at every change point, with what the backend cannot do removed."""
        out: list[tuple[float, Shape]] = []
        for t in change_times(self.faults, self.base):
            shape = self._supported(shape_at(t, self.faults, self.base, base_delay=self.base_delay))
            if not out or out[-1][1] != shape:
                out.append((t, shape))
        return out

    def _supported(self, shape: Shape) -> Shape:
        if self.backend in (None, "netem"):
            return shape
        if shape.delay_ms > 0 or shape.jitter_ms > 0:
            shape = replace(shape, delay_ms=0.0, jitter_ms=0.0)
        if self.backend == "fallback-nft" and isinstance(shape.loss, GeLoss):
            shape = replace(shape, loss=shape.loss.mean_loss)
        return shape

    def _check_support(self) -> None:
        if self.backend == "netem":
            return
        notes = []
        delays = [f for f in self.faults if isinstance(f, DelayFault)]
        if delays or (self.base is not None and self.base_delay and self.base.rtt_ms > 0):
            notes.append(f"delay/jitter: unsupported by the {self.backend} backend (no sch_netem here) — "
                         f"{len(delays)} delay fault(s)" + (f" and the path's rtt_ms={self.base.rtt_ms:g}"
                                                            if self.base is not None and self.base_delay else "")
                         + " not applied")
        if self.base is not None and self.base.trace is not None:
            notes.append("trace-driven path rate: not replayed by the fault player")
        if self.backend == "fallback-nft":
            if any(isinstance(f, GilbertElliottFault) for f in self.faults):
                notes.append("Gilbert-Elliott: approximated by Bernoulli loss at its stationary rate (nftables)")
            if any(isinstance(f, (LossFault, GilbertElliottFault, OutageFault)) for f in self.faults):
                notes.append("loss/outage via nftables are local drops: TCP sees few real losses (install bcc)")
        self.unsupported = notes
        if notes and self.strict:
            raise UnsupportedFault("; ".join(notes))

    # ------------------------------------------------------------------ lifecycle
    def prepare(self) -> FaultPlayer:
        """Everything slow, so that time 0 can be chosen after it: backend, checks, leftovers removed,
        the dropper compiled and attached (off), the t=0 shape's rate/delay in place (no losses yet:
        traffic before time 0 -- a readiness check -- must get through). Idempotent."""
        with self._lock:
            if not self._stopped:
                return self  # prepared or playing already
            t_begin = time.monotonic()
            if self.backend is None:
                self.backend = detect_backend()
            elif self.backend == "netem" and not netem_available():
                raise UnsupportedFault("backend netem requested but sch_netem is not available on this kernel")
            self._check_support()
            where = self.iface + (f" (netns {self.netns})" if self.netns else "")
            self._log(f"[faults] backend {self.backend} on {where}: " + {
                "netem": "sch_netem (rate, delay, jitter, loss, Gilbert-Elliott, outage)",
                "fallback": "tbf (rate) + tc-bpf dropper (loss, Gilbert-Elliott, outage); no delay",
                "fallback-nft": "tbf (rate) + nftables (loss, outage); no delay",
            }[self.backend])
            for note in self.unsupported:
                self._log(f"[faults]   {note}")
            plan = self.plan()
            self._check_interface_free()
            cleanup(self.iface, self.netns, log=self._log)  # leftovers of a crashed run
            created = _Created(self.iface, self.netns, self.backend)
            created.save()
            self._applier = _Applier(self.iface, self.netns, self.backend, created, self.mtu_bytes, self._log)
            self._stopped = False
            self._stop.clear()
            try:
                self._install_handlers()
                atexit.register(self.stop)
                self._applier.prepare(s for _, s in plan)
                if plan and plan[0][0] <= 0.0:
                    pre_roll = replace(plan[0][1], loss=None, outage=False)
                    if not pre_roll.is_clear:
                        self._applier.apply(pre_roll)
                self._plan = plan
            except BaseException:
                self.stop()
                raise
            self.prepare_s = time.monotonic() - t_begin
            self._log(f"[faults] prepared in {self.prepare_s:.2f} s")
            return self

    def start(self) -> FaultPlayer:
        """Play the timeline from ``t0_s`` (default: now); prepares first if ``prepare()`` was not called.
        What is due already when it is called is in place when it returns (late steps are reported)."""
        with self._lock:
            if self._thread is not None:
                return self
            self.prepare()
            plan, self._plan = self._plan or [], None
            try:
                if self.t0_s is None:
                    self.t0_s = time.monotonic()
                while plan and self.t0_s + plan[0][0] <= time.monotonic():
                    t, shape = plan.pop(0)
                    self._apply_step(t, shape, next_due=bool(plan) and self.t0_s + plan[0][0] <= time.monotonic())
                self._thread = threading.Thread(target=self._play, args=(plan,), name=f"faults-{self.iface}",
                                                daemon=True)
                self._thread.start()
            except BaseException:
                self.stop()
                raise
            return self

    def _check_interface_free(self) -> None:
        """Refuse to take over an interface another live player, or somebody's own root qdisc, holds."""
        state_file = _state_path(self.iface, self.netns)
        with contextlib.suppress(OSError, ValueError):
            pid = int(json.loads(state_file.read_text()).get("pid", 0))
            if pid and pid != os.getpid() and Path(f"/proc/{pid}").exists():
                raise RuntimeError(f"{self.iface} is being shaped by another tokenpace process (pid {pid}); "
                                   f"stop it, or run `python -m live cleanup --iface {self.iface}`")
        qd = _run(["tc", "qdisc", "show", "dev", self.iface], self.netns).stdout
        for line in qd.splitlines():
            words = line.split()
            if "root" in words and len(words) >= 3 and words[2] not in ("0:", QDISC_HANDLE) and not self.force:
                raise RuntimeError(f"{self.iface} has a root qdisc of its own ({' '.join(words[1:3])}); tokenpace "
                                   "would replace it — remove it first, or pass force=True")

    def _play(self, plan: list[tuple[float, Shape]]) -> None:
        assert self.t0_s is not None and self._applier is not None
        try:
            for i, (t, shape) in enumerate(plan):
                wait_s = self.t0_s + t - time.monotonic()
                if wait_s > 0 and self._stop.wait(wait_s):
                    return
                with self._lock:
                    if self._stop.is_set():
                        return
                    next_due = i + 1 < len(plan) and self.t0_s + plan[i + 1][0] <= time.monotonic()
                    self._apply_step(t, shape, next_due=next_due)
        except BaseException as exc:  # reported by stop() / wait()
            self.error = exc
            self._log(f"[faults] error: {exc}")

    def _apply_step(self, t: float, shape: Shape, *, next_due: bool = False) -> None:
        """Apply the step planned at ``t``; one begun more than LATE_WARN_S late, or whose successor
        is due already (``next_due``: its whole window is missed), is logged and kept in late_steps."""
        assert self.t0_s is not None and self._applier is not None
        late_s = time.monotonic() - (self.t0_s + t)
        self._applier.apply(shape)
        self.history.append((time.monotonic() - self.t0_s, shape))
        self._log(f"[faults] t={t:7.2f}s {self.iface}: {shape.describe()}")
        if late_s > LATE_WARN_S or next_due:
            self.late_steps.append((t, late_s))
            self._log(f"[faults] LATE: the step at t={t:.2f}s ({shape.describe()}) was applied {late_s:.3f} s late"
                      + (" and the next step is due already: its window was missed" if next_due else ""))

    def elapsed_s(self) -> float:
        return 0.0 if self.t0_s is None else time.monotonic() - self.t0_s

    def current(self) -> Shape:
        """The shape applied last (clear before the first)."""
        return self.history[-1][1] if self.history else Shape()

    def active_faults(self, t_s: float | None = None) -> list[Any]:
        t = self.elapsed_s() if t_s is None else t_s
        return [f for f in self.faults if f.at_s <= t < f.at_s + f.duration_s]

    def dropper_counters(self) -> tuple[int, int]:
        """(passed, dropped) packets seen by the tc-bpf dropper (fallback backend), else (0, 0)."""
        a = self._applier
        return a.dropper.counters() if a is not None and a.dropper is not None else (0, 0)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the timeline has been played to its last change (True) or timeout (False)."""
        t = self._thread
        if t is None:
            return True
        t.join(timeout_s)
        return not t.is_alive()

    def stop(self) -> None:
        """Stop the timeline and remove everything this player created. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(5.0)
        with self._lock:
            try:
                if self._applier is not None:
                    self._applier.close()
                cleanup(self.iface, self.netns, log=lambda m: None)
            finally:
                self._applier = None
                self._thread = None
                self._plan = None
                self._restore_handlers()
                with contextlib.suppress(Exception):
                    atexit.unregister(self.stop)
        if self.error is not None:
            err, self.error = self.error, None
            raise RuntimeError(f"fault player on {self.iface} failed: {err}") from err

    def __enter__(self) -> FaultPlayer:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if et is None:
            self.stop()
        else:  # do not hide the original exception behind a cleanup error
            try:
                self.stop()
            except Exception as exc:
                self._log(f"[faults] cleanup after error: {exc}")

    # ------------------------------------------------------------------ signals
    def _install_handlers(self) -> None:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old_handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def _restore_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, old in self._old_handlers.items():
            with contextlib.suppress(Exception):
                signal.signal(sig, old)
        self._old_handlers.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        old = self._old_handlers.get(signum)
        with contextlib.suppress(Exception):
            self.stop()
        if callable(old):
            old(signum, frame)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:
            raise SystemExit(128 + signum)

    @classmethod
    def for_path(cls, scenario: Any, path: str, iface: str, **kw: Any) -> FaultPlayer:
        """The player of one scenario path: its faults on top of its own shape."""
        return cls(iface, scenario.faults_for(path), base=scenario.paths[path], **kw)


# --------------------------------------------------------------------------- CLI entry points
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m live.kernel.faults``: detect the backend, play a scenario's faults on an interface, or clean up."""
    ap = argparse.ArgumentParser(prog="python -m live.kernel.faults", description=main.__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("detect", help="print the backend this machine would use")
    c = sub.add_parser("cleanup", help="remove what tokenpace created on an interface")
    c.add_argument("--iface", required=True)
    c.add_argument("--netns")
    p = sub.add_parser("play", help="play a scenario path's faults on an interface")
    p.add_argument("scenario")
    p.add_argument("--path", help="path name (default: the first)")
    p.add_argument("--iface", required=True)
    p.add_argument("--netns")
    p.add_argument("--backend", choices=BACKENDS)
    p.add_argument("--no-base", action="store_true", help="apply the faults only, not the path's own shape")
    p.add_argument("--strict", action="store_true", help="fail instead of skipping what the backend cannot do")
    args = ap.parse_args(argv)
    if args.cmd == "detect":
        print(detect_backend())
        return 0
    if args.cmd == "cleanup":
        return cleanup_main(args.iface, args.netns)
    from scenarios.loader import load_scenario

    sc = load_scenario(args.scenario).scenario
    path = args.path or next(iter(sc.paths))
    player = FaultPlayer(args.iface, sc.faults_for(path), args.backend, netns=args.netns,
                         base=None if args.no_base else sc.paths[path], strict=args.strict)
    with player:
        end = max([f.at_s + f.duration_s for f in player.faults] or [0.0])
        while player.elapsed_s() < end + 0.5:
            time.sleep(0.2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
