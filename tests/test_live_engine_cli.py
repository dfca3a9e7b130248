"""`python -m live --scheduler NAME [--scheduler-param KEY=VALUE ...]`: checked like every other flag (exit 2,
the flag named, the known names listed), the scenario's ``server.scheduler`` the default, and what ran
recorded in run.json. No root: nothing is served with telemetry or shaped here."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from live.cli import validate
from live.serve.app import running_server
from live.serve.config import LiveConfig
from scenarios.cli_errors import BadInput
from scenarios.schema import SchedulerSpec, ServerSpec
from sim.model import schedulers

ROOT = Path(__file__).resolve().parents[1]
KNOWN = ", ".join(sorted(schedulers.REGISTRY))


def problems(*argv: str) -> list[tuple[str, str]]:
    with pytest.raises(BadInput) as exc:
        validate(["--iface", "lo", "--no-telemetry", *argv])
    return list(exc.value.problems)


def config(*argv: str) -> Any:
    return validate(["--iface", "lo", "--no-telemetry", *argv]).config.config


def kv_scenario(tmp_path: Path, scheduler: Any) -> Path:
    base = yaml.safe_load((ROOT / "scenarios" / "steady-broadband.yaml").read_text())
    base["server"] = {**base["server"], "scheduler": scheduler}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def test_unknown_scheduler_names_the_flag_and_the_known_ones() -> None:
    assert problems("--scheduler", "nosuch") == [("--scheduler", f"unknown scheduler 'nosuch'; known: {KNOWN}")]


def test_scheduler_params_are_validated_by_the_scheduler() -> None:
    assert problems("--scheduler", "fcfs", "--scheduler-param", "x=1") == [
        ("--scheduler-param", "x=1: Extra inputs are not permitted (scheduler fcfs)")]
    assert problems("--scheduler-param", "novalue") == [("--scheduler-param", "'novalue': expected KEY=VALUE")]
    assert problems("--scheduler-param", "x=nan") == [("--scheduler-param", "'x=nan': must be a finite number")]


def test_a_scheduler_is_the_built_in_engines_only() -> None:
    assert problems("--upstream", "http://127.0.0.1:9", "--scheduler", "fcfs") == [
        ("--scheduler", "applies to the built-in engine only; with --upstream the upstream server schedules its "
         "own batch")]


def test_the_scenarios_scheduler_is_the_default_and_the_flag_replaces_it(tmp_path: Path) -> None:
    assert config().server.scheduler == SchedulerSpec(name="fcfs", params={})
    other = next((n for n in schedulers.REGISTRY if n != "fcfs"), None)
    if other is None:
        pytest.skip("only fcfs is registered")
    scn = kv_scenario(tmp_path, other)
    assert config("--scenario", str(scn)).server.scheduler.name == other
    replaced = config("--scenario", str(scn), "--scheduler", "fcfs")
    assert replaced.server.scheduler == SchedulerSpec(name="fcfs", params={})
    assert replaced.server.kv_tokens == 200_000  # the rest of the scenario's server stays


def test_a_bad_scheduler_in_the_scenario_is_said_with_its_file(tmp_path: Path) -> None:
    scn = kv_scenario(tmp_path, {"name": "fcfs", "params": {"nope": 1}})
    found = problems("--scenario", str(scn))
    assert found == [(str(scn), "server.scheduler.params.nope: Extra inputs are not permitted")]


def test_the_command_exits_2_without_a_traceback() -> None:
    proc = subprocess.run([sys.executable, "-m", "live", "--iface", "lo", "--no-telemetry", "--scheduler", "nosuch"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: --scheduler: unknown scheduler 'nosuch'; known: {KNOWN}")


def test_run_json_records_the_scheduler_that_ran(tmp_path: Path) -> None:
    scn = kv_scenario(tmp_path, "fcfs")
    cfg = LiveConfig.from_scenario(str(scn), "unpaced", port=0, record_dir=tmp_path / "rec",
                                   server=ServerSpec(scheduler={"name": "fcfs"}))  # type: ignore[call-arg]

    async def main() -> dict[str, Any]:
        async with running_server(cfg) as srv:
            assert srv.state.engine is not None and srv.state.engine.scheduler.name == "fcfs"
            return json.loads((tmp_path / "rec" / "run.json").read_text())

    run = asyncio.run(main())
    assert run["live"]["scheduler"] == {"name": "fcfs", "params": {}}
    assert run["scenario"]["server"]["scheduler"] == {"name": "fcfs", "params": {}}
