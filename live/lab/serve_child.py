"""The server of one lab run, ``python -m live.lab.serve_child``: started by the lab inside namespace a,
it is ``python -m live`` without its own fault player (the lab shapes the path), with eBPF telemetry,
recording into the entry's folder, and stopping cleanly on SIGINT/SIGTERM. It speaks the JSON lines of
:mod:`live.lab.protocol`: ``{"event": "ready", "url": ...}`` on stdout once it serves, ``{"event": "exit"}``
when it has stopped; each ``{"cmd": "t0", "t0": T}`` on its stdin makes the ``time.monotonic()`` instant T
time 0 of the recording, the load's start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

from live.lab.lab import entry_plan
from live.lab.protocol import ProtocolError, emit, read_t0

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Serve one entry of a scenario until SIGINT/SIGTERM, time 0 from stdin."""
    p = argparse.ArgumentParser(prog="python -m live.lab.serve_child",
                                description="Serve one entry of a scenario for the lab. stdout: "
                                '{"event": "ready", ...} once serving, {"event": "exit"} at the end; stdin: '
                                '{"cmd": "t0", "t0": T} lines, T a time.monotonic() instant: time 0 of the '
                                "recording (see live.lab.protocol).")
    p.add_argument("--scenario", required=True)
    p.add_argument("--controller", required=True, help="the entry: CONTROLLER or CONTROLLER@SCHEDULER")
    p.add_argument("--scheduler", help="the scheduler the engine runs (default: the entry's, else the scenario's)")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--record", type=Path, required=True)
    p.add_argument("--iface")
    p.add_argument("--duration", type=float)
    p.add_argument("--tcp-congestion", help="TCP_CONGESTION for every client connection (the path's cc)")
    args = p.parse_args(argv)
    import logging

    from live.kernel.telemetry import BccTelemetry
    from live.serve.app import serve
    from live.serve.config import LiveConfig
    from scenarios import load_scenario
    from scenarios.loader import split_entry

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    loaded = load_scenario(args.scenario)
    entry = args.controller
    scheduler = args.scheduler or split_entry(entry)[1] or loaded.scenario.server.scheduler.name
    plan = entry_plan(loaded, [entry], {entry: scheduler})
    controller = plan.controller_of(entry)
    config = LiveConfig.from_scenario(plan.scenario_for(entry), controller, host=args.host, port=args.port,
                                      record_dir=args.record, duration_s=args.duration, iface=args.iface,
                                      fault="lab", tcp_congestion=args.tcp_congestion,
                                      controller_params=plan.controllers[entry],
                                      entry=entry if entry != controller else None)

    def telemetry(port: int) -> BccTelemetry:
        return BccTelemetry(ports=[port], interval_s=config.control_interval_s)

    async def read_epochs(server: Any) -> None:
        """``{"cmd": "t0", ...}`` lines from the lab: time 0 of the recording = the load's start."""
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            if not line.strip():
                continue
            try:
                server.state.rebase_epoch(read_t0(line))
            except ProtocolError as exc:
                print(f"[serve_child] {exc}", file=sys.stderr)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        readers: list[asyncio.Task[None]] = []

        def ready(server: Any) -> None:
            readers.append(loop.create_task(read_epochs(server)))
            emit("ready", url=f"http://{args.host}:{args.port}")

        task = asyncio.ensure_future(serve(config, telemetry, ready=ready))
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for r in readers:
            r.cancel()

    asyncio.run(run())
    with contextlib.suppress(OSError):  # the lab may have stopped listening
        emit("exit")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
