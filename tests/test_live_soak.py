"""The live server over time, and what it leaves behind when it stops or is killed.

* A two-minute soak (``bench/soak.py``): the real server with eBPF telemetry and a paced controller,
  streams arriving and leaving, a third cut abruptly mid-stream. After the warm-up the server's RSS
  grows less than 10 %, its open file descriptors are back to the baseline (both measured quiescent:
  no stream active, only the sampler's own connection open), no stream is ever decoded in a step
  planned after its client was seen gone, and at most one token (the step in flight) is made per
  departure. Those counters are checked to see what they claim: with the engine's dropping of
  departed clients disabled, the same departures show up as zombies (in process, no root needed).
* The server playing faults (tbf root qdisc 7a1e:, the tc-bpf dropper on clsact egress) on a veth in
  namespaces made here: after SIGTERM nothing of ours is left on the interface; after SIGKILL it is
  (checked), and ``python -m live cleanup --iface`` removes it.
* A lab (``python -m live lab``) SIGKILLed once its server runs: its namespaces stay (its children
  get SIGTERM as it dies); ``python -m live cleanup`` removes them, and no namespace, TUN link
  process or process of the lab is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from live.kernel.faults import FILTER_PREF, NFT_TABLE, QDISC_HANDLE, STATE_DIR
from live.kernel.netns import NETNS_DIR, VethPair, in_netns, veth_pair

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
START_TIMEOUT_S = 120.0  # the server compiles its probes (and the dropper) first: slow on a loaded machine
FAULTS = ["--fault", "kind=rate,rate_mbps=20,at_s=0,duration_s=600",
          "--fault", "kind=loss,p=0.01,at_s=0,duration_s=600"]


# --------------------------------------------------------------------------- the soak
@pytest.mark.live
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_minute_soak_leaks_nothing_and_lets_departed_clients_go(live: None) -> None:
    proc = subprocess.run([PY, str(ROOT / "bench" / "soak.py"), "--minutes", "2"], cwd=ROOT, capture_output=True,
                          text=True, timeout=540, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print("\n" + proc.stdout)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    # the load did what it says: every stream answered, every departure seen by the server as one
    assert r["quiescent_start"] and r["quiescent_end"], "the server never became idle"
    assert r["failed"] == 0 and r["server_tracebacks"] == 0 and r["server_rc"] == 0, r
    assert r["server_streams_cancelled"] + r["server_streams_completed"] == r["streams"]
    assert r["server_disconnects"] == r["server_streams_cancelled"]
    # a cut leaves >= 10 tokens (200 ms of decoding) to go, so the server sees it as a departure unless
    # this client's loop stalled that long; the server never counts a stream read to the end as one
    assert 0.9 * r["cut"] <= r["server_streams_cancelled"] <= r["cut"], r
    assert r["cut"] >= r["streams"] // 3 - 1
    # the claims
    assert r["rss_growth_pct"] < 10.0, r
    assert r["fds_end"] == r["fds_start"], r
    assert r["zombie_streams"] == 0, r
    assert r["orphaned_end"] == 0, r
    assert r["tokens_after_disconnect"] <= r["server_disconnects"], r  # the step in flight, at most


# --------------------------------------------------------------------------- the counters the soak reads
async def _cut_streams(url: str, n: int) -> None:
    """``n`` long streams, each aborted (RST) after its third token."""
    body = {"model": "m", "stream": True, "max_tokens": 2000, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0)) as session:

        async def one() -> None:
            async with session.post(url + "/v1/chat/completions", json=body) as resp:
                assert resp.connection is not None and resp.connection.transport is not None
                transport, got = resp.connection.transport, 0
                async for line in resp.content:
                    got += line.startswith(b"data: ")
                    if got >= 3:
                        transport.abort()
                        return

        await asyncio.gather(*(one() for _ in range(n)))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dropping", ["works", "broken"])
def test_the_zombie_counter_sees_generation_that_outlives_its_client(monkeypatch: pytest.MonkeyPatch,
                                                                     dropping: str) -> None:
    """The soak's zero means something: with the engine's dropping of departed clients disabled, the
    same five departures show up as five zombie streams and five orphaned ones."""
    from live.serve.app import running_server
    from live.serve.backends.engine import LiveEngine
    from live.serve.config import LiveConfig
    from scenarios.schema import ServerSpec

    if dropping == "broken":
        monkeypatch.setattr(LiveEngine, "_drop_cancelled", lambda self, now: None)
    n = 5

    async def main() -> dict[str, float]:
        cfg = LiveConfig(port=0, server=ServerSpec(d0_s=0.005, d1_s=1e-5), control_interval_s=0.05)
        async with running_server(cfg) as srv:
            state, engine = srv.state, srv.state.engine
            await _cut_streams(srv.url, n)
            deadline = time.monotonic() + 20
            while state.metrics.active_streams._value.get() > 0:  # every handler has seen its client go
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            steps = engine.steps
            while engine.active() > 0 and engine.steps < steps + 3:  # three steps planned after that, or idle
                assert time.monotonic() < deadline
                await asyncio.sleep(0.005)
            text = generate_latest(state.metrics.registry).decode()
        return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}

    m = asyncio.run(main())
    assert m["tokenpace_client_disconnects_total"] == n
    if dropping == "works":
        assert m["tokenpace_zombie_streams_total"] == 0 and m["tokenpace_orphaned_streams"] == 0
        assert m["tokenpace_tokens_after_disconnect_total"] <= n
    else:
        assert m["tokenpace_zombie_streams_total"] == n and m["tokenpace_orphaned_streams"] == n
        assert m["tokenpace_tokens_after_disconnect_total"] >= 2 * n


# --------------------------------------------------------------------------- a faulted server, stopped or killed
def ours_on(pair: VethPair) -> list[str]:
    """Everything of tokenpace's on the server's side of ``pair``: the root qdisc, the clsact qdisc and
    our filter, the nft table, the player's state file, any TUN device."""
    found = []
    qdiscs = pair.run("a", ["tc", "qdisc", "show", "dev", pair.if_a]).stdout
    if f" {QDISC_HANDLE} root" in qdiscs:
        found.append(f"root qdisc {QDISC_HANDLE}")
    if "qdisc clsact" in qdiscs:
        found.append("qdisc clsact")
    filters = pair.run("a", ["tc", "filter", "show", "dev", pair.if_a, "egress"], check=False).stdout
    if f"pref {FILTER_PREF} " in filters:
        found.append(f"tc filter pref {FILTER_PREF}")
    if f" {NFT_TABLE}" in pair.run("a", ["nft", "list", "tables"]).stdout:
        found.append(f"nft table {NFT_TABLE}")
    if (STATE_DIR / f"faults-root-{pair.if_a}.json").exists():  # the server ran in the namespace: "root" to it
        found.append("fault state file")
    for line in pair.run("a", ["ip", "-d", "-o", "link", "show"]).stdout.splitlines():
        if " tun " in line:
            found.append(f"TUN device {line.split(':')[1].strip()}")
    return found


def start_faulted_server(pair: VethPair) -> subprocess.Popen[str]:
    """``python -m live`` in namespace a with a rate limit and random loss on its veth; returns once
    the faults are in place and the server answers from namespace b."""
    proc = pair.popen("a", [PY, "-m", "live", "--iface", pair.if_a, "--host", pair.addr_a, "--port", "8000",
                            "--controller", "buffer", *FAULTS])
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        assert proc.poll() is None, f"server exited (rc={proc.returncode}): {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"server not up after {START_TIMEOUT_S:g} s: {ours_on(pair)}"
        if {f"root qdisc {QDISC_HANDLE}", f"tc filter pref {FILTER_PREF}"} <= set(ours_on(pair)):
            with contextlib.suppress(OSError), in_netns(pair.ns_b), \
                    urllib.request.urlopen(f"http://{pair.addr_a}:8000/healthz", timeout=2) as resp:
                if json.loads(resp.read())["status"] == "ok":
                    return proc
        time.sleep(0.3)


def gone_after(pair_names: tuple[str, str]) -> list[str]:
    return [n for n in pair_names if os.path.exists(f"{NETNS_DIR}/{n}")]


@pytest.mark.live
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_faulted_server_leaves_nothing_after_sigterm_or_sigkill_and_cleanup(live: None) -> None:
    with veth_pair() as pair:
        names = (pair.ns_a, pair.ns_b)
        # SIGTERM: the server removes its faults itself
        proc = start_faulted_server(pair)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        assert ours_on(pair) == [], proc.communicate()[1][-2000:]
        # SIGKILL: nothing runs its finally -- what it installed stays until `python -m live cleanup`
        proc = start_faulted_server(pair)
        proc.kill()
        proc.wait(10)
        left = ours_on(pair)
        assert {f"root qdisc {QDISC_HANDLE}", "qdisc clsact", f"tc filter pref {FILTER_PREF}",
                "fault state file"} <= set(left), left
        done = pair.run("a", [PY, "-m", "live", "cleanup", "--iface", pair.if_a], check=False, timeout_s=120)
        assert done.returncode == 0, done.stderr
        assert f"removed qdisc tbf {QDISC_HANDLE} (root) from {pair.if_a}" in done.stdout
        assert ours_on(pair) == []
    assert gone_after(names) == []


# --------------------------------------------------------------------------- a killed lab
def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _descendants(root: int) -> dict[int, str]:
    children: dict[int, list[int]] = {}
    for p in os.listdir("/proc"):
        if p.isdigit() and (pp := _ppid(int(p))) is not None:
            children.setdefault(pp, []).append(int(p))
    out: dict[int, str] = {}
    todo = [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out[c] = _cmdline(c)
            todo.append(c)
    return out


@contextlib.contextmanager
def lab_run(out: Path, link: str) -> Iterator[subprocess.Popen[str]]:
    lab = subprocess.Popen([PY, "-m", "live", "lab", str(ROOT / "tests" / "scenarios" / "lab-short.yaml"), "--out",
                            str(out), "--controllers", "unpaced", "--link", link], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield lab
    finally:
        if lab.poll() is None:
            lab.kill()
            lab.wait(10)


@pytest.mark.live
@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("link", ["tun", "qdisc"])
def test_cleanup_removes_what_a_sigkilled_lab_left(live: None, tmp_path: Path, link: str) -> None:
    """``tun``: the link process deletes the namespaces' names when its parent dies, but the lab's
    server and client live on in them; ``qdisc``: the veth pair's namespaces keep their names (and the
    processes in them) until cleanup finds them by name, their creator gone."""
    out = tmp_path / "lab"
    with lab_run(out, link) as lab:
        prefix = f"{'tt' if link == 'tun' else 'tp'}{lab.pid % 100_000}x"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # the namespaces exist and the lab's server child runs in one of them
            assert lab.poll() is None, f"the lab exited early (rc={lab.returncode})"
            assert time.monotonic() < deadline, "the lab's server did not start"
            kids = _descendants(lab.pid)
            names = sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
            if len(names) == 2 and any("live.lab.serve_child" in c for c in kids.values()):
                break
            time.sleep(0.2)
        time.sleep(1.0)  # let the load client start too (not required: whatever runs then must go)
        kids = _descendants(lab.pid)
        lab.kill()
        lab.wait(10)
    server = next(pid for pid, c in kids.items() if "live.lab.serve_child" in c)
    deadline = time.monotonic() + 15.0  # the lab's own patience with a stopping server (live/lab/lab.py _stop)
    while _alive(server) and time.monotonic() < deadline:  # SIGTERM as the lab died (PR_SET_PDEATHSIG)
        time.sleep(0.1)
    assert not _alive(server), "the killed lab's server outlived it"
    done = subprocess.run([PY, "-m", "live", "cleanup"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    assert sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix)) == []
    assert sorted(f.name for f in STATE_DIR.glob(f"faults-{prefix}*")) == []  # the qdisc lab's player's
    assert [f"{pid} {cmd}" for pid, cmd in kids.items() if _alive(pid)] == []
    left = [f"{p} {c}" for p in map(int, filter(str.isdigit, os.listdir("/proc")))
            if (c := _cmdline(p)) and (str(out) in c or prefix in c) and _alive(p)]
    assert left == []
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    assert prefix not in links  # no TUN or veth device of the lab in the root namespace either
