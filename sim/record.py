"""Writes one controller's run in the results layout (DESIGN.md) as the simulation goes.

Implements the node's log (server.csv, events.csv, memory_events.csv) and takes telemetry,
link samples and finished streams (tokens.csv, streams.csv). Analysis reads these files and
nothing else.

With ``server.replicas`` N > 1 each replica logs through its own :class:`ReplicaLog`: its steps go to
``replicas.csv`` (server.csv's columns after a ``replica`` column, 0 to N-1; each replica numbers its
own batches) and there is no server.csv, whose rows describe one node; events and memory events of
every replica share events.csv and memory_events.csv (request ids are unique). With N = 1 the files
are exactly what they were before replicas existed.

Also the run's honesty about itself: run.json's ``status`` (``running`` from the start, so a killed
run keeps it; ``interrupted`` after Ctrl-C or SIGTERM; ``complete`` once every controller finished
and summary.json is written) and ``finished`` (the controllers whose files are complete, flushed and
closed), rewritten atomically as each controller ends -- shared by ``python -m sim``, ``python -m
live --record`` and the lab, so nothing here imports SimPy.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.qoe import andes_qoe
from analysis.results import (
    EVENTS_COLUMNS,
    LINKS_COLUMNS,
    MEMORY_EVENTS_COLUMNS,
    REQUEST_TRACES_COLUMNS,
    SERVER_COLUMNS,
    STREAMS_COLUMNS,
    TELEMETRY_COLUMNS,
    TOKENS_COLUMNS,
    CsvRecorder,
    to_jsonable,
)
from controllers import Observation

if TYPE_CHECKING:
    from sim.model.serving import Sequence
    from sim.stream import SimStream

# The big files (a row per token, per stream per control interval, per decode step, per path per
# interval) are collected column-wise and formatted a block at a time with numpy
# (`CsvRecorder.write_columns`): formatting cell by cell in Python was most of a run's time. The text
# is the same; a crash loses at most the rows of the unfinished block.
BLOCK_ROWS = 4096

# Decimals per column of those files (None: written as is). Times are kept to 1 us.
_TOKENS_DECIMALS = (None, None, 6, 6, 6, 6, 6)
_TELEMETRY_DECIMALS = (6, None, 6, 6, 6, None, None, None, None, None, None, 6, 4, 6)
_SERVER_DECIMALS = (6, None, None, None, 6, None, None, None, None, None, 6)
_LINKS_DECIMALS = (6, None, 1, None)
REPLICAS_CSV = "replicas.csv"
REPLICAS_COLUMNS: tuple[str, ...] = ("replica", *SERVER_COLUMNS)
_REPLICAS_DECIMALS = (None, *_SERVER_DECIMALS)


def _t(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else round(x, 6)


class Recorder:
    def __init__(self, out_dir: Path, ttft_expected_s: float, kv_tokens: int, replicas: int = 1) -> None:
        self.dir = out_dir
        self.ttft_expected_s = ttft_expected_s
        self._kv_total = kv_tokens
        self._files = {
            "tokens": CsvRecorder(out_dir / "tokens.csv", TOKENS_COLUMNS),
            "streams": CsvRecorder(out_dir / "streams.csv", STREAMS_COLUMNS),
            "telemetry": CsvRecorder(out_dir / "telemetry.csv", TELEMETRY_COLUMNS),
            "server": (CsvRecorder(out_dir / "server.csv", SERVER_COLUMNS) if replicas == 1
                       else CsvRecorder(out_dir / REPLICAS_CSV, REPLICAS_COLUMNS)),
            "events": CsvRecorder(out_dir / "events.csv", EVENTS_COLUMNS),
            "memory": CsvRecorder(out_dir / "memory_events.csv", MEMORY_EVENTS_COLUMNS),
            "links": CsvRecorder(out_dir / "links.csv", LINKS_COLUMNS),
        }
        self._written: set[str] = set()
        # Pending rows of the block-written files.
        self._tokens: list[tuple[str, list[np.ndarray]]] = []  # (stream_id, its token columns) per stream
        self._token_rows = 0
        self._telemetry: list[tuple] = []
        self._steps: list[tuple] = []
        self._links: list[tuple] = []
        self._step_decimals = _SERVER_DECIMALS if replicas == 1 else _REPLICAS_DECIMALS

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self._flush_tokens()
            self._flush_telemetry()
            self._flush_steps()
            self._flush_links()
        finally:
            for f in self._files.values():
                f.close()

    # ------------------------------------------------------------------ the node's log
    def step(self, t: float, batch_id: int, batch_size: int, batch_tokens: int, duration_s: float,
             waiting: int, running: int, swapped: int, completed: int, kv_used: int) -> None:
        self._steps.append((t, batch_id, batch_size, batch_tokens, duration_s, waiting, running, swapped, completed,
                            kv_used, kv_used / self._kv_total))
        if len(self._steps) >= BLOCK_ROWS:
            self._flush_steps()

    def _flush_steps(self) -> None:
        if self._steps:
            self._files["server"].write_columns(list(zip(*self._steps, strict=True)), self._step_decimals)
            self._steps.clear()

    def replica_step(self, replica: int, t: float, batch_id: int, batch_size: int, batch_tokens: int,
                     duration_s: float, waiting: int, running: int, swapped: int, completed: int,
                     kv_used: int) -> None:
        """A step of replica ``replica`` (a recorder made with ``replicas`` > 1): a replicas.csv row."""
        self._steps.append((replica, t, batch_id, batch_size, batch_tokens, duration_s, waiting, running, swapped,
                            completed, kv_used, kv_used / self._kv_total))
        if len(self._steps) >= BLOCK_ROWS:
            self._flush_steps()

    def event(self, t: float, kind: str, req_id: str, details: str = "") -> None:
        self._files["events"].write((round(t, 6), kind, req_id, details))

    def memory(self, t: float, kind: str, req_id: str, before: int, after: int, reason: str) -> None:
        self._files["memory"].write((round(t, 6), kind, req_id, before, after, reason))

    # ------------------------------------------------------------------ control loop samples
    def telemetry(self, o: Observation, rate_tps: float | None) -> None:
        self._telemetry.append((
            o.t_s, o.stream_id, o.srtt_ms, o.rtt_min_ms, o.rtt_p95_ms, o.retrans, o.cwnd_pkts, o.inflight_bytes,
            o.queued_bytes, o.acked_tokens, o.generated_tokens, o.reading_tps, o.client_buffer_est, rate_tps,
        ))
        if len(self._telemetry) >= BLOCK_ROWS:
            self._flush_telemetry()

    def _flush_telemetry(self) -> None:
        if self._telemetry:
            self._files["telemetry"].write_columns(list(zip(*self._telemetry, strict=True)), _TELEMETRY_DECIMALS)
            self._telemetry.clear()

    def link(self, t: float, path: str, rate_bps: float, backlog_bytes: int) -> None:
        self._links.append((t, path, rate_bps, backlog_bytes))
        if len(self._links) >= BLOCK_ROWS:
            self._flush_links()

    def _flush_links(self) -> None:
        if self._links:
            self._files["links"].write_columns(list(zip(*self._links, strict=True)), _LINKS_DECIMALS)
            self._links.clear()

    # ------------------------------------------------------------------ streams
    def stream(self, s: SimStream) -> None:
        """Write a finished stream's tokens and summary row (once)."""
        req = s.req
        if req.stream_id in self._written:
            return
        self._written.add(req.stream_id)
        r = s.reader
        n = s.seq.generated
        # Every time here is a float (a simulated time after at least one step), NaN when missing;
        # t_displayed of a token is set exactly when it is received.
        self._tokens.append((req.stream_id, [
            np.array(s.t_generated[:n]), s.sent_times(n), s.acked_times(n), np.array(r.t_received[:n]),
            np.array(r.t_displayed[:n]),
        ]))
        self._token_rows += n
        if self._token_rows >= BLOCK_ROWS:
            self._flush_tokens()
        displayed = r.t_displayed[: r.received]
        qoe = andes_qoe(req.arrival_s, self.ttft_expected_s, req.reading_tps, req.output_tokens, displayed)
        ttft = displayed[0] - req.arrival_s if displayed else None
        self._files["streams"].write((
            req.stream_id, req.path, round(req.arrival_s, 6), req.prompt_tokens, req.output_tokens, _t(ttft),
            round(r.stall_s, 6), round(qoe, 6), r.state, s.seq.generated - r.received, round(req.reading_tps, 6),
            round(req.patience_s, 6), self.ttft_expected_s, _t(r.end_s), s.seq.generated, r.received,
        ))

    def _flush_tokens(self) -> None:
        pending = self._tokens
        if not pending:
            return
        counts = [len(cols[0]) for _, cols in pending]
        ids = np.repeat(np.array([sid for sid, _ in pending]), counts)
        idx = np.concatenate([np.arange(c) for c in counts])
        times = [np.concatenate([cols[j] for _, cols in pending]) for j in range(5)]
        self._files["tokens"].write_columns([ids, idx, *times], _TOKENS_DECIMALS)
        pending.clear()
        self._token_rows = 0

    def flush_streams(self, streams: list[SimStream]) -> None:
        for s in streams:
            self.stream(s)

    def request_traces(self, seqs: list[Sequence]) -> None:
        with CsvRecorder(self.dir / "request_traces.csv", REQUEST_TRACES_COLUMNS) as f:
            for q in seqs:
                done = q.done_s if q.state == "finished" else None
                first = q.first_running_s
                f.write((q.req_id, round(q.arrival_s, 6), q.prompt_tokens, q.output_tokens, _t(done), _t(first),
                         None if first is None else round(first - q.arrival_s, 6), round(q.exec_s, 6), q.swap_count,
                         None if done is None else round(done - q.arrival_s, 6)))


class ReplicaLog:
    """Replica ``replica``'s node log: its steps as replicas.csv rows, its events and memory events as
    everyone's (the recorder must be made with ``replicas`` > 1)."""

    __slots__ = ("event", "memory", "rec", "replica")

    def __init__(self, rec: Recorder, replica: int) -> None:
        self.rec = rec
        self.replica = replica
        self.event = rec.event
        self.memory = rec.memory

    def step(self, t: float, batch_id: int, batch_size: int, batch_tokens: int, duration_s: float,
             waiting: int, running: int, swapped: int, completed: int, kv_used: int) -> None:
        self.rec.replica_step(self.replica, t, batch_id, batch_size, batch_tokens, duration_s, waiting, running,
                              swapped, completed, kv_used)


# --------------------------------------------------------------------------- run.json: complete or not
RUN_JSON = "run.json"
RUNNING, INTERRUPTED, COMPLETE = "running", "interrupted", "complete"
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def write_json_durably(path: Path | str, obj: Any) -> Path:
    """Write ``obj`` as JSON with the bytes :func:`analysis.results.write_json` gives, so that a kill at
    any moment leaves either the old file or the new one: a temporary file in the same folder, fsync'd,
    renamed over the old one, then the folder fsync'd (the rename itself survives a crash).

    Ctrl-C and SIGTERM are held off while it writes (they arrive right after), so a stop request
    cannot cut off the very write that records it.
    """
    path = Path(path)
    text = json.dumps(to_jsonable(obj), sort_keys=True, indent=2, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # some filesystems refuse to open a folder for fsync
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return path


def read_run_json(run_dir: Path | str) -> dict[str, Any] | None:
    """DIR/run.json as a dict; None when there is none or it is not a JSON object."""
    try:
        info = json.loads((Path(run_dir) / RUN_JSON).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return info if isinstance(info, dict) else None


def name_list(value: Any) -> list[str]:
    """The controller names of a run.json list (``controllers``, ``finished``); anything else gives none."""
    return [n for n in value if isinstance(n, str)] if isinstance(value, list) else []


def in_order(names: Iterable[str], done: Iterable[str]) -> list[str]:
    """``done`` in the order of ``names`` (the plan's), then any others in the order given: ``finished``
    does not depend on which controller happened to end first."""
    done = list(dict.fromkeys(done))
    listed = list(names)
    return [n for n in listed if n in done] + [n for n in done if n not in listed]


def update_run_json(run_dir: Path | str, changes: Mapping[str, Any]) -> dict[str, Any]:
    """Rewrite DIR/run.json with ``changes`` applied (keys set, every other key kept), durably."""
    info = read_run_json(run_dir) or {}
    info.update(changes)
    write_json_durably(Path(run_dir) / RUN_JSON, info)
    return info


def mark_finished(run_dir: Path | str, name: str, order: Iterable[str] | None = None) -> dict[str, Any]:
    """Add ``name`` to run.json's ``finished`` (kept in ``order``, default run.json's ``controllers``).

    Call it only once the controller's files are flushed and closed."""
    info = read_run_json(run_dir) or {}
    listed = list(order) if order is not None else name_list(info.get("controllers"))
    done = name_list(info.get("finished"))
    return update_run_json(run_dir, {"finished": in_order(listed, [*done, name])})


def fsync_files(folder: Path | str) -> None:
    """fsync every regular file directly in ``folder``: what run.json calls finished is on disk first."""
    for p in Path(folder).iterdir():
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """While inside, SIGTERM does what Ctrl-C does: whatever SIGINT's handler is at that moment (the
    default raises KeyboardInterrupt; inside ``asyncio.run`` it cancels the main task), else raises
    KeyboardInterrupt. So ``kill PID`` leaves the same honest folder as Ctrl-C. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: FrameType | None) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler) and handler is not on_term:
            handler(signal.SIGINT, frame)
        else:  # SIGINT ignored (a background job) or not ours to call: stop anyway
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
