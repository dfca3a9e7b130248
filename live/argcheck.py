"""Checks of ``python -m live`` arguments, each problem named by its flag, before anything starts.

Every subcommand validates its whole command line first (collecting *every* problem, so a user
fixes them in one go) and only then starts servers, qdiscs or namespaces. The checks here only
look: a port is tried with a bind that is closed at once, an interface is looked up by name,
a folder's writability is read from its nearest existing ancestor. Nothing is created.

Problems are ``(where, message)`` pairs, ``where`` a flag (``--port``) or a file; they become
:class:`scenarios.cli_errors.BadInput` lines ``error: --port: 8000 is in use``.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import math
import os
import shutil
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from scenarios.cli_errors import BadInput

__all__ = ["Problems", "environment_problems"]


class Problems:
    """Problems found so far; ``raise_if_any()`` raises them all as one BadInput."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, where: str, message: str) -> None:
        self.items.append((where, message))

    def extend(self, items: Iterable[tuple[str, str]]) -> None:
        self.items.extend(items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise BadInput.many(self.items)

    # ------------------------------------------------------------------ numbers
    def port(self, flag: str, port: int | None) -> bool:
        if port is not None and not 1 <= port <= 65535:
            self.add(flag, f"{port} is not a TCP port (1-65535)")
            return False
        return True

    def positive_s(self, flag: str, value: float | None) -> None:
        """Seconds: finite and > 0 (argparse's float accepts nan and inf)."""
        if value is not None and not (math.isfinite(value) and value > 0):
            self.add(flag, f"must be a positive number of seconds, got {value!r}")

    def at_least(self, flag: str, value: int | None, low: int) -> None:
        if value is not None and value < low:
            self.add(flag, f"must be at least {low}, got {value}")

    # ------------------------------------------------------------------ the network
    def listen(self, host_flag: str, host: str, port_flag: str, port: int) -> None:
        """Whether ``host:port`` could be listened on now: a bind (SO_REUSEADDR, as the servers use)
        closed at once, never listening. Only numeric addresses and ``localhost`` are resolved here (no DNS lookups)."""
        addr = _numeric_or_local(host)
        if addr is None:
            self.add(host_flag, f"{host!r} is not an IP address of this machine (or localhost)")
            return
        try:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((addr, port))  # with SO_REUSEADDR, Linux refuses it only if a socket listens there
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                self.add(port_flag, f"{port} is in use" + (f" on {host}" if host not in ("", "0.0.0.0") else ""))
            elif exc.errno in (errno.EACCES, errno.EPERM):
                self.add(port_flag, f"{port}: permission denied (ports below 1024 need root)")
            elif exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                self.add(host_flag, f"{host} is not an address of this machine")
            else:
                self.add(host_flag, f"cannot listen on {host}:{port}: {exc.strerror or exc}")

    def local_address(self, flag: str, addr: str) -> None:
        """``addr`` is an IP address assigned here (a client may bind its connections to it)."""
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            self.add(flag, f"{addr!r} is not an IP address")
            return
        try:
            with socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((str(ip), 0))
        except OSError:
            self.add(flag, f"{addr} is not an address of this machine")

    def iface(self, flag: str, name: str) -> bool:
        if not _iface_exists(name):
            self.add(flag, f"no such interface {name!r}" + _ifaces_hint())
            return False
        return True

    def http_url(self, flag: str, url: str) -> bool:
        try:
            parts = urlsplit(url)
            port = parts.port  # ValueError when out of range or not a number
        except ValueError as exc:
            self.add(flag, f"{url!r} is not a URL ({exc})")
            return False
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.add(flag, f"{url!r}: expected http://HOST[:PORT][/PATH] (or https://)")
            return False
        if port == 0:
            self.add(flag, f"{url!r}: port 0 is not a TCP port")
            return False
        return True

    # ------------------------------------------------------------------ files
    def output_dir(self, flag: str, path: Path, *, empty: bool = False) -> None:
        """A folder we will write into: not a file, creatable and writable (and empty, if asked)."""
        try:
            if path.exists() and not path.is_dir():
                self.add(flag, f"{path} is a file, not a folder")
                return
            if empty and path.is_dir() and any(path.iterdir()):
                self.add(flag, f"{path} exists and is not empty (give a new or empty folder)")
                return
            problem = _unwritable(path)
        except (OSError, ValueError) as exc:
            self.add(flag, f"{path}: {getattr(exc, 'strerror', None) or exc}")
            return
        if problem:
            self.add(flag, f"{path}: {problem}")

    def input_dir(self, flag: str, path: Path) -> None:
        try:
            if not path.exists():
                self.add(flag, f"{path}: no such directory")
            elif not path.is_dir():
                self.add(flag, f"{path}: not a directory")
        except (OSError, ValueError) as exc:
            self.add(flag, f"{path}: {exc}")

    def scenario(self, flag: str, name: str) -> Any | None:
        """The loaded scenario, or None with every problem of the file added."""
        from scenarios import load_scenario

        try:
            return load_scenario(name)
        except BadInput as exc:  # ScenarioError (a BadInput): every problem, with file and key
            self.extend(exc.problems)
        except UnicodeDecodeError as exc:
            self.add(name, f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})")
        except (OSError, ValueError, RecursionError) as exc:
            self.add(name or flag, f"cannot read the scenario: {exc}")
        return None

    # ------------------------------------------------------------------ controllers
    def controller(self, flag: str, name: str) -> bool:
        import controllers

        live = ", ".join(n for n, info in sorted(controllers.REGISTRY.items()) if not info.sim_only)
        try:
            info = controllers.get(name)
        except controllers.UnknownController:
            self.add(flag, f"unknown controller {name!r}; known: {live}")
            return False
        if info.sim_only:
            self.add(flag, f"{name!r} needs knowledge only the simulator has (sim only); live ones: {live}")
            return False
        return True


    # ------------------------------------------------------------------ schedulers
    def scheduler(self, flag: str, name: str) -> bool:
        """``name`` is a scheduler of the registry (sim/model/schedulers/)."""
        from sim.model import schedulers

        if name not in schedulers.REGISTRY:
            self.add(flag, f"unknown scheduler {name!r}; known: {', '.join(sorted(schedulers.REGISTRY))}")
            return False
        return True

    def scheduler_params(self, flag: str, name: str | None, items: Iterable[str],
                         base: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """``KEY=VALUE`` items over ``base`` (the scenario's parameters of that scheduler) as the
        parameters of scheduler ``name`` (None: unknown, already said), each validated by the scheduler
        like a controller's; None when any is wrong. A VALUE is read as JSON (``0.9``, ``true``,
        ``null``, ``[1, 2]``), else taken as a string."""
        from sim.model import schedulers

        params = dict(base or {})
        ok = True
        given: list[str] = []
        for item in items:
            key, sep, text = item.partition("=")
            key = key.strip()
            if not sep or not key:
                self.add(flag, f"{item!r}: expected KEY=VALUE")
                ok = False
                continue
            if key in given:
                self.add(flag, f"{item!r}: {key} given twice")
                ok = False
            given.append(key)
            try:
                value = json.loads(text)
            except ValueError:
                value = text
            if _non_finite(value):  # pydantic would take nan, inf (and the strings "nan", "inf") as floats
                self.add(flag, f"{item!r}: must be a finite number")
                ok = False
            params[key] = value
        if not ok or name is None:
            return None
        problems = schedulers.validate_params(name, params)
        for key, msg in problems:
            where = f"{key}={params[key]!r}" if key in params else key
            self.add(flag, f"{where}: {msg} (scheduler {name})")
        return None if problems else params


    # ------------------------------------------------------------------ the lab's entries
    def entry(self, where: str, entry: str) -> bool:
        """An entry ``CONTROLLER`` or ``CONTROLLER@SCHEDULER`` (``python -m live lab``'s ``--controllers``
        or the scenario's ``controllers:``): well formed, a known controller and scheduler, each unknown
        name with the closest known one (:func:`scenarios.loader.entry_problems`, as ``python -m sim``)."""
        import controllers
        from scenarios.loader import entry_problems
        from sim.model import schedulers

        wrong = entry_problems(entry, list(controllers.REGISTRY), list(schedulers.REGISTRY))
        for msg in wrong:
            self.add(where, msg)
        return not wrong

    def scheduler_names(self, flag: str, text: str | None) -> list[str] | None:
        """``a,b``: the schedulers named (None: the flag is absent, or a problem was added), each unknown
        one with the closest known name."""
        from scenarios.loader import did_you_mean
        from sim.model import schedulers

        if text is None:
            return None
        names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
        known = sorted(schedulers.REGISTRY)
        if not names:
            self.add(flag, f"no scheduler named (got {text!r}); known: {', '.join(known)}")
            return None
        unknown = [n for n in names if n not in schedulers.REGISTRY]
        for n in unknown:
            self.add(flag, f"unknown scheduler {n!r}{did_you_mean(n, known)}; known: {', '.join(known)}")
        return None if unknown else names


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        try:
            return not math.isfinite(float(value))
        except ValueError:
            return False
    return False


def _numeric_or_local(host: str) -> str | None:
    if host in ("", "localhost"):
        return "0.0.0.0" if host == "" else "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def _iface_exists(name: str) -> bool:
    if not name or len(name.encode("utf-8", "replace")) > 15 or "/" in name or "\x00" in name or name in (".", ".."):
        return False
    try:
        socket.if_nametoindex(name)
    except (OSError, ValueError, UnicodeError):
        return False
    return True


def _ifaces_hint() -> str:
    try:
        names = sorted(name for _, name in socket.if_nameindex())
    except OSError:
        return ""
    return f" (here: {', '.join(names[:12])}{', ...' if len(names) > 12 else ''})" if names else ""


def _unwritable(path: Path) -> str | None:
    """Why ``path`` (a folder, existing or to be made) cannot be written, or None."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, so no folder can be made under it"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    try:
        if os.statvfs(probe).f_flag & os.ST_RDONLY:
            return f"{probe} is on a read-only file system"
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------- the machine
def environment_problems(*, root: bool = False, telemetry: bool = False, tools: Iterable[str] = (),
                         tun: bool = False, telemetry_hint: str = "") -> list[tuple[str, str]]:
    """What this machine lacks for live mode, each with its fix (what ``python -m live doctor`` checks)."""
    from live.kernel import doctor

    found: list[tuple[str, str]] = []
    if root or telemetry:
        priv = doctor.check_privileges()
        if priv.status == "FAIL":
            found.append(("", f"needs root privileges ({priv.detail}): run as root or with sudo"))
    if telemetry:
        for check in (doctor.check_tracefs(), doctor.check_bcc()):
            if check.status == "FAIL":
                what = "bcc is not importable" if check.name == "bcc" else f"{check.name}: {check.detail}"
                found.append(("", f"{what}: run `python -m live doctor` (fix: {check.fix}){telemetry_hint}"))
    for tool in tools:
        if shutil.which(tool) is None:
            pkg = {"nft": "nftables", "nsenter": "util-linux"}.get(tool, "iproute2")
            found.append(("", f"`{tool}` not found: sudo apt-get install {pkg} (see `python -m live doctor`)"))
    if tun and not Path("/dev/net/tun").exists():
        found.append(("", "/dev/net/tun is missing (the lab's user-space link needs TUN): sudo modprobe tun"))
    return found
