"""Run the netem fault backend for real inside a user-mode-linux kernel: ``python -m live.kernel.uml``.

Users' stock kernels have sch_netem, so netem is the fault backend they get; a machine whose kernel
lacks it (no modules, a custom build) cannot run that code path at all. Debian's ``user-mode-linux``
package ships a whole Linux kernel as an ordinary program, with ``sch_netem.ko`` and ``veth.ko``
beside it. It boots in a few seconds with the host's files as its root filesystem (hostfs), so the
project's own Python runs inside it unchanged:

1. the host writes an init script into a fresh folder under /tmp and starts
   ``linux.uml mem=... rootfstype=hostfs rootflags=/ rw init=SCRIPT`` in its own process group;
2. the script mounts proc, sysfs and a private tmpfs on /run (namespace handles and fault state
   files stay inside the guest), loads the modules, and runs ``python -m live.kernel.uml guest``;
3. the guest creates two network namespaces joined by veth (``live.kernel.netns.veth_pair``), measures the
   link with no fault (its baseline: UML's timing is its own), then plays each fault kind of the
   scenario schema through :class:`live.kernel.faults.FaultPlayer` with ``backend="netem"`` on one veth end
   -- the same code users run -- and measures what arrives on the other end;
4. the guest writes its figures as JSON into that folder (hostfs) and powers the kernel off; the
   host reads them, judges them (:func:`judge`) and removes the folder. A guest that hangs is killed
   with its process group when ``timeout_s`` runs out.

The UML kernel has no network device to the outside (none is configured), so nothing the guest does
can reach the host's interfaces; its only links are the veth pair it creates.
Needs root on the host (hostfs then writes as root) and ``apt-get install user-mode-linux kmod``
(``scripts/setup_live.sh`` installs both).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import select
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CHECK_COMMAND",
    "Boot",
    "Judgement",
    "boot_uml",
    "find_uml",
    "judge",
    "main",
    "run_check",
    "uml_unavailable_reason",
]

CHECK_COMMAND = "sudo python -m live.kernel.uml"  # what `python -m live doctor` tells a user without netem
UML_BINARIES = ("linux.uml", "linux")
UML_MODULES_ROOT = Path("/usr/lib/uml/modules")
GUEST_MODULES = ("kernel/net/sched/sch_netem.ko", "kernel/drivers/net/veth.ko")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
RESULT_NAME = "result.json"
DEFAULT_MEM_MB = 384
DEFAULT_TIMEOUT_S = 170.0  # ~1 min idle, ~2 min on a busy 2-core host

# --------------------------------------------------------------------------- what the guest applies
# Each figure below is chosen so the check it feeds cannot flake; the arithmetic is in the comments.
# delay fault: RTT must rise by this, within 10 %. The guest's timing noise is absolute (how late the
# host runs an idle UML process that a timer wakes: 0.3 ms idle, a few ms on a busy 2-core host),
# so a long delay keeps it small beside the 10 % band; what remains is measured in the same phase.
DELAY_MS = 100.0
DELAY_SAMPLES = 25
JITTER_MS = 20.0  # delay fault with jitter (normal distribution): one-way delay's std
# spread is judged robustly, sigma = IQR / 1.349 (host hiccups make rare outliers that would swell a
# std); over 800 samples that estimator's own sigma is sqrt(1.36/800) = 4.1 % of J, so the +-25 %
# band is 6 sigma. The guest's own noise -- the spread of the same stream under the delay alone,
# 1.3-2.5 ms IQR-sigma measured at host load 12-15 on 2 cores -- adds in quadrature and is
# subtracted; it would have to reach 15 ms (and in the jitter run only) to push the figure out.
JITTER_PACKETS = 800
JITTER_BAND = 0.25
# Bernoulli loss: p = 0.1 over N = 6000 packets. sigma of the measured rate = sqrt(p(1-p)/N)
# = 0.00387; the acceptance band p +- 0.02 is +- 5.2 sigma (two-sided false-fail < 3e-7).
LOSS_P = 0.10
LOSS_PACKETS = 6000
LOSS_BAND = 0.02
# Gilbert-Elliott, netem's gemodel with loss_bad = 1, loss_good = 0: every packet sent in Bad is
# lost, so loss bursts are geometric with mean 1/r = 4 (variance (1-r)/r^2 = 12) and gaps have
# mean 1/p = 10; one burst per 1/p + 1/r = 14 packets. N = 16000 packets give ~1140 bursts, so
# the mean burst length has sigma = sqrt(12/1140) = 0.103; the band 4 +- 0.6 (15 %) is 5.8 sigma
# even at 1000 bursts (sigma 0.110, 5.5 sigma). A Bernoulli dropper at the same mean loss (0.286)
# would give bursts of 1/(1-0.286) = 1.4: far outside the band.
GE_P, GE_R = 0.10, 0.25
GE_PACKETS = 16000
GE_MIN_BURSTS = 1000
GE_BURST_BAND = 0.15  # relative
RATE_MBPS = 8.0  # rate fault; TCP goodput must be within 10 % of rate x payload/wire bytes
RATE_TOLERANCE = 0.10
RATE_RUN_S, RATE_WARMUP_S = 3.0, 0.75
OUTAGE_PACKETS = 500
TRANSITION_RATE_MBPS = 2.0  # rate fault ending while a delay fault continues (netem `change` path)
TRANSITION_DELAY_MS = 30.0
TRANSITION_BURST = 100
UDP_PAYLOAD_BYTES = 1200
# a TCP segment on veth: payload 1448 + TCP 32 (timestamps) + IP 20 + Ethernet 14 = what netem's
# `rate` charges for it (skb->len at the qdisc)
TCP_PAYLOAD_BYTES, TCP_WIRE_BYTES = 1448, 1514
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35


def find_uml() -> Path | None:
    """The UML kernel binary (Debian's user-mode-linux installs /usr/bin/linux.uml)."""
    for name in UML_BINARIES:
        path = shutil.which(name)
        if path is not None:
            with contextlib.suppress(OSError), open(path, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    return Path(path)
    return None


def find_modules_dir() -> Path | None:
    """/usr/lib/uml/modules/<version>: the modules built for the UML kernel (newest if several)."""
    if not UML_MODULES_ROOT.is_dir():
        return None
    dirs = sorted((d for d in UML_MODULES_ROOT.iterdir() if (d / GUEST_MODULES[0]).exists()),
                  key=lambda d: [int(x) if x.isdigit() else x for x in d.name.replace("-", ".").split(".")])
    return dirs[-1] if dirs else None


def uml_unavailable_reason() -> str | None:
    """Why the UML check cannot run here (None = it can)."""
    if os.geteuid() != 0:
        return "the UML netem check needs root (the guest writes its result through hostfs as root)"
    if find_uml() is None:
        return "user-mode-linux is not installed (sudo apt-get install user-mode-linux kmod)"
    mods = find_modules_dir()
    if mods is None:
        return f"no UML modules with sch_netem.ko under {UML_MODULES_ROOT} (reinstall user-mode-linux)"
    missing = [m for m in GUEST_MODULES if not (mods / m).exists()]
    if missing:
        return f"UML modules missing: {', '.join(missing)} under {mods}"
    if shutil.which("insmod") is None:
        return "insmod not found (sudo apt-get install kmod)"
    return None


# --------------------------------------------------------------------------- host side: boot
@dataclass
class Boot:
    """One UML boot: what the guest reported and how long things took."""

    result: dict[str, Any] | None
    returncode: int | None  # the guest program's exit code (None: it never finished)
    wall_s: float  # UML started -> UML exited (or was killed)
    boot_s: float | None  # UML started -> its init ran the guest program (UML reads the host's clock)
    timed_out: bool
    console_tail: str
    guest_log_tail: str

    def failure(self) -> str | None:
        if self.timed_out:
            return f"UML did not finish within its timeout; guest log: {self.guest_log_tail!r}"
        if self.result is None or self.returncode != 0:
            return (f"the guest program failed (rc={self.returncode}); guest log: {self.guest_log_tail!r}; "
                    f"console: {self.console_tail!r}")
        return None


def _init_script(workdir: Path, modules_dir: Path, guest_argv: Sequence[str]) -> str:
    q = shlex.quote
    insmods = "\n".join(f"insmod {q(str(modules_dir / m))} || echo 'insmod {m} failed' >&2" for m in GUEST_MODULES)
    env = (f"PYTHONPATH={q(str(PROJECT_ROOT))} PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/root "
           f"TOKENPACE_UML_GUEST=1")
    guest = " ".join(q(a) for a in guest_argv)
    return f"""#!/bin/sh
# init of a tokenpace UML guest (written by live/kernel/uml.py; removed with its folder)
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=755 tmpfs /run
mount -t devtmpfs devtmpfs /dev 2>/dev/null
{insmods}
cd {q(str(PROJECT_ROOT))}
date +%s.%N > {q(str(workdir / "guest_start"))}
env {env} {q(sys.executable)} -m live.kernel.uml {guest} > {q(str(workdir / "guest.log"))} 2>&1
echo $? > {q(str(workdir / "guest_rc"))}
sync
poweroff -f 2>/dev/null || halt -f 2>/dev/null || echo o > /proc/sysrq-trigger
sleep 5
"""


def _tail(path: Path, n_chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n_chars:]
    except OSError:
        return ""


def boot_uml(guest_argv: Sequence[str], *, timeout_s: float = DEFAULT_TIMEOUT_S, mem_mb: int = DEFAULT_MEM_MB
             ) -> Boot:
    """Boot UML, run ``python -m live.kernel.uml GUEST_ARGV`` inside it, return what it wrote to ``--out``.

    The guest's JSON comes back through a file in a fresh folder under /tmp (hostfs). UML runs in its
    own process group; whatever happens, that group is killed if still alive and the folder removed.
    """
    reason = uml_unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    uml, modules_dir = find_uml(), find_modules_dir()
    assert uml is not None and modules_dir is not None
    workdir = Path(tempfile.mkdtemp(prefix="tokenpace-uml-", dir="/tmp"))
    proc: subprocess.Popen[bytes] | None = None
    t0, t0_wall = time.monotonic(), time.time()
    timed_out = False
    try:
        init = workdir / "init.sh"
        init.write_text(_init_script(workdir, modules_dir, [*guest_argv, "--out", str(workdir / RESULT_NAME)]))
        init.chmod(0o755)
        env = dict(os.environ)
        env["TMPDIR"] = "/dev/shm" if os.access("/dev/shm", os.W_OK) else str(workdir)  # guest RAM file
        argv = [str(uml), f"mem={mem_mb}M", "rootfstype=hostfs", "rootflags=/", "rw", f"init={init}",
                f"umid=tokenpace-{os.getpid()}", f"uml_dir={workdir}", "con=null", "con0=null,fd:1", "quiet"]
        with open(workdir / "console.log", "wb") as console:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
        wall_s = time.monotonic() - t0
        result = None
        with contextlib.suppress(OSError, ValueError):
            result = json.loads((workdir / RESULT_NAME).read_text())
        rc = boot_s = None
        with contextlib.suppress(OSError, ValueError):
            rc = int((workdir / "guest_rc").read_text().strip())
        with contextlib.suppress(OSError, ValueError):
            boot_s = float((workdir / "guest_start").read_text().strip()) - t0_wall
        return Boot(result=result, returncode=rc, wall_s=wall_s, boot_s=boot_s, timed_out=timed_out,
                    console_tail=_tail(workdir / "console.log"), guest_log_tail=_tail(workdir / "guest.log"))
    finally:
        if proc is not None and proc.poll() is None:  # UML's helper processes share its group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- guest side: measuring
def _faults(*specs: dict[str, Any]) -> list[Any]:
    from pydantic import TypeAdapter

    from scenarios.schema import Fault

    return TypeAdapter(list[Fault]).validate_python(list(specs))


@contextlib.contextmanager
def _sock(ns: str, kind: int = socket.SOCK_DGRAM) -> Iterator[socket.socket]:
    """A socket living in network namespace ``ns`` (created there; usable from anywhere)."""
    from live.kernel.netns import in_netns

    with in_netns(ns):
        s = socket.socket(socket.AF_INET, kind)
    try:
        yield s
    finally:
        s.close()


class _Guest:
    """The measurements, run inside UML on a fresh veth pair; faults go on side a's egress."""

    def __init__(self, pair: Any, log: Callable[[str], None]) -> None:
        self.pair = pair
        self.log = log
        self.iface, self.ns = pair.if_a, pair.ns_a
        self._port = 20000

    def port(self) -> int:
        self._port += 1
        return self._port

    # ------------------------------------------------------------------ plumbing
    def pin_neighbours(self) -> None:
        """Permanent ARP entries both ways: an ARP request is a packet too, and one lost to a loss
        fault (or an outage) would hold datagrams in the neighbour queue, or drop them there."""
        for side, peer in (("a", "b"), ("b", "a")):
            words = self.pair.run(peer, ["ip", "-o", "link", "show", "dev", self.pair.iface(peer)]).stdout.split()
            mac = words[words.index("link/ether") + 1]
            self.pair.run(side, ["ip", "neigh", "replace", self.pair.addr(peer), "lladdr", mac, "dev",
                                 self.pair.iface(side), "nud", "permanent"])

    def player(self, *specs: dict[str, Any]) -> Any:
        from live.kernel.faults import FaultPlayer

        return FaultPlayer(self.iface, _faults(*specs), "netem", netns=self.ns, handle_signals=False, log=self.log)

    def qdiscs(self) -> str:
        return self.pair.run("a", ["tc", "qdisc", "show", "dev", self.iface]).stdout.strip()

    def netem_drops(self) -> int:
        """Packets our netem qdisc dropped so far (``tc -s``), 0 when it is not installed."""
        out = self.pair.run("a", ["tc", "-s", "qdisc", "show", "dev", self.iface]).stdout
        lines = out.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("qdisc netem 7a1e:"):
                stats = " ".join(lines[i + 1:i + 2])
                words = stats.replace(",", " ").replace("(", " ").replace(")", " ").split()
                return int(words[words.index("dropped") + 1])
        return 0

    @contextlib.contextmanager
    def udp(self) -> Iterator[tuple[socket.socket, socket.socket, tuple[str, int]]]:
        """(sender in a, receiver in b, b's address): a large receive buffer so b drops nothing."""
        with _sock(self.ns) as tx, _sock(self.pair.ns_b) as rx:
            rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
            rx.bind((self.pair.addr_b, self.port()))
            tx.bind((self.pair.addr_a, 0))
            yield tx, rx, rx.getsockname()

    @staticmethod
    def drain(rx: socket.socket, got: list[int], wait_s: float) -> None:
        """Read every datagram that arrives until none has come for ``wait_s``; record sequence numbers."""
        while True:
            r, _, _ = select.select([rx], [], [], wait_s)
            if not r:
                return
            while True:
                try:
                    data = rx.recv(65536, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                got.append(struct.unpack_from("!I", data)[0])

    def blast(self, n: int, *, burst: int = 100, quiet_s: float = 0.3) -> list[int]:
        """Send ``n`` numbered datagrams a -> b in bursts, draining b after each; the numbers received."""
        got: list[int] = []
        pad = b"\0" * (UDP_PAYLOAD_BYTES - 4)
        with self.udp() as (tx, rx, dst):
            for start in range(0, n, burst):
                for seq in range(start, min(n, start + burst)):
                    tx.sendto(struct.pack("!I", seq) + pad, dst)
                self.drain(rx, got, 0.0)
            self.drain(rx, got, quiet_s)
        return got

    # ------------------------------------------------------------------ link measurements
    def rtts_ms(self, n: int, idle_s: float = 0.0) -> tuple[list[float], list[float]]:
        """UDP echo a -> b -> a, one at a time, b echoing from the same thread (a's egress carries the
        fault; b's reply goes back unshaped). Before each echo the guest sleeps ``idle_s`` and records
        how late it woke: an echo held ``idle_s`` by netem wakes the idle guest the same way, so that
        lateness -- the host's scheduling of the UML process, ms on a busy host -- is measured in the
        same run instead of guessed. Returns (RTTs, wake-up latenesses) in ms."""
        out, late = [], []
        with self.udp() as (tx, rx, dst):
            tx.settimeout(5.0)
            rx.settimeout(5.0)
            for seq in range(n):
                if idle_s > 0:
                    t0 = time.perf_counter()
                    time.sleep(idle_s)
                    late.append((time.perf_counter() - t0 - idle_s) * 1000)
                t0 = time.perf_counter()
                tx.sendto(struct.pack("!I", seq), dst)
                data, src = rx.recvfrom(2048)
                rx.sendto(data, src)
                tx.recv(2048)
                out.append((time.perf_counter() - t0) * 1000)
        return out, late

    @staticmethod
    def read_stamped(rx: socket.socket, into: list[tuple[bytes, float]]) -> None:
        """Append (payload, kernel receive time, CLOCK_REALTIME s) of every datagram waiting on ``rx``."""
        while True:
            try:
                data, anc, _, _ = rx.recvmsg(65536, 256, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            for level, typ, raw in anc:
                if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", raw[:16])
                    into.append((data, sec + nsec * 1e-9))

    def one_way_ms(self, n: int, spacing_s: float = 0.002) -> list[float]:
        """One-way delays a -> b of ``n`` datagrams sent ``spacing_s`` apart: the send time rides in the
        payload (CLOCK_REALTIME), the receive time is the kernel's SO_TIMESTAMPNS stamp."""
        got: list[tuple[bytes, float]] = []
        with self.udp() as (tx, rx, dst):
            rx.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            t_next = time.monotonic()
            for _ in range(n):
                wait = t_next - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                tx.sendto(struct.pack("!d", time.time()), dst)
                self.read_stamped(rx, got)
                t_next += spacing_s
            deadline = time.monotonic() + 2.0
            while len(got) < n and time.monotonic() < deadline:
                select.select([rx], [], [], 0.1)
                self.read_stamped(rx, got)
        return [(t - struct.unpack("!d", data[:8])[0]) * 1000 for data, t in got]

    def tcp_goodput(self, run_s: float, warmup_s: float) -> dict[str, float]:
        """A bulk TCP transfer a -> b for ``run_s``; goodput (payload bits/s at b) after ``warmup_s``."""
        from live.kernel.netns import in_netns

        port = self.port()
        with _sock(self.ns, socket.SOCK_STREAM) as ls, _sock(self.pair.ns_b, socket.SOCK_STREAM) as cl:
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind((self.pair.addr_a, port))
            ls.listen(1)
            with in_netns(self.pair.ns_b):
                cl.connect((self.pair.addr_a, port))
            srv, _ = ls.accept()
            with srv:
                srv.setblocking(False)
                cl.setblocking(False)
                chunk = b"x" * 65536
                received = 0
                t0 = time.monotonic()
                mark_bytes, mark_t = None, None
                while True:
                    now = time.monotonic()
                    if now - t0 >= run_s:
                        break
                    if mark_bytes is None and now - t0 >= warmup_s:
                        mark_bytes, mark_t = received, now
                    r, w, _ = select.select([cl], [srv], [], 0.05)
                    if w:
                        with contextlib.suppress(BlockingIOError):
                            srv.send(chunk)
                    if r:
                        with contextlib.suppress(BlockingIOError):
                            while True:
                                data = cl.recv(1 << 20)
                                if not data:
                                    break
                                received += len(data)
                end_t = time.monotonic()
            assert mark_bytes is not None and mark_t is not None
            return {"goodput_mbps": (received - mark_bytes) * 8 / (end_t - mark_t) / 1e6,
                    "bytes": float(received), "window_s": end_t - mark_t}

    def burst_spread_ms(self, n: int) -> dict[str, float]:
        """Send ``n`` datagrams back to back; when (kernel receive stamps) the first and last arrive,
        in ms after the first send."""
        pad = b"\0" * (UDP_PAYLOAD_BYTES - 4)
        got: list[tuple[bytes, float]] = []
        with self.udp() as (tx, rx, dst):
            rx.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            t0 = time.time()
            for seq in range(n):
                tx.sendto(struct.pack("!I", seq) + pad, dst)
            deadline = time.monotonic() + 3.0
            while len(got) < n and time.monotonic() < deadline:
                select.select([rx], [], [], 0.1)
                self.read_stamped(rx, got)
        stamps = sorted(t for _, t in got)
        return {"received": float(len(got)), "send_ms": 0.0,
                "first_ms": (stamps[0] - t0) * 1000 if stamps else math.nan,
                "last_ms": (stamps[-1] - t0) * 1000 if stamps else math.nan}


def _bursts(got: Sequence[int], n: int) -> list[int]:
    """Lengths of the runs of consecutive missing sequence numbers in 0..n-1. Runs cut by either end
    of the stream are left out: their true length is unknown."""
    seen = bytearray(n)
    for s in got:
        seen[s] = 1
    runs: list[int] = []
    cur, started = 0, False
    for i in range(n):
        if seen[i]:
            if started and cur:
                runs.append(cur)
            started, cur = True, 0
        else:
            cur += 1
    return runs


def _spread(xs: Sequence[float]) -> dict[str, float]:
    """count, median and sigma = IQR / 1.349 (a normal's sigma, robust to rare outliers), in ms."""
    if len(xs) < 4:
        return {"n": len(xs), "median_ms": math.nan, "sigma_ms": math.nan}
    q1, q2, q3 = statistics.quantiles(xs, n=4)
    return {"n": len(xs), "median_ms": q2, "sigma_ms": (q3 - q1) / 1.349, "std_ms": statistics.pstdev(xs),
            "samples_ms": [round(x, 3) for x in xs]}


def guest_measure() -> dict[str, Any]:
    """Everything the check measures, inside the UML guest. Returns plain JSON figures."""
    from live.kernel.faults import QDISC_HANDLE, netem_available
    from live.kernel.netns import veth_pair

    t_start = time.monotonic()
    log_lines: list[str] = []
    out: dict[str, Any] = {"kernel": platform.release(), "netem_available": netem_available(), "log": log_lines}
    phases: dict[str, float] = {}

    def phase(name: str, t0: float) -> None:
        phases[name] = round(time.monotonic() - t0, 3)

    with veth_pair() as pair:
        g = _Guest(pair, log_lines.append)
        g.pin_neighbours()
        out["iface"] = pair.if_a
        out["qdisc_before"] = g.qdiscs()

        t0 = time.monotonic()
        base_rtt, _ = g.rtts_ms(DELAY_SAMPLES)
        base_ow = g.one_way_ms(200)
        base_tcp = g.tcp_goodput(1.5, 0.5)
        base_burst = g.burst_spread_ms(TRANSITION_BURST)
        out["baseline"] = {"rtt_ms_median": statistics.median(base_rtt), "rtt_ms_max": max(base_rtt),
                           "rtt_ms_min": min(base_rtt),
                           "one_way_ms_median": statistics.median(base_ow),
                           "one_way_ms_std": statistics.pstdev(base_ow),
                           "tcp_goodput_mbps": base_tcp["goodput_mbps"], "burst": base_burst}
        phase("baseline", t0)

        t0 = time.monotonic()
        with g.player({"kind": "delay", "at_s": 0, "duration_s": 600, "delay_ms": DELAY_MS}) as p:
            out["delay"] = {"shape": p.current().describe(), "qdisc": g.qdiscs()}
            rtts, late = g.rtts_ms(DELAY_SAMPLES, idle_s=DELAY_MS / 1000)
            ow0 = g.one_way_ms(JITTER_PACKETS)
        out["delay"].update(one_way=_spread(ow0), rtt_ms_median=statistics.median(rtts), rtt_ms_min=min(rtts),
                            rtt_ms_max=max(rtts), wake_late_ms_median=statistics.median(late),
                            wake_late_ms_max=max(late), qdisc_after=g.qdiscs())
        phase("delay", t0)

        t0 = time.monotonic()
        with g.player({"kind": "delay", "at_s": 0, "duration_s": 600, "delay_ms": DELAY_MS,
                       "jitter_ms": JITTER_MS}) as p:
            out["jitter"] = {"shape": p.current().describe(), "qdisc": g.qdiscs()}
            ow = g.one_way_ms(JITTER_PACKETS)
        out["jitter"].update(one_way=_spread(ow), qdisc_after=g.qdiscs())
        phase("jitter", t0)

        t0 = time.monotonic()
        with g.player({"kind": "loss", "at_s": 0, "duration_s": 600, "p": LOSS_P}) as p:
            out["loss"] = {"shape": p.current().describe(), "qdisc": g.qdiscs()}
            got = g.blast(LOSS_PACKETS)
            drops = g.netem_drops()
        out["loss"].update(sent=LOSS_PACKETS, received=len(got), distinct=len(set(got)), netem_dropped=drops,
                           qdisc_after=g.qdiscs())
        phase("loss", t0)

        t0 = time.monotonic()
        with g.player({"kind": "gilbert_elliott", "at_s": 0, "duration_s": 600, "p": GE_P, "r": GE_R}) as p:
            out["gilbert_elliott"] = {"shape": p.current().describe(), "qdisc": g.qdiscs()}
            got = g.blast(GE_PACKETS)
            drops = g.netem_drops()
        bursts = _bursts(got, GE_PACKETS)
        out["gilbert_elliott"].update(
            sent=GE_PACKETS, received=len(got), distinct=len(set(got)), netem_dropped=drops, bursts=len(bursts),
            mean_burst=statistics.fmean(bursts) if bursts else math.nan,
            max_burst=max(bursts, default=0), qdisc_after=g.qdiscs())
        phase("gilbert_elliott", t0)

        t0 = time.monotonic()
        with g.player({"kind": "rate", "at_s": 0, "duration_s": 600, "rate_mbps": RATE_MBPS}) as p:
            out["rate"] = {"shape": p.current().describe(), "qdisc": g.qdiscs()}
            out["rate"].update(g.tcp_goodput(RATE_RUN_S, RATE_WARMUP_S))
        out["rate"]["qdisc_after"] = g.qdiscs()
        phase("rate", t0)

        t0 = time.monotonic()
        with g.player({"kind": "outage", "at_s": 0, "duration_s": 600}) as p:
            out["outage"] = {"shape": p.current().describe(), "qdisc": g.qdiscs()}
            during = g.blast(OUTAGE_PACKETS)
            drops = g.netem_drops()
        after = g.blast(OUTAGE_PACKETS)
        out["outage"].update(sent=OUTAGE_PACKETS, received_during=len(during), netem_dropped=drops,
                             received_after=len(after), qdisc_after=g.qdiscs())
        phase("outage", t0)

        # one player, a timeline: a rate fault ends at 1 s while a delay fault goes on. netem keeps a
        # rate it is not told to drop, so this is where `tc qdisc change` can go wrong.
        t0 = time.monotonic()
        with g.player({"kind": "delay", "at_s": 0, "duration_s": 600, "delay_ms": TRANSITION_DELAY_MS},
                      {"kind": "rate", "at_s": 0, "duration_s": 1.0, "rate_mbps": TRANSITION_RATE_MBPS}) as p:
            first = {"shape": p.current().describe(), "qdisc": g.qdiscs()}
            while len(p.history) < 2 and time.monotonic() - t0 < 10:
                time.sleep(0.05)
            out["transition"] = {"before": first, "after": {"shape": p.current().describe(), "qdisc": g.qdiscs(),
                                                             "changes": len(p.history)}}
            out["transition"]["after"].update(g.burst_spread_ms(TRANSITION_BURST))
        out["transition"]["qdisc_after"] = g.qdiscs()
        phase("transition", t0)

        out["qdisc_final"] = g.qdiscs()
        out["ours_left"] = QDISC_HANDLE in out["qdisc_final"]
    out["phases_s"] = phases
    out["guest_s"] = round(time.monotonic() - t_start, 3)
    return out


# --------------------------------------------------------------------------- judging
@dataclass(frozen=True)
class Judgement:
    name: str
    ok: bool
    measured: str
    expected: str


def judge(r: dict[str, Any]) -> list[Judgement]:
    """Each effect against what the fault asked for, judged against the guest's own baseline."""
    out: list[Judgement] = []

    def add(name: str, ok: bool, measured: str, expected: str) -> None:
        out.append(Judgement(name, bool(ok), measured, expected))

    base = r["baseline"]
    add("netem available", r["netem_available"], str(r["netem_available"]), "True (sch_netem.ko loaded)")
    d = r["delay"]
    # expected: the no-fault RTT + the delay + how late the idle guest wakes (measured alongside)
    want = base["rtt_ms_median"] + DELAY_MS + d["wake_late_ms_median"]
    add("delay", abs(d["rtt_ms_median"] - want) <= 0.1 * DELAY_MS and d["rtt_ms_min"] >= DELAY_MS,
        f"RTT median {d['rtt_ms_median']:.2f} ms, min {d['rtt_ms_min']:.2f} (baseline {base['rtt_ms_median']:.2f}, "
        f"wake-up lateness {d['wake_late_ms_median']:.2f})",
        f"{want:.2f} ms +- {0.1 * DELAY_MS:g}, min >= {DELAY_MS:g}")
    j, d0 = r["jitter"]["one_way"], d["one_way"]
    # one-way delays of the same 2 ms-spaced stream, under the delay alone and with the jitter:
    # netem's normal jitter is symmetric (median unmoved) and adds its sigma in quadrature
    want = base["one_way_ms_median"] + DELAY_MS
    add("delay one-way", d0["n"] == JITTER_PACKETS and abs(d0["median_ms"] - want) <= 0.1 * DELAY_MS,
        f"median {d0['median_ms']:.2f} ms over {d0['n']}/{JITTER_PACKETS}", f"{want:.2f} ms +- {0.1 * DELAY_MS:g}")
    add("delay+jitter median", j["n"] == JITTER_PACKETS and abs(j["median_ms"] - d0["median_ms"]) <= 0.1 * DELAY_MS,
        f"median {j['median_ms']:.2f} ms over {j['n']}/{JITTER_PACKETS}",
        f"{d0['median_ms']:.2f} ms (the delay alone) +- {0.1 * DELAY_MS:g}")
    netem_sigma = math.sqrt(max(0.0, j["sigma_ms"] ** 2 - d0["sigma_ms"] ** 2))
    add("delay+jitter spread", abs(netem_sigma - JITTER_MS) <= JITTER_BAND * JITTER_MS,
        f"sigma {netem_sigma:.2f} ms (IQR-based {j['sigma_ms']:.2f}, without jitter {d0['sigma_ms']:.2f})",
        f"{JITTER_MS:g} ms +- {JITTER_BAND:.0%}")
    lo = r["loss"]
    rate = 1 - lo["received"] / lo["sent"]
    add("loss", abs(rate - LOSS_P) <= LOSS_BAND and lo["received"] + lo["netem_dropped"] == lo["sent"],
        f"{rate:.4f} lost ({lo['sent'] - lo['received']}/{lo['sent']}; netem dropped {lo['netem_dropped']})",
        f"{LOSS_P} +- {LOSS_BAND}; every loss netem's")
    ge = r["gilbert_elliott"]
    want = 1 / GE_R
    add("gilbert-elliott bursts",
        ge["bursts"] >= GE_MIN_BURSTS and abs(ge["mean_burst"] - want) <= GE_BURST_BAND * want,
        f"mean burst {ge['mean_burst']:.3f} over {ge['bursts']} bursts (max {ge['max_burst']})",
        f"1/r = {want:g} +- {GE_BURST_BAND:.0%}, >= {GE_MIN_BURSTS} bursts")
    ge_loss = 1 - ge["received"] / ge["sent"]
    mean_loss = GE_P / (GE_P + GE_R)
    # sigma of a Markov chain's loss fraction over N packets is larger than Bernoulli's by the burst
    # correlation (factor (1 + rho)/(1 - rho), rho = 1 - p - r = 0.65): sqrt(0.286*0.714*4.7/16000)
    # = 0.0078; a band of 0.05 is 6.4 sigma
    add("gilbert-elliott loss", abs(ge_loss - mean_loss) <= 0.05 and ge["received"] + ge["netem_dropped"] == ge["sent"],
        f"{ge_loss:.4f} lost", f"p/(p+r) = {mean_loss:.4f} +- 0.05")
    ra = r["rate"]
    want = RATE_MBPS * TCP_PAYLOAD_BYTES / TCP_WIRE_BYTES
    add("rate", abs(ra["goodput_mbps"] - want) <= RATE_TOLERANCE * want and base["tcp_goodput_mbps"] >= 2 * RATE_MBPS,
        f"TCP goodput {ra['goodput_mbps']:.3f} Mbit/s (baseline {base['tcp_goodput_mbps']:.1f})",
        f"{want:.3f} +- {RATE_TOLERANCE:.0%} (baseline >= {2 * RATE_MBPS:g})")
    o = r["outage"]
    add("outage", o["received_during"] == 0 and o["received_after"] == o["sent"],
        f"{o['received_during']}/{o['sent']} delivered during, {o['received_after']}/{o['sent']} after",
        "0 during, all after")
    t = r["transition"]["after"]
    # with the 2 Mbit/s rate still in place, 100 x 1242-byte frames (payload + UDP/IP/Ethernet
    # headers) would need 497 ms to drain; without it they arrive as fast as they were sent
    left_ms = t["last_ms"] - t["first_ms"]
    base_spread = base["burst"]["last_ms"] - base["burst"]["first_ms"]
    stuck_ms = TRANSITION_BURST * (UDP_PAYLOAD_BYTES + 42) * 8 / (TRANSITION_RATE_MBPS * 1e3)
    add("rate fault ends", t["received"] == TRANSITION_BURST and left_ms <= base_spread + 0.2 * stuck_ms
        and TRANSITION_DELAY_MS <= t["first_ms"] <= TRANSITION_DELAY_MS + 0.2 * stuck_ms,
        f"burst spread {left_ms:.1f} ms (baseline {base_spread:.1f}), first after {t['first_ms']:.1f} ms",
        f"spread <= {base_spread + 0.2 * stuck_ms:.0f} ms (rate gone; {stuck_ms:.0f} if kept), "
        f"first in [{TRANSITION_DELAY_MS:g}, {TRANSITION_DELAY_MS + 0.2 * stuck_ms:.0f}] ms (delay kept)")
    add("cleanup", not r["ours_left"], r["qdisc_final"] or "(none)", "no qdisc 7a1e: left")
    return out


def run_check(*, timeout_s: float = DEFAULT_TIMEOUT_S, mem_mb: int = DEFAULT_MEM_MB) -> tuple[Boot, list[Judgement]]:
    """Boot UML, measure inside, judge. Raises RuntimeError when UML cannot run or the guest failed."""
    b = boot_uml(["guest"], timeout_s=timeout_s, mem_mb=mem_mb)
    problem = b.failure()
    if problem is not None:
        raise RuntimeError(problem)
    assert b.result is not None
    return b, judge(b.result)


# --------------------------------------------------------------------------- CLI
def _main(argv: list[str]) -> int:
    from scenarios.cli_errors import BadInput

    ap = argparse.ArgumentParser(prog="python -m live.kernel.uml", description=(
        "Boot a user-mode-linux kernel with sch_netem and check that every fault kind, applied through "
        "tokenpace's netem backend, has the effect asked for. Needs root and `apt-get install "
        "user-mode-linux kmod`."))
    sub = ap.add_subparsers(dest="cmd")
    g = sub.add_parser("guest", help="(inside UML) measure and write the figures as JSON")
    g.add_argument("--out", required=True, type=Path)
    ap.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, help="kill UML after this long")
    ap.add_argument("--mem-mb", type=int, default=DEFAULT_MEM_MB, help="the guest's memory")
    ap.add_argument("--json", type=Path, help="also write the guest's figures to this file")
    args = ap.parse_args(argv)
    if args.cmd == "guest":
        if os.environ.get("TOKENPACE_UML_GUEST") != "1":
            raise BadInput("guest", "runs only inside the UML guest (use `python -m live.kernel.uml` on the host)")
        result = guest_measure()
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(args.out)
        return 0
    if not math.isfinite(args.timeout_s) or args.timeout_s <= 0:
        raise BadInput("--timeout-s", "must be a positive number of seconds")
    if args.mem_mb < 128:
        raise BadInput("--mem-mb", "must be at least 128")
    if args.json is not None and args.json.is_dir():
        raise BadInput("--json", f"{args.json} is a folder")
    if args.json is not None and not args.json.parent.is_dir():
        raise BadInput("--json", f"folder {args.json.parent} does not exist")
    reason = uml_unavailable_reason()
    if reason is not None:
        print(f"cannot run the UML netem check: {reason}", file=sys.stderr)
        return 1
    print("booting user-mode-linux (sch_netem inside) ...", flush=True)
    b, verdicts = run_check(timeout_s=args.timeout_s, mem_mb=args.mem_mb)
    assert b.result is not None
    if args.json is not None:
        args.json.write_text(json.dumps({**b.result, "wall_s": b.wall_s, "boot_s": b.boot_s}, indent=1))
    boot = "?" if b.boot_s is None else f"{b.boot_s:.1f}"
    print(f"UML kernel {b.result['kernel']}: booted in {boot} s; booted, measured and powered off in "
          f"{b.wall_s:.1f} s (guest measurements {b.result['guest_s']:.1f} s)")
    width = max(len(v.name) for v in verdicts)
    for v in verdicts:
        print(f"{'ok' if v.ok else 'FAIL':>4}  {v.name:<{width}}  {v.measured}   [expected {v.expected}]")
    failed = [v for v in verdicts if not v.ok]
    print("netem backend: every fault kind has its effect" if not failed else
          f"netem backend: {len(failed)} check(s) failed")
    return 0 if not failed else 1


def main(argv: Sequence[str] | None = None) -> int:
    from scenarios.cli_errors import run_cli

    return run_cli(_main, argv, "python -m live.kernel.uml")


if __name__ == "__main__":
    raise SystemExit(main())
