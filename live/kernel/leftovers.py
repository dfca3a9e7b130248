"""What a killed lab, bench or test leaves behind, found by name and removed (``python -m live cleanup``).

Every network namespace tokenpace makes carries its creator's pid in its name:
``tp<pid>x<n>-a``/``-b`` (:func:`live.kernel.netns.veth_pair`) and ``tt<pid>x<n>-a``/``-b``
(:func:`live.lab.tunlink.tun_pair`, and ``python -m live.lab.tunlink`` without ``--name``), where ``<pid>`` is
the creator's pid modulo 100000. A namespace of ours is *stale* when no running process has such a pid:
its creator died without its ``finally`` (SIGKILL, OOM). A namespace whose creator may still be alive
is never touched — another run on this machine may be using it.

Our processes (``python -m live...``) still running alone in a network namespace that has lost its
name are stopped too: a killed lab's server and load client, whose namespaces the link process deleted
when it saw its parent go, hold those namespaces alive (and the server its eBPF probes) until their
own timers end.

Removing a stale namespace: the processes inside it (a lab's server and load client, cross traffic,
iperf3) are stopped, SIGTERM first, then SIGKILL; so is the user-space link process of a TUN pair
(``python -m live.lab.tunlink ... --name <base>``, in the root namespace, holding both TUN devices: they
vanish with it); then ``ip netns delete``. Qdiscs, filters and nft rules inside the namespace go with
it; so does the fault player's state file for it (``/run/tokenpace/faults-<netns>-<iface>.json``, once
its namespace is gone and its player dead). What :mod:`live.kernel.faults` put on an interface of the root
namespace is the other half of cleanup (``--iface``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from live.kernel.faults import STATE_DIR
from live.kernel.netns import NETNS_DIR

__all__ = ["OUR_NETNS", "StaleNetns", "orphans", "remove_stale", "stale_namespaces"]

OUR_NETNS = re.compile(r"^(?P<base>t[pt](?P<pid>\d{1,5})x\d+)-[ab]$")
PID_MODULUS = 100_000  # the names carry pid % 100000 (interface names are at most 15 bytes)
TERM_WAIT_S = 5.0


@dataclass(frozen=True)
class StaleNetns:
    name: str
    base: str  # <prefix><pid>x<n>: the pair's common part, also its devices' and link process's --name
    creator_pid_mod: int
    inode: int  # the namespace itself: its processes are found by it even if the name goes meanwhile


def _running_pids() -> set[int]:
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}


def stale_namespaces(netns_dir: str = NETNS_DIR) -> list[StaleNetns]:
    """Our namespaces (by name) whose creator is certainly gone: no running pid matches the name's."""
    try:
        names = sorted(os.listdir(netns_dir))
    except FileNotFoundError:
        return []
    alive_mods = {pid % PID_MODULUS for pid in _running_pids()}
    out = []
    for name in names:
        m = OUR_NETNS.match(name)
        if m is not None and int(m.group("pid")) not in alive_mods:
            ino = _netns_inode(f"{netns_dir}/{name}")
            if ino is not None:  # else deleted just now
                out.append(StaleNetns(name, m.group("base"), int(m.group("pid")), ino))
    return out


def _netns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _pids_in(ino: int) -> list[int]:
    """Processes (any of their threads) in the network namespace whose inode is ``ino``."""
    pids = []
    for pid in _running_pids():
        if pid == os.getpid():
            continue
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                if _netns_inode(f"/proc/{pid}/task/{tid}/ns/net") == ino:
                    pids.append(pid)
                    break
    return pids


def _link_processes(bases: Iterable[str]) -> list[int]:
    """``python -m live.lab.tunlink ... --name BASE`` processes of the given bases (they hold the TUN fds)."""
    wanted = set(bases)
    pids = []
    for pid in _running_pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv]
        if "live.lab.tunlink" not in words:
            continue
        for i, w in enumerate(words[:-1]):
            if w == "--name" and words[i + 1] in wanted:
                pids.append(pid)
    return pids


def _stop_all(pids: list[int], log: Callable[[str], None]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                alive.append(pid)
        if not alive:
            return
        if sig == signal.SIGTERM:
            log(f"[cleanup] stopping {len(alive)} process(es) of a killed run: {', '.join(map(str, alive))}")
        deadline = time.monotonic() + TERM_WAIT_S
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if Path(f"/proc/{p}").exists() and not _is_zombie(p)]
            if alive:
                time.sleep(0.05)
        pids = alive


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _our_module(pid: int) -> str | None:
    """``live...`` when ``pid`` runs ``python -m live...`` (the server, lab children, link, cross traffic)."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    for i, w in enumerate(words[:-1]):
        if w == b"-m":
            mod = words[i + 1].decode(errors="replace")
            return mod if mod == "live" or mod.startswith("live.") else None
    return None


def orphans(netns_dir: str = NETNS_DIR) -> list[int]:
    """Our processes (``python -m live...``) left alone in a network namespace that has no name.

    A lab's server and load client run in its named namespaces and are stopped before the names go;
    one still running in a namespace whose name was deleted (by the link process, which cleans up
    after itself when its parent dies) outlived a killed lab. A namespace that has a name, or that
    any process other than ours uses (the root namespace: shells, kernel threads), is never touched,
    so a server started by hand or by a bench is safe wherever it runs."""
    named = set()
    with contextlib.suppress(FileNotFoundError):
        named = {ino for n in os.listdir(netns_dir) if (ino := _netns_inode(f"{netns_dir}/{n}")) is not None}
    ours: dict[int, list[int]] = {}
    others: set[int] = set()
    me = os.getpid()
    for pid in _running_pids():
        if pid == me:
            continue
        if _our_module(pid) is not None:
            ino = _netns_inode(f"/proc/{pid}/ns/net")
            if ino is not None and not _is_zombie(pid):
                ours.setdefault(ino, []).append(pid)
            continue
        with contextlib.suppress(OSError):  # every thread's: a thread may sit in another namespace (setns)
            for tid in os.listdir(f"/proc/{pid}/task"):
                ino = _netns_inode(f"/proc/{pid}/task/{tid}/ns/net")
                if ino is not None:
                    others.add(ino)
    return sorted(pid for ino, pids in ours.items() if ino not in named and ino not in others for pid in pids)


def remove_stale(*, log: Callable[[str], None] = print, netns_dir: str = NETNS_DIR) -> list[str]:
    """Remove every stale namespace of ours and stop our orphaned processes (module doc); returns
    what was removed."""
    stale = stale_namespaces(netns_dir)
    pids: set[int] = set(orphans(netns_dir))
    for ns in stale:
        pids.update(_pids_in(ns.inode))
    pids.update(_link_processes({ns.base for ns in stale}))
    _stop_all(sorted(pids), log)
    removed = [f"process {pid}" for pid in sorted(pids)]
    for ns in stale:
        proc = subprocess.run(["ip", "netns", "delete", ns.name], capture_output=True, text=True, timeout=20,
                              check=False)
        if proc.returncode == 0 or not os.path.exists(f"{netns_dir}/{ns.name}"):
            removed.append(f"netns {ns.name}")
            log(f"[cleanup] removed network namespace {ns.name} (its creator, pid {ns.creator_pid_mod}, is gone)")
        else:
            log(f"[cleanup] could not remove network namespace {ns.name}: {proc.stderr.strip()}")
    for f in _stale_state_files(netns_dir):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
            removed.append(f"state file {f.name}")
            log(f"[cleanup] removed {f} (its namespace and its player are gone)")
    return removed


def _stale_state_files(netns_dir: str = NETNS_DIR) -> list[Path]:
    """Fault-player state files of a namespace of ours that no longer exists, whose player is dead.
    (A file of an interface in the root namespace is left to ``cleanup --iface``, which reads it.)"""
    out = []
    running = _running_pids()
    for f in sorted(STATE_DIR.glob("faults-*.json")):
        try:
            state = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        ns = state.get("netns") if isinstance(state, dict) else None
        if (isinstance(ns, str) and OUR_NETNS.match(ns) and not os.path.exists(f"{netns_dir}/{ns}")
                and state.get("pid") not in running):
            out.append(f)
    return out
