"""`python -m live lab`: a small scenario on a real kernel network, two controllers in turn, recorded
and summarized — and nothing of ours left behind afterwards. Here with the path as qdiscs on a veth
pair (``--link qdisc``); the default user-space link is exercised by test_live_lab_fidelity.py."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

PY = sys.executable

SCENARIO = """\
name: lab-small
seed: 7
control_interval_s: 0.1
max_duration_s: 30
server: {d0_s: 0.02, d1_s: 2.0e-5, batch_tokens: 2048, kv_tokens: 200000, max_running: 64}
workload:
  arrivals: {kind: poisson, rate_per_s: 4.0}
  streams: 10
  prompt_tokens: {dist: constant, value: 100}
  output_tokens: {dist: constant, value: 60}
  bytes_per_token: 200
clients:
  reading_tps: {dist: constant, value: 20}
  patience_s: {dist: constant, value: 10}
paths:
  lab: {rate_mbps: 5, rtt_ms: 1}
faults:
  - {kind: loss, p: 0.03, at_s: 0.5, duration_s: 4}
controllers:
  unpaced: {}
  buffer: {}
  oracle: {}
slo: {qoe: 0.9}
"""


def _sh(*argv: str) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=False).stdout


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.live
def test_lab_runs_two_controllers_in_namespaces_and_cleans_up(live, tmp_path):  # type: ignore[no-untyped-def]
    scenario = tmp_path / "lab-small.yaml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "lab"
    nft_before = _sh("nft", "list", "tables")
    t0 = time.monotonic()
    proc = subprocess.run([PY, "-m", "live", "lab", str(scenario), "--out", str(out), "--streams", "10",
                           "--time-limit", "15", "--link", "qdisc"],
                          capture_output=True, text=True, timeout=90, check=False)
    wall_s = time.monotonic() - t0
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert wall_s <= 60, f"lab run took {wall_s:.1f} s"
    assert "skipping oracle" in proc.stdout  # sim-only, said so
    assert "rtt_ms" in proc.stdout  # what cannot be reproduced is said up front

    run_info = json.loads((out / "run.json").read_text())
    assert run_info["mode"] == "lab"
    assert run_info["controllers"] == ["unpaced", "buffer"]
    lab = run_info["lab"]
    assert [r["controller"] for r in lab["runs"]] == ["unpaced", "buffer"]
    assert sum(r["dropper_dropped"] for r in lab["runs"]) > 0, "the loss fault dropped nothing"

    for ctrl in ("unpaced", "buffer"):
        d = out / ctrl
        for name in ("tokens.csv", "streams.csv", "telemetry.csv"):
            assert (d / name).is_file(), f"{ctrl}/{name} missing"
        assert len(_rows(d / "tokens.csv")) > 0
        assert len(_rows(d / "streams.csv")) >= 8
        srtt = [float(r["srtt_ms"]) for r in _rows(d / "telemetry.csv") if r["srtt_ms"]]
        assert srtt and all(s > 0 for s in srtt), f"{ctrl}: no kernel RTT reached the controller"

    summary = json.loads((out / "summary.json").read_text())["controllers"]
    assert set(summary) == {"unpaced", "buffer"}
    for ctrl, m in summary.items():
        assert m["streams"] >= 8, (ctrl, m)
        assert m["tokens_displayed"] > 0, (ctrl, m)

    # nothing of ours is left: namespaces, qdiscs, nft tables, state files
    netns = _sh("ip", "netns", "list")
    for ns in lab["netns"]:
        assert ns not in netns, f"namespace {ns} left behind"
    assert lab["iface"] not in _sh("ip", "link", "show")
    assert "7a1e:" not in _sh("tc", "qdisc", "show")
    nft_after = _sh("nft", "list", "tables")
    assert ("tokenpace" in nft_after) <= ("tokenpace" in nft_before), "nft table tokenpace left behind"
    for ns in lab["netns"]:
        assert not list(Path("/run/tokenpace").glob(f"*{ns}*")), f"fault state file of {ns} left behind"


@pytest.mark.live
def test_lab_rejects_bad_input(live, tmp_path):  # type: ignore[no-untyped-def]
    scenario = tmp_path / "s.yaml"
    scenario.write_text(SCENARIO)
    for extra in (["--controllers", "nope"], ["--path", "elsewhere"], ["--controllers", "oracle"]):
        proc = subprocess.run([PY, "-m", "live", "lab", str(scenario), "--out", str(tmp_path / "o"), *extra],
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 2, (extra, proc.stdout, proc.stderr)
        assert "error:" in proc.stderr


def test_trace_path_becomes_a_100ms_rate_schedule_and_unsupported_parts_are_named():
    from live.lab.lab import TRACE_BIN_S, plan_path
    from scenarios import load_scenario

    loaded = load_scenario("cellular-trace")
    base, notes = plan_path(loaded, "lte", 20.0, "fallback")
    assert base.trace is None and base.rate_mbps is None and base.rate_schedule
    ats = [p.at_s for p in base.rate_schedule]
    assert ats[0] == 0 and ats == sorted(ats) and ats[-1] <= 20.0 + TRACE_BIN_S
    assert len({p.rate_mbps for p in base.rate_schedule}) > 5  # the rate really varies
    assert all(p.rate_mbps > 0 for p in base.rate_schedule)
    assert base.queue_bytes == loaded.scenario.paths["lte"].queue_bytes
    text = " ".join(notes)
    assert "rtt_ms=60" in text and "trace" in text
    _, netem_notes = plan_path(loaded, "lte", 20.0, "netem")
    assert not any("rtt_ms" in n for n in netem_notes)


TWO_PATHS = """\
name: lab-two-paths
seed: 11
control_interval_s: 0.1
max_duration_s: 30
server: {d0_s: 0.02, d1_s: 2.0e-5, batch_tokens: 2048, kv_tokens: 200000, max_running: 64}
workload:
  arrivals: {kind: poisson, rate_per_s: 3.0}
  streams: 16
  prompt_tokens: {dist: constant, value: 100}
  output_tokens: {dist: constant, value: 40}
  bytes_per_token: 256
  paths: {far: 0.5, near: 0.5}
clients:
  reading_tps: {dist: constant, value: 20}
  patience_s: {dist: constant, value: 10}
paths:
  far:
    rate_mbps: 4
    rtt_ms: 120
    cross_traffic: {flows: 1, start_s: 1.0, stop_s: 4.0, cc: reno}
  near: {rate_mbps: 20, rtt_ms: 10}
controllers:
  unpaced: {}
"""


@pytest.mark.live
def test_lab_plays_every_path_and_its_cross_traffic(live, tmp_path):  # type: ignore[no-untyped-def]
    """Two paths on the user-space link: each stream crosses the path the scenario drew for it (its
    first token takes 1.5 of that path's RTTs, so far streams start >150 ms later than near ones), and
    the far path's bulk flow runs from 1 s to 4 s with the scenario's congestion control."""
    scenario = tmp_path / "two.yaml"
    scenario.write_text(TWO_PATHS)
    out = tmp_path / "lab"
    proc = subprocess.run([PY, "-m", "live", "lab", str(scenario), "--out", str(out), "--time-limit", "15"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    lab = json.loads((out / "run.json").read_text())["lab"]
    assert lab["paths"] == ["far", "near"] and set(lab["client_addrs"]) == {"far", "near"}
    assert lab["cc"] == "cubic"  # the paths' (default) cc, not the machine's default
    assert not any("only path" in n or "cross_traffic" in n for n in lab["notes"]), lab["notes"]
    run = lab["runs"][0]
    per_path = run["link"]["down"]["paths"]
    assert all(p["passed_pkts"] > 50 for p in per_path), per_path
    sender = run["cross_traffic"]["far"]["sender"]
    assert sender["cc"] == "reno" and len(sender["bytes_acked"]) == 1 and sender["bytes_acked"][0] > 200_000
    assert 0.9 <= sender["started_at_s"] <= 1.3 and 3.9 <= sender["stopped_at_s"] <= 4.5
    ttft: dict[str, list[float]] = {"far": [], "near": []}
    for row in _rows(out / "unpaced" / "streams.csv"):
        if row["ttft_s"]:
            ttft[row["path"]].append(float(row["ttft_s"]))
    med = {k: sorted(v)[len(v) // 2] for k, v in ttft.items() if v}
    print(f"\ntwo paths: median ttft {med}; cross flow acked {sender['bytes_acked'][0] / 1e6:.2f} MB")
    assert len(ttft["far"]) >= 4 and len(ttft["near"]) >= 4
    assert med["far"] >= med["near"] + 0.15
