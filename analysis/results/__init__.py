"""The results folder, in code: what a run writes and how to read it back.

A run (simulated or live) leaves a folder behind::

    DIR/run.json                      what was run: scenario, controllers, seed, versions
    DIR/summary.json                  the metrics per controller (written by analysis)
    DIR/<controller>/tokens.csv       one row per generated token
    DIR/<controller>/streams.csv      one row per request
    DIR/<controller>/telemetry.csv    one row per stream per control interval
    DIR/<controller>/server.csv       one row per batch the serving node ran
    DIR/<controller>/request_traces.csv, events.csv, memory_events.csv   server-side detail
    DIR/<controller>/links.csv        path capacity and bottleneck backlog over time

This file is the single place that names the columns of those files. Writers (the simulator,
live mode) use :class:`CsvRecorder` so rows reach the disk as the run goes and a crash loses at
most the last few rows; readers (everything in ``analysis``) use :func:`load_run`.

Cells are numbers or short text. An empty cell means "missing": a token that was never
displayed, an RTT that was not measured, a stream that was not paced. In memory a missing
number is NaN and a missing text is the empty string; when writing, ``None`` and NaN both
become an empty cell.

Every problem with the files is reported as a :class:`ResultsFormatError` whose message is one
line naming the file (and the column, and the line when known), so the command line can print
it instead of a traceback.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import numbers
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import IO, Any

import numpy as np

__all__ = [
    "CONTROLLER_FILES",
    "EVENTS_COLUMNS",
    "EVENT_TYPES",
    "LINKS_COLUMNS",
    "MEMORY_EVENTS_COLUMNS",
    "OUTCOMES",
    "REQUEST_TRACES_COLUMNS",
    "REQUIRED_FILES",
    "RESULTS_FOLDER_HOLDS",
    "RUN_STATUSES",
    "SERVER_COLUMNS",
    "STATUS_COMPLETE",
    "STATUS_MEANING",
    "STREAMS_COLUMNS",
    "TELEMETRY_COLUMNS",
    "TEXT_COLUMNS",
    "TOKENS_COLUMNS",
    "ControllerRun",
    "CsvRecorder",
    "ResultsFormatError",
    "Run",
    "Table",
    "format_cell",
    "format_rows",
    "list_controllers",
    "load_controller_dir",
    "load_run",
    "open_recorder",
    "read_csv",
    "read_json",
    "rounded_cell",
    "run_status",
    "to_jsonable",
    "truncated_files",
    "write_json",
]

# --------------------------------------------------------------------------- the columns
TOKENS_COLUMNS: tuple[str, ...] = (
    "stream_id",
    "idx",
    "t_generated",
    "t_sent",
    "t_acked",
    "t_received",
    "t_displayed",
)
STREAMS_COLUMNS: tuple[str, ...] = (
    "stream_id",
    "path",
    "arrival",
    "prompt_tokens",
    "output_tokens",
    "ttft_s",
    "stall_s",
    "qoe",
    "outcome",
    "wasted_tokens",
    "reading_tps",
    "patience_s",
    "ttft_expected_s",
    "end_s",
    "generated_tokens",
    "displayed_tokens",
)
TELEMETRY_COLUMNS: tuple[str, ...] = (
    "t",
    "stream_id",
    "srtt_ms",
    "rtt_min_ms",
    "rtt_p95_ms",
    "retrans",
    "cwnd_pkts",
    "inflight_bytes",
    "queued_bytes",
    "acked_tokens",
    "generated_tokens",
    "reading_tps",
    "client_buffer_est",
    "rate_tps",
)
SERVER_COLUMNS: tuple[str, ...] = (
    "time",
    "batch_id",
    "batch_size",
    "batch_tokens",
    "batch_duration",
    "waiting_count",
    "running_count",
    "swapped_count",
    "completed_count",
    "gpu_memory_used",
    "memory_utilization",
)
REQUEST_TRACES_COLUMNS: tuple[str, ...] = (
    "req_id",
    "arrival_time",
    "prefill_length",
    "decode_length",
    "completion_time",
    "first_enter_running_time",
    "waiting_time",
    "execution_time",
    "swap_count",
    "total_delay",
)
EVENTS_COLUMNS: tuple[str, ...] = ("time", "event_type", "req_id", "details")
MEMORY_EVENTS_COLUMNS: tuple[str, ...] = (
    "time",
    "event_type",
    "req_id",
    "memory_before",
    "memory_after",
    "reason",
)
LINKS_COLUMNS: tuple[str, ...] = ("t", "path", "rate_bps", "backlog_bytes")

#: file name -> its columns, for every file a controller's folder may hold.
CONTROLLER_FILES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "tokens.csv": TOKENS_COLUMNS,
        "streams.csv": STREAMS_COLUMNS,
        "telemetry.csv": TELEMETRY_COLUMNS,
        "server.csv": SERVER_COLUMNS,
        "request_traces.csv": REQUEST_TRACES_COLUMNS,
        "events.csv": EVENTS_COLUMNS,
        "memory_events.csv": MEMORY_EVENTS_COLUMNS,
        "links.csv": LINKS_COLUMNS,
    }
)
#: files without which a controller's results cannot be summarised.
REQUIRED_FILES: tuple[str, ...] = ("streams.csv", "tokens.csv")
#: columns holding text; every other column is a number (float64, NaN when empty).
TEXT_COLUMNS: frozenset[str] = frozenset(
    {"stream_id", "path", "outcome", "event_type", "req_id", "details", "reason", "batch_id"}
)
OUTCOMES: tuple[str, ...] = ("completed", "abandoned", "cancelled")
EVENT_TYPES: tuple[str, ...] = ("arrive", "admit", "swap_out", "swap_in", "preempt", "recompute", "complete", "cancel")


class ResultsFormatError(ValueError):
    """A results file is missing or malformed. ``str()`` is one line naming the file."""

    def __init__(self, path: Path | str, problem: str, *, column: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        self.path = Path(path)
        self.problem = problem
        self.column = column
        self.line = line
        self.key = key
        where = str(self.path) + (f":{line}" if line is not None else "")
        col = f" column {column!r}:" if column is not None else ""
        col += f" key {key!r}:" if key is not None else ""
        super().__init__(f"{where}:{col} {problem}")


# --------------------------------------------------------------------------- writing
def format_cell(value: object) -> str:
    """One value as a CSV cell: None and NaN become empty, floats keep every digit."""
    kind = type(value)
    if kind is float:
        return "" if value != value else repr(value)  # NaN is the only value unequal to itself
    if kind is int or kind is str:
        return str(value)
    if kind is np.float64:
        return "" if value != value else repr(float(value))  # type: ignore[arg-type]
    if value is None:
        return ""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        x = float(value)
        return "" if math.isnan(x) else repr(x)
    return str(value)


def rounded_cell(value: object, decimals: int | None) -> str:
    """``format_cell(round(value, decimals))``; None and NaN give an empty cell, ``decimals=None`` no rounding."""
    if value is None:
        return ""
    if decimals is None or value != value:  # NaN is the only value unequal to itself
        return format_cell(value)
    return format_cell(round(value, decimals))  # type: ignore[call-overload]


# Column-wise formatting. A run writes hundreds of thousands of cells (a row per token, per stream per
# control interval, per decode step); formatting them one Python call at a time was most of a
# simulation's run time. `format_rows` builds a block of rows with numpy instead: each column becomes
# a fixed-width matrix of ASCII bytes in which NUL marks an unused byte, the columns are put side by
# side with separators, and deleting the NULs from the bytes, row after row, leaves the CSV text.
# The text is exactly what `CsvRecorder.write` makes of the same rows (`rounded_cell` per cell, csv
# quoting): every value the fast paths cannot vouch for is formatted by `rounded_cell` itself.
_COMMA, _NEWLINE, _MINUS = (ord(c) for c in ",\n-")
_POW10 = 10 ** np.arange(19, dtype=np.int64)
_CSV_SPECIAL = frozenset(',"\n\r\0')  # csv quotes ',', '"' and '\n'; '\r' and NUL go the careful way too
_SPECIAL_POINTS = np.array([ord(c) for c in _CSV_SPECIAL if c != "\0"], np.uint32)
_INT64_MIN = np.iinfo(np.int64).min
_NONE = type(None)


def _table(fmt: str) -> np.ndarray:
    """A 4-byte word per number 0..999 (spaces become NUL), viewed as uint32 so that a lookup is one
    1-d gather; the words of a cell are later viewed back as bytes."""
    rows = [fmt.format(i).replace(" ", "\0").encode() for i in range(1000)]
    return np.frombuffer(b"".join(rows), np.uint32)


_FULL = _table("{:03d} ")  # "007"
_LEAD = _table("{:3d} ")  # "  7": no leading zeros
_FULL_DOT = _table("{:03d}.")
_LEAD_DOT = _table("{:3d}.")
_TRAIL = np.frombuffer(b"".join(f"{i:03d}".rstrip("0").ljust(4).replace(" ", "\0").encode() for i in range(1000)),
                       np.uint32)  # "12" for 120, nothing for 0
_TRAIL1 = _TRAIL.copy()  # as _TRAIL, but 0 is "0"
_TRAIL1[0] = _FULL[0] & np.frombuffer(b"\xff\0\0\0", np.uint32)[0]


def _uint_words(n: np.ndarray, dot: bool) -> np.ndarray:
    """Non-negative int64s in decimal, no leading zeros (then "." if ``dot``), as 4-byte words [N, K]."""
    top = int(n.max(initial=0))
    k_words = max(1, (len(str(top)) + 2) // 3)
    out = np.empty((len(n), k_words), np.uint32)
    rest = n
    for k in range(k_words):  # k = 0 is the least significant triple, the last word
        rest, t = np.divmod(rest, 1000) if k < k_words - 1 else (None, rest)
        full, lead = (_FULL_DOT, _LEAD_DOT) if dot and k == 0 else (_FULL, _LEAD)
        # the most significant triple of a number has no leading zeros; triples above it are blank
        word = lead[t] if k == k_words - 1 else np.where(n >= _POW10[3 * k + 3], full[t], lead[t])
        if k:
            word = word * (n >= _POW10[3 * k])
        out[:, k_words - 1 - k] = word
    return out


def _bytes_of(words: np.ndarray) -> np.ndarray:
    return words.view(np.uint8).reshape(len(words), -1)


def _signed(negative: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Prefix "-" where negative (no column at all when nothing is)."""
    if not negative.any():
        return cells
    return np.hstack([(negative * _MINUS).astype(np.uint8)[:, None], cells])


def _place(cells: np.ndarray, rows: Sequence[int], texts: Sequence[bytes]) -> np.ndarray:
    """Overwrite these rows' cells with these texts, widening the matrix if one does not fit."""
    extra = max(map(len, texts), default=0) - cells.shape[1]
    if extra > 0:
        cells = np.hstack([cells, np.zeros((len(cells), extra), np.uint8)])
    for i, text in zip(rows, texts, strict=True):
        cells[i] = 0
        cells[i, : len(text)] = np.frombuffer(text, np.uint8)
    return cells


def _int_cells(v: np.ndarray) -> np.ndarray:
    return _signed(v < 0, _bytes_of(_uint_words(np.abs(v), dot=False)))


def _float_cells(x: np.ndarray, decimals: int) -> np.ndarray:
    """``repr(round(v, decimals))`` of float64s (as Python floats); NaN is an empty cell.

    Why this is exact: with y = |v| * 10**d (one rounding, relative error <= 2**-53), np.rint(y)
    is the correctly rounded integer n that round() and '%.{d}f' compute, unless y lies within that
    error of a .5 tie. round(v, d) is then the double nearest n / 10**d, and with at most 15
    significant digits no shorter decimal maps to that double, so its repr is n's digits with the
    point put back and trailing zeros dropped. Near-ties, |v| < 1e-4 (repr switches to exponent
    form), |v| >= 10**(15 - d), infinities and d > 6 are left to `rounded_cell`.
    """
    a = np.abs(x)
    nan = np.isnan(x)
    with np.errstate(invalid="ignore", over="ignore"):
        y = a * float(10**decimals)
        frac = y - np.floor(y)
        fast = (a < 10.0 ** (15 - decimals)) & ((a >= 1e-4) | (a == 0.0)) & (np.abs(frac - 0.5) > y * 4.5e-16)
    if decimals > 6:
        fast[:] = False
    n = np.rint(np.where(fast, y, 0.0)).astype(np.int64)
    whole, part = np.divmod(n, _POW10[decimals])
    hi, lo = np.divmod(part * _POW10[6 - min(decimals, 6)], 1000)  # the fraction as 6 digits
    # trailing zeros go, but one fractional digit stays: "2.5", "2.05", "2.0"
    frac_words = np.stack([np.where(lo != 0, _FULL[hi], _TRAIL1[hi]), _TRAIL[lo]], axis=1)
    words = np.hstack([_uint_words(whole, dot=True), frac_words])
    words[nan] = 0
    cells = _signed(np.signbit(x) & ~nan, _bytes_of(words))  # -0.0 stays "-0.0", as repr writes it
    slow = np.flatnonzero(~(fast | nan)).tolist()
    if slow:
        return _place(cells, slow, [rounded_cell(float(x[i]), decimals).encode() for i in slow])
    return cells


def _csv_field(text: str) -> str:
    """One cell as the csv module writes it (quoted if it must be)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([text, ""])
    return buf.getvalue()[:-2]


class _HasNul(Exception):
    """A cell holds a NUL byte, which this scheme uses for "no byte" (or the block has one column,
    where csv quotes an empty cell): format the block row by row."""


def _any_cells(values: Sequence[object], decimals: int | None) -> np.ndarray:
    """The general case, one Python call per cell."""
    texts = []
    for v in values:
        cell = rounded_cell(v, decimals)
        if "\0" in cell:
            raise _HasNul
        texts.append((_csv_field(cell) if _CSV_SPECIAL.intersection(cell) else cell).encode())
    return _place(np.zeros((len(texts), 0), np.uint8), range(len(texts)), texts)


def _text_cells(values: Sequence[str]) -> np.ndarray:
    """Texts as NUL-padded rows, cut out of one encoded string with numpy (no per-text Python call)."""
    joined = "\n".join(values)
    if _CSV_SPECIAL.intersection(joined.replace("\n", "")) or joined.count("\n") != len(values) - 1:
        return _any_cells(values, None)  # quoting, NUL, or a text holding a newline: one by one
    buf = np.frombuffer(joined.encode("utf-8") + b"\n", np.uint8)
    n = len(values)
    ends = np.flatnonzero(buf == _NEWLINE)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts
    width = int(lengths.max(initial=0))
    # byte k of text i goes to cells[i, k]: flat index i * width + (position in buf - starts[i])
    dest = np.arange(len(buf)) + np.repeat(np.arange(n) * width - starts, lengths + 1)
    text = buf != _NEWLINE
    cells = np.zeros(n * width, np.uint8)
    cells[dest[text]] = buf[text]
    return cells.reshape(n, width)


def _ascii_cells(values: np.ndarray) -> np.ndarray | None:
    """A str array's cells straight from its UCS-4 code points, when they are plain ASCII needing no quotes."""
    points = values.view(np.uint32).reshape(len(values), -1)
    used = points != 0
    if (points >= 128).any() or np.isin(points, _SPECIAL_POINTS).any() or (used[:, 1:] > used[:, :-1]).any():
        return None  # non-ASCII, quoting, or a NUL inside a text: the general path
    return points.astype(np.uint8)


def _column_cells(values: Sequence[object] | np.ndarray, decimals: int | None) -> np.ndarray:
    """One column's cells, each equal to ``rounded_cell(value, decimals)`` (csv-quoted if need be)."""
    if isinstance(values, np.ndarray):
        kind = values.dtype.kind
        if kind == "U":
            cells = _ascii_cells(values)
            if cells is not None:
                return cells
        elif kind == "f" and decimals is not None:
            return _float_cells(values.astype(np.float64, copy=False), decimals)
        if kind == "i" and not (values == _INT64_MIN).any():
            return _int_cells(values.astype(np.int64, copy=False))
        values = values.tolist()
    if not values:
        return np.zeros((0, 0), np.uint8)
    if type(values[0]) is int:
        # Python ints (and bools) become an int64 array; anything else (a float, None, a huge int, a
        # text) makes numpy choose another dtype, and the column goes the careful way below. One C
        # conversion instead of a type check per value.
        try:
            v = np.array(values)
        except (OverflowError, ValueError):
            v = None
        if v is not None and v.dtype == np.int64 and not (v == _INT64_MIN).any():
            return _int_cells(v)
    kinds = set(map(type, values))
    if decimals is not None and kinds <= {float, _NONE}:
        return _float_cells(np.array(values, dtype=np.float64), decimals)  # None becomes NaN: an empty cell
    if decimals is not None and kinds <= {float, int, _NONE}:  # e.g. env.now is the int 0 until time moves
        ints = [i for i, v in enumerate(values) if type(v) is int]
        cells = _float_cells(np.array(values, dtype=np.float64), decimals)
        return _place(cells, ints, [rounded_cell(values[i], decimals).encode() for i in ints])
    if kinds <= {int, bool}:  # round(int, d) is the int itself; format_cell(True) is "1" like 1
        try:
            v = np.array(values, dtype=np.int64)
        except OverflowError:
            return _any_cells(values, decimals)
        if not (v == _INT64_MIN).any():
            return _int_cells(v)
    if kinds <= {str}:
        return _text_cells(values)  # type: ignore[arg-type]
    return _any_cells(values, decimals)


def format_rows(columns: Sequence[Sequence[object] | np.ndarray], decimals: Sequence[int | None]) -> str:
    """CSV text of the rows given column by column: cell = ``rounded_cell(value, decimals[j])``.

    The same text :class:`CsvRecorder` writes for these rows (rounded as ``decimals`` says), made
    a block at a time with numpy; see the comment above `_float_cells` for why it is exact.
    """
    if len(columns) != len(decimals):
        raise ValueError("one decimals entry per column")
    n = len(columns[0]) if columns else 0
    if n == 0:
        return ""
    parts: list[np.ndarray] = []
    for j, (values, d) in enumerate(zip(columns, decimals, strict=True)):
        if len(values) != n:
            raise ValueError(f"column {j} has {len(values)} values, expected {n}")
        if j:
            parts.append(np.full((n, 1), _COMMA, np.uint8))
        try:
            if len(columns) == 1:
                raise _HasNul  # csv writes a lone empty cell as '""': not worth a fast path
            parts.append(_column_cells(values, d))
        except _HasNul:
            return _rows_one_by_one(columns, decimals)
    parts.append(np.full((n, 1), _NEWLINE, np.uint8))
    return np.hstack(parts).tobytes().translate(None, b"\0").decode("utf-8")


def _rows_one_by_one(columns: Sequence[Sequence[object] | np.ndarray], decimals: Sequence[int | None]) -> str:
    buf = io.StringIO()
    rows = zip(*(v.tolist() if isinstance(v, np.ndarray) else v for v in columns), strict=True)
    csv.writer(buf, lineterminator="\n").writerows(
        [rounded_cell(v, d) for v, d in zip(row, decimals, strict=True)] for row in rows)
    return buf.getvalue()


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


def to_jsonable(obj: Any, sig_digits: int | None = None) -> Any:
    """JSON-ready copy of ``obj``: numpy scalars/arrays to Python, NaN/inf to None, floats rounded."""
    if obj is None or isinstance(obj, str | bool):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        x = float(obj)
        if not math.isfinite(x):
            return None
        return float(f"{x:.{sig_digits}g}") if sig_digits is not None else x
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v, sig_digits) for v in obj.tolist()]
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v, sig_digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v, sig_digits) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_json(path: Path | str, obj: Any, *, sig_digits: int | None = None) -> Path:
    """Write ``obj`` as JSON so that equal content gives byte-identical files.

    Keys are sorted, indentation is 2, NaN and infinities become ``null``, numpy values become
    plain numbers. ``sig_digits`` rounds every float to that many significant digits (the
    summary uses 6 so tiny float noise cannot change the file); the default keeps every digit,
    as run.json needs. The file is written to a temporary name and renamed, so readers never
    see half a file.
    """
    path = Path(path)
    text = json.dumps(to_jsonable(obj, sig_digits), sort_keys=True, indent=2, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- reading
@dataclass(frozen=True, eq=False)
class Table:
    """The columns of one CSV file: numbers as float64 arrays (NaN = empty), text as str arrays."""

    path: Path
    columns: Mapping[str, np.ndarray]
    n_rows: int

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.columns[name]
        except KeyError:
            raise ResultsFormatError(self.path, "no such column", column=name) from None

    def __contains__(self, name: object) -> bool:
        return name in self.columns

    def __len__(self) -> int:
        return self.n_rows

    def take(self, index: np.ndarray) -> Table:
        """The rows selected by an integer or boolean index, as a new table."""
        cols = {k: v[index] for k, v in self.columns.items()}
        n = len(next(iter(cols.values()))) if cols else 0
        return Table(self.path, MappingProxyType(cols), n)


def _not_utf8(exc: UnicodeDecodeError) -> str:
    return f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"


def _check_file(path: Path) -> None:
    """A results file must be a regular file: say what it is instead when it is not."""
    if path.is_file():
        return
    if path.is_dir():
        raise ResultsFormatError(path, "is a folder, not a file")
    if path.exists():
        raise ResultsFormatError(path, "not a regular file")
    raise ResultsFormatError(path, "file not found")


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) in (b"\n", b"\r")


def _numeric(path: Path, name: str, cells: Sequence[str], first_line: int) -> np.ndarray:
    """A column of numbers; empty cells (and "nan") are NaN, infinities are refused.

    No writer puts an infinity in a cell (a value it cannot give is left empty), and one would
    poison every mean, quantile and axis it reaches; so ``inf`` is reported like any bad cell.
    """
    nan = math.nan
    try:
        values = np.array([float(c) if c else nan for c in cells], dtype=np.float64)
    except ValueError:
        values = np.empty(len(cells), dtype=np.float64)
        for i, cell in enumerate(cells):  # slow path: blank-but-not-empty cells, or a bad one
            text = cell.strip()
            try:
                values[i] = float(text) if text else nan
            except ValueError:
                shown = cell if len(cell) <= 40 else cell[:37] + "..."
                raise ResultsFormatError(path, f"not a number: {shown!r}", column=name,
                                         line=first_line + i) from None
    infinite = np.flatnonzero(np.isinf(values))
    if infinite.size:
        i = int(infinite[0])
        raise ResultsFormatError(path, f"not a finite number: {cells[i].strip()!r}", column=name,
                                 line=first_line + i)
    return values


def read_growing_csv(path: Path | str, required: Sequence[str]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """A CSV a driver appends to as it goes (capacity.csv, sweep.csv): its header and its rows with their line
    numbers. A last row cut off mid-write (no newline at its end) is dropped; an unreadable file, an empty one,
    a header without one of ``required`` or a row of the wrong width is a :class:`ResultsFormatError` naming
    the file (and line or column)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ResultsFormatError(path, f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"
                                 ) from None
    except IsADirectoryError:
        raise ResultsFormatError(path, "is a folder, not a file") from None
    except FileNotFoundError:
        raise ResultsFormatError(path, "file not found") from None
    except OSError as exc:
        raise ResultsFormatError(path, f"cannot read: {exc.strerror or exc}") from None
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith(("\n", "\r")):
        lines = lines[:-1]  # the writer was stopped mid-row
    try:
        table = list(csv.reader(lines))
    except csv.Error as exc:
        raise ResultsFormatError(path, f"cannot read: {exc}") from None
    if not table:
        raise ResultsFormatError(path, "empty file (no header line)")
    header = [h.strip() for h in table[0]]
    missing = [c for c in required if c not in header]
    if missing:
        raise ResultsFormatError(path, f"missing from the header (has: {', '.join(header)})", column=missing[0])
    rows = []
    for line, cells in enumerate(table[1:], 2):
        if len(cells) != len(header):
            raise ResultsFormatError(path, f"{len(cells)} cells, the header has {len(header)}", line=line)
        rows.append((line, cells))
    return header, rows


def read_csv(path: Path | str, columns: Sequence[str] | None = None) -> Table:
    """Read one results CSV. ``columns`` are required in its header (extra columns are kept).

    Columns named in :data:`TEXT_COLUMNS` stay text; all others must be numbers or empty. A
    final line without its newline (a writer killed mid-row) is dropped when it is short.
    """
    path = Path(path)
    _check_file(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as exc:
        raise ResultsFormatError(path, _not_utf8(exc)) from None
    except (OSError, csv.Error) as exc:
        raise ResultsFormatError(path, f"cannot read: {exc}") from None
    if not rows:
        raise ResultsFormatError(path, "empty file (no header line)")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in (columns or ()) if c not in header]
    if missing:
        raise ResultsFormatError(path, f"missing from the header (has: {', '.join(header)})", column=missing[0])
    if len(set(header)) != len(header):
        dup = next(h for h in header if header.count(h) > 1)
        raise ResultsFormatError(path, "appears twice in the header", column=dup)
    body = rows[1:]
    if body and len(body[-1]) != len(header) and not _ends_with_newline(path):
        body = body[:-1]  # the last row was being written when the writer stopped
    width = len(header)
    for i, row in enumerate(body):
        if len(row) != width:
            if not any(cell.strip() for cell in row):
                raise ResultsFormatError(path, "blank line inside the data", line=i + 2)
            raise ResultsFormatError(path, f"{len(row)} cells, the header has {width}", line=i + 2)
    transposed: list[Sequence[str]] = list(zip(*body, strict=True)) if body else [() for _ in header]
    data: dict[str, np.ndarray] = {}
    for name, cells in zip(header, transposed, strict=True):
        if name in TEXT_COLUMNS:
            data[name] = np.asarray([c.strip() for c in cells], dtype=str) if cells else np.zeros(0, dtype=str)
        else:
            data[name] = _numeric(path, name, cells, first_line=2)
    return Table(path, MappingProxyType(data), len(body))


def read_json(path: Path | str) -> dict[str, Any]:
    """Read a JSON object; problems become :class:`ResultsFormatError`."""
    path = Path(path)
    _check_file(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ResultsFormatError(path, _not_utf8(exc)) from None
    except OSError as exc:
        raise ResultsFormatError(path, f"cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ResultsFormatError(path, f"invalid JSON: {exc.msg}", line=exc.lineno) from None
    except RecursionError:
        raise ResultsFormatError(path, "invalid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise ResultsFormatError(path, f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ResultsFormatError(path, "expected a JSON object at the top level")
    return obj


@dataclass(frozen=True, eq=False)
class ControllerRun:
    """Everything one controller's folder holds. Optional files that are absent are ``None``."""

    name: str
    path: Path
    streams: Table
    tokens: Table
    telemetry: Table | None = None
    server: Table | None = None
    request_traces: Table | None = None
    events: Table | None = None
    memory_events: Table | None = None
    links: Table | None = None

    def table(self, file_name: str) -> Table | None:
        """A table by its file name, e.g. ``run.table("links.csv")``."""
        if file_name not in CONTROLLER_FILES:
            raise KeyError(file_name)
        value = getattr(self, file_name.removesuffix(".csv"))
        return value if isinstance(value, Table) else None


def _check_values(table: Table, column: str, allowed: Sequence[str]) -> None:
    values = table[column]
    bad = ~np.isin(values, np.asarray(allowed, dtype=str))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ResultsFormatError(
            table.path, f"{str(values[i])!r} is not one of {', '.join(allowed)}", column=column, line=i + 2
        )


def load_controller_dir(path: Path | str, name: str | None = None) -> ControllerRun:
    """Read one controller's folder. streams.csv and tokens.csv must exist; the rest may not."""
    path = Path(path)
    if not path.is_dir():
        raise ResultsFormatError(path, "controller folder not found")
    tables: dict[str, Table | None] = {}
    for file_name, columns in CONTROLLER_FILES.items():
        file_path = path / file_name
        if file_name in REQUIRED_FILES or file_path.exists():
            tables[file_name.removesuffix(".csv")] = read_csv(file_path, columns)
        else:
            tables[file_name.removesuffix(".csv")] = None
    streams = tables.pop("streams")
    tokens = tables.pop("tokens")
    assert streams is not None and tokens is not None
    _check_values(streams, "outcome", OUTCOMES)
    ids = streams["stream_id"]
    if len(np.unique(ids)) != len(ids):
        uniq, counts = np.unique(ids, return_counts=True)
        raise ResultsFormatError(streams.path, f"stream {str(uniq[counts > 1][0])!r} appears twice", column="stream_id")
    unknown = ~np.isin(tokens["stream_id"], ids)
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise ResultsFormatError(
            tokens.path, f"stream {str(tokens['stream_id'][i])!r} is not in streams.csv", column="stream_id", line=i + 2
        )
    return ControllerRun(name=name or path.name, path=path, streams=streams, tokens=tokens, **tables)


def _folder_name(run_json: Path, key: str, value: object) -> str:
    """A controller name from run.json: it names a folder inside the run, so nothing that leaves it."""
    if not isinstance(value, str):
        raise ResultsFormatError(run_json, f"expected a controller name (text), got {_json_kind(value)}", key=key)
    if value in ("", ".", "..") or any(c in value for c in "/\\\0") or not value.isprintable():
        raise ResultsFormatError(run_json, f"{value!r} is not a controller folder name",
                                 key=key if key.isprintable() else repr(key))
    return value


def _json_kind(value: object) -> str:
    kinds = {dict: "an object", list: "a list", str: "text", bool: "true/false", int: "a number",
             float: "a number", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)


def _listed_controllers(info: Mapping[str, Any], run_json: Path | None = None) -> list[str]:
    """The controller names run.json lists (a list of names, or an object keyed by name).

    With ``run_json`` (the file's path) a list of the wrong shape or a name that is not a plain
    folder name is a :class:`ResultsFormatError` naming the key; without it such entries are
    skipped, as before.
    """
    listed = info.get("controllers")
    where = run_json or Path("run.json")
    items: list[tuple[str, object]] = []
    if isinstance(listed, Mapping):
        items = [(f"controllers.{k}", k) for k in listed]
    elif isinstance(listed, list):
        for i, item in enumerate(listed):
            if isinstance(item, Mapping) and "name" in item:
                items.append((f"controllers[{i}].name", item["name"]))
            else:
                items.append((f"controllers[{i}]", item))
    elif listed is not None and run_json is not None:
        raise ResultsFormatError(run_json, f"expected a list of controller names, got {_json_kind(listed)}",
                                 key="controllers")
    names: list[str] = []
    for key, value in items:
        try:
            name = _folder_name(where, key, value)
        except ResultsFormatError:
            if run_json is not None:
                raise
            continue
        if name not in names:
            names.append(name)
    return names


def list_controllers(run_dir: Path | str, info: Mapping[str, Any] | None = None) -> list[str]:
    """Controllers of a run: the sub-folders holding a streams.csv.

    Order: as listed in run.json's ``controllers``, then the others alphabetically. A controller
    run.json lists whose folder exists but lacks streams.csv is an error (a run that died).
    """
    run_dir = Path(run_dir)
    found = _controller_folders(run_dir)
    listed = _listed_controllers(info or {})
    for name in listed:
        if (run_dir / name).is_dir() and name not in found:
            raise ResultsFormatError(run_dir / name / "streams.csv", "file not found")
    order = [n for n in listed if n in found] + [n for n in found if n not in listed]
    if not order:
        raise ResultsFormatError(run_dir / "*" / "streams.csv", "no controller folder with a streams.csv in this run")
    return order


def _controller_folders(run_dir: Path) -> list[str]:
    """Sub-folders holding a streams.csv, alphabetically."""
    try:
        entries = sorted(run_dir.iterdir())
    except OSError as exc:
        raise ResultsFormatError(run_dir, f"cannot list the folder: {exc.strerror or exc}") from None
    return [p.name for p in entries if p.is_dir() and (p / "streams.csv").is_file()]


# --------------------------------------------------------------------------- complete or not
#: run.json ``status``: written ``running`` when a run starts (a killed run keeps it), ``interrupted``
#: when Ctrl-C or SIGTERM stopped it, ``complete`` at the end. A run.json without one predates the
#: field and was written by a run that finished.
RUN_STATUSES: tuple[str, ...] = ("running", "interrupted", "complete")
STATUS_COMPLETE = "complete"
STATUS_MEANING: Mapping[str, str] = MappingProxyType({
    "running": "the run was killed or is still going",
    "interrupted": "the run was stopped by Ctrl-C or SIGTERM",
    "complete": "every controller finished",
})
RESULTS_FOLDER_HOLDS = ("a results folder holds run.json and one folder per controller with streams.csv and "
                        "tokens.csv, as python -m sim and python -m live --record write it")


def run_status(info: Mapping[str, Any], run_json: Path) -> tuple[str, tuple[str, ...] | None]:
    """run.json's ``status`` and ``finished`` (None when it does not say), checked.

    A wrong type or an unknown status is a :class:`ResultsFormatError` naming the key.
    """
    status = info.get("status", STATUS_COMPLETE)
    if not isinstance(status, str) or status not in RUN_STATUSES:
        shown = repr(status) if isinstance(status, str) else _json_kind(status)
        raise ResultsFormatError(run_json, f"{shown} is not one of {', '.join(RUN_STATUSES)}", key="status")
    finished = info.get("finished")
    if finished is None:
        return status, None
    if not isinstance(finished, list):
        raise ResultsFormatError(run_json, f"expected a list of controller names, got {_json_kind(finished)}",
                                 key="finished")
    names = [_folder_name(run_json, f"finished[{i}]", v) for i, v in enumerate(finished)]
    return status, tuple(dict.fromkeys(names))


def truncated_files(folder: Path) -> list[str]:
    """The CSV files of a controller folder whose last line stops without its newline."""
    out = []
    for name in CONTROLLER_FILES:
        path = folder / name
        try:
            if path.is_file() and not _ends_with_newline(path):
                out.append(name)
        except OSError:
            out.append(name)
    return out


@dataclass(frozen=True, eq=False)
class Run:
    """A whole results folder: run.json and one :class:`ControllerRun` per controller, in order.

    ``controllers`` holds what can be analysed. For a run that did not complete (``status`` is not
    ``complete``) that is the controllers run.json lists as ``finished``; ``missing`` names the others
    and ``warnings`` says, one line each, what was left out and why (the command line prints them).
    """

    path: Path
    info: Mapping[str, Any]
    controllers: Mapping[str, ControllerRun] = field(default_factory=dict)
    status: str = STATUS_COMPLETE
    finished: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """run.json says complete (or predates the status field) and nothing is missing."""
        return self.status == STATUS_COMPLETE and not self.missing

    @property
    def scenario(self) -> Mapping[str, Any]:
        sc = self.info.get("scenario")
        return sc if isinstance(sc, Mapping) else {}

    @property
    def scenario_name(self) -> str:
        name = self.scenario.get("name")
        return str(name) if name else self.path.name

    @property
    def slo_qoe(self) -> float:
        """run.json ``slo_qoe``, else the scenario's ``slo.qoe``, else 0.9."""
        value = _slo_value(self.info)
        return 0.9 if value is None else float(value)

    @property
    def controller_names(self) -> list[str]:
        return list(self.controllers)

    def __iter__(self) -> Iterator[ControllerRun]:
        return iter(self.controllers.values())


def _slo_value(info: Mapping[str, Any]) -> object:
    value = info.get("slo_qoe")
    if value is None:
        scenario = info.get("scenario")
        slo = scenario.get("slo") if isinstance(scenario, Mapping) else None
        value = slo.get("qoe") if isinstance(slo, Mapping) else None
    return value


def _check_info(info: Mapping[str, Any], run_json: Path) -> None:
    slo = info.get("slo_qoe")
    if slo is not None and (isinstance(slo, bool) or not isinstance(slo, int | float)):
        raise ResultsFormatError(run_json, f"must be a number, got {_json_kind(slo)}", key="slo_qoe")
    value = _slo_value(info)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ResultsFormatError(run_json, f"must be a number, got {_json_kind(value)}", key="scenario.slo.qoe")


def _no_results_here(run_dir: Path) -> ResultsFormatError:
    return ResultsFormatError(
        run_dir, f"not a results folder: no run.json and no controller folders ({RESULTS_FOLDER_HOLDS})")


def load_run(run_dir: Path | str) -> Run:
    """Read a results folder: run.json plus every controller folder (see :func:`list_controllers`).

    A run that did not complete (run.json ``status`` ``running`` or ``interrupted``) gives the
    controllers run.json lists as ``finished``; the rest are named in ``Run.missing`` and explained in
    ``Run.warnings`` (a folder of a controller that did not finish is not read: its files end where
    the run stopped). When none finished, a :class:`ResultsFormatError` says so.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        if run_dir.exists():
            raise ResultsFormatError(run_dir, f"is a file, not a results folder ({RESULTS_FOLDER_HOLDS})")
        raise ResultsFormatError(run_dir, "results folder not found")
    run_json = run_dir / "run.json"
    if not run_json.exists() and not run_json.is_symlink() and not _controller_folders(run_dir):
        raise _no_results_here(run_dir)
    info = read_json(run_json)
    _check_info(info, run_json)
    status, finished = run_status(info, run_json)
    listed = _listed_controllers(info, run_json)
    if status == STATUS_COMPLETE:
        names = list_controllers(run_dir, info)
        controllers = {n: load_controller_dir(run_dir / n, n) for n in names}
        absent = [n for n in listed if not (run_dir / n).exists()]
        warnings = [f"{run_dir}: run.json lists {n} but there is no folder {run_dir / n}; analysing the others"
                    for n in absent]
        warnings += [f"{run_dir / n / f}: the file ends mid-line (cut while being written); its last row may be "
                     "incomplete"
                     for n in names for f in truncated_files(run_dir / n)]
        return Run(path=run_dir, info=MappingProxyType(dict(info)), controllers=MappingProxyType(controllers),
                   status=status, finished=tuple(finished if finished is not None else names),
                   missing=tuple(absent), warnings=tuple(warnings))
    return _load_incomplete(run_dir, info, status, finished or (), listed)


def _load_incomplete(run_dir: Path, info: Mapping[str, Any], status: str, finished: Sequence[str],
                     listed: Sequence[str]) -> Run:
    found = _controller_folders(run_dir)
    order = list(dict.fromkeys([*listed, *finished, *found]))
    done = [n for n in order if n in finished]
    missing = [n for n in order if n not in finished]
    head = (f"{run_dir}: run incomplete (status {status}: {STATUS_MEANING[status]}); "
            f"finished: {', '.join(done) or 'none'}; missing: {', '.join(missing) or 'none'}")
    if not done:
        raise ResultsFormatError(
            run_dir, f"run incomplete (status {status}: {STATUS_MEANING[status]}) and no controller finished "
            f"(missing: {', '.join(missing) or 'none'}); nothing to analyse")
    warnings = [head]
    for name in missing:
        folder = run_dir / name
        if not folder.is_dir():
            continue
        cut = truncated_files(folder)
        if cut:
            why = f"its files stop mid-line ({', '.join(cut)})"
        elif not any((folder / f).is_file() for f in CONTROLLER_FILES):
            why = "it wrote no results file"
        else:
            why = "its files end where the run stopped"
        warnings.append(f"{folder}: skipped: did not finish, {why}")
    controllers = {}
    for name in done:
        folder = run_dir / name
        if not folder.is_dir():
            raise ResultsFormatError(folder, "run.json lists this controller as finished but its folder is missing")
        controllers[name] = load_controller_dir(folder, name)
    return Run(path=run_dir, info=MappingProxyType(dict(info)), controllers=MappingProxyType(controllers),
               status=status, finished=tuple(done), missing=tuple(missing), warnings=tuple(warnings))
