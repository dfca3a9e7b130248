"""The fluid engine (sim/fluid/) against values worked out by hand.

* One class, constant arrivals, no network limit: the step time solves tau = d0 + d1 (N + lambda p tau)
  with N = lambda o tau running requests (Little's law), so tau = d0 / (1 - d1 lambda (o + p)); KV in use
  is lambda tau (p o + o^2 / 2) (each request holds p + (tokens made) for o steps).
* A path's fluid queue fed above its capacity grows at the difference.
* Misra-Gong-Towsley's fixed point: a window-limited flow under loss rate p settles at W = sqrt(2 / p).
* What the engine refuses, and the CLI's results layout.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from scenarios import load_scenario
from sim.fluid.engine import simulate
from sim.fluid.inputs import Classes, PathRates
from sim.fluid.model import FluidModel
from sim.fluid.stability import closed_form, fixed_point, fluid_capacity

REPO = Path(__file__).resolve().parent.parent


def _scenario(tmp_path: Path, **over: object) -> Path:
    doc: dict = {
        "name": "fluid-hand",
        "seed": 1,
        "max_duration_s": 120,
        "server": {"d0_s": 0.02, "d1_s": 1e-4, "batch_tokens": 4096, "kv_tokens": 1_000_000, "max_running": 4096},
        "workload": {"arrivals": {"kind": "poisson", "rate_per_s": 2.0}, "streams": 160,
                     "prompt_tokens": 200, "output_tokens": 300, "bytes_per_token": 256},
        "clients": {"reading_tps": 1000.0},
        "paths": {"fat": {"rate_mbps": 1000, "rtt_ms": 10}},
        "controllers": {"unpaced": {}},
    }
    for key, value in over.items():
        doc[key] = value
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_littles_law_step_time_and_kv(tmp_path: Path) -> None:
    lam, p, o, d0, d1 = 2.0, 200, 300, 0.02, 1e-4
    run = simulate(load_scenario(str(_scenario(tmp_path))))
    tau = d0 / (1 - d1 * lam * (o + p))  # 0.02 / 0.9 = 22.2 ms
    running = lam * o * tau  # 13.3 requests
    kv = lam * tau * (p * o + o * o / 2)
    mid = (run.t > 40) & (run.t < 70)  # arrivals last 80 s; 40-70 s is steady
    n = np.array([np.maximum(r, 0).sum() for r in run.series("run")])[mid]
    node = [run.node_at(i) for i in np.flatnonzero(mid)]
    assert np.mean([x["tau"] for x in node]) == pytest.approx(tau, rel=0.01)
    assert n.mean() == pytest.approx(running, rel=0.01)
    assert np.mean([x["kv"] for x in node]) == pytest.approx(kv, rel=0.01)
    assert np.mean([x["busy"] for x in node]) == pytest.approx(1 - math.exp(-running), rel=1e-3)
    s = run.summary
    assert s["streams"] == pytest.approx(160, rel=1e-6)
    assert s["tokens_generated"] == pytest.approx(160 * o, rel=1e-3)
    # mean TTFT: no queue, so one admit step (d0 + d1 (decodes + p)) + half a step waiting + two round trips
    ttft = tau * (1 - math.exp(-running)) / 2 + d0 + d1 * (running + p) + 2 * 0.010
    assert s["ttft_mean_s"] == pytest.approx(ttft, rel=0.05)
    # the fixed point of the stability check is the same steady state
    fp = fixed_point(run.model.srv, run.classes, lam, np.full(len(run.classes), np.inf))
    assert fp.tau_s == pytest.approx(tau, rel=1e-6)
    assert fp.running == pytest.approx(running, rel=1e-6)


def _one_class_model(capacity_Bps: float, queue_bytes: float, loss: float = 0.0, bulk: float = 0.0) -> FluidModel:
    classes = Classes(np.array([100.0]), np.array([400.0]), np.array([10.0]), np.array([0]), np.array([1.0]),
                      np.array([400.0]), np.array([10.0]), np.array([0]))
    path = PathRates("p", np.array([0.0]), np.array([capacity_Bps]), np.array([loss]), np.array([0.05]),
                     np.array([bulk]), queue_bytes, 1448.0, 10.0, "reno")
    from scenarios.schema import ServerSpec

    return FluidModel(ServerSpec(d0_s=0.02, d1_s=0.0, kv_tokens=10**7, max_running=None), classes, [path], 256.0,
                      None)


def test_fluid_queue_grows_at_the_difference() -> None:
    m = _one_class_model(capacity_Bps=125_000, queue_bytes=10**9)
    m.set_segment(0.0, 0.0, [0])
    y = m.initial()
    v = m.lay.split(y)
    v["run"][0, m.live[0]] = 20 / m.stages[0]  # 20 requests, 1 token per 20 ms step: 256,000 B/s written
    v["inq"][0] = 50_000.0
    v["cwnd"][0] = 1000.0  # the window does not limit
    dv = m.lay.split(m.rhs(0.0, y))
    written = 20 / 0.02 * 256
    assert float(dv["inq"][0] + dv["sock"][0]) == pytest.approx(written - 125_000, rel=1e-9)
    assert float(dv["inq"][0]) == pytest.approx(written - 125_000, rel=1e-9)  # all of it queues at the bottleneck
    assert float(dv["buf"][0]) == pytest.approx(125_000 / 256, rel=1e-9)  # the readers get the capacity


def test_mgt_fixed_point_window() -> None:
    p = 0.01
    m = _one_class_model(capacity_Bps=1e9, queue_bytes=10**9, loss=p, bulk=1.0)
    m.set_segment(0.0, 0.0, [0])
    y = m.initial()
    v = m.lay.split(y)
    v["lossf"][0] = p
    for w, sign in ((math.sqrt(2 / p), 0), (10.0, 1), (20.0, -1)):
        v["bulk_cwnd"][0] = w
        dw = float(m.lay.split(m.rhs(0.0, y))["bulk_cwnd"][0])
        if sign == 0:
            assert dw == pytest.approx(0.0, abs=1e-9)  # dW/dt = 1/R - W^2 p / (2R) = 0 at W = sqrt(2/p)
        else:
            assert np.sign(dw) == sign


def test_stability_bounds_agree_where_memory_binds() -> None:
    loaded = load_scenario("kv-broadband")
    from sim.fluid.inputs import scenario_classes

    classes = scenario_classes(loaded.scenario, loaded.scenario.seed)
    lam, binding = fluid_capacity(loaded.scenario.server, classes, np.full(len(classes), np.inf))
    closed, _ = closed_form(loaded.scenario.server, classes)
    assert binding == "kv memory"
    assert lam == pytest.approx(closed, rel=0.15)  # the same memory bound; the fluid counts prefill in the step
    assert lam < closed


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sim", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def test_cli_layout_and_refusals(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _cli(str(_scenario(tmp_path)), "--engine", "fluid", "--out", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    info = json.loads((out / "run.json").read_text())
    assert info["mode"] == "fluid" and info["status"] == "complete"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["controllers"]["unpaced"]["qoe_mean"] is None
    assert summary["controllers"]["unpaced"]["streams"] == pytest.approx(160, rel=1e-5)
    assert sorted(p.name for p in (out / "unpaced").iterdir()) == ["links.csv", "server.csv"]
    refused = _cli(str(_scenario(tmp_path)), "--engine", "fluid", "--controllers", "pid", "--out", str(out))
    assert refused.returncode == 2 and "'pid'" in refused.stderr and "not a law of the fluid state" in refused.stderr
    sched = _cli(str(_scenario(tmp_path)), "--engine", "fluid", "--controllers", "unpaced@andes", "--out", str(out))
    assert sched.returncode == 2 and "'andes'" in sched.stderr
    # without --controllers: the scenario's controllers that are fluid laws run, the others are named
    wifi = _cli("wifi-fade", "--engine", "fluid", "--out", str(tmp_path / "wifi"))
    assert wifi.returncode == 0, wifi.stderr
    ran = set(json.loads((tmp_path / "wifi" / "summary.json").read_text())["controllers"])
    assert ran == {"unpaced", "fixed", "buffer"}
    assert "--engine fluid runs" in wifi.stderr and "mpc" in wifi.stderr
