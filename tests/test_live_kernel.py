"""Kernel telemetry against real TCP: eBPF probes on a veth pair between two fresh namespaces.

Non-live tests (the histogram, observations, net_data rows) run anywhere; ``@pytest.mark.live``
ones need root and the kernel (skipped otherwise; failed under TOKENPACE_REQUIRE_LIVE=1).
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import math
import re
import statistics
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from live_timing import binomial_min_n, free_port_in, wait_until

import controllers
from live.kernel.netdata import COLUMNS, NetDataAggregator, NetDataWriter
from live.kernel.source import SocketStats
from live.kernel.telemetry import HostInterval, RttHistogram
from live.serve.pacing import ConnState, NullTelemetry, PacedStream, PacingLoop

INTERVAL_S = 0.1  # the scenario default control interval


# --------------------------------------------------------------------------- pure Python parts
def test_histogram_buckets_are_contiguous_and_quantile_is_within_bucket_width():
    h = RttHistogram()
    prev_hi = 0
    for i in range(h.nbuckets - 1):
        lo, hi = h.bounds(i)
        assert lo == prev_hi and hi > lo  # no gaps, no overlaps
        assert h.bucket(lo) == i and h.bucket(hi - 1) == i
        prev_hi = hi
    counts = [0] * h.nbuckets
    values = [100 + 10 * i for i in range(100)]  # 100..1090 us; nearest-rank p95 = 1040
    for v in values:
        counts[h.bucket(v)] += 1
    q = h.quantile(counts, 0.95)
    assert q is not None and abs(q - 1040) / 1040 < 0.07
    assert h.quantile([0] * h.nbuckets, 0.95) is None


def host(samples: int, avg: float | None, p95: float | None = None, retrans: int = 0) -> HostInterval:
    return HostInterval(t_s=1.0, wall_s=1700000000.1234, interval_s=1.0, sockets=1, samples=samples,
                        rtt_min_us=int(avg * 0.5) if avg else None, rtt_max_us=int(avg * 2) if avg else None,
                        rtt_avg_us=avg, rtt_p95_us=p95, retrans=retrans, acked_bytes=0)


def test_netdata_rows_keep_seed_columns_and_roll_over_intervals_with_samples(tmp_path: Path):
    assert COLUMNS == ("timestamp", "avg_rtt_us", "p95_rtt_us", "min_rtt_us", "max_rtt_us", "retrans_count",
                       "rtt_samples", "rolling_avg_rtt_us", "rolling_p95_rtt_us", "label")
    agg = NetDataAggregator(window=2)
    r1 = agg.add(host(10, 1000.0, 1500.0))
    r2 = agg.add(host(0, None, retrans=2))  # silence: zeros, does not drag the rolling means
    r3 = agg.add(host(10, 3000.0, 3500.0), label=1)
    assert (r1.rolling_avg_rtt_us, r1.rolling_p95_rtt_us) == (1000, 1500)
    assert (r2.avg_rtt_us, r2.p95_rtt_us, r2.min_rtt_us, r2.retrans_count, r2.rolling_avg_rtt_us) == (0, 0, 0, 2, 1000)
    assert (r3.rolling_avg_rtt_us, r3.rolling_p95_rtt_us, r3.label) == (3000, 3500, 1)  # window of 2: r1 fell out
    with NetDataWriter(tmp_path / "net_data.csv") as w:
        w.write(host(4, 800.0, 900.0))
    lines = (tmp_path / "net_data.csv").read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS)
    assert lines[1] == "1700000000.123,800,900,400,1600,0,4,800,900,0"


class FakeKernel:
    """The maps of tcp_telemetry.c, updated in Python the way the C does: drain() runs without root."""

    class Stats(ct.Structure):
        _fields_: ClassVar = [("samples", ct.c_uint64), ("srtt_sum_us", ct.c_uint64), ("retrans", ct.c_uint64),
                              ("acked_bytes", ct.c_uint64), ("last_ns", ct.c_uint64), ("srtt_us", ct.c_uint32),
                              ("cwnd", ct.c_uint32), ("ssthresh", ct.c_uint32), ("snd_wnd", ct.c_uint32),
                              ("inflight", ct.c_uint32), ("snd_una", ct.c_uint32), ("closed", ct.c_uint32),
                              ("mm_epoch", ct.c_uint32 * 2), ("mm_min", ct.c_uint32 * 2), ("mm_max", ct.c_uint32 * 2),
                              ("hist", ct.c_uint32 * RttHistogram().nbuckets)]

    class Key:
        def __init__(self, v: int) -> None:
            self.value = v

    def __init__(self) -> None:
        self.epoch = 0
        self.socks: dict[int, FakeKernel.Stats] = {}
        self.hist = RttHistogram()

    def __getitem__(self, name: bytes) -> Any:
        kernel = self

        class Epoch:
            def __setitem__(self, k: object, v: ct.c_uint32) -> None:
                kernel.epoch = v.value

        class Socks:
            def items(self) -> list[tuple[FakeKernel.Key, FakeKernel.Stats]]:
                return [(FakeKernel.Key(c), st) for c, st in kernel.socks.items()]

            def __delitem__(self, k: FakeKernel.Key) -> None:
                del kernel.socks[k.value]

        return {b"epoch": Epoch(), b"socks": Socks()}[name]

    def probe(self, cookie: int, srtt_us: int, snd_una: int, inflight: int = 0, cwnd: int = 10) -> None:
        st = self.socks.get(cookie)
        if st is None:
            st = self.socks[cookie] = FakeKernel.Stats()
            st.snd_una = snd_una
        st.samples += 1
        st.srtt_sum_us += srtt_us
        st.acked_bytes += (snd_una - st.snd_una) & 0xFFFFFFFF
        st.snd_una, st.srtt_us, st.cwnd, st.inflight = snd_una, srtt_us, cwnd, inflight
        st.ssthresh = 0x7FFFFFFF
        st.last_ns = time.monotonic_ns()
        slot = self.epoch & 1
        if st.mm_epoch[slot] != self.epoch or st.mm_min[slot] == 0:
            st.mm_epoch[slot], st.mm_min[slot], st.mm_max[slot] = self.epoch, max(1, srtt_us), srtt_us
        else:
            st.mm_min[slot] = min(st.mm_min[slot], max(1, srtt_us))
            st.mm_max[slot] = max(st.mm_max[slot], srtt_us)
        st.hist[self.hist.bucket(srtt_us)] += 1


def test_drain_turns_cumulative_maps_into_interval_stats():
    from live.kernel.telemetry import BccTelemetry

    kernel = FakeKernel()
    tel = BccTelemetry([8000], INTERVAL_S, idle_timeout_s=0.05)
    tel._bpf = kernel  # what start() would have loaded
    for i, rtt in enumerate([1000, 2000, 3000, 4000]):
        kernel.probe(7, rtt, snd_una=1000 * (i + 1), inflight=500)
    kernel.probe(9, 50_000, snd_una=5)
    d = tel.drain()
    s7 = d.stats[7]
    assert (s7.samples, s7.srtt_us, s7.rtt_min_us, s7.rtt_max_us) == (4, 4000, 1000, 4000)
    assert s7.acked_bytes == 3000 and s7.inflight_bytes == 500 and s7.ssthresh_pkts is None
    assert 3700 <= (s7.rtt_p95_us or 0) <= 4000  # its bucket, clamped to the max
    assert d.host.samples == 5 and d.host.rtt_min_us == 1000 and d.host.rtt_max_us == 50_000
    assert d.host.rtt_avg_us == pytest.approx((1000 + 2000 + 3000 + 4000 + 50_000) / 5)
    kernel.socks[7].retrans += 2  # a retransmit, no ACK: the interval still reports the socket
    kernel.probe(9, 60_000, snd_una=1505)
    d = tel.drain()
    assert (d.stats[7].samples, d.stats[7].retrans, d.stats[7].rtt_min_us, d.stats[7].srtt_us) == (0, 2, None, 4000)
    assert (d.stats[9].samples, d.stats[9].rtt_min_us, d.stats[9].acked_bytes) == (1, 60_000, 1500)
    time.sleep(0.06)  # idle past the timeout: forgotten, and removed from the map
    assert tel.drain().stats == {} and kernel.socks == {}


# --------------------------------------------------------------------------- the kernel
def ss_rtt_ms(pair, port: int) -> float | None:
    """`ss -ti`'s srtt (ms) of the established socket with local port ``port`` in namespace a."""
    out = pair.run("a", ["ss", "-tin", "state", "established", f"( sport = :{port} )"]).stdout
    m = re.search(r"\brtt:([\d.]+)/", out)
    return float(m.group(1)) if m else None


class OpenTransport:
    """The server side of a connection the test drives itself: open while the test runs."""

    def is_closing(self) -> bool:
        return False


LOSS_P = 0.1
# The loss window runs until the dropper has seen this many packets: enough that it drops >= 10 of them
# at 5 sigma (mean 40, sd 6), so the retransmit checks below never judge a rate from a handful.
LOSS_MIN_PKTS = binomial_min_n(LOSS_P, 10)


@pytest.mark.live
def test_probe_sees_retransmits_under_loss_and_ewma_slows_within_two_intervals(veth, bulk_flow):
    """A 100 Mbit/s flow, clean, then 10 % loss from the tc-bpf dropper. Every interval records the
    probe's retransmits and the packets the dropper passed and dropped (its counters are the truth
    about what was lost), so retransmits are judged against drops, and against the clean period's
    rate of retransmits per packet in the same run (a loaded machine makes a few spurious ones)."""
    from live.kernel.faults import FaultPlayer
    from live.kernel.telemetry import BccTelemetry
    from scenarios.schema import LossFault

    port = free_port_in(veth.ns_a)
    fault_at_s = 1.55  # mid-interval: the polls at 0.1 s multiples never straddle the switch
    # (t_s, stats, decided rate, packets passed, packets dropped by the dropper in the interval)
    rows: list[tuple[float, SocketStats | None, float, int, int]] = []
    with BccTelemetry([port], INTERVAL_S) as tel:
        player = FaultPlayer(veth.if_a, [LossFault(kind="loss", at_s=fault_at_s, duration_s=60, p=LOSS_P)],
                             netns=veth.ns_a, handle_signals=False, log=lambda m: None)
        # The dropper goes on before the flow starts: adding a clsact qdisc to a veth drops the packets
        # in flight on it, whose retransmits (up to an RTO later) would land in the clean period.
        with player, bulk_flow(veth, port, rate_bps=100e6) as flow:
            tel.poll()  # forget the handshake
            # the server's control path on the flow's socket: its connection, known by cookie, and a stream on it
            pacing = PacingLoop(NullTelemetry())
            pacing.conns[flow.cookie] = ConnState(OpenTransport(), flow.cookie)
            ps = PacedStream("bulk", pacing.conns[flow.cookie], controllers.make("ewma"), reading_tps=15.0,
                             arrival_s=0.0, prompt_tokens=0, output_tokens=1 << 30)
            pacing.register(ps)
            t0 = player.t0_s
            assert t0 is not None
            last = player.dropper_counters()
            next_t = t0 + INTERVAL_S * (1 + (time.monotonic() - t0) // INTERVAL_S)
            loss_pkts = 0
            while True:
                time.sleep(max(0.0, next_t - time.monotonic()))
                now = time.monotonic()
                s = tel.poll().get(flow.cookie)
                counters = player.dropper_counters()
                passed, dropped = counters[0] - last[0], counters[1] - last[1]
                last = counters
                pacing.tick(now, {} if s is None else {flow.cookie: s})
                assert ps.rate_tps is not None
                rows.append((now - t0, s, ps.rate_tps, passed, dropped))
                next_t += INTERVAL_S
                if now - t0 > fault_at_s:
                    loss_pkts += passed + dropped
                    if loss_pkts >= LOSS_MIN_PKTS and now - t0 > fault_at_s + 3 * INTERVAL_S:
                        break
                    assert now - t0 < fault_at_s + 20, f"the flow offered only {loss_pkts} packets under loss in 20 s"
    before = [r for r in rows if r[0] <= fault_at_s]  # the player cannot apply the loss before at_s
    after = [r for r in rows if r[0] > fault_at_s]
    retrans_before = sum(s.retrans for _, s, _, _, _ in before if s is not None)
    retrans_after = sum(s.retrans for _, s, _, _, _ in after if s is not None)
    pkts_before = sum(r[3] + r[4] for r in before)
    dropped = sum(r[4] for r in after)
    # the straddling interval passed clean packets too: the drop rate is judged from the ones after it
    offered_lossy = sum(r[3] + r[4] for r in after[1:])
    dropped_lossy = sum(r[4] for r in after[1:])
    spurious_expected = retrans_before * loss_pkts / max(1, pkts_before)
    print(f"\nloss {LOSS_P:.0%}: clean {pkts_before} pkts, probe retrans {retrans_before}; lossy {loss_pkts} pkts, "
          f"dropper dropped {dropped}, probe retrans {retrans_after} (clean rate predicts {spurious_expected:.1f}); "
          "rows t:retrans/samples/dropped:rate " + " ".join(
              f"{t:.2f}:{s.retrans if s else '-'}/{s.samples if s else '-'}/{d}:{r:.1f}" for t, s, r, _, d in rows))
    full_clean = [r for r in before[1:] if r[3] > 0]  # whole intervals in which the flow sent
    assert len(full_clean) >= 5 and sum(r[1] is not None and r[1].samples > 0 for r in full_clean) >= len(
        full_clean) - 1, "the probe saw no ACKs before the fault"
    # the dropper drops what it was asked to, judged over >= 400 packets (5 sigma)
    sd = math.sqrt(offered_lossy * LOSS_P * (1 - LOSS_P))
    assert abs(dropped_lossy - LOSS_P * offered_lossy) <= 5 * sd, (dropped_lossy, offered_lossy)
    # every dropped packet must be retransmitted (the last ones maybe after the window closed); on top
    # of the spurious retransmits the clean period's per-packet rate predicts
    assert retrans_after - spurious_expected >= max(5, dropped // 4), (retrans_after, spurious_expected, dropped)
    # the controller sees them: ewma slows within two intervals of the first drop
    first = next(i for i, r in enumerate(rows) if r[4] > 0)
    rate_before = rows[first - 1][2]
    assert min(r[2] for r in rows[first:first + 2]) < rate_before - 1.0, "ewma did not slow down within two intervals"


@pytest.mark.live
def test_tbf_rate_cut_raises_srtt_and_matches_ss(veth, bulk_flow):
    from live.kernel.faults import FaultPlayer
    from live.kernel.telemetry import BccTelemetry
    from scenarios.schema import RateFault

    port = free_port_in(veth.ns_a)
    cut_at_s = 1.5
    baseline: list[int] = []
    during: list[int] = []
    pairs: list[tuple[float, float]] = []  # (probe srtt ms, ss rtt ms)
    with BccTelemetry([port], INTERVAL_S) as tel, bulk_flow(veth, port) as flow:
        player = FaultPlayer(veth.if_a, [RateFault(kind="rate", at_s=cut_at_s, duration_s=60, rate_mbps=5)],
                             netns=veth.ns_a, handle_signals=False, log=lambda m: None)
        with player:
            tel.poll()
            t0 = player.t0_s
            assert t0 is not None
            next_t = time.monotonic() + INTERVAL_S
            # polls on a fixed schedule, and the cut's samples until there are enough of them: a loaded
            # machine makes each poll (and each `ss`) late, it does not make the test see fewer samples
            while len(during) < 8 or len(pairs) < 8:
                time.sleep(max(0.0, next_t - time.monotonic()))
                next_t = max(next_t + INTERVAL_S, time.monotonic())
                t = time.monotonic() - t0
                assert t < cut_at_s + 20, f"only {len(during)} srtt samples in 19 s under the cut"
                s = tel.poll().get(flow.cookie)
                if s is None or s.srtt_us is None or s.samples == 0:
                    continue
                if t < cut_at_s - 0.1:
                    baseline.append(s.srtt_us)
                elif t > cut_at_s + 1.0:  # the 64 KB queue has filled
                    during.append(s.srtt_us)
                    ss = ss_rtt_ms(veth, port)
                    if ss is not None:
                        pairs.append((s.srtt_us / 1000, ss))
    base_ms = statistics.median(baseline) / 1000
    cut_ms = statistics.median(during) / 1000
    errors = [abs(p - s) / s for p, s in pairs]
    print(f"\nsrtt baseline {base_ms:.3f} ms -> {cut_ms:.1f} ms under a 5 Mbit/s tbf "
          f"(x{cut_ms / base_ms:.0f}); vs ss: " + ", ".join(f"{p:.1f}/{s:.1f}" for p, s in pairs)
          + f"; median error {100 * statistics.median(errors):.1f}%")
    assert len(baseline) >= 5
    assert cut_ms >= 5 * base_ms
    assert cut_ms > 20  # a full 64 KB queue at 5 Mbit/s is ~105 ms; cubic keeps it partly full
    assert statistics.median(errors) <= 0.2
    assert sum(e <= 0.2 for e in errors) >= len(errors) / 2


@pytest.mark.live
def test_probe_snd_una_lags_one_ack_and_the_socket_count_does_not(live):
    """``tcp:tcp_probe`` fires before the ACK it sees is processed, so its snd_una misses the latest ACK
    -- for a stream that goes quiet, for good. The server therefore takes acked bytes from the socket
    (SIOCOUTQ, ``live.serve.pacing.ConnState.sync_kernel``), which is current."""
    import socket
    import threading

    from live.kernel.source import socket_cookie
    from live.kernel.telemetry import BccTelemetry
    from live.serve.pacing import SIOCOUTQ, _ioctl_int

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))  # the kernel's choice of a free port: nobody else holds it
    srv.listen()
    port = srv.getsockname()[1]
    with BccTelemetry([port], INTERVAL_S) as tel:
        cli = socket.create_connection(("127.0.0.1", port))
        conn, _ = srv.accept()
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(5.0)
            cookie = socket_cookie(conn)

            def read() -> None:
                with contextlib.suppress(OSError):
                    while cli.recv(65536):
                        pass

            threading.Thread(target=read, daemon=True).start()
            request = b"GET / HTTP/1.1\r\n\r\n"
            cli.sendall(request)  # the probe sees the request: counting starts
            got = b""
            while len(got) < len(request):  # here, the probe has fired for it
                got += conn.recv(len(request) - len(got))
            tel.poll()

            def unacked() -> int:
                return _ioctl_int(conn.fileno(), SIOCOUTQ)

            written = 0
            for _ in range(10):  # one token-sized write at a time, each acked before the next
                conn.send(b"x" * 256)
                written += 256
                # the receiver may delay its ACK (40 ms, later on a busy machine): wait for it
                wait_until(lambda: unacked() == 0, 10.0, "the ACK of a 256-byte write")
            probe_acked = sum(s.acked_bytes for s in (tel.poll().get(cookie),) if s is not None)
            socket_acked = written - unacked()
        finally:
            for s in (conn, cli, srv):
                s.close()
    print(f"\nwritten {written} B; probe's snd_una advanced {probe_acked} B; socket says {socket_acked} B acked")
    assert socket_acked == written
    assert probe_acked == written - 256, "tcp_probe no longer lags one ACK: revisit live.serve.pacing's module doc"
