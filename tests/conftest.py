"""Shared test plumbing: the gate for tests that need root and the kernel (``@pytest.mark.live``).

A live test is skipped with the reason when this machine cannot run it (not root, bcc missing,
no tracefs, no tc) — unless ``TOKENPACE_REQUIRE_LIVE=1`` (CI on a machine set up by
``scripts/setup_live.sh``), where the same reason fails the test instead, so a broken set-up
cannot pass as green. The ``live`` fixture applies the same gate to tests that ask for it by name, and
:func:`live_import` to the live extra's packages (``openai``, ``streamlit``, ...): use it instead of
``pytest.importorskip``, which would skip a whole file even under ``TOKENPACE_REQUIRE_LIVE=1``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any, NoReturn

import pytest
from hypothesis import settings

REQUIRE_ENV = "TOKENPACE_REQUIRE_LIVE"

# Property tests draw the same examples on every run of the suite (derandomize): a CI run judges the
# code, not the luck of a seed, so a failure is reproducible and a pass is not a coin flip. To hunt
# for new failures, explore with fresh random examples: TOKENPACE_FUZZ=explore (as many runs as you
# like); a failure found there becomes a fix (and an explicit example) before it lands.
FUZZ_ENV = "TOKENPACE_FUZZ"
settings.register_profile("suite", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile("explore" if os.environ.get(FUZZ_ENV) == "explore" else "suite")

# Tests send Ctrl-C (SIGINT) to the programs they start and check what those do with it. A suite started as
# a background job of a non-interactive shell (`bash .ci/run &`, a CI runner's nohup) inherits SIGINT
# *ignored*, and an ignored signal stays ignored across exec: every child would then ignore Ctrl-C (rightly:
# that is nohup's meaning) and run to the end. Seen: test_kill_resume's Ctrl-C run exited 0, its live
# recording timed out. The suite's own process takes Python's default handler back, so its children start
# with SIGINT's default disposition, as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@functools.cache
def live_unavailable_reason() -> str | None:
    """Why live tests cannot run here (None = they can)."""
    if os.geteuid() != 0:
        return "live tests need root (eBPF, tc, network namespaces)"
    for tool in ("ip", "tc", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found (run scripts/setup_live.sh)"
    try:
        from live.kernel.telemetry import import_bcc, tracefs_dir, tracepoint_has_field

        import_bcc()
    except ImportError as exc:
        return str(exc)
    if tracefs_dir() is None:
        return "tracefs is not mounted (run scripts/setup_live.sh)"
    for tp in ("tcp_probe", "tcp_retransmit_skb"):
        if not tracepoint_has_field("tcp", tp, "sport"):
            return f"tracepoint tcp:{tp} missing on this kernel"
    return None


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason`` -- or fail under ``TOKENPACE_REQUIRE_LIVE=1``, where nothing may skip.

    Works in a test, a fixture, or at a test module's top level (there the whole file is skipped, or
    its collection fails with the reason, which fails the run)."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_live() -> None:
    reason = live_unavailable_reason()
    if reason is not None:
        unavailable(reason)


def live_import(name: str) -> ModuleType:
    """``importlib.import_module(name)`` for a dependency of the live extra; when it cannot be imported,
    :func:`unavailable` (skip, or fail under ``TOKENPACE_REQUIRE_LIVE=1``). ``pytest.importorskip`` would
    skip even where CI has said that nothing may."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        unavailable(f"{name} cannot be imported ({exc}); pip install -e '.[live]'")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("live") is not None:
        require_live()


@pytest.fixture
def live() -> None:
    """Skip (or, under TOKENPACE_REQUIRE_LIVE=1, fail) unless live mode can run here."""
    require_live()


@pytest.fixture
def veth(live: None) -> Iterator[object]:
    """A fresh pair of network namespaces joined by veth (``live.kernel.netns.VethPair``), removed afterwards."""
    from live.kernel.netns import veth_pair

    with veth_pair() as pair:
        yield pair


class BulkFlow:
    """A TCP sender in namespace a (``port`` is its local port) and a reader in namespace b.

    The sender writes as fast as the socket takes data (``rate_bps`` paces it instead); the reader
    drains everything. ``cookie`` is the sender socket's SO_COOKIE, the key telemetry reports it by.
    """

    def __init__(self, pair: Any, port: int, *, cc: str | None = "cubic", rate_bps: float | None = None,
                 chunk_bytes: int = 64 * 1024) -> None:
        self.pair, self.port, self.cc, self.rate_bps, self.chunk_bytes = pair, port, cc, rate_bps, chunk_bytes
        self.sent_bytes = 0
        self.received_bytes = 0
        self.cookie = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.conn: socket.socket | None = None
        self._client: socket.socket | None = None
        self._lsock: socket.socket | None = None

    def start(self) -> BulkFlow:
        from live.kernel.netns import in_netns
        from live.kernel.source import socket_cookie

        pair = self.pair
        with in_netns(pair.ns_a):
            ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind((pair.addr_a, self.port))
            ls.listen(4)
            ls.settimeout(5.0)
        self._lsock = ls
        connected = threading.Event()

        def reader() -> None:
            with in_netns(pair.ns_b):
                c = socket.create_connection((pair.addr_a, self.port), timeout=5.0)
            self._client = c
            connected.set()
            c.settimeout(0.2)
            while not self._stop.is_set():
                try:
                    data = c.recv(1 << 20)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                self.received_bytes += len(data)

        t = threading.Thread(target=reader, daemon=True, name="bulk-reader")
        t.start()
        self._threads.append(t)
        conn, _ = ls.accept()
        connected.wait(5.0)
        if self.cc:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, self.cc.encode())
        conn.settimeout(0.2)
        self.conn = conn
        self.cookie = socket_cookie(conn)

        def sender() -> None:
            buf = b"x" * self.chunk_bytes
            t0 = time.monotonic()
            while not self._stop.is_set():
                if self.rate_bps is not None:
                    ahead_s = self.sent_bytes * 8 / self.rate_bps - (time.monotonic() - t0)
                    if ahead_s > 0:
                        self._stop.wait(min(ahead_s, 0.05))
                        continue
                try:
                    self.sent_bytes += conn.send(buf)
                except TimeoutError:
                    continue
                except OSError:
                    break

        s = threading.Thread(target=sender, daemon=True, name="bulk-sender")
        s.start()
        self._threads.append(s)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(3.0)
        for sock in (self.conn, self._client, self._lsock):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    def __enter__(self) -> BulkFlow:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def bulk_flow(live: None) -> type[BulkFlow]:
    """The :class:`BulkFlow` class: ``with bulk_flow(veth, port) as flow: ...``."""
    return BulkFlow
