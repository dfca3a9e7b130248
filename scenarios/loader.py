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


def _clean_loc(loc: tuple[Any, ...], data: Any) -> str:
    """The key path as written in the file: pydantic adds union tags (``faults.0.rate.factor``,
    ``...output_tokens.uniform.high``) and validator wrappers that are not keys; drop those."""
    out: list[str] = []
    cur = data
    for part in loc:
        is_tag = isinstance(cur, dict) and part not in cur and part in (cur.get("kind"), cur.get("dist"))
        if is_tag or (isinstance(part, str) and part.startswith("function-")):
            continue
        out.append(str(part))
        in_list = isinstance(cur, list) and isinstance(part, int) and part < len(cur)
        cur = cur[part] if (isinstance(cur, dict) and part in cur) or in_list else None
    return ".".join(out)


def parse_scenario(data: Any, file: str | Path = "<scenario>") -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(file, "", "the file must hold a mapping (key: value) at the top level")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = _clean_loc(tuple(err["loc"]), data)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg.removeprefix("Value error, ")
            # cross-field checks on the whole scenario name their key path in the message: "faults.0.path: ..."
            head, sep, rest = msg.partition(": ")
            if sep and "." in head and " " not in head:
                key, msg = head, rest
        more = f" (and {len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
        raise ScenarioError(file, key, msg + more) from None


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
