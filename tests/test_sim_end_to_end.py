"""The whole simulator on scenarios small enough to compute by hand, and Little's law on a long one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.results import load_controller_dir
from scenarios import parse_scenario
from scenarios.loader import LoadedScenario
from sim.model.workload import draw_requests
from sim.runner import make_plan, run_plan
from sim.world import run_controller


def _loaded(data: dict) -> LoadedScenario:
    return LoadedScenario(parse_scenario(data, "test"), Path("test.yaml").resolve(), data)


TINY = {
    "name": "tiny",
    "server": {"d0_s": 0.1, "d1_s": 0.01, "batch_tokens": 100, "kv_tokens": 1000, "max_running": 10},
    "workload": {"arrivals": {"kind": "periodic", "rate_per_s": 1.0}, "streams": 2, "prompt_tokens": 10,
                 "output_tokens": 5, "bytes_per_token": 200},
    "clients": {"reading_tps": 100, "patience_s": 100},
    "paths": {"p": {"rate_mbps": 100, "rtt_ms": 10}},
}


def test_tiny_scenario_matches_hand_computation(tmp_path):
    # A connects at 0; its request reaches the node after the handshake: SYN 5 ms, SYN-ACK (60 B on
    # the wire) 5 ms, ACK + request 5 ms. Prefill 10 tokens = 0.1 + 0.1 = 0.2 s; then 4 decodes of
    # 0.1 + 0.01 = 0.11 s. B connects at 1.0 to an idle node: the same, shifted by 1 s. 10 steps.
    loaded = _loaded(TINY)
    run_controller(loaded, draw_requests(loaded.scenario, loaded.base_dir), "unpaced", {}, tmp_path / "u", 1)
    run = load_controller_dir(tmp_path / "u")
    server = run.server
    assert len(server["time"]) == 10
    hs = 0.015 + 60 * 8 / 100e6
    gen_a = [hs + t for t in (0.2, 0.31, 0.42, 0.53, 0.64)]
    assert server["time"] == pytest.approx(gen_a + [1 + t for t in gen_a])
    assert server["batch_duration"] == pytest.approx([0.2, 0.11, 0.11, 0.11, 0.11] * 2)
    assert server["batch_tokens"] == pytest.approx([10, 1, 1, 1, 1] * 2)
    tokens = run.tokens
    assert list(tokens["stream_id"]).count("s0000") == 5 and list(tokens["stream_id"]).count("s0001") == 5
    assert tokens["t_generated"] == pytest.approx(gen_a + [1 + t for t in gen_a])
    # each token is one 200 B segment (+52 B of headers) on an idle 100 Mbit/s link, 5 ms one way
    # (the files keep times to 1 us, so compare at that resolution)
    wire_s = (200 + 52) * 8 / 100e6
    assert tokens["t_received"] - tokens["t_generated"] == pytest.approx(np.full(10, 0.005 + wire_s), abs=1.5e-6)
    assert tokens["t_acked"] - tokens["t_received"] == pytest.approx(np.full(10, 0.005), abs=1.5e-6)
    # the reader (100 tok/s) is slower than nothing here: each token is shown on arrival
    assert tokens["t_displayed"] == pytest.approx(tokens["t_received"])
    streams = run.streams
    assert list(streams["outcome"]) == ["completed", "completed"]
    assert streams["ttft_s"] == pytest.approx([hs + 0.2 + 0.005 + wire_s] * 2, abs=1.5e-6)


def test_same_seed_gives_byte_identical_summary(tmp_path):
    texts = []
    for rep in range(2):
        plan = make_plan("flash-outage", tmp_path / f"r{rep}", ["unpaced", "fixed"], None)
        run_plan(plan, jobs=1, show_progress=False)
        texts.append((tmp_path / f"r{rep}" / "summary.json").read_bytes())
    assert texts[0] == texts[1]
    other = make_plan("flash-outage", tmp_path / "other", ["unpaced"], 12345)
    run_plan(other, jobs=1, show_progress=False)
    a = json.loads(texts[0])["controllers"]["unpaced"]
    b = json.loads((tmp_path / "other" / "summary.json").read_text())["controllers"]["unpaced"]
    assert a != b  # and a different seed really is a different run


@pytest.mark.slow
def test_littles_law_for_the_serving_node(tmp_path):
    """Time-average requests in the node (from server.csv snapshots) = arrival rate x mean time in node
    (from request_traces.csv), within 5%, on a long loaded run where nobody leaves."""
    data = {
        "name": "little",
        "seed": 11,
        "server": {"d0_s": 0.02, "d1_s": 1e-4, "batch_tokens": 2048, "kv_tokens": 60000, "max_running": 64},
        "workload": {"arrivals": {"kind": "poisson", "rate_per_s": 6.0}, "streams": 1500,
                     "prompt_tokens": {"dist": "uniform", "low": 100, "high": 400},
                     "output_tokens": {"dist": "lognormal", "median": 150, "sigma": 0.5, "min": 10, "max": 600}},
        "clients": {"reading_tps": 1000, "patience_s": 10000},
        "paths": {"p": {"rate_mbps": 1000, "rtt_ms": 2}},
        "max_duration_s": 2000,
    }
    loaded = _loaded(data)
    run_controller(loaded, draw_requests(loaded.scenario, loaded.base_dir), "unpaced", {}, tmp_path / "u", 11)
    run = load_controller_dir(tmp_path / "u")
    tr = run.request_traces
    assert np.all(np.isfinite(tr["completion_time"]))
    w_mean = float(np.mean(tr["total_delay"]))
    t_end = float(np.max(tr["completion_time"]))
    lam = len(tr["req_id"]) / t_end
    s = run.server
    n_in_node = s["waiting_count"] + s["running_count"] + s["swapped_count"]
    # each snapshot's count holds until the next snapshot (idle gaps: the node is empty after the last step)
    t = np.concatenate([[0.0], s["time"]])
    held = np.concatenate([[0.0], n_in_node])
    l_mean = float(np.sum(held[:-1] * np.diff(t)) / t[-1])
    assert l_mean > 5  # a loaded node, or the test proves nothing
    assert l_mean == pytest.approx(lam * w_mean, rel=0.05)


def test_cli_writes_results_layout(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "sim", "steady-broadband", "--out", str(out), "--controllers",
                           "unpaced", "--quiet"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["mode"] == "sim" and run_info["controllers"] == ["unpaced"]
    for f in ("tokens.csv", "streams.csv", "telemetry.csv", "server.csv", "request_traces.csv", "events.csv",
              "memory_events.csv"):
        assert (out / "unpaced" / f).is_file()
    summary = json.loads((out / "summary.json").read_text())
    keys = {"streams", "completed", "abandoned", "ttft_p50_s", "ttft_p99_s", "itl_p50_s", "itl_p99_s", "stall_ratio",
            "qoe_mean", "tokens_generated", "tokens_displayed", "tokens_wasted", "waste_frac", "effective_tps",
            "gpu_busy_frac", "peak_queued_bytes", "slo_attainment"}
    assert keys <= set(summary["controllers"]["unpaced"])
