"""python -m live: argument errors exit 2 with one line; doctor passes where live mode can run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from live.cli import parse_fault_spec


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "live", *args], capture_output=True, text=True, timeout=timeout)


def test_fault_spec_parses_into_the_scenario_schema():
    f = parse_fault_spec("kind=loss,p=0.05,at_s=10,duration_s=20")
    assert f == {"kind": "loss", "p": 0.05, "at_s": 10.0, "duration_s": 20.0, "path": None}
    with pytest.raises(ValueError, match="at_s: Field required"):
        parse_fault_spec("kind=outage,duration_s=3")
    with pytest.raises(ValueError, match="key=value"):
        parse_fault_spec("loss")


def test_bad_arguments_exit_2_without_traceback():
    for args in (["--iface", "lo", "--fault", "kind=loss,p=7,at_s=1,duration_s=1"],
                 ["--iface", "lo", "--controller", "nosuch", "--no-telemetry"],
                 ["--iface", "lo", "--controller", "oracle", "--no-telemetry"],
                 ["--iface", "lo", "--scenario", "no-such-scenario"]):
        proc = _run(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")


def test_doctor_exit_code_matches_its_verdict(live):  # the `live` fixture skips (or fails in CI) without root/bcc
    proc = _run("doctor", timeout=300)
    assert "live mode: ready" in proc.stdout, proc.stdout
    assert proc.returncode == 0
