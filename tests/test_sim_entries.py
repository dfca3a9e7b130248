"""Scheduler x controller entries: ``CONTROLLER@SCHEDULER`` in ``controllers:``, ``--controllers`` and
``--schedulers``, their validation (exit 2 naming the key or the flag, with the closest known name),
and a run holding one controller on two schedulers (two folders, the scheduler each used in run.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from scenarios.loader import entry_params, entry_problems, expand_entries, load_scenario, split_entry
from sim.cli import main
from sim.model import schedulers
from sim.model.schedulers.fcfs import Fcfs
from sim.runner import make_plan, run_plan

TINY = Path(__file__).parent / "scenarios" / "fuzz-tiny.yaml"  # 10 streams, 12 simulated s: well under 1 s each


class ProbeFcfs(Fcfs):
    """fcfs under another name, counting the instances made: tells which entries ran on it."""

    name = "fcfs_probe"
    made: ClassVar[list[ProbeFcfs]] = []

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        ProbeFcfs.made.append(self)


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> type[ProbeFcfs]:
    monkeypatch.setitem(schedulers.REGISTRY, ProbeFcfs.name, ProbeFcfs)
    ProbeFcfs.made.clear()
    return ProbeFcfs


def _scenario(tmp_path: Path, controllers: dict[str, dict[str, object]]) -> Path:
    data = yaml.safe_load(TINY.read_text(encoding="utf-8"))
    data["controllers"] = controllers
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _errors(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]


def test_split_and_expand():
    assert split_entry("buffer") == ("buffer", None)
    assert split_entry("buffer@tokenpace") == ("buffer", "tokenpace")
    assert expand_entries(["unpaced", "buffer"], None) == ["unpaced", "buffer"]
    # controller by controller, each on every scheduler; an entry naming its scheduler is kept as written
    assert expand_entries(["unpaced", "mpc@andes", "buffer", "unpaced"], ["fcfs", "tokenpace"]) == [
        "unpaced@fcfs", "unpaced@tokenpace", "mpc@andes", "buffer@fcfs", "buffer@tokenpace"]


def test_entry_problems_name_the_closest():
    ctrls, scheds = ["buffer", "mpc", "unpaced"], ["fcfs", "tokenpace"]
    assert entry_problems("buffer@tokenpace", ctrls, scheds) == []
    assert entry_problems("bufer@tokenpase", ctrls, scheds) == [
        "unknown controller 'bufer' (did you mean buffer?); known: buffer, mpc, unpaced",
        "unknown scheduler 'tokenpase' (did you mean tokenpace?); known: fcfs, tokenpace"]
    assert entry_problems("zzz", ctrls, scheds, with_known=False) == ["unknown controller 'zzz'"]
    for bad in ("buffer@", "@fcfs", "a@b@c"):
        assert entry_problems(bad, ctrls, scheds) == [f"an entry is CONTROLLER or CONTROLLER@SCHEDULER (got {bad!r})"]


def test_entry_params_own_then_controllers(tmp_path):
    scn = load_scenario(_scenario(tmp_path, {"fixed": {"rate_tps": 9}, "fixed@fcfs": {"rate_tps": 4}})).scenario
    assert entry_params(scn, "fixed@fcfs") == {"rate_tps": 4}
    assert entry_params(scn, "fixed@other") == {"rate_tps": 9}
    assert entry_params(scn, "unpaced@fcfs") == {}


def test_bad_entries_in_the_file_exit_2_naming_each_key(tmp_path, capsys):
    path = _scenario(tmp_path, {"unpaced": {}, "bufer@fcfs": {}, "mpc@fcsf": {}, "fixed@": {},
                                "fixed@fcfs": {"nosuch": 1}})
    assert main([str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    lines = _errors(capsys)
    assert [line.split(";")[0] for line in lines] == [
        f"error: {path}: controllers.bufer@fcfs: unknown controller 'bufer' (did you mean buffer?)",
        f"error: {path}: controllers.mpc@fcsf: unknown scheduler 'fcsf' (did you mean fcfs?)",
        f"error: {path}: controllers.fixed@: an entry is CONTROLLER or CONTROLLER@SCHEDULER (got 'fixed@')",
        f"error: {path}: controllers.fixed@fcfs.nosuch: Extra inputs are not permitted"]
    assert not (tmp_path / "out").exists()  # nothing ran
    assert main(["check", str(path)]) == 2 and len(_errors(capsys)) == 4


def test_bad_flags_exit_2_naming_the_flag(tmp_path, capsys):
    argv = [str(TINY), "--out", str(tmp_path / "o"), "--controllers", "unpaced,mcp@fcfs,fixed@fcsf",
            "--schedulers", "fcfs,fcfz"]
    assert main(argv) == 2
    lines = _errors(capsys)
    assert [line.split(";")[0] for line in lines] == [
        "error: --controllers: unknown controller 'mcp' (did you mean mpc?)",
        "error: --controllers: unknown scheduler 'fcsf' (did you mean fcfs?)",
        "error: --schedulers: unknown scheduler 'fcfz' (did you mean fcfs?)"]
    assert lines[0].split("; known: ")[1].startswith("aimd, ")
    assert all("fcfs" in line.split("; known: ")[1].split(", ") for line in lines[1:])
    assert main([str(TINY), "--schedulers", " , "]) == 2
    assert _errors(capsys)[0].startswith("error: --schedulers: no scheduler named (got ' , '); known: ")


def test_scenario_for_overrides_only_the_scheduler(tmp_path, probe):
    plan = make_plan(TINY, tmp_path, ["fixed", "fixed@fcfs", "fixed@fcfs_probe"], None)
    assert plan.schedulers == {"fixed": "fcfs", "fixed@fcfs": "fcfs", "fixed@fcfs_probe": "fcfs_probe"}
    assert plan.scenario_for("fixed") is plan.loaded and plan.scenario_for("fixed@fcfs") is plan.loaded
    other = plan.scenario_for("fixed@fcfs_probe").scenario
    assert other.server.scheduler.name == "fcfs_probe" and other.server.scheduler.params == {}
    assert other.model_dump(exclude={"server"}) == plan.loaded.scenario.model_dump(exclude={"server"})
    assert other.server.model_dump(exclude={"scheduler"}) == plan.loaded.scenario.server.model_dump(
        exclude={"scheduler"})


def test_one_controller_on_two_schedulers(tmp_path, probe, capsys):
    out = tmp_path / "run"
    argv = [str(TINY), "--out", str(out), "--controllers", "fixed", "--schedulers", "fcfs,fcfs_probe", "--quiet"]
    assert main(argv) == 0
    assert len(probe.made) == 1  # only fixed@fcfs_probe ran on it
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["fixed@fcfs", "fixed@fcfs_probe"]
    info = json.loads((out / "run.json").read_text())
    assert info["controllers"] == ["fixed@fcfs", "fixed@fcfs_probe"] and info["status"] == "complete"
    assert info["entries"] == {"fixed@fcfs": {"controller": "fixed", "scheduler": "fcfs"},
                               "fixed@fcfs_probe": {"controller": "fixed", "scheduler": "fcfs_probe"}}
    assert info["controller_info"]["fixed@fcfs"] == {"label": "Fixed rate @ fcfs", "color": "#7f7f7f"}
    assert info["controller_info"]["fixed@fcfs_probe"] == {"label": "Fixed rate @ fcfs_probe", "color": "#464646"}
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["controllers"]) == ["fixed@fcfs", "fixed@fcfs_probe"]
    # the same policy under two names: the same run, file for file
    for name in ("streams.csv", "server.csv", "tokens.csv"):
        assert (out / "fixed@fcfs" / name).read_bytes() == (out / "fixed@fcfs_probe" / name).read_bytes()
    # and a plain name on the scenario's scheduler (fcfs) is that run too
    plain = run_plan(make_plan(TINY, tmp_path / "plain", ["fixed"], None), show_progress=False)[0]
    assert plain["controllers"]["fixed"] == summary["controllers"]["fixed@fcfs"]


def test_resume_keeps_finished_entries(tmp_path, probe, capsys):
    out = tmp_path / "run"
    plan = make_plan(TINY, out, ["unpaced@fcfs", "unpaced@fcfs_probe"], None)
    run_plan(plan, show_progress=False)
    whole = (out / "summary.json").read_bytes()
    info = json.loads((out / "run.json").read_text())  # as if killed after the first entry
    info.update(status="running", finished=["unpaced@fcfs"])
    (out / "run.json").write_text(json.dumps(info))
    probe.made.clear()
    assert main([str(TINY), "--out", str(out), "--controllers", "unpaced", "--schedulers", "fcfs,fcfs_probe",
                 "--resume", "--quiet"]) == 0
    assert "unpaced@fcfs finished already; running unpaced@fcfs_probe" in capsys.readouterr().err
    assert len(probe.made) == 1 and (out / "summary.json").read_bytes() == whole
