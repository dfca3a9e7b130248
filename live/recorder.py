"""A live run in the results layout of DESIGN.md, so ``python -m analysis DIR`` reads it like a simulation.

Two processes see a live stream: the server (when a token was generated, sent, acked) and the load
client (when it arrived and was displayed). Each writes its own half as it goes, with
:class:`analysis.results.CsvRecorder` (rows reach the disk in small batches)::

    DIR/run.json                           mode "live", scenario, controllers, clock origin
    DIR/<controller>/server.csv            one row per engine step (seed 002's columns)
    DIR/<controller>/events.csv, memory_events.csv, request_traces.csv   the engine's detail
    DIR/<controller>/telemetry.csv         one row per stream per control interval
    DIR/<controller>/server_tokens.csv     tokens.csv columns, server half (t_generated, t_sent, t_acked)
    DIR/<controller>/server_streams.csv    streams.csv columns the server knows
    DIR/<controller>/client_tokens.csv     tokens.csv columns, client half (t_received, t_displayed)
    DIR/<controller>/client_streams.csv    streams.csv columns the client knows

and :func:`merge_live_run` joins the halves on (stream_id, idx) into ``tokens.csv`` and
``streams.csv``. It is idempotent: the server merges when it shuts down, the load client when it
finishes; the later merge wins. When a client half exists, streams the load client did not make
(other callers of the server) are left out of the merged files.

Times are seconds since the server's clock origin ``t0`` (``time.monotonic()`` when the server
started, written to run.json as ``t0_monotonic``); the client maps its own clock onto it.

run.json also says whether the recording is whole (:mod:`sim.record`): ``status`` ``running`` from the
start (a killed server leaves it), the controller in ``finished`` once the server closed its files and
merged them (``status`` ``complete``), and ``interrupted`` when Ctrl-C or SIGTERM stopped the server
(``python -m live`` writes it: the files are still closed and merged, up to that moment). In a lab's
folder (run.json ``mode`` ``lab``) the lab keeps both keys itself. Rows reach the disk at least every
:data:`FLUSH_INTERVAL_S`, so a SIGKILL loses at most that much.
"""

from __future__ import annotations

import math
import os
import platform
import re
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.qoe import andes_qoe
from analysis.results import (
    EVENTS_COLUMNS,
    MEMORY_EVENTS_COLUMNS,
    REQUEST_TRACES_COLUMNS,
    SERVER_COLUMNS,
    STREAMS_COLUMNS,
    TELEMETRY_COLUMNS,
    TOKENS_COLUMNS,
    CsvRecorder,
    ResultsFormatError,
    read_csv,
    read_json,
)
from controllers import Observation
from sim.record import (
    COMPLETE,
    INTERRUPTED,
    RUNNING,
    fsync_files,
    in_order,
    name_list,
    read_run_json,
    write_json_durably,
)

if TYPE_CHECKING:
    from live.pacing import PacedStream
    from sim.model.serving import Sequence

__all__ = [
    "CLIENT_STREAMS",
    "CLIENT_TOKENS",
    "SERVER_STREAMS",
    "SERVER_TOKENS",
    "ClientRecorder",
    "LiveRecorder",
    "boot_id",
    "mark_interrupted",
    "merge_live_run",
    "write_run_json",
]

SERVER_TOKENS, SERVER_STREAMS = "server_tokens.csv", "server_streams.csv"
CLIENT_TOKENS, CLIENT_STREAMS = "client_tokens.csv", "client_streams.csv"
_TRANSFER_EVENTS = frozenset(("swap_out", "swap_in"))
_TRANSFER = re.compile(r"( B (?:to|from) host )(-?\d+(?:\.\d+)?)-(-?\d+(?:\.\d+)?)$")
FLUSH_INTERVAL_S = 0.2  # the server's rows are handed to the OS at least this often (besides every N rows)


def _t(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, 6)


def boot_id() -> str:
    """This kernel boot's id: two processes with the same one share CLOCK_MONOTONIC."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return f"{socket.gethostname()}-unknown"


def _git_rev() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False).stdout.strip()
        return out or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("tokenpace", "aiohttp", "numpy", "pydantic", "prometheus-client"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_run_json(run_dir: Path | str, *, controller: str, params: Mapping[str, Any] | None = None,
                   scenario: Mapping[str, Any] | None = None, slo_qoe: float | None = None,
                   control_interval_s: float | None = None, seed: int | None = None,
                   live: Mapping[str, Any] | None = None) -> Path:
    """Write (or extend) DIR/run.json for a live run. A second controller run into the same folder
    is added to ``controllers``; everything else already there is kept.

    The recording of ``controller`` is starting (again): ``status`` becomes ``running`` and it leaves
    ``finished``. In a lab's folder (``mode`` ``lab``) mode, status and finished are the lab's and stay."""
    import controllers as ctrl_pkg  # the registry's display info goes into run.json (Pantheon's way)

    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    info: dict[str, Any] = {}
    if path.is_file():
        try:
            info = read_json(path)
        except ResultsFormatError:
            info = {}
    if info.get("mode") not in (None, "live", "lab"):
        raise ValueError(f"{path}: a {info.get('mode')!r} run, not a live one")
    lab = info.get("mode") == "lab"
    names = name_list(info.get("controllers"))
    if controller not in names:
        names.append(controller)
    display = ctrl_pkg.display_info()
    merged: dict[str, Any] = {
        "mode": "live",
        "scenario": dict(scenario) if scenario is not None else info.get("scenario") or {"name": "live"},
        "controllers": names,
        "controller_params": {**(info.get("controller_params") or {}), controller: dict(params or {})},
        "controller_info": {n: display.get(n, {"label": n, "color": "#333333"}) for n in names},
        "seed": seed if seed is not None else info.get("seed"),
        "slo_qoe": slo_qoe if slo_qoe is not None else info.get("slo_qoe", 0.9),
        "control_interval_s": control_interval_s if control_interval_s is not None else info.get("control_interval_s"),
        "versions": _versions(),
        "git_rev": _git_rev(),
        "live": {**(info.get("live") or {}), **dict(live or {})},
    }
    if lab:
        merged["mode"] = "lab"
    else:
        merged["status"] = RUNNING
        merged["finished"] = in_order(names, [n for n in name_list(info.get("finished")) if n != controller])
    for key, value in info.items():  # keep what others wrote (the lab's fault timeline, say)
        merged.setdefault(key, value)
    return write_json_durably(path, merged)


def _mark_closed(run_dir: Path, controller: str) -> None:
    """The server closed and merged ``controller``'s files: it is finished (not in a lab's folder,
    whose run.json the lab keeps); the run is complete once every listed controller is."""
    info = read_run_json(run_dir)
    if info is None or info.get("mode") == "lab":
        return
    names = name_list(info.get("controllers"))
    finished = in_order(names, [*name_list(info.get("finished")), controller])
    info["finished"] = finished
    info["status"] = COMPLETE if all(n in finished for n in names) else RUNNING
    write_json_durably(run_dir / "run.json", info)


def mark_interrupted(run_dir: Path | str) -> None:
    """Ctrl-C or SIGTERM stopped the recording into ``run_dir``: run.json says so (``finished`` stays
    as the server's close left it). Nothing happens without a run.json, or in a lab's folder."""
    info = read_run_json(run_dir)
    if info is None or info.get("mode") == "lab":
        return
    info["status"] = INTERRUPTED
    write_json_durably(Path(run_dir) / "run.json", info)


# --------------------------------------------------------------------------- the server's half
class LiveRecorder:
    """The server's files for one controller; also the engine's log (sim.model.serving.NodeLog)."""

    def __init__(self, run_dir: Path | str, controller: str, t0: float, *, kv_tokens: int,
                 ttft_expected_s: float = 1.0, flush_every: int = 64) -> None:
        self.run_dir = Path(run_dir)
        self.controller = controller
        self.dir = self.run_dir / controller
        self.dir.mkdir(parents=True, exist_ok=True)
        self.t0 = t0
        self.kv_tokens = kv_tokens
        self.ttft_expected_s = ttft_expected_s
        d = self.dir
        self._server = CsvRecorder(d / "server.csv", SERVER_COLUMNS, flush_every=flush_every)
        self._events = CsvRecorder(d / "events.csv", EVENTS_COLUMNS, flush_every=flush_every)
        self._memory = CsvRecorder(d / "memory_events.csv", MEMORY_EVENTS_COLUMNS, flush_every=flush_every)
        self._telemetry = CsvRecorder(d / "telemetry.csv", TELEMETRY_COLUMNS, flush_every=flush_every)
        self._tokens = CsvRecorder(d / SERVER_TOKENS, TOKENS_COLUMNS, flush_every=flush_every * 8)
        self._streams = CsvRecorder(d / SERVER_STREAMS, STREAMS_COLUMNS, flush_every=1)
        self.streams_written = 0
        self.closed = False
        self._flushed_at = time.monotonic()

    def _maybe_flush(self) -> None:
        """Hand every buffered row to the OS if the last time was FLUSH_INTERVAL_S ago: a killed server
        loses at most that much (measured: a few microseconds a call, one flush per interval)."""
        now = time.monotonic()
        if now - self._flushed_at >= FLUSH_INTERVAL_S:
            self._flushed_at = now
            self.flush()

    def rel(self, t: float | None) -> float | None:
        return None if t is None else round(t - self.t0, 6)

    # ------------------------------------------------------------------ the engine's log
    def step(self, t: float, batch_id: int, batch_size: int, batch_tokens: int, duration_s: float,
             waiting: int, running: int, swapped: int, completed: int, kv_used: int) -> None:
        self._server.write((self.rel(t), batch_id, batch_size, batch_tokens, round(duration_s, 6), waiting, running,
                            swapped, completed, kv_used, round(kv_used / self.kv_tokens, 6)))
        self._maybe_flush()

    def event(self, t: float, kind: str, req_id: str, details: str = "") -> None:
        if kind in _TRANSFER_EVENTS:
            details = self._relative_transfer(details)
        self._events.write((self.rel(t), kind, req_id, details))

    def _relative_transfer(self, details: str) -> str:
        """A swap's host-link interval (``... N B to host START-END``, the engine's clock) on the
        recording's clock, as every other time in these files."""
        m = _TRANSFER.search(details)
        if m is None:
            return details
        start, end = (float(x) - self.t0 for x in m.group(2, 3))
        return f"{details[:m.start()]}{m.group(1)}{start:.6f}-{end:.6f}"

    def memory(self, t: float, kind: str, req_id: str, before: int, after: int, reason: str) -> None:
        self._memory.write((self.rel(t), kind, req_id, before, after, reason))

    # ------------------------------------------------------------------ control samples and streams
    def telemetry(self, o: Observation, rate_tps: float | None) -> None:
        self._telemetry.write((
            self.rel(o.t_s), o.stream_id, _t(o.srtt_ms), _t(o.rtt_min_ms), _t(o.rtt_p95_ms), o.retrans, o.cwnd_pkts,
            o.inflight_bytes, o.queued_bytes, o.acked_tokens, o.generated_tokens, round(o.reading_tps, 6),
            round(o.client_buffer_est, 4), _t(rate_tps),
        ))
        self._maybe_flush()

    def server_stream(self, s: PacedStream) -> None:
        sid = s.stream_id
        for i in range(s.generated):
            self._tokens.write((
                sid, i, self.rel(s.t_generated[i]),
                self.rel(s.t_sent[i]) if i < len(s.t_sent) else None,
                self.rel(s.t_acked[i]) if i < len(s.t_acked) else None,
                None, None,
            ))
        self._streams.write((
            sid, s.path, self.rel(s.arrival_s), s.prompt_tokens, s.output_tokens, None, None, None,
            s.outcome or "cancelled", None, round(s.reading_tps, 6), None, self.ttft_expected_s,
            self.rel(s.end_s), s.generated, None,
        ))
        self._tokens.flush()  # a stream's rows are on disk once it is retired (a merge may come any time)
        self.streams_written += 1

    def request_traces(self, seqs: Iterable[Sequence]) -> None:
        with CsvRecorder(self.dir / "request_traces.csv", REQUEST_TRACES_COLUMNS) as f:
            for q in seqs:
                done = q.done_s if q.state == "finished" else None
                first = q.first_running_s
                f.write((q.req_id, self.rel(q.arrival_s), q.prompt_tokens, q.output_tokens, self.rel(done),
                         self.rel(first), None if first is None else round(first - q.arrival_s, 6),
                         round(q.exec_s, 6), q.swap_count, None if done is None else round(done - q.arrival_s, 6)))

    def flush(self) -> None:
        for f in (self._server, self._events, self._memory, self._telemetry, self._tokens, self._streams):
            f.flush()

    def close(self, seqs: Iterable[Sequence] | None = None, *, merge: bool = True) -> None:
        """Close the files (and merge the halves); then run.json lists the controller as finished."""
        if self.closed:
            return
        self.closed = True
        for f in (self._server, self._events, self._memory, self._telemetry, self._tokens, self._streams):
            f.close()
        if seqs is not None:
            self.request_traces(seqs)
        if merge:
            merge_live_run(self.run_dir)
            fsync_files(self.dir)
            _mark_closed(self.run_dir, self.controller)


# --------------------------------------------------------------------------- the client's half
class ClientRecorder:
    """The load client's files for one controller (tokens it received, streams as the reader saw them)."""

    def __init__(self, run_dir: Path | str, controller: str, flush_every: int = 512) -> None:
        self.dir = Path(run_dir) / controller
        self.dir.mkdir(parents=True, exist_ok=True)
        self._tokens = CsvRecorder(self.dir / CLIENT_TOKENS, TOKENS_COLUMNS, flush_every=flush_every)
        self._streams = CsvRecorder(self.dir / CLIENT_STREAMS, STREAMS_COLUMNS, flush_every=1)

    def stream(self, *, stream_id: str, path: str, arrival_s: float, prompt_tokens: int, output_tokens: int,
               reading_tps: float, patience_s: float, ttft_expected_s: float, outcome: str, stall_s: float,
               end_s: float | None, t_received: list[float], t_displayed: list[float]) -> float:
        """Write one stream (its received tokens and its row); returns its QoE."""
        n = len(t_received)
        for i in range(n):
            self._tokens.write((stream_id, i, None, None, None, _t(t_received[i]), _t(t_displayed[i])))
        displayed = list(t_displayed[:n])
        qoe = andes_qoe(arrival_s, ttft_expected_s, reading_tps, max(1, output_tokens), displayed)
        ttft = displayed[0] - arrival_s if displayed else None
        self._tokens.flush()  # a stream's tokens reach the disk before its row does
        self._streams.write((
            stream_id, path, round(arrival_s, 6), prompt_tokens, output_tokens, _t(ttft), round(stall_s, 6),
            round(qoe, 6), outcome, None, round(reading_tps, 6), round(patience_s, 6), ttft_expected_s, _t(end_s),
            None, n,
        ))
        return qoe

    def close(self) -> None:
        self._tokens.close()
        self._streams.close()


# --------------------------------------------------------------------------- joining the halves
def _rows(table: Any, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    cols = [table[c] for c in columns]
    return [{c: v[i] for c, v in zip(columns, cols, strict=True)} for i in range(len(table))]


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _int(x: Any) -> int | None:
    v = _num(x)
    return None if v is None else round(v)


def _read(path: Path, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return _rows(read_csv(path, columns), columns)


def merge_controller_dir(ctrl_dir: Path | str) -> bool:
    """Join one controller folder's halves into tokens.csv and streams.csv; False when there is nothing."""
    d = Path(ctrl_dir)
    s_tokens = _read(d / SERVER_TOKENS, TOKENS_COLUMNS)
    s_streams = _read(d / SERVER_STREAMS, STREAMS_COLUMNS)
    c_tokens = _read(d / CLIENT_TOKENS, TOKENS_COLUMNS)
    c_streams = _read(d / CLIENT_STREAMS, STREAMS_COLUMNS)
    have_client = (d / CLIENT_STREAMS).is_file()
    if not (d / SERVER_STREAMS).is_file() and not have_client:
        return False
    server_by_id = {str(r["stream_id"]): r for r in s_streams}
    order: list[str] = []
    rows: dict[str, dict[str, Any]] = {}
    for r in c_streams:
        sid = str(r["stream_id"])
        if sid in rows:
            continue
        order.append(sid)
        rows[sid] = dict(r)
    if not have_client:
        for r in s_streams:
            sid = str(r["stream_id"])
            if sid not in rows:
                order.append(sid)
                rows[sid] = dict(r)
                rows[sid]["displayed_tokens"] = 0.0
    keep = set(order)
    tokens: dict[tuple[str, int], dict[str, Any]] = {}
    for r in s_tokens:
        sid = str(r["stream_id"])
        if sid in keep:
            tokens[(sid, int(r["idx"]))] = {"t_generated": r["t_generated"], "t_sent": r["t_sent"],
                                            "t_acked": r["t_acked"]}
    for r in c_tokens:
        sid = str(r["stream_id"])
        if sid in keep:
            tokens.setdefault((sid, int(r["idx"])), {}).update(t_received=r["t_received"], t_displayed=r["t_displayed"])
    per_stream_tokens: dict[str, int] = {}
    for sid, _idx in tokens:
        per_stream_tokens[sid] = per_stream_tokens.get(sid, 0) + 1
    rank = {sid: k for k, sid in enumerate(order)}
    tmp_tokens = d / f".tokens.csv.tmp{os.getpid()}"  # server and client may merge at the same moment
    tmp_streams = d / f".streams.csv.tmp{os.getpid()}"
    with CsvRecorder(tmp_tokens, TOKENS_COLUMNS, flush_every=4096) as out:
        for (sid, idx) in sorted(tokens, key=lambda k: (rank[k[0]], k[1])):
            v = tokens[(sid, idx)]
            out.write((sid, idx, *(_t(_num(v.get(c))) for c in TOKENS_COLUMNS[2:])))
    with CsvRecorder(tmp_streams, STREAMS_COLUMNS, flush_every=4096) as out:
        for sid in order:
            r = rows[sid]
            srv = server_by_id.get(sid)
            displayed = _int(r.get("displayed_tokens")) or 0
            generated = _int(srv["generated_tokens"]) if srv is not None else None
            if generated is None:
                generated = per_stream_tokens.get(sid, displayed)
            out_tokens = _int(r.get("output_tokens")) or (_int(srv["output_tokens"]) if srv is not None else 1) or 1
            outcome = str(r.get("outcome") or "cancelled")
            out.write((
                sid, str(r.get("path") or "live"), _t(_num(r.get("arrival"))), _int(r.get("prompt_tokens")),
                max(1, out_tokens), _t(_num(r.get("ttft_s"))), _t(_num(r.get("stall_s"))),
                _t(_num(r.get("qoe"))), outcome, max(0, generated - displayed), _t(_num(r.get("reading_tps"))),
                _t(_num(r.get("patience_s"))), _t(_num(r.get("ttft_expected_s"))), _t(_num(r.get("end_s"))),
                generated, displayed,
            ))
    os.replace(tmp_tokens, d / "tokens.csv")
    os.replace(tmp_streams, d / "streams.csv")
    return True


def merge_live_run(run_dir: Path | str) -> list[str]:
    """Merge every controller folder of a live run; returns the controllers merged."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    done = []
    for sub in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        if merge_controller_dir(sub):
            done.append(sub.name)
    return done
