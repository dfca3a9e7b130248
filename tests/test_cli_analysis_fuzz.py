"""``python -m analysis`` never prints a traceback, and says what a killed run left behind.

One real results folder is simulated once (tests/scenarios/fuzz-tiny.yaml: two controllers, ten
short streams, a fade and an outage); every hypothesis example copies it and breaks it the ways a
disk, a killed run or a hand edit break files -- a CSV cut at a random byte, bytes that are not
UTF-8, a header without a column, text in a number cell, a file deleted, run.json or summary.json
replaced by random JSON or YAML, run.json saying the run is still going with a controller left out
of ``finished`` -- and runs every subcommand on it. Each must end with exit 0 or 2 (exit 1 is for our
own bugs), print no traceback, and, on exit 2, name the broken folder's file on an ``error:`` line.

The explicit tests pin the partial-run behaviour (issue 11, item 3): a killed run is analysed for
what finished and names what did not; a run where nothing finished is refused with the reason; a
run.json from before ``status`` existed is a complete run.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import analysis.metrics
from analysis.cli import main
from analysis.results import CONTROLLER_FILES, load_run, read_json
from tests.cli_fuzz import ROOT, Ended, argv_lists, call_main, file_bytes, run_module, yaml_values

SCENARIO = ROOT / "tests" / "scenarios" / "fuzz-tiny.yaml"
CONTROLLERS = ("unpaced", "fixed")  # the scenario's, in run.json's order
LABELS = {"unpaced": "Unpaced", "fixed": "Fixed rate"}
CSV_FILES = tuple(CONTROLLER_FILES)
FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real results folder written by ``python -m sim`` (about a second)."""
    out = tmp_path_factory.mktemp("analysis-fuzz") / "run"
    run_module("sim", [str(SCENARIO), "--out", str(out), "--quiet", "--jobs", "1"], timeout_s=60).check(allowed=(0,))
    assert {p.name for p in out.iterdir()} >= {"run.json", "summary.json", *CONTROLLERS}
    for name in CONTROLLERS:  # every file has rows, so the corruptions below have something to hit
        for file_name in ("tokens.csv", "streams.csv", "telemetry.csv", "server.csv"):
            assert len((out / name / file_name).read_text().splitlines()) > 5, (name, file_name)
    return out


_copies = 0


def _copy(pristine: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    global _copies
    _copies += 1
    dest = tmp_path_factory.getbasetemp() / "copies" / f"run{_copies}"
    shutil.copytree(pristine, dest)
    return dest


def _edit_json(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(info))


# --------------------------------------------------------------------------- corruptions
# Each is (what it does, where, how) and is applied by _apply; drawn as plain data so that
# hypothesis shrinks a failure to the one corruption that caused it.
controller = st.sampled_from(CONTROLLERS)
csv_file = st.sampled_from(CSV_FILES)
fraction = st.floats(0.0, 1.0)
cell_text = st.sampled_from(["abc", "inf", "-inf", "1e309", "nan", "-1", "1e308", "", " ", "0", "\"", "a,b",
                             "99999999999999999999999", "1.5.5", "0x10", "—"])
corruption = st.one_of(
    st.tuples(st.just("truncate"), controller, csv_file, fraction),
    st.tuples(st.just("non_utf8"), controller, csv_file, fraction),
    st.tuples(st.just("drop_column"), controller, csv_file, st.integers(0, 20)),
    st.tuples(st.just("cell"), controller, csv_file, st.tuples(fraction, st.integers(0, 20), cell_text)),
    st.tuples(st.just("delete"), controller, st.sampled_from([*CSV_FILES, "<folder>"]), st.none()),
    st.tuples(st.just("bytes"), controller, csv_file, file_bytes),
    st.tuples(st.just("json"), st.none(), st.sampled_from(["run.json", "summary.json"]),
              st.one_of(yaml_values, file_bytes)),
    st.tuples(st.just("yaml"), st.none(), st.sampled_from(["run.json", "summary.json"]), yaml_values),
    st.tuples(st.just("run_key"), st.none(),
              st.sampled_from(["status", "finished", "controllers", "slo_qoe", "scenario", "controller_info",
                               "mode", "control_interval_s"]), yaml_values),
    st.tuples(st.just("partial"), st.sampled_from(["running", "interrupted"]),
              st.lists(controller, unique=True, max_size=2), st.booleans()),
    st.tuples(st.just("delete_top"), st.none(), st.sampled_from(["run.json", "summary.json"]), st.none()),
)
corruptions = st.lists(corruption, min_size=1, max_size=3)


def _apply(run: Path, what: tuple[Any, ...]) -> None:
    kind, ctrl, target, arg = what
    path = run / ctrl / target if ctrl in CONTROLLERS and isinstance(target, str) else run / str(target)
    if kind in ("truncate", "non_utf8", "drop_column", "cell", "bytes") and not path.is_file():
        return  # an earlier corruption deleted it
    if kind == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * arg)])
    elif kind == "non_utf8":
        data = bytearray(path.read_bytes())
        at = min(int(len(data) * arg), max(len(data) - 2, 0))
        data[at:at + 2] = b"\xff\xfe"
        path.write_bytes(bytes(data))
    elif kind == "drop_column":
        lines = path.read_bytes().split(b"\n", 1)
        header = lines[0].split(b",")
        del header[arg % len(header)]
        path.write_bytes(b",".join(header) + (b"\n" + lines[1] if len(lines) > 1 else b""))
    elif kind == "cell":
        where, column, text = arg
        lines = path.read_text(errors="replace").split("\n")
        row = 1 + int(where * max(len(lines) - 2, 0))
        if row < len(lines) and lines[row]:
            cells = lines[row].split(",")
            cells[column % len(cells)] = text
            lines[row] = ",".join(cells)
            path.write_text("\n".join(lines))
    elif kind in ("delete", "delete_top"):
        if target == "<folder>":
            shutil.rmtree(run / ctrl, ignore_errors=True)
        elif path.exists():
            path.unlink()
    elif kind == "bytes":
        path.write_bytes(arg)
    elif kind == "json":
        path.write_bytes(arg if isinstance(arg, bytes) else json.dumps(arg).encode())
    elif kind == "yaml":
        path.write_text(yaml.safe_dump(arg))
    elif kind == "run_key":
        if (run / "run.json").is_file():
            # an earlier corruption may have left it not JSON, or not an object
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                _edit_json(run / "run.json", lambda info: info.__setitem__(target, arg))
    elif kind == "partial":
        status, finished, drop_summary = ctrl, target, arg
        if (run / "run.json").is_file():
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                _edit_json(run / "run.json", lambda info: info.update(status=status, finished=finished))
        if drop_summary and (run / "summary.json").exists():
            (run / "summary.json").unlink()


def _check(ended: Ended, *named: Path) -> Ended:
    """Exit 0 or 2, no traceback; every stderr line is an error or a warning; an error names the folder."""
    ended.check(allowed=(0, 2))
    lines = ended.err.strip().splitlines()
    assert all(line.startswith(("error: ", "warning: ")) for line in lines), ended.err
    if ended.code == 2:
        errors = [line for line in lines if line.startswith("error: ")]
        assert errors, ended.err
        assert any(str(p) in line for p in named for line in errors), (named, ended.err)
    return ended


# --------------------------------------------------------------------------- fuzz
def _confined(token: str, root: Path) -> str:
    """Keep fuzzed absolute paths inside ``root``: as root, an output folder /x would really be made."""
    return f"{root}{token}" if token.startswith("/") and token not in ("/", "/dev/null") else token


@given(st.sampled_from([[], ["report"], ["compare"], ["train"], ["capacity"], ["runs"], ["sweep-export"]]), argv_lists)
@FUZZ
def test_random_argv_never_crashes(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
                                   head: list[str], argv: list[str]) -> None:
    root = tmp_path_factory.mktemp("argv")
    cwd = root.joinpath(*["d"] * 6)  # so that ../../.. stays inside root
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    ended = call_main(main, [*head, *(_confined(a, root) for a in argv)])
    ended.check(allowed=(0, 2))
    assert "internal error" not in ended.err


@given(corruptions)
@FUZZ
def test_report_on_a_broken_folder(pristine: Path, tmp_path_factory: pytest.TempPathFactory,
                                   broken: list[tuple[Any, ...]]) -> None:
    run = _copy(pristine, tmp_path_factory)
    for what in broken:
        _apply(run, what)
    ended = _check(call_main(main, [str(run), "--no-plots"]), run)
    if ended.code == 0:
        info = read_json(run / "run.json")
        summary = read_json(run / "summary.json")
        if info.get("status") in ("running", "interrupted"):
            assert f"warning: {run}: run incomplete (status {info['status']}" in ended.err
            assert set(summary["controllers"]) <= set(info["finished"])
        assert (run / "report.html").is_file()


@given(corruptions, st.booleans())
@settings(FUZZ, max_examples=60)  # two folders read per example
# found in a CI run: a controller named by a record separator, which split the warning line in two
@example([("run_key", None, "controllers", {"\x1e": None})], False)
def test_compare_with_a_broken_folder(pristine: Path, tmp_path_factory: pytest.TempPathFactory,
                                      broken: list[tuple[Any, ...]], broken_is_lab: bool) -> None:
    run = _copy(pristine, tmp_path_factory)
    for what in broken:
        _apply(run, what)
    sim, lab = (pristine, run) if broken_is_lab else (run, pristine)
    out = run.parent / f"{run.name}-fidelity"
    ended = _check(call_main(main, ["compare", str(sim), str(lab), "--out", str(out), "--no-plots"]), run)
    if ended.code == 0:
        fidelity = read_json(out / "fidelity.json")
        assert fidelity["controllers"] and set(fidelity["controllers"]) <= set(CONTROLLERS)


@given(st.lists(st.one_of(
    st.tuples(st.just("truncate"), controller, st.just("telemetry.csv"), fraction),
    st.tuples(st.just("cell"), controller, st.just("telemetry.csv"), st.tuples(fraction, st.integers(0, 5), cell_text)),
    st.tuples(st.just("drop_column"), controller, st.just("telemetry.csv"), st.integers(0, 13)),
    st.tuples(st.just("non_utf8"), controller, st.just("telemetry.csv"), fraction),
    st.tuples(st.just("bytes"), controller, st.just("telemetry.csv"), file_bytes),
    st.tuples(st.just("delete"), controller, st.just("telemetry.csv"), st.none()),
), min_size=1, max_size=2))
@settings(FUZZ, max_examples=8)  # a successful fit costs about 1.5 s of CPU
def test_train_on_a_broken_folder(pristine: Path, tmp_path_factory: pytest.TempPathFactory,
                                  broken: list[tuple[Any, ...]]) -> None:
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    run = _copy(pristine, tmp_path_factory)
    for what in broken:
        _apply(run, what)
    out = run.parent / f"{run.name}-models"
    argv = ["train", str(run), "--out", str(out), "--no-plots", "--estimators", "5"]
    with threadpool_limits(limits=1):  # OpenMP threads on a shared 2-core machine only wait for each other
        ended = _check(call_main(main, argv), run)
    if ended.code == 0:
        assert (out / "training_metrics.json").is_file()


@given(file_bytes, st.sampled_from(["net_data.csv", "telemetry.csv", "x.csv"]))
@settings(FUZZ, max_examples=60)
def test_train_on_random_file_contents(tmp_path_factory: pytest.TempPathFactory, data: bytes, name: str) -> None:
    path = tmp_path_factory.mktemp("train") / name
    path.write_bytes(data)
    _check(call_main(main, ["train", str(path), "--no-plots", "--estimators", "5"]), path)


# --------------------------------------------------------------------------- partial runs
def _killed(pristine: Path, tmp_path: Path, finished: list[str], status: str = "running") -> Path:
    """What a SIGKILL during the second controller leaves: status running, the first finished, the
    second's files cut mid-row, no summary.json."""
    run = tmp_path / "killed"
    shutil.copytree(pristine, run)
    _edit_json(run / "run.json", lambda info: info.update(status=status, finished=finished))
    (run / "summary.json").unlink()
    for name in CONTROLLERS:
        if name in finished:
            continue
        for file_name in ("tokens.csv", "telemetry.csv"):
            path = run / name / file_name
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2 + 7])  # +7: inside a row, not at a line end
            assert not path.read_bytes().endswith(b"\n")
    return run


def test_killed_run_analyses_what_finished_and_names_what_is_missing(pristine: Path, tmp_path: Path) -> None:
    run = _killed(pristine, tmp_path, ["unpaced"])
    ended = call_main(main, [str(run), "--no-plots"])  # the plots of a partial run: the test below
    ended.check(allowed=(0,))
    assert ended.err.splitlines() == [
        f"warning: {run}: run incomplete (status running: the run was killed or is still going); "
        "finished: unpaced; missing: fixed",
        f"warning: {run / 'fixed'}: skipped: did not finish, its files stop mid-line (tokens.csv, telemetry.csv)",
    ]
    assert "Unpaced" in ended.out and "Fixed rate" not in ended.out
    assert "incomplete run: analysed unpaced; missing fixed" in ended.out
    summary = read_json(run / "summary.json")
    assert list(summary["controllers"]) == ["unpaced"]
    expected = read_json(pristine / "summary.json")["controllers"]["unpaced"]
    assert summary["controllers"]["unpaced"] == expected  # the finished controller's numbers are untouched
    report = (run / "report.html").read_text()
    assert "This run is incomplete (status running: the run was killed or is still going)" in report
    assert "missing: fixed." in report


def test_plots_of_a_partial_run_with_odd_run_json(pristine: Path, tmp_path: Path) -> None:
    """The plots of a partial run: only the finished controller is drawn; and run.json fields of the
    wrong shape that the plots read (faults, colours, labels) fall back instead of failing."""
    run = _killed(pristine, tmp_path, ["fixed"], status="interrupted")

    def odd(info: dict[str, Any]) -> None:
        info["scenario"]["faults"] = [{"kind": 3, "at_s": "soon", "duration_s": None}, "outage", {"at_s": 1e308,
                                      "duration_s": 1e308, "path": ["link"]}, {"at_s": 1.0, "duration_s": 2.0}]
        info["scenario"]["paths"] = "link"
        info["controller_info"] = {"fixed": {"label": 42, "color": "not-a-colour"}, "unpaced": "x"}
        info["control_interval_s"] = -1

    _edit_json(run / "run.json", odd)
    ended = call_main(main, [str(run)]).check(allowed=(0,))
    assert "finished: fixed; missing: unpaced" in ended.err.splitlines()[0]
    assert "42" in ended.out  # the label, as text
    plots = {p.name for p in (run / "plots").iterdir()}
    assert plots >= {"timeline_fixed.png", "system_dynamics_fixed.png", "comparison.png", "cdf_qoe.png"}
    assert not any("unpaced" in p for p in plots)  # nothing drawn for the controller that did not finish
    assert 'src="plots/timeline_fixed.png"' in (run / "report.html").read_text()


def test_interrupted_run_with_a_missing_folder(pristine: Path, tmp_path: Path) -> None:
    run = _killed(pristine, tmp_path, ["fixed"], status="interrupted")
    shutil.rmtree(run / "unpaced")
    ended = call_main(main, [str(run), "--no-plots"]).check(allowed=(0,))
    assert ended.err.splitlines() == [
        f"warning: {run}: run incomplete (status interrupted: the run was stopped by Ctrl-C or SIGTERM); "
        "finished: fixed; missing: unpaced",
    ]
    assert list(read_json(run / "summary.json")["controllers"]) == ["fixed"]
    loaded = load_run(run)
    assert (loaded.status, loaded.finished, loaded.missing, loaded.complete) == ("interrupted", ("fixed",),
                                                                                  ("unpaced",), False)
    assert loaded.controller_names == ["fixed"]


def test_nothing_finished_is_refused_with_the_reason(pristine: Path, tmp_path: Path) -> None:
    run = _killed(pristine, tmp_path, [])
    ended = call_main(main, [str(run), "--no-plots"]).check(allowed=(2,))
    assert ended.err.splitlines() == [
        f"error: {run}: run incomplete (status running: the run was killed or is still going) and no controller "
        "finished (missing: unpaced, fixed); nothing to analyse",
    ]
    assert not (run / "summary.json").exists() and not (run / "report.html").exists()


def test_killed_run_through_a_real_process(pristine: Path, tmp_path: Path) -> None:
    run = _killed(pristine, tmp_path, ["fixed"])
    ended = run_module("analysis", [str(run), "--no-plots"], timeout_s=120).check(allowed=(0,))
    assert "finished: fixed; missing: unpaced" in ended.err and "Fixed rate" in ended.out


def test_run_json_without_status_is_complete(pristine: Path, tmp_path: Path) -> None:
    run = tmp_path / "old"
    shutil.copytree(pristine, run)
    info = read_json(run / "run.json")
    assert "status" not in info or info["status"] == "complete"
    _edit_json(run / "run.json", lambda i: (i.pop("status", None), i.pop("finished", None)))
    ended = call_main(main, [str(run), "--no-plots"]).check(allowed=(0,))
    assert ended.err == ""
    assert sorted(read_json(run / "summary.json")["controllers"]) == sorted(CONTROLLERS)
    assert "incomplete" not in (run / "report.html").read_text()


def test_a_complete_run_with_a_cut_file_is_analysed_with_a_warning(pristine: Path, tmp_path: Path) -> None:
    run = tmp_path / "cut"
    shutil.copytree(pristine, run)
    path = run / "fixed" / "tokens.csv"
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:-2]) + b"\n" + lines[-2][:5])  # the last row cut after 5 bytes
    ended = call_main(main, [str(run), "--no-plots"]).check(allowed=(0,))
    assert ended.err.splitlines() == [
        f"warning: {path}: the file ends mid-line (cut while being written); its last row may be incomplete"]
    tokens = read_json(run / "summary.json")["controllers"]["fixed"]["tokens_generated"]
    assert tokens == read_json(pristine / "summary.json")["controllers"]["fixed"]["tokens_generated"] - 1


def test_compare_uses_the_controllers_both_finished(pristine: Path, tmp_path: Path) -> None:
    lab = _killed(pristine, tmp_path, ["fixed"])
    out = tmp_path / "fid"
    ended = call_main(main, ["compare", str(pristine), str(lab), "--out", str(out)]).check(allowed=(0,))
    assert ended.err.splitlines()[0].startswith(f"warning: {lab}: run incomplete (status running")
    fidelity = read_json(out / "fidelity.json")
    assert fidelity["controllers"] == ["fixed"] and fidelity["only_sim"] == ["unpaced"]
    assert (out / "plots" / "fidelity_fixed.png").is_file() and not (out / "plots" / "fidelity_unpaced.png").exists()

    sim = tmp_path / "sim-unpaced-only"
    shutil.copytree(pristine, sim)
    _edit_json(sim / "run.json", lambda i: i.update(status="interrupted", finished=["unpaced"]))
    ended = call_main(main, ["compare", str(sim), str(lab), "--no-plots"]).check(allowed=(2,))
    assert ended.err.splitlines()[-1] == (
        f"error: LIVE_DIR {lab}: no controller finished in both runs (SIM_DIR finished: unpaced; "
        "LIVE_DIR finished: fixed)")


# --------------------------------------------------------------------------- paths and flags
def test_paths_and_flags_are_named(pristine: Path, tmp_path: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ([str(tmp_path / "nope")], f"error: DIR {tmp_path / 'nope'}: no such folder"),
        ([str(a_file)], f"error: DIR {a_file}: is a file, not a results folder"),
        ([str(empty)], f"error: DIR {empty}: not a results folder: no run.json and no controller folders "
                       "(a results folder holds run.json and one folder per controller"),
        (["compare", str(a_file), str(pristine)], f"error: SIM_DIR {a_file}: is a file"),
        (["compare", str(pristine), str(empty)], f"error: LIVE_DIR {empty}: not a results folder"),
        (["compare", str(pristine), str(pristine), "--out", str(a_file)], f"error: --out {a_file}: is a file"),
        (["compare", str(pristine), str(pristine), "--out", str(a_file / "x")],
         f"error: --out {a_file / 'x'}: not found (a part of the path is a file"),
        (["train", str(tmp_path / "nope.csv")], f"error: INPUT {tmp_path / 'nope.csv'}: not found"),
        (["train", str(pristine), "--out", str(a_file)], f"error: --out {a_file}: is a file"),
    ]
    for argv, first_line in cases:
        ended = call_main(main, argv).check(allowed=(2,))
        assert ended.err.startswith(first_line), (argv, ended.err)
        assert len(ended.err.splitlines()) == 1, ended.err
    ended = call_main(main, ["train", str(pristine), "--seed", "-1", "--contamination", "nan", "--holdout", "1",
                             "--estimators", "100000"]).check(allowed=(2,))
    assert ended.err.splitlines() == [
        "error: --contamination: must be in (0.0, 0.5], got nan",
        "error: --estimators: must be in [1, 10000], got 100000",
        "error: --holdout: must be in (0.0, 1.0), got 1.0",
        "error: --seed: must be in [0, 4294967295], got -1",
    ]


def test_internal_error_is_one_line_and_debug_shows_the_traceback(pristine: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    shutil.copytree(pristine, run)

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(analysis.metrics, "summarize_run", broken)
    ended = call_main(main, [str(run), "--no-plots"])
    assert ended.code == 1 and ended.err.splitlines() == [
        "python -m analysis: internal error: RuntimeError: a bug of ours "
        "(rerun with --debug or TOKENPACE_DEBUG=1 for the traceback)"]
    ended = call_main(main, [str(run), "--no-plots", "--debug"])
    assert ended.code == 1 and "Traceback (most recent call last)" in ended.err and "a bug of ours" in ended.err


def test_unwritable_output_is_bad_input_not_a_bug(pristine: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    (run / "report.html").mkdir()  # the report cannot be written where a folder stands
    ended = call_main(main, [str(run), "--no-plots"]).check(allowed=(2,))
    assert ended.err.startswith(f"error: {run / 'report.html'}: cannot read or write: Is a directory")


def test_labels_and_paths_are_printed_as_they_are(pristine: Path, tmp_path: Path) -> None:
    """rich markup in a label or a path is text, not markup (``[/]`` would make rich raise)."""
    run = tmp_path / "[/]run [red]"
    shutil.copytree(pristine, run)
    _edit_json(run / "run.json", lambda i: i["controller_info"]["fixed"].update(label="[/]Fixed [b]"))
    ended = call_main(main, [str(run), "--no-plots"]).check(allowed=(0,))
    assert "[/]Fixed [b]" in ended.out and f"report: {run / 'report.html'}" in ended.out
