"""live.lab.tunlink on a real kernel: two namespaces joined by TUN devices and the user-space link.

What a path promises, measured from outside the link: the RTT an idle ping sees, the goodput and the
queueing delay of a bulk TCP flow, the loss rate, an outage's silence, a rate step — and that nothing
of ours is left behind afterwards. Needs root (``@pytest.mark.live``). Pings are raw ICMP sockets
with kernel receive timestamps (``SO_TIMESTAMPNS``), so the test process' own scheduling delays
do not count as network delay; there is no ``ping`` binary here.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from live.kernel.netns import NETNS_DIR, in_netns
from live.lab.tunlink import TunPair, tun_pair
from scenarios.schema import PathSpec, Scenario

pytestmark = pytest.mark.live

REPO = Path(__file__).resolve().parents[1]
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def _path(**kw: Any) -> PathSpec:
    return PathSpec.model_validate(kw)


def _faults(*faults: dict[str, Any]) -> list[Any]:
    scn = Scenario.model_validate({"name": "t", "workload": {"arrivals": {"kind": "poisson", "rate_per_s": 1},
                                                             "streams": 1},
                                   "paths": {"p": {"rate_mbps": 1}}, "faults": list(faults)})
    return scn.faults_for("p")


# ----------------------------------------------------------------------------------------- ping
def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _clock_pair() -> tuple[float, float]:
    """(CLOCK_MONOTONIC, CLOCK_REALTIME) read at one instant: a pair whose reads were split by a
    preemption would shift the converted kernel timestamp by that pause."""
    best = (math.inf, 0.0, 0.0)
    for _ in range(20):
        r0 = time.time()
        mono = time.monotonic()
        r1 = time.time()
        if r1 - r0 < best[0]:
            best = (r1 - r0, mono, (r0 + r1) / 2)
        if r1 - r0 < 20e-6:
            break
    return best[1], best[2]


def ping(pair: TunPair, count: int, interval_s: float, *, payload: int = 56, wait_s: float = 3.0,
         src: str | None = None) -> list[tuple[float, float | None]]:
    """ICMP echo from side b (from address ``src``: default the kernel's choice) to side a: ``(sent,
    received or None)`` per request, on the monotonic clock.

    The receive time is the kernel's timestamp of the reply, converted from CLOCK_REALTIME."""
    with in_netns(pair.ns_b):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    if src is not None:
        s.bind((src, 0))
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    ident = (os.getpid() + threading.get_ident()) & 0xFFFF
    sent: dict[int, float] = {}
    got: dict[int, float] = {}
    stop = threading.Event()

    def receiver() -> None:
        while not stop.is_set():
            if not select.select([s], [], [], 0.05)[0]:
                continue
            data, anc, _, _ = s.recvmsg(2048, 64)
            mono, real = _clock_pair()
            t = mono
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", raw[:16])
                    t = mono - (real - (sec + nsec * 1e-9))
            ihl = (data[0] & 0xF) * 4
            typ, _, _, pid, seq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            if typ == 0 and pid == ident and seq not in got:
                got[seq] = t

    th = threading.Thread(target=receiver, daemon=True)
    th.start()
    body = b"x" * payload
    t_next = time.monotonic()
    try:
        for seq in range(count):
            header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            pkt = struct.pack("!BBHHH", 8, 0, _checksum(header + body), ident, seq) + body
            ahead = t_next - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            sent[seq] = time.monotonic()
            s.sendto(pkt, (pair.addr_a, 0))
            t_next += interval_s
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and len(got) < count:
            time.sleep(0.01)
    finally:
        stop.set()
        th.join(2.0)
        s.close()
    return [(sent[q], got.get(q)) for q in range(count)]


def _rtts_ms(pings: list[tuple[float, float | None]]) -> list[float]:
    return sorted((r - s) * 1000 for s, r in pings if r is not None)


# What a ping's RTT holds beyond the path's delay, queue and serialization that the link does not see:
# the kernels' processing on both sides, the pinger stamping its send time, the link's wake-up on a read.
HOST_MARGIN_MS = 1.0


def _jitter_ms(stats: dict[str, Any], q: str) -> float:
    """The link's release lateness, down + up, at quantile key ``q`` (``p99_us``, ``max_us``): how late
    this machine let the link write packets in this very run (ms)."""
    return float(stats["lateness_down"][q] + stats["lateness_up"][q]) / 1000


def _ping_slack_ms(stats: dict[str, Any]) -> float:
    """Beyond the path, the RTT of >= 96 % of pings (union bound over four 1 % events): a packet is
    late at most the link's p99 lateness on its write, and -- the same machine, the same stalls -- as
    much again on its read, which the link cannot time (TUN reads carry no kernel timestamp)."""
    return HOST_MARGIN_MS + 2 * _jitter_ms(stats, "p99_us")


# ----------------------------------------------------------------------------------------- iperf3
def _iperf3(pair: TunPair, args: list[str], timeout_s: float = 30, *, rt_client: bool = False) -> dict[str, Any]:
    """An iperf3 server in a (one test), the client in b with ``args``; the client's JSON report.

    ``rt_client``: the client runs SCHED_FIFO (below the link's priority), so that its per-interval
    counts -- what it read in each interval -- are not bent by a busy process holding its core: when
    the reader waits for a CPU, the data it did not read moves into the next interval."""
    server = pair.popen("a", ["iperf3", "-s", "-1", "-B", pair.addr_a, "--forceflush"])
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # listening?
            if f"{pair.addr_a}:5201" in pair.run("a", ["ss", "-ltn"]).stdout:
                break
            time.sleep(0.05)
        rt = ["chrt", "-f", "5"] if rt_client else []
        proc = pair.run("b", [*rt, "iperf3", "-c", pair.addr_a, "-J", *args], check=False, timeout_s=timeout_s)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return json.loads(proc.stdout)  # type: ignore[no-any-return]
    finally:
        pair.stop(server)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper does not count: it holds no fd and no device)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _leftovers(pair: TunPair) -> list[str]:
    left = [ns for ns in (pair.ns_a, pair.ns_b) if os.path.exists(f"{NETNS_DIR}/{ns}")]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    left += [f"device {i}" for i in (pair.if_a, pair.if_b) if f" {i}:" in links or f" {i}@" in links]
    if pair.link.proc.poll() is None:
        left.append(f"link process {pair.link.pid}")
    return left


# ----------------------------------------------------------------------------------------- tests
def test_idle_ping_sees_the_path_rtt(live: None) -> None:
    """(a) rtt_ms=40 on an idle link: every ping 40 ms (+ a packet's transmission and the link's lateness)."""
    with tun_pair(_path(rate_mbps=10, rtt_ms=40), [], REPO, seed=1) as pair:
        pair.link.start_clock()
        rtts = _rtts_ms(ping(pair, 25, 0.04))
        stats = pair.link.stats()
    hi_ms = 40.0 + 2 * 84 * 8 / 10e6 * 1000 + _ping_slack_ms(stats)  # + an 84-byte packet each way
    print(f"\nidle ping rtt_ms=40: n={len(rtts)} min {rtts[0]:.2f} p50 {rtts[len(rtts) // 2]:.2f} "
          f"max {rtts[-1]:.2f} ms (window up to {hi_ms:.2f} ms from this run's jitter); "
          f"link lateness down {stats['lateness_down']}, up {stats['lateness_up']}")
    assert len(rtts) >= 24
    assert rtts[0] >= 40.0 - 0.05, "faster than the propagation delay"
    assert rtts[len(rtts) // 2] <= hi_ms
    # this VM stalls now and then for several ms (both vCPUs at once: the host); most pings are spared
    assert sum(r <= hi_ms for r in rtts) >= 0.8 * len(rtts)


def test_two_paths_each_with_its_own_rtt_and_rate(live: None) -> None:
    """Several paths on one link: path i is client address 10.202.N.(2+i). Pings from each address see
    that path's RTT; a download to each address gets that path's rate (the downlink is demultiplexed by
    destination, the uplink by source)."""
    from live.lab.tunlink import PathPlay

    plays = [PathPlay("slow", _path(rate_mbps=2, rtt_ms=80), (), 0),
             PathPlay("fast", _path(rate_mbps=8, rtt_ms=20), (), 1)]
    with tun_pair(None, paths=plays, base_dir=REPO, seed=1) as pair:
        pair.link.start_clock()
        assert list(pair.addrs_b) == ["slow", "fast"] and pair.addrs_b["slow"] == pair.addr_b
        rtts = {name: _rtts_ms(ping(pair, 12, 0.05, src=addr)) for name, addr in pair.addrs_b.items()}
        goodput = {}
        for name, addr in pair.addrs_b.items():
            rep = _iperf3(pair, ["-R", "-t", "2", "-B", addr])
            goodput[name] = rep["end"]["sum_received"]["bits_per_second"] / 1e6
        stats = pair.link.stats()
    med = {n: r[len(r) // 2] for n, r in rtts.items()}
    print(f"\ntwo paths: ping p50 {med}; iperf3 -R goodput Mbit/s {goodput}; "
          f"per-path passed pkts {[p['passed_pkts'] for p in stats['down']['paths']]}")
    assert 78.0 <= med["slow"] <= 84.0 and 18.0 <= med["fast"] <= 24.0
    assert 1.6 <= goodput["slow"] <= 2.0 and 6.4 <= goodput["fast"] <= 8.0
    assert all(p["passed_pkts"] > 100 for p in stats["down"]["paths"])


def test_bulk_flow_goodput_and_queue_bound(live: None) -> None:
    """(b) iperf3 over 10 Mbit/s, rtt 20 ms, a BDP of queue: goodput 90-100 % of the rate (TCP/IP headers
    cost 52 of 1500 bytes). (c) Pings alongside never wait longer than rtt + queue_bytes at the rate."""
    rate, rtt_ms = 10e6, 20
    queue = int(rate / 8 * rtt_ms / 1000)  # 25 000 bytes
    with tun_pair(_path(rate_mbps=rate / 1e6, rtt_ms=rtt_ms, queue_bytes=queue), [], REPO, seed=1) as pair:
        pair.link.start_clock()
        box: dict[str, Any] = {}
        pinger = threading.Thread(target=lambda: box.setdefault("p", ping(pair, 110, 0.05, wait_s=1.0)))
        pinger.start()
        report = _iperf3(pair, ["-R", "-t", "6", "-O", "1"])
        pinger.join()
        stats = pair.link.stats()
    goodput = report["end"]["sum_received"]["bits_per_second"]
    rtts = _rtts_ms(box["p"])
    bound_ms = rtt_ms + queue * 8 / rate * 1000
    print(f"\niperf3 10 Mbit/s rtt 20 ms BDP queue: goodput {goodput / 1e6:.2f} Mbit/s "
          f"({100 * goodput / rate:.1f} %), retransmits {report['end']['sum_sent'].get('retransmits')}; "
          f"ping under load min {rtts[0]:.1f} max {rtts[-1]:.1f} ms (bound {bound_ms:.0f} ms); "
          f"tail drops {stats['down']['tail_drops']}, max backlog {stats['down']['max_backlog_bytes']} B; "
          f"lateness down {stats['lateness_down']}, up {stats['lateness_up']}; "
          f"link cpu {stats['cpu_pct_since_clock']} % ({stats['sched']})")
    assert 0.90 * rate <= goodput <= 1.0 * rate
    assert len(rtts) >= 100
    # Queueing delay is bounded by the queue; what the host adds on top is the link's release lateness
    # (it measures it) -- a stalled VM delays a ping however small the queue.
    wire_ms = 2 * 84 * 8 / rate * 1000  # the ping's own serialization, each way
    assert rtts[int(0.9 * len(rtts))] <= bound_ms + wire_ms + _ping_slack_ms(stats), \
        "packets waited longer than the queue can hold"
    assert rtts[-1] <= bound_ms + wire_ms + HOST_MARGIN_MS + 2 * _jitter_ms(stats, "max_us"), \
        "a packet waited longer than the queue can hold"
    assert rtts[-1] >= rtt_ms + 0.5 * (bound_ms - rtt_ms), "the bulk flow never filled the queue"
    assert 0 < stats["down"]["max_backlog_bytes"] <= queue
    assert stats["io"]["write_errors"] == 0


def test_bernoulli_loss_rate(live: None) -> None:
    """(d) p = 0.05: the link drops 5 % +- 1.5 % of what it is offered (a UDP flood of ~2800 packets)."""
    # a deep queue: iperf3's UDP sender bursts when it falls behind, and tail drops are not what is measured
    spec = _path(rate_mbps=20, rtt_ms=10, queue_bytes=300_000, loss={"kind": "bernoulli", "p": 0.05})
    with tun_pair(spec, [], REPO, seed=3) as pair:
        pair.link.start_clock()
        report = _iperf3(pair, ["-R", "-u", "-b", "16M", "-l", "1400", "-t", "2"])
        stats = pair.link.stats()
    down = stats["down"]
    rate = down["random_drops"] / down["offered_pkts"]
    udp_lost = report["end"]["sum"]["lost_percent"]
    print(f"\nbernoulli 0.05: link dropped {down['random_drops']}/{down['offered_pkts']} = {100 * rate:.2f} %; "
          f"iperf3 receiver lost {udp_lost:.2f} %")
    assert down["offered_pkts"] >= 2000
    assert 0.035 <= rate <= 0.065
    assert 3.5 <= udp_lost <= 6.5
    assert down["tail_drops"] <= 0.01 * down["offered_pkts"]
    io = stats["io"]  # the uplink loses nothing (what is not written yet is still in flight)
    assert 0 <= io["up_read_pkts"] - io["up_written_pkts"] <= stats["pending_pkts"] and io["write_errors"] == 0


def test_outage_delivers_nothing(live: None) -> None:
    """(e) A 2 s outage from t=1 s: no reply reaches b between t=1 s (+ the last one in flight) and t=3 s;
    the replies held in the queue come out at the end of it."""
    faults = _faults({"kind": "outage", "at_s": 1.0, "duration_s": 2.0})
    with tun_pair(_path(rate_mbps=10, rtt_ms=20), faults, REPO, seed=1) as pair:
        t0 = pair.link.start_clock()
        pings = ping(pair, 80, 0.05)
        stats = pair.link.stats()
    arrivals = sorted(r - t0 for _, r in pings if r is not None)
    gaps = [(b - a, a, b) for a, b in itertools.pairwise(arrivals)]
    gap, gap_from, gap_to = max(gaps)
    # A reply is written at its computed arrival plus the link's lateness (the largest of this run bounds
    # it), and b stamps it as it is written; 84 bytes at 10 Mbit/s take 67 us.
    slack_s = (84 * 8 / 10e6) + stats["lateness_down"]["max_us"] / 1e6 + HOST_MARGIN_MS / 1000
    inside = [t for t in arrivals if 1.0 + 0.010 + slack_s < t < 3.0]  # the last one out before the outage
    print(f"\noutage [1, 3) s: {len(arrivals)} replies, longest silence {gap * 1000:.0f} ms "
          f"({gap_from:.3f} -> {gap_to:.3f} s); replies inside {inside}; slack {slack_s * 1000:.2f} ms "
          f"(link lateness down {stats['lateness_down']})")
    assert not inside, f"replies delivered during the outage at t = {inside}"
    assert len(arrivals) >= 79, "replies queued during the outage were not delivered after it"
    assert gap >= 1.9
    assert 3.010 <= gap_to <= 3.010 + slack_s  # the first held reply: end of the outage + rtt/2
    assert stats["down"]["tail_drops"] == 0


def test_rate_schedule_step_shows_in_throughput(live: None) -> None:
    """(f) 10 Mbit/s, then 3 Mbit/s from t=3 s: iperf3's half-second intervals follow the step."""
    spec = _path(rate_schedule=[{"at_s": 0, "rate_mbps": 10}, {"at_s": 3, "rate_mbps": 3}], rtt_ms=20,
                 queue_bytes=25_000)
    with tun_pair(spec, [], REPO, seed=1) as pair:
        pair.link.start_clock()
        report = _iperf3(pair, ["-R", "-t", "6", "-i", "0.5"], rt_client=True)
    iv = [(i["sum"]["start"], i["sum"]["end"], i["sum"]["bits_per_second"] / 1e6) for i in report["intervals"]]
    # iperf3's clock starts a little after the link's (its control connection first): the step lands in 2.5-3.0
    before = [m for s, e, m in iv if s >= 1.0 and e <= 2.6]
    after = [m for s, e, m in iv if s >= 3.0]
    print("\nrate step 10 -> 3 Mbit/s at 3 s: intervals " + ", ".join(f"{s:.1f}-{e:.1f}:{m:.2f}" for s, e, m in iv))
    assert before and after
    mean_before, mean_after = sum(before) / len(before), sum(after) / len(after)
    assert mean_before >= 8.5 and min(before) >= 7.5  # 10 Mbit/s x 1448/1500 = 9.65
    assert 2.6 <= mean_after <= 3.1  # 3 Mbit/s x 1448/1500 = 2.9
    # iperf3 counts what it read: when the host stalls it (both vCPUs), data moves to the next interval
    assert max(after) <= 4.5


def test_control_speaks_json_lines_and_answers_anything_else_with_an_error(live: None) -> None:
    """The child's stdin: JSON commands (live.lab.protocol); the old text commands get an error event."""
    from live.lab.protocol import send

    with tun_pair(_path(rate_mbps=10, rtt_ms=10), [], REPO) as pair:
        stdin = pair.link.proc.stdin
        assert stdin is not None
        stdin.write("start 1.0\n")
        stdin.flush()
        assert "not a JSON object: 'start 1.0'" in pair.link._wait_for("error", 5)["error"]
        send(stdin, "bogus")
        assert pair.link._wait_for("error", 5)["error"] == "unknown command 'bogus' (start, stats, quit)"
        t0 = time.monotonic()
        assert pair.link.start_clock(t0) == t0  # {"cmd": "start", "t0": T} -> {"event": "started", "t0": T}
        assert pair.link.stats()["io"]["write_errors"] == 0
    assert pair.link.final_stats is not None


def test_cleanup_after_exit_error_sigterm_and_sigkill(live: None) -> None:
    """(g) Nothing left: not after a normal exit, an exception, SIGTERM of the caller, or SIGKILL of it
    (the link process notices its parent is gone and removes everything itself)."""
    spec = _path(rate_mbps=10, rtt_ms=10)
    with tun_pair(spec, [], REPO) as pair:
        assert pair.run("a", ["ip", "-o", "link", "show", pair.if_a]).returncode == 0
        assert pair.link.proc.poll() is None
    assert _leftovers(pair) == []
    assert pair.link.stats()["io"]["write_errors"] == 0  # the final stats stay readable

    with pytest.raises(RuntimeError, match="boom"), tun_pair(spec, [], REPO) as pair:
        raise RuntimeError("boom")
    assert _leftovers(pair) == []

    script = textwrap.dedent(f"""
        import json, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from scenarios.schema import PathSpec
        from live.lab.tunlink import tun_pair
        with tun_pair(PathSpec(rate_mbps=10, rtt_ms=10), [], ".") as pair:
            print(json.dumps({{"ns": [pair.ns_a, pair.ns_b], "ifs": [pair.if_a, pair.if_b],
                              "pid": pair.link.pid}}), flush=True)
            time.sleep(60)
    """)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        caller = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            assert caller.stdout is not None
            info = json.loads(caller.stdout.readline())
            caller.send_signal(sig)
            caller.wait(15)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
                left = [ns for ns in info["ns"] if os.path.exists(f"{NETNS_DIR}/{ns}")]
                left += [i for i in info["ifs"] if f" {i}:" in links]
                if _alive(info["pid"]):
                    left.append(f"pid {info['pid']}")
                if not left:
                    break
                time.sleep(0.1)
            assert not left, f"after {signal.Signals(sig).name} of the caller: {left}"
        finally:
            if caller.poll() is None:
                caller.kill()
                caller.wait()
