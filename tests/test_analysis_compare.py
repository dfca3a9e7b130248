"""``python -m analysis compare SIM_DIR LIVE_DIR``: simulator fidelity from two results folders.

The folders are built by hand so every metric can be worked out on paper: each stream arrives at
0, its tokens reach the client ``gap`` seconds apart from ``ttft`` on and are displayed at the
(slower) reading pace, so nothing stalls; ``wasted`` more tokens are generated and never sent.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from analysis.compare import (
    FIDELITY_FILE,
    ape_entry,
    binned_mean,
    compare_runs,
    compare_summaries,
    ranking_agreement,
)
from analysis.results import open_recorder, write_json

REPO = Path(__file__).resolve().parents[1]
READING_TPS = 10.0  # displayed 0.1 s apart
N_TOKENS = 5


def _stream(ttft: float, gap: float, wasted: int = 0) -> dict[str, float]:
    return {"ttft": ttft, "gap": gap, "wasted": wasted}


def write_folder(
    root: Path, mode: str, controllers: dict[str, list[dict[str, float]]], *, telemetry: bool = True
) -> Path:
    """A results folder: per controller, streams given as (ttft, gap between arrivals, wasted)."""
    write_json(
        root / "run.json",
        {
            "mode": mode,
            "scenario": {"name": "hand-made", "control_interval_s": 0.5},
            "controllers": list(controllers),
            "slo_qoe": 0.9,
        },
    )
    for name, specs in controllers.items():
        folder = root / name
        with (
            open_recorder(folder, "streams.csv") as streams,
            open_recorder(folder, "tokens.csv") as tokens,
            open_recorder(folder, "telemetry.csv") as tel,
        ):
            for k, spec in enumerate(specs):
                sid = f"s{k}"
                ttft, gap, wasted = spec["ttft"], spec["gap"], int(spec["wasted"])
                end = ttft + (N_TOKENS - 1) / READING_TPS
                streams.write(
                    [
                        sid,
                        "wan",
                        0.0,
                        10,
                        N_TOKENS,
                        ttft,
                        0.0,
                        1.0,
                        "completed",
                        wasted,
                        READING_TPS,
                        30.0,
                        1.0,
                        end,
                        N_TOKENS + wasted,
                        N_TOKENS,
                    ]
                )
                for i in range(N_TOKENS):
                    t = ttft + i * gap
                    tokens.write([sid, i, t - 0.01, t - 0.005, t + 0.001, t, ttft + i / READING_TPS])
                for i in range(N_TOKENS, N_TOKENS + wasted):
                    tokens.write([sid, i, ttft + i * gap, None, None, None, None])
                for j in range(4):  # srtt 40 ms + 10 ms per stream, rate 20 tok/s, every 0.5 s
                    tel.write([0.5 * j, sid, 40.0 + 10 * k, 30.0, 60.0, 0, 10, 0, 0, 0, 0, READING_TPS, 0.0, 20.0 + k])
        if not telemetry:
            (folder / "telemetry.csv").unlink()
    return root


# sim: "slow" shows its first tokens at 1.5 s and 2.5 s, "fast" at 1 s and 2 s (better QoE).
SIM = {
    "slow": [_stream(1.5, 0.01, wasted=2), _stream(2.5, 0.01, wasted=2)],
    "fast": [_stream(1.0, 0.02), _stream(2.0, 0.02)],
}
# lab: "slow" is 20 % slower to the first token and its gaps are 10 % longer; "fast" matches.
LAB = {
    "slow": [_stream(1.8, 0.011, wasted=3), _stream(3.0, 0.011, wasted=3)],
    "fast": [_stream(1.0, 0.02), _stream(2.0, 0.02)],
}


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    return write_folder(tmp_path / "sim", "sim", SIM), write_folder(tmp_path / "lab", "lab", LAB)


# --------------------------------------------------------------------------- the arithmetic
def test_ape_entry() -> None:
    assert ape_entry(2.0, 2.5) == {
        "sim": 2.0,
        "lab": 2.5,
        "abs_error": 0.5,
        "ape": 0.25,
        "sim_zero": False,
        "missing": False,
    }
    assert ape_entry(-4.0, -3.0)["ape"] == 0.25  # |sim| in the denominator
    # sim 0: no division; equal -> 0 error, different -> absolute error only, flagged
    assert ape_entry(0.0, 0.0) == {
        "sim": 0.0,
        "lab": 0.0,
        "abs_error": 0.0,
        "ape": 0.0,
        "sim_zero": True,
        "missing": False,
    }
    assert ape_entry(0, 0.03) == {
        "sim": 0.0,
        "lab": 0.03,
        "abs_error": 0.03,
        "ape": None,
        "sim_zero": True,
        "missing": False,
    }
    assert ape_entry(None, 1.0)["missing"] is True and ape_entry(1.0, None)["ape"] is None
    assert ape_entry(float("nan"), 1.0)["missing"] is True


def test_compare_summaries_medians_and_flags() -> None:
    sim = {
        "controllers": {
            "a": {"ttft_p50_s": 1.0, "stall_ratio": 0.0, "qoe_mean": 0.9},
            "b": {"ttft_p50_s": 2.0, "stall_ratio": 0.0, "qoe_mean": 0.8},
            "c": {"ttft_p50_s": 4.0, "stall_ratio": 0.5, "qoe_mean": 0.7},
            "only_sim": {"ttft_p50_s": 1.0},
        }
    }
    lab = {
        "controllers": {
            "a": {"ttft_p50_s": 1.5, "stall_ratio": 0.0, "qoe_mean": 0.6},
            "b": {"ttft_p50_s": 2.0, "stall_ratio": 0.25, "qoe_mean": 0.85},
            "c": {"ttft_p50_s": 3.0, "stall_ratio": 0.5, "qoe_mean": 0.75},
            "only_lab": {},
        }
    }
    r = compare_summaries(sim, lab, metrics=("ttft_p50_s", "stall_ratio", "itl_p50_s"))
    assert r["controllers"] == ["a", "b", "c"]
    assert r["only_sim"] == ["only_sim"] and r["only_lab"] == ["only_lab"]
    assert [r["per_controller"][n]["ttft_p50_s"]["ape"] for n in "abc"] == [0.5, 0.0, 0.25]
    assert r["per_metric"]["ttft_p50_s"] == {
        "median_ape": 0.25,
        "n": 3,
        "n_sim_zero": 0,
        "n_missing": 0,
        "within_target": False,
    }
    # stall: a is 0 = 0 (ape 0), b is sim 0 -> lab 0.25 (flagged, not in the median), c exact
    assert r["per_controller"]["b"]["stall_ratio"]["sim_zero"] is True
    assert r["per_controller"]["b"]["stall_ratio"]["abs_error"] == 0.25
    assert r["per_metric"]["stall_ratio"] == {
        "median_ape": 0.0,
        "n": 2,
        "n_sim_zero": 1,
        "n_missing": 0,
        "within_target": True,
    }
    assert r["per_metric"]["itl_p50_s"] == {
        "median_ape": None,
        "n": 0,
        "n_sim_zero": 0,
        "n_missing": 3,
        "within_target": None,
    }
    rank = r["ranking"]
    assert rank["sim_ranking"] == ["a", "b", "c"] and rank["lab_ranking"] == ["b", "c", "a"]
    assert rank["same_best"] is False and rank["sim_best"] == "a" and rank["lab_best"] == "b"
    assert rank["kendall_tau"] == pytest.approx(-1 / 3)


def test_ranking_agreement_same_order_and_single_controller() -> None:
    ctrls = {"x": {"qoe_mean": 0.5}, "y": {"qoe_mean": 0.9}}
    same = ranking_agreement(ctrls, {"x": {"qoe_mean": 0.4}, "y": {"qoe_mean": 0.95}})
    assert same["same_best"] is True and same["kendall_tau"] == pytest.approx(1.0)
    one = ranking_agreement({"x": {"qoe_mean": 0.5}}, {"x": {"qoe_mean": 0.1}})
    assert one["same_best"] is True and one["kendall_tau"] is None


def test_binned_mean() -> None:
    t = [0.0, 0.05, 0.1, 0.3, 0.3, 0.31]
    v = [1.0, 3.0, float("nan"), 2.0, 4.0, 6.0]
    x, y = binned_mean(t, v, 0.1)  # 0.3 / 0.1 = 2.9999... still bin 3
    assert x.tolist() == pytest.approx([0.0, 0.3]) and y.tolist() == [2.0, 4.0]
    x, y = binned_mean([0.0], [float("nan")], 0.1)
    assert x.size == 0 and y.size == 0


# --------------------------------------------------------------------------- two folders
def test_compare_runs_numbers(folders: tuple[Path, Path]) -> None:
    sim_dir, lab_dir = folders
    result, path = compare_runs(sim_dir, lab_dir)
    assert path == lab_dir / FIDELITY_FILE and path.is_file()
    assert not (sim_dir / "summary.json").exists() and not (lab_dir / "summary.json").exists()
    assert result["controllers"] == ["slow", "fast"]
    slow, fast = result["per_controller"]["slow"], result["per_controller"]["fast"]
    # TTFT p50 = mean of the two streams, p99 = t1 + 0.99 (t2 - t1): both scale by 1.2
    assert slow["ttft_p50_s"]["sim"] == 2.0 and slow["ttft_p50_s"]["lab"] == 2.4
    assert slow["ttft_p50_s"]["ape"] == pytest.approx(0.2)
    assert slow["ttft_p99_s"]["sim"] == pytest.approx(1.5 + 0.99) and slow["ttft_p99_s"]["ape"] == pytest.approx(0.2)
    assert slow["itl_p50_s"]["ape"] == pytest.approx(0.1) and slow["itl_p99_s"]["ape"] == pytest.approx(0.1)
    # waste: 4 of 14 generated in sim, 6 of 16 in the lab
    assert slow["waste_frac"]["sim"] == pytest.approx(4 / 14) and slow["waste_frac"]["lab"] == pytest.approx(6 / 16)
    assert slow["waste_frac"]["ape"] == pytest.approx((6 / 16 - 4 / 14) / (4 / 14), rel=1e-5)
    # effective tps: 10 tokens displayed over the last end (ttft2 + 0.4 s)
    assert slow["effective_tps"]["sim"] == pytest.approx(10 / 2.9, rel=1e-5)  # 6 significant digits
    assert slow["effective_tps"]["ape"] == pytest.approx(abs(10 / 3.4 - 10 / 2.9) / (10 / 2.9), rel=1e-5)
    # nothing stalls anywhere, and "fast" has no waste: 0 = 0, flagged, APE 0
    for m in ("stall_ratio",):
        assert (
            slow[m]
            == fast[m]
            == {"sim": 0.0, "lab": 0.0, "abs_error": 0.0, "ape": 0.0, "sim_zero": True, "missing": False}
        )
    assert fast["waste_frac"]["sim_zero"] is True and fast["waste_frac"]["ape"] == 0.0
    for m in result["metrics"]:
        if m not in ("stall_ratio", "waste_frac"):
            assert fast[m]["ape"] == 0.0, m
    pm = result["per_metric"]
    assert pm["ttft_p50_s"]["median_ape"] == pytest.approx(0.1)  # median of 0.2 and 0
    assert pm["itl_p99_s"]["median_ape"] == pytest.approx(0.05)
    assert pm["stall_ratio"]["median_ape"] == 0.0 and pm["stall_ratio"]["n"] == 2
    assert pm["waste_frac"]["median_ape"] == pytest.approx(((6 / 16 - 4 / 14) / (4 / 14)) / 2, rel=1e-5)
    r = result["ranking"]
    assert r["sim_ranking"] == ["fast", "slow"] == r["lab_ranking"]
    assert r["same_best"] is True and r["kendall_tau"] == pytest.approx(1.0)
    assert result["plots"] == {"fast": "plots/fidelity_fast.png", "slow": "plots/fidelity_slow.png"}
    assert (lab_dir / "plots" / "fidelity_slow.png").stat().st_size > 1000


def test_fidelity_json_is_deterministic(folders: tuple[Path, Path], tmp_path: Path) -> None:
    sim_dir, lab_dir = folders
    _, first = compare_runs(sim_dir, lab_dir, out_dir=tmp_path / "one")
    _, second = compare_runs(sim_dir, lab_dir, out_dir=tmp_path / "two")
    _, again = compare_runs(sim_dir, lab_dir, out_dir=tmp_path / "one")
    assert first.read_bytes() == second.read_bytes() == again.read_bytes()
    assert not (lab_dir / FIDELITY_FILE).exists()


def test_controllers_in_one_folder_only(tmp_path: Path) -> None:
    sim = write_folder(tmp_path / "sim", "sim", {**SIM, "extra": SIM["fast"]})
    lab = write_folder(tmp_path / "lab", "lab", LAB)
    result, _ = compare_runs(sim, lab, plots=False)
    assert result["controllers"] == ["slow", "fast"] and result["only_sim"] == ["extra"]
    assert result["plots"] == {}


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "analysis", "compare", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_compare(folders: tuple[Path, Path], tmp_path: Path) -> None:
    sim_dir, lab_dir = folders
    proc = _cli(sim_dir, lab_dir)
    assert proc.returncode == 0, proc.stderr
    assert (lab_dir / FIDELITY_FILE).is_file()
    assert (lab_dir / "plots" / "fidelity_slow.png").is_file() and (lab_dir / "plots" / "fidelity_fast.png").is_file()
    assert "median APE" in proc.stdout and "same best controller: yes" in proc.stdout
    out = tmp_path / "elsewhere"
    proc = _cli(sim_dir, lab_dir, "--out", out, "--no-plots")
    assert proc.returncode == 0, proc.stderr
    assert (out / FIDELITY_FILE).read_bytes() != b"" and not (out / "plots").exists()


@pytest.mark.parametrize(
    ("breakage", "named"),
    [
        ("no_sim_dir", "nowhere"),
        ("no_run_json", "run.json"),
        ("no_tokens", "tokens.csv"),
        ("no_telemetry", "telemetry.csv"),
    ],
)
def test_cli_bad_input_exits_2(tmp_path: Path, breakage: str, named: str) -> None:
    sim = write_folder(tmp_path / "sim", "sim", SIM, telemetry=breakage != "no_telemetry")
    lab = write_folder(tmp_path / "lab", "lab", LAB)
    if breakage == "no_sim_dir":
        sim = tmp_path / "nowhere"
    elif breakage == "no_run_json":
        (lab / "run.json").unlink()
    elif breakage == "no_tokens":
        (lab / "fast" / "tokens.csv").unlink()
    proc = _cli(sim, lab)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in proc.stderr
    assert not (lab / FIDELITY_FILE).exists()


def test_cli_no_common_controller_exits_2(tmp_path: Path) -> None:
    sim = write_folder(tmp_path / "sim", "sim", {"a": SIM["fast"]})
    lab = write_folder(tmp_path / "lab", "lab", {"b": LAB["fast"]})
    proc = _cli(sim, lab)
    assert proc.returncode == 2 and "no controller in common" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_ranking_agreement_within_ties() -> None:
    """Two controllers alike in QoE and waste on both sides, first in a different order: not the same
    best, but each side's best is in the other's tied set; a real difference in waste is no tie."""
    sim = {"a": {"qoe_mean": 0.996, "waste_frac": 0.0}, "b": {"qoe_mean": 0.995, "waste_frac": 0.0},
           "c": {"qoe_mean": 0.95, "waste_frac": 0.0}}
    lab = {"a": {"qoe_mean": 0.994, "waste_frac": 0.0}, "b": {"qoe_mean": 0.997, "waste_frac": 0.0},
           "c": {"qoe_mean": 0.96, "waste_frac": 0.0}}
    r = ranking_agreement(sim, lab)
    assert r["same_best"] is False and r["best_within_ties"] is True
    assert r["sim_tied_best"] == ["a", "b"] and r["lab_tied_best"] == ["b", "a"]
    lab_wasteful = {**lab, "b": {"qoe_mean": 0.997, "waste_frac": 0.2}}
    r2 = ranking_agreement(sim, lab_wasteful)
    assert r2["lab_best"] == "a" and r2["same_best"] is True and r2["lab_tied_best"] == ["a"]
