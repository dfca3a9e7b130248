"""Reading a results folder back: every CSV as a :class:`Table` of columns, a controller's folder as a
:class:`ControllerRun`, the whole folder (run.json and its controllers, complete or not) as a
:class:`Run`. Everything in ``analysis`` reads runs through here (:func:`load_run`).

A file that is missing or malformed is a :class:`ResultsFormatError` naming it (and the column and
line when known); a run cut short (run.json ``status`` not ``complete``) gives the controllers that
finished, with a warning per one left out.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from analysis.results.schema import (
    CONTROLLER_FILES,
    OUTCOMES,
    REQUIRED_FILES,
    RESULTS_FOLDER_HOLDS,
    RUN_STATUSES,
    STATUS_COMPLETE,
    STATUS_MEANING,
    TEXT_COLUMNS,
    ResultsFormatError,
)


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
