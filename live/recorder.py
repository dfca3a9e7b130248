"""A live run in the results layout of DESIGN.md, so ``python -m analysis DIR`` reads it like a simulation.

Two processes see a live stream: the server (when a token was generated, sent, acked) and the load
client (when it arrived and was displayed). Each writes its own half as it goes, through the one
writer of the results format, :class:`analysis.results.RunRecorder` (the rows of a simulation, rows
reaching the disk in small batches)::

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

run.json also says whether the recording is whole (:mod:`analysis.results.run_json`): ``status``
``running`` from the start (a killed server leaves it), the controller in ``finished`` once the server
closed its files and merged them (``status`` ``complete``), and ``interrupted`` when Ctrl-C or SIGTERM
stopped the server (``python -m live`` writes it: the files are still closed and merged, up to that
moment). In a lab's folder (run.json ``mode`` ``lab``) the lab keeps both keys itself. Rows reach the
disk at least every :data:`FLUSH_INTERVAL_S`, so a SIGKILL loses at most that much.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.results import (
    COMPLETE,
    INTERRUPTED,
    RUNNING,
    STREAMS_COLUMNS,
    STREAMS_DECIMALS,
    TOKENS_COLUMNS,
    TOKENS_DECIMALS,
    CsvRecorder,
    ResultsFormatError,
    RunRecorder,
    SequenceTrace,
    fsync_files,
    in_order,
    name_list,
    read_csv,
    read_json,
    read_run_json,
    run_json,
    streams_row,
    write_json_durably,
)

if TYPE_CHECKING:
    from live.serve.pacing import PacedStream

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
SERVER_FILES = ("server.csv", "events.csv", "memory_events.csv", "telemetry.csv", "tokens.csv", "streams.csv")
FLUSH_INTERVAL_S = 0.2  # the server's rows are handed to the OS at least this often (besides every N rows)


def boot_id() -> str:
    """This kernel boot's id: two processes with the same one share CLOCK_MONOTONIC."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return f"{socket.gethostname()}-unknown"


def write_run_json(run_dir: Path | str, *, controller: str, params: Mapping[str, Any] | None = None,
                   scenario: Mapping[str, Any] | None = None, slo_qoe: float | None = None,
                   control_interval_s: float | None = None, seed: int | None = None,
                   live: Mapping[str, Any] | None = None) -> Path:
    """Write (or extend) DIR/run.json for a live run. A second controller run into the same folder
    is added to ``controllers``; everything else already there is kept, ``started_at`` included.

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
        "live": {**(info.get("live") or {}), **dict(live or {})},
    }
    if lab:
        merged["mode"] = "lab"
    else:
        merged["status"] = RUNNING
        merged["finished"] = in_order(names, [n for n in name_list(info.get("finished")) if n != controller])
    for key, value in info.items():  # keep what others wrote (the lab's fault timeline, say)
        merged.setdefault(key, value)
    return run_json.write_run_json(run_dir, merged, started=run_json.started_at(run_dir, keep=True))


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
class LiveRecorder(RunRecorder):
    """The server's files for one controller (the writer with times since ``t0``, rows on disk at least
    every :data:`FLUSH_INTERVAL_S`); also the engine's log (sim.model.serving.NodeLog)."""

    def __init__(self, run_dir: Path | str, controller: str, t0: float, *, kv_tokens: int,
                 ttft_expected_s: float = 1.0, flush_every: int = 64) -> None:
        self.run_dir = Path(run_dir)
        self.controller = controller
        super().__init__(self.run_dir / controller, SERVER_FILES, kv_tokens=kv_tokens, t0=t0,
                         rename={"tokens.csv": SERVER_TOKENS, "streams.csv": SERVER_STREAMS}, block_rows=flush_every,
                         flush_interval_s=FLUSH_INTERVAL_S, stream_at_once=True)
        self.ttft_expected_s = ttft_expected_s

    def server_stream(self, s: PacedStream) -> None:
        """A retired stream as the server saw it: when each token was generated, sent and acked. Its rows
        are on disk when this returns (a merge may come any time)."""
        self.write_stream(
            stream_id=s.stream_id, path=s.path, arrival_s=s.arrival_s, prompt_tokens=s.prompt_tokens,
            output_tokens=s.output_tokens, reading_tps=s.reading_tps, ttft_expected_s=self.ttft_expected_s,
            outcome=s.outcome or "cancelled", token_rows=s.generated, t_generated=s.t_generated, t_sent=s.t_sent,
            t_acked=s.t_acked, generated=s.generated, end_s=s.end_s)

    def close(self, seqs: Iterable[SequenceTrace] | None = None, *, merge: bool = True) -> None:
        """Close the files (and merge the halves); then run.json lists the controller as finished."""
        if self.closed:
            return
        super().close()
        if seqs is not None:
            self.request_traces(seqs)
        if merge:
            merge_live_run(self.run_dir)
            fsync_files(self.dir)
            _mark_closed(self.run_dir, self.controller)


# --------------------------------------------------------------------------- the client's half
class ClientRecorder(RunRecorder):
    """The load client's files for one controller (tokens it received, streams as the reader saw them)."""

    def __init__(self, run_dir: Path | str, controller: str, flush_every: int = 512) -> None:
        super().__init__(Path(run_dir) / controller, ("tokens.csv", "streams.csv"),
                         rename={"tokens.csv": CLIENT_TOKENS, "streams.csv": CLIENT_STREAMS}, block_rows=flush_every,
                         stream_at_once=True)

    def stream(self, *, stream_id: str, path: str, arrival_s: float, prompt_tokens: int, output_tokens: int,
               reading_tps: float, patience_s: float, ttft_expected_s: float, outcome: str, stall_s: float,
               end_s: float | None, t_received: list[float], t_displayed: list[float]) -> float:
        """Write one stream (its received tokens, then its row); returns its QoE."""
        n = len(t_received)
        qoe = self.write_stream(
            stream_id=stream_id, path=path, arrival_s=arrival_s, prompt_tokens=prompt_tokens,
            output_tokens=output_tokens, reading_tps=reading_tps, ttft_expected_s=ttft_expected_s, outcome=outcome,
            token_rows=n, t_received=t_received, t_displayed=t_displayed, displayed=n, stall_s=stall_s,
            patience_s=patience_s, end_s=end_s)
        assert qoe is not None  # the reader's side is known
        return qoe


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
    keys = sorted(tokens, key=lambda k: (rank[k[0]], k[1]))
    token_rows = [(sid, idx, *(_num(tokens[(sid, idx)].get(c)) for c in TOKENS_COLUMNS[2:])) for sid, idx in keys]
    stream_rows = []
    for sid in order:
        r = rows[sid]
        srv = server_by_id.get(sid)
        displayed = _int(r.get("displayed_tokens")) or 0
        generated = _int(srv["generated_tokens"]) if srv is not None else None
        if generated is None:
            generated = per_stream_tokens.get(sid, displayed)
        out_tokens = _int(r.get("output_tokens")) or (_int(srv["output_tokens"]) if srv is not None else 1) or 1
        stream_rows.append(streams_row(
            stream_id=sid, path=str(r.get("path") or "live"), arrival_s=_num(r.get("arrival")),
            prompt_tokens=_int(r.get("prompt_tokens")), output_tokens=max(1, out_tokens), ttft_s=_num(r.get("ttft_s")),
            stall_s=_num(r.get("stall_s")), qoe=_num(r.get("qoe")), outcome=str(r.get("outcome") or "cancelled"),
            wasted_tokens=max(0, generated - displayed), reading_tps=_num(r.get("reading_tps")),
            patience_s=_num(r.get("patience_s")), ttft_expected_s=_num(r.get("ttft_expected_s")),
            end_s=_num(r.get("end_s")), generated_tokens=generated, displayed_tokens=displayed))
    for tmp, columns, decimals, table in ((tmp_tokens, TOKENS_COLUMNS, TOKENS_DECIMALS, token_rows),
                                          (tmp_streams, STREAMS_COLUMNS, STREAMS_DECIMALS, stream_rows)):
        with CsvRecorder(tmp, columns) as out:
            if table:
                out.write_columns(list(zip(*table, strict=True)), decimals)
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
