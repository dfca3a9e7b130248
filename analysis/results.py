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
    "SERVER_COLUMNS",
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
    "list_controllers",
    "load_controller_dir",
    "load_run",
    "open_recorder",
    "read_csv",
    "read_json",
    "to_jsonable",
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
EVENT_TYPES: tuple[str, ...] = ("arrive", "admit", "swap_out", "swap_in", "complete", "cancel")


class ResultsFormatError(ValueError):
    """A results file is missing or malformed. ``str()`` is one line naming the file."""

    def __init__(self, path: Path | str, problem: str, *, column: str | None = None, line: int | None = None) -> None:
        self.path = Path(path)
        self.problem = problem
        self.column = column
        self.line = line
        where = str(self.path) + (f":{line}" if line is not None else "")
        col = f" column {column!r}:" if column is not None else ""
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
            cells = [format_cell(v) for v in row]
        self._buffer.append(cells)
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def write_many(self, rows: Iterable[Mapping[str, object] | Sequence[object]]) -> None:
        for row in rows:
            self.write(row)

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


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) in (b"\n", b"\r")


def _numeric(path: Path, name: str, cells: Sequence[str], first_line: int) -> np.ndarray:
    nan = math.nan
    try:
        return np.array([float(c) if c else nan for c in cells], dtype=np.float64)
    except ValueError:
        pass
    values = np.empty(len(cells), dtype=np.float64)
    for i, cell in enumerate(cells):  # slow path: blank-but-not-empty cells, or a bad one
        text = cell.strip()
        try:
            values[i] = float(text) if text else nan
        except ValueError:
            raise ResultsFormatError(path, f"not a number: {cell!r}", column=name, line=first_line + i) from None
    return values


def read_csv(path: Path | str, columns: Sequence[str] | None = None) -> Table:
    """Read one results CSV. ``columns`` are required in its header (extra columns are kept).

    Columns named in :data:`TEXT_COLUMNS` stay text; all others must be numbers or empty. A
    final line without its newline (a writer killed mid-row) is dropped when it is short.
    """
    path = Path(path)
    if not path.is_file():
        raise ResultsFormatError(path, "file not found")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
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
    if not path.is_file():
        raise ResultsFormatError(path, "file not found")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsFormatError(path, f"cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ResultsFormatError(path, f"invalid JSON: {exc.msg}", line=exc.lineno) from None
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
            table.path, f"{values[i]!r} is not one of {', '.join(allowed)}", column=column, line=i + 2
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
        raise ResultsFormatError(streams.path, f"stream {uniq[counts > 1][0]!r} appears twice", column="stream_id")
    unknown = ~np.isin(tokens["stream_id"], ids)
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise ResultsFormatError(
            tokens.path, f"stream {tokens['stream_id'][i]!r} is not in streams.csv", column="stream_id", line=i + 2
        )
    return ControllerRun(name=name or path.name, path=path, streams=streams, tokens=tokens, **tables)


def _listed_controllers(info: Mapping[str, Any]) -> list[str]:
    listed = info.get("controllers")
    if isinstance(listed, Mapping):
        return [str(k) for k in listed]
    names: list[str] = []
    if isinstance(listed, list):
        for item in listed:
            if isinstance(item, str):
                names.append(item)
            elif isinstance(item, Mapping) and isinstance(item.get("name"), str):
                names.append(item["name"])
    return names


def list_controllers(run_dir: Path | str, info: Mapping[str, Any] | None = None) -> list[str]:
    """Controllers of a run: the sub-folders holding a streams.csv.

    Order: as listed in run.json's ``controllers``, then the others alphabetically. A controller
    run.json lists whose folder exists but lacks streams.csv is an error (a run that died).
    """
    run_dir = Path(run_dir)
    found = sorted(p.name for p in run_dir.iterdir() if p.is_dir() and (p / "streams.csv").is_file())
    listed = _listed_controllers(info or {})
    for name in listed:
        if (run_dir / name).is_dir() and name not in found:
            raise ResultsFormatError(run_dir / name / "streams.csv", "file not found")
    order = [n for n in listed if n in found] + [n for n in found if n not in listed]
    if not order:
        raise ResultsFormatError(run_dir / "*" / "streams.csv", "no controller folder with a streams.csv in this run")
    return order


@dataclass(frozen=True, eq=False)
class Run:
    """A whole results folder: run.json and one :class:`ControllerRun` per controller, in order."""

    path: Path
    info: Mapping[str, Any]
    controllers: Mapping[str, ControllerRun] = field(default_factory=dict)

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
        value = self.info.get("slo_qoe")
        if value is None:
            slo = self.scenario.get("slo")
            value = slo.get("qoe") if isinstance(slo, Mapping) else None
        return 0.9 if value is None else float(value)

    @property
    def controller_names(self) -> list[str]:
        return list(self.controllers)

    def __iter__(self) -> Iterator[ControllerRun]:
        return iter(self.controllers.values())


def load_run(run_dir: Path | str) -> Run:
    """Read a results folder: run.json plus every controller folder (see :func:`list_controllers`)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ResultsFormatError(run_dir, "results folder not found")
    info = read_json(run_dir / "run.json")
    slo = info.get("slo_qoe")
    if slo is not None and not isinstance(slo, int | float):
        raise ResultsFormatError(run_dir / "run.json", f"slo_qoe must be a number, got {slo!r}")
    names = list_controllers(run_dir, info)
    controllers = {n: load_controller_dir(run_dir / n, n) for n in names}
    return Run(path=run_dir, info=MappingProxyType(dict(info)), controllers=MappingProxyType(controllers))
