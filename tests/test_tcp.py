"""One TCP connection over the link: timing, slow start, loss recovery, RTO, app-limited windows."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.link import BernoulliLoss, ConstantCapacity, GilbertElliottLoss, Link, LossModel
from sim.tcp import _LOST, _RETX_OUT, _SACKED, TcpConfig, TcpConnection

MSS = 1448


class ScriptedLoss(LossModel):
    """Loses the link's transmissions whose indices (0 = first packet offered) are listed."""

    def __init__(self, drop: set[int] | range) -> None:
        self.drop = set(drop)
        self.i = -1

    def lost(self, t_s: float) -> bool:
        self.i += 1
        return self.i in self.drop


class LoggingLink(Link):
    """A Link that remembers every transmission: (time, segment number, is a retransmission)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.log: list[tuple[float, int, bool]] = []
        self.sizes: list[int] = []

    def send(self, pkt, on_arrive):  # type: ignore[no-untyped-def]
        # a SYN-ACK (no sequence number) is logged as segment -1
        self.log.append((self._env.now, getattr(pkt, "n", -1), getattr(pkt, "retx", False)))
        self.sizes.append(pkt.size_bytes)
        return super().send(pkt, on_arrive)

    def retransmissions(self) -> list[tuple[float, int]]:
        return [(t, n) for t, n, retx in self.log if retx]


@dataclass
class Path:
    env: simpy.Environment
    link: LoggingLink
    conn: TcpConnection
    delivered: list[tuple[float, int]] = field(default_factory=list)
    acked: list[tuple[float, int]] = field(default_factory=list)


def make_path(
    rate_bps: float = 100e6,
    one_way_s: float = 0.02,
    queue_bytes: int = 10**8,
    loss: LossModel | None = None,
    bulk: bool = False,
    **cfg: object,
) -> Path:
    env = simpy.Environment()
    link = LoggingLink(env, ConstantCapacity(rate_bps), one_way_s, queue_bytes, loss)
    p = Path(env, link, None)  # type: ignore[arg-type]
    p.conn = TcpConnection(
        env,
        link,
        one_way_s,
        TcpConfig(**cfg),  # type: ignore[arg-type]
        on_delivered=lambda n: p.delivered.append((env.now, n)),
        on_acked=lambda n: p.acked.append((env.now, n)),
        bulk=bulk,
    )
    return p


def write_at(p: Path, t_s: float, nbytes: int) -> None:
    def proc():  # type: ignore[no-untyped-def]
        yield p.env.timeout(t_s - p.env.now)
        p.conn.write(nbytes)

    p.env.process(proc())


def cwnd_at(p: Path, times: list[float]) -> list[int]:
    out: list[int] = []

    def proc():  # type: ignore[no-untyped-def]
        for t in times:
            yield p.env.timeout(t - p.env.now)
            out.append(p.conn.cwnd)

    p.env.process(proc())
    p.env.run(until=times[-1] + 1e-9)
    return out


def test_small_write_is_delivered_after_one_way_delay_and_acked_after_one_rtt():
    p = make_path(rate_bps=100e6, one_way_s=0.02)
    p.conn.write(100)
    p.env.run(until=1.0)
    serialization_s = (100 + 52) * 8 / 100e6
    assert p.delivered == [(pytest.approx(0.02 + serialization_s, abs=1e-12), 100)]
    assert p.acked == [(pytest.approx(0.04 + serialization_s, abs=1e-12), 100)]
    assert p.conn.srtt_s == pytest.approx(0.04 + serialization_s)
    # srtt + max(4 rttvar, min_rto) = srtt + max(2 srtt, 0.2 s)
    assert p.conn.rto_s == pytest.approx(0.04 + serialization_s + 0.2)
    assert p.conn.drain_rtt_samples() == [pytest.approx(0.04 + serialization_s)]
    assert p.conn.drain_rtt_samples() == []


def test_nodelay_segmentation_sends_small_writes_at_once_and_coalesces_the_rest():
    p = make_path(init_cwnd_pkts=1)
    p.conn.write(100)  # goes at once, alone
    for _ in range(20):
        p.conn.write(100)  # cwnd is full: these wait and coalesce
    p.env.run(until=1.0)
    # after the first ACK cwnd is 2: the 2000 waiting bytes leave as one full and one partial segment
    assert p.link.sizes == [152, MSS + 52, 2000 - MSS + 52]
    assert p.conn.rcv_nxt == 2100


def test_slow_start_doubles_cwnd_every_rtt():
    p = make_path(rate_bps=1e9, one_way_s=0.05, bulk=True, cc="reno")
    assert cwnd_at(p, [0.05, 0.15, 0.25, 0.35, 0.45]) == [10, 20, 40, 80, 160]


def test_one_loss_is_repaired_by_fast_retransmit_with_head_of_line_blocking():
    # segment 4 of the first flight is lost; 5, 6, 7 arrive and are SACKed; the third SACK marks 4 lost
    p = make_path(rate_bps=100e6, one_way_s=0.02, loss=ScriptedLoss({4}), cc="reno")
    p.conn.write(30 * MSS)
    p.env.run(until=5.0)
    c = p.conn
    assert c.rto_events == 0 and c.retrans_segs == 1 and c.lost_segs_detected == 1 and c.recovery_events == 1
    ser_s = 1500 * 8 / 100e6
    # the retransmission leaves when the SACK of segment 7 (the 7th packet through the link) arrives
    [(t_retx, n)] = p.link.retransmissions()
    assert n == 4 and t_retx == pytest.approx(0.04 + 7 * ser_s, abs=1e-9)
    # in-order delivery: nothing beyond byte 4*MSS until the retransmission arrives, then a jump
    values = [v for _, v in p.delivered]
    assert values == sorted(values) and values[-1] == 30 * MSS
    held = [(t, v) for t, v in p.delivered if v == 4 * MSS]
    released = [(t, v) for t, v in p.delivered if v > 4 * MSS]
    assert held[-1][0] < 0.022
    t_release, v_release = released[0]
    assert 0.0605 < t_release < 0.0625  # one RTT after the third SACK, behind the new data queued
    assert v_release >= 10 * MSS  # 5..9 (and more) were waiting behind the hole
    assert c.ssthresh_pkts == pytest.approx(8.0)  # cwnd 16 at detection (10 + 4 ACKs + 2 SACKs), halved


def test_a_lost_retransmission_is_resent_without_waiting_for_the_rto():
    # segment 4 is lost twice: the original and its first retransmission
    p = make_path(rate_bps=100e6, one_way_s=0.02, cc="reno")
    dropped: list[tuple[int, bool]] = []
    forward = Link.send

    def lossy_send(pkt, on_arrive):  # type: ignore[no-untyped-def]
        p.link.log.append((p.env.now, pkt.n, pkt.retx))
        if pkt.n == 4 and len(dropped) < 2:
            dropped.append((pkt.n, pkt.retx))
            return True  # lost on the link
        return forward(p.link, pkt, on_arrive)

    p.link.send = lossy_send  # type: ignore[method-assign]
    p.conn.write(30 * MSS)
    p.env.run(until=5.0)
    c = p.conn
    [(t1, n1), (t2, n2)] = p.link.retransmissions()
    assert (n1, n2) == (4, 4) and dropped == [(4, False), (4, True)]
    assert t1 == pytest.approx(0.0408, abs=2e-4)
    # Resent once a segment sent after the first retransmission is SACKed. In recovery new data
    # leaves only when the pipe falls below the halved window, as the ACKs of the data sent at
    # ~40 ms return (~80 ms); its SACKs come back one RTT later: ~121 ms, not the RTO (~280 ms).
    assert t2 == pytest.approx(0.121, abs=0.002) and c.rto_events == 0
    assert c.lost_segs_detected == 2 and c.rcv_nxt == 30 * MSS


@pytest.mark.parametrize(("cc", "beta"), [("reno", 0.5), ("cubic", 0.7)])
def test_multiplicative_decrease(cc: str, beta: float):
    # segment 30 lost in slow start: at the third SACK, cwnd = 10 + 30 ACKs + 2 SACKs = 42
    p = make_path(rate_bps=1e9, one_way_s=0.05, loss=ScriptedLoss({30}), bulk=True, cc=cc)
    states: list[tuple[str, float]] = []

    def watch():  # type: ignore[no-untyped-def]
        while True:
            states.append((p.conn.state, p.conn.cwnd_pkts))
            yield p.env.timeout(0.001)

    p.env.process(watch())
    p.env.run(until=0.6)
    assert p.conn.ssthresh_pkts == pytest.approx(beta * 42)
    in_recovery = [w for s, w in states if s == "recovery"]
    assert in_recovery and all(w == pytest.approx(beta * 42) for w in in_recovery)  # no growth in recovery
    assert p.conn.retrans_segs == 1 and p.conn.rto_events == 0


def test_thin_stream_loss_is_repaired_when_the_next_segment_is_sacked():
    # one 200-byte token every 50 ms, RTT 40 ms; the 4th token's segment is lost. RACK marks it lost
    # as soon as the SACK of the 5th is back (it was sent 50 ms earlier, more than reo_wnd = 10 ms
    # before): no three duplicate ACKs (150 ms of tokens) and no RTO (~240 ms).
    p = make_path(rate_bps=100e6, one_way_s=0.02, loss=ScriptedLoss({3}), cc="cubic")
    for i in range(10):
        write_at(p, 0.05 * i, 200)
    p.env.run(until=3.0)
    c = p.conn
    [(t_retx, n)] = p.link.retransmissions()
    ser_s = 252 * 8 / 100e6
    assert n == 3 and t_retx == pytest.approx(0.20 + 0.04 + ser_s, abs=1e-6)
    assert c.rto_events == 0 and c.recovery_events == 1 and c.rcv_nxt == 2000


def test_a_lost_tail_is_found_by_the_loss_probe_not_the_rto():
    # After one RTT sample (40 ms), five segments leave at t=1; the last two are lost. The ACKs of
    # the first three re-arm the probe to 2 srtt + 2 ms after the last of them; the probe resends
    # segment 5, its SACK shows RACK that segment 4 is lost, and recovery resends it -- ~120 ms
    # after the tail left instead of the RTO's ~240 ms.
    p = make_path(rate_bps=100e6, one_way_s=0.02, loss=ScriptedLoss({4, 5}), cc="reno")
    p.conn.write(100)
    write_at(p, 1.0, 5 * MSS)
    p.env.run(until=5.0)
    c = p.conn
    retx = p.link.retransmissions()
    assert [n for _, n in retx] == [5, 4] and c.tlp_probes == 1 and c.rto_events == 0
    srtt = c.srtt_s
    t_probe, t_fix = (t for t, _ in retx)
    assert 1.04 + 0.08 < t_probe < 1.04 + 0.09  # 2 srtt + 2 ms after the ACKs of the first three
    assert t_fix == pytest.approx(t_probe + 0.04, abs=1e-3)  # one RTT later, when its SACK is back
    assert c.rcv_nxt == 100 + 5 * MSS and srtt is not None


def test_handshake_delays_the_request_and_seeds_the_rtt():
    p = make_path(rate_bps=100e6, one_way_s=0.02)
    c = p.conn
    est: list[float] = []
    c.connect(lambda: est.append(p.env.now))
    c.write(100)  # written before the handshake completes: waits for it
    p.env.run(until=1.0)
    synack_s = 60 * 8 / 100e6
    # SYN (20 ms) + SYN-ACK (serialisation + 20 ms) + ACK with the request (20 ms)
    assert est == [pytest.approx(0.06 + synack_s, abs=1e-9)]
    assert p.link.sizes[0] == 60 and p.delivered[0][0] == pytest.approx(0.08 + synack_s + 152 * 8 / 100e6)
    assert c.drain_rtt_samples() == [pytest.approx(0.04 + 152 * 8 / 100e6)]  # the data's own sample
    assert c.min_rtt_s == pytest.approx(0.04 + synack_s)  # the SYN-ACK's round trip came first


def test_a_lost_synack_is_resent_after_one_second():
    p = make_path(rate_bps=100e6, one_way_s=0.02, loss=ScriptedLoss({0}))
    est: list[float] = []
    p.conn.connect(lambda: est.append(p.env.now))
    p.env.run(until=5.0)
    assert est == [pytest.approx(1.02 + 0.04 + 60 * 8 / 100e6, abs=1e-9)]
    assert p.conn.srtt_s is None  # the SYN-ACK was resent: no sample (Linux's tcp_synack_rtt_meas)


def test_losing_a_whole_window_times_out_with_backoff():
    # the 10 segments of the first flight, the loss probe and the first RTO retransmission are lost
    p = make_path(loss=ScriptedLoss(range(12)), cc="reno")
    p.conn.write(10 * MSS)
    p.env.run(until=30.0)
    c = p.conn
    retx = p.link.retransmissions()
    # No RTT sample yet: the probe is due after the initial 1 s, when the RTO is, and goes first
    # (Linux keeps one timer), resending the last segment; the RTO restarts from the probe.
    assert retx[0] == pytest.approx((1.0, 9)) and c.tlp_probes == 1
    assert [t for t, _ in retx[1:3]] == pytest.approx([2.0, 4.0])  # RTO 1 s after the probe, then doubled
    assert [n for _, n in retx[1:3]] == [0, 0]
    assert c.rto_events == 2
    assert c.ssthresh_pkts == pytest.approx(5.0)  # flight 10 halved once, not again for the same data
    assert c.retrans_segs == 12  # the probe, segment 0 twice, then 1..9 as the window reopens (go-back-N)
    assert c.rcv_nxt == 10 * MSS and c.snd_una == 10 * MSS
    assert p.acked[0][0] == pytest.approx(4.04, abs=1e-3)
    # Every ACKed segment was retransmitted (Karn: no sequence-number sample), but with timestamps the
    # ACK of the retransmission sent at 4.0 s echoes its send time: a 40 ms sample, which also ends the
    # backed-off 4 s RTO (Linux's tcp_ack_update_rtt): srtt + max(4 rttvar, 200 ms).
    assert c.srtt_s == pytest.approx(0.04, rel=0.05)
    assert c.rto_s == pytest.approx(c.srtt_s + 0.2, rel=0.05)


def test_rto_timer_is_lazy_and_stops_when_all_is_acked():
    p = make_path(rate_bps=20e6, one_way_s=0.02, queue_bytes=100_000, bulk=True)
    p.env.run(until=5.0)
    # two events per packet (arrival, ACK) plus a few timer re-arms, not one timer event per ACK
    assert next(p.env._eid) <= 2 * p.link.sent_pkts + 100
    q = make_path()
    q.conn.write(5 * MSS)
    q.env.run(until=2.0)
    assert q.conn.rto_deadline_s is None and q.conn.rto_events == 0


def test_app_limited_flow_does_not_grow_cwnd():
    p = make_path(one_way_s=0.02)
    for k in range(100):
        write_at(p, 0.1 * k, 100)  # one small segment per 100 ms: never more than 1 in flight
    p.env.run(until=10.0)
    assert p.conn.cwnd == 10
    write_at(p, 10.05, 10**6)  # a burst after 50 ms: at most the window leaves at once
    p.env.run(until=10.05 + 1e-9)
    assert len([t for t, _, _ in p.link.log if t >= 10.05]) == 10


def test_cwnd_restarts_after_idle():
    p = make_path(rate_bps=100e6, one_way_s=0.02)
    p.conn.write(3 * 10**6)
    p.env.run(until=2.0)
    assert p.conn.rcv_nxt == 3 * 10**6 and p.conn.cwnd > 100
    write_at(p, 5.0, 10**6)  # idle for 3 s, many RTOs: back to the initial window
    p.env.run(until=5.0 + 1e-9)
    assert p.conn.cwnd == 10 and len([t for t, _, _ in p.link.log if t >= 5.0]) == 10


def test_delayed_ack_every_second_segment_and_timer_for_a_lone_one():
    p = make_path(one_way_s=0.02, ack_every_pkts=2, delack_s=0.04)
    p.conn.write(100)
    p.env.run(until=1.0)
    ser_s = 152 * 8 / 100e6
    assert p.acked == [(pytest.approx(0.02 + ser_s + 0.04 + 0.02), 100)]
    q = make_path(one_way_s=0.02, ack_every_pkts=2)
    q.conn.write(10 * MSS)
    q.env.run(until=1.0)
    assert len(q.acked) == 5 and q.acked[-1][1] == 10 * MSS


def test_close_stops_sending_and_receiving():
    p = make_path(bulk=True)
    p.env.run(until=0.5)
    sent = p.link.sent_pkts
    p.conn.close()
    p.env.run(until=3.0)
    assert p.link.sent_pkts == sent and p.conn.rto_events == 0


def test_same_seed_same_run():
    def run(seed: int) -> tuple[int, int, float]:
        p = make_path(rate_bps=20e6, loss=BernoulliLoss(0.01, np.random.default_rng(seed)), bulk=True)
        p.env.run(until=5.0)
        return p.conn.retrans_segs, p.conn.rcv_nxt, p.conn.cwnd_pkts

    assert run(3) == run(3) != run(4)


# ---------------------------------------------------------------------------- invariants under random loss


def check_scoreboard(c: TcpConnection) -> None:
    """Linux-style counters must equal a recount of the scoreboard."""
    out = c._segs[c._una_n - c._segs_base_n : c._next_n - c._segs_base_n]
    states = [s.state for s in out]
    assert c.packets_out == len(out)
    assert c.sacked_out == states.count(_SACKED)
    assert c.lost_out == states.count(_LOST) + states.count(_RETX_OUT)
    assert c.retrans_out == states.count(_RETX_OUT)
    assert c.snd_una == (out[0].seq if out else c.snd_max)
    assert c.snd_una <= c.rcv_nxt <= c.snd_max <= c.written_bytes
    assert c.in_flight_pkts >= 0


@settings(max_examples=40, deadline=None)
@given(
    cc=st.sampled_from(["reno", "cubic"]),
    p=st.floats(0.0, 0.2),
    burst=st.booleans(),
    writes=st.lists(st.tuples(st.floats(0.0, 3.0), st.integers(1, 60_000)), min_size=1, max_size=30),
    seed=st.integers(0, 2**16),
    ack_every=st.sampled_from([1, 2]),
)
def test_every_written_byte_arrives_in_order_whatever_is_lost(cc, p, burst, writes, seed, ack_every):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    loss = GilbertElliottLoss(p, 0.3, 0.9, 0.0, rng) if burst else BernoulliLoss(p, rng)
    p_ = make_path(rate_bps=5e6, one_way_s=0.03, queue_bytes=30_000, loss=loss, cc=cc, ack_every_pkts=ack_every)
    for t, n in writes:
        write_at(p_, t, n)

    def audit():  # type: ignore[no-untyped-def]
        while True:
            check_scoreboard(p_.conn)
            yield p_.env.timeout(0.0137)

    p_.env.process(audit())
    # stop the loss after 10 s so that everything can get through
    p_.env.run(until=10.0)
    p_.link.bottleneck.loss = None
    p_.env.run(until=400.0)
    total = sum(n for _, n in writes)
    values = [v for _, v in p_.delivered]
    assert values == sorted(values) and p_.conn.rcv_nxt == total == p_.conn.snd_una
    check_scoreboard(p_.conn)
    assert p_.conn.rto_deadline_s is None


def test_a_spurious_retransmission_still_gives_the_true_rtt_from_the_echoed_timestamp():
    """A 1.4 s round trip against the initial 1 s RTO: the segment is resent at 1 s, spuriously -- the
    original arrives at 0.7 s. Its ACK echoes the original's send time, as Linux's timestamps do, so
    the sample is the true 1.4 s rather than the 0.4 s since the resend."""
    p = make_path(rate_bps=100e6, one_way_s=0.7)
    p.conn.write(100)
    p.env.run(until=3.0)
    c = p.conn
    assert c.retrans_segs == 1 and p.link.retransmissions()[0][0] == pytest.approx(1.0)
    assert c.srtt_s == pytest.approx(1.4, abs=1e-3)
