"""`python -m live lab` runs schedulers too: entries ``CONTROLLER@SCHEDULER``, ``--schedulers`` and
``--scheduler``, resolved as the simulator resolves them (scenarios.loader, sim.model.entries.Plan).

The command-line checks need no root. The real run (root, namespaces, TUN, eBPF) plays
tests/scenarios/lab-entries-kv.yaml: KV memory of 300 tokens holds two streams of 100 prompt + 40
output tokens (280) but not a third prompt beside two running ones (3 x 100 + 1 > 300), so fcfs never
overflows memory -- it admits the third only when one ends -- while tokenpace swaps out a stream whose
4 tok/s reader has seconds of tokens in hand to admit the next one (TokenFlow, arXiv 2510.02758; here
with the buffer the kernel's ACKs show). The simulator, on the same file, has 4 swap-outs and 4
swap-ins under tokenpace and none under fcfs.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from live.lab import lab
from scenarios.cli_errors import BadInput

PY = sys.executable
SCENARIO = Path(__file__).parent / "scenarios" / "lab-entries-kv.yaml"
KV_TINY = Path(__file__).parent / "scenarios" / "kv-tiny-buffered.yaml"  # server.scheduler tokenpace
PREEMPTIONS = {"swap_out", "swap_in", "preempt", "recompute"}


def _problems(argv: list[str]) -> list[tuple[str, str]]:
    with pytest.raises(BadInput) as exc:
        lab.validate(argv)
    return list(exc.value.problems)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- the command line (no root)
def test_scenario_entries_run_on_their_own_schedulers(tmp_path: Path) -> None:
    plan = lab.validate([str(SCENARIO), "--out", str(tmp_path / "o")])
    assert plan.names == ["unpaced@fcfs", "unpaced@tokenpace"]
    assert plan.schedulers == {"unpaced@fcfs": "fcfs", "unpaced@tokenpace": "tokenpace"}


def test_schedulers_expand_plain_entries_as_the_simulator_does(tmp_path: Path) -> None:
    from scenarios.loader import expand_entries

    plan = lab.validate([str(KV_TINY), "--out", str(tmp_path / "o"), "--controllers", "buffer,unpaced@andes",
                         "--schedulers", "fcfs,tokenpace"])
    assert plan.names == expand_entries(["buffer", "unpaced@andes"], ["fcfs", "tokenpace"])
    assert plan.names == ["buffer@fcfs", "buffer@tokenpace", "unpaced@andes"]
    assert plan.schedulers == {"buffer@fcfs": "fcfs", "buffer@tokenpace": "tokenpace", "unpaced@andes": "andes"}


def test_scheduler_overrides_the_scenario_default_for_plain_entries_only(tmp_path: Path) -> None:
    plan = lab.validate([str(KV_TINY), "--out", str(tmp_path / "o"), "--controllers", "unpaced,buffer@tokenpace",
                         "--scheduler", "fcfs"])
    assert plan.schedulers == {"unpaced": "fcfs", "buffer@tokenpace": "tokenpace"}
    # no flag: the scenario's server.scheduler (tokenpace)
    plan = lab.validate([str(KV_TINY), "--out", str(tmp_path / "o")])
    assert plan.schedulers == {"unpaced": "tokenpace", "buffer": "tokenpace"}


def test_run_json_entries_and_the_servers_scenario_match_the_simulators(tmp_path: Path) -> None:
    """What run.json says of each entry, and the scenario each entry's server runs, are sim.runner's."""
    from sim.runner import make_plan, run_info

    plan = lab.validate([str(KV_TINY), "--out", str(tmp_path / "o"), "--schedulers", "fcfs,tokenpace"])
    mine = lab.entries_info(lab.entry_plan(plan.loaded, plan.names, plan.schedulers))
    sim_plan = make_plan(KV_TINY, tmp_path / "s", None, None, ["fcfs", "tokenpace"])
    theirs = run_info(sim_plan)
    for key in ("entries", "controller_info", "controller_params", "scenario"):
        assert json.loads(json.dumps(mine[key])) == json.loads(json.dumps(theirs[key])), key
    assert mine["entries"]["buffer@fcfs"] == {"controller": "buffer", "scheduler": "fcfs"}
    assert mine["controller_info"]["buffer@fcfs"]["label"].endswith("@ fcfs")
    # buffer@fcfs: not the file's scheduler (tokenpace), so fcfs with its defaults; @tokenpace keeps the file's
    ep = lab.entry_plan(plan.loaded, plan.names, plan.schedulers)
    assert ep.scenario_for("buffer@fcfs").scenario.server.scheduler.name == "fcfs"
    assert ep.scenario_for("buffer@fcfs").scenario.server.scheduler.params == {}
    assert ep.scenario_for("buffer@tokenpace") is plan.loaded


@pytest.mark.parametrize(("extra", "flag", "needle"), [
    (["--controllers", "buffer@tokenpase"], "--controllers", "did you mean tokenpace?"),
    (["--controllers", "bufer@fcfs"], "--controllers", "did you mean buffer?"),
    (["--controllers", "buffer@"], "--controllers", "CONTROLLER@SCHEDULER"),
    (["--controllers", "oracle@fcfs"], "--controllers", "oracle@fcfs: sim only"),
    (["--schedulers", "fcfs,tokenpac"], "--schedulers", "did you mean tokenpace?"),
    (["--schedulers", ","], "--schedulers", "no scheduler named"),
    (["--scheduler", "andez"], "--scheduler", "did you mean andes?"),
    (["--scheduler", "fcfs,andes"], "--scheduler", "one scheduler"),
    (["--scheduler", "fcfs", "--schedulers", "andes"], "--scheduler", "no effect with --schedulers"),
])
def test_bad_entries_and_scheduler_flags_are_named(tmp_path: Path, extra: list[str], flag: str, needle: str) -> None:
    problems = _problems([str(SCENARIO), "--out", str(tmp_path / "o"), *extra])
    assert any(where == flag and needle in msg for where, msg in problems), problems


def test_a_scenario_entry_with_an_unknown_scheduler_names_its_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SCENARIO.read_text().replace("unpaced@tokenpace: {}", "unpaced@tokenpase: {}"))
    problems = _problems([str(bad), "--out", str(tmp_path / "o")])
    assert problems == [(f"{bad}: controllers.unpaced@tokenpase",
                         "unknown scheduler 'tokenpase' (did you mean tokenpace?); "
                         "known: andes, fcfs, tokenflow, tokenpace")]


def test_the_command_line_exits_2_naming_the_flag(tmp_path: Path) -> None:
    proc = subprocess.run([PY, "-m", "live", "lab", str(SCENARIO), "--out", str(tmp_path / "o"),
                           "--schedulers", "fcfs,tokenpac"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "--schedulers: unknown scheduler 'tokenpac' (did you mean tokenpace?)" in proc.stderr


# --------------------------------------------------------------------------- a real lab run (root, kernel)
@pytest.mark.live
@pytest.mark.timeout(180)
def test_lab_runs_one_controller_on_fcfs_and_on_tokenpace(live: None, tmp_path: Path) -> None:
    out = tmp_path / "lab"
    t0 = time.monotonic()
    proc = subprocess.run([PY, "-m", "live", "lab", str(SCENARIO), "--out", str(out), "--time-limit", "8"],
                          capture_output=True, text=True, timeout=150, check=False)
    wall_s = time.monotonic() - t0
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert wall_s < 60, f"lab run took {wall_s:.1f} s"

    info = json.loads((out / "run.json").read_text())
    assert info["mode"] == "lab" and info["status"] == "complete"
    assert info["controllers"] == ["unpaced@fcfs", "unpaced@tokenpace"]
    assert info["entries"] == {"unpaced@fcfs": {"controller": "unpaced", "scheduler": "fcfs"},
                               "unpaced@tokenpace": {"controller": "unpaced", "scheduler": "tokenpace"}}
    assert [(r["controller"], r["scheduler"]) for r in info["lab"]["runs"]] == [
        ("unpaced@fcfs", "fcfs"), ("unpaced@tokenpace", "tokenpace")]
    assert info["scenario"]["server"]["scheduler"]["name"] == "fcfs"  # the file's, as the simulator records it

    kinds = {}
    for entry in ("unpaced@fcfs", "unpaced@tokenpace"):
        d = out / entry
        for name in ("tokens.csv", "streams.csv", "events.csv", "memory_events.csv", "telemetry.csv"):
            assert (d / name).is_file(), f"{entry}/{name} missing"
        assert len(_rows(d / "streams.csv")) == 4, entry
        kinds[entry] = ({r["event_type"] for r in _rows(d / "events.csv")},
                        {r["event_type"] for r in _rows(d / "memory_events.csv")})
    assert not (kinds["unpaced@fcfs"][0] | kinds["unpaced@fcfs"][1]) & PREEMPTIONS, kinds["unpaced@fcfs"]
    assert {"swap_out", "swap_in"} <= kinds["unpaced@tokenpace"][0], kinds["unpaced@tokenpace"]
    assert {"swap_out", "swap_in"} <= kinds["unpaced@tokenpace"][1], kinds["unpaced@tokenpace"]
    memory = _rows(out / "unpaced@tokenpace" / "memory_events.csv")
    assert sum(r["event_type"] == "swap_out" for r in memory) == sum(r["event_type"] == "swap_in" for r in memory)

    summary = json.loads((out / "summary.json").read_text())["controllers"]
    assert set(summary) == {"unpaced@fcfs", "unpaced@tokenpace"}
    for entry, m in summary.items():
        assert m["completed"] == 4, (entry, m)

    # the simulator's run of the same file compares entry by entry (analysis.compare, folders named by entry)
    sim_dir, cmp_dir = tmp_path / "sim", tmp_path / "cmp"
    for argv in (["sim", str(SCENARIO), "--out", str(sim_dir), "--quiet"],
                 ["analysis", "compare", str(sim_dir), str(out), "--out", str(cmp_dir)]):
        done = subprocess.run([PY, "-m", *argv], capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-2000:])
    sim_memory = _rows(sim_dir / "unpaced@tokenpace" / "memory_events.csv")
    assert sum(r["event_type"] == "swap_out" for r in sim_memory) > 0
    assert not _rows(sim_dir / "unpaced@fcfs" / "memory_events.csv")
    fidelity = json.loads((cmp_dir / "fidelity.json").read_text())
    assert fidelity["controllers"] == ["unpaced@fcfs", "unpaced@tokenpace"]
    assert fidelity["ranking"]["lab_ranking"] and fidelity["ranking"]["sim_ranking"]
