"""Capacity search (issue #12): the SLO grammar, rate scaling, the bisection, and one real search.

The end-to-end search runs tests/scenarios/capacity-tiny.yaml (24 requests on a GPU-bound node, a
fraction of a second per probe). Its figures were measured with `python -m sim` on copies of the
scenario with rate_per_s set by hand (4 -> QoE 1.0; 8 -> QoE 0.952031, P99 TTFT 0.546683 s for
unpaced), so a probe is checked against an ordinary run, not against itself.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from analysis.cli import main as analysis_main
from scenarios import load_scenario
from scenarios.cli_errors import BadInput
from sim.capacity_search import Search, Slo, bisect, parse_slos, rate_fields, scaled_scenario, slos_hold
from sim.cli import main as sim_main
from sim.model.workload import draw_requests

TINY = Path(__file__).parent / "scenarios" / "capacity-tiny.yaml"


# --------------------------------------------------------------------------- the SLO
def test_slo_parses_each_operator_and_spacing() -> None:
    assert parse_slos(["qoe_mean>=0.9", " ttft_p99_s < 2 ", "effective_tps>100", "waste_frac<=0.05"]) == [
        Slo("qoe_mean", ">=", 0.9), Slo("ttft_p99_s", "<", 2.0), Slo("effective_tps", ">", 100.0),
        Slo("waste_frac", "<=", 0.05)]


def test_slo_holds_on_the_mean_over_seeds_and_fails_without_a_value() -> None:
    slos = parse_slos(["qoe_mean>=0.9", "ttft_p99_s<1"])
    ok, means = slos_hold(slos, [{"qoe_mean": 0.95, "ttft_p99_s": 0.5}, {"qoe_mean": 0.85, "ttft_p99_s": 1.2}])
    assert means == {"qoe_mean": pytest.approx(0.9), "ttft_p99_s": pytest.approx(0.85)}
    assert ok  # 0.9 >= 0.9 and 0.85 < 1, though one seed fails each alone
    assert not slos_hold(slos, [{"qoe_mean": 0.95, "ttft_p99_s": None}])[0]  # no TTFT: no stream showed a token
    assert not Slo("qoe_mean", ">", 0.9).holds(0.9)


def test_slo_errors_name_the_flag_each_problem_at_once() -> None:
    with pytest.raises(BadInput) as err:
        parse_slos(["qoe>=0.9", "qoe_mean=0.9", "qoe_mean>=nan", "qoe_mean>=0.9"])
    problems = err.value.problems
    assert [w for w, _ in problems] == ["--slo"] * 3
    assert "unknown metric 'qoe'" in problems[0][1]
    assert "METRIC OP NUMBER" in problems[1][1]
    assert "finite number" in problems[2][1]
    with pytest.raises(BadInput, match="at least one objective"):
        parse_slos([])


def test_cli_bad_flags_exit_2_naming_every_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = sim_main(["capacity", str(TINY), "--slo", "qoe_mean>>0.9", "--seeds", "0", "--tol", "1.5",
                     "--schedulers", "nope", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2
    for flag in ("--slo", "--seeds", "--tol", "--schedulers"):
        assert f"error: {flag}: " in err
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- scaling the rate
def test_rate_fields_are_found_in_any_kind_at_any_depth() -> None:
    phases = {"kind": "phases", "phases": [{"kind": "poisson", "rate_per_s": 2, "duration_s": 10},
                                           {"kind": "bursty", "rate_on_per_s": 8.0, "on_s": 1, "off_s": 3}]}
    assert rate_fields(phases) == [("workload.arrivals.phases.0.rate_per_s", 2.0),
                                   ("workload.arrivals.phases.1.rate_on_per_s", 8.0)]
    with pytest.raises(ValueError, match=r"^workload\.arrivals\.phases\.0\.kind: csv arrivals"):
        rate_fields({"kind": "phases", "phases": [{"kind": "csv", "file": "r.csv"}]})


def test_scaling_multiplies_every_rate_and_keeps_common_random_numbers(tmp_path: Path) -> None:
    loaded = load_scenario(TINY)
    scaled = scaled_scenario(loaded, 2.5)
    assert scaled.scenario.workload.arrivals.rate_per_s == 10.0
    assert loaded.scenario.workload.arrivals.rate_per_s == 4.0  # the original is untouched
    assert scaled.scenario.model_dump(exclude={"workload"}) == loaded.scenario.model_dump(exclude={"workload"})
    # the same seed draws the same requests, arriving 2.5 times as fast
    base, fast = draw_requests(loaded.scenario, loaded.base_dir), draw_requests(scaled.scenario, scaled.base_dir)
    np.testing.assert_allclose([r.arrival_s for r in fast], [r.arrival_s / 2.5 for r in base], rtol=1e-12)
    assert [(r.prompt_tokens, r.output_tokens, r.reading_tps) for r in fast] == [
        (r.prompt_tokens, r.output_tokens, r.reading_tps) for r in base]

    bursty = tmp_path / "bursty.yaml"
    bursty.write_text(TINY.read_text().replace("{kind: poisson, rate_per_s: 4.0}",
                                               "{kind: bursty, rate_on_per_s: 3, on_s: 2, off_s: 1}"))
    arrivals = scaled_scenario(load_scenario(bursty), 0.5, "fcfs").scenario.workload.arrivals
    assert (arrivals.rate_on_per_s, arrivals.on_s, arrivals.off_s) == (1.5, 2.0, 1.0)


def test_csv_arrivals_cannot_be_scaled_exit_2_naming_the_key(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "req.csv").write_text("arrival_time,prefill_length,decode_length\n0.1,20,30\n0.5,20,30\n")
    scn = tmp_path / "csv.yaml"
    scn.write_text(TINY.read_text().replace("{kind: poisson, rate_per_s: 4.0}", "{kind: csv, file: req.csv}")
                   .replace("streams: 24", "streams: 2"))
    with pytest.raises(BadInput) as err:
        scaled_scenario(load_scenario(scn), 2.0)
    assert err.value.problems[0][0] == f"{scn}: workload.arrivals.kind"
    assert sim_main(["capacity", str(scn), "--slo", "qoe_mean>=0.9", "--out", str(tmp_path / "o")]) == 2
    assert f"error: {scn}: workload.arrivals.kind: csv arrivals" in capsys.readouterr().err


# --------------------------------------------------------------------------- the bisection
def test_bisection_doubles_then_bisects_to_the_tolerance() -> None:
    # holds up to 3.3: 1, 2 hold, 4 fails -> [2, 4]; 3 holds; 3.5 fails; 3.25 holds (0.25/3.25 = 0.077 > 0.05);
    # 3.375 fails -> [3.25, 3.375], 0.125 <= 0.05 x 3.25 = 0.1625: done
    search = bisect(lambda k: k <= 3.3, tol=0.05)
    assert [k for k, _ in search.probes] == [1, 2, 4, 3, 3.5, 3.25, 3.375]
    assert (search.lo, search.hi, search.capacity, search.outcome) == (3.25, 3.375, 3.25, "found")


def test_bisection_halves_when_the_slo_fails_at_the_start() -> None:
    # fails at 1 and 0.5, holds at 0.25 -> [0.25, 0.5]; then midpoints until (hi - lo) <= 0.05 lo
    search = bisect(lambda k: k <= 0.3, tol=0.05)
    assert [k for k, _ in search.probes] == [1, 0.5, 0.25, 0.375, 0.3125, 0.28125, 0.296875, 0.3046875]
    assert (search.lo, search.hi) == (0.296875, 0.3046875)
    assert search.hi - search.lo <= 0.05 * search.lo < 0.3125 - 0.296875  # the bracket before was too wide


def test_bisection_gives_up_at_the_ends() -> None:
    always = bisect(lambda k: True, tol=0.05)
    assert [k for k, _ in always.probes] == [2.0**i for i in range(11)]
    assert (always.outcome, always.capacity, always.hi) == ("unbounded", 1024.0, None)
    never = bisect(lambda k: False, tol=0.05)
    assert [k for k, _ in never.probes] == [2.0**-i for i in range(11)]
    assert (never.outcome, never.capacity, never.lo) == ("none", 0.0, None)
    assert Search(0.05).outcome == "searching"


# --------------------------------------------------------------------------- one real search
def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_end_to_end_search_files_and_slo_at_the_capacity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cap"
    argv = ["capacity", str(TINY), "--slo", "qoe_mean>=0.9", "--seeds", "1", "--tol", "0.1", "--jobs", "2",
            "--out", str(out)]
    assert sim_main(argv) == 0
    printed = capsys.readouterr().out
    assert "fcfs" in printed and "2.375" in printed

    run = json.loads((out / "run.json").read_text())
    assert (run["mode"], run["status"], run["seeds"], run["slo"]) == ("capacity", "complete", [5], ["qoe_mean>=0.9"])
    info = json.loads((out / "capacity.json").read_text())
    rows = _rows(out / "capacity.csv")
    assert list(rows[0])[:13] == ["scheduler", "controller", "seed", "rate_factor", "rate_per_s", "qoe_mean",
                                  "ttft_p99_s", "effective_tps", "slo_attainment", "streams", "completed",
                                  "abandoned", "gpu_busy_frac"]
    by = {(r["scheduler"], r["controller"], float(r["rate_factor"])): r for r in rows}
    assert len(by) == len(rows)  # one row per probe and seed

    # a probe is an ordinary run of the scaled scenario (measured with python -m sim at rate_per_s 4 and 8)
    assert float(by[("fcfs", "unpaced", 1.0)]["qoe_mean"]) == 1.0
    assert float(by[("fcfs", "unpaced", 2.0)]["qoe_mean"]) == 0.952031
    assert float(by[("fcfs", "unpaced", 2.0)]["ttft_p99_s"]) == 0.546683
    assert by[("fcfs", "unpaced", 2.0)]["rate_per_s"] == "8.0"

    pairs = {(p["scheduler"], p["controller"]): p for p in info["pairs"]}
    assert set(pairs) == {("fcfs", "unpaced"), ("fcfs", "fixed")}
    for (sched, ctrl), p in pairs.items():
        lo, hi = p["bracket"]
        assert p["outcome"] == "found" and p["capacity_factor"] == lo
        assert hi - lo <= 0.1 * lo
        assert float(by[(sched, ctrl, lo)]["qoe_mean"]) >= 0.9  # holds at the capacity...
        assert float(by[(sched, ctrl, hi)]["qoe_mean"]) < 0.9  # ...and fails just above it
        assert len(p["probes"]) == len([r for r in rows if (r["scheduler"], r["controller"]) == (sched, ctrl)])
    assert pairs[("fcfs", "unpaced")]["capacity_rate_per_s"] == 9.5  # k = 2.375 of 4 req/s
    assert pairs[("fcfs", "unpaced")]["ratio_to_fcfs_unpaced"] == 1.0

    # --resume simulates nothing more and finds the same capacities
    assert sim_main([*argv, "--resume", "--quiet"]) == 0
    assert json.loads((out / "run.json").read_text())["probes_reused"] == len(rows)
    assert json.loads((out / "capacity.json").read_text()) == info
    assert len(_rows(out / "capacity.csv")) == len(rows)

    # the figure and the table
    assert analysis_main(["capacity", str(out)]) == 0
    assert (out / "plots" / "capacity.png").stat().st_size > 10_000
    assert "9.5" in capsys.readouterr().out
    assert analysis_main(["capacity", str(tmp_path)]) == 2  # no capacity.csv there
