"""``live.lab.crosstraffic``: the simulator's bulk cross traffic as real TCP flows between two namespaces.

The live tests shape the veth to 10 Mbit/s (tbf on side a's egress, the direction of the flows), so
the flows are limited by a bottleneck as in a scenario and the machine is not loaded with Gbit/s of
veth traffic; a run is ~2.5 s of traffic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RATE_MBIT = 10
PORT = 5301


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _shape(pair) -> None:
    """A 10 Mbit/s bottleneck with a 128 KB drop-tail queue from a to b."""
    pair.run("a", ["tc", "qdisc", "replace", "dev", pair.if_a, "root", "tbf", "rate", f"{RATE_MBIT}mbit",
                   "burst", "3000", "limit", str(128 * 1024)])


def _ss_cc(ss_out: str, peer: str) -> list[str]:
    """The congestion control of each connection to ``peer`` in ``ss -tin`` output (the first word of
    the info line that follows the connection's line)."""
    lines = ss_out.splitlines()
    return [lines[i + 1].split()[0] for i, line in enumerate(lines[:-1]) if line.split()[-1:] == [peer]]


def _spec(**kw):
    from scenarios.schema import CrossTraffic

    return CrossTraffic(**kw)


def test_help_explains_both_subcommands():
    texts = {}
    for sub in ("", "sink", "send"):
        proc = subprocess.run([sys.executable, "-m", "live.lab.crosstraffic", *sub.split(), "--help"],
                              capture_output=True, text=True, env=_env(), timeout=20)
        assert proc.returncode == 0, proc.stderr
        texts[sub] = " ".join(proc.stdout.split())
    assert "sink" in texts[""] and "send" in texts[""]
    assert "discard" in texts["sink"] and "SIGTERM" in texts["sink"]
    assert "congestion control" in texts["send"] and "T0" in texts["send"]


def test_unknown_cc_exits_2_naming_it():
    proc = subprocess.run([sys.executable, "-m", "live.lab.crosstraffic", "send", "--to", "127.0.0.1:1", "--flows", "1",
                           "--start-s", "0", "--stop-s", "1", "--cc", "nosuchcc"],
                          capture_output=True, text=True, env=_env(), timeout=20, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nosuchcc" in lines[0], proc.stderr
    assert proc.stdout == ""  # not even ready


def test_connect_failure_is_reported_in_the_exit_json():
    """Nothing listens on 127.0.0.1:1 (loopback, root namespace: no traffic leaves the machine)."""
    from live.lab.protocol import send

    proc = subprocess.Popen([sys.executable, "-m", "live.lab.crosstraffic", "send", "--to", "127.0.0.1:1",
                             "--flows", "2", "--start-s", "0", "--stop-s", "0.3", "--cc", "reno"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    assert proc.stdout is not None and proc.stdin is not None
    assert json.loads(proc.stdout.readline()) == {"event": "ready"}
    send(proc.stdin, "t0", t0=time.monotonic())
    out, err = proc.communicate(timeout=20)
    exit_msg = json.loads(out.strip().splitlines()[-1])
    assert proc.returncode == 1
    assert exit_msg["event"] == "exit" and len(exit_msg["errors"]) == 2
    assert all("refused" in e.lower() for e in exit_msg["errors"]), exit_msg["errors"]
    assert "Traceback" not in err


@pytest.mark.live
def test_two_reno_flows_from_start_to_stop(veth):
    from live.lab.crosstraffic import cross_traffic

    _shape(veth)
    ss_out = ""
    with cross_traffic(veth, _spec(flows=2, start_s=0.5, stop_s=2.0, cc="reno"), server_addr=veth.addr_a,
                       client_addr=veth.addr_b, port=PORT) as ct:
        sender, sink = ct.procs
        t0 = time.monotonic() + 0.1
        ct.start(t0)
        time.sleep(max(0.0, t0 + 1.2 - time.monotonic()))
        ss_out = veth.run("a", ["ss", "-tin", "dst", f"{veth.addr_b}:{PORT}"]).stdout
        sender.wait(timeout=10)  # it ends by itself at stop_s
    s = ct.summary()
    snd, snk = s["sender"], s["sink"]
    sent, acked = snd["bytes_sent"], snd["bytes_acked"]
    dur_s = snd["stopped_at_s"] - snd["started_at_s"]
    mbit = sum(acked) * 8 / dur_s / 1e6
    print(f"\nsent {sent} acked {acked} sink {snk['bytes']} over {dur_s:.2f} s = {mbit:.2f} Mbit/s acked "
          f"(tbf {RATE_MBIT}); retrans {snd['retrans_segs']}; connected at {snd['connected_at_s']}; "
          f"started {snd['started_at_s']:.3f} stopped {snd['stopped_at_s']:.3f}")
    assert snd["rc"] == 0 and snk["rc"] == 0, s
    assert snd["errors"] == [] and snd["cc"] == "reno" and snd["cc_effective"] == ["reno", "reno"]
    assert len(sent) == 2 and all(b > 0 for b in sent)
    assert all(a is not None and 0 < a <= b for a, b in zip(acked, sent, strict=True))
    assert 0.5 <= snd["started_at_s"] <= 0.8
    assert 2.0 <= snd["stopped_at_s"] <= 2.5
    assert snk["connections"] == 2
    # what was in flight at the abort (sent - acked: send buffers, the tbf queue) may be lost; the rest arrived
    assert 0.9 * sum(acked) <= snk["bytes"] <= sum(sent)
    assert 0.5 * RATE_MBIT <= mbit <= 1.05 * RATE_MBIT
    assert _ss_cc(ss_out, f"{veth.addr_b}:{PORT}") == ["reno", "reno"], ss_out
    assert sender.poll() is not None and sink.poll() is not None


@pytest.mark.live
def test_endless_flows_stop_with_the_context_even_on_interrupt(veth):
    """stop_s None: the flows run until the context exits -- here by a KeyboardInterrupt."""
    from live.lab.crosstraffic import cross_traffic

    _shape(veth)
    procs = ()
    exited_at = 0.0
    spec = _spec(flows=1, start_s=0.0, stop_s=None, cc="cubic")
    with pytest.raises(KeyboardInterrupt), cross_traffic(veth, spec, server_addr=veth.addr_a,
                                                         client_addr=veth.addr_b, port=PORT) as ct:
        procs = ct.procs
        t0 = time.monotonic()
        ct.start(t0)
        time.sleep(0.8)
        exited_at = time.monotonic() - t0
        raise KeyboardInterrupt
    assert procs and all(p.poll() is not None for p in procs)
    s = ct.summary()
    snd, snk = s["sender"], s["sink"]
    print(f"\nendless flow: sent {snd['bytes_sent']} acked {snd['bytes_acked']} sink {snk['bytes']}, "
          f"stopped at {snd['stopped_at_s']:.3f} s (context exit at {exited_at:.3f} s)")
    assert snd["rc"] == 0 and snk["rc"] == 0, s
    assert snd["bytes_sent"][0] > 0 and snk["bytes"] > 0
    assert exited_at <= snd["stopped_at_s"] <= exited_at + 1.0
    out = veth.run("a", ["ss", "-tn", "state", "established", "dst", f"{veth.addr_b}:{PORT}"]).stdout
    assert f"{veth.addr_b}:{PORT}" not in out


@pytest.mark.live
def test_never_started_sender_exits_without_flows(veth):
    from live.lab.crosstraffic import cross_traffic

    with cross_traffic(veth, _spec(flows=1, start_s=0.0, stop_s=1.0, cc="reno"), server_addr=veth.addr_a,
                       client_addr=veth.addr_b, port=PORT) as ct:
        procs = ct.procs
    s = ct.summary()
    assert all(p.poll() is not None for p in procs)
    assert s["sender"]["started_at_s"] is None and s["sender"]["bytes_sent"] == []
    assert s["sink"]["connections"] == 0 and s["sink"]["rc"] == 0
