"""Soak test of the live server: does it let go of what its clients leave behind?

Starts the real server (``python -m live``, eBPF telemetry on, a paced controller) on loopback and
keeps streams arriving (Poisson) and leaving for ``--minutes``; every third stream is cut abruptly
at a random token while the server is still generating (the socket aborted with the rest unread;
some before the first token), the others are read to the end. Measured:

* the server's RSS after the warm-up and at the end, and the growth in %;
* its open file descriptors (``/proc/PID/fd``) at the same two moments;
* zombie streams: streams the engine still decoded in a step planned after their client was seen
  gone (must be 0), and tokens made after a departure (at most the one step in flight each);
* the most streams ever seen held with their connection closed (``tokenpace_orphaned_streams``).

Baselines are taken quiescent, never after a guessed sleep: the load stops, every client ends, and
the sampler waits until the server's gauges say no stream is active or orphaned, the engine holds
no sequence and the only HTTP connection open is the sampler's own keep-alive one. That state is
the same at both ends, so RSS and fd counts compare like for like.

Prints a table and, last, one JSON line (what ``tests/test_live_soak.py`` reads).

    sudo python3 bench/soak.py [--minutes 20] [--rate 2] [--controller buffer] [--scheduler fcfs] [--warmup 20]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
URL_LINE = re.compile(r"tokenpace live: .* on (http://\S+)")
QUIESCE_TIMEOUT_S = 60.0
CUT_MARGIN_TOKENS = 10  # a cut stream has at least this many tokens still to come
START_TIMEOUT_S = 120.0  # the probes compile at start (a few seconds; longer on a loaded machine)


# --------------------------------------------------------------------------- the server process
class ServerProcess:
    """``python -m live`` as a child; its stderr kept (the last lines, and a count of tracebacks)."""

    def __init__(self, argv: list[str]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen([sys.executable, "-m", "live", *argv], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.pid = self.proc.pid
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self.tracebacks = 0
        self.url: str | None = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True, name="soak-server-stderr")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.tail.append(line.rstrip())
            if line.startswith("Traceback"):
                self.tracebacks += 1
            m = URL_LINE.search(line)
            if m and self.url is None:
                self.url = m.group(1)
                self._ready.set()
        self._ready.set()

    def wait_url(self, timeout_s: float) -> str:
        self._ready.wait(timeout_s)
        if self.url is None:
            self.stop()
            raise RuntimeError("the server did not start:\n" + "\n".join(self.tail))
        return self.url

    def stop(self, timeout_s: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)
        self._reader.join(5.0)
        return self.proc.returncode


def free_port(rng: random.Random) -> int:
    """A port free on 127.0.0.1 now, below Linux's ephemeral range (so no client socket takes it
    between this check and the server's bind)."""
    low, _high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for _ in range(200):
        port = rng.randrange(10_000, max(10_001, low))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {sample name (with labels as name{k=v}): value}."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else "")
            out[key] = s.value
    return out


# --------------------------------------------------------------------------- the load
@dataclass
class LoadStats:
    started: int = 0
    completed: int = 0
    cut: int = 0
    cut_before_first_token: int = 0
    failed: int = 0
    tokens_read: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)


async def one_stream(session: aiohttp.ClientSession, url: str, k: int, rng: random.Random, stats: LoadStats) -> None:
    """One request. Every third is cut when its ``cut_at``-th token arrives (0 = as soon as the response
    starts): the connection is aborted with the rest unread, while the server is still generating (at
    least ``CUT_MARGIN_TOKENS`` to go, 10 decode steps: 200 ms at the default step). The
    others are read to ``[DONE]``. Tokens are taken as they arrive: the reader's pace is the hint the
    server paces by (``reading_tps``), it is not acted out here."""
    output_tokens = rng.randint(30, 150)
    reading_tps = rng.uniform(8.0, 25.0)
    cut_at = rng.randint(0, output_tokens - CUT_MARGIN_TOKENS) if k % 3 == 0 else None
    body = {"model": "soak", "stream": True, "max_tokens": output_tokens,
            "messages": [{"role": "user", "content": "soak " * rng.randint(5, 200)}],
            "tokenpace": {"stream_id": f"soak{k:06d}", "reading_tps": reading_tps}}
    stats.started += 1
    got = 0
    try:
        async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
            if resp.status != 200:
                stats.failed += 1
                stats.errors[f"http {resp.status}"] += 1
                return
            assert resp.connection is not None
            transport = resp.connection.transport
            assert transport is not None
            if cut_at == 0:
                transport.abort()
                stats.cut += 1
                stats.cut_before_first_token += 1
                return
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                if line.startswith(b"data: [DONE]"):
                    stats.completed += 1
                    return
                got += 1
                stats.tokens_read += 1
                if cut_at is not None and got >= cut_at:
                    transport.abort()
                    stats.cut += 1
                    return
            stats.failed += 1
            stats.errors["ended without [DONE]"] += 1
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        stats.failed += 1
        stats.errors[type(exc).__name__] += 1


async def run_load(url: str, duration_s: float, rate_per_s: float, rng: random.Random, stats: LoadStats,
                   first_k: int) -> int:
    """Poisson arrivals for ``duration_s``; returns once every stream it started has ended."""
    conn = aiohttp.TCPConnector(force_close=True, limit=0)
    timeout = aiohttp.ClientTimeout(total=120, sock_connect=10)
    k = first_k
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        t_end = time.monotonic() + duration_s
        next_t = time.monotonic()
        while True:
            next_t += rng.expovariate(rate_per_s)
            if next_t >= t_end:
                break
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))
            task = asyncio.create_task(one_stream(session, url, k, rng, stats))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
        if tasks:
            await asyncio.gather(*tasks)
    return k


# --------------------------------------------------------------------------- sampling
class Sampler:
    """Scrapes /metrics and /healthz over one keep-alive connection (so the server holds exactly one
    connection of ours whenever it is asked), and reads the server's RSS and fds."""

    def __init__(self, url: str, pid: int) -> None:
        self.url, self.pid = url, pid
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1),
                                             timeout=aiohttp.ClientTimeout(total=30))
        self.max_orphaned = 0.0
        self.samples: list[dict[str, float]] = []

    async def close(self) -> None:
        await self.session.close()

    async def metrics(self) -> dict[str, float]:
        async with self.session.get(f"{self.url}/metrics") as resp:
            m = parse_metrics(await resp.text())
        async with self.session.get(f"{self.url}/healthz") as resp:
            health = await resp.json()
        eng = health.get("engine") or {}
        m["engine_held"] = float(eng.get("waiting", 0) + eng.get("running", 0) + eng.get("swapped", 0))
        self.max_orphaned = max(self.max_orphaned, m.get("tokenpace_orphaned_streams", 0.0))
        return m

    async def sample(self, t_s: float) -> dict[str, float]:
        m = await self.metrics()
        row = {"t_s": round(t_s, 1), "rss_mib": rss_bytes(self.pid) / 2**20, "fds": float(fd_count(self.pid)),
               "active": m.get("tokenpace_active_streams", math.nan),
               "orphaned": m.get("tokenpace_orphaned_streams", math.nan)}
        self.samples.append(row)
        return row

    async def every(self, period_s: float, t0: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.sample(time.monotonic() - t0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period_s)

    async def quiescent(self, timeout_s: float = QUIESCE_TIMEOUT_S) -> dict[str, Any]:
        """Wait until the server holds nothing of the load (module doc); then RSS, fds and counters."""
        deadline = time.monotonic() + timeout_s
        while True:
            m = await self.metrics()
            idle = (m.get("tokenpace_active_streams") == 0 and m.get("tokenpace_orphaned_streams") == 0
                    and m["engine_held"] == 0 and m.get("tokenpace_http_connections") == 1)
            if idle or time.monotonic() > deadline:
                # read while our keep-alive connection is the only one (the next scrape reuses it)
                return {"quiescent": idle, "rss_bytes": rss_bytes(self.pid), "fds": fd_count(self.pid), "metrics": m}
            await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- the soak
async def soak(args: argparse.Namespace, server: ServerProcess, url: str) -> dict[str, Any]:
    rng = random.Random(args.seed)
    stats = LoadStats()
    sampler = Sampler(url, server.pid)
    t0 = time.monotonic()
    try:
        k = await run_load(url, args.warmup, args.rate, rng, stats, 0)
        base = await sampler.quiescent()
        stop = asyncio.Event()
        ticker = asyncio.create_task(sampler.every(args.sample_every, t0, stop))
        t_main = time.monotonic()
        await run_load(url, args.minutes * 60.0, args.rate, rng, stats, k)
        main_s = time.monotonic() - t_main
        stop.set()
        await ticker
        end = await sampler.quiescent()
    finally:
        await sampler.close()
    mb, me = base["metrics"], end["metrics"]
    disconnects = me.get("tokenpace_client_disconnects_total", 0.0)
    return {
        "minutes": args.minutes,
        "controller": args.controller,
        "scheduler": args.scheduler,
        "telemetry": not args.no_telemetry,
        "rate_per_s": args.rate,
        "warmup_s": args.warmup,
        "main_s": round(main_s, 1),
        "streams": stats.started,
        "completed": stats.completed,
        "cut": stats.cut,
        "cut_before_first_token": stats.cut_before_first_token,
        "failed": stats.failed,
        "errors": dict(stats.errors),
        "tokens_read": stats.tokens_read,
        "server_streams_cancelled": me.get("tokenpace_streams_total{outcome=cancelled}", 0.0),
        "server_streams_completed": me.get("tokenpace_streams_total{outcome=completed}", 0.0),
        "server_disconnects": disconnects,
        "tokens_generated": me.get("tokenpace_tokens_generated_total", 0.0),
        "rss_start_bytes": base["rss_bytes"],
        "rss_end_bytes": end["rss_bytes"],
        "rss_growth_pct": round(100.0 * (end["rss_bytes"] - base["rss_bytes"]) / base["rss_bytes"], 2),
        "rss_peak_bytes": int(max([s["rss_mib"] for s in sampler.samples] + [0]) * 2**20),
        "fds_start": base["fds"],
        "fds_end": end["fds"],
        "quiescent_start": base["quiescent"],
        "quiescent_end": end["quiescent"],
        "zombie_streams": me.get("tokenpace_zombie_streams_total", math.nan),
        "tokens_after_disconnect": me.get("tokenpace_tokens_after_disconnect_total", math.nan),
        "tokens_after_disconnect_in_warmup": mb.get("tokenpace_tokens_after_disconnect_total", math.nan),
        "max_orphaned_seen": sampler.max_orphaned,
        "orphaned_end": me.get("tokenpace_orphaned_streams", math.nan),
        "loadavg_start": args.loadavg_start,
        "loadavg_end": list(os.getloadavg()),
    }


def table(r: dict[str, Any]) -> str:
    mib = 2**20
    rows = [
        ("streams (completed / cut / failed)", f"{r['streams']} ({r['completed']} / {r['cut']} / {r['failed']})"),
        ("server: cancelled / disconnects", f"{r['server_streams_cancelled']:.0f} / {r['server_disconnects']:.0f}"),
        ("RSS after warm-up", f"{r['rss_start_bytes'] / mib:.1f} MiB"),
        ("RSS at end", f"{r['rss_end_bytes'] / mib:.1f} MiB (peak {r['rss_peak_bytes'] / mib:.1f})"),
        ("RSS growth", f"{r['rss_growth_pct']:+.2f} %"),
        ("open fds after warm-up / at end", f"{r['fds_start']} / {r['fds_end']}"),
        ("zombie streams", f"{r['zombie_streams']:.0f}"),
        ("tokens made after disconnect", f"{r['tokens_after_disconnect']:.0f} (for {r['server_disconnects']:.0f} "
                                         "departures)"),
        ("most orphaned streams seen / at end", f"{r['max_orphaned_seen']:.0f} / {r['orphaned_end']:.0f}"),
        ("quiescent at start / end", f"{r['quiescent_start']} / {r['quiescent_end']}"),
        ("load average (1 min) start / end", f"{r['loadavg_start'][0]:.2f} / {r['loadavg_end'][0]:.2f}"),
    ]
    width = max(len(k) for k, _ in rows)
    head = (f"soak: {r['minutes']:g} min + {r['warmup_s']:g} s warm-up, controller {r['controller']}, "
            f"scheduler {r['scheduler']}, "
            f"telemetry {'on' if r['telemetry'] else 'off'}, {r['rate_per_s']:g} streams/s")
    return "\n".join([head] + [f"  {k:<{width}}  {v}" for k, v in rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="length of the measured part (default 20)")
    ap.add_argument("--warmup", type=float, default=20.0, help="seconds of load before the baseline (default 20)")
    ap.add_argument("--rate", type=float, default=2.0, help="stream arrivals per second (Poisson; default 2)")
    ap.add_argument("--controller", default="buffer", help="a paced controller (default buffer)")
    ap.add_argument("--scheduler", default="fcfs", help="the engine's scheduler (python -m live --scheduler; "
                    "default fcfs)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS/fd samples")
    ap.add_argument("--no-telemetry", action="store_true", help="without the eBPF probes (not the soak's point)")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.warmup < 0 or args.rate <= 0:
        ap.error("--minutes and --rate must be positive, --warmup not negative")
    args.loadavg_start = list(os.getloadavg())
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:  # started in the background by a shell: the server
        signal.signal(signal.SIGINT, signal.default_int_handler)  # would inherit the ignored SIGINT we stop it by
    port = free_port(random.Random(os.getpid()))
    server_argv = ["--iface", "lo", "--port", str(port), "--controller", args.controller,
                   "--scheduler", args.scheduler]
    if args.no_telemetry:
        server_argv.append("--no-telemetry")
    server = ServerProcess(server_argv)
    try:
        url = server.wait_url(START_TIMEOUT_S)
        result = asyncio.run(soak(args, server, url))
    finally:
        rc = server.stop()
    result["server_rc"] = rc
    result["server_tracebacks"] = server.tracebacks
    print(table(result))
    if server.tracebacks:
        print("server stderr (last lines):\n  " + "\n  ".join(server.tail))
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
