"""Reading scenario files: YAML in, a validated :class:`Scenario` out, or one clear error.

Every problem becomes a :class:`ScenarioError` whose message names the file and the key path
(``scenarios/wifi.yaml: paths.wifi.rate_mbps: Input should be greater than 0``), so the
command line can print one line and exit 2 instead of a traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from scenarios.schema import Scenario
from scenarios.traces import TraceError, load_mahimahi, resolve_trace

BUILTIN_DIR = Path(__file__).parent


class ScenarioError(ValueError):
    def __init__(self, file: str | Path, key: str, message: str) -> None:
        self.file, self.key, self.message = str(file), key, message
        super().__init__(f"{file}: {key + ': ' if key else ''}{message}")


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
    p = Path(name_or_path)
    if p.is_file():
        return p
    builtin = builtin_scenarios()
    if str(name_or_path) in builtin:
        return builtin[str(name_or_path)]
    known = ", ".join(builtin)
    raise ScenarioError(p, "", f"no such file, and not a built-in scenario ({known})")


def _key(loc: tuple[Any, ...]) -> str:
    # pydantic puts the union tag in the location (faults.0.rate.factor); drop tag names that are
    # not keys in the file so the path matches what the user wrote.
    return ".".join(str(x) for x in loc)


def _clean_loc(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    out: list[Any] = []
    cur = data
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            out.append(part)
            cur = cur[part]
        elif isinstance(cur, list) and isinstance(part, int) and part < len(cur):
            out.append(part)
            cur = cur[part]
        elif isinstance(cur, dict) or isinstance(cur, list):
            # a union tag or a missing key: keep missing keys (they are what the user must add)
            if isinstance(part, str) and not (isinstance(cur, dict) and part in cur) and _is_tag(part, cur):
                continue
            out.append(part)
            cur = None
        else:
            out.append(part)
            cur = None
    return tuple(out)


def _is_tag(part: str, cur: Any) -> bool:
    if not isinstance(cur, dict):
        return False
    return any(cur.get(tag) == part for tag in ("kind", "dist")) or part in {
        "constant", "uniform", "normal", "lognormal", "exponential", "choice",
        "function-before[_coerce(), tagged-union[Constant,Uniform,Normal,LogNormal,Exponential,Choice]]",
    }


def parse_scenario(data: Any, file: str | Path = "<scenario>") -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(file, "", "the file must hold a mapping (key: value) at the top level")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = _clean_loc(tuple(err["loc"]), data)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
            # model-level validators report their own key path inside the message
            if ": " in msg and msg.split(": ", 1)[0].replace(".", "").replace("_", "").isalnum() and "." in msg.split(": ", 1)[0]:
                key, msg = msg.split(": ", 1)
                more = f" (and {len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
                raise ScenarioError(file, key, msg + more) from None
        more = f" (and {len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
        raise ScenarioError(file, _key(loc), msg + more) from None


def load_scenario(name_or_path: str | Path) -> LoadedScenario:
    """Read, parse and check a scenario file (including that its trace and CSV files exist)."""
    path = find_scenario(name_or_path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(path, "", f"cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ScenarioError(path, "", f"invalid YAML: {where}{problem}") from None
    scenario = parse_scenario(data, path)
    loaded = LoadedScenario(scenario, path.resolve(), data)
    for name, spec in scenario.paths.items():
        if spec.trace is not None:
            try:
                load_mahimahi(loaded.trace_path(name))
            except TraceError as exc:
                raise ScenarioError(path, f"paths.{name}.trace", str(exc)) from None
    arrivals = scenario.workload.arrivals
    if arrivals.kind == "csv" and not (loaded.base_dir / arrivals.file).is_file():
        raise ScenarioError(path, "workload.arrivals.file", f"no such file: {loaded.base_dir / arrivals.file}")
    return loaded


def json_schema() -> dict[str, Any]:
    return Scenario.model_json_schema(by_alias=True)
