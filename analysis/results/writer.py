"""The one writer of a results folder's CSV files: :class:`CsvRecorder` (one file, row by row or a
block at a time) and :class:`RunRecorder` (one controller's folder: the node's log, control samples,
link samples, tokens, streams and request traces), used by the simulator and by both halves of a
live recording alike, so every row has one format (columns and decimals: :mod:`analysis.results.schema`).

Rows reach the disk as the run goes, so a crash loses at most the rows of the last unfinished block.
"""

from __future__ import annotations

import contextlib
import csv
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Protocol

import numpy as np

from analysis.qoe import stream_qoe
from analysis.results.cells import format_cell, format_rows
from analysis.results.schema import (
    CONTROLLER_FILES,
    DECIMALS,
    REPLICAS_COLUMNS,
    REPLICAS_CSV,
    REQUEST_TRACES_COLUMNS,
    REQUEST_TRACES_DECIMALS,
    TOKENS_DECIMALS,
)

if TYPE_CHECKING:
    from controllers import Observation


class CsvRecorder:
    """Writes one CSV file row by row while a run goes on.

    The header is written (and flushed) at once, rows are buffered and written out every
    ``flush_every`` rows and on :meth:`close`, so a process that dies loses at most the rows of
    the last unfinished batch. A row is either a mapping from column name to value (columns it
    lacks are left empty) or a sequence in column order. Use it as a context manager::

        with CsvRecorder(path, TOKENS_COLUMNS) as rec:
            rec.write({"stream_id": "s0001", "idx": 0, "t_generated": 0.51})
    """

    def __init__(self, path: Path | str, columns: Sequence[str], *, flush_every: int = 256) -> None:
        if flush_every < 1:
            raise ValueError("flush_every must be at least 1")
        self.path = Path(path)
        self.columns: tuple[str, ...] = tuple(columns)
        self.flush_every = flush_every
        self._index = {name: i for i, name in enumerate(self.columns)}
        self._buffer: list[list[str]] = []
        self.rows_written = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = self.path.open("w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._file, lineterminator="\n")
        self._writer.writerow(self.columns)
        self._file.flush()

    @property
    def closed(self) -> bool:
        return self._file is None

    def write(self, row: Mapping[str, object] | Sequence[object]) -> None:
        """Queue one row; it reaches the disk within ``flush_every`` rows."""
        if self._file is None:
            raise ValueError(f"{self.path}: recorder is closed")
        cells = [""] * len(self.columns)
        if isinstance(row, Mapping):
            for key, value in row.items():
                try:
                    cells[self._index[key]] = format_cell(value)
                except KeyError:
                    raise ValueError(f"{self.path}: unknown column {key!r}") from None
        else:
            if len(row) != len(self.columns):
                raise ValueError(f"{self.path}: row has {len(row)} cells, expected {len(self.columns)}")
            cells = list(map(format_cell, row))
        self._buffer.append(cells)
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def write_many(self, rows: Iterable[Mapping[str, object] | Sequence[object]]) -> None:
        for row in rows:
            self.write(row)

    def write_columns(self, columns: Sequence[Sequence[object] | np.ndarray],
                      decimals: Sequence[int | None] | None = None) -> None:
        """Write a block of rows given column by column, and hand it to the operating system.

        Row i is ``[round(col[i], decimals[j]) for each column j]`` (None/NaN stay empty; a
        ``decimals`` entry of None writes the value as it is), the same text :meth:`write` would
        make of it -- built with numpy (:func:`format_rows`), which for big blocks is many times faster.
        """
        if self._file is None:
            raise ValueError(f"{self.path}: recorder is closed")
        if len(columns) != len(self.columns):
            raise ValueError(f"{self.path}: {len(columns)} columns given, expected {len(self.columns)}")
        text = format_rows(columns, decimals if decimals is not None else [None] * len(columns))
        self.flush()  # rows queued by write() go first
        self._file.write(text)
        self.rows_written += len(columns[0]) if columns else 0
        self._file.flush()

    def flush(self) -> None:
        """Write the buffered rows and hand them to the operating system."""
        if self._file is None:
            return
        if self._buffer:
            self._writer.writerows(self._buffer)
            self.rows_written += len(self._buffer)
            self._buffer.clear()
        self._file.flush()

    def close(self) -> None:
        if self._file is None:
            return
        self.flush()
        self._file.close()
        self._file = None

    def __enter__(self) -> CsvRecorder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:  # a recorder dropped without close() still saves its rows
        with contextlib.suppress(Exception):  # nothing sensible to do during teardown
            self.close()


def open_recorder(controller_dir: Path | str, file_name: str, *, flush_every: int = 256) -> CsvRecorder:
    """A recorder for one of the :data:`CONTROLLER_FILES` (e.g. ``"tokens.csv"``) in a folder."""
    try:
        columns = CONTROLLER_FILES[file_name]
    except KeyError:
        raise ValueError(f"unknown results file {file_name!r}; known: {', '.join(CONTROLLER_FILES)}") from None
    return CsvRecorder(Path(controller_dir) / file_name, columns, flush_every=flush_every)


# --------------------------------------------------------------------------- one controller's folder
#: Rows a :class:`RunRecorder` collects per file before formatting them as one block (the simulator's
#: default: formatting cell by cell in Python was most of a run's time).
BLOCK_ROWS = 4096
#: a swap's host-link interval at the end of an event's details (``... N B to host START-END``)
_TRANSFER = re.compile(r"( B (?:to|from) host )(-?\d+(?:\.\d+)?)-(-?\d+(?:\.\d+)?)$")
_TRANSFER_EVENTS = frozenset(("swap_out", "swap_in"))


class SequenceTrace(Protocol):
    """What a request-trace row is made of: the serving node's record of one request."""

    req_id: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    state: str
    done_s: float
    first_running_s: float | None
    exec_s: float
    swap_count: int


class _Block:
    """One file's pending rows, formatted and written a block at a time with the schema's decimals."""

    __slots__ = ("decimals", "file", "limit", "rows")

    def __init__(self, file: CsvRecorder, decimals: Sequence[int | None], limit: int) -> None:
        self.file = file
        self.decimals = decimals
        self.limit = limit
        self.rows: list[tuple] = []

    def add(self, row: tuple) -> None:
        rows = self.rows
        rows.append(row)
        if len(rows) >= self.limit:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.file.write_columns(list(zip(*self.rows, strict=True)), self.decimals)
            self.rows.clear()


def _times(values: Sequence[float] | np.ndarray, n: int, t0: float | None) -> np.ndarray:
    """The first ``n`` times as float64 (NaN past the end and for None), on the recording's clock."""
    a = np.array(values[:n], dtype=np.float64)
    if len(a) < n:
        a = np.concatenate([a, np.full(n - len(a), np.nan)])
    return a if t0 is None else a - t0


def streams_row(*, stream_id: str, path: str, arrival_s: float | None, prompt_tokens: int | None,
                output_tokens: int | None, ttft_s: float | None = None, stall_s: float | None = None,
                qoe: float | None = None, outcome: str, wasted_tokens: int | None = None,
                reading_tps: float | None = None, patience_s: float | None = None,
                ttft_expected_s: float | None = None, end_s: float | None = None,
                generated_tokens: int | None = None, displayed_tokens: int | None = None) -> tuple:
    """One streams.csv row in column order (None: empty), to be written with the schema's decimals."""
    return (stream_id, path, arrival_s, prompt_tokens, output_tokens, ttft_s, stall_s, qoe, outcome, wasted_tokens,
            reading_tps, patience_s, ttft_expected_s, end_s, generated_tokens, displayed_tokens)


class RunRecorder:
    """One controller's files in the results layout, written as the run goes.

    The serving node's log (``step``/``replica_step``, ``event``, ``memory``), the control loop's
    samples (``telemetry``), path samples (``link``), finished streams (``write_stream``: tokens.csv and
    streams.csv rows) and, at the end, ``request_traces``. Each method takes the values as the driver
    knows them; rounding is the schema's (:data:`analysis.results.schema.DECIMALS`).

    * ``files``: the files to keep open (names of :data:`CONTROLLER_FILES`, or ``replicas.csv``
      instead of server.csv for a node of several replicas); each is created with its header at once.
      ``rename`` writes some under another name (a live server's half of tokens.csv is server_tokens.csv).
    * ``t0``: when set, every time is written as ``t - t0`` (a live recording's clock origin, which
      may be moved until the first row); without it times are written as given (the simulator's).
    * ``kv_tokens``: the node's KV capacity (server.csv's ``memory_utilization``).
    * ``block_rows``: rows per file collected before they are formatted and written together.
    * ``flush_interval_s``: rows also reach the disk at least that often (checked as rows come).
    * ``stream_at_once``: a stream's tokens, then its row, are on disk when :meth:`write_stream` returns
      (a live run's halves may be merged at any moment).
    """

    def __init__(self, folder: Path | str, files: Iterable[str], *, kv_tokens: int = 0, t0: float | None = None,
                 rename: Mapping[str, str] | None = None, block_rows: int = BLOCK_ROWS,
                 flush_interval_s: float | None = None, stream_at_once: bool = False) -> None:
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.t0 = t0
        self.kv_tokens = kv_tokens
        self.block_rows = block_rows
        self.flush_interval_s = flush_interval_s
        self.stream_at_once = stream_at_once
        rename = rename or {}
        self._blocks: dict[str, _Block] = {}
        for name in files:
            columns = REPLICAS_COLUMNS if name == REPLICAS_CSV else CONTROLLER_FILES[name]
            file = CsvRecorder(self.dir / rename.get(name, name), columns)
            self._blocks[name] = _Block(file, DECIMALS[name], block_rows)
        blocks = self._blocks
        self._server = blocks.get("server.csv") or blocks.get(REPLICAS_CSV)
        self._events = blocks.get("events.csv")
        self._memory = blocks.get("memory_events.csv")
        self._telemetry = blocks.get("telemetry.csv")
        self._links = blocks.get("links.csv")
        self._streams = blocks.get("streams.csv")
        tokens = blocks.get("tokens.csv")
        self._token_file = tokens.file if tokens is not None else None
        self._tokens: list[tuple[str, int, list[np.ndarray]]] = []  # (stream_id, rows, its time columns)
        self._token_rows = 0
        self._flushed_at = time.monotonic()
        self.closed = False

    def __enter__(self) -> RunRecorder:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _tick(self) -> None:
        """Hand every pending row to the OS when the last time was ``flush_interval_s`` ago."""
        now = time.monotonic()
        if now - self._flushed_at >= self.flush_interval_s:  # type: ignore[operator]
            self._flushed_at = now
            self.flush()

    def _time(self, t: float | None) -> float | None:
        return t if t is None or self.t0 is None else t - self.t0

    # ------------------------------------------------------------------ the node's log
    def step(self, t: float, batch_id: int, batch_size: int, batch_tokens: int, duration_s: float,
             waiting: int, running: int, swapped: int, completed: int, kv_used: int) -> None:
        """One batch the node ran: a server.csv row."""
        if self.t0 is not None:
            t -= self.t0
        self._server.add((t, batch_id, batch_size, batch_tokens, duration_s, waiting, running,  # type: ignore[union-attr]
                          swapped, completed, kv_used, kv_used / self.kv_tokens))
        if self.flush_interval_s is not None:
            self._tick()

    def replica_step(self, replica: int, t: float, batch_id: int, batch_size: int, batch_tokens: int,
                     duration_s: float, waiting: int, running: int, swapped: int, completed: int,
                     kv_used: int) -> None:
        """A step of replica ``replica`` (a recorder of replicas.csv): a replicas.csv row."""
        if self.t0 is not None:
            t -= self.t0
        self._server.add((replica, t, batch_id, batch_size, batch_tokens, duration_s, waiting,  # type: ignore[union-attr]
                          running, swapped, completed, kv_used, kv_used / self.kv_tokens))
        if self.flush_interval_s is not None:
            self._tick()

    def event(self, t: float, kind: str, req_id: str, details: str = "") -> None:
        """An events.csv row. A swap's host-link interval in ``details`` is a time too (moved by ``t0``)."""
        if self.t0 is not None:
            t -= self.t0
            if kind in _TRANSFER_EVENTS:
                details = self._relative_transfer(details)
        self._events.add((t, kind, req_id, details))  # type: ignore[union-attr]
        if self.flush_interval_s is not None:
            self._tick()

    def _relative_transfer(self, details: str) -> str:
        m = _TRANSFER.search(details)
        if m is None:
            return details
        start, end = (float(x) - self.t0 for x in m.group(2, 3))  # type: ignore[operator]
        return f"{details[:m.start()]}{m.group(1)}{start:.6f}-{end:.6f}"

    def memory(self, t: float, kind: str, req_id: str, before: int, after: int, reason: str) -> None:
        """A memory_events.csv row."""
        if self.t0 is not None:
            t -= self.t0
        self._memory.add((t, kind, req_id, before, after, reason))  # type: ignore[union-attr]
        if self.flush_interval_s is not None:
            self._tick()

    # ------------------------------------------------------------------ control loop and path samples
    def telemetry(self, o: Observation, rate_tps: float | None) -> None:
        """What one stream's controller saw at one control interval, and the rate it chose (None: unpaced)."""
        t = o.t_s if self.t0 is None else o.t_s - self.t0
        self._telemetry.add((  # type: ignore[union-attr]
            t, o.stream_id, o.srtt_ms, o.rtt_min_ms, o.rtt_p95_ms, o.retrans, o.cwnd_pkts, o.inflight_bytes,
            o.queued_bytes, o.acked_tokens, o.generated_tokens, o.reading_tps, o.client_buffer_est, rate_tps,
        ))
        if self.flush_interval_s is not None:
            self._tick()

    def link(self, t: float, path: str, rate_bps: float, backlog_bytes: int) -> None:
        """A path's capacity and bottleneck backlog at ``t``: a links.csv row."""
        if self.t0 is not None:
            t -= self.t0
        self._links.add((t, path, rate_bps, backlog_bytes))  # type: ignore[union-attr]

    # ------------------------------------------------------------------ streams
    def write_stream(self, *, stream_id: str, path: str, arrival_s: float, prompt_tokens: int, output_tokens: int,
               reading_tps: float, ttft_expected_s: float, outcome: str, token_rows: int,
               t_generated: Sequence[float] = (), t_sent: Sequence[float] = (), t_acked: Sequence[float] = (),
               t_received: Sequence[float] = (), t_displayed: Sequence[float] = (),
               generated: int | None = None, displayed: int | None = None, stall_s: float | None = None,
               patience_s: float | None = None, end_s: float | None = None) -> float | None:
        """A finished stream: its tokens (rows 0..``token_rows``-1; each time column as long as it is known,
        empty after) and its streams.csv row. Returns its QoE when the reader's side is known.

        ``displayed`` (tokens on screen, the first ``displayed`` of ``t_displayed``) makes the row the
        reader's: TTFT and QoE (:func:`analysis.qoe.stream_qoe`) are computed from it, and with
        ``generated`` the wasted tokens. A server's half knows neither and leaves them empty.
        """
        t0 = self.t0
        n = token_rows
        self._tokens.append((stream_id, n, [_times(c, n, t0) for c in (t_generated, t_sent, t_acked, t_received,
                                                                        t_displayed)]))
        self._token_rows += n
        if self._token_rows >= self.block_rows or self.stream_at_once:
            self._flush_tokens()
        qoe = ttft = None
        if displayed is not None:
            shown = t_displayed[:displayed]
            qoe = stream_qoe(arrival_s, ttft_expected_s, reading_tps, output_tokens, shown, end_s=end_s,
                             abandoned=outcome == "abandoned")
            ttft = shown[0] - arrival_s if displayed else None
        wasted = generated - displayed if generated is not None and displayed is not None else None
        self._streams.add(streams_row(  # type: ignore[union-attr]
            stream_id=stream_id, path=path, arrival_s=self._time(arrival_s), prompt_tokens=prompt_tokens,
            output_tokens=output_tokens, ttft_s=ttft, stall_s=stall_s, qoe=qoe, outcome=outcome, wasted_tokens=wasted,
            reading_tps=reading_tps, patience_s=patience_s, ttft_expected_s=ttft_expected_s, end_s=self._time(end_s),
            generated_tokens=generated, displayed_tokens=displayed))
        if self.stream_at_once:
            self._streams.flush()  # type: ignore[union-attr]
        return qoe

    def _flush_tokens(self) -> None:
        pending = self._tokens
        if not pending:
            return
        counts = [n for _, n, _ in pending]
        ids = np.repeat(np.array([sid for sid, _, _ in pending]), counts)
        idx = np.concatenate([np.arange(n) for n in counts])
        times = [np.concatenate([cols[j] for _, _, cols in pending]) for j in range(5)]
        self._token_file.write_columns([ids, idx, *times], TOKENS_DECIMALS)  # type: ignore[union-attr]
        pending.clear()
        self._token_rows = 0

    def request_traces(self, seqs: Iterable[SequenceTrace]) -> None:
        """request_traces.csv, one row per request the node saw (written whole, at the end of a run)."""
        rows = []
        for q in seqs:
            done = q.done_s if q.state == "finished" else None
            first = q.first_running_s
            rows.append((q.req_id, self._time(q.arrival_s), q.prompt_tokens, q.output_tokens, self._time(done),
                         self._time(first), None if first is None else first - q.arrival_s, q.exec_s, q.swap_count,
                         None if done is None else done - q.arrival_s))
        with CsvRecorder(self.dir / "request_traces.csv", REQUEST_TRACES_COLUMNS) as f:
            if rows:
                f.write_columns(list(zip(*rows, strict=True)), REQUEST_TRACES_DECIMALS)

    # ------------------------------------------------------------------ the end
    def flush(self) -> None:
        """Write every pending row and hand it to the operating system."""
        self._flush_tokens()
        for block in self._blocks.values():
            block.flush()
            block.file.flush()

    def close(self) -> None:
        """Write what is pending and close every file (once)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.flush()
        finally:
            for block in self._blocks.values():
                block.file.close()
