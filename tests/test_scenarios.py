"""Scenario files: every built-in one loads; bad files give one line naming file and key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from scenarios import ScenarioError, builtin_scenarios, json_schema, load_scenario
from scenarios.traces import load_mahimahi, mean_rate_bps, resolve_trace
from sim.model.workload import draw_requests

REQUIRED = {"steady-broadband", "wifi-fade", "cellular-trace", "bursty-loss", "flash-outage", "gpu-overload",
            "shared-bottleneck"}


def test_builtin_scenarios_load():
    found = builtin_scenarios()
    assert set(found) >= REQUIRED
    for path in found.values():
        loaded = load_scenario(path)
        assert loaded.scenario.name == path.stem


def test_traces_mean_rates():
    # Verizon LTE: 58,655 opportunities over 140 s -> 58655*1500*8/140 bit/s
    lte = load_mahimahi(resolve_trace("Verizon-LTE-short.down"))
    assert mean_rate_bps(lte) == pytest.approx(58655 * 12000 / 140.0)
    umts = load_mahimahi(resolve_trace("TMobile-UMTS-driving.down"))
    assert len(umts) == 156262


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _base() -> dict:
    return {"name": "t", "workload": {"arrivals": {"kind": "poisson", "rate_per_s": 1}, "streams": 5},
            "paths": {"a": {"rate_mbps": 10}}}


@pytest.mark.parametrize(("mutate", "key", "words"), [
    (lambda d: d["paths"]["a"].update(rate_mbps=-1), "paths.a.rate_mbps", "greater than 0"),
    (lambda d: d["paths"]["a"].update(rtt=5), "paths.a.rtt", "unknown key"),
    (lambda d: d.update(faults=[{"kind": "rate", "at_s": 1, "duration_s": 2}]), "faults.0", "exactly one of"),
    (lambda d: d.update(faults=[{"kind": "outage", "at_s": 1, "duration_s": 2, "path": "b"}]), "faults.0.path",
     "unknown path"),
    (lambda d: d["workload"].pop("streams"), "workload.streams", "Field required"),
    (lambda d: d["paths"]["a"].update(rate_mbps=None, trace="nope.down"), "paths.a.trace", "not found"),
])
def test_bad_file_names_file_and_key(tmp_path, mutate, key, words):
    data = _base()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(ScenarioError) as exc:
        load_scenario(path)
    assert exc.value.key == key
    assert words in exc.value.message
    assert str(exc.value).startswith(f"{path}: {key}: ")


def test_cli_bad_input_exits_2_without_traceback(tmp_path):
    data = _base()
    data["server"] = {"d0_s": "fast"}
    path = _write(tmp_path, data)
    proc = subprocess.run([sys.executable, "-m", "sim", str(path), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{path}: server.d0_s:" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_bad_yaml_and_unknown_controller(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: x\npaths: [\n")
    proc = subprocess.run([sys.executable, "-m", "sim", str(p)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "invalid YAML: line" in proc.stderr and "Traceback" not in proc.stderr
    good = _write(tmp_path, _base())
    proc = subprocess.run([sys.executable, "-m", "sim", str(good), "--controllers", "nosuch"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown controller 'nosuch'" in proc.stderr


def test_controller_params_validated_with_key(tmp_path):
    data = _base()
    data["controllers"] = {"fixed": {"rate_tps": -3}}
    proc = subprocess.run([sys.executable, "-m", "sim", str(_write(tmp_path, data))], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "controllers.fixed.rate_tps:" in proc.stderr


def test_schema_command_prints_json_schema():
    proc = subprocess.run([sys.executable, "-m", "sim", "schema"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    schema = json.loads(proc.stdout)
    assert schema == json_schema()
    assert "paths" in schema["properties"] and schema["additionalProperties"] is False


def test_workload_is_common_random_numbers():
    loaded = load_scenario(builtin_scenarios()["wifi-fade"])
    a = draw_requests(loaded.scenario, loaded.base_dir)
    b = draw_requests(loaded.scenario, loaded.base_dir)
    assert a == b
    c = draw_requests(loaded.scenario, loaded.base_dir, seed=99)
    assert a != c
    # Poisson arrivals: the mean gap is 1/rate within sampling error
    gaps = np.diff([r.arrival_s for r in a])
    assert np.mean(gaps) == pytest.approx(1 / 2.5, rel=0.2)
    assert {r.path for r in a} == {"wifi", "wired"}


def test_defaults_are_validated_models():
    from scenarios import parse_scenario

    scn = parse_scenario(_base(), "t.yaml")
    # defaults written as dicts must come out as distributions that can be sampled
    rng = np.random.default_rng(0)
    assert scn.clients.reading_tps.sample(rng, 3).shape == (3,)
    assert scn.clients.patience_s.sample(rng, 2).tolist() == [10.0, 10.0]
    assert 100 <= scn.workload.prompt_tokens.sample(rng, 1)[0] <= 600
