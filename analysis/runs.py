"""Experiment management: ``python -m analysis runs ROOT list|show|compare|archive|export|stats``.

Seed 002 kept its experiments in timestamped folders and shipped ``manage_experiments.sh`` with
``list``, ``details``, ``compare``, ``archive DAYS``, ``export NAME OUT.tar.gz`` and ``stats``. Here
a *run* is any folder under ROOT holding a ``run.json`` -- whatever wrote it: ``python -m sim``
(mode ``sim``), ``python -m live --record`` (``live``), the lab (``lab``), ``python -m sim capacity``
(``capacity``) or ``python -m sim sweep`` (``sweep``); a mode this module does not know is listed as
it is. A run's own sub-folders (controller folders, a sweep's cells) are not runs of their own.

Everything is read from the files, never by importing ``sim`` or ``live``:

- a run's *date* is run.json's ``started_at`` (ISO 8601, or seconds since the epoch) when it has
  one, else the time run.json was last written (the end of a finished run);
- its *status* is run.json's ``status`` (``running``: killed or still going; ``interrupted``: Ctrl-C
  or SIGTERM; ``complete``), except that a run saying ``complete`` whose files are not all there
  (a listed controller without streams.csv, a sweep without sweep.json, ...) is ``incomplete``;
- its per-seed metrics are summary.json (one seed; recomputed from the CSV files, not written,
  when a finished run has none) or, for a sweep, ``cells/<cell>/seed-<s>/summary.json``.

``compare A B`` weighs B - A against the spread across seeds with Welch's t interval (95%,
Welch-Satterthwaite degrees of freedom; B. L. Welch, Biometrika 34, 1947) when both sides have at
least two seeds, and says plainly when they do not.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import shutil
import stat
import sys
import tarfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from analysis.results import STATUS_MEANING, ResultsFormatError, read_json
from scenarios.cli_errors import EXIT_OK, BadInput, printable

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

__all__ = [
    "ACTIONS",
    "ARCHIVE_DIR",
    "STARTED_KEY",
    "STATUSES",
    "RunEntry",
    "Samples",
    "add_arguments",
    "compare_runs",
    "find_runs",
    "run_action",
    "run_samples",
    "stats",
    "welch_interval",
]

ACTIONS: tuple[str, ...] = ("list", "show", "compare", "archive", "export", "stats")
#: where ``archive`` moves runs unless ``--to`` says otherwise; ``list`` and ``stats`` skip it unless ``--all``.
ARCHIVE_DIR = "archive"
#: run.json key holding when the run started (ISO 8601 text or seconds since the epoch).
STARTED_KEY = "started_at"
#: what ``list`` says about a run: run.json's status, ``incomplete`` when it says complete but files are
#: missing, ``unreadable`` when run.json cannot be read.
STATUSES: tuple[str, ...] = ("complete", "interrupted", "running", "incomplete", "unreadable")
HEADLINE: tuple[str, ...] = ("qoe_mean", "slo_attainment", "ttft_p99_s", "stall_ratio", "waste_frac", "effective_tps")
CONFIDENCE = 0.95
SEED_PREFIX = "seed-"

Warn = Callable[[Sequence[str]], None]
#: per-seed metrics: (cell, controller) -> metric -> one value per seed (None when missing). A run that is
#: not a sweep has the single cell "".
Samples = dict[tuple[str, str], dict[str, list[float | None]]]


# --------------------------------------------------------------------------- finding runs
@dataclass(frozen=True)
class RunEntry:
    """One run folder under ROOT, as its run.json (and the files beside it) describe it."""

    path: Path
    name: str  # relative to ROOT, with "/"
    info: Mapping[str, Any] = field(default_factory=dict)
    problem: str = ""  # why run.json could not be read ("" when it could)
    started: datetime | None = None
    date_source: str = ""  # "started_at" or "run.json mtime"
    missing: tuple[str, ...] = ()  # what a complete run would hold and this one does not

    @property
    def mode(self) -> str:
        if "mode" not in self.info:  # a run.json older than the field, or an unreadable one
            return "?" if self.problem else "sim"
        mode = self.info["mode"]
        return printable(mode) if isinstance(mode, str) and mode else "?"

    @property
    def scenario(self) -> str:
        return _scenario_name(self.info)

    @property
    def controllers(self) -> list[str]:
        return _names(self.info.get("controllers"))

    @property
    def status(self) -> str:
        if self.problem:
            return "unreadable"
        raw = self.info.get("status", "complete")
        if raw in ("running", "interrupted"):
            return raw
        if raw != "complete" or self.missing:
            return "incomplete"
        return "complete"

    @property
    def date_text(self) -> str:
        return self.started.strftime("%Y-%m-%d %H:%M:%SZ") if self.started else "–"

    def row(self) -> dict[str, Any]:
        """What ``list --json`` prints for this run."""
        return {"name": self.name, "date": self.started.isoformat() if self.started else None,
                "date_source": self.date_source, "scenario": self.scenario, "mode": self.mode,
                "controllers": self.controllers, "status": self.status, "missing": list(self.missing),
                "problem": self.problem or None}


def _scenario_name(info: Mapping[str, Any]) -> str:
    sc = info.get("scenario")
    if isinstance(sc, Mapping) and isinstance(sc.get("name"), str):
        return printable(sc["name"])
    for key in ("scenario", "name", "base"):
        if isinstance(info.get(key), str):
            return printable(info[key])
    return "–"


def _names(listed: object) -> list[str]:
    """Controller names from run.json's ``controllers`` (a list of names or of {name: ...}, or an object)."""
    items: list[object] = []
    if isinstance(listed, Mapping):
        items = list(listed)
    elif isinstance(listed, list):
        items = [x.get("name") if isinstance(x, Mapping) else x for x in listed]
    return list(dict.fromkeys(printable(x) for x in items if isinstance(x, str)))


def _started(info: Mapping[str, Any], run_json: Path) -> tuple[datetime | None, str]:
    value = info.get(STARTED_KEY)
    try:
        if isinstance(value, str):
            when = datetime.fromisoformat(value)
            return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC), STARTED_KEY
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return datetime.fromtimestamp(value, UTC), STARTED_KEY
    except (ValueError, OverflowError, OSError):
        pass
    try:
        return datetime.fromtimestamp(run_json.lstat().st_mtime, UTC), "run.json mtime"
    except (OSError, ValueError, OverflowError):
        return None, ""


def _missing_files(path: Path, info: Mapping[str, Any]) -> tuple[str, ...]:
    """Files a run that says complete should hold and this one does not."""
    mode = info.get("mode", "sim")
    if mode == "sweep":
        return tuple(f for f in ("sweep.csv", "sweep.json") if not (path / f).is_file())
    if mode == "capacity":
        return tuple(f for f in ("capacity.csv", "capacity.json") if not (path / f).is_file())
    missing = []
    finished = _names(info.get("finished")) if isinstance(info.get("finished"), list) else None
    for name in _names(info.get("controllers")):
        if finished is not None and name not in finished:
            missing.append(f"{name} (not finished)")
            continue
        missing += [f"{name}/{f}" for f in ("streams.csv", "tokens.csv") if not (path / name / f).is_file()]
    return tuple(missing)


def read_entry(path: Path, root: Path) -> RunEntry:
    """The run in ``path`` (a folder holding run.json); an unreadable run.json gives ``problem``."""
    rel = path.relative_to(root).as_posix() if path != root else "."
    run_json = path / "run.json"
    try:
        info = read_json(run_json)
    except ResultsFormatError as exc:
        started, source = _started({}, run_json)
        return RunEntry(path, rel, {}, str(exc), started, source)
    started, source = _started(info, run_json)
    return RunEntry(path, rel, info, "", started, source, _missing_files(path, info))


def find_runs(root: Path, *, archived: bool = True, skip: Sequence[Path] = ()) -> list[RunEntry]:
    """Every run under ``root`` (a run's own sub-folders are not runs), by date then name.

    ``archived=False`` leaves ROOT/archive out; folders in ``skip`` are not looked into.
    """
    found: list[RunEntry] = []
    skipped = {p.absolute() for p in skip}
    for here, dirs, files in os.walk(root, onerror=None):
        folder = Path(here)
        if "run.json" in files:
            found.append(read_entry(folder, root))
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if (folder / d).absolute() not in skipped
                         and (archived or folder != root or d != ARCHIVE_DIR))
    far_past = datetime.min.replace(tzinfo=UTC)
    return sorted(found, key=lambda e: (e.started or far_past, e.name))


# --------------------------------------------------------------------------- checking the command line
def _folder(where: str, path: Path, what: str) -> Path:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise BadInput(where, f"no such folder ({what})") from None
    except (OSError, ValueError) as exc:
        raise BadInput(where, f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise BadInput(where, f"is a file, not a folder ({what})")
    return path


def resolve(root: Path, name: str, flag: str) -> RunEntry:
    """The run NAME names: its path relative to ROOT, or a folder's last part when only one run has it."""
    where = f"{flag} {printable(name)}"
    candidate = root / name
    if name and (candidate / "run.json").exists():
        if not candidate.resolve().is_relative_to(root.resolve()):
            raise BadInput(where, f"is not under ROOT {root}")
        return read_entry(candidate, root) if candidate.resolve() != root.resolve() else read_entry(root, root)
    runs = find_runs(root)
    by_tail = [e for e in runs if e.name.rsplit("/", 1)[-1] == name]
    if len(by_tail) == 1:
        return by_tail[0]
    if len(by_tail) > 1:
        raise BadInput(where, f"names several runs: {', '.join(e.name for e in by_tail)} (give the path under ROOT)")
    names = [e.name for e in runs]
    tails = {e.name.rsplit("/", 1)[-1]: e.name for e in runs}
    close = list(dict.fromkeys(difflib.get_close_matches(name, names, n=3)
                               + [tails[t] for t in difflib.get_close_matches(name, list(tails), n=3)]))[:3]
    hint = (f" (did you mean {' or '.join(close)}?)" if close
            else f" ({len(names)} runs: python -m analysis runs {root} list)")
    raise BadInput(where, f"no run of that name under ROOT {root}{hint}")


# --------------------------------------------------------------------------- per-seed metrics
def _summary_controllers(path: Path) -> dict[str, Mapping[str, Any]]:
    summary = read_json(path)
    ctrls = summary.get("controllers")
    if not isinstance(ctrls, Mapping):
        raise ResultsFormatError(path, "expected an object of controllers", key="controllers")
    return {printable(str(k)): v for k, v in ctrls.items() if isinstance(v, Mapping)}


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def _seed_folders(entry: RunEntry) -> Iterator[tuple[str, Path]]:
    """A sweep's (cell, seed folder) pairs holding a summary.json, in name order."""
    cells = entry.path / "cells"
    if not cells.is_dir():
        return
    for cell in sorted(p for p in cells.iterdir() if p.is_dir()):
        for seed in sorted(p for p in cell.iterdir() if p.is_dir() and p.name.startswith(SEED_PREFIX)):
            if (seed / "summary.json").is_file():
                yield cell.name, seed


def run_samples(entry: RunEntry) -> Samples:
    """Per-seed metrics of a run: a sweep's seed folders, else the run's summary.json (computed from its
    files, not written, when it has none). A :class:`ResultsFormatError` when there are none."""
    if entry.problem:
        raise BadInput("", entry.problem)
    if entry.mode == "sweep":
        seeds: dict[str, list[dict[str, Mapping[str, Any]]]] = {}
        for cell, folder in _seed_folders(entry):
            seeds.setdefault(cell, []).append(_summary_controllers(folder / "summary.json"))
        if not seeds:
            raise ResultsFormatError(entry.path / "cells", f"no {SEED_PREFIX}*/summary.json in any cell yet")
        return {(cell, ctrl): {m: [_number(s.get(ctrl, {}).get(m)) for s in runs]
                               for m in dict.fromkeys(m for s in runs for m in s.get(ctrl, {}))}
                for cell, runs in seeds.items() for ctrl in dict.fromkeys(c for s in runs for c in s)}
    if entry.mode == "capacity":
        raise ResultsFormatError(entry.path / "run.json", "a capacity search: compare its capacities with "
                                 f"python -m analysis capacity {entry.path}")
    if (entry.path / "summary.json").is_file():
        ctrls = _summary_controllers(entry.path / "summary.json")
    else:
        from analysis.metrics import summarize_run

        ctrls = summarize_run(entry.path, write=False)["controllers"]
    return {("", ctrl): {m: [_number(v)] for m, v in metrics.items()} for ctrl, metrics in ctrls.items()}


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation and count of one metric's per-seed values."""

    mean: float | None
    sd: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Spread:
        xs = [v for v in values if v is not None]
        if not xs:
            return cls(None, None, 0)
        mean = math.fsum(xs) / len(xs)
        sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
        return cls(mean, sd, len(xs))

    def half_ci(self, confidence: float = CONFIDENCE) -> float | None:
        """Half-width of the Student t interval of the mean."""
        if self.sd is None:
            return None
        from scipy.stats import t

        return float(t.ppf(0.5 + confidence / 2, self.n - 1)) * self.sd / math.sqrt(self.n)


def welch_interval(a: Spread, b: Spread, confidence: float = CONFIDENCE) -> tuple[float, float, float] | None:
    """The ``confidence`` interval of mean(B) - mean(A) by Welch's t (unequal variances) and its degrees
    of freedom; None unless both sides have two values or more."""
    if a.sd is None or b.sd is None or a.mean is None or b.mean is None:
        return None
    va, vb = a.sd**2 / a.n, b.sd**2 / b.n
    diff = b.mean - a.mean
    if va + vb == 0.0:
        return diff, diff, math.inf
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    from scipy.stats import t

    half = float(t.ppf(0.5 + confidence / 2, df)) * math.sqrt(va + vb)
    return diff - half, diff + half, df


# --------------------------------------------------------------------------- compare
def _metric_order(keys: Sequence[str]) -> list[str]:
    from analysis.metrics import METRIC_KEYS

    return [k for k in METRIC_KEYS if k in keys] + sorted(k for k in keys if k not in METRIC_KEYS)


def compare_runs(a: RunEntry, b: RunEntry) -> dict[str, Any]:
    """Metric by metric for every (cell, controller) both runs hold: A, B, B - A and, when both have two
    seeds or more, the 95% Welch interval of B - A and whether it excludes 0 (the difference exceeds
    the seed spread)."""
    sa, sb = run_samples(a), run_samples(b)
    common = [k for k in sa if k in sb]
    if not common:
        def shown(s: Samples) -> str:
            return ", ".join(f"{c}:{n}" if c else n for c, n in s) or "none"
        raise BadInput(f"B {b.name}", f"no controller (and cell) in common with A {a.name} (A has {shown(sa)}; "
                       f"B has {shown(sb)})")
    rows = []
    for key in common:
        ma, mb = sa[key], sb[key]
        for metric in _metric_order([m for m in ma if m in mb]):
            ra, rb = Spread.of(ma[metric]), Spread.of(mb[metric])
            if ra.n == 0 and rb.n == 0:
                continue
            diff = rb.mean - ra.mean if ra.mean is not None and rb.mean is not None else None
            ci = welch_interval(ra, rb)
            if ci is None:
                verdict = "one seed each" if ra.n <= 1 and rb.n <= 1 else (
                    "one seed in A" if ra.n <= 1 else "one seed in B")
            else:
                verdict = "yes" if ci[0] > 0 or ci[1] < 0 else "no"
            rows.append({"cell": key[0], "controller": key[1], "metric": metric,
                         "a": ra.mean, "a_n": ra.n, "b": rb.mean, "b_n": rb.n, "diff": diff,
                         "ci95_low": None if ci is None else ci[0], "ci95_high": None if ci is None else ci[1],
                         "welch_df": None if ci is None or math.isinf(ci[2]) else ci[2],
                         "exceeds_seed_spread": None if ci is None else verdict == "yes", "verdict": verdict})
    seeds_a = max(Spread.of(v).n for m in sa.values() for v in m.values())
    seeds_b = max(Spread.of(v).n for m in sb.values() for v in m.values())
    return {"a": a.name, "b": b.name, "seeds_a": seeds_a, "seeds_b": seeds_b, "rows": rows,
            "only_in_a": [list(k) for k in sa if k not in sb], "only_in_b": [list(k) for k in sb if k not in sa]}


# --------------------------------------------------------------------------- stats
def _disk_bytes(path: Path) -> int:
    total = 0
    for here, _, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(here, f))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def _rows_in(csv_path: Path) -> int:
    try:
        with csv_path.open("rb") as f:
            n = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except OSError:
        return 0
    return max(0, n - 1)


def _volume(entry: RunEntry) -> dict[str, float]:
    """Streams, tokens generated, simulated seconds and controller runs (a sweep: one per controller per
    cell per seed) a run holds, from its summaries (streams.csv rows when a live run has no summary.json)."""
    out = {"streams": 0.0, "tokens_generated": 0.0, "run_time_s": 0.0, "controller_runs": 0.0}
    if entry.problem:
        return out
    out["controller_runs"] = len(entry.controllers)
    if entry.mode == "capacity":
        return out
    summaries: list[Path] = []
    if entry.mode == "sweep":
        summaries = [folder / "summary.json" for _, folder in _seed_folders(entry)]
        out["controller_runs"] = 0
    elif (entry.path / "summary.json").is_file():
        summaries = [entry.path / "summary.json"]
    else:
        for name in entry.controllers:
            out["streams"] += _rows_in(entry.path / name / "streams.csv")
            out["tokens_generated"] += _rows_in(entry.path / name / "tokens.csv")
        return out
    for path in summaries:
        try:
            ctrls = _summary_controllers(path)
        except ResultsFormatError:
            continue
        out["controller_runs"] += len(ctrls) if entry.mode == "sweep" else 0
        for metrics in ctrls.values():
            for key in ("streams", "tokens_generated", "run_time_s"):
                out[key] += _number(metrics.get(key)) or 0.0
    return out


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover - the loop returns


def stats(runs: Sequence[RunEntry]) -> dict[str, Any]:
    """Totals over runs: counts by mode and status, controller runs, disk use, streams and tokens
    simulated and served live, simulated time, scenarios, oldest and newest."""
    sizes = {e.name: _disk_bytes(e.path) for e in runs}
    volumes = {e.name: _volume(e) for e in runs}
    simulated = [e for e in runs if e.mode in ("sim", "sweep")]
    served = [e for e in runs if e.mode in ("live", "lab")]
    dated = [e for e in runs if e.started is not None]
    disk_by_mode: Counter[str] = Counter()
    for e in runs:
        disk_by_mode[e.mode] += sizes[e.name]
    largest = max(runs, key=lambda e: sizes[e.name], default=None)
    return {
        "runs": len(runs),
        "by_mode": dict(sorted(Counter(e.mode for e in runs).items())),
        "by_status": {s: n for s in STATUSES if (n := sum(e.status == s for e in runs))},
        "controller_runs": int(sum(v["controller_runs"] for v in volumes.values())),
        "scenarios": len({e.scenario for e in runs if not e.problem}),
        "disk_bytes": sum(sizes.values()),
        "disk_bytes_by_mode": dict(sorted(disk_by_mode.items())),
        "largest": None if largest is None else {"name": largest.name, "bytes": sizes[largest.name]},
        "streams_simulated": int(sum(volumes[e.name]["streams"] for e in simulated)),
        "tokens_simulated": int(sum(volumes[e.name]["tokens_generated"] for e in simulated)),
        "simulated_s": round(sum(volumes[e.name]["run_time_s"] for e in simulated), 3),
        "streams_live": int(sum(volumes[e.name]["streams"] for e in served)),
        "tokens_live": int(sum(volumes[e.name]["tokens_generated"] for e in served)),
        "oldest": None if not dated else min(dated, key=lambda e: e.started).name,  # type: ignore[arg-type,return-value]
        "newest": None if not dated else max(dated, key=lambda e: e.started).name,  # type: ignore[arg-type,return-value]
    }


# --------------------------------------------------------------------------- archive and export
def _age_cutoff(days: float) -> datetime:
    return datetime.fromtimestamp(time.time() - days * 86400.0, UTC)


def archive_plan(root: Path, days: float, dest: Path) -> tuple[list[tuple[RunEntry, Path]], list[str]]:
    """The runs older than ``days`` and where each goes (``dest``/its name); the runs left where they are
    and why. A run that still says ``running`` moves only if run.json has not changed for ``days``."""
    cutoff = _age_cutoff(days)
    moves, kept = [], []
    for entry in find_runs(root, archived=False, skip=[dest]):
        if entry.started is None or entry.started >= cutoff:
            continue
        if entry.path.absolute() == root.absolute():
            kept.append(f"{entry.name}: ROOT itself is a run; not moved")
            continue
        if entry.status == "running":
            mtime = datetime.fromtimestamp((entry.path / "run.json").lstat().st_mtime, UTC)
            if mtime >= cutoff:
                kept.append(f"{entry.name}: still says running and run.json changed on "
                            f"{mtime:%Y-%m-%d %H:%M:%SZ}; not moved")
                continue
        moves.append((entry, dest / entry.name))
    return moves, kept


def export_run(entry: RunEntry, out: Path) -> int:
    """Write ``entry``'s folder to ``out`` as a gzip tarball whose members sit under the folder's own
    name (no absolute paths); written beside ``out`` and renamed into place. Returns its size."""
    tmp = out.with_name(f".{out.name}.partial")
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(entry.path, arcname=entry.path.name if entry.name != "." else entry.path.resolve().name)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out.stat().st_size


# --------------------------------------------------------------------------- the command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    """``runs``' arguments: ROOT, then one action with its own."""
    p.add_argument("root", type=Path, metavar="ROOT", help="folder holding runs (searched recursively)")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = acts.add_parser("list", help="every run: name, date, scenario, mode, controllers, status")
    a.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a.add_argument("--all", action="store_true", help=f"include ROOT/{ARCHIVE_DIR}")
    a = acts.add_parser("show", help="one run's metadata and summary table")
    a.add_argument("name", metavar="NAME", help="the run's path under ROOT (or its folder name when unique)")
    a.add_argument("--json", action="store_true", help="print JSON instead of tables")
    a = acts.add_parser("compare", help="two runs metric by metric, B - A, against the seed spread")
    a.add_argument("a", metavar="A", help="a run under ROOT")
    a.add_argument("b", metavar="B", help="another run under ROOT")
    a.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = acts.add_parser("archive", help=f"move runs older than DAYS into ROOT/{ARCHIVE_DIR}/ (or --to DIR)")
    a.add_argument("--older-than", type=float, required=True, metavar="DAYS", help="age in days (by the run's date)")
    a.add_argument("--to", type=Path, metavar="DIR", help=f"where to move them (default ROOT/{ARCHIVE_DIR})")
    a.add_argument("--dry-run", action="store_true", help="say what would move, move nothing")
    a = acts.add_parser("export", help="one run's folder as a .tar.gz")
    a.add_argument("name", metavar="NAME", help="the run's path under ROOT")
    a.add_argument("out", type=Path, metavar="OUT.tar.gz", help="the tarball to write")
    a.add_argument("--force", action="store_true", help="overwrite OUT.tar.gz if it exists")
    a = acts.add_parser("stats", help="totals: runs by mode and status, disk use, streams simulated, ...")
    a.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a.add_argument("--all", action="store_true", help=f"include ROOT/{ARCHIVE_DIR}")
    for sub in acts.choices.values():
        sub.add_argument("--debug", action="store_true", help="show the traceback of an internal error")


EPILOG = textwrap.dedent(f"""\
    python -m analysis runs ROOT list [--json] [--all]
    python -m analysis runs ROOT show NAME [--json]
    python -m analysis runs ROOT compare A B [--json]
    python -m analysis runs ROOT archive --older-than DAYS [--to DIR] [--dry-run]
    python -m analysis runs ROOT export NAME OUT.tar.gz [--force]
    python -m analysis runs ROOT stats [--json] [--all]

    A run is a folder holding run.json (sim, live, lab, capacity, sweep). Its date is run.json's
    {STARTED_KEY}, else when run.json was last written. NAME is the run's path under ROOT.
    exit codes: 0 done; 2 bad input (a missing folder or run, an option out of range, an existing
    OUT.tar.gz, a malformed file: named on stderr); 1 internal error (rerun with --debug).""")


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def _cell(text: object) -> str:
    return printable(str(text))


def _fmt(metric: str, value: float | None, n: int = 1, *, diff: bool = False) -> str:
    from analysis.metrics import TABLE_COLUMNS, format_value

    if value is None:
        return "–"
    fmt = next((c.fmt for c in TABLE_COLUMNS if c.key == metric), ".4g")
    if fmt == "kB":  # compare shows bytes, as the metric's name says
        fmt = ".4g"
    if fmt == "d" and (n > 1 or diff or value != int(value)):
        fmt = ".1f"
    if diff and fmt == "%":
        return f"{100.0 * value:+.1f} pp"
    text = format_value(value, fmt)
    return f"+{text}" if diff and value >= 0 else text


def _list(out: Console, root: Path, args: argparse.Namespace, warn: Warn) -> int:
    from rich.table import Table

    runs = find_runs(root, archived=args.all)
    warn([f"{e.problem} (listed as unreadable)" for e in runs if e.problem])
    if args.json:
        _print_json([e.row() for e in runs])
        return EXIT_OK
    if not runs:
        out.print(f"no runs under {root} (a run is a folder holding run.json)", highlight=False, soft_wrap=True)
        return EXIT_OK
    table = Table(title=f"runs under {root}", header_style="bold")
    for col in ("name", "date (UTC)", "scenario", "mode", "controllers", "status"):
        table.add_column(col)
    for e in runs:
        status = e.status + (f" (missing {', '.join(e.missing)})" if e.missing else "")
        table.add_row(_cell(e.name), e.date_text, e.scenario, e.mode, ", ".join(e.controllers) or "–", status)
    out.print(table)
    return EXIT_OK


def _sweep_table(entry: RunEntry, samples: Samples) -> RenderableType:
    from rich.table import Table

    metrics = [m for m in HEADLINE if any(m in s for s in samples.values())]
    table = Table(title=f"{entry.name}: mean ± 95% CI over seeds (Student t)", header_style="bold")
    for col in ("cell", "controller", "seeds", *metrics):
        table.add_column(col, justify="left" if col in ("cell", "controller") else "right")
    for (cell, ctrl), slot in samples.items():
        cells = []
        n = 0
        for m in metrics:
            sp = Spread.of(slot.get(m, []))
            n = max(n, sp.n)
            half = sp.half_ci()
            cells.append(_fmt(m, sp.mean, sp.n) + ("" if half is None else f" ± {_fmt(m, half, sp.n)}"))
        table.add_row(_cell(cell), _cell(ctrl), str(n), *cells)
    return table


KNOWN_MODES = ("sim", "live", "lab", "capacity", "sweep")


def _meta(entry: RunEntry, *, table: bool) -> dict[str, Any]:
    info = entry.info
    meta: dict[str, Any] = {
        "name": entry.name, "path": str(entry.path), "mode": entry.mode, "status": entry.status,
        "status_meaning": STATUS_MEANING.get(entry.status, "run.json says complete but files are missing"
                                             if entry.status == "incomplete" else ""),
        "date": entry.date_text if table else (entry.started.isoformat() if entry.started else None),
        "date_source": entry.date_source,
        "scenario": entry.scenario, "scenario_file": info.get("scenario_file"),
        "seed": info.get("seed", info.get("seeds")), "controllers": entry.controllers,
        "finished": _names(info.get("finished")) if "finished" in info else None,
        "missing": list(entry.missing), "git_rev": info.get("git_rev"), "versions": info.get("versions"),
    }
    durations: dict[str, Any] = {}
    for part in ("lab", "live"):
        if isinstance(info.get(part), Mapping) and _number(info[part].get("wall_s")) is not None:
            durations[f"{part} wall_s"] = info[part]["wall_s"]
    if entry.mode == "sweep":
        meta["grid"] = info.get("grid")
        meta["cells"] = len({c for c, _ in _seed_folders(entry)})
    meta["durations"] = durations
    if entry.mode not in KNOWN_MODES:
        meta["note"] = f"mode {entry.mode!r} is not one this version knows ({', '.join(KNOWN_MODES)}): metadata only"
    return meta


def _show(out: Console, root: Path, args: argparse.Namespace, warn: Warn) -> int:
    from rich.table import Table

    entry = resolve(root, args.name, "NAME")
    if entry.problem:
        raise BadInput("", entry.problem)
    meta = _meta(entry, table=not args.json)
    samples: Samples = {}
    try:
        if entry.mode in KNOWN_MODES and entry.mode != "capacity":
            samples = run_samples(entry)
    except ResultsFormatError as exc:
        warn([f"no summary: {exc}"])
    if entry.mode not in ("sweep", "capacity"):  # the summary's simulated (or measured) run time per controller
        for (_, ctrl), slot in samples.items():
            rt = Spread.of(slot.get("run_time_s", [])).mean
            if rt is not None:
                meta["durations"][f"{ctrl} run_time_s"] = rt
    if args.json:
        summary = {f"{c}:{n}" if c else n: {m: v[0] if len(v) == 1 else v for m, v in slot.items()}
                   for (c, n), slot in samples.items()}
        _print_json({**meta, "summary": summary})
        return EXIT_OK
    table = Table(title=f"run {entry.name}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in meta.items():
        if value in (None, [], {}) and key not in ("controllers",):
            continue
        if isinstance(value, Mapping):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value)) or "–"
        table.add_row(key, _cell(value))
    out.print(table)
    if entry.mode == "capacity" and (entry.path / "capacity.json").is_file():
        from analysis.capacity import capacity_table, read_capacity_json

        out.print(capacity_table(read_capacity_json(entry.path / "capacity.json")))
    elif entry.mode == "sweep" and samples:
        out.print(_sweep_table(entry, samples))
    elif samples:
        from analysis.metrics import format_table

        ctrl_info = entry.info.get("controller_info")
        labels = {n: str(v.get("label", n)) for n, v in ctrl_info.items()
                  if isinstance(v, Mapping)} if isinstance(ctrl_info, Mapping) else {}
        summary = {"scenario": entry.scenario,
                   "controllers": {n: {m: v[0] for m, v in slot.items()} for (_, n), slot in samples.items()}}
        out.print(format_table(summary, controller_labels=labels))
    return EXIT_OK


def _compare(out: Console, root: Path, args: argparse.Namespace, warn: Warn) -> int:
    from rich.table import Table

    a, b = resolve(root, args.a, "A"), resolve(root, args.b, "B")
    result = compare_runs(a, b)
    if args.json:
        _print_json(result)
        return EXIT_OK
    if result["seeds_a"] <= 1 and result["seeds_b"] <= 1:
        out.print(f"one seed each ({a.name}, {b.name}): the differences below cannot be weighed against the spread "
                  "across seeds (run a sweep with several seeds for that)", highlight=False, soft_wrap=True)
    elif result["seeds_a"] <= 1 or result["seeds_b"] <= 1:
        one = a.name if result["seeds_a"] <= 1 else b.name
        out.print(f"{one} has one seed: no interval for the difference (both sides need two seeds or more)",
                  highlight=False, soft_wrap=True)
    cells = any(r["cell"] for r in result["rows"])
    table = Table(title=f"compare A {a.name} with B {b.name} (B - A; 95% Welch interval across seeds)",
                  header_style="bold")
    for col in (*(("cell",) if cells else ()), "controller", "metric", "A", "B", "B - A", "95% CI of B - A",
                "beyond seed spread"):
        table.add_column(col, justify="right" if col in ("A", "B", "B - A", "95% CI of B - A") else "left")
    for r in result["rows"]:
        m = r["metric"]
        ci = "–" if r["ci95_low"] is None else (f"[{_fmt(m, r['ci95_low'], 2, diff=True)}, "
                                                f"{_fmt(m, r['ci95_high'], 2, diff=True)}]")
        a_text = _fmt(m, r["a"], r["a_n"]) + (f" (n={r['a_n']})" if r["a_n"] > 1 else "")
        b_text = _fmt(m, r["b"], r["b_n"]) + (f" (n={r['b_n']})" if r["b_n"] > 1 else "")
        table.add_row(*((_cell(r["cell"]),) if cells else ()), _cell(r["controller"]), m, a_text, b_text,
                      _fmt(m, r["diff"], 2, diff=True), ci, r["verdict"])
    out.print(table)
    for side, key in (("A", "only_in_a"), ("B", "only_in_b")):
        if result[key]:
            out.print(f"only in {side}: {', '.join(':'.join(filter(None, k)) for k in result[key])}",
                      highlight=False, soft_wrap=True)
    return EXIT_OK


def _archive(out: Console, root: Path, args: argparse.Namespace, warn: Warn) -> int:
    days = args.older_than
    if not (math.isfinite(days) and days >= 0):
        raise BadInput("--older-than", f"must be a non-negative number of days, got {days!r}")
    dest = args.to if args.to is not None else root / ARCHIVE_DIR
    try:
        st = dest.stat()
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise BadInput(f"--to {dest}", f"cannot read: {exc.strerror or exc}") from None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise BadInput(f"--to {dest}", "is a file, not a folder")
    for parent in [dest, *dest.absolute().parents]:
        if (parent / "run.json").is_file():
            raise BadInput(f"--to {dest}", f"is inside the run {parent}: give a folder outside any run")
    moves, kept = archive_plan(root, days, dest)
    clashes = [(e, to) for e, to in moves if to.exists()]
    if clashes:
        raise BadInput.many([(f"--to {dest}", f"{to} exists already: not moving {e.name} onto it (nothing moved)")
                             for e, to in clashes])
    verb = "would move" if args.dry_run else "moved"
    for entry, to in moves:
        if not args.dry_run:
            to.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(entry.path), str(to))
        out.print(f"{verb} {entry.name} ({entry.date_text}) -> {to}", highlight=False, soft_wrap=True)
    for line in kept:
        out.print(line, highlight=False, soft_wrap=True)
    out.print(f"{len(moves)} run{'s' if len(moves) != 1 else ''} older than {days:g} days {verb} to {dest}",
              highlight=False, soft_wrap=True)
    return EXIT_OK


def _export(out: Console, root: Path, args: argparse.Namespace, warn: Warn) -> int:
    entry = resolve(root, args.name, "NAME")
    where = f"OUT.tar.gz {args.out}"
    target: Path = args.out
    if target.is_dir():
        raise BadInput(where, "is a folder: give the tarball's file name")
    if (target.exists() or target.is_symlink()) and not args.force:
        raise BadInput(where, "exists already (give --force to overwrite it)")
    if not target.absolute().parent.is_dir():
        raise BadInput(where, f"cannot be written: {target.absolute().parent} is not a folder")
    if target.absolute().resolve().is_relative_to(entry.path.resolve()):
        raise BadInput(where, f"is inside the run being exported ({entry.path}): write it elsewhere")
    size = export_run(entry, target)
    out.print(f"exported {entry.name} ({entry.status}) to {target} ({_size(size)})", highlight=False, soft_wrap=True)
    return EXIT_OK


def _stats(out: Console, root: Path, args: argparse.Namespace, warn: Warn) -> int:
    from rich.table import Table

    runs = find_runs(root, archived=args.all)
    warn([f"{e.problem} (listed as unreadable)" for e in runs if e.problem])
    totals = stats(runs)
    if args.json:
        _print_json(totals)
        return EXIT_OK

    def counts(c: Mapping[str, Any], unit: Callable[[Any], str] = str) -> str:
        return ", ".join(f"{k} {unit(v)}" for k, v in c.items()) or "–"

    table = Table(title=f"runs under {root}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="left")
    largest = totals["largest"]
    for key, value in (
        ("runs", totals["runs"]),
        ("by mode", counts(totals["by_mode"])),
        ("by status", counts(totals["by_status"])),
        ("controller runs", totals["controller_runs"]),
        ("scenarios", totals["scenarios"]),
        ("disk use", f"{_size(totals['disk_bytes'])} ({counts(totals['disk_bytes_by_mode'], _size)})"),
        ("largest run", "–" if largest is None else f"{largest['name']} ({_size(largest['bytes'])})"),
        ("streams simulated", f"{totals['streams_simulated']} ({totals['tokens_simulated']} tokens, "
                              f"{totals['simulated_s']:.1f} simulated s)"),
        ("streams served live", f"{totals['streams_live']} ({totals['tokens_live']} tokens)"),
        ("oldest", totals["oldest"] or "–"),
        ("newest", totals["newest"] or "–"),
    ):
        table.add_row(key, _cell(value))
    out.print(table)
    return EXIT_OK


COMMANDS: Mapping[str, Callable[[Console, Path, argparse.Namespace, Warn], int]] = {
    "list": _list, "show": _show, "compare": _compare, "archive": _archive, "export": _export, "stats": _stats,
}


def run_action(args: argparse.Namespace, out: Console, warn: Warn) -> int:
    """Run ``args.action`` on ``args.root``; bad input raises :class:`BadInput` naming the flag or file."""
    root = _folder(f"ROOT {args.root}", args.root, "give the folder holding your runs")
    return COMMANDS[args.action](out, root, args, warn)

