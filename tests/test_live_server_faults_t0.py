"""Time 0 of a live server's faults, and children that die with a killed lab.

* ``python -m live --fault ...`` prepares its fault player (the tc-bpf dropper's compile) first and
  starts the timeline only once the server listens with its telemetry up, at the recording's time
  0: the first request (sent while the probes compile) is answered after time 0, the epoch it
  reports is the one in run.json and the player's, and no step is late.
* ``VethPair.popen``'s children get SIGTERM when their parent dies (``PR_SET_PDEATHSIG``, set before
  ``nsenter`` execs the real command); the same child started without it outlives the parent.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from live.kernel.netns import NETNS_DIR, VethPair, in_netns

pytestmark = pytest.mark.live

PY = sys.executable
FAULT_AT_S = 0.5
START_TIMEOUT_S = 90.0


def _first_health(pair: VethPair, url: str, server: subprocess.Popen[str]) -> tuple[dict[str, Any], float]:
    """GET /healthz from namespace b as soon as the server's socket accepts: the first answer, and
    the monotonic time its request was sent."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert server.poll() is None, f"server exited (rc={server.returncode}): {server.communicate()[1][-2000:]}"
        t_sent = time.monotonic()
        try:  # the request waits in the socket while the server's loop compiles the probes
            with in_netns(pair.ns_b), urllib.request.urlopen(f"{url}/healthz", timeout=30) as resp:
                return json.loads(resp.read()), t_sent
        except OSError:
            time.sleep(0.02)  # not listening yet
    raise AssertionError(f"server at {url} did not answer within {START_TIMEOUT_S:g} s")


def test_faults_start_with_the_recording_once_the_server_serves(veth: VethPair, tmp_path: Path) -> None:
    out = tmp_path / "rec"
    url = f"http://{veth.addr('a')}:8000"
    server = veth.popen("a", [PY, "-m", "live", "--iface", veth.iface("a"), "--host", veth.addr("a"),
                              "--port", "8000", "--controller", "ewma", "--record", str(out), "--duration", "3",
                              "--fault", f"kind=loss,p=0.05,at_s={FAULT_AT_S:g},duration_s=1"])
    try:
        health, t_sent = _first_health(veth, url, server)
        stdout, stderr = server.communicate(timeout=60)
    finally:
        veth.stop(server)
    assert server.returncode == 0, stderr[-2000:]
    # time 0 was picked once the server listened with its probes loaded: after this request reached
    # the listening socket, before it was answered (the old order set it before listening)
    assert t_sent < health["t0_monotonic"] <= health["now_monotonic"], (t_sent, health)
    played = re.search(r"\[faults\] time 0 at monotonic ([0-9.]+)", stdout)
    assert played is not None, stdout
    live = json.loads((out / "run.json").read_text())["live"]
    assert live["faults_t0_s"] == 0.0
    assert abs(float(played.group(1)) - live["t0_monotonic"]) < 1e-5  # printed to the microsecond
    assert health["t0_monotonic"] == live["t0_monotonic"]  # the epoch did not move once it served
    assert f"t={FAULT_AT_S:7.2f}s" in stdout and f"t={FAULT_AT_S + 1:7.2f}s" in stdout, stdout
    assert "LATE" not in stdout, stdout


CHILD = """
import signal, sys, time
def on_term(signum, frame):
    open(sys.argv[1], "w").write("TERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("up", flush=True)
time.sleep(60)
"""

PARENT = """
import json, sys
from live.kernel.netns import VethPair
pair = VethPair(**json.loads(sys.argv[1]))
child = [sys.executable, "-c", sys.argv[2]]
guarded = pair.popen("a", child + [sys.argv[3]], stderr=None)
unguarded = pair.popen("a", child + [sys.argv[4]], stderr=None, preexec_fn=None)
for p in (guarded, unguarded):
    assert p.stdout.readline().strip() == "up"
print(guarded.pid, unguarded.pid, flush=True)
sys.stdin.read()
"""


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for a reaper."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_popen_children_get_sigterm_when_their_parent_is_killed(veth: VethPair, tmp_path: Path) -> None:
    fields = {k: getattr(veth, k) for k in ("ns_a", "ns_b", "if_a", "if_b", "addr_a", "addr_b")}
    marks = [tmp_path / "guarded", tmp_path / "unguarded"]
    root = str(Path(__file__).resolve().parents[1])
    parent = subprocess.Popen([PY, "-c", PARENT, json.dumps(fields), CHILD, *map(str, marks)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=root)
    unguarded = 0
    try:
        assert parent.stdout is not None
        guarded, unguarded = map(int, parent.stdout.readline().split())
        ns_inode = os.stat(f"{NETNS_DIR}/{veth.ns_a}").st_ino
        for pid in (guarded, unguarded):  # nsenter exec'd the real child: same pid, in namespace a
            assert os.stat(f"/proc/{pid}/ns/net").st_ino == ns_inode
            assert "on_term" in Path(f"/proc/{pid}/cmdline").read_text()
        parent.kill()
        parent.wait(10)
        t_kill = time.monotonic()
        while _running(guarded) and time.monotonic() - t_kill < 2.0:
            time.sleep(0.02)
        gone_s = time.monotonic() - t_kill
        assert not _running(guarded), "the child outlived its SIGKILLed parent by 2 s"
        assert marks[0].read_text() == "TERM"  # by SIGTERM: it could clean up
        assert _running(unguarded), "control: the same child without PDEATHSIG should outlive its parent"
        assert not marks[1].exists()
        print(f"guarded child gone {gone_s * 1000:.0f} ms after its parent's SIGKILL")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if unguarded and _running(unguarded):
            os.killpg(unguarded, signal.SIGKILL)
