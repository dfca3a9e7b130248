"""``python -m sim`` never prints a traceback: random argv and random scenario files end with exit 0
or 2 and plain lines, and every problem of a file is reported, each naming its file and key.

Nothing here simulates: the file fuzz goes through ``python -m sim check`` (which validates all a
run needs and stops), and the argv fuzz replaces ``sim.runner.run_plan`` with a stand-in that
records what it was handed and stops -- reaching it means every check passed, so the test also
asserts that what got through is valid (seed in numpy's range, jobs >= 1, a results folder that is
a folder).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, ValidationError

import sim.runner
from scenarios import ScenarioError, builtin_scenarios, json_schema, load_scenario
from scenarios.loader import MAX_FILE_BYTES, _validation_problems
from sim.cli import main
from tests.cli_fuzz import Ended, argv_lists, argv_token, call_main, file_bytes, run_module, yaml_values

BUILTIN = builtin_scenarios()
NON_UTF8 = b"name: x\nworkload: \xff\xfe\n"


class _Ran(BaseException):
    """Raised by the stand-in run_plan; a BaseException so that run_cli lets it through."""


class _FakeRun:
    """Stands in for sim.runner.run_plan: records the call, simulates nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def __call__(self, plan: Any, **kwargs: Any) -> Any:
        self.calls.append((plan, kwargs))
        raise _Ran


def _run(argv: list[str], fake: _FakeRun, mp: pytest.MonkeyPatch) -> Ended | None:
    """``main(argv)`` with run_plan replaced; None when it reached run_plan."""
    mp.setattr(sim.runner, "run_plan", fake)
    try:
        return call_main(main, argv)
    except _Ran:
        return None


def _confined(token: str, root: Path) -> str:
    """Keep fuzzed paths inside ``root``: as root, ``--out /x`` would really create /x."""
    if token.startswith("/") and token not in ("/", "/dev/null"):
        return f"{root}{token}"
    return token.replace("=/", f"={root}/")


def _deep_cwd(base: Path) -> Path:
    """A working folder deep enough that ``../../..`` from it stays inside ``base``."""
    cwd = base.joinpath(*["d"] * 6)
    cwd.mkdir(parents=True, exist_ok=True)
    return cwd


def _assert_ran_valid(fake: _FakeRun) -> None:
    plan, kwargs = fake.calls[-1]
    assert 0 <= plan.seed < 2**63
    assert kwargs["jobs"] >= 1
    assert plan.out.is_dir()
    assert plan.controllers, "a run with no controllers"


def _lines(ended: Ended) -> list[str]:
    return ended.err.strip().splitlines()


# --------------------------------------------------------------------------- properties
@settings(max_examples=150, deadline=None)
@given(argv=argv_lists, with_scenario=st.sampled_from([None, "steady-broadband", "file"]), at=st.integers(0, 6))
def test_random_argv_never_tracebacks(tmp_path_factory, argv, with_scenario, at):
    base = tmp_path_factory.getbasetemp() / "argv"
    cwd = _deep_cwd(base)
    argv = [_confined(a, base) for a in argv]
    if with_scenario == "file":
        argv.insert(min(at, len(argv)), str(BUILTIN["flash-outage"]))
    elif with_scenario is not None:
        argv.insert(min(at, len(argv)), with_scenario)
    fake = _FakeRun()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        ended = _run(argv, fake, mp)
        if ended is None:
            _assert_ran_valid(fake)  # in cwd: a relative --out is relative to it
            return
    ended.check()
    if ended.code == 2 and "usage:" not in ended.err:  # ours, not argparse's: every line says error:
        assert all(line.startswith("error: ") for line in _lines(ended)), ended.err


@st.composite
def mutated_builtin(draw: st.DrawFn) -> tuple[dict[str, Any], str | None]:
    """A built-in scenario with one key deleted, set to a random value, or an unknown key added at
    some depth. Returns (data, the dotted key path of the added unknown key, or None)."""
    name = draw(st.sampled_from(sorted(BUILTIN)))
    data = yaml.safe_load(BUILTIN[name].read_text())
    spots: list[tuple[tuple[Any, ...], Any]] = []

    def walk(path: tuple[Any, ...], value: Any) -> None:
        if isinstance(value, dict | list):
            spots.append((path, value))
            for k, v in value.items() if isinstance(value, dict) else enumerate(value):
                walk((*path, k), v)

    walk((), data)
    op = draw(st.sampled_from(["delete", "set", "add_unknown"]))
    if op == "add_unknown":
        # every mapping here is a model (which forbids unknown keys), except the free-form ones
        models = [(p, v) for p, v in spots if isinstance(v, dict) and "controllers" not in p
                  and p not in (("paths",), ("workload", "paths"))]
        path, target = draw(st.sampled_from(models))
        key = "zz_" + draw(st.text(alphabet="abcdefghijklmnop_", min_size=1, max_size=6))
        target[key] = draw(yaml_values)
        return data, ".".join(str(p) for p in (*path, key))
    path, target = draw(st.sampled_from([(p, v) for p, v in spots if v]))
    k = draw(st.sampled_from(list(target) if isinstance(target, dict) else list(range(len(target)))))
    if op == "delete":
        del target[k]
    else:
        target[k] = draw(yaml_values)
    return data, None


@settings(max_examples=150, deadline=None)
@given(case=mutated_builtin())
def test_mutated_builtin_scenarios_name_every_problem(tmp_path_factory, case):
    data, unknown = case
    path = tmp_path_factory.mktemp("mut") / "scenario.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    ended = call_main(main, ["check", str(path)]).check()
    if ended.code == 0:
        assert ended.out.startswith(f"ok: {path} ")
        return
    assert all(line.startswith(f"error: {path}") for line in _lines(ended)), ended.err
    if unknown is not None:
        assert any(line.startswith(f"error: {path}: {unknown}: unknown key") for line in _lines(ended)), ended.err


@settings(max_examples=150, deadline=None)
@given(content=st.one_of(file_bytes, yaml_values.map(lambda v: yaml.safe_dump(v, allow_unicode=True).encode())))
def test_random_file_contents_never_traceback(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("raw") / "scenario.yaml"
    path.write_bytes(content)
    ended = call_main(main, ["check", str(path)]).check()
    if ended.code == 0:
        return
    lines = _lines(ended)
    assert all(line.startswith(f"error: {path}") for line in lines), ended.err
    try:
        content.decode("utf-8")
    except UnicodeDecodeError as exc:  # exactly one line, naming the first bad byte
        assert lines == [f"error: {path}: not UTF-8 text (byte 0x{content[exc.start]:02x} at offset {exc.start})"]


@settings(max_examples=100, deadline=None)
@given(extra=st.lists(argv_token, max_size=4), content=file_bytes)
def test_random_file_and_flags_through_the_run_path(tmp_path_factory, extra, content):
    base = tmp_path_factory.getbasetemp() / "both"
    cwd = _deep_cwd(base)
    path = tmp_path_factory.mktemp("f") / "s.yaml"
    path.write_bytes(content)
    fake = _FakeRun()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        ended = _run([str(path), *[_confined(a, base) for a in extra]], fake, mp)
        if ended is None:
            _assert_ran_valid(fake)
            return
    ended.check()


# --------------------------------------------------------------------------- the three tracebacks
def test_non_utf8_file_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(NON_UTF8)
    ended = call_main(main, [str(path)]).check()
    assert ended.code == 2
    assert _lines(ended) == [f"error: {path}: not UTF-8 text (byte 0xff at offset 18)"]


def test_out_naming_an_existing_file(tmp_path):
    out = tmp_path / "results.txt"
    out.write_text("not a folder")
    ended = call_main(main, ["steady-broadband", "--out", str(out)]).check()
    assert ended.code == 2
    assert _lines(ended) == [f"error: --out: {out} is a file, not a folder"]
    assert out.read_text() == "not a folder"


def test_out_that_cannot_be_created_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    ended = call_main(main, ["steady-broadband", "--out", str(blocker / "sub")]).check()
    assert _lines(ended) == [f"error: --out: cannot create folder {blocker / 'sub'}: Not a directory"]


@pytest.mark.parametrize(("seed", "line"), [
    ("-1", "error: --seed: must be a non-negative integer (got -1)"),
    ("1.5", "error: --seed: must be a non-negative integer (got 1.5)"),
    ("x", "error: --seed: must be a non-negative integer (got x)"),
    (str(2**63), f"error: --seed: must be below 2**63 (got {2**63})"),
])
def test_bad_seed_is_named(seed, line):
    ended = call_main(main, ["steady-broadband", "--seed", seed]).check()
    assert ended.code == 2 and _lines(ended) == [line]


def test_largest_seed_and_flags_reach_the_run(tmp_path):
    fake = _FakeRun()
    with pytest.MonkeyPatch.context() as mp:
        ended = _run(["steady-broadband", "--seed", str(2**63 - 1), "--jobs", "3", "--out", str(tmp_path / "o"),
                      "--controllers", "unpaced, fixed,unpaced", "--resume"], fake, mp)
    assert ended is None
    plan, kwargs = fake.calls[0]
    assert plan.seed == 2**63 - 1 and list(plan.controllers) == ["unpaced", "fixed"]
    assert kwargs["jobs"] == 3 and kwargs["resume"] is True
    assert plan.out == tmp_path / "o" and plan.out.is_dir()


@pytest.mark.parametrize(("jobs", "shown"), [("0", "0"), ("-2", "-2"), ("", "''"), ("two", "two")])
def test_bad_jobs_is_named(jobs, shown):
    ended = call_main(main, ["steady-broadband", "--jobs", jobs]).check()
    assert _lines(ended) == [f"error: --jobs: must be a positive integer (got {shown})"]


def test_controllers_every_unknown_name_on_its_own_line():
    ended = call_main(main, ["steady-broadband", "--controllers", "nosuch,unpaced,alsonot"]).check()
    lines = _lines(ended)
    assert [line.split(";")[0] for line in lines] == ["error: --controllers: unknown controller 'nosuch'",
                                                      "error: --controllers: unknown controller 'alsonot'"]
    assert "known: aimd," in lines[-1]
    empty = call_main(main, ["steady-broadband", "--controllers", " , "]).check()
    assert _lines(empty)[0].startswith("error: --controllers: no controller named (got ' , '); known: ")


def test_flag_and_file_problems_come_together(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\n")
    ended = call_main(main, [str(path), "--seed", "-4", "--jobs", "0"]).check()
    assert _lines(ended) == ["error: --seed: must be a non-negative integer (got -4)",
                             "error: --jobs: must be a positive integer (got 0)",
                             f"error: {path}: workload: Field required",
                             f"error: {path}: paths: Field required"]


# --------------------------------------------------------------------------- the scenario file's problems
def test_four_problem_file_prints_every_one(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nduration_s: -5\nnot_a_key: 1\n")
    ended = call_main(main, [str(path)]).check()
    assert ended.code == 2
    assert _lines(ended) == [
        f"error: {path}: workload: Field required",
        f"error: {path}: paths: Field required",
        f"error: {path}: duration_s: unknown key (did you mean max_duration_s?)",
        f"error: {path}: not_a_key: unknown key",
    ]
    with pytest.raises(ScenarioError) as exc:  # the first problem stays on the attributes callers read
        load_scenario(path)
    assert (exc.value.file, exc.value.key, exc.value.message) == (str(path), "workload", "Field required")
    assert len(exc.value.problems) == 4


def test_nested_problems_each_named_and_unions_read_well(tmp_path):
    path = tmp_path / "nested.yaml"
    path.write_text(
        "name: n\nseed: -1\n"
        "workload: {arrivals: {kind: poison, rate_per_s: 1}, streams: 3}\n"
        "clients: {reading_tps: [1], patience_s: {dist: normal, mean: 1, std: -1, sd: 2}}\n"
        "paths: {a: {rate_mbps: .inf, rtt: 4}}\n"
        "faults: [{at_s: 1}, 3, {kind: outage, at_s: 1, duration_s: -5}]\n")
    lines = _lines(call_main(main, ["check", str(path)]).check())
    assert lines == [f"error: {path}: {line}" for line in [
        "seed: must be a non-negative integer below 2**63 (got -1)",
        "workload.arrivals.kind: unknown kind 'poison' (one of: poisson, periodic, bursty, gamma, phases, csv)",
        "clients.reading_tps: expected a number, or a mapping with `dist:` one of constant, uniform, normal, "
        "lognormal, exponential, choice (got [1])",
        "clients.patience_s.std: Input should be greater than or equal to 0 (got -1)",
        "clients.patience_s.sd: unknown key (did you mean std?)",
        "paths.a.rtt: unknown key (did you mean rtt_ms?)",
        "paths.a.rate_mbps: must be a finite number (got inf)",
        "faults.0.kind: Field required (one of: delay, loss, gilbert_elliott, rate, outage)",
        "faults.1: expected a mapping with `kind:` one of delay, loss, gilbert_elliott, rate, outage (got 3)",
        "faults.2.duration_s: Input should be greater than 0 (got -5)",
    ]]


def test_union_failing_in_every_branch_reports_the_likeliest():
    class M(BaseModel):
        model_config = ConfigDict(extra="forbid")
        x: list[int] | dict[str, int]

    data = {"x": {"a": "b", "c": 1}}
    with pytest.raises(ValidationError) as exc:
        M.model_validate(data)
    assert len(exc.value.errors()) == 2  # pydantic's wall: one per branch
    assert _validation_problems(exc.value, data) == [
        ("x.a", "Input should be a valid integer, unable to parse string as an integer (got 'b')")]


def test_name_that_is_not_a_folder_name(tmp_path):
    path = tmp_path / "s.yaml"
    data = yaml.safe_load(BUILTIN["steady-broadband"].read_text())
    data["name"] = "/"  # the default results folder would be / itself
    path.write_text(yaml.safe_dump(data))
    lines = _lines(call_main(main, ["check", str(path)]).check())
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: name: must be usable as a folder name")


def test_scenario_controllers_all_checked(tmp_path):
    path = tmp_path / "s.yaml"
    data = yaml.safe_load(BUILTIN["steady-broadband"].read_text())
    data["controllers"] = {"nosuch": {}, "fixed": {"rate_tps": -3}, "unpaced": {}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    lines = _lines(call_main(main, ["check", str(path)]).check())
    assert [line.split(": ")[2] for line in lines] == ["controllers.nosuch", "controllers.fixed.rate_tps"]


def test_scenario_argument_missing_folder_or_unknown(tmp_path):
    missing = call_main(main, []).check()
    assert missing.code == 2 and "the following arguments are required: scenario" in missing.err
    folder = call_main(main, [str(tmp_path)]).check()
    assert _lines(folder) == [f"error: {tmp_path}: is a folder, not a scenario file"]
    nowhere = call_main(main, [str(tmp_path / "nope.yaml")]).check()
    assert _lines(nowhere)[0].startswith(f"error: {tmp_path / 'nope.yaml'}: no such file, and not a built-in")


def test_alias_bomb_huge_file_and_self_reference_end_fast(tmp_path):
    levels = ["a: &a [1,1,1,1,1,1,1,1,1,1]"] + [f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]"
                                                for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    cases = {
        "bomb": ("\n".join(levels) + "\n", "more than 200,000 values once YAML aliases (*name) are expanded"),
        "self": ("a: &x [*x]\n", "a.0: a YAML alias (*name) that contains itself"),
        "huge": ("# " + "x" * MAX_FILE_BYTES + "\n", "too large (over 256 KiB)"),
        "deep": ("[" * 5_000, "invalid YAML: nested too deeply"),
        "date": ("name: 2001-02-30\n", "invalid YAML: day is out of range for month"),
    }
    for name, (text, words) in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        t0 = time.monotonic()
        lines = _lines(call_main(main, ["check", str(path)]).check())
        elapsed_s = time.monotonic() - t0
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}: {words}"), (name, lines)
        assert elapsed_s < 30, (name, elapsed_s)  # 10**9 expanded values would take hours


def test_trace_and_request_csv_problems_are_named(tmp_path):
    (tmp_path / "t.down").write_bytes(b"1\n\xff\n")
    (tmp_path / "req.csv").write_text("arrival_time,prefill_length,decode_length\n0.5,10,x\n")
    data = yaml.safe_load(BUILTIN["steady-broadband"].read_text())
    data["paths"] = {"a": {"trace": "t.down"}}
    data["workload"]["arrivals"] = {"kind": "csv", "file": "req.csv"}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    lines = _lines(call_main(main, ["check", str(path)]).check())
    assert lines == [f"error: {path}: paths.a.trace: not UTF-8 text (byte 0xff at offset 2)",
                     f"error: {path}: workload.arrivals.file: {tmp_path / 'req.csv'}: line 2: decode_length is "
                     "not a number ('x')"]


# --------------------------------------------------------------------------- subcommands and the guard
def test_check_passes_every_builtin_and_subcommands_are_guarded():
    for name, path in BUILTIN.items():
        ended = call_main(main, ["check", name]).check()
        assert ended.code == 0 and ended.out.startswith(f"ok: {path} (scenario '{name}'")
    assert call_main(main, ["schema", "--bogus"]).check().code == 2
    assert call_main(main, ["list", "x"]).check().code == 2
    assert "steady-broadband" in call_main(main, ["list"]).check().out
    assert call_main(main, ["check", "steady-broadband", "--debug"]).check().code == 0  # run_cli strips it
    helped = call_main(main, ["--help", "--debug"]).check()
    assert helped.code == 0 and "--debug" in helped.out and "TOKENPACE_DEBUG=1" in helped.out


def test_internal_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    def broken(plan: Any, **kwargs: Any) -> Any:
        raise RuntimeError("simulated breakage")

    argv = ["steady-broadband", "--out", str(tmp_path / "o"), "--controllers", "unpaced", "--quiet"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sim.runner, "run_plan", broken)
        plain = call_main(main, argv).check(allowed=(1,))
        debug = call_main(main, [*argv, "--debug"])
    assert _lines(plain) == ["python -m sim: internal error: RuntimeError: simulated breakage (rerun with --debug "
                             "or TOKENPACE_DEBUG=1 for the traceback)"]
    assert debug.code == 1
    assert "Traceback (most recent call last)" in debug.err and "RuntimeError: simulated breakage" in debug.err


def test_subprocess_bad_file_exits_2_without_traceback(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(NON_UTF8)
    ended = run_module("sim", [str(path), "--seed", "-1"], timeout_s=60).check()
    assert ended.code == 2
    assert ended.err.splitlines() == ["error: --seed: must be a non-negative integer (got -1)",
                                      f"error: {path}: not UTF-8 text (byte 0xff at offset 18)"]
    assert ended.out == ""


def test_every_model_in_the_schema_forbids_unknown_keys():
    """What makes "unknown key" reachable at every depth: no object in the schema takes extras."""
    schema = json_schema()
    objects = [schema, *schema["$defs"].values()]
    open_ones = [o.get("title") for o in objects if "properties" in o and o.get("additionalProperties") is not False]
    assert len(objects) > 20 and open_ones == []
