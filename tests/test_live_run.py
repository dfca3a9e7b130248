"""A live run end to end, through the command lines a user types: the paced server with eBPF
telemetry and a loss fault on its veth in one namespace, the load client in the other, then
`python -m analysis` on the recording."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.live

PY = sys.executable


def _wait_ready(veth, url: str, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    probe = f"import urllib.request; urllib.request.urlopen('{url}/healthz', timeout=2).read()"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if veth.run("b", [PY, "-c", probe], check=False).returncode == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"server at {url} not ready after {timeout_s} s")


def test_live_run_under_loss_fault_is_recorded_and_plotted(veth, tmp_path):  # type: ignore[no-untyped-def]
    out = tmp_path / "live"
    url = f"http://{veth.addr('a')}:8000"
    server = veth.popen("a", [PY, "-m", "live", "--iface", veth.iface("a"), "--host", veth.addr("a"), "--port", "8000",
                              "--controller", "ewma", "--fault", "kind=loss,p=0.05,at_s=4,duration_s=8",
                              "--record", str(out), "--duration", "30"])
    try:
        _wait_ready(veth, url)
        client = veth.run("b", [PY, "-m", "live", "client", url, "--streams", "16", "--scenario", "steady-broadband",
                                "--out", str(out), "--time-limit", "20"], timeout_s=120)
        assert client.returncode == 0, client.stderr
        server.wait(timeout=90)
    finally:
        veth.stop(server)
    stderr = server.stderr.read() if server.stderr else ""
    assert server.returncode == 0, stderr[-2000:]
    assert "backend" in stderr.lower() or "backend" in (server.stdout.read() if server.stdout else "").lower()
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["mode"] == "live"
    telemetry = (out / "ewma" / "telemetry.csv").read_text().splitlines()
    header = telemetry[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in telemetry[1:]]
    srtt = [float(r["srtt_ms"]) for r in rows if r["srtt_ms"]]
    assert srtt, "no kernel RTT reached the controller"
    assert sum(int(r["retrans"]) for r in rows if r["retrans"]) > 0, "the loss fault caused no retransmits"
    proc = subprocess.run([PY, "-m", "analysis", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())["controllers"]["ewma"]
    assert summary["streams"] >= 10 and summary["tokens_displayed"] > 0
    assert (out / "report.html").is_file() and (out / "plots" / "timeline_ewma.png").is_file()
