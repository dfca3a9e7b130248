"""Sweeps (issue #14, item 1): the sweep file's checks, grid expansion, the Student-t intervals, and real
sweeps on the process pool and on Ray, killed and resumed.

tests/scenarios/sweep-tiny.yaml is capacity-tiny.yaml (24 requests) at two arrival rates x two
schedulers, two seeds, two controllers: eight runs of a fraction of a second. sweep-kill.yaml has six
runs of about half a second, so a poll every 50 ms sees the first finish long before the last.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from analysis.sweep import aggregate, read_sweep_csv, t_interval
from scenarios.cli_errors import BadInput
from sim.cli import main as sim_main
from sim.sweep_cell import run_cell, unpack_folder
from sim.sweep_file import apply_values, cell_ids, load_sweep
from tests.cli_fuzz import ROOT, call_main, run_module
from tests.conftest import unavailable

HERE = Path(__file__).parent / "scenarios"
TINY = HERE / "sweep-tiny.yaml"
KILL = HERE / "sweep-kill.yaml"
DEADLINE_S = 120.0
POLL_S = 0.05


def _sweep(out: Path, *extra: str, sweep: Path = TINY) -> None:
    ended = run_module("sim", ["sweep", str(sweep), "--out", str(out), "--quiet", *extra], timeout_s=DEADLINE_S)
    ended.check(allowed=(0,))


# --------------------------------------------------------------------------- the file
def test_every_problem_is_named_at_once_with_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({
        "base": str(HERE / "capacity-tiny.yaml"),
        "grid": {"server.kv_token": [1000], "server.kv_tokens": [-5, 1000], "controllers.fixed.rate_tp": [5],
                 "paths.broadbnd.rate_mbps": [1]},
        "seeds": [1, 1],
        "controllers": ["unpaced", "bufer"],
    }), encoding="utf-8")
    ended = call_main(sim_main, ["sweep", str(bad), "--backend", "nope", "--jobs", "0", "--address", "x:1"])
    assert ended.code == 2, ended.err
    lines = ended.err.splitlines()
    assert all(ln.startswith("error: ") for ln in lines)
    expected = [
        "error: --backend: must be one of local, ray (got nope)",
        "error: --address: only with --backend ray",
        "error: --jobs: must be a positive integer (got 0)",
        f"error: {bad}: seeds: a seed is listed twice",
        f"error: {bad}: controllers.1: unknown controller 'bufer' (did you mean buffer?)",
        f"error: {bad}: grid.server.kv_token: not a scenario key: server has no 'kv_token' "
        "(did you mean server.kv_tokens?)",
        f"error: {bad}: grid.controllers.fixed.rate_tp: not a scenario key: controller fixed has no parameter "
        "'rate_tp' (did you mean controllers.fixed.rate_tps?)",
        f"error: {bad}: grid.paths.broadbnd.rate_mbps: not a scenario key: paths has no 'broadbnd' "
        "(did you mean paths.broadband.rate_mbps?)",
    ]
    for line in expected:
        assert any(ln.startswith(line) for ln in lines), f"{line!r} not in:\n{ended.err}"
    assert len(lines) == len(expected)  # the entries are wrong, so no value could be checked with them


def test_a_value_the_scenario_rejects_names_grid_key_value_and_scenario_key(tmp_path: Path) -> None:
    bad = tmp_path / "values.yaml"
    bad.write_text("base: capacity-tiny.yaml\nsedes: [1]\n", encoding="utf-8")
    with pytest.raises(BadInput) as err:
        load_sweep(bad)
    assert err.value.problems == [(f"{bad}: seeds", "Field required"),
                                  (f"{bad}: sedes", "unknown key (did you mean seeds?)")]
    (tmp_path / "capacity-tiny.yaml").write_text((HERE / "capacity-tiny.yaml").read_text(), encoding="utf-8")
    bad.write_text("base: capacity-tiny.yaml\nseeds: [1]\ngrid:\n  server.kv_tokens: [-5, 1000]\n"
                   "  server.scheduler: [fcfs, andez]\n  controllers.fixed.rate_tps: [-1]\n", encoding="utf-8")
    with pytest.raises(BadInput) as err:
        load_sweep(bad)
    got = {w: m for w, m in err.value.problems}
    assert got[f"{bad}: grid.server.kv_tokens"] == "value -5: server.kv_tokens: Input should be greater than 0 (got -5)"
    assert got[f"{bad}: grid.server.scheduler"].startswith("value andez: server.scheduler.name: unknown scheduler")
    assert got[f"{bad}: grid.controllers.fixed.rate_tps"].startswith("value -1: controllers.fixed.rate_tps: ")
    assert len(got) == 3


def test_grid_expands_to_the_cartesian_product_in_file_order() -> None:
    plan = load_sweep(TINY)
    assert [c.id for c in plan.cells] == ["rate_per_s=4,scheduler=fcfs", "rate_per_s=4,scheduler=andes",
                                          "rate_per_s=8,scheduler=fcfs", "rate_per_s=8,scheduler=andes"]
    last = plan.cells[-1]
    assert last.values == {"workload.arrivals.rate_per_s": 8, "server.scheduler": "andes"}
    assert last.loaded.scenario.workload.arrivals.rate_per_s == 8.0
    assert last.loaded.scenario.server.scheduler.name == "andes"
    assert plan.base.scenario.server.scheduler.name == "fcfs"  # the base is untouched
    run = plan.run_plan(last, 2)
    assert (run.seed, list(run.controllers), run.out) == (2, ["unpaced", "fixed"],
                                                          Path("results/sweep-tiny/cells") / last.id / "seed-2")
    assert run.scheduler_of("fixed") == "andes"
    # a controller's parameter, a scheduler given by name, a list index
    raw = {"server": {"scheduler": "andes"}, "faults": [{"at_s": 1}], "controllers": {"unpaced": {}}}
    assert apply_values(raw, {"server.scheduler.params.x": 1, "faults.0.at_s": 2, "controllers.buffer.cushion_s": 3}
                        ) == {"server": {"scheduler": {"name": "andes", "params": {"x": 1}}}, "faults": [{"at_s": 2}],
                              "controllers": {"unpaced": {}, "buffer": {"cushion_s": 3}}}
    assert raw["server"]["scheduler"] == "andes"
    grid = {"a.x": [0.5, "0.5"], "b.x": [{"k": 1}]}
    assert cell_ids(grid, [(0.5, {"k": 1}), ("0.5", {"k": 1})]) == ["a.x=0.5,b.x=v0~0", "a.x=0.5,b.x=v0~1"]
    assert cell_ids({}, [()]) == ["base"]


# --------------------------------------------------------------------------- confidence intervals
def test_student_t_interval_on_known_numbers() -> None:
    # 1..5: mean 3, s = sqrt(2.5), s/sqrt(5) = 0.707107; t(0.975, 4) = 2.776445 (tables): half-width 1.963243
    ci = t_interval([1, 2, 3, 4, 5])
    assert (ci["mean"], ci["n"]) == (3.0, 5)
    assert ci["half_width"] == pytest.approx(1.963243, abs=1e-6)
    assert (ci["ci_low"], ci["ci_high"]) == pytest.approx((1.036757, 4.963243), abs=1e-6)
    # two seeds: s/sqrt(2) = 0.05, t(0.975, 1) = 12.706205
    assert t_interval([0.9, 1.0, None])["half_width"] == pytest.approx(0.635310, abs=1e-6)
    one = t_interval([0.7])
    assert (one["mean"], one["half_width"], one["n"]) == (0.7, None, 1)
    assert t_interval([None])["mean"] is None
    rows = [{"cell": "c", "controller": "u", "seed": s, "qoe_mean": q} for s, q in ((1, 0.9), (2, 1.0))]
    cells = aggregate(rows, [{"id": "c", "values": {"k": 1}}, {"id": "d", "values": {"k": 2}}], ["u", "b"])
    assert [c["id"] for c in cells] == ["c"] and list(cells[0]["controllers"]) == ["u"]
    assert cells[0]["controllers"]["u"]["qoe_mean"] == {"mean": 0.95, "ci_low": 0.31469, "ci_high": 1.58531,
                                                       "half_width": 0.63531, "n": 2}
    assert cells[0]["controllers"]["u"]["seeds"] == [1, 2]


# --------------------------------------------------------------------------- real sweeps
def test_a_sweep_gives_python_m_sim_runs_and_the_same_csv_on_one_or_two_processes(tmp_path: Path) -> None:
    _sweep(tmp_path / "j1")
    _sweep(tmp_path / "j2", "--jobs", "2")
    csv1 = (tmp_path / "j1" / "sweep.csv").read_bytes()
    assert csv1 == (tmp_path / "j2" / "sweep.csv").read_bytes()
    rows = read_sweep_csv(tmp_path / "j1" / "sweep.csv", ["workload.arrivals.rate_per_s", "server.scheduler"])
    assert len(rows) == 4 * 2 * 2
    assert [(r["cell"], r["controller"], r["seed"]) for r in rows[:3]] == [
        ("rate_per_s=4,scheduler=fcfs", "unpaced", 1), ("rate_per_s=4,scheduler=fcfs", "unpaced", 2),
        ("rate_per_s=4,scheduler=fcfs", "fixed", 1)]
    # one cell and seed is exactly `python -m sim` on the base with those values
    scn = yaml.safe_load((HERE / "capacity-tiny.yaml").read_text(encoding="utf-8"))
    scn["workload"]["arrivals"]["rate_per_s"] = 8
    scn["server"]["scheduler"] = "andes"
    (tmp_path / "cell.yaml").write_text(yaml.safe_dump(scn), encoding="utf-8")
    run_module("sim", [str(tmp_path / "cell.yaml"), "--seed", "2", "--controllers", "unpaced,fixed", "--out",
                       str(tmp_path / "one"), "--quiet"], timeout_s=DEADLINE_S).check(allowed=(0,))
    cell = tmp_path / "j1" / "cells" / "rate_per_s=8,scheduler=andes" / "seed-2"
    assert (cell / "summary.json").read_bytes() == (tmp_path / "one" / "summary.json").read_bytes()
    summary = json.loads((cell / "summary.json").read_text())["controllers"]["fixed"]
    row = next(r for r in rows if r["cell"] == "rate_per_s=8,scheduler=andes" and r["controller"] == "fixed"
               and r["seed"] == 2)
    assert row["qoe_mean"] == summary["qoe_mean"] and row["streams"] == 24
    info = json.loads((tmp_path / "j1" / "sweep.json").read_text())
    stat = info["cells"][3]["controllers"]["fixed"]["qoe_mean"]
    seeds = [r["qoe_mean"] for r in rows if r["cell"] == "rate_per_s=8,scheduler=andes" and r["controller"] == "fixed"]
    assert stat["n"] == 2 and stat["mean"] == pytest.approx(math.fsum(seeds) / 2, rel=1e-5)
    run = json.loads((tmp_path / "j1" / "run.json").read_text())
    assert (run["mode"], run["status"], len(run["finished"])) == ("sweep", "complete", 8)
    # python -m analysis DIR on a sweep folder: the table and a figure per metric
    ended = run_module("analysis", [str(tmp_path / "j1")], timeout_s=DEADLINE_S).check(allowed=(0,))
    assert "mean over seeds" in ended.out
    assert (tmp_path / "j1" / "plots" / "sweep_qoe_mean.png").stat().st_size > 10_000


def test_a_shipped_run_unpacks_to_the_same_files(tmp_path: Path) -> None:
    """What a Ray cluster's worker sends back (it does not see the driver's disk) is the folder itself."""
    plan = load_sweep(TINY, tmp_path / "direct")
    direct = plan.run_plan(plan.cells[0], 1)
    assert run_cell(direct)["files"] is None
    shipped = run_cell(replace(direct, out=tmp_path / "unused"), ship=True)
    assert not (tmp_path / "unused").exists()
    unpack_folder(shipped["files"], tmp_path / "shipped")
    files = sorted(p.relative_to(direct.out) for p in direct.out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "shipped") for p in (tmp_path / "shipped").rglob("*")
                           if p.is_file())
    assert all((direct.out / f).read_bytes() == (tmp_path / "shipped" / f).read_bytes() for f in files
               if f.name != "run.json")
    runs = [json.loads((d / "run.json").read_text(encoding="utf-8")) for d in (direct.out, tmp_path / "shipped")]
    assert [{**r, "started_at": None} for r in runs] == [{**runs[0], "started_at": None}] * 2  # each its own start
    assert Path("unpaced/tokens.csv") in files


def test_ray_backend_missing_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    ended = call_main(sim_main, ["sweep", str(TINY), "--backend", "ray", "--out", str(tmp_path / "r")])
    assert ended.code == 2
    assert ended.err.strip() == ("error: --backend: ray is not installed: pip install 'tokenpace[ray]' "
                                 "(or use --backend local)")


@pytest.mark.slow
def test_ray_backend_gives_the_same_results_cell_for_cell(tmp_path: Path) -> None:
    if importlib.util.find_spec("ray") is None:
        unavailable("ray is not installed: pip install -e '.[ray]'")
    _sweep(tmp_path / "local", "--jobs", "2")
    _sweep(tmp_path / "ray", "--backend", "ray", "--jobs", "2")  # a local Ray instance, num_cpus=2
    assert (tmp_path / "ray" / "sweep.csv").read_bytes() == (tmp_path / "local" / "sweep.csv").read_bytes()
    for cell in sorted((tmp_path / "local" / "cells").glob("*/seed-*")):
        other = tmp_path / "ray" / cell.relative_to(tmp_path / "local")
        assert (other / "summary.json").read_bytes() == (cell / "summary.json").read_bytes(), cell.name
        assert (other / "fixed" / "tokens.csv").read_bytes() == (cell / "fixed" / "tokens.csv").read_bytes()
    assert json.loads((tmp_path / "ray" / "run.json").read_text())["backend"] == "ray"


def test_killed_sweep_resumes_to_the_same_csv(tmp_path: Path) -> None:
    ref, out = tmp_path / "ref", tmp_path / "out"
    _sweep(ref, "--jobs", "2", sweep=KILL)
    env = {k: v for k, v in os.environ.items() if k != "TOKENPACE_DEBUG"}
    proc = subprocess.Popen([sys.executable, "-m", "sim", "sweep", str(KILL), "--out", str(out), "--quiet"],
                            cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + DEADLINE_S
    finished: list[str] = []
    while not finished:
        assert time.monotonic() < deadline and proc.poll() is None, "the sweep ended before it could be stopped"
        try:
            finished = json.loads((out / "run.json").read_text())["finished"]
        except (OSError, ValueError, KeyError):
            finished = []
        time.sleep(POLL_S)
    assert len(finished) < 6, "every run finished within one poll"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 130, err
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "interrupted" and 1 <= len(info["finished"]) < 6
    kept = len(info["finished"])
    assert len((out / "sweep.csv").read_text().splitlines()) == 1 + 2 * kept  # rows of the finished runs only
    ended = run_module("analysis", [str(out), "--no-plots"], timeout_s=DEADLINE_S).check(allowed=(0,))
    assert "incomplete sweep" in ended.err
    ended = run_module("sim", ["sweep", str(KILL), "--out", str(out), "--quiet", "--resume"], timeout_s=DEADLINE_S)
    ended.check(allowed=(0,))
    assert f"{kept} of 6 runs finished already; running {6 - kept}" in ended.err
    assert (out / "sweep.csv").read_bytes() == (ref / "sweep.csv").read_bytes()
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    # a resume against another sweep is refused, naming what differs
    other = tmp_path / "other.yaml"
    other.write_text(KILL.read_text().replace("seeds: [1, 2]", "seeds: [1, 3]").replace(
        "base: capacity-tiny.yaml", f"base: {HERE / 'capacity-tiny.yaml'}"), encoding="utf-8")
    ended = run_module("sim", ["sweep", str(other), "--out", str(out), "--quiet", "--resume"], timeout_s=DEADLINE_S)
    assert ended.code == 2 and "error: --resume:" in ended.err and "the seeds differ" in ended.err


# --------------------------------------------------------------------------- built-in sweeps and export
def test_every_built_in_sweep_file_loads_and_its_exports_fit_its_grid() -> None:
    root = Path(__file__).resolve().parent.parent / "sweeps"
    files = sorted(root.glob("*.yaml"))
    assert {f.stem for f in files} >= {"gpu-scaling", "batch-tradeoff", "prefix-cache", "scheduler-comparison",
                                       "prefix-routing"}
    exports = {}
    for f in files:
        plan = load_sweep(f)
        assert plan.cells and plan.seeds and plan.entries, f
        exports[f.stem] = plan.exports
    assert exports["gpu-scaling"] == ("gpu_scaling",) and exports["batch-tradeoff"] == ("batch_analysis",)
    assert exports["prefix-cache"] == ("cache_experiments",)


def test_export_key_is_checked_against_the_grid_and_written_at_the_end(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": str(HERE / "capacity-tiny.yaml"), "grid": {"server.max_running": [1, 4]},
                                   "seeds": [1], "controllers": ["unpaced"],
                                   "export": ["gpu_scaling", "batch_analysis", "nope"]}), encoding="utf-8")
    ended = call_main(sim_main, ["sweep", str(bad)])
    assert ended.code == 2
    assert ended.err.splitlines() == [
        f"error: {bad}: export.0: gpu_scaling needs the grid to sweep server.replicas over two values or more",
        f"error: {bad}: export.2: unknown format 'nope'; known: gpu_scaling, batch_analysis, cache_experiments",
    ]
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"base": str(HERE / "capacity-tiny.yaml"), "grid": {"server.max_running": [1, 4]},
                                    "seeds": [1, 2], "controllers": ["unpaced"], "export": ["batch_analysis"]}),
                    encoding="utf-8")
    _sweep(tmp_path / "out", sweep=good)
    written = (tmp_path / "out" / "batch_analysis.csv").read_text(encoding="utf-8")
    by_hand = run_module("analysis", ["sweep-export", str(tmp_path / "out"), "--format", "batch_analysis", "--out",
                                      str(tmp_path / "again.csv")], timeout_s=DEADLINE_S)
    by_hand.check(allowed=(0,))
    assert written == (tmp_path / "again.csv").read_text(encoding="utf-8")
    lines = written.splitlines()
    assert lines[0] == "batch_size,avg_wait_ms,avg_latency_ms,throughput_req_per_sec,total_requests,efficiency_notes"
    assert [ln.split(",")[0] for ln in lines[1:]] == ["1", "4"]
