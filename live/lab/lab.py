"""``python -m live lab SCENARIO --out DIR``: a scenario on a real kernel network, every controller in turn.

The lab builds a private two-host network: the paced server lives in network namespace ``a``, the
load client in ``b``. By default (``--link tun``) the two are joined by a user-space link
(:mod:`live.lab.tunlink`, Mahimahi's mm-link done with the simulator's own link model): every packet
the kernel sends from one namespace to the other crosses a process that applies the scenario's path
exactly as the simulator does -- rate, rate schedule or Mahimahi trace, drop-tail queue,
propagation delay (rtt_ms), random and Gilbert-Elliott loss, and every fault -- so delay and traces
are reproduced on this kernel, which has no sch_netem. ``--link qdisc`` joins them by a veth pair
shaped by qdiscs instead (:class:`live.kernel.faults.FaultPlayer`: netem where the kernel has it, else tbf
+ a tc-bpf dropper, without delay; a trace becomes a rate updated every 100 ms).

For each entry the scenario lists (or ``--controllers``), it

1. starts the server with that controller in ``a``, with eBPF telemetry, recording into
   ``DIR/<entry>/`` (a fresh user-space link each time: the same path from time 0);
2. starts the load client in ``b`` with the scenario's arrivals, outputs and readers; once it is
   ready, one instant just ahead becomes time 0 of the load, of the server's recording and of the
   path's timeline (faults, schedules, traces), so all three line up as in the simulator. What is
   slow about the path (compiling the tc-bpf dropper: seconds on a busy machine) is done before,
   while the server starts, so that at time 0 only cheap steps are left; a step applied late is
   logged and listed in run.json (``lab.runs[].late_steps``);
3. stops the server and the path, and merges the server's and the client's halves.

Entries are the simulator's (:mod:`scenarios.loader`): ``CONTROLLER`` runs on the scenario's
``server.scheduler`` (or ``--scheduler``'s), ``CONTROLLER@SCHEDULER`` on that scheduler -- with the
scenario's parameters when it is the scenario's scheduler, else its defaults -- and ``--schedulers a,b``
makes each plain entry one per scheduler, exactly as ``python -m sim --schedulers``; the server's
engine runs the entry's scheduler, the entry names the results folder (``DIR/buffer@tokenpace/``) and
run.json's ``entries`` records each one's controller and scheduler, as the simulator's does.

Then ``DIR/run.json`` says mode ``lab`` and lists every controller run, and ``DIR/summary.json``
holds the metrics (``analysis.metrics.summarize_run``). Namespaces, qdiscs, BPF programs, the link
and child processes are removed afterwards, also after an error, Ctrl-C or SIGTERM.

Several paths: the user-space link plays every path of the scenario at once, each with its own
bottleneck, and gives each its own client address (``10.202.N.2``, ``.3``, ...); the load client
binds each request to the address of the path the scenario drew for it (``--bind PATH=ADDR``), so
a stream crosses its own path both ways, as in the simulator. ``--path`` plays one path only and
sends every stream over it.

The server sets the path's congestion control on every connection (``TCP_CONGESTION``; ``LiveConfig.
tcp_congestion``), so the paced streams run the TCP the simulator models: this machine's default is
BBR, which a namespace inherits, and a namespace may only default to the "allowed" algorithms (here
reno and bbr), so per socket it is. Paths with different ``cc`` in one scenario get the first
path's (said in the notes).

What the lab cannot reproduce is printed before it starts and recorded in run.json (``lab.notes``):
sim-only controllers (``oracle``) are skipped; with ``--link qdisc``, one path only (all streams
over it), and on this kernel no delay.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from live.lab.protocol import ProtocolError, read_message, send, wait_event

__all__ = ["LabError", "LabPlan", "main", "plan_path", "run", "trace_schedule", "validate"]

PY = sys.executable
TRACE_BIN_S = 0.1  # trace replay: the tbf rate is updated this often
MIN_TRACE_RATE_MBPS = 0.05  # a trace bin with no delivery opportunity: tbf cannot have rate 0
CROSS_PORT = 9100  # cross-traffic sinks listen here (+1 per path with cross traffic)
READY_TIMEOUT_S = 90.0  # server start includes compiling the eBPF probes
CLIENT_READY_TIMEOUT_S = 60.0  # the load client's imports and its first /healthz
EPOCH_LEAD_S = 0.3  # time 0 is set this far ahead, so that server, client and path all have it first
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class LabError(RuntimeError):
    pass


class _Interrupted(BaseException):
    """SIGTERM / SIGINT: unwinds through every finally (processes, qdiscs, namespaces)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# --------------------------------------------------------------------------- the path to play
def trace_schedule(trace_file: Path, duration_s: float, bin_s: float = TRACE_BIN_S) -> list[dict[str, float]]:
    """A Mahimahi trace as rate-schedule points every ``bin_s`` seconds, looped to cover ``duration_s``."""
    from scenarios.traces import load_mahimahi, rate_series_bps

    series = rate_series_bps(load_mahimahi(trace_file), bin_s)
    n = max(1, int(duration_s / bin_s) + 1)
    points: list[dict[str, float]] = []
    last = None
    for i in range(n):
        mbps = max(MIN_TRACE_RATE_MBPS, round(float(series[i % len(series)]) / 1e6, 4))
        if mbps != last:
            points.append({"at_s": round(i * bin_s, 6), "rate_mbps": mbps})
            last = mbps
    return points


def plan_path(loaded: Any, path: str, duration_s: float, backend: str) -> tuple[Any, list[str]]:
    """The PathSpec the lab plays and what it does not reproduce.

    ``backend`` ``tun``: the user-space link (:mod:`live.lab.tunlink`) plays the path as the simulator's
    link model does -- rate, schedule, trace, queue, delay, loss and every fault -- so the spec is
    used as it is. A qdisc backend (``netem``, ``fallback``) gets a trace as a rate schedule."""
    scn = loaded.scenario
    spec = scn.paths[path]
    notes: list[str] = []
    if backend != "tun" and spec.trace is not None:
        points = trace_schedule(loaded.trace_path(path), duration_s)
        notes.append(f"path {path}: trace {spec.trace} replayed as a tbf rate updated every "
                     f"{TRACE_BIN_S * 1000:.0f} ms (bins with no delivery opportunity get "
                     f"{MIN_TRACE_RATE_MBPS} Mbit/s; per-packet delivery timing is not kept)")
        spec = spec.model_copy(update={"trace": None, "rate_schedule": [_rate_point(p) for p in points]})
    if backend not in ("netem", "tun"):
        delays = [f for f in scn.faults_for(path) if f.kind == "delay"]
        notes.append(f"path {path}: rtt_ms={spec.rtt_ms:g} not applied" + (f", {len(delays)} delay fault(s) skipped"
                                                                          if delays else "")
                     + " — no sch_netem on this kernel, so no delaying qdisc; RTT = veth (~0.05 ms) + "
                     "queueing behind the rate limiter")
    if spec.cross_traffic is not None and backend != "tun":
        notes.append(f"path {path}: cross_traffic not generated by the lab with --link qdisc")
    if backend == "tun" and any(f.kind == "delay" and f.jitter_ms > 0 for f in scn.faults_for(path)):
        notes.append(f"path {path}: delay-fault jitter not applied (the link keeps delay constant, as the simulator)")
    return spec, notes


def _rate_point(p: dict[str, float]) -> Any:
    from scenarios.schema import RatePoint

    return RatePoint(**p)


def _lab_controllers(loaded: Any, requested: str | None, problems: Any,
                     scheduler_names: list[str] | None = None) -> tuple[list[str], list[str]]:
    """The entries to run (``--controllers`` or the scenario's, each plain one expanded per scheduler of
    ``--schedulers`` as :func:`scenarios.loader.expand_entries` does for the simulator) and the sim-only
    ones skipped. Malformed entries, unknown controllers or schedulers (with the closest known name),
    invalid parameters, or nothing left to run are added to ``problems`` (a live.argcheck.Problems)."""
    import controllers
    from scenarios.loader import entry_params, entry_params_key, expand_entries, key_text, split_entry

    scn = loaded.scenario
    names = ([c.strip() for c in requested.split(",") if c.strip()] if requested is not None
             else list(scn.controllers))
    out: list[str] = []
    skipped: list[str] = []
    for name in expand_entries(names, scheduler_names):
        where = "--controllers" if requested is not None else f"{loaded.path}: controllers.{key_text(name)}"
        if not problems.entry(where, name):
            continue
        controller = split_entry(name)[0]
        if controllers.get(controller).sim_only:
            skipped.append(name)
            continue
        key = entry_params_key(scn, name) or name
        for k, msg in controllers.validate_params(controller, entry_params(scn, name)):
            problems.add(f"{loaded.path}: controllers.{key_text(key)}.{key_text(k)}", msg)
        out.append(name)
    if not out and not problems:
        problems.add("--controllers" if requested is not None else "SCENARIO",
                     "no controller that can run live" + (f" ({', '.join(skipped)}: sim only)" if skipped else ""))
    return out, skipped


def entry_plan(loaded: Any, names: Sequence[str], schedulers: dict[str, str], seed: int = 0,
               out: Path = Path()) -> Any:
    """The simulator's plan of these entries (``sim.model.entries.Plan``: entry -> parameters and scheduler),
    whose ``scenario_for``, ``controller_of``, ``scheduler_of`` and ``entry_info`` the lab uses too, so
    that an entry runs on the same scheduler, with the same parameters, in the lab as in the simulator."""
    from scenarios.loader import entry_params
    from sim.model.entries import Plan

    return Plan(loaded, {n: dict(entry_params(loaded.scenario, n)) for n in names}, seed, out,
                {n: schedulers[n] for n in names})


def _check_congestion_control(cc: str) -> None:
    """The path's ``cc`` must be loaded for the server to set it on its sockets (loaded on demand)."""
    path = Path("/proc/sys/net/ipv4/tcp_available_congestion_control")
    if cc in path.read_text().split():
        return
    subprocess.run(["modprobe", f"tcp_{cc}"], capture_output=True, check=False)
    if cc not in path.read_text().split():
        raise LabError(f"congestion control {cc!r} is not available here (have: {path.read_text().strip()})")


# --------------------------------------------------------------------------- processes
def _wait_ready(ns_b: str, url: str, proc: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    """GET /healthz from the client's namespace until the server answers: what it runs (mode, controller,
    scheduler, for the log), and that the path carries its traffic (after its "ready" event it should answer
    at once)."""
    from live.kernel.netns import in_netns

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise LabError(f"server exited (rc={proc.returncode}) before it was ready: {err.strip()[-1500:]}")
        try:
            # the socket is created inside the block, in namespace b
            with in_netns(ns_b), urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
                return json.loads(resp.read())  # type: ignore[no-any-return]
        except OSError:
            time.sleep(0.3)
    raise LabError(f"server at {url} not ready after {timeout_s:g} s")


def _wait_event(proc: subprocess.Popen[str], event: str, timeout_s: float, what: str) -> dict[str, Any]:
    """:func:`live.lab.protocol.wait_event`, its failures as :class:`LabError`."""
    try:
        return wait_event(proc, event, timeout_s, what)
    except (TimeoutError, ProtocolError) as exc:
        raise LabError(str(exc)) from None


def _stop(proc: subprocess.Popen[str] | None, sig: int = signal.SIGINT, timeout_s: float = 15.0) -> None:
    """Ask a child's process group to stop (SIGINT: the server records and merges), then insist."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5.0)


def _tail(proc: subprocess.Popen[str]) -> str:
    try:
        out, err = proc.communicate(timeout=5)
    except (subprocess.TimeoutExpired, ValueError):
        return ""
    return ((out or "") + (err or "")).strip()


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM and SIGINT raise _Interrupted in the main thread while the lab runs."""
    fired: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if fired:  # a second signal must not break off the cleanup the first one started
            print(f"[lab] {signal.Signals(signum).name}: still cleaning up", file=sys.stderr, flush=True)
            return
        fired.append(signum)
        raise _Interrupted(signum)

    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in old:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------- the path's timeline
class _QdiscTimeline:
    """The path as qdiscs on the server's veth end: the fault player (netem, or tbf + tc-bpf)."""

    def __init__(self, pair: Any, faults: list[Any], base: Any, log: Callable[[str], None]) -> None:
        from live.kernel.faults import FaultPlayer

        trace_replay = base.rate_schedule is not None and len(base.rate_schedule) > 20

        def player_log(msg: str) -> None:
            if trace_replay and msg.startswith("[faults] t="):
                return  # 10 rate changes a second: not worth a line each
            log("      " + msg)

        self.player = FaultPlayer(pair.if_a, faults, netns=pair.ns_a, base=base, handle_signals=False,
                                  log=player_log)

    def prepare(self) -> None:
        """The slow part (backend checks, the tc-bpf dropper's compile and attach, the t=0 rate), done
        before the lab picks time 0: a compile of seconds after it would swallow the first faults."""
        self.player.prepare()

    def start(self, t0: float) -> None:
        self.player.t0_s = t0
        self.player.start()

    def summary(self) -> dict[str, Any]:
        passed, dropped = self.player.dropper_counters()
        late = self.player.late_steps
        return {"backend": self.player.backend, "load_s": round(self.player.elapsed_s(), 3),
                "prepare_s": round(self.player.prepare_s or 0.0, 3),
                "shape_changes": len(self.player.history), "late_steps": [[t, round(s, 3)] for t, s in late],
                "dropper_passed": passed, "dropper_dropped": dropped}

    def stop(self) -> None:
        self.player.stop()


class _TunTimeline:
    """The path as the user-space link between the namespaces (:mod:`live.lab.tunlink`)."""

    def __init__(self, pair: Any) -> None:
        self.link = pair.link

    def prepare(self) -> None:
        pass  # the link process is up (tun_pair) and waits for its clock: starting it is one message

    def start(self, t0: float) -> None:
        self.link.start_clock(t0)

    def summary(self) -> dict[str, Any]:
        stats = self.link.stats()
        down = stats.get("down", {})
        return {"backend": "tun", "load_s": round(time.monotonic() - (self.link.t0 or time.monotonic()), 3),
                "link_random_drops": down.get("random_drops"), "link_tail_drops": down.get("tail_drops"),
                "link": stats}

    def stop(self) -> None:
        pass  # the link goes with its namespaces (tun_pair)


# --------------------------------------------------------------------------- one controller
def _run_controller(pair: Any, timeline: Any, *, scenario_file: Path, controller: str, out: Path, port: int,
                    streams: int | None, time_limit_s: float, seed: int | None,
                    log: Callable[[str], None], cross: Sequence[tuple[str, Any]] = (),
                    cc: str | None = None, scheduler: str | None = None) -> dict[str, Any]:
    """One entry's run (``controller``: ``CONTROLLER`` or ``CONTROLLER@SCHEDULER``, its folder's name;
    ``scheduler``: the one its server's engine runs, None: the scenario's). ``cross``: (path, its
    ``CrossTraffic``) for each path with bulk cross traffic, generated by :mod:`live.lab.crosstraffic` on the
    same clock. ``cc``: the congestion control the server sets on its connections (None: the system default)."""
    from live.lab.crosstraffic import CrossTrafficError, cross_traffic

    url = f"http://{pair.addr_a}:{port}"
    t_start = time.monotonic()
    addrs = getattr(pair, "addrs_b", None) or {}
    flows = contextlib.ExitStack()  # the cross-traffic generators: closed (flows aborted) with the client
    generators: list[tuple[str, Any]] = []
    server_cmd = [PY, "-m", "live.lab.serve_child", "--scenario", str(scenario_file), "--controller",
                  controller, "--host", pair.addr_a, "--port", str(port), "--record", str(out), "--iface",
                  pair.if_a, "--duration", f"{time_limit_s + 60:g}"] + (["--tcp-congestion", cc] if cc else [])
    if scheduler is not None:
        server_cmd += ["--scheduler", scheduler]
    server = pair.popen("a", server_cmd, stdin=subprocess.PIPE)
    client: subprocess.Popen[str] | None = None
    try:
        # The path's slow set-up (compiling the dropper takes seconds here) while the server compiles
        # its probes, and in any case before time 0 is picked: at time 0 only cheap steps are left.
        timeline.prepare()
        for k, (path, spec) in enumerate(cross):
            try:
                generators.append((path, flows.enter_context(cross_traffic(
                    pair, spec, server_addr=pair.addr_a, client_addr=addrs.get(path, pair.addr_b),
                    port=CROSS_PORT + k))))
            except CrossTrafficError as exc:
                raise LabError(f"cross traffic on path {path}: {exc}") from None
        _wait_event(server, "ready", READY_TIMEOUT_S, "server")
        health = _wait_ready(pair.ns_b, url, server, READY_TIMEOUT_S)
        log(f"[lab]   server ready in {time.monotonic() - t_start:.1f} s ({health.get('mode')} mode, "
            f"controller {health.get('controller')}, scheduler {(health.get('engine') or {}).get('scheduler')})")
        client_cmd = [PY, "-m", "live", "client", url, "--scenario", str(scenario_file), "--out", str(out),
                      "--time-limit", f"{time_limit_s:g}", "--sync-stdin"]
        if streams is not None:
            client_cmd += ["--streams", str(streams)]
        if seed is not None:
            client_cmd += ["--seed", str(seed)]
        if len(addrs) > 1:  # each path its own client address: each request from its path's
            for path_name, addr in addrs.items():
                client_cmd += ["--bind", f"{path_name}={addr}"]
        client = pair.popen("b", client_cmd, stdin=subprocess.PIPE)
        _wait_event(client, "ready", CLIENT_READY_TIMEOUT_S, "load client")
        # One time 0 for the load's arrivals, the server's recording and the path's timeline (faults,
        # rate schedule, trace): a moment just ahead, so that all three are in place before it.
        t0 = time.monotonic() + EPOCH_LEAD_S
        for proc in (server, client):
            assert proc.stdin is not None
            send(proc.stdin, "t0", t0=t0)
            proc.stdin.close()  # EOF: their stdin readers end (asyncio waits for its executor's threads)
            proc.stdin = None  # communicate() must not flush it
        timeline.start(t0)
        for _, gen in generators:
            gen.start(t0)
        if time.monotonic() > t0:
            log(f"[lab]   LATE: time 0 passed {time.monotonic() - t0:.3f} s before the path and the cross "
                "traffic had it")
        try:
            c_out, c_err = client.communicate(timeout=time_limit_s + 60)
        except subprocess.TimeoutExpired:
            raise LabError(f"load client for {controller} did not finish within {time_limit_s + 60:g} s") from None
        if client.returncode != 0:
            raise LabError(f"load client for {controller} failed (rc={client.returncode}): {c_err.strip()[-1500:]}")
        path_summary = timeline.summary()
        try:
            said = [read_message(line) for line in (c_out or "").splitlines()]
        except ProtocolError as exc:
            raise LabError(f"load client for {controller}: {exc}") from None
        for msg in said:
            if msg is not None and msg.get("event") == "exit":
                log(f"[lab]   client: {msg.get('summary')}")
    finally:
        _stop(client, signal.SIGTERM)
        flows.close()
        _stop(server, signal.SIGINT)
        try:
            timeline.stop()
        except Exception as exc:  # reported, but the other controllers still run
            log(f"[lab]   path: {exc}")
    if server.returncode not in (0, -signal.SIGINT, 130):
        raise LabError(f"server for {controller} exited with rc={server.returncode}: {_tail(server)[-1500:]}")
    res = {"controller": controller, **({"scheduler": scheduler} if scheduler is not None else {}), "port": port,
           "wall_s": round(time.monotonic() - t_start, 3), **path_summary}
    if generators:
        res["cross_traffic"] = {path: gen.summary() for path, gen in generators}
        for path, summary in res["cross_traffic"].items():
            sent = summary.get("sender", {})
            log(f"[lab]   cross traffic on {path}: {len(sent.get('bytes_sent') or [])} flow(s), "
                f"{sum(sent.get('bytes_acked') or [0]) / 1e6:.1f} MB acked, {sent.get('cc')}")
    return res


# --------------------------------------------------------------------------- the lab
def entries_info(plan: Any) -> dict[str, Any]:
    """What run.json says of the entries, as ``python -m sim`` writes it (:func:`sim.runner.run_info`):
    the scenario file's resolved scenario, each entry's parameters, label and colour, and ``entries``
    (its controller and scheduler). The server children rewrite some of these keys; the lab puts them back."""
    from sim.model.entries import entry_info

    names = list(plan.controllers)
    return {"scenario": plan.loaded.resolved(), "controller_params": plan.controllers,
            "controller_info": {n: entry_info(plan, n) for n in names},
            "entries": {n: {"controller": plan.controller_of(n), "scheduler": plan.scheduler_of(n)} for n in names}}


def _start_run_json(out: Path, loaded: Any, names: list[str], seed: int, lab_info: dict[str, Any],
                    entries: dict[str, Any]) -> None:
    """run.json before the first entry starts: mode lab, the entries planned (``entries``: what
    :func:`entries_info` says of them), ``status`` running and none ``finished`` -- what a killed lab
    leaves (each server child adds its own details)."""
    from analysis.results import RUNNING, started_at, write_run_json

    scn = loaded.scenario
    write_run_json(out, {
        "mode": "lab", "scenario_file": str(loaded.path), "controllers": names, **entries,
        "seed": seed, "slo_qoe": scn.slo.qoe, "control_interval_s": scn.control_interval_s,
        "status": RUNNING, "finished": [], "lab": lab_info,
    }, started=started_at(out, keep=False))


def _controller_finished(out: Path, name: str, names: list[str], ran: list[str]) -> None:
    """A controller's run ended well (its server closed and merged its files): run.json lists it finished."""
    from analysis.results import fsync_files, in_order, update_run_json

    if (out / name).is_dir():
        fsync_files(out / name)
    update_run_json(out, {"finished": in_order(names, ran)})


def _finish(out: Path, ran: list[str], lab_info: dict[str, Any], log: Callable[[str], None],
            names: list[str] | None = None, interrupted: bool = False,
            entries: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Merge, then run.json: the controllers planned minus those that failed (named in ``lab.runs``),
    ``finished`` those that ran, ``status`` interrupted or -- once summary.json is written -- complete."""
    from analysis.metrics import summarize_run
    from analysis.results import (
        COMPLETE,
        INTERRUPTED,
        RUNNING,
        in_order,
        read_json,
        update_run_json,
        write_json_durably,
    )
    from live.recorder import merge_live_run

    merge_live_run(out)
    run_json = out / "run.json"
    if not run_json.is_file():
        return None
    info = read_json(run_json)
    failed = {r.get("controller") for r in lab_info.get("runs", []) if "error" in r}
    listed = [n for n in (names if names is not None else ran) if n not in failed]
    info["mode"] = "lab"
    info["controllers"] = listed
    if entries is not None:  # as planned (the servers wrote their own scenario, labels and parameters)
        info.update(entries)
    for key in ("controller_info", "controller_params", "entries"):
        if isinstance(info.get(key), dict):
            info[key] = {n: v for n, v in info[key].items() if n in listed}
    info["finished"] = in_order(listed, ran)
    info["status"] = INTERRUPTED if interrupted else RUNNING
    info["lab"] = lab_info
    write_json_durably(run_json, info)
    if not ran:
        if not interrupted:
            update_run_json(out, {"status": COMPLETE})
        return None
    summary = summarize_run(out)
    if not interrupted:
        update_run_json(out, {"status": COMPLETE})
    for name, m in summary["controllers"].items():
        log(f"[lab] {name:>10}: streams {m.get('streams')}, completed {m.get('completed')}, "
            f"qoe_mean {m.get('qoe_mean')}, stall_ratio {m.get('stall_ratio')}, waste_frac {m.get('waste_frac')}")
    return summary


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m live lab",
        description="Run a scenario on a private kernel network (two network namespaces joined by veth): for "
        "each entry (CONTROLLER or CONTROLLER@SCHEDULER), the paced server with eBPF telemetry in one namespace, "
        "the scenario's path shaped on its egress, the load client in the other. Writes DIR/run.json (mode lab), "
        "DIR/<entry>/, "
        "DIR/summary.json. Needs root.")
    p.add_argument("scenario", help="scenario file or built-in name")
    p.add_argument("--out", type=Path, required=True, help="results folder (new or empty)")
    p.add_argument("--controllers", help="comma-separated entries, CONTROLLER or CONTROLLER@SCHEDULER (default: "
                   "the scenario's)")
    p.add_argument("--scheduler", help="the scheduler plain entries run on (default: the scenario's "
                   "server.scheduler; its parameters when it is the same one, else the scheduler's defaults)")
    p.add_argument("--schedulers", help="comma-separated schedulers: each plain entry runs once per scheduler, as "
                   "CONTROLLER@SCHEDULER (as python -m sim --schedulers)")
    p.add_argument("--path", help="play only this one of the scenario's paths, every stream over it (default: "
                   "all paths, each stream over its own; with --link qdisc: the first)")
    p.add_argument("--streams", type=int, help="requests per controller (default: the scenario's)")
    p.add_argument("--time-limit", type=float, help="seconds of load per controller (default: scenario max, <= 600)")
    p.add_argument("--seed", type=int, help="client seed (default: the scenario's)")
    p.add_argument("--port", type=int, default=8000, help="server port of the first controller (then +1 each)")
    p.add_argument("--link", choices=("tun", "qdisc"), default="tun",
                   help="how the path is played: tun = a user-space link between the namespaces running the "
                   "simulator's link model (rate, schedule, trace, queue, delay, loss, every fault; default); "
                   "qdisc = qdiscs on a veth pair (netem, or tbf + tc-bpf where the kernel has no netem: no delay)")
    return p


MAX_TIME_LIMIT_S = 86_400.0  # a day: beyond it a trace schedule or a timer would not fit


@dataclass(frozen=True)
class LabPlan:
    """A lab run whose command line has been checked completely; nothing is created before ``run``."""

    args: argparse.Namespace
    loaded: Any
    scenario_file: Path
    path: str
    names: list[str]
    skipped: list[str]
    out: Path
    schedulers: dict[str, str] = field(default_factory=dict)  # entry -> the scheduler its server runs


def validate(argv: Sequence[str] | None = None) -> LabPlan:
    """Parse and check the command line, every problem named by its flag or file and key
    (a :class:`scenarios.cli_errors.BadInput`); reads files, creates nothing."""
    from live.argcheck import Problems
    from scenarios.loader import find_scenario, split_entry
    from sim.model import schedulers as sched_registry

    args = _parser().parse_args(argv)
    problems = Problems()
    problems.at_least("--streams", args.streams, 1)
    problems.positive_s("--time-limit", args.time_limit)
    if args.time_limit is not None and MAX_TIME_LIMIT_S < args.time_limit < math.inf:
        problems.add("--time-limit", f"at most {MAX_TIME_LIMIT_S:g} s, got {args.time_limit:g}")
    problems.at_least("--seed", args.seed, 0)
    problems.port("--port", args.port)
    problems.output_dir("--out", args.out, empty=True)
    loaded = problems.scenario("SCENARIO", args.scenario)
    if loaded is None:
        problems.raise_if_any()
        raise AssertionError("unreachable: a scenario that did not load has a problem")
    scn = loaded.scenario
    path = args.path or next(iter(scn.paths))
    if args.path is not None and path not in scn.paths:
        problems.add("--path", f"{path!r} is not one of the scenario's paths ({', '.join(scn.paths)})")
    sched_names = problems.scheduler_names("--schedulers", args.schedulers)
    default_sched = scn.server.scheduler.name
    if args.scheduler is not None:
        if args.schedulers is not None:
            problems.add("--scheduler", "has no effect with --schedulers (each plain entry runs on each of those); "
                         "give one of them")
        else:
            one = problems.scheduler_names("--scheduler", args.scheduler)
            if one is not None and len(one) > 1:
                problems.add("--scheduler", f"one scheduler (got {args.scheduler!r}; for several: --schedulers)")
            elif one is not None:
                default_sched = one[0]
    elif default_sched not in sched_registry.REGISTRY:
        problems.add(f"{loaded.path}: server.scheduler.name", str(sched_registry.UnknownScheduler(default_sched)))
    if default_sched == scn.server.scheduler.name:
        for key, msg in sched_registry.validate_params(default_sched, scn.server.scheduler.params):
            problems.add(f"{loaded.path}: server.scheduler.params.{key}", msg)
    names, skipped = _lab_controllers(loaded, args.controllers, problems, sched_names)
    if names and args.port + len(names) - 1 > 65535:
        problems.add("--port", f"{args.port} + {len(names) - 1} (one port per controller) is beyond 65535")
    problems.raise_if_any()
    used = {n: split_entry(n)[1] or default_sched for n in names}
    return LabPlan(args, loaded, Path(find_scenario(args.scenario)).resolve(), path, names, skipped,
                   args.out.resolve(), used)


def main(argv: list[str] | None = None) -> int:
    return run(validate(argv))


def run(plan: LabPlan) -> int:
    """Run the lab: needs root, namespaces, TUN, eBPF (each missing piece is a BadInput with its fix)."""
    from live.argcheck import environment_problems
    from scenarios.cli_errors import BadInput

    args, loaded, scenario_file, path, names, out = (plan.args, plan.loaded, plan.scenario_file, plan.path,
                                                      plan.names, plan.out)
    scn = loaded.scenario

    def log(msg: str) -> None:
        print(msg, flush=True)

    tools = ("ip", "nsenter") if args.link == "tun" else ("ip", "nsenter", "tc")
    missing = environment_problems(root=True, telemetry=True, tools=tools, tun=args.link == "tun")
    if missing:
        raise BadInput.many([("", f"the lab {m}" if m.startswith("needs root") else m) for _, m in missing])
    for name in plan.skipped:
        log(f"[lab] skipping {name}: sim-only (needs knowledge only the simulator has)")
    from live.kernel.faults import detect_backend
    from live.kernel.netns import veth_pair
    from live.lab.tunlink import tun_pair

    time_limit_s = args.time_limit if args.time_limit is not None else min(scn.max_duration_s, 600.0)
    backend = "tun" if args.link == "tun" else detect_backend()
    seed = args.seed if args.seed is not None else scn.seed
    # the paths played: every one on the user-space link (each stream over its own), else one
    played = [path] if args.path is not None or backend != "tun" else list(scn.paths)
    notes: list[str] = []
    if len(played) < len(scn.paths):
        notes.append(f"only path {path!r} is played: streams the scenario puts on "
                     f"{', '.join(p for p in scn.paths if p != path)} cross the same link")
    plays: list[Any] = []
    try:
        for name in played:
            spec, path_notes = plan_path(loaded, name, time_limit_s + 5, backend)
            notes += path_notes
            plays.append((name, spec))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    base = plays[0][1]
    stream_cc = base.cc
    try:
        _check_congestion_control(stream_cc)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    other_cc = sorted({spec.cc for _, spec in plays} - {stream_cc})
    if other_cc:
        notes.append(f"paths with cc {', '.join(other_cc)}: their streams run {stream_cc} (the server sets one cc "
                     "on all its connections)")
    cross = [(name, spec.cross_traffic) for name, spec in plays
             if spec.cross_traffic is not None and backend == "tun"]
    out.mkdir(parents=True, exist_ok=True)
    entries = entries_info(entry_plan(loaded, names, plan.schedulers, seed, out))
    log(f"[lab] scenario {scn.name}, path{'s' if len(played) > 1 else ''} {', '.join(played)}, controllers "
        f"{', '.join(f'{n} (scheduler {plan.schedulers[n]})' for n in names)}; played by {backend}; results in {out}")
    for note in notes:
        log(f"[lab] not reproduced: {note}")
    lab_info: dict[str, Any] = {"path": path, "paths": played, "backend": backend, "notes": notes, "cc": stream_cc,
                                "time_limit_s": time_limit_s, "streams": args.streams, "seed": seed, "runs": [],
                                "netns": []}
    faults = scn.faults_for(path)
    _start_run_json(out, loaded, names, seed, lab_info, entries)

    @contextlib.contextmanager
    def network() -> Iterator[tuple[Any, Callable[[Any], Any]]]:
        """The two hosts and how to play the path on them. The user-space link is made anew for each
        controller (the same losses, schedule and trace from time 0); the veth pair is shared."""
        if backend == "tun":
            from live.lab.tunlink import PathPlay

            link_paths = [PathPlay(name, spec, tuple(scn.faults_for(name)), list(scn.paths).index(name))
                          for name, spec in plays]
            with tun_pair(None, paths=link_paths, base_dir=loaded.base_dir, seed=seed) as pair:
                yield pair, lambda p: _TunTimeline(p)
        else:
            with veth_pair() as pair:
                yield pair, lambda p: _QdiscTimeline(p, faults, base, log)

    ran: list[str] = []
    rc = 0
    t0 = time.monotonic()
    try:
        with _signals_raise(), contextlib.ExitStack() as shared:
            shared_net = shared.enter_context(network()) if backend != "tun" else None
            for i, name in enumerate(names):
                with contextlib.ExitStack() as own:
                    pair, timeline_for = shared_net or own.enter_context(network())
                    if pair.ns_a not in lab_info["netns"]:
                        lab_info["netns"] += [pair.ns_a, pair.ns_b]
                    lab_info.update(iface=pair.if_a, server_addr=pair.addr_a, client_addr=pair.addr_b,
                                    client_addrs=getattr(pair, "addrs_b", None) or {path: pair.addr_b})
                    log(f"[lab] ({i + 1}/{len(names)}) {name}: server in {pair.ns_a}, load client in {pair.ns_b}")
                    try:
                        res = _run_controller(pair, timeline_for(pair), scenario_file=scenario_file, controller=name,
                                              cross=cross, cc=stream_cc, scheduler=plan.schedulers.get(name),
                                              out=out, port=args.port + i, streams=args.streams,
                                              time_limit_s=time_limit_s, seed=args.seed, log=log)
                    except LabError as exc:
                        log(f"[lab] ({i + 1}/{len(names)}) {name} FAILED: {exc}")
                        lab_info["runs"].append({"controller": name, "error": str(exc)})
                        rc = 1
                        continue
                ran.append(name)
                _controller_finished(out, name, names, ran)
                lab_info["runs"].append(res)
                log(f"[lab] ({i + 1}/{len(names)}) {name} done in {res['wall_s']:.1f} s")
    except _Interrupted as exc:
        log(f"[lab] interrupted by {exc}: cleaned up; keeping what finished ({', '.join(ran) or 'nothing'})")
        rc = EXIT_INTERRUPTED
    except BaseException:  # run.json must not keep saying running after the lab has stopped
        from analysis.results import INTERRUPTED, in_order, update_run_json

        update_run_json(out, {"status": INTERRUPTED, "finished": in_order(names, ran)})
        raise
    lab_info["wall_s"] = round(time.monotonic() - t0, 3)
    summary = _finish(out, ran, lab_info, log, names=names, interrupted=rc == EXIT_INTERRUPTED, entries=entries)
    if summary is not None:
        log(f"[lab] wrote {out}/run.json (mode lab) and summary.json in {lab_info['wall_s']:.1f} s "
            f"(plots: python -m analysis {out})")
    return rc


if __name__ == "__main__":
    from scenarios.cli_errors import run_cli

    raise SystemExit(run_cli(main, sys.argv[1:], "python -m live lab"))
