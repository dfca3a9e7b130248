"""Network namespaces joined by a veth pair: a private two-host network for live tests and benches.

``veth_pair()`` creates two namespaces, ``<name>-a`` and ``<name>-b``, each holding one end of a
veth pair addressed in a private /30 (``10.201.N.1`` and ``10.201.N.2``), brings both ends and both
loopbacks up, and removes everything on exit — also after an exception. Traffic between the two
never leaves the machine and never touches the host's own interfaces or routes.

Three ways to do something inside a namespace:

* ``pair.run("a", ["tc", "qdisc", "show"])`` — a command, via ``nsenter --net`` (the mount namespace
  is kept, so ``/sys/fs/bpf`` and ``/run/tokenpace`` stay visible — ``ip netns exec`` hides them);
* ``pair.popen("b", [...])`` — a long-running process (iperf3), killed by its process group later
  (and sent SIGTERM by the kernel if this process dies first);
* ``with in_netns(pair.ns_a): socket.socket(...)`` — the calling *thread* enters the namespace, so
  sockets it creates live there and keep working after it returns (Python 3.11 has no ``os.setns``:
  libc's ``setns`` through ctypes).

Everything here needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import itertools
import os
import shlex
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["NETNS_DIR", "VethPair", "die_with_parent", "in_netns", "netns_cmd", "run", "veth_pair"]

NETNS_DIR = "/run/netns"  # where `ip netns add` puts the namespace handles
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1  # prctl option: the signal this process gets when its parent dies
_counter = itertools.count()  # distinct /30s and names within one process (namespaces are cheap)

Side = Literal["a", "b"]


def netns_cmd(ns: str | None, argv: Sequence[str]) -> list[str]:
    """argv prefixed to run in network namespace ``ns`` (unchanged for None = the current one)."""
    if ns is None:
        return list(argv)
    return ["nsenter", f"--net={NETNS_DIR}/{ns}", "--", *argv]


def run(argv: Sequence[str], *, ns: str | None = None, check: bool = True, timeout_s: float = 20.0
        ) -> subprocess.CompletedProcess[str]:
    """Run a command (in ``ns``), capturing its output; raises with stderr in the message when ``check``."""
    cmd = netns_cmd(ns, argv)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`{shlex.join(cmd)}` failed (rc={proc.returncode}): {proc.stderr.strip()}")
    return proc


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get ``sig`` when its parent dies (``PR_SET_PDEATHSIG``).

    The setting survives ``execve`` (except of set-uid programs), so it reaches the real command
    through ``nsenter`` / ``ip netns exec``, which exec it; it is not inherited by the child's own
    children. It fires when the *thread* that forked the child exits, not only the process: fork
    long-lived children from the main thread. A parent that died before the ``prctl`` (the child
    then has a new parent already) is caught by comparing ``getppid`` with the forker's pid.
    libc is loaded here, before the fork: the child only makes one call."""
    prctl = _libc().prctl
    parent = os.getpid()

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, int(sig)) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """The calling thread runs in network namespace ``ns`` inside the block, then returns home."""
    libc = _libc()
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"{NETNS_DIR}/{ns}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:  # pragma: no cover - would leave the thread stranded
                err = ctypes.get_errno()
                raise OSError(err, f"setns(back home): {os.strerror(err)}")
    finally:
        os.close(target)
        os.close(home)


@dataclass(frozen=True)
class VethPair:
    """Two namespaces joined by one veth pair: side ``a`` (the server) and side ``b`` (the client)."""

    ns_a: str
    ns_b: str
    if_a: str
    if_b: str
    addr_a: str  # without prefix length
    addr_b: str
    prefix_len: int = 30

    def ns(self, side: Side) -> str:
        return self.ns_a if side == "a" else self.ns_b

    def iface(self, side: Side) -> str:
        return self.if_a if side == "a" else self.if_b

    def addr(self, side: Side) -> str:
        return self.addr_a if side == "a" else self.addr_b

    def run(self, side: Side, argv: Sequence[str], *, check: bool = True, timeout_s: float = 20.0
            ) -> subprocess.CompletedProcess[str]:
        return run(argv, ns=self.ns(side), check=check, timeout_s=timeout_s)

    def popen(self, side: Side, argv: Sequence[str], **kw: object) -> subprocess.Popen[str]:
        """A background process in namespace ``side``, in its own process group (see ``stop``). It gets
        SIGTERM when the calling thread's process dies (:func:`die_with_parent`): a SIGKILLed lab must
        not leave its server serving in a namespace until its ``--duration`` ends. Call it from the
        main thread: the kernel's "parent died" is the *thread* that forked it exiting."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("preexec_fn", die_with_parent())
        return subprocess.Popen(netns_cmd(self.ns(side), argv), text=True, start_new_session=True, **kw)  # type: ignore[call-overload,no-any-return]

    @staticmethod
    def stop(proc: subprocess.Popen[str], timeout_s: float = 5.0) -> None:
        """Terminate a ``popen`` process and its group; idempotent."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout_s)


def _remove_ns(name: str) -> None:
    if os.path.exists(f"{NETNS_DIR}/{name}"):
        run(["ip", "netns", "delete", name], check=False)


@contextlib.contextmanager
def veth_pair(name: str | None = None, *, mtu: int | None = None) -> Iterator[VethPair]:
    """Create ``<name>-a`` and ``<name>-b`` joined by veth ``<name>a``/``<name>b`` in a private /30.

    Deleting a namespace deletes its veth end (and the peer with it), so cleanup is two
    ``ip netns delete``; it runs whatever happened inside the block.
    """
    n = next(_counter)
    base = name or f"tp{os.getpid() % 100000}x{n}"
    if len(base) > 12:  # interface names are at most 15 bytes
        raise ValueError(f"veth_pair name {base!r} is longer than 12 characters")
    subnet = (os.getpid() + n) % 250 + 1
    pair = VethPair(ns_a=f"{base}-a", ns_b=f"{base}-b", if_a=f"{base}a", if_b=f"{base}b",
                    addr_a=f"10.201.{subnet}.1", addr_b=f"10.201.{subnet}.2")
    try:
        for ns in (pair.ns_a, pair.ns_b):
            run(["ip", "netns", "add", ns])
        # create the pair directly in the two namespaces: the host namespace never sees it
        run(["ip", "link", "add", pair.if_a, "netns", pair.ns_a, "type", "veth", "peer", "name", pair.if_b,
             "netns", pair.ns_b])
        for side in ("a", "b"):
            s: Side = side  # type: ignore[assignment]
            pair.run(s, ["ip", "link", "set", "lo", "up"])
            pair.run(s, ["ip", "addr", "add", f"{pair.addr(s)}/{pair.prefix_len}", "dev", pair.iface(s)])
            if mtu is not None:
                pair.run(s, ["ip", "link", "set", pair.iface(s), "mtu", str(mtu)])
            pair.run(s, ["ip", "link", "set", pair.iface(s), "up"])
        yield pair
    finally:
        for ns in (pair.ns_a, pair.ns_b):
            _remove_ns(ns)
