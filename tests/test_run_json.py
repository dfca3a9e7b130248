"""run.json's ``started_at`` (issue #14): every driver writes it through analysis.results.write_run_json,
once when the run starts, and a resumed run keeps it.

The clock is ``analysis.results.run_json.now_utc``, replaced here by a counter, so each test knows
which start time every run.json must hold. The simulations are tests/scenarios/capacity-tiny.yaml
(24 short requests, a fraction of a second each).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from analysis.results import run_json
from analysis.runs import STARTED_KEY
from scenarios import load_scenario
from sim.cli import main as sim_main
from sim.runner import make_plan, run_plan

TINY = Path(__file__).parent / "scenarios" / "capacity-tiny.yaml"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """now_utc gives 2030-01-01T00:00:01.000+00:00, then :02, ...; the list holds what it gave."""
    given: list[str] = []

    def now() -> str:
        given.append(datetime(2030, 1, 1, 0, 0, len(given) + 1, tzinfo=UTC).isoformat(timespec="milliseconds"))
        return given[-1]

    monkeypatch.setattr(run_json, "now_utc", now)
    yield given


def started(folder: Path) -> str:
    return json.loads((folder / "run.json").read_text(encoding="utf-8"))[STARTED_KEY]


def test_now_utc_is_iso_8601_in_utc() -> None:
    when = datetime.fromisoformat(run_json.now_utc())
    assert when.utcoffset() is not None and when.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - when).total_seconds()) < 60


def test_sim_run_has_it_and_resume_keeps_it(tmp_path: Path, clock: list[str]) -> None:
    out = tmp_path / "run"
    plan = make_plan(TINY, out, ["unpaced"], None)
    run_plan(plan, show_progress=False)
    assert started(out) == "2030-01-01T00:00:01.000+00:00"
    run_plan(plan, show_progress=False, resume=True)  # resumed: the run started at the first start
    assert started(out) == "2030-01-01T00:00:01.000+00:00"
    run_plan(plan, show_progress=False)  # run again from scratch: a new start
    assert started(out) == "2030-01-01T00:00:02.000+00:00"
    info = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert info["git_rev"] == run_json.git_rev() and info["versions"] == run_json.versions()


def test_capacity_search_has_it(tmp_path: Path, clock: list[str]) -> None:
    out = tmp_path / "cap"
    argv = ["capacity", str(TINY), "--slo", "qoe_mean>=0.9", "--seeds", "1", "--tol", "0.5",
            "--controllers", "unpaced", "--out", str(out), "--quiet"]
    assert sim_main(argv) == 0
    assert started(out) == clock[0]  # written at the start and again at the end: the same time
    assert sim_main([*argv, "--resume"]) == 0
    assert started(out) == clock[0]


def test_sweep_and_each_of_its_runs_have_it(tmp_path: Path, clock: list[str]) -> None:
    sweep = tmp_path / "one.yaml"
    sweep.write_text(yaml.safe_dump({"name": "one", "base": str(TINY), "grid": {"server.max_running": [64]},
                                     "seeds": [5], "controllers": ["unpaced"]}), encoding="utf-8")
    out = tmp_path / "sweep"
    assert sim_main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 0
    first = started(out)
    cells = sorted(out.glob("cells/*/seed-5"))
    assert len(cells) == 1 and started(cells[0]) != first  # the sweep's start, then its one run's
    assert sim_main(["sweep", str(sweep), "--out", str(out), "--quiet", "--resume"]) == 0
    assert started(out) == first


def test_live_recording_keeps_the_first_start_across_controllers(tmp_path: Path, clock: list[str]) -> None:
    from live.recorder import write_run_json

    write_run_json(tmp_path, controller="unpaced")
    write_run_json(tmp_path, controller="fixed")  # a second controller recorded into the same run
    info = json.loads((tmp_path / "run.json").read_text(encoding="utf-8"))
    assert info[STARTED_KEY] == clock[0] and info["controllers"] == ["unpaced", "fixed"]


def test_lab_writes_it_before_the_first_entry(tmp_path: Path, clock: list[str]) -> None:
    from live.lab import lab

    loaded = load_scenario(TINY)
    lab._start_run_json(tmp_path, loaded, ["unpaced"], 5, {"runs": []}, {})
    info = json.loads((tmp_path / "run.json").read_text(encoding="utf-8"))
    assert (info["mode"], info["status"], info[STARTED_KEY]) == ("lab", "running", clock[0])
