"""The sweep file: a base scenario, a grid over its keys, seeds and controllers; checked and expanded.

    name: kv-vs-scheduler            # optional (default: the file's stem); the results folder's name
    base: ../scenarios/kv-mobile.yaml  # a scenario file (relative to this file) or a built-in name
    grid:                            # dotted scenario keys -> values; the cells are the cartesian product
      server.kv_tokens: [16384, 32768]
      server.scheduler: [fcfs, andes]
      controllers.buffer.cushion_s: [0.5, 1.0]   # a controller's parameter
    seeds: [1, 2, 3]                 # every cell runs once per seed (a 95% CI across seeds)
    controllers: [unpaced, buffer, buffer@tokenpace]   # optional (default: the base scenario's)
    export: [gpu_scaling]            # optional: seed 004's CSVs written into the folder when the sweep ends

Checked like a scenario (:mod:`scenarios.loader`): every problem at once, each naming the sweep file
and key. A grid key must be a key of the scenario (walked on the base with every default filled in;
the closest key is suggested) or ``controllers.<controller>.<parameter>``; each value is applied alone
to the base and validated as a scenario file would be (a value the scenario rejects names the grid
key, the value and the scenario's own key); then every cell is built and validated.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import product
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

import controllers
from analysis.seed004 import export_problem
from analysis.sweep import sweep_metrics, value_text
from scenarios import LoadedScenario, ScenarioError, builtin_scenarios, load_scenario
from scenarios.cli_errors import BadInput
from scenarios.loader import (
    MAX_INT,
    _parse_yaml,
    _read_text,
    _value_problems,
    did_you_mean,
    entry_params,
    entry_problems,
    key_text,
    parse_scenario,
    split_entry,
)
from scenarios.traces import TraceError, load_mahimahi
from sim.model import schedulers
from sim.model.entries import Plan

__all__ = ["MAX_RUNS", "Cell", "SweepPlan", "SweepSpec", "apply_values", "cell_ids", "load_sweep"]

MAX_RUNS = 100_000  # cells x seeds: past this it is a typo, not an experiment
#: parts of the scenario whose keys are free (validated by their owner: the scheduler, the workload's paths).
_FREE_FORM = {("server", "scheduler", "params"), ("workload", "paths")}
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]+")
MAX_VALUE_CHARS = 32  # a value longer than this is shown in a cell id by its position (v0, v1, ...)


class SweepSpec(BaseModel):
    """What a sweep file holds (see the module text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = Field(None, description="results folder name (default: the sweep file's stem)")
    description: str = ""
    base: str = Field(min_length=1, description="a scenario file (relative to the sweep file) or a built-in name")
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(
        default_factory=dict, description="dotted scenario key -> the values it takes")
    seeds: list[StrictInt] = Field(min_length=1, description="each cell runs once per seed")
    controllers: list[str] | None = Field(None, min_length=1, description="entries, NAME or NAME@SCHEDULER "
                                          "(default: the base scenario's controllers)")
    export: list[str] = Field(default_factory=list, description="seed 004's CSVs to write into the results "
                              "folder when the sweep ends: gpu_scaling, batch_analysis, cache_experiments "
                              "(as python -m analysis sweep-export)")


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its id (a folder name, ``key=value`` joined by ``,``), the value of each
    grid key, and the scenario it runs (the base with those values)."""

    id: str
    values: dict[str, Any]
    loaded: LoadedScenario


@dataclass(frozen=True)
class SweepPlan:
    file: Path
    name: str
    base: LoadedScenario
    grid: dict[str, list[Any]]
    cells: list[Cell]
    seeds: list[int]
    entries: list[str]
    out: Path
    exports: tuple[str, ...] = ()

    @cached_property
    def metrics(self) -> tuple[str, ...]:
        """The metrics of the sweep's rows: the prefix cache's counts too when a cell keeps a prefix cache."""
        return sweep_metrics(any(c.loaded.scenario.server.prefix_cache is not None for c in self.cells))

    def run_dir(self, cell: Cell, seed: int) -> Path:
        return self.out / "cells" / cell.id / f"seed-{seed}"

    def run_plan(self, cell: Cell, seed: int) -> Plan:
        """The ``python -m sim`` plan of one cell and seed: every entry, common random numbers."""
        scn = cell.loaded.scenario
        params = {e: entry_params(scn, e) for e in self.entries}
        used = {e: split_entry(e)[1] or scn.server.scheduler.name for e in self.entries}
        return Plan(cell.loaded, params, seed, self.run_dir(cell, seed), used)


# --------------------------------------------------------------------------- keys and values
def apply_values(raw: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the scenario ``raw`` with each dotted key set to its value (mappings made on the way
    where the file leaves a part to its defaults; a scheduler given by name becomes ``{name: ...}``)."""
    data: dict[str, Any] = copy.deepcopy(dict(raw))
    for key, value in values.items():
        parts = key.split(".")
        node: Any = data
        for part in parts[:-1]:
            if isinstance(node, list):
                node = node[int(part)]
                continue
            nxt = node.get(part)
            if isinstance(nxt, str) and part == "scheduler":
                nxt = {"name": nxt}
            if not isinstance(nxt, dict | list):
                nxt = {}
            node[part] = nxt
            node = nxt
        if isinstance(node, list):
            node[int(parts[-1])] = copy.deepcopy(value)
        else:
            node[parts[-1]] = copy.deepcopy(value)
    return data


def _suggest(walked: list[str], part: str, known: Sequence[str], rest: list[str]) -> str:
    near = difflib.get_close_matches(part, list(known), n=1, cutoff=0.6)
    return f" (did you mean {'.'.join([*walked, near[0], *rest])}?)" if near else ""


def _controller_key_problem(parts: list[str], entries: Sequence[str]) -> str | None:
    """``controllers.<controller or entry>[.<parameter>]``."""
    if not parts:
        return "give a controller: controllers.<controller>.<parameter>"
    wrong = entry_problems(parts[0], list(controllers.REGISTRY), list(schedulers.REGISTRY), with_known=False)
    if wrong:
        return f"not a scenario key: {wrong[0]}"
    if len(parts) == 1:
        return None
    known = list(controllers.REGISTRY[split_entry(parts[0])[0]].cls.Params.model_fields)
    if parts[1] not in known:
        return (f"not a scenario key: controller {split_entry(parts[0])[0]} has no parameter {parts[1]!r}"
                + _suggest(["controllers", parts[0]], parts[1], known, parts[2:])
                + f"; its parameters: {', '.join(known) or 'none'}")
    return None


def key_problem(key: str, resolved: Mapping[str, Any], entries: Sequence[str]) -> str | None:
    """Why ``key`` is not a key of the scenario (None: it is), walking the base with every default filled."""
    parts = key.split(".")
    if not key or any(not p for p in parts):
        return "not a key path (parts joined by '.', none empty)"
    if parts[0] == "seed":
        return "seeds are swept by `seeds:`, not by the grid"
    if parts[0] == "controllers":
        return _controller_key_problem(parts[1:], entries)
    node: Any = resolved
    walked: list[str] = []
    for i, part in enumerate(parts):
        if tuple(walked) in _FREE_FORM:
            return None
        if isinstance(node, Mapping):
            if part not in node:
                where = ".".join(walked) or "the scenario"
                hint = _suggest(walked, part, list(node), parts[i + 1:])
                return f"not a scenario key: {where} has no {part!r}{hint}"
            node = node[part]
        elif isinstance(node, list):
            if not (part.isdigit() and int(part) < len(node)):
                return f"not a scenario key: {'.'.join(walked)} is a list of {len(node)} (index 0 to {len(node) - 1})"
            node = node[int(part)]
        elif node is None:
            return None  # a part the base leaves unset (a path's loss, say): the values say what goes there
        else:
            return f"not a scenario key: {'.'.join(walked)} is a value ({value_text(node)}), not a mapping"
        walked.append(part)
    return None


def _variant(base: LoadedScenario, values: Mapping[str, Any], entries: Sequence[str]) -> tuple[
        LoadedScenario | None, list[tuple[str, str]]]:
    """The base with ``values`` applied, validated as a run would validate it: the scenario, its
    traces, the scheduler and every entry's parameters. Returns it, or (None, [(key, problem), ...])."""
    raw = apply_values(base.raw, values)
    try:
        scn = parse_scenario(raw, base.path)
    except ScenarioError as exc:
        prefix = f"{base.path}: "
        return None, [(w.removeprefix(prefix) if w.startswith(prefix) else w, m) for w, m in exc.problems]
    loaded = LoadedScenario(scn, base.path, raw)
    problems: list[tuple[str, str]] = []
    for name, spec in scn.paths.items():
        if spec.trace is not None:
            try:
                load_mahimahi(loaded.trace_path(name))
            except (TraceError, UnicodeDecodeError, OSError) as exc:
                problems.append((f"paths.{name}.trace", str(exc)))
    sched = scn.server.scheduler
    if sched.name not in schedulers.REGISTRY:
        problems.append(("server.scheduler.name", str(schedulers.UnknownScheduler(sched.name))))
    else:
        problems += [(f"server.scheduler.params.{key_text(k)}", m) for k, m in schedulers.validate_params(
            sched.name, sched.params)]
    for entry in entries:
        problems += [(f"controllers.{key_text(split_entry(entry)[0])}.{key_text(k)}", m)
                     for k, m in controllers.validate_params(split_entry(entry)[0], entry_params(scn, entry))]
    return (None if problems else loaded), problems


def cell_ids(grid: Mapping[str, Sequence[Any]], combos: Sequence[Sequence[Any]]) -> list[str]:
    """A readable folder name per cell: ``key=value`` joined by ``,`` (a key by its last part when that is
    unambiguous; a long or structured value by its position ``v<i>``); ``base`` for an empty grid."""
    keys = list(grid)
    lasts = [k.rsplit(".", 1)[-1] for k in keys]
    shown = [last if lasts.count(last) == 1 else k for k, last in zip(keys, lasts, strict=True)]
    ids = []
    for combo in combos:
        parts = []
        for key, name, value in zip(keys, shown, combo, strict=True):
            text = value_text(value)
            if isinstance(value, dict | list) or len(text) > MAX_VALUE_CHARS:
                text = f"v{list(grid[key]).index(value)}"
            parts.append(f"{name}={_UNSAFE.sub('_', text)}")
        ids.append(",".join(parts) or "base")
    # two values that read the same once made safe (0.5 and "0.5"): told apart by position
    return [cid if ids.count(cid) == 1 else f"{cid}~{i}" for i, cid in enumerate(ids)]


# --------------------------------------------------------------------------- the file
def _spec_problems(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        key = ".".join(key_text(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            out.append((key, "unknown key" + did_you_mean(str(err["loc"][-1]), list(SweepSpec.model_fields))))
        elif err["type"] == "missing":
            out.append((key, err["msg"]))
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict | list) else f" (got {value_text(got)[:40]})"
            out.append((key, err["msg"] + shown))
    return out


def _find_base(text: str, sweep_file: Path) -> Path | str:
    near = sweep_file.parent / text
    if near.is_file():
        return near
    return text if text in builtin_scenarios() else near


def load_sweep(path: Path | str, out: Path | None = None) -> SweepPlan:
    """Read and check a sweep file and everything it names; a :class:`BadInput` lists every problem,
    each as ``SWEEP_FILE: key`` (or the base scenario's own ``FILE: key``)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(str(path), "no such sweep file" if not path.exists() else "not a file")
    data = _parse_yaml(_read_text(path), path)
    if not isinstance(data, dict):
        raise BadInput(str(path), "a sweep file is a mapping (base:, grid:, seeds:, controllers:)")
    bad_values, fatal = _value_problems(data)
    if fatal:
        raise BadInput.many([(f"{path}: {k}" if k else str(path), m) for k, m in bad_values])
    problems: list[tuple[str, str]] = [(f"{path}: {k}", m) for k, m in bad_values]
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise BadInput.many(problems + [(f"{path}: {k}", m) for k, m in _spec_problems(exc)]) from None
    where = f"{path}: "
    name = spec.name if spec.name is not None else path.stem
    if not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0"):
        problems.append((where + "name", f"must be usable as a folder name (got {value_text(name)[:40]})"))
    for i, seed in enumerate(spec.seeds):
        if not 0 <= seed <= MAX_INT:
            problems.append((f"{where}seeds.{i}", f"must be a non-negative integer below 2**63 (got {seed})"))
    if len(set(spec.seeds)) != len(spec.seeds):
        problems.append((where + "seeds", "a seed is listed twice"))
    try:
        base = load_scenario(_find_base(spec.base, path))
    except ScenarioError as exc:  # its own lines name its file and keys
        problems.append((where + "base", f"cannot use {value_text(spec.base)[:80]}: see its problems below"))
        raise BadInput.many(problems + exc.problems) from None
    entries = list(dict.fromkeys(spec.controllers if spec.controllers is not None else base.scenario.controllers))
    entry_wrong = [(f"{where}controllers.{i}", m) for i, entry in enumerate(entries) for m in entry_problems(
        entry, list(controllers.REGISTRY), list(schedulers.REGISTRY))]
    problems += entry_wrong
    if not entries:
        problems.append((where + "controllers", "no controllers (list some, or give the base scenario some)"))
    resolved = base.resolved()
    good_keys = []
    for key, values in spec.grid.items():
        gk = f"{where}grid.{key_text(key)}"
        problem = key_problem(key, resolved, entries)
        if problem is not None:
            problems.append((gk, problem))
            continue
        texts = [value_text(v) for v in values]
        if len(set(texts)) != len(texts):
            problems.append((gk, f"a value is listed twice ({', '.join(t for t in texts if texts.count(t) > 1)})"))
        good_keys.append(key)
        if entry_wrong:
            continue  # the entries are wrong: their parameters cannot be checked
        for value in values:
            _, wrong = _variant(base, {key: value}, entries)
            problems += [(gk, f"value {value_text(value)[:40]}: {k}: {m}") for k, m in wrong]
    for i, fmt in enumerate(spec.export):
        problem = export_problem(fmt, spec.grid)
        if problem is not None:
            problems.append((f"{where}export.{i}", problem))
    if len(set(spec.export)) != len(spec.export):
        problems.append((where + "export", "a format is listed twice"))
    runs = len(spec.seeds)
    for values in spec.grid.values():
        runs *= len(values)
    if runs > MAX_RUNS:
        problems.append((where + "grid", f"{runs:,} runs (cells x seeds); at most {MAX_RUNS:,}"))
    if problems:
        raise BadInput.many(problems)
    grid = {k: list(v) for k, v in spec.grid.items() if k in good_keys}
    combos = list(product(*grid.values()))
    cells = []
    for cid, combo in zip(cell_ids(grid, combos), combos, strict=True):
        values = dict(zip(grid, combo, strict=True))
        loaded, wrong = _variant(base, values, entries)
        problems += [(where + "grid", f"cell {cid}: {k}: {m}") for k, m in wrong]
        if loaded is not None:
            cells.append(Cell(cid, values, loaded))
    if problems:
        raise BadInput.many(problems)
    return SweepPlan(path, name, base, grid, cells, list(spec.seeds), entries,
                     out if out is not None else Path("results") / name, tuple(spec.export))
