"""``python -m live``: pace real streams with real kernel telemetry.

    python -m live --iface IFACE [--port P] [--controller NAME] [--scenario FILE | --fault SPEC ...]
                   [--scheduler NAME [--scheduler-param KEY=VALUE ...]]
                   [--record DIR] [--duration S] [--upstream URL]
    python -m live doctor                       can live mode run here? (and the fix for each check)
    python -m live cleanup [--iface IFACE]      remove what a killed run left behind (qdiscs/rules on IFACE;
                                                stale namespaces, TUN links and processes of a killed lab)
    python -m live client URL --streams N       load client with the scenario's readers
    python -m live lab SCENARIO --out DIR       run a scenario for real in two namespaces, every controller
    python -m live dashboard --record DIR       live Streamlit page of a recording (per-connection telemetry)

The server binds 127.0.0.1 unless --host says otherwise. ``--scheduler`` chooses the built-in engine's
scheduling policy (``sim/model/schedulers/``; default: the scenario's ``server.scheduler``, else fcfs),
recorded in run.json (``live.scheduler`` and the scenario's ``server.scheduler``). Faults are played on IFACE's egress
(netem where the kernel has it, tbf + nftables otherwise) and always removed on exit.

Every command runs in two steps: :func:`validate` checks the whole command line -- every problem
named by its flag, or by file and key, exit 2 -- without starting, creating or shaping anything;
only then does the :class:`Plan` start. What the machine lacks (root, bcc, tc, ...) is found next,
before anything is created, and said with its fix (exit 2 too). It all ends through
:func:`scenarios.cli_errors.run_cli`: never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from live.argcheck import Problems, environment_problems
from scenarios.cli_errors import BadInput, run_cli

__all__ = ["Plan", "launch", "main", "parse_fault_spec", "validate"]

PROG = "python -m live"
SUBCOMMANDS = ("doctor", "cleanup", "client", "lab", "dashboard")
MAX_TIME_LIMIT_S = 86_400.0  # the client's --time-limit: a day (asyncio timers overflow far beyond)
FAULT_TAGS = ("delay", "loss", "gilbert_elliott", "rate", "outage")  # pydantic's union tags in error locations
CONFIG_FLAGS = {"host": "--host", "port": "--port", "controller": "--controller", "record_dir": "--record",
                "duration_s": "--duration", "upstream": "--upstream", "iface": "--iface"}


@dataclass(frozen=True)
class Plan:
    """A command line that passed :func:`validate`: which command, its checked configuration, and
    the function that starts it (``run(config)``, called by :meth:`start`)."""

    command: str
    config: Any
    run: Callable[[Any], int] = field(repr=False)

    def start(self) -> int:
        return self.run(self.config)


def launch(plan: Plan) -> int:
    """The real start (``main``'s default): serve, load, run the lab, ..."""
    return plan.start()


def main(argv: Sequence[str] | None = None, *, start: Callable[[Plan], int] = launch) -> int:
    """``python -m live ...``: validate the whole command line, then ``start`` the plan.

    ``start`` is the real :func:`launch` unless a caller injects another (the CLI tests record the
    validated plan instead of serving)."""
    return run_cli(lambda args: start(validate(args)), argv, PROG)


def validate(argv: Sequence[str]) -> Plan:
    """The checked plan of a command line, or a BadInput (argparse usage errors: SystemExit 2)."""
    argv = list(argv)
    command = argv[0] if argv[:1] and argv[0] in SUBCOMMANDS else "serve"
    rest = argv[1:] if command != "serve" else argv
    if command == "doctor":
        from live.kernel import doctor

        doctor.parser().parse_args(rest)
        return Plan("doctor", rest, doctor.main)
    if command == "cleanup":
        return Plan("cleanup", _validate_cleanup(rest), _start_cleanup)
    if command == "client":
        return Plan("client", _validate_client(rest), _start_client)
    if command == "lab":
        from live.lab import lab

        return Plan("lab", lab.validate(rest), lab.run)
    if command == "dashboard":
        from live.dashboard import launch as dashboard

        return Plan("dashboard", dashboard.validate(rest), dashboard.run)
    return Plan("serve", _validate_serve(rest), _start_serve)


# --------------------------------------------------------------------------- faults
def parse_fault_spec(spec: str) -> dict[str, Any]:
    """``kind=loss,p=0.05,at_s=10,duration_s=20`` -> a validated fault (the scenario schema's).

    Raises :class:`BadInput` (a ValueError) naming every problem of the spec, each on its own line."""
    from scenarios.schema import Fault

    where = f"--fault {spec!r}"
    problems: list[tuple[str, str]] = []
    fields: dict[str, Any] = {}
    for part in spec.split(","):
        if "=" not in part:
            problems.append((where, f"expected key=value pairs, got {part!r}"))
            continue
        key, value = (s.strip() for s in part.split("=", 1))
        if key in fields:
            problems.append((where, f"{key} given twice"))
        if key not in ("kind", "path") and not _finite_or_not_a_number(value):
            problems.append((where, f"{key}: must be a finite number, got {value!r}"))
        fields[key] = value
    if "kind" not in fields:
        problems.append((where, f"kind: missing (one of {', '.join(FAULT_TAGS)})"))
    elif not problems:
        try:
            fault = TypeAdapter(Fault).validate_python(fields)
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join(str(x) for x in err["loc"] if x not in FAULT_TAGS)
                problems.append((where, f"{loc + ': ' if loc else ''}{err['msg']}"))
        else:
            return fault.model_dump()
    raise BadInput.many(problems)


def _finite_or_not_a_number(text: str) -> bool:
    """False only for text that parses as a float but is nan or +-inf (pydantic takes those)."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return True  # not a number at all: the schema says what it should be


# --------------------------------------------------------------------------- the server
def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Serve an OpenAI-compatible streaming API whose streams are paced per connection by a "
        "tokenpace controller fed by eBPF TCP telemetry, optionally with faults on an interface.",
        epilog="Other commands: `python -m live doctor`, `python -m live cleanup --iface X`, "
        "`python -m live client URL --streams N`, `python -m live lab SCENARIO --out DIR`, "
        "`python -m live dashboard --record DIR`. Plots of a recording: `python -m analysis DIR`. "
        "--debug (or TOKENPACE_DEBUG=1) shows the traceback of an internal error.",
    )
    p.add_argument("--iface", required=True, help="interface the clients are reached through (faults go here)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--controller", default="unpaced", help="pacing controller (see `python -m sim list`)")
    p.add_argument("--scheduler", help="the built-in engine's scheduler: who decodes, is preempted, is admitted "
                   f"each step ({_scheduler_names()}; default: the scenario's server.scheduler, else fcfs)")
    p.add_argument("--scheduler-param", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter of the scheduler, VALUE read as JSON else a string (repeatable)")
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


@dataclass(frozen=True)
class ServeConfig:
    config: Any  # live.serve.config.LiveConfig
    iface: str
    faults: list[Any]
    base: Any  # the scenario path's PathSpec played under the faults, or None
    telemetry: bool

    @property
    def shapes(self) -> bool:
        return bool(self.faults) or self.base is not None


def _scheduler_names() -> str:
    from sim.model import schedulers

    return ", ".join(sorted(schedulers.REGISTRY))


def _validate_serve(argv: list[str]) -> ServeConfig:
    args = _serve_parser().parse_args(argv)
    problems = Problems()
    problems.iface("--iface", args.iface)
    if problems.port("--port", args.port):
        problems.listen("--host", args.host, "--port", args.port)
    problems.positive_s("--duration", args.duration)
    controller_ok = problems.controller("--controller", args.controller)
    faults: list[Any] = []
    for spec in args.fault:
        try:
            faults.append(parse_fault_spec(spec))
        except BadInput as exc:
            problems.extend(exc.problems)
    if args.record is not None:
        problems.output_dir("--record", args.record)
    if args.upstream is not None:
        problems.http_url("--upstream", args.upstream)
    if args.path is not None and args.scenario is None:
        problems.add("--path", "needs --scenario (it names which of the scenario's paths IFACE plays)")
    loaded = problems.scenario("--scenario", args.scenario) if args.scenario is not None else None
    base = None
    if loaded is not None:
        scn = loaded.scenario
        path = args.path or next(iter(scn.paths))
        if path in scn.paths:
            faults = [] if args.no_faults else list(scn.faults_for(path))
            base = scn.paths[path]
        else:
            problems.add("--path", f"{path!r} is not one of the scenario's paths ({', '.join(scn.paths)})")
    scheduler = _scheduler(args, loaded, problems)
    config = None
    if controller_ok and scheduler is not False and (args.scenario is None or loaded is not None):
        config, config_problems = _live_config(args, loaded, scheduler)
        problems.extend(config_problems)
    problems.raise_if_any()
    return ServeConfig(config, args.iface, faults, base, telemetry=not args.no_telemetry)


def _scheduler(args: argparse.Namespace, loaded: Any, problems: Problems) -> Any:
    """The SchedulerSpec that --scheduler and --scheduler-param ask for (None: the scenario's or the
    default, untouched; False: a problem, added). The scenario's parameters of the same scheduler are
    kept under the flags' ones."""
    from scenarios.schema import SchedulerSpec

    if args.scheduler is None and not args.scheduler_param:
        return None
    if args.upstream is not None:
        flag = "--scheduler" if args.scheduler is not None else "--scheduler-param"
        problems.add(flag, "applies to the built-in engine only; with --upstream the upstream server "
                     "schedules its own batch")
        return False
    scenario_spec = loaded.scenario.server.scheduler if loaded is not None else None
    name = args.scheduler if args.scheduler is not None else (scenario_spec.name if scenario_spec else "fcfs")
    known = problems.scheduler("--scheduler", name)
    base = scenario_spec.params if scenario_spec is not None and scenario_spec.name == name else {}
    params = problems.scheduler_params("--scheduler-param", name if known else None, args.scheduler_param, base)
    if not known or params is None:
        return False
    return SchedulerSpec(name=name, params=params)


def _live_config(args: argparse.Namespace, loaded: Any,
                 scheduler: Any = None) -> tuple[Any, list[tuple[str, str]]]:
    """The server's LiveConfig, or the problems pydantic found that the flag checks did not."""
    from live.serve.config import LiveConfig
    from scenarios.schema import ServerSpec

    overrides: dict[str, Any] = {"host": args.host, "port": args.port, "record_dir": args.record,
                                 "duration_s": args.duration, "upstream": args.upstream, "iface": args.iface,
                                 "fault": ";".join(args.fault) or None}
    if scheduler is not None:
        server = loaded.scenario.server if loaded is not None else ServerSpec()  # type: ignore[call-arg]
        overrides["server"] = server.model_copy(update={"scheduler": scheduler})
    try:
        if loaded is not None:
            return LiveConfig.from_scenario(loaded, args.controller, **overrides), []
        return LiveConfig(controller=args.controller, **overrides), []
    except ValidationError as exc:
        found = []
        for err in exc.errors():
            loc = [str(x) for x in err["loc"]]
            if loc and loc[0] in CONFIG_FLAGS:
                continue  # checked (and named) by the flag checks already
            msg = str(err["msg"]).removeprefix("Value error, ")
            if msg.startswith("server.scheduler") and (loaded is None or scheduler is not None):
                found.append(("--scheduler", msg))  # (the flags' checks should have said it already)
            elif loaded is not None and msg.startswith("controller_params."):  # the scenario's controllers: block
                key = msg.removeprefix("controller_params.")
                found.append((str(loaded.path), f"controllers.{args.controller}.{key}"))
            elif loaded is not None:  # a value the server takes from the scenario
                found.append((str(loaded.path), f"{'.'.join(loc) + ': ' if loc else ''}{msg}"))
            else:
                found.append(("--controller" if not loc else ".".join(loc), msg))
        return None, found  # empty: every error was a flag's, already named


def _start_serve(cfg: ServeConfig) -> int:
    config = cfg.config
    missing = environment_problems(root=cfg.shapes or cfg.telemetry, telemetry=cfg.telemetry,
                                   tools=("tc", "ip") if cfg.shapes else (),
                                   telemetry_hint=", or pass --no-telemetry")
    if missing:
        raise BadInput.many(missing)
    telemetry = None
    if cfg.telemetry:
        from live.kernel.telemetry import BccTelemetry

        def telemetry(port: int) -> BccTelemetry:
            tel = BccTelemetry(ports=[port], interval_s=config.control_interval_s)
            try:
                tel.start()  # here, so that a probe that does not load is said as such
            except Exception as exc:  # bcc compile/attach errors come in many types
                tel.close()
                lines = str(exc).strip().splitlines()
                raise BadInput("", f"the eBPF telemetry did not load ({lines[-1] if lines else type(exc).__name__}): "
                               "run `python -m live doctor`, or pass --no-telemetry") from exc
            return tel

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from contextlib import ExitStack

    from analysis.results import sigterm_as_ctrl_c
    from live.kernel.faults import FaultPlayer, UnsupportedFault
    from live.serve.app import serve

    player: FaultPlayer | None = None

    def start_faults(server: Any) -> None:
        """Time 0 of the faults = time 0 of the recording = now: the server is listening and its
        telemetry is up (``serve`` calls this then), so a fault at 0.5 s meets a serving server."""
        if player is None:
            return
        t0 = time.monotonic()
        server.state.start_faults_at(t0)
        player.t0_s = t0
        try:
            player.start()
        except (RuntimeError, OSError, UnsupportedFault) as exc:
            raise BadInput("--iface", f"cannot shape {cfg.iface}: {exc}") from exc
        print(f"[faults] time 0 at monotonic {player.t0_s:.6f} (the recording's: {server.state.t0:.6f})",
              flush=True)

    try:
        with sigterm_as_ctrl_c(), ExitStack() as stack:  # SIGTERM stops it as Ctrl-C does: files closed
            if cfg.shapes:
                # the slow part (backend, the tc-bpf dropper's compile) now; time 0 once serving
                try:
                    player = FaultPlayer(cfg.iface, cfg.faults, base=cfg.base).prepare()
                except (RuntimeError, OSError, UnsupportedFault) as exc:
                    raise BadInput("--iface", f"cannot shape {cfg.iface}: {exc}") from exc
                stack.push(player)  # stopped (everything it made removed) on the way out
            asyncio.run(serve(config, telemetry, ready=start_faults))
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        if config.record_dir is not None:
            from live.recorder import mark_interrupted

            mark_interrupted(config.record_dir)  # run.json: status interrupted (the files are closed)
    except OSError as exc:
        raise _listen_error(exc, config) from exc
    if config.record_dir is not None:
        print(f"recorded to {config.record_dir}/ (plots: python -m analysis {config.record_dir})")
    return 0


def _listen_error(exc: OSError, config: Any) -> BaseException:
    """An OSError out of the server: said with its flag when it is the listening socket's or the
    recording folder's; anything else stays an internal error."""
    if exc.errno == errno.EADDRINUSE:
        return BadInput("--port", f"{config.port} is in use")
    if exc.errno == errno.EADDRNOTAVAIL:
        return BadInput("--host", f"{config.host} is not an address of this machine")
    filename = getattr(exc, "filename", None)
    if config.record_dir is not None and filename and str(filename).startswith(str(config.record_dir)):
        return BadInput("--record", f"{filename}: {exc.strerror or exc}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return BadInput("", f"permission denied ({exc}): run as root or with sudo")
    return exc


# --------------------------------------------------------------------------- cleanup
@dataclass(frozen=True)
class CleanupConfig:
    iface: str | None  # None: only what live.kernel.leftovers finds (stale namespaces, orphaned processes)
    netns: str | None


def _validate_cleanup(argv: list[str]) -> CleanupConfig:
    p = argparse.ArgumentParser(prog=f"{PROG} cleanup",
                                description="Remove what a killed run left behind: the qdiscs and nftables rules "
                                "tokenpace created on an interface (--iface), and always the network namespaces, TUN "
                                "links and processes of a killed lab, bench or test whose creator is gone "
                                "(live/kernel/leftovers.py). Nothing else is touched.")
    p.add_argument("--iface", help="remove tokenpace's qdiscs and nftables rules from this interface")
    p.add_argument("--netns", help="the interface lives in this network namespace")
    args = p.parse_args(argv)
    problems = Problems()
    if args.iface is None:
        if args.netns is not None:
            problems.add("--netns", "needs --iface (the interface in that namespace)")
    elif args.netns is None:
        problems.iface("--iface", args.iface)
    elif not args.netns or "/" in args.netns or "\x00" in args.netns or args.netns in (".", "..") \
            or not Path("/run/netns", args.netns).exists():
        problems.add("--netns", f"no such network namespace {args.netns!r} (see `ip netns list`)")
    elif not _iface_in_netns(args.iface, args.netns):
        problems.add("--iface", f"no such interface {args.iface!r} in network namespace {args.netns}")
    problems.raise_if_any()
    return CleanupConfig(args.iface, args.netns)


def _iface_in_netns(iface: str, netns: str) -> bool:
    import subprocess

    try:
        proc = subprocess.run(["ip", "-n", netns, "link", "show", "dev", iface], capture_output=True, timeout=10,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return True  # cannot tell here; cleanup itself will say
    return proc.returncode == 0


def _start_cleanup(cfg: CleanupConfig) -> int:
    missing = environment_problems(root=True, tools=("tc", "ip"))
    if missing:
        raise BadInput.many(missing)
    from live.kernel.leftovers import remove_stale

    rc = 0
    if cfg.iface is not None:
        from live.kernel.faults import cleanup_main

        rc = cleanup_main(cfg.iface, cfg.netns)
    if not remove_stale() and cfg.iface is None:
        print("nothing of tokenpace's left behind (no stale namespace or orphaned process)")
    return rc


# --------------------------------------------------------------------------- the load client
def _client_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} client",
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
                   help='speak the lab\'s JSON lines (live.lab.protocol): once the server answers, print {"event": '
                   '"ready"} and wait for {"cmd": "t0", "t0": T} on stdin, T a time.monotonic() instant: time 0 of '
                   "the load (how the lab starts load, recording and path timeline together); at the end print "
                   '{"event": "exit", "summary": ...}')
    p.add_argument("--bind", action="append", default=[], metavar="PATH=ADDR",
                   help="requests the scenario puts on PATH connect from local address ADDR (repeatable; the "
                   "lab gives each path its own client address)")
    return p


@dataclass(frozen=True)
class ClientConfig:
    url: str
    streams: int | None
    loaded: Any
    out: Path | None
    seed: int | None
    time_limit_s: float | None
    endpoint: str
    sync_stdin: bool
    bind: dict[str, str]


def _validate_client(argv: list[str]) -> ClientConfig:
    args = _client_parser().parse_args(argv)
    problems = Problems()
    problems.http_url("URL", args.url)
    problems.at_least("--streams", args.streams, 1)
    problems.at_least("--seed", args.seed, 0)
    problems.positive_s("--time-limit", args.time_limit)
    if args.time_limit is not None and MAX_TIME_LIMIT_S < args.time_limit < math.inf:
        problems.add("--time-limit", f"at most {MAX_TIME_LIMIT_S:g} s, got {args.time_limit:g}")
    if args.out is not None:
        problems.output_dir("--out", args.out)
    loaded = problems.scenario("--scenario", args.scenario)
    bind: dict[str, str] = {}
    for item in args.bind:
        name, sep, addr = item.partition("=")
        if not sep or not name or not addr:
            problems.add("--bind", f"{item!r}: expected PATH=ADDR")
            continue
        if name in bind:
            problems.add("--bind", f"{item!r}: path {name!r} given twice")
        if loaded is not None and name not in loaded.scenario.paths:
            problems.add("--bind", f"{item!r}: {name!r} is not one of the scenario's paths "
                         f"({', '.join(loaded.scenario.paths)})")
        problems.local_address("--bind", addr)
        bind[name] = addr
    problems.raise_if_any()
    return ClientConfig(args.url, args.streams, loaded, args.out, args.seed, args.time_limit, args.endpoint,
                        args.sync_stdin, bind)


def _start_client(cfg: ClientConfig) -> int:
    from live.lab.protocol import ProtocolError, emit, read_t0
    from live.loadgen.client import run_load

    async def t0_from_stdin() -> float:
        emit("ready")
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        try:
            return read_t0(line)
        except ProtocolError as exc:
            raise BadInput("--sync-stdin", str(exc)) from None

    result = asyncio.run(run_load(cfg.url, cfg.streams, cfg.loaded, cfg.out, seed=cfg.seed,
                                  time_limit_s=cfg.time_limit_s, endpoint=cfg.endpoint,
                                  start_at=t0_from_stdin if cfg.sync_stdin else None, bind=cfg.bind or None))
    if cfg.sync_stdin:
        emit("exit", summary=result.summary())
    else:
        print(result.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
