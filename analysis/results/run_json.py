"""The JSON files of a results folder, run.json above all: written so that equal content gives equal
bytes (:func:`write_json`), and so that a run's folder is honest about itself at every moment.

run.json says what ran (scenario, controllers, seed), where and when (:func:`write_run_json` adds
``git_rev``, ``versions`` and ``started_at``, the ISO 8601 UTC time the run started, kept when it is
resumed), and whether it is whole: ``status`` (``running`` from the start, so a killed run keeps it;
``interrupted`` after Ctrl-C or SIGTERM; ``complete`` once every controller finished and summary.json
is written) and ``finished`` (the controllers whose files are complete, flushed and closed),
rewritten atomically as each controller ends. Every driver writes it through this module:
``python -m sim`` (and its capacity search and sweeps), ``python -m live --record`` and the lab.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import numbers
import os
import platform
import signal
import subprocess
import threading
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from analysis.results.schema import RUN_JSON, STARTED_AT


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


# --------------------------------------------------------------------------- run.json: complete or not
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


# --------------------------------------------------------------------------- where and when a run ran
#: the packages whose versions run.json records (besides Python's): ours, the simulator's, live mode's.
VERSIONED_PACKAGES: tuple[str, ...] = ("tokenpace", "numpy", "pydantic", "simpy", "aiohttp", "prometheus-client")


@functools.cache
def git_rev() -> str:
    """The git commit of this checkout ("unknown" outside one)."""
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=False).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    """Python's version and each of :data:`VERSIONED_PACKAGES`' ("not installed" when absent)."""
    out = {"python": platform.python_version()}
    for pkg in VERSIONED_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def now_utc() -> str:
    """The time now in ISO 8601, UTC, to the millisecond (``2025-01-31T09:15:02.123+00:00``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def started_at(run_dir: Path | str, *, keep: bool) -> str:
    """``started_at`` of a run starting in ``run_dir``: with ``keep`` (the run is resumed, or joins a
    folder another process started) the one its run.json holds, if any; else the time now."""
    if keep:
        value = (read_run_json(run_dir) or {}).get(STARTED_AT)
        if isinstance(value, str) and value:
            return value
    return now_utc()


def write_run_json(run_dir: Path | str, info: Mapping[str, Any], *, started: str) -> Path:
    """DIR/run.json: ``info`` plus where and when the run ran (``git_rev``, ``versions``, ``started_at``
    = ``started``), written durably (:func:`write_json_durably`)."""
    return write_json_durably(Path(run_dir) / RUN_JSON, {
        **info, "git_rev": git_rev(), "versions": versions(), STARTED_AT: started})
