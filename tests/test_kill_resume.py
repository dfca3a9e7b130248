"""Killed runs leave an honest folder, and ``python -m sim ... --resume`` finishes them.

Real processes throughout: ``python -m sim`` is started, stopped in the middle (SIGKILL, Ctrl-C,
SIGTERM; one process and a pool of two), and then

- run.json says how it ended (``status`` running / interrupted) and which controllers finished;
- ``python -m analysis`` analyses what finished and names what is missing;
- ``--resume`` runs only the controllers that did not finish and the folder ends byte for byte like
  an uninterrupted run's with the same seed (summary.json and every CSV).

The scenario (tests/scenarios/kill-resume.yaml) has three controllers of about a second each, so a
poll every 50 ms sees the first one finish long before the last. A live recording stopped with
Ctrl-C is checked the same way (root, eBPF).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis.results import CONTROLLER_FILES, read_csv
from tests.cli_fuzz import ROOT, Ended, run_module

PY = sys.executable
SCENARIO = ROOT / "tests" / "scenarios" / "kill-resume.yaml"
NAMES = ["unpaced", "ewma", "buffer"]  # the scenario's controllers, in its order
DEADLINE_S = 120.0  # generous: the machine may be busy; the polls below end as soon as the state is reached
POLL_S = 0.05


# --------------------------------------------------------------------------- helpers
def _start(out: Path, *extra: str) -> subprocess.Popen[str]:
    """``python -m sim`` on the scenario, in its own process group (as a shell job would be)."""
    env = {k: v for k, v in os.environ.items() if k != "TOKENPACE_DEBUG"}
    return subprocess.Popen([PY, "-m", "sim", str(SCENARIO), "--out", str(out), "--quiet", *extra], cwd=ROOT,
                            env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _run_json(out: Path) -> dict:
    return json.loads((out / "run.json").read_text(encoding="utf-8"))


def _wait_some_finished(out: Path, proc: subprocess.Popen[str]) -> list[str]:
    """Poll run.json until at least one controller but not all finished; returns that list."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"python -m sim ended (rc={proc.returncode}) before it could be stopped"
        try:
            finished = _run_json(out).get("finished") or []
        except (OSError, ValueError):  # not written yet (it is replaced atomically, never half there)
            finished = []
        if finished:
            assert len(finished) < len(NAMES), f"every controller finished within one {POLL_S} s poll: {finished}"
            return finished
        time.sleep(POLL_S)
    raise AssertionError(f"no controller finished within {DEADLINE_S} s")


def _end(proc: subprocess.Popen[str]) -> Ended:
    out, err = proc.communicate(timeout=DEADLINE_S)
    return Ended(proc.returncode, out, err)


def _live_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are still running (zombies waiting to be reaped do not count)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(stat.parent.name))
    return pids


def _wait_group_gone(pgid: int) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while _live_members(pgid):
        assert time.monotonic() < deadline, f"processes of the killed run still alive: {_live_members(pgid)}"
        time.sleep(POLL_S)


def _files(folder: Path) -> dict[str, os.stat_result]:
    return {str(p.relative_to(folder)): p.stat() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_same_as(out: Path, ref: Path) -> None:
    """summary.json and every controller's files byte for byte as the uninterrupted run's."""
    assert (out / "summary.json").read_bytes() == (ref / "summary.json").read_bytes()
    for name in NAMES:
        ref_files = sorted(p.name for p in (ref / name).iterdir())
        assert sorted(p.name for p in (out / name).iterdir()) == ref_files, name
        for f in ref_files:
            assert (out / name / f).read_bytes() == (ref / name / f).read_bytes(), f"{name}/{f} differs"
    info = _run_json(out)
    assert info["status"] == "complete" and info["finished"] == NAMES


def _analysis_names_missing(out: Path, finished: list[str]) -> None:
    """``python -m analysis`` on the stopped run: exit 0, analyses what finished, names the rest."""
    ended = run_module("analysis", [str(out), "--no-plots"], timeout_s=DEADLINE_S).check(allowed=(0,))
    missing = [n for n in NAMES if n not in finished]
    lines = [ln for ln in (ended.out + ended.err).splitlines() if "missing" in ln]
    for name in missing:
        assert any(name in ln for ln in lines), f"{name} not named as missing in:\n{ended.out}{ended.err}"
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["controllers"]) == sorted(finished)


def _resume_and_check(out: Path, ref: Path, finished: list[str], *extra: str) -> None:
    """``--resume`` runs exactly the controllers missing from ``finished``; the result equals ``ref``."""
    kept = {name: _files(out / name) for name in finished}
    t_resume = time.time_ns()
    ended = run_module("sim", [str(SCENARIO), "--out", str(out), "--quiet", "--resume", *extra],
                       timeout_s=DEADLINE_S).check(allowed=(0,))
    missing = [n for n in NAMES if n not in finished]
    assert f"running {', '.join(missing)}" in ended.err, ended.err
    for name, before in kept.items():  # not run again: the very same files, untouched
        after = _files(out / name)
        assert {k: (s.st_ino, s.st_mtime_ns, s.st_size) for k, s in after.items()} == \
               {k: (s.st_ino, s.st_mtime_ns, s.st_size) for k, s in before.items()}, name
    for name in missing:  # run again: every file written by the resume
        assert all(s.st_mtime_ns >= t_resume for s in _files(out / name).values()), name
    _assert_same_as(out, ref)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run (same seed) every stopped-and-resumed run must end up equal to."""
    ref = tmp_path_factory.mktemp("kill_resume") / "reference"
    run_module("sim", [str(SCENARIO), "--out", str(ref), "--quiet", "--jobs", "1"], timeout_s=DEADLINE_S).check((0,))
    info = _run_json(ref)
    assert info["status"] == "complete" and info["finished"] == NAMES
    return ref


# --------------------------------------------------------------------------- one process
def test_sigkill_leaves_running_with_what_finished_and_resume_runs_only_the_rest(tmp_path, reference):
    out = tmp_path / "run"
    proc = _start(out, "--jobs", "1")
    seen = _wait_some_finished(out, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    ended = _end(proc)
    assert ended.code == -signal.SIGKILL
    info = _run_json(out)
    assert info["status"] == "running"  # it was written at the start and nobody could change it
    finished = info["finished"]
    assert finished[: len(seen)] == seen and finished == NAMES[: len(finished)] and len(finished) < len(NAMES)
    assert not (out / "summary.json").exists()
    _analysis_names_missing(out, finished)
    _resume_and_check(out, reference, finished, "--jobs", "1")


def test_ctrl_c_says_interrupted_exits_130_without_traceback_and_resumes(tmp_path, reference):
    out = tmp_path / "run"
    proc = _start(out, "--jobs", "1")
    _wait_some_finished(out, proc)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    ended = _end(proc)
    assert ended.code == 130, ended.err
    assert "Traceback" not in ended.err and "interrupted" in ended.err, ended.err
    info = _run_json(out)
    assert info["status"] == "interrupted"
    finished = info["finished"]
    assert 1 <= len(finished) < len(NAMES) and finished == NAMES[: len(finished)]
    stopped = NAMES[len(finished)]  # the one it was running: its files stop where Ctrl-C came, on a row's end
    for f in (out / stopped).glob("*.csv"):
        text = f.read_bytes()
        assert text.endswith(b"\n"), f
    _analysis_names_missing(out, finished)
    _resume_and_check(out, reference, finished, "--jobs", "1")


# --------------------------------------------------------------------------- a pool of two
def test_jobs2_sigkill_of_the_parent_takes_its_workers_and_resume_is_identical(tmp_path, reference):
    out = tmp_path / "run"
    proc = _start(out, "--jobs", "2")
    _wait_some_finished(out, proc)
    os.kill(proc.pid, signal.SIGKILL)  # the parent only: its workers must not go on simulating
    ended = _end(proc)
    assert ended.code == -signal.SIGKILL
    _wait_group_gone(proc.pid)
    info = _run_json(out)
    assert info["status"] == "running"
    finished = info["finished"]
    assert 1 <= len(finished) < len(NAMES) and finished == [n for n in NAMES if n in finished]  # plan order
    _analysis_names_missing(out, finished)
    _resume_and_check(out, reference, finished, "--jobs", "2")


def test_sigterm_stops_like_ctrl_c_and_a_plain_rerun_says_resume_would_continue(tmp_path, reference):
    out = tmp_path / "run"
    proc = _start(out, "--jobs", "2")
    _wait_some_finished(out, proc)
    os.kill(proc.pid, signal.SIGTERM)  # `kill PID`: the parent only
    ended = _end(proc)
    assert ended.code == 130, ended.err
    assert "Traceback" not in ended.err, ended.err
    _wait_group_gone(proc.pid)
    info = _run_json(out)
    assert info["status"] == "interrupted" and 1 <= len(info["finished"]) < len(NAMES)
    # Without --resume the folder is run again from scratch, saying what --resume would have done.
    ended = run_module("sim", [str(SCENARIO), "--out", str(out), "--quiet", "--jobs", "2"],
                       timeout_s=DEADLINE_S).check(allowed=(0,))
    note = [ln for ln in ended.err.splitlines() if "--resume" in ln]
    assert len(note) == 1 and "unfinished" in note[0] and "interrupted" in note[0], ended.err
    _assert_same_as(out, reference)


# --------------------------------------------------------------------------- resume's other cases
def test_resume_of_a_complete_run_only_rewrites_the_same_summary(tmp_path, reference):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = _files(out)
    ended = run_module("sim", [str(SCENARIO), "--out", str(out), "--quiet", "--resume"],
                       timeout_s=DEADLINE_S).check(allowed=(0,))
    assert "nothing left to run" in ended.err, ended.err
    after = _files(out)
    assert sorted(after) == sorted(before)
    changed = sorted(k for k in after if after[k].st_mtime_ns != before[k].st_mtime_ns)
    assert changed == ["run.json", "summary.json"]
    _assert_same_as(out, reference)


def test_resume_refuses_a_folder_of_another_run_naming_the_difference(tmp_path, reference):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = _files(out)
    ended = run_module("sim", [str(SCENARIO), "--out", str(out), "--quiet", "--resume", "--seed", "12"]).check((2,))
    assert "--resume" in ended.err and "seed differs: 11 in run.json, 12 now" in ended.err, ended.err
    other = tmp_path / "other.yaml"
    other.write_text(SCENARIO.read_text().replace("streams: 200", "streams: 150"))
    ended = run_module("sim", [str(other), "--out", str(out), "--quiet", "--resume"]).check((2,))
    assert "workload.streams: 200 in run.json, 150 now" in ended.err, ended.err
    ended = run_module("sim", [str(SCENARIO), "--out", str(out), "--quiet", "--resume",
                               "--controllers", "unpaced,ewma"]).check((2,))
    assert "controllers differ" in ended.err, ended.err
    assert {k: s.st_mtime_ns for k, s in _files(out).items()} == {k: s.st_mtime_ns for k, s in before.items()}


def test_resume_into_a_folder_without_run_json_runs_everything_and_says_so(tmp_path):
    out = tmp_path / "fresh"
    ended = run_module("sim", [str(SCENARIO), "--out", str(out), "--quiet", "--resume", "--controllers", "unpaced"],
                       timeout_s=DEADLINE_S).check(allowed=(0,))
    assert "nothing to resume, running every controller" in ended.err, ended.err
    info = _run_json(out)
    assert info["status"] == "complete" and info["finished"] == ["unpaced"]
    assert json.loads((out / "summary.json").read_text())["controllers"]["unpaced"]["streams"] == 200


# --------------------------------------------------------------------------- a live recording
@pytest.mark.live
def test_live_record_stopped_by_ctrl_c_is_closed_interrupted_and_analysable(veth, tmp_path):
    out = tmp_path / "live"
    url = f"http://{veth.addr('a')}:8000"
    server_log = (tmp_path / "server.log").open("w")
    client_log = (tmp_path / "client.log").open("w")
    server = veth.popen("a", [PY, "-m", "live", "--iface", veth.iface("a"), "--host", veth.addr("a"), "--port",
                              "8000", "--controller", "ewma", "--record", str(out)],
                        stdout=server_log, stderr=subprocess.STDOUT)
    client = None
    try:
        probe = f"import urllib.request; urllib.request.urlopen('{url}/healthz', timeout=2).read()"
        deadline = time.monotonic() + DEADLINE_S
        while veth.run("b", [PY, "-c", probe], check=False).returncode != 0:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "live server not ready"
            time.sleep(POLL_S)
        client = veth.popen("b", [PY, "-m", "live", "client", url, "--streams", "40", "--scenario",
                                  "steady-broadband", "--out", str(out), "--time-limit", "60"],
                            stdout=client_log, stderr=subprocess.STDOUT)
        info = _run_json(out)
        assert info["status"] == "running" and info["finished"] == []
        telemetry = out / "ewma" / "telemetry.csv"
        while True:  # mid-run: the pacing loop has recorded several streams (rows reach the disk as it goes)
            lines = telemetry.read_text().splitlines()[1:] if telemetry.is_file() else []
            if len({ln.split(",")[1] for ln in lines if ln.count(",") > 2}) >= 3:
                break
            assert server.poll() is None and client.poll() is None, "server or client ended early"
            assert time.monotonic() < deadline, "no telemetry of three streams"
            time.sleep(POLL_S)
        os.killpg(server.pid, signal.SIGINT)
        assert server.wait(timeout=DEADLINE_S) == 0
        assert client.wait(timeout=DEADLINE_S) == 0, (tmp_path / "client.log").read_text()[-2000:]
    finally:
        for proc in (client, server):
            if proc is not None:
                veth.stop(proc)
        server_log.close()
        client_log.close()
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log and "stopped" in log, log[-2000:]
    info = _run_json(out)
    assert info["status"] == "interrupted" and info["finished"] == ["ewma"]
    folder = out / "ewma"
    csvs = sorted(folder.glob("*.csv"))
    assert {p.name for p in csvs} >= {"tokens.csv", "streams.csv", "telemetry.csv", "server.csv"}
    for path in csvs:  # every file closed on a row's end, and each parses with its columns
        assert path.read_bytes().endswith(b"\n"), path
        columns = CONTROLLER_FILES.get(path.name) or CONTROLLER_FILES[path.name.split("_", 1)[1]]
        read_csv(path, columns)
    streams = read_csv(folder / "streams.csv")
    assert len(streams) >= 3
    run_module("analysis", [str(out), "--no-plots"], timeout_s=DEADLINE_S).check(allowed=(0,))
