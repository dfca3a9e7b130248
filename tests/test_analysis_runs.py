"""``python -m analysis runs ROOT ...``: experiment management over a ROOT holding real simulated runs
(two seeds of tests/scenarios/fuzz-tiny.yaml) and hand-written live, lab, sweep, unknown-mode and
broken folders. Figures are hand-computed (Welch intervals, stream counts) or read from the runs'
own files; bad input exits 2 naming the flag or file, never with a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from analysis.cli import main
from analysis.runs import Spread, welch_interval

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "scenarios" / "fuzz-tiny.yaml"
DAY = 86400.0
NOW = time.time()


def _iso(days_ago: float) -> str:
    return datetime.fromtimestamp(NOW - days_ago * DAY, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


OLD = _iso(1000)  # live/l1 started 1000 days ago; the other hand-written runs 10 to 20 days ago


def _json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def _sweep(folder: Path, name: str, seeds: list[tuple[float, float]]) -> None:
    """A sweep folder as python -m sim sweep lays it out: one cell, one seed folder per seed."""
    for i, (qoe, ttft) in enumerate(seeds, start=1):
        metrics = {"streams": 10, "qoe_mean": qoe, "ttft_p99_s": ttft}
        _json(folder / "cells" / "kv=1000" / f"seed-{i}" / "summary.json",
              {"scenario": "fuzz-tiny", "controllers": {"buffer": metrics}})
    _json(folder / "run.json", {"mode": "sweep", "name": name, "scenario": {"name": "fuzz-tiny"},
                                "controllers": ["buffer"], "seeds": [1, 2, 3], "grid": {"server.kv_tokens": [1000]},
                                "status": "complete", "started_at": _iso(10)})
    (folder / "sweep.csv").write_text("cell,server.kv_tokens,controller,seed,qoe_mean\n", encoding="utf-8")
    _json(folder / "sweep.json", {})


@pytest.fixture(scope="session")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for seed, name in ((11, "tiny"), (12, "tiny-s12")):
        out = root / "sims" / name
        subprocess.run([sys.executable, "-m", "sim", str(TINY), "--seed", str(seed), "--out", str(out)],
                       check=True, cwd=REPO, capture_output=True, timeout=120)
    sim = root / "sims" / "tiny"
    info = json.loads((sim / "run.json").read_text(encoding="utf-8"))
    del info["started_at"]  # a run.json from before started_at: dated by its mtime
    _json(sim / "run.json", info)
    live = root / "live" / "l1"  # python -m live --record: no summary.json yet
    shutil.copytree(sim / "fixed", live / "fixed")
    _json(live / "run.json", {"mode": "live", "scenario": {"name": "live"}, "controllers": ["fixed"],
                              "status": "complete", "finished": ["fixed"], "started_at": OLD, "live": {"wall_s": 12.5}})
    lab = root / "lab" / "stopped"  # a lab stopped by Ctrl-C after its first controller
    shutil.copytree(sim / "unpaced", lab / "unpaced")
    _json(lab / "run.json", {"mode": "lab", "scenario": {"name": "lab-short"}, "controllers": ["unpaced", "fixed"],
                             "status": "interrupted", "finished": ["unpaced"], "lab": {"wall_s": 30.0},
                             "started_at": _iso(12)})
    cut = root / "lab" / "cut"  # says complete, but fixed never wrote its streams.csv
    shutil.copytree(sim / "unpaced", cut / "unpaced")
    (cut / "fixed").mkdir()
    _json(cut / "run.json", {"mode": "lab", "scenario": {"name": "lab-short"}, "controllers": ["unpaced", "fixed"],
                             "status": "complete", "started_at": _iso(11)})
    _sweep(root / "sweeps" / "a", "a", [(0.5, 1.0), (0.6, 2.0), (0.7, 3.0)])
    _sweep(root / "sweeps" / "b", "b", [(0.8, 1.5), (0.9, 2.5), (1.0, 3.5)])
    _json(root / "other" / "future" / "run.json", {"mode": "hologram", "scenario": "zzz",
                                                    "started_at": round(NOW - 20 * DAY)})
    (root / "other" / "broken").mkdir(parents=True)
    (root / "other" / "broken" / "run.json").write_text('{"mode": ', encoding="utf-8")
    return root


@pytest.fixture
def root(pristine: Path, tmp_path: Path) -> Path:
    """A copy a test may change (archive moves folders)."""
    return Path(shutil.copytree(pristine, tmp_path / "root"))


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["runs", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_list_names_every_run_with_its_mode_and_status(pristine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, pristine, "list", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert {n: (r["mode"], r["status"]) for n, r in rows.items()} == {
        "sims/tiny": ("sim", "complete"), "sims/tiny-s12": ("sim", "complete"),
        "live/l1": ("live", "complete"), "lab/stopped": ("lab", "interrupted"), "lab/cut": ("lab", "incomplete"),
        "sweeps/a": ("sweep", "complete"), "sweeps/b": ("sweep", "complete"),
        "other/future": ("hologram", "complete"), "other/broken": ("?", "unreadable"),
    }  # the sweeps' cells and the controller folders are not runs
    assert rows["sims/tiny"]["controllers"] == ["unpaced", "fixed"]
    assert rows["sims/tiny"]["scenario"] == "fuzz-tiny"
    assert rows["sims/tiny"]["date_source"] == "run.json mtime"
    assert rows["sims/tiny-s12"]["date_source"] == "started_at"
    assert rows["live/l1"]["date"] == OLD.replace("Z", "+00:00")
    future = datetime.fromtimestamp(round(NOW - 20 * DAY), UTC).isoformat()
    assert rows["other/future"]["date"] == future  # seconds since the epoch
    assert rows["lab/cut"]["missing"] == ["fixed/streams.csv", "fixed/tokens.csv"]
    assert rows["lab/stopped"]["missing"] == ["fixed (not finished)"]
    assert next(iter(rows)) == "live/l1"  # oldest first
    assert "other/broken/run.json:1: invalid JSON" in err
    code, out, _ = _run(capsys, pristine, "list")
    assert code == 0
    line = next(x for x in out.splitlines() if "live/l1" in x)
    assert OLD.replace("T", " ") in line and "fixed" in line and "complete" in line
    assert "missing fixed/streams.csv" in out


def test_show_prints_metadata_and_the_summary(pristine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, pristine, "show", "sims/tiny")
    assert code == 0
    summary = json.loads((pristine / "sims" / "tiny" / "summary.json").read_text())["controllers"]
    info = json.loads((pristine / "sims" / "tiny" / "run.json").read_text())
    assert info["git_rev"] in out and "fuzz-tiny" in out and "Fixed rate" in out
    assert f"fixed run_time_s {summary['fixed']['run_time_s']}" in out
    assert f"{summary['fixed']['qoe_mean']:.3f}" in out
    code, out, _ = _run(capsys, pristine, "show", "tiny", "--json")  # a folder name alone, when unique
    shown = json.loads(out)
    assert shown["seed"] == 11 and shown["summary"]["unpaced"] == summary["unpaced"]
    # the live run has no summary.json: it is computed from its files and equals the sim's (same files)
    code, out, _ = _run(capsys, pristine, "show", "live/l1", "--json")
    shown = json.loads(out)
    assert shown["summary"]["fixed"]["qoe_mean"] == summary["fixed"]["qoe_mean"]
    assert shown["durations"]["live wall_s"] == 12.5
    assert not (pristine / "live" / "l1" / "summary.json").exists()
    code, out, _ = _run(capsys, pristine, "show", "lab/stopped", "--json")
    shown = json.loads(out)
    assert shown["status"] == "interrupted" and shown["finished"] == ["unpaced"]
    assert list(shown["summary"]) == ["unpaced"]
    code, out, _ = _run(capsys, pristine, "show", "sweeps/a")
    # qoe 0.5, 0.6, 0.7: mean 0.6, sd 0.1, t(0.975, 2) = 4.302653 -> half width 0.1 * 4.302653 / sqrt 3 = 0.248
    assert code == 0 and "0.600 ± 0.248" in out and "kv=1000" in out
    code, out, err = _run(capsys, pristine, "show", "future")
    assert code == 0 and "'hologram' is not one this version knows" in out and err == ""


def test_compare_weighs_the_difference_against_the_seed_spread(pristine: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, pristine, "compare", "sweeps/a", "sweeps/b", "--json")
    assert code == 0
    rows = {r["metric"]: r for r in json.loads(out)["rows"]}
    # qoe: means 0.6 and 0.9, variances 0.01 each: se = sqrt(0.02 / 3) = 0.0816497, Welch df = 4,
    # t(0.975, 4) = 2.776445 -> half width 0.226696
    q = rows["qoe_mean"]
    assert q["diff"] == pytest.approx(0.3)
    assert q["welch_df"] == pytest.approx(4.0)
    assert (q["ci95_low"], q["ci95_high"]) == (pytest.approx(0.073304, abs=1e-6), pytest.approx(0.526696, abs=1e-6))
    assert q["exceeds_seed_spread"] is True and q["a_n"] == q["b_n"] == 3
    # ttft: variances 1 each: se = sqrt(2 / 3) = 0.816497, half width 2.266958: 0 is inside
    t = rows["ttft_p99_s"]
    assert (t["ci95_low"], t["ci95_high"]) == (pytest.approx(-1.766958, abs=1e-6), pytest.approx(2.766958, abs=1e-6))
    assert t["exceeds_seed_spread"] is False
    code, out, _ = _run(capsys, pristine, "compare", "sweeps/a", "sweeps/b")
    assert "[+0.073, +0.527]" in out and "yes" in out
    code, out, _ = _run(capsys, pristine, "compare", "sims/tiny", "sims/tiny-s12", "--json")
    result = json.loads(out)
    a = json.loads((pristine / "sims" / "tiny" / "summary.json").read_text())["controllers"]
    b = json.loads((pristine / "sims" / "tiny-s12" / "summary.json").read_text())["controllers"]
    row = next(r for r in result["rows"] if r["controller"] == "fixed" and r["metric"] == "qoe_mean")
    assert row["diff"] == pytest.approx(b["fixed"]["qoe_mean"] - a["fixed"]["qoe_mean"])
    assert row["verdict"] == "one seed each" and row["ci95_low"] is None
    code, out, _ = _run(capsys, pristine, "compare", "sims/tiny", "sims/tiny-s12")
    assert code == 0 and out.startswith("one seed each (sims/tiny, sims/tiny-s12)")


def test_welch_interval_by_hand() -> None:
    a, b = Spread.of([1.0, 2.0, 3.0, 4.0]), Spread.of([2.0, 4.0])
    # va = (5/3) / 4 = 0.416667, vb = 2 / 2 = 1: df = 1.416667^2 / (0.416667^2 / 3 + 1^2 / 1) = 1.897155;
    # t(0.975, 1.897155) = 4.534085, times sqrt(1.416667) = 5.396641
    low, high, df = welch_interval(a, b)  # type: ignore[misc]
    assert df == pytest.approx(1.897155, abs=1e-6)
    assert (low, high) == (pytest.approx(0.5 - 5.396641, abs=1e-5), pytest.approx(0.5 + 5.396641, abs=1e-5))
    assert welch_interval(Spread.of([1.0]), b) is None


def test_stats_totals(pristine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, pristine, "stats", "--json")
    assert code == 0
    totals = json.loads(out)
    assert totals["runs"] == 9
    assert totals["by_mode"] == {"?": 1, "hologram": 1, "lab": 2, "live": 1, "sim": 2, "sweep": 2}
    assert totals["by_status"] == {"complete": 6, "interrupted": 1, "incomplete": 1, "unreadable": 1}
    assert totals["controller_runs"] == 2 + 2 + 1 + 2 + 2 + 3 + 3  # a sweep: controllers x cells x seeds
    # sims: 2 runs x 2 controllers x 10 streams; sweeps: 2 x 3 seeds x 10
    assert totals["streams_simulated"] == 100
    sims = [json.loads((pristine / "sims" / n / "summary.json").read_text())["controllers"]
            for n in ("tiny", "tiny-s12")]
    assert totals["tokens_simulated"] == sum(m["tokens_generated"] for s in sims for m in s.values())
    assert totals["simulated_s"] == pytest.approx(sum(m["run_time_s"] for s in sims for m in s.values()), abs=1e-3)
    # live/l1 (fixed), lab/stopped and lab/cut (unpaced): 10 streams.csv rows each
    assert totals["streams_live"] == 30
    assert totals["disk_bytes"] == sum(p.stat().st_size for p in pristine.rglob("*") if p.is_file())
    assert totals["oldest"] == "live/l1"
    code, out, _ = _run(capsys, pristine, "stats")
    assert "streams simulated" in out and "100 (" in out


def test_archive_moves_old_runs(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sim = root / "sims" / "tiny" / "run.json"
    old = time.time() - 40 * DAY
    os.utime(sim, (old, old))  # no started_at: its date is run.json's mtime
    code, out, _ = _run(capsys, root, "archive", "--older-than", "30", "--dry-run")
    assert code == 0 and "would move live/l1" in out and "would move sims/tiny " in out
    assert "2 runs older than 30 days would move" in out and (root / "live" / "l1").is_dir()
    code, out, _ = _run(capsys, root, "archive", "--older-than", "30")
    assert code == 0 and "moved live/l1" in out
    assert (root / "archive" / "live" / "l1" / "run.json").is_file() and not (root / "live" / "l1").exists()
    assert (root / "archive" / "sims" / "tiny" / "fixed" / "streams.csv").is_file()
    _, out, _ = _run(capsys, root, "list", "--json")
    assert "live/l1" not in {r["name"] for r in json.loads(out)}
    _, out, _ = _run(capsys, root, "list", "--json", "--all")
    assert "archive/live/l1" in {r["name"] for r in json.loads(out)}
    code, out, _ = _run(capsys, root, "archive", "--older-than", "30")
    assert code == 0 and "0 runs" in out  # archived runs are not archived again
    other = root.parent / "elsewhere"
    (other / "sweeps" / "b").mkdir(parents=True)
    code, _, err = _run(capsys, root, "archive", "--older-than", "5", "--to", other)
    assert code == 2 and f"error: --to {other}: {other / 'sweeps' / 'b'} exists already" in err
    assert (root / "sweeps" / "a").is_dir()  # nothing moved
    (other / "sweeps" / "b").rmdir()
    code, out, _ = _run(capsys, root, "archive", "--older-than", "5", "--to", other)
    assert code == 0 and "5 runs older than 5 days moved" in out  # the two labs, the sweeps, other/future
    assert (other / "sweeps" / "a" / "sweep.json").is_file() and (root / "sims" / "tiny-s12").is_dir()


def test_export_writes_a_relative_tarball(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "tiny.tar.gz"
    code, out, _ = _run(capsys, root, "export", "sims/tiny", out_file)
    assert code == 0 and f"exported sims/tiny (complete) to {out_file}" in out
    with tarfile.open(out_file) as tar:
        names = tar.getnames()
        assert all(n == "tiny" or n.startswith("tiny/") for n in names)
        assert "tiny/run.json" in names and "tiny/fixed/tokens.csv" in names
        assert tar.extractfile("tiny/summary.json").read() == (root / "sims" / "tiny" / "summary.json").read_bytes()  # type: ignore[union-attr]
    code, _, err = _run(capsys, root, "export", "sims/tiny", out_file)
    assert code == 2 and err == f"error: OUT.tar.gz {out_file}: exists already (give --force to overwrite it)\n"
    code, _, _ = _run(capsys, root, "export", "sweeps/a", out_file, "--force")
    with tarfile.open(out_file) as tar:
        assert "a/cells/kv=1000/seed-3/summary.json" in tar.getnames()
    code, _, err = _run(capsys, root, "export", "sims/tiny", root / "sims" / "tiny" / "x.tar.gz")
    assert code == 2 and "is inside the run being exported" in err
    code, _, err = _run(capsys, root, "export", "sims/tiny", tmp_path / "no" / "x.tar.gz")
    assert code == 2 and "is not a folder" in err


def test_bad_input_names_the_flag_or_file(pristine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["runs", tmp_path / "nope", "list"], f"error: ROOT {tmp_path / 'nope'}: no such folder"),
        (["runs", pristine / "sims" / "tiny" / "run.json", "list"], "is a file, not a folder"),
        (["runs", pristine, "show", "tny"], "error: NAME tny: no run of that name under ROOT "),
        (["runs", pristine, "show", "broken"], "other/broken/run.json:1: invalid JSON"),
        (["runs", pristine, "compare", "sweeps/a", "sims/tiny"],
         "error: B sims/tiny: no controller (and cell) in common"),
        (["runs", pristine, "archive", "--older-than", "-1"], "error: --older-than: must be a non-negative number"),
        (["runs", pristine, "archive", "--older-than", "1", "--to", pristine / "sims" / "tiny" / "x"],
         "is inside the run"),
    ]
    for argv, expected in cases:
        code = main([str(a) for a in argv])
        _, err = capsys.readouterr()
        assert code == 2, argv
        assert expected in err and "Traceback" not in err, (argv, err)
    assert main(["runs", str(pristine), "show", "tny"]) == 2
    assert "(did you mean sims/tiny?)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: no action
        main(["runs", str(pristine)])
    assert exc.value.code == 2
