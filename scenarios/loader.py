"""Reading scenario files: YAML in, a validated :class:`Scenario` out, or every problem at once.

A file with four problems reports four lines, each naming the file and the key path
(``scenarios/wifi.yaml: paths.wifi.rate_mbps: Input should be greater than 0 (got -1)``), so the
user fixes them in one go instead of meeting them one rerun at a time. Unknown keys are named at
any depth (the likeliest typo), with the closest known key when one is near. Files that are not
UTF-8, folders, huge files and alias bombs each get one plain line instead of a traceback or a hang.
"""

from __future__ import annotations

import csv
import difflib
import json
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from scenarios.cli_errors import BadInput
from scenarios.schema import Scenario
from scenarios.traces import TraceError, load_mahimahi, resolve_trace

BUILTIN_DIR = Path(__file__).parent
MAX_FILE_BYTES = 256 << 10  # a scenario is a few KB (traces and request CSVs live in their own files);
# PyYAML's pure-Python parser (kept for its clearer messages) takes ~2 s on this much
MAX_PROBLEMS = 40  # lines printed for one file: past this it is the wrong file, not a few typos
MAX_VALUES = 200_000  # values after YAML aliases are expanded: past this it is a bomb, not a scenario
MAX_INT = 2**63 - 1  # numpy and every CSV reader agree up to int64
REQUEST_CSV_COLUMNS = ("arrival_time", "prefill_length", "decode_length")


class ScenarioError(BadInput):
    """Every problem of one scenario file; ``file``/``key``/``message`` are the first one's.

    ``problems`` holds each as ``("FILE: key.path", message)`` (``("FILE", message)`` when the
    problem is the whole file), which :func:`scenarios.cli_errors.run_cli` prints one per line.
    """

    def __init__(self, file: str | Path, key: str, message: str) -> None:
        self.file, self.key, self.message = str(file), key, message
        super().__init__(_where(file, key), message)

    @classmethod
    def several(cls, file: str | Path, problems: Sequence[tuple[str, str]]) -> ScenarioError:
        """One error holding ``problems`` (``(key, message)`` pairs, in order, duplicates dropped,
        at most ``MAX_PROBLEMS`` of them and a line saying how many more)."""
        unique = list(dict.fromkeys((str(k), str(m)) for k, m in problems))
        if not unique:
            raise ValueError("ScenarioError.several needs at least one problem")
        if len(unique) > MAX_PROBLEMS:
            unique[MAX_PROBLEMS:] = [("", f"... and {len(unique) - MAX_PROBLEMS} more problems")]
        err = cls(file, *unique[0])
        err.problems = [(_where(file, k), m) for k, m in unique]
        err.args = (err._text(),)
        return err


def _where(file: str | Path, key: str) -> str:
    return f"{file}: {key}" if key else str(file)


@dataclass(frozen=True)
class LoadedScenario:
    scenario: Scenario
    path: Path  # the file it came from
    raw: dict[str, Any]  # the YAML as written (recorded in run.json)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def trace_path(self, path_name: str) -> Path:
        trace = self.scenario.paths[path_name].trace
        assert trace is not None
        return resolve_trace(trace, self.base_dir)

    def resolved(self) -> dict[str, Any]:
        """The scenario with every default filled in, JSON-ready."""
        return json.loads(self.scenario.model_dump_json(by_alias=True))


def builtin_scenarios() -> dict[str, Path]:
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.yaml"))}


def find_scenario(name_or_path: str | Path) -> Path:
    """A file path, or the name of a built-in scenario (``steady-broadband``)."""
    if not str(name_or_path):
        raise ScenarioError("''", "", "an empty name: give a scenario file or a built-in scenario's name")
    p = Path(name_or_path)
    shown = str(name_or_path)
    try:
        if p.is_file():
            return p
        builtin = builtin_scenarios()
        if str(name_or_path) in builtin:
            return builtin[str(name_or_path)]
        if p.is_dir():
            raise ScenarioError(shown, "", "is a folder, not a scenario file")
        if p.exists():  # a device or a pipe (/dev/stdin): read it like a file, size-capped
            return p
    except OSError as exc:  # a name too long for the filesystem, a symlink loop
        raise ScenarioError(shown, "", f"cannot read: {exc.strerror or exc}") from None
    known = ", ".join(builtin)
    raise ScenarioError(shown, "", f"no such file, and not a built-in scenario ({known})")


# --------------------------------------------------------------------------- the shape of the schema
def _unwrap(tp: Any, disc: str | None = None) -> tuple[Any, str | None]:
    """Strip Annotated and Optional; a discriminated union comes back as ``types.UnionType`` args."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            args = typing.get_args(tp)
            for meta in args[1:]:
                if isinstance(meta, FieldInfo) and isinstance(meta.discriminator, str):
                    disc = meta.discriminator
            tp = args[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) != 1:
                return tuple(members), disc
            tp = members[0]
        else:
            return tp, disc


def _tags(members: tuple[Any, ...], disc: str | None) -> dict[str, Any]:
    """tag -> member model of a discriminated union."""
    out: dict[str, Any] = {}
    for m in members:
        field = m.model_fields.get(disc) if disc and isinstance(m, type) and issubclass(m, BaseModel) else None
        for tag in typing.get_args(field.annotation) if field is not None else ():
            out[str(tag)] = m
    return out


def _model_field(model: type[BaseModel], key: Any) -> FieldInfo | None:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field
    return None


def _shape_at(loc: Sequence[Any]) -> tuple[Any, str | None]:
    """The schema's type at a pydantic error location (None when the location leaves the schema)."""
    tp, disc = _unwrap(Scenario)
    for part in loc:
        if isinstance(part, str) and part.startswith("function-"):
            continue
        if isinstance(tp, tuple):  # a union: pydantic puts the branch's tag in the location
            tp = _tags(tp, disc).get(str(part))
            disc = None
            if tp is None:
                return None, None
            continue
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = _model_field(tp, part)
            if field is None:
                return None, None
            tp, disc = _unwrap(field.annotation, field.discriminator if isinstance(field.discriminator, str) else None)
            continue
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is dict and len(args) == 2:
            tp, disc = _unwrap(args[1])
        elif origin is list and args:
            tp, disc = _unwrap(args[0])
        else:
            return None, None
    return tp, disc


def _known_keys(tp: Any) -> list[str]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [field.alias or name for name, field in tp.model_fields.items()]
    return []


# --------------------------------------------------------------------------- pydantic errors -> lines
def key_text(part: Any) -> str:
    """A key as printed: itself, or its repr when it would break the line or vanish ("\\r", "")."""
    text = str(part)
    return text if text.isprintable() and text.strip() == text and text else repr(text)


def _clean_loc(loc: tuple[Any, ...], data: Any, kind: str = "missing") -> str:
    """The key path as written in the file: pydantic adds union tags (``faults.0.rate.factor``,
    ``...output_tokens.uniform.high``) and validator wrappers that are not keys; drop those."""
    return ".".join(_split_loc(loc, data, kind)[0])


def _split_loc(loc: tuple[Any, ...], data: Any, kind: str = "missing") -> tuple[list[str], int | None]:
    """(the key path as written, and the index in ``loc`` of a non-discriminated union's branch name).

    A branch name is a part of the location that is not in the data: neither the value's own tag
    (dropped) nor the key a ``missing`` / ``invalid_key`` error is about (the last part)."""
    out: list[str] = []
    branch_at: int | None = None
    cur = data
    for i, part in enumerate(loc):
        # a tag is also a key when a kind names its own field (``{kind: phases, phases: [...]}``): then the
        # tag is the part followed by a key of the same mapping
        is_tag = isinstance(cur, dict) and part in (cur.get("kind"), cur.get("dist")) and (
            part not in cur or (i + 1 < len(loc) and loc[i + 1] in cur))
        if is_tag or (isinstance(part, str) and part.startswith("function-")):
            continue
        in_dict = isinstance(cur, dict) and part in cur
        in_list = isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur)
        missing_key = isinstance(cur, dict) and i == len(loc) - 1 and kind in ("missing", "invalid_key")
        if cur is not None and not (in_dict or in_list or missing_key):
            if branch_at is None:
                branch_at = i
            continue
        out.append(key_text(part))
        cur = cur[part] if in_dict or in_list else None
    return out, branch_at


def _shown(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(err: Any, data: Any) -> tuple[str, str]:
    """One pydantic error as (key path, message) a user can act on."""
    loc, kind, msg = tuple(err["loc"]), err["type"], err["msg"]
    key = _clean_loc(loc, data, kind)
    ctx = err.get("ctx") or {}
    value = err.get("input")
    tp, disc = _shape_at(loc)
    if kind == "extra_forbidden":
        near = difflib.get_close_matches(str(loc[-1]), _known_keys(_shape_at(loc[:-1])[0]), n=1, cutoff=0.6)
        return key, "unknown key" + (f" (did you mean {near[0]}?)" if near else "")
    if kind in ("union_tag_invalid", "union_tag_not_found") and isinstance(tp, tuple) and disc:
        tags = ", ".join(_tags(tp, disc))
        key = f"{key}.{disc}" if key else disc
        if kind == "union_tag_not_found":
            return key, f"Field required (one of: {tags})"
        return key, f"unknown {disc} {_shown(ctx.get('tag'))} (one of: {tags})"
    if kind in ("model_attributes_type", "model_type", "dict_type") and not isinstance(value, dict):
        if isinstance(tp, tuple) and disc:
            number = "a number, or " if disc == "dist" else ""
            what = f"{number}a mapping with `{disc}:` one of {', '.join(_tags(tp, disc))}"
        else:
            what = "a mapping (key: value)"
        return key, f"expected {what} (got {_shown(value)})"
    if kind == "invalid_key":
        return key, "keys must be text"
    if msg.startswith("Value error, "):
        msg = msg.removeprefix("Value error, ")
        # cross-field checks on the whole scenario name their key path in the message: "faults.0.path: ..."
        head, sep, rest = msg.partition(": ")
        if sep and "." in head and " " not in head:
            return head, rest
        return key, msg
    if kind != "missing" and not isinstance(value, dict | list | tuple | set):
        msg += f" (got {_shown(value)})"
    return key, msg


def _validation_problems(exc: ValidationError, data: Any) -> list[tuple[str, str]]:
    """Every error as (key, message). A union that failed in several branches is reduced to its
    likeliest branch -- the one that got furthest (deepest locations, then fewest errors) -- so one
    mistake is one line, not a wall. (Discriminated unions already pick the branch by ``kind``/``dist``.)"""
    errors = exc.errors()
    branches: dict[str, dict[Any, list[int]]] = {}
    for n, err in enumerate(errors):
        loc = tuple(err["loc"])
        at = _split_loc(loc, data, err["type"])[1]
        if at is not None:
            branches.setdefault(_clean_loc(loc[:at], data), {}).setdefault(loc[at], []).append(n)
    dropped: set[int] = set()
    for by_branch in branches.values():
        best = max(by_branch.values(), key=lambda ns: (max(len(errors[n]["loc"]) for n in ns), -len(ns)))
        dropped.update(n for ns in by_branch.values() if ns is not best for n in ns)
    return [_describe(err, data) for n, err in enumerate(errors) if n not in dropped]


# --------------------------------------------------------------------------- checks pydantic does not make
def _value_problems(data: Any) -> tuple[list[tuple[str, str]], bool]:
    """Numbers no scenario means (inf, nan, integers past int64) anywhere in the file, and YAML
    alias bombs or self-referencing aliases. Returns (problems, fatal): fatal means the data must
    not be handed to pydantic (it would walk billions of values, or forever)."""
    problems: list[tuple[str, str]] = []
    seen = 0
    on_path: set[int] = set()
    stack: list[tuple[tuple[Any, ...], Any, bool]] = [((), data, False)]
    while stack:
        path, value, leaving = stack.pop()
        if leaving:
            on_path.discard(id(value))
            continue
        seen += 1
        key = ".".join(key_text(p) for p in path)
        if seen > MAX_VALUES:
            return [("", f"more than {MAX_VALUES:,} values once YAML aliases (*name) are expanded; "
                     "a scenario holds far fewer")], True
        if isinstance(value, dict | list):
            if id(value) in on_path:
                return [(key, "a YAML alias (*name) that contains itself")], True
            on_path.add(id(value))
            stack.append((path, value, True))
            children = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
            stack.extend(((*path, k), v, False) for k, v in reversed(children))
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append((key, f"must be a finite number (got {value})"))
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            problems.append((key, f"out of range: at most {MAX_INT} in size (got {_shown(value)})"))
    return problems, False


def _scenario_problems(data: dict[Any, Any]) -> list[tuple[str, str]]:
    """Top-level values the simulator would trip over later: the seed numpy takes, the name that
    becomes the results folder ``results/<name>``."""
    problems = []
    seed = data.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed <= MAX_INT:
        problems.append(("seed", f"must be a non-negative integer below 2**63 (got {_shown(seed)})"))
    name = data.get("name")
    if isinstance(name, str) and (not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0")):
        problems.append(("name", f"must be usable as a folder name (results/<name>): not empty, no '/', "
                         f"not '.' or '..' (got {_shown(name)})"))
    return problems


def parse_scenario(data: Any, file: str | Path = "<scenario>") -> Scenario:
    """Validate ``data`` (the loaded YAML); a :class:`ScenarioError` lists every problem found."""
    if data is None:
        raise ScenarioError(file, "", "empty: a scenario is a mapping (name:, workload:, paths:, ...)")
    if not isinstance(data, dict):
        raise ScenarioError(file, "", "the file must hold a mapping (key: value) at the top level "
                            f"(got {type(data).__name__})")
    values, fatal = _value_problems(data)
    if fatal:
        raise ScenarioError.several(file, values)
    extra = _scenario_problems(data) + values
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        found = _validation_problems(exc, data)
    else:
        found = []
    if not found and not extra:
        return scenario
    # our own finding about a key replaces pydantic's (inf is "not finite", not "not > 0"), and a
    # value under an unknown key needs no second line
    ours = {k for k, _ in extra}
    unknown = {k for k, m in found if m.startswith("unknown key")}
    problems = [(k, m) for k, m in found if k not in ours or k in unknown]
    problems += [(k, m) for k, m in extra if not any(k == u or k.startswith(u + ".") for u in unknown)]
    # in the order of the file's top-level keys (a missing key first), so the lines read top down
    order = {key_text(k): i for i, k in enumerate(data)}
    problems.sort(key=lambda p: order.get(p[0].split(".", 1)[0], -1))
    raise ScenarioError.several(file, problems)


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except IsADirectoryError:
        raise ScenarioError(path, "", "is a folder, not a scenario file") from None
    except OSError as exc:
        raise ScenarioError(path, "", f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ScenarioError(path, "", f"too large (over {MAX_FILE_BYTES // 1024} KiB); a scenario is a few KB "
                            "(link traces and request CSVs go in their own files)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(path, "", f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None


def _parse_yaml(text: str, path: Path) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(path, "", f"invalid YAML: {where}{problem}") from None
    except RecursionError:
        raise ScenarioError(path, "", "invalid YAML: nested too deeply") from None
    except Exception as exc:  # PyYAML's constructors raise plain errors on text like `2001-02-30`
        raise ScenarioError(path, "", f"invalid YAML: {exc}".splitlines()[0][:200]) from None


def _request_csv_problem(path: Path, streams: int) -> str | None:
    """What stops sim.model.workload reading the arrivals CSV (checked here, so a run never starts on one)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = csv.DictReader(f)
            missing = [c for c in REQUEST_CSV_COLUMNS if c not in (rows.fieldnames or [])]
            if missing:
                return f"{path}: missing column(s) {', '.join(missing)} (needs {', '.join(REQUEST_CSV_COLUMNS)})"
            count = 0
            for count, row in enumerate(rows, 1):
                if count > streams:
                    break
                for col in REQUEST_CSV_COLUMNS:
                    try:
                        number = float(row[col] or "")
                    except ValueError:
                        return f"{path}: line {rows.line_num}: {col} is not a number ({_shown(row[col])})"
                    if not math.isfinite(number) or number < 0:
                        return f"{path}: line {rows.line_num}: {col} must be a finite number >= 0 (got {row[col]})"
            if count == 0:
                return f"{path}: no rows"
    except UnicodeDecodeError as exc:
        return f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
    except (OSError, csv.Error) as exc:
        return f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}"
    return None


def load_scenario(name_or_path: str | Path) -> LoadedScenario:
    """Read, parse and check a scenario file (including that its trace and CSV files are readable)."""
    path = find_scenario(name_or_path)
    data = _parse_yaml(_read_text(path), path)
    scenario = parse_scenario(data, path)
    loaded = LoadedScenario(scenario, path.resolve(), data)
    problems: list[tuple[str, str]] = []
    for name, spec in scenario.paths.items():
        if spec.trace is not None:
            try:
                load_mahimahi(loaded.trace_path(name))
            except TraceError as exc:
                problems.append((f"paths.{name}.trace", str(exc)))
            except UnicodeDecodeError as exc:
                problems.append((f"paths.{name}.trace", f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                                 f"at offset {exc.start})"))
    arrivals = scenario.workload.arrivals
    if arrivals.kind == "csv":
        csv_path = loaded.base_dir / arrivals.file
        if not csv_path.is_file():
            problems.append(("workload.arrivals.file", f"no such file: {csv_path}"))
        elif (problem := _request_csv_problem(csv_path, scenario.workload.streams)) is not None:
            problems.append(("workload.arrivals.file", problem))
    if problems:
        raise ScenarioError.several(path, problems)
    return loaded


# --------------------------------------------------------------------------- controller entries
ENTRY_SEP = "@"  # `buffer@tokenpace`: controller buffer on scheduler tokenpace (server.scheduler overridden)


def split_entry(entry: str) -> tuple[str, str | None]:
    """An entry of ``controllers:`` (or ``--controllers``) as (controller, scheduler or None).

    ``CONTROLLER@SCHEDULER`` runs that controller on that scheduler; a plain ``CONTROLLER`` runs on
    the scenario's ``server.scheduler``. The entry names the results folder and the summary key.
    """
    controller, sep, scheduler = entry.partition(ENTRY_SEP)
    return (controller, scheduler) if sep else (entry, None)


def did_you_mean(name: str, known: Sequence[str]) -> str:
    """`` (did you mean X?)`` when a known name is close to ``name``, else ``""``."""
    near = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {near[0]}?)" if near else ""


def expand_entries(names: list[str], scheduler_names: list[str] | None) -> list[str]:
    """``--schedulers a,b``: each plain controller name becomes ``name@a``, ``name@b`` (in that order,
    controller by controller); an entry that already names its scheduler is kept as it is."""
    if not scheduler_names:
        return list(dict.fromkeys(names))
    out: list[str] = []
    for name in names:
        out.extend([name] if split_entry(name)[1] is not None else [f"{name}{ENTRY_SEP}{s}" for s in scheduler_names])
    return list(dict.fromkeys(out))


def entry_params(scn: Scenario, entry: str) -> dict[str, Any]:
    """An entry's controller parameters: the scenario's under that exact entry, else under its controller."""
    key = entry_params_key(scn, entry)
    return {} if key is None else scn.controllers[key]


def entry_params_key(scn: Scenario, entry: str) -> str | None:
    """The key of ``controllers:`` an entry takes its parameters from (None: defaults)."""
    for key in (entry, split_entry(entry)[0]):
        if key in scn.controllers:
            return key
    return None


def entry_problems(entry: str, known_controllers: Sequence[str], known_schedulers: Sequence[str],
                   with_known: bool = True) -> list[str]:
    """What is wrong with one entry name, given the registries' names (this package imports neither
    ``controllers`` nor ``sim``, so the caller passes them): a malformed ``a@b``, an unknown
    controller, an unknown scheduler, each with the closest known name."""
    controller, scheduler = split_entry(entry)
    if not controller or scheduler == "" or (scheduler is not None and ENTRY_SEP in scheduler):
        return [f"an entry is CONTROLLER or CONTROLLER{ENTRY_SEP}SCHEDULER (got {_shown(entry)})"]
    problems = []
    if controller not in known_controllers:
        problems.append(f"unknown controller {controller!r}{did_you_mean(controller, known_controllers)}"
                        + (f"; known: {', '.join(sorted(known_controllers))}" if with_known else ""))
    if scheduler is not None and scheduler not in known_schedulers:
        problems.append(f"unknown scheduler {scheduler!r}{did_you_mean(scheduler, known_schedulers)}"
                        + (f"; known: {', '.join(sorted(known_schedulers))}" if with_known else ""))
    return problems


def json_schema() -> dict[str, Any]:
    return Scenario.model_json_schema(by_alias=True)
