"""``python -m live``: pace real streams with real kernel telemetry.

    python -m live --iface IFACE [--port P] [--controller NAME] [--scenario FILE | --fault SPEC ...]
                   [--record DIR] [--duration S] [--upstream URL]
    python -m live doctor                       can live mode run here? (and the fix for each check)
    python -m live cleanup --iface IFACE        remove qdiscs/rules a killed run left behind
    python -m live client URL --streams N       load client with the scenario's readers
    python -m live lab SCENARIO --out DIR       run a scenario for real in two namespaces, every controller
    python -m live dashboard --record DIR       live Streamlit page of a recording (per-connection telemetry)

The server binds 127.0.0.1 unless --host says otherwise. Faults are played on IFACE's egress
(netem where the kernel has it, tbf + nftables otherwise) and always removed on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

EXIT_BAD_INPUT = 2
SUBCOMMANDS = ("doctor", "cleanup", "client", "lab", "dashboard")


def parse_fault_spec(spec: str) -> dict[str, Any]:
    """``kind=loss,p=0.05,at_s=10,duration_s=20`` -> a validated fault (the scenario schema's)."""
    from scenarios.schema import Fault

    fields: dict[str, Any] = {}
    for part in spec.split(","):
        if "=" not in part:
            raise ValueError(f"--fault {spec!r}: expected key=value pairs, got {part!r}")
        key, value = (s.strip() for s in part.split("=", 1))
        fields[key] = value
    try:
        fault = TypeAdapter(Fault).validate_python(fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"] if x not in ("delay", "loss", "gilbert_elliott", "rate", "outage"))
        raise ValueError(f"--fault {spec!r}: {loc + ': ' if loc else ''}{err['msg']}") from None
    return fault.model_dump()


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m live",
        description="Serve an OpenAI-compatible streaming API whose streams are paced per connection by a "
        "tokenpace controller fed by eBPF TCP telemetry, optionally with faults on an interface.",
        epilog="Other commands: `python -m live doctor`, `python -m live cleanup --iface X`, "
        "`python -m live client URL --streams N`. Plots of a recording: `python -m analysis DIR`.",
    )
    p.add_argument("--iface", required=True, help="interface the clients are reached through (faults go here)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--controller", default="unpaced", help="pacing controller (see `python -m sim list`)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--scenario", help="scenario file or built-in name: server model, readers, faults")
    src.add_argument("--fault", action="append", default=[], metavar="SPEC",
                     help="a fault, e.g. kind=loss,p=0.05,at_s=10,duration_s=20 (repeatable)")
    p.add_argument("--path", help="which of the scenario's paths IFACE plays (default: the first)")
    p.add_argument("--record", type=Path, help="record the run in the results layout to DIR")
    p.add_argument("--duration", type=float, help="stop after S seconds (default: run until Ctrl-C)")
    p.add_argument("--upstream", help="proxy an OpenAI-compatible server (vLLM, Ollama) instead of the engine")
    p.add_argument("--no-telemetry", action="store_true", help="no eBPF probes (controllers see only the server)")
    p.add_argument("--no-faults", action="store_true", help="ignore the scenario's faults")
    return p


def _serve(argv: list[str]) -> int:
    args = _serve_parser().parse_args(argv)
    from scenarios import ScenarioError, load_scenario

    try:
        faults: list[Any] = [parse_fault_spec(s) for s in args.fault]
        loaded = load_scenario(args.scenario) if args.scenario else None
    except (ValueError, ScenarioError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from live.server import LiveConfig, serve

    overrides: dict[str, Any] = {"host": args.host, "port": args.port, "record_dir": args.record,
                                 "duration_s": args.duration, "upstream": args.upstream, "iface": args.iface,
                                 "fault": ";".join(args.fault) or None}
    try:
        if loaded is not None:
            config = LiveConfig.from_scenario(loaded, args.controller, **overrides)
        else:
            config = LiveConfig(controller=args.controller, **overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        print(f"error: {key + ': ' if key else ''}{err['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return EXIT_BAD_INPUT
    base = None
    if loaded is not None:
        scn = loaded.scenario
        path = args.path or next(iter(scn.paths))
        if path not in scn.paths:
            print(f"error: {loaded.path}: --path {path!r} is not one of {', '.join(scn.paths)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        faults = [] if args.no_faults else list(scn.faults_for(path))
        base = scn.paths[path]
    telemetry = None
    if not args.no_telemetry:
        from live.telemetry import BccTelemetry

        def telemetry(port: int) -> BccTelemetry:
            return BccTelemetry(ports=[port], interval_s=config.control_interval_s)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from contextlib import nullcontext

    from live.faults import FaultPlayer

    player = FaultPlayer(args.iface, faults, base=base) if (faults or base is not None) else nullcontext()
    try:
        with player:
            asyncio.run(serve(config, telemetry))
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    if args.record:
        print(f"recorded to {args.record}/ (plots: python -m analysis {args.record})")
    return 0


def _cleanup(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m live cleanup",
                                description="Remove the qdiscs and nftables rules tokenpace created on an interface "
                                "(after a killed run). Nothing else is touched.")
    p.add_argument("--iface", required=True)
    p.add_argument("--netns", help="the interface lives in this network namespace")
    args = p.parse_args(argv)
    from live.faults import cleanup_main

    return cleanup_main(args.iface, args.netns)


def _client(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m live client",
                                description="Open streaming requests against URL with the scenario's arrivals and "
                                "readers (pace, patience); record per-token arrival and display times.")
    p.add_argument("url", help="server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--streams", type=int, help="number of requests (default: the scenario's)")
    p.add_argument("--scenario", default="steady-broadband", help="scenario for arrivals and readers")
    p.add_argument("--out", type=Path, help="record the client half into this results folder")
    p.add_argument("--seed", type=int)
    p.add_argument("--time-limit", type=float, help="stop after S seconds (default: scenario max, <= 600)")
    p.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    p.add_argument("--sync-stdin", action="store_true",
                   help="once the server answers, print READY and wait for a line `T0 <monotonic>` on stdin: time 0 "
                   "of the load (how the lab starts load, recording and path timeline together)")
    p.add_argument("--bind", action="append", default=[], metavar="PATH=ADDR",
                   help="requests the scenario puts on PATH connect from local address ADDR (repeatable; the "
                   "lab gives each path its own client address)")
    args = p.parse_args(argv)
    from scenarios import ScenarioError, load_scenario

    try:
        loaded = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    bind: dict[str, str] = {}
    for item in args.bind:
        name, sep, addr = item.partition("=")
        if not sep or not addr or name not in loaded.scenario.paths:
            print(f"error: --bind {item!r}: expected PATH=ADDR with PATH one of "
                  f"{', '.join(loaded.scenario.paths)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        bind[name] = addr
    if args.streams is not None and args.streams < 1:
        print("error: --streams must be at least 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    from live.client import run_load
    from live.lab import parse_epoch_line

    async def t0_from_stdin() -> float:
        print("READY", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        t0 = parse_epoch_line(line)
        if t0 is None:
            raise ValueError(f"--sync-stdin: expected `T0 <monotonic>`, got {line.strip()!r}")
        return t0

    result = asyncio.run(run_load(args.url, args.streams, loaded, args.out, seed=args.seed,
                                  time_limit_s=args.time_limit, endpoint=args.endpoint,
                                  start_at=t0_from_stdin if args.sync_stdin else None, bind=bind or None))
    print(result.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["doctor"]:
        from live.doctor import main as doctor_main

        return doctor_main(argv[1:])
    if argv[:1] == ["cleanup"]:
        return _cleanup(argv[1:])
    if argv[:1] == ["client"]:
        return _client(argv[1:])
    if argv[:1] == ["lab"]:
        from live.lab import main as lab_main

        return lab_main(argv[1:])
    if argv[:1] == ["dashboard"]:
        from live.dashboard import main as dashboard_main

        return dashboard_main(argv[1:])
    return _serve(argv)
