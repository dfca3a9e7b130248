"""One TCP connection, packet by packet: a sender and a receiver joined by a `Link` and a `DelayLine`.

The server writes bytes; the sender cuts them into segments (TCP_NODELAY: a write goes out at once
as far as the congestion window allows, the rest waits and is later sent in MSS-sized pieces) and
hands them to the downlink. The receiver delivers bytes in order -- a lost segment holds back
everything behind it until its retransmission arrives (head-of-line blocking) -- and answers with
cumulative ACKs that also say which out-of-order segment just arrived (the SACK information),
carried back over an uncongested reverse path.

The sender is a compact Linux-flavoured TCP:
- connection set-up: `connect()` plays the three-way handshake over the path (the SYN-ACK queues on
  the downlink and may be lost); its round trip seeds srtt and the RTO, as Linux's does;
- congestion control: slow start, then Reno (AIMD, beta 0.5) or CUBIC (RFC 9438, beta 0.7);
- loss detection: RACK (RFC 8985, Linux's defaults). Once a segment sent later is known delivered,
  an outstanding one is lost when ``sent + rack_rtt + reo_wnd`` has passed, reo_wnd being min_rtt/4
  while open with fewer than three SACKed segments and 0 otherwise (no reordering is ever seen
  here). A thin stream -- a token per segment -- thus repairs a loss as soon as the next token's
  SACK returns. The RFC 6675 DupThresh rule (three SACKs above a hole) stays, as in Linux. A lost
  retransmission is found the same way (a segment sent after it arrived);
- tail loss probe (RFC 8985 7, Linux's PTO: 2 srtt + 2 ms, or + the minimum RTO with a single
  segment out, never later than the RTO): new data, or the last segment again, so that a lost
  tail is found by RACK rather than the RTO;
- recovery: a SACK scoreboard (RFC 6675); every lost segment is retransmitted once per recovery
  before new data, within `pipe < cwnd` -- the first one at once (fast retransmit), whatever the
  pipe, as RFC 6675 and Linux's PRR do. New data keeps flowing on the first duplicate ACKs because
  SACKed segments leave the pipe (limited transmit, RFC 3042). One multiplicative decrease per
  recovery episode; cwnd = ssthresh for its duration (RFC 6675; Linux would use PRR to get there
  gradually);
- RTT and RTO: RFC 6298's srtt/rttvar, with the 200 ms floor applied as Linux does (RTO =
  srtt + max(4 rttvar, min_rto)); samples follow Karn's rule (never from a segment that was
  retransmitted; no timestamps), taken like Linux from the oldest newly cumulatively-ACKed segment,
  else from the newly SACKed one. On RTO: exponential backoff, ssthresh reduced once per episode,
  cwnd = 1, and every un-SACKed outstanding segment marked lost and resent as the window reopens
  (Linux's go-back-N);
- app-limited flows: cwnd grows only while the flow is cwnd-limited (Linux's `is_cwnd_limited`),
  and after an idle longer than the RTO the window restarts (slow start after idle, RFC 5681 §4.1).

Not modelled: the cwnd reduction when a loss probe turns out to have repaired a loss (Linux's
TLP loss detection), receive-window limits (the receiver buffer is unbounded), PRR, HyStart, ECN,
FIN, the SYN's own loss (the reverse path is lossless).

Performance: no SimPy process anywhere. A data segment costs two scheduled events (arrival at the
receiver, its ACK's arrival at the sender); the RTO timer is lazy (one pending event at a time, a
deadline that ACKs merely move). Segment objects double as the sender's scoreboard entries.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from heapq import heappush
from typing import Any, Literal

import simpy
from simpy.events import NORMAL, Event

from sim.link import DelayLine, Link, call_at

__all__ = ["Segment", "TcpConfig", "TcpConnection"]

_OPEN, _RECOVERY, _LOSS = 0, 1, 2  # Linux's CA_Open, CA_Recovery, CA_Loss
_RTT_SAMPLES_KEPT = 100_000  # undrained samples beyond this are discarded (bulk flows nobody drains)
_TLP_MIN_S = 0.002  # Linux TCP_TIMEOUT_MIN: the PTO's slack when several segments are out
_SYNACK_TIMEOUT_S = 1.0  # Linux TCP_TIMEOUT_INIT: the first SYN-ACK retransmission, then doubled
_SYNACK_RETRIES = 5  # net.ipv4.tcp_synack_retries
_SYNACK_BYTES = 60  # IP + TCP header with the SYN options (MSS, SACK-permitted, timestamps, wscale)
_new_event = Event.__new__  # ACKs are scheduled as link.call_at does it (see there)


@dataclass(frozen=True)
class TcpConfig:
    """Per-connection TCP settings (Linux defaults).

    `ack_every_pkts` = 1 ACKs every segment (quickack); 2 is classic delayed ACK, with a
    `delack_s` timer for a lone segment. It sets Mathis' constant: throughput =
    MSS/RTT * sqrt(3/(2 b p)) for b segments per ACK, i.e. sqrt(3/2) ~ 1.22 for b = 1.
    """

    cc: Literal["reno", "cubic"] = "cubic"
    mss_bytes: int = 1448
    header_bytes: int = 52  # per segment on the wire (IP + TCP + timestamps)
    init_cwnd_pkts: int = 10
    min_rto_s: float = 0.2  # Linux
    max_rto_s: float = 120.0
    init_rto_s: float = 1.0
    ack_every_pkts: int = 1
    delack_s: float = 0.04  # Linux's minimum delayed-ACK timeout; used only when ack_every_pkts > 1
    slow_start_after_idle: bool = True  # net.ipv4.tcp_slow_start_after_idle

    def __post_init__(self) -> None:
        if self.cc not in ("reno", "cubic"):
            raise ValueError(f"cc must be 'reno' or 'cubic', got {self.cc!r}")
        if self.mss_bytes <= 0 or self.header_bytes < 0 or self.init_cwnd_pkts < 1 or self.ack_every_pkts < 1:
            raise ValueError("mss_bytes, init_cwnd_pkts and ack_every_pkts must be positive")
        if not 0 < self.min_rto_s <= self.init_rto_s <= self.max_rto_s:
            raise ValueError("need 0 < min_rto_s <= init_rto_s <= max_rto_s")


# Scoreboard states of a segment (mutually exclusive).
_IN_FLIGHT = 0  # sent, fate unknown
_SACKED = 1  # the receiver holds it out of order
_LOST = 2  # marked lost, waiting for its retransmission
_RETX_OUT = 3  # marked lost and retransmitted; the retransmission is in flight


class Segment:
    """A data segment; the same object is the sender's scoreboard entry and every copy on the wire.

    `seq`/`end` are payload byte offsets; `size_bytes` includes headers. `n` numbers segments in
    send order. `state` is the scoreboard state (in flight, SACKed, lost, retransmission out);
    `retx` (retransmitted at least once) is what Karn's rule checks. `sent_t` is the latest
    transmission's time; `echo_t` the send time of the copy that last reached the receiver, which is
    what its ACK echoes as a TCP timestamp (the original's until a retransmission arrives instead).
    """

    __slots__ = ("conn", "echo_t", "end", "n", "retx", "sent_t", "seq", "size_bytes", "state")

    def __init__(self, conn: TcpConnection, n: int, seq: int, end: int, size_bytes: int, sent_t: float) -> None:
        self.conn = conn
        self.n = n
        self.seq = seq
        self.end = end
        self.size_bytes = size_bytes
        self.sent_t = sent_t
        self.echo_t = sent_t
        self.state = _IN_FLIGHT
        self.retx = False

    def __repr__(self) -> str:
        return f"Segment(n={self.n}, [{self.seq}, {self.end}), state={self.state}, retx={self.retx})"


class _LazyTimer:
    """A timer whose deadline moves often (every ACK restarts the RTO) but fires seldom: one pending
    SimPy event at a time. Moving the deadline later costs nothing; an event that finds the deadline
    moved later waits again; moving it earlier schedules a new event (the older one, carrying an
    older token, is ignored when it fires). ``on_due(deadline)`` runs once the deadline has come;
    the deadline is cleared first, so ``on_due`` may set a new one."""

    __slots__ = ("_cb", "_env", "_on_due", "_token", "at", "deadline")

    def __init__(self, env: simpy.Environment, on_due: Callable[[float], None]) -> None:
        self._env = env
        self._on_due = on_due
        self._cb = self._wake  # made once: handed to call_at every time
        self._token = 0
        self.at: float | None = None  # when the one live event fires
        self.deadline: float | None = None  # None: not armed

    def set(self, deadline_s: float) -> None:
        self.deadline = deadline_s
        at = self.at
        if at is None or deadline_s < at:
            self._token += 1
            self.at = deadline_s
            call_at(self._env, deadline_s, self._cb, self._token)

    def set_earliest(self, deadline_s: float) -> None:
        """Arm for ``deadline_s`` unless already armed for earlier."""
        if self.deadline is None or deadline_s < self.deadline:
            self.set(deadline_s)

    def _wake(self, ev: Event) -> None:
        if ev.value != self._token:
            return  # superseded by an event scheduled for an earlier deadline
        self.at = None
        deadline_s = self.deadline
        if deadline_s is None:
            return
        if deadline_s > self._env.now:
            self.at = deadline_s  # the deadline moved while this event waited: wait again
            call_at(self._env, deadline_s, self._cb, self._token)
            return
        self.deadline = None
        self._on_due(deadline_s)


class _Control:
    """A packet without data (the SYN-ACK): all the link needs is its size."""

    __slots__ = ("size_bytes",)

    def __init__(self, size_bytes: int) -> None:
        self.size_bytes = size_bytes


class _Reno:
    """AIMD: +1 segment per RTT in congestion avoidance, halve on loss."""

    beta = 0.5

    def cong_avoid(self, c: TcpConnection, acked_pkts: int, now: float) -> None:
        cwnd = c.cwnd_pkts
        if cwnd < c.ssthresh_pkts:
            cwnd, acked_pkts = _slow_start(c, cwnd, acked_pkts)
            if acked_pkts <= 0:
                c.cwnd_pkts = cwnd
                return
        c.cwnd_pkts = cwnd + acked_pkts / cwnd

    def on_congestion(self, c: TcpConnection) -> float:
        return max(c.cwnd_pkts * self.beta, 2.0)

    def on_timeout(self, c: TcpConnection, flight_pkts: int) -> float:
        return max(flight_pkts * self.beta, 2.0)  # RFC 5681 (4): FlightSize / 2

    def on_tx_start(self, idle_s: float) -> None:
        pass


class _Cubic:
    """CUBIC (RFC 9438) with Linux's arithmetic.

    After a loss the window follows W(t) = W_max + C (t - K)^3, t since the reduction. Per ACKed
    segment cwnd grows by (target - cwnd) / cwnd where target = W(t + RTT) clamped to
    [cwnd, 1.5 cwnd]; in the Reno-friendly region (a Reno flow would be ahead of the curve) at the
    Reno estimate's pace instead. Like Linux's `bictcp_update`, the per-ACK increment (and the
    Reno estimate) is recomputed only when cwnd crosses an integer or 1/32 s has passed.
    """

    beta = 0.7
    c_scale = 0.4  # C, segments / s^3
    alpha_reno = 3 * (1 - 0.7) / (1 + 0.7)  # Reno-friendly additive increase, ~0.53 segments per RTT
    fast_convergence = True
    recompute_s = 1 / 32  # Linux: HZ / 32

    def __init__(self) -> None:
        self.w_max = 0.0
        self.cwnd_prior = 0.0
        self.epoch_start_s: float | None = None
        self.k_s = 0.0
        self.origin = 0.0
        self.w_est = 0.0
        self.inc_per_ack = 0.0
        self._acked_pkts = 0  # ACKed segments not yet credited to w_est (Linux's ack_cnt)
        self._cwnd_ceiling = 0.0  # recompute when cwnd reaches this (the next integer) ...
        self._next_update_s = -math.inf  # ... or at this time

    def cong_avoid(self, c: TcpConnection, acked_pkts: int, now: float) -> None:
        cwnd = c.cwnd_pkts
        if cwnd < c.ssthresh_pkts:
            cwnd, acked_pkts = _slow_start(c, cwnd, acked_pkts)
            if acked_pkts <= 0:
                c.cwnd_pkts = cwnd
                return
        self._acked_pkts += acked_pkts
        if cwnd >= self._cwnd_ceiling or now >= self._next_update_s:
            self._update(cwnd, now, c.srtt_s or 0.0)
        c.cwnd_pkts = cwnd + self.inc_per_ack * acked_pkts

    def _update(self, cwnd: float, now: float, rtt_s: float) -> None:
        self._cwnd_ceiling = math.floor(cwnd) + 1.0
        self._next_update_s = now + self.recompute_s
        if self.epoch_start_s is None:
            self.epoch_start_s = now
            if cwnd < self.w_max:
                self.k_s = ((self.w_max - cwnd) / self.c_scale) ** (1 / 3)
                self.origin = self.w_max
            else:
                self.k_s = 0.0
                self.origin = cwnd
            self.w_est = cwnd
            self._acked_pkts = 0
        # RFC 9438 4.3: the Reno estimate; its slope becomes 1 once past the previous maximum.
        alpha = 1.0 if self.w_est >= self.cwnd_prior else self.alpha_reno
        self.w_est += alpha * self._acked_pkts / cwnd
        self._acked_pkts = 0
        # RFC 9438 4.2: aim for where the curve will be one RTT from now.
        target = self.origin + self.c_scale * (now - self.epoch_start_s + rtt_s - self.k_s) ** 3
        target = min(target, 1.5 * cwnd)
        # Below the target grow towards it; at or above it, creep (Linux: 1 segment per 100 cwnd ACKs).
        inc = (target - cwnd) / cwnd if target > cwnd else 0.01 / cwnd
        if self.w_est > cwnd:
            inc = max(inc, (self.w_est - cwnd) / cwnd)  # Reno-friendly region
        self.inc_per_ack = inc

    def _remember_max(self, cwnd: float) -> None:
        # Fast convergence: a flow that lost before reaching its last maximum releases bandwidth.
        if cwnd < self.w_max and self.fast_convergence:
            self.w_max = cwnd * (1 + self.beta) / 2
        else:
            self.w_max = cwnd
        self.cwnd_prior = cwnd
        self.epoch_start_s = None
        self._next_update_s = -math.inf

    def on_congestion(self, c: TcpConnection) -> float:
        self._remember_max(c.cwnd_pkts)
        return max(c.cwnd_pkts * self.beta, 2.0)

    def on_timeout(self, c: TcpConnection, flight_pkts: int) -> float:
        # RFC 9438 4.8: on a timeout follow Reno (cwnd = 1) but take ssthresh with beta_cubic.
        self._remember_max(c.cwnd_pkts)
        return max(flight_pkts * self.beta, 2.0)

    def on_tx_start(self, idle_s: float) -> None:
        # Linux (CA_EVENT_TX_START): the curve does not advance while nothing was in flight.
        if self.epoch_start_s is not None:
            self.epoch_start_s += idle_s


def _slow_start(c: TcpConnection, cwnd: float, acked_pkts: int) -> tuple[float, int]:
    """+1 per ACKed segment up to ssthresh; returns the new cwnd and the ACKs left over for CA."""
    new = min(cwnd + acked_pkts, max(c.ssthresh_pkts, cwnd))
    return new, acked_pkts - int(new - cwnd)


class TcpConnection:
    """One TCP connection over a downlink `Link` (data) and a reverse `DelayLine` (ACKs).

    Callbacks: `on_delivered(rcv_nxt)` when in-order data reaches the receiving application,
    `on_acked(snd_una)` when the sender learns of it, `on_sent(snd_max)` when new data first
    leaves. `bulk=True` gives the sender an endless backlog (cross traffic, tests). The state
    below is plain attributes, read by telemetry at any time.
    """

    __slots__ = (
        "_ack_cb",
        "_ack_delay_s",
        "_ack_line",
        "_bulk",
        "_cc",
        "_cwnd_limited",
        "_cwnd_usage_seq",
        "_delack_pending",
        "_env",
        "_header_bytes",
        "_last_send_s",
        "_link",
        "_lost_q",
        "_mark_n",
        "_max_packets_out",
        "_mss_bytes",
        "_next_n",
        "_ooo",
        "_rack_rtt_s",
        "_rack_scan_n",
        "_rack_top_n",
        "_rack_xmit_s",
        "_recovery_point",
        "_reo",
        "_retx_fifo",
        "_rto",
        "_rto_backoffs",
        "_rtt_samples",
        "_rx_cb",
        "_sack_top",
        "_segs",
        "_segs_base_n",
        "_state",
        "_tlp",
        "_tlp_high_seq",
        "_una_n",
        "_unacked_in_order",
        "acked_log",
        "cfg",
        "closed",
        "cwnd_pkts",
        "established",
        "lost_out",
        "lost_segs_detected",
        "min_rtt_s",
        "name",
        "on_acked",
        "on_delivered",
        "on_sent",
        "packets_out",
        "rcv_nxt",
        "recovery_events",
        "retrans_out",
        "retrans_segs",
        "rto_events",
        "rto_s",
        "rttvar_s",
        "sacked_out",
        "sent_log",
        "snd_max",
        "snd_una",
        "srtt_s",
        "ssthresh_pkts",
        "tlp_probes",
        "written_bytes",
    )

    def __init__(
        self,
        env: simpy.Environment,
        link: Link,
        ack_delay_s: float,
        cfg: TcpConfig,
        on_delivered: Callable[[int], None] | None = None,
        on_acked: Callable[[int], None] | None = None,
        on_sent: Callable[[int], None] | None = None,
        bulk: bool = False,
        name: str = "",
        log_progress: bool = False,
    ) -> None:
        self._env = env
        self._link = link
        self._ack_line = DelayLine(env, ack_delay_s)
        self._ack_delay_s = self._ack_line.delay_s
        self.cfg = cfg
        self._mss_bytes = cfg.mss_bytes
        self._header_bytes = cfg.header_bytes
        self.on_delivered = on_delivered
        self.on_acked = on_acked
        self.on_sent = on_sent
        # With log_progress, every move of snd_max / snd_una is logged as (time, new value) in
        # sent_log / acked_log: what a per-token record needs, without a Python call per packet.
        self.sent_log: tuple[list[float], list[int]] | None = ([], []) if log_progress else None
        self.acked_log: tuple[list[float], list[int]] | None = ([], []) if log_progress else None
        self._bulk = bulk
        self.name = name
        self.closed = False
        self._cc: _Reno | _Cubic = _Cubic() if cfg.cc == "cubic" else _Reno()
        # Bound methods made once: they are handed to the link, the ACK path and the timer per packet.
        self._rx_cb = self._on_segment
        self._ack_cb = self._on_ack
        self._rto = _LazyTimer(env, self._on_rto_due)
        self._reo = _LazyTimer(env, self._on_reo_due)  # RACK's reordering window
        self._tlp = _LazyTimer(env, self._on_tlp_due)  # the tail loss probe
        self.established = True  # False from connect() until the handshake's last ACK reaches the server

        # Sender: byte sequence state.
        self.written_bytes = 0
        self.snd_una = 0
        self.snd_max = 0
        # Scoreboard: segments n in [_una_n, _next_n) are outstanding; segment n is _segs[n - _segs_base_n]
        # (retired ones, below _una_n, are None until the list is trimmed).
        self._segs: list[Segment | None] = []
        self._segs_base_n = 0
        self._una_n = 0
        self._next_n = 0
        # Linux's counters: in flight (pipe) = packets_out - sacked_out - lost_out + retrans_out.
        self.packets_out = 0
        self.sacked_out = 0
        self.lost_out = 0
        self.retrans_out = 0
        self._lost_q: deque[Segment] = deque()  # marked lost, in order, retransmission not yet sent
        self._retx_fifo: deque[tuple[float, Segment]] = deque()  # retransmissions in flight, in send order
        # Numbers of the three highest SACKed segments, descending: a hole below the third is lost
        # (RFC 6675 DupThresh = 3).
        self._sack_top = [-1, -1, -1]
        self._mark_n = 0  # segments below this number have been checked against the loss rule
        # RACK (RFC 8985) for first transmissions: the most recently sent segment known delivered
        # (its send time, its RTT and its number), and how far the holes below it have been checked.
        self._rack_xmit_s = -math.inf
        self._rack_rtt_s = 0.0
        self._rack_top_n = -1
        self._rack_scan_n = 0
        # Tail loss probe (RFC 8985 7): one probe per episode, until snd_una passes _tlp_high_seq.
        self._tlp_high_seq: int | None = None

        # Congestion control.
        self.cwnd_pkts = float(cfg.init_cwnd_pkts)
        self.ssthresh_pkts = math.inf
        self._state = _OPEN
        self._recovery_point = 0  # snd_max when the current recovery began; it ends once this is ACKed
        self._cwnd_limited = False
        self._max_packets_out = 0
        self._cwnd_usage_seq = 0
        self._last_send_s: float | None = None

        # RTT and the lazy RTO timer.
        self.srtt_s: float | None = None
        self.rttvar_s = 0.0
        self.min_rtt_s: float | None = None
        self.rto_s = cfg.init_rto_s
        self._rto_backoffs = 0  # timeouts since data was last newly ACKed
        self._rtt_samples: list[float] = []

        # Counters.
        self.retrans_segs = 0
        self.lost_segs_detected = 0
        self.recovery_events = 0  # fast recoveries entered (Linux's TCPSackRecovery)
        self.rto_events = 0
        self.tlp_probes = 0

        # Receiver.
        self.rcv_nxt = 0
        self._ooo: dict[int, int] = {}  # out-of-order segments held: seq -> end
        self._unacked_in_order = 0
        self._delack_pending = False

        if bulk:
            self._push()

    # ---------------------------------------------------------------- derived state

    @property
    def cwnd(self) -> int:
        return int(self.cwnd_pkts)

    @property
    def snd_nxt(self) -> int:
        """Next new byte to send. Like Linux, retransmissions come from the scoreboard and never
        rewind it, so it equals `snd_max`."""
        return self.snd_max

    @property
    def rto_deadline_s(self) -> float | None:
        """When the retransmission timer expires (None: not armed)."""
        return self._rto.deadline

    @property
    def delivered_bytes(self) -> int:
        """Bytes delivered in order to the receiving application (= `rcv_nxt`)."""
        return self.rcv_nxt

    @property
    def in_flight_pkts(self) -> int:
        """Segments believed to be in the network (RFC 6675 pipe, Linux `tcp_packets_in_flight`)."""
        return self.packets_out - self.sacked_out - self.lost_out + self.retrans_out

    @property
    def state(self) -> str:
        return ("open", "recovery", "loss")[self._state]

    def drain_rtt_samples(self) -> list[float]:
        """RTT samples (s) taken since the last drain (the last `_RTT_SAMPLES_KEPT` of them)."""
        out = self._rtt_samples
        if not out:
            return []
        self._rtt_samples = []  # hand the list over rather than copy it: telemetry drains every stream often
        return out if len(out) <= _RTT_SAMPLES_KEPT else out[-_RTT_SAMPLES_KEPT:]

    # ---------------------------------------------------------------- connection set-up

    def connect(self, on_established: Callable[[], None]) -> None:
        """The three-way handshake, the client opening: its SYN crosses the reverse path, the
        server's SYN-ACK the downlink (queued behind other traffic; if lost it is resent after
        1 s, 2 s, ... as Linux does), and the client's ACK, carrying the request, the reverse path
        again. When that reaches the server the connection is established: the SYN-ACK's round
        trip seeds srtt and the RTO (Linux's `tcp_synack_rtt_meas`: none if the SYN-ACK was resent --
        the lab shows it: a stream whose SYN-ACK and then first token were lost waits ~1 s more for a
        probe with no srtt) and ``on_established()`` runs -- the request has arrived. Data written
        before then waits."""
        self.established = False
        state: dict[str, Any] = {"sent_s": [], "client_has_it": False}

        def synack_arrived(_pkt: object) -> None:
            if self.closed or state["client_has_it"]:
                return
            state["client_has_it"] = True
            call_at(self._env, self._env.now + self._ack_delay_s, request_arrived)

        def request_arrived(_ev: Event) -> None:
            if self.closed:
                return
            sent = state["sent_s"]
            if len(sent) == 1:
                self._rtt_sample(self._env.now - sent[0])
            self.established = True
            on_established()
            self._push()

        def send_synack(_ev: Event | None = None) -> None:
            if self.closed or state["client_has_it"]:
                return
            tries = len(state["sent_s"])
            if tries > _SYNACK_RETRIES:
                return  # Linux gives up on the half-open connection; the reader's patience ends it
            state["sent_s"].append(self._env.now)
            self._link.send(_Control(_SYNACK_BYTES), synack_arrived)
            call_at(self._env, self._env.now + _SYNACK_TIMEOUT_S * 2**tries, send_synack)

        call_at(self._env, self._env.now + self._ack_delay_s, send_synack)  # the SYN reaches the server

    # ---------------------------------------------------------------- application side

    def write(self, nbytes: int) -> None:
        """The application writes `nbytes` (the send buffer is unbounded); sends what cwnd allows now."""
        if self.closed or nbytes <= 0:
            return
        if self.packets_out == 0 and self._last_send_s is not None and self.cfg.slow_start_after_idle:
            idle_s = self._env.now - self._last_send_s
            if idle_s > self.rto_s:
                self._restart_after_idle(idle_s)
        self.written_bytes += nbytes
        self._push()

    def close(self) -> None:
        """Abort: stop sending and receiving. Pending timers find the connection closed and return."""
        self.closed = True
        self._rto.deadline = self._tlp.deadline = self._reo.deadline = None

    def _restart_after_idle(self, idle_s: float) -> None:
        """Linux `tcp_cwnd_restart`: halve cwnd per RTO of idleness, down to the initial window."""
        cwnd = self.cwnd_pkts
        restart = min(float(self.cfg.init_cwnd_pkts), cwnd)
        if self._state == _OPEN:
            self.ssthresh_pkts = max(self.ssthresh_pkts, 0.75 * cwnd)
        delta_s = idle_s - self.rto_s
        while delta_s > 0 and cwnd > restart:
            cwnd = float(int(cwnd) >> 1)
            delta_s -= self.rto_s
        self.cwnd_pkts = max(cwnd, restart)

    # ---------------------------------------------------------------- sender

    def _push(self) -> None:
        """Send what the window allows: retransmissions of lost segments first, then new data."""
        if self.closed or not self.established:
            return
        in_flight = self.packets_out - self.sacked_out - self.lost_out + self.retrans_out
        # `in_flight < int(cwnd)`, without the int(): for an integer i, i < floor(c) iff i + 1 <= c.
        room = in_flight + 1 <= self.cwnd_pkts
        if room:
            if not (self._bulk or self._lost_q or self.written_bytes > self.snd_max):
                return  # app-limited with nothing to send: the common case on an ACK of a token stream
            in_flight = self._send(in_flight)
            room = in_flight + 1 <= self.cwnd_pkts
        # Linux `tcp_cwnd_validate`: remember, per window of data, whether cwnd was the limit.
        if (
            not room
            or self.snd_una >= self._cwnd_usage_seq
            or (not self._cwnd_limited and self.packets_out > self._max_packets_out)
        ):
            self._cwnd_limited = not room
            self._max_packets_out = self.packets_out
            self._cwnd_usage_seq = self.snd_max

    def _send(self, in_flight: int) -> int:
        """Send segments while `in_flight < cwnd` and there is something to send; return in_flight."""
        now = self._env.now
        cwnd = self.cwnd_pkts
        link_send = self._link.send
        rx = self._rx_cb
        lost_q = self._lost_q
        mss = self._mss_bytes
        snd_max0 = snd_max = self.snd_max
        in_flight0 = in_flight
        while in_flight + 1 <= cwnd:
            if lost_q:
                seg = self._next_lost()
                if seg is not None:
                    self._retransmit(seg, now)
                    in_flight += 1
                    continue
            avail = mss if self._bulk else self.written_bytes - snd_max
            if avail <= 0:
                break
            size = mss if avail > mss else avail
            seg = Segment(self, self._next_n, snd_max, snd_max + size, size + self._header_bytes, now)
            snd_max += size
            self._segs.append(seg)
            self._next_n += 1
            self.packets_out += 1
            in_flight += 1
            link_send(seg, rx)
        if in_flight == in_flight0:
            return in_flight  # the lost queue held only stale entries
        if in_flight0 == 0 and self._last_send_s is not None:
            self._cc.on_tx_start(now - self._last_send_s)
        self._last_send_s = now
        if self._rto.deadline is None:
            self._rto.set(now + self.rto_s)
        if snd_max != snd_max0:
            self.snd_max = snd_max
            if self._bulk:
                self.written_bytes = snd_max
            if self.sent_log is not None:
                self.sent_log[0].append(now)
                self.sent_log[1].append(snd_max)
            if self.on_sent is not None:
                self.on_sent(snd_max)
            if self._state == _OPEN:
                self._arm_tlp(now)
        return in_flight

    def _retransmit(self, seg: Segment, now: float) -> None:
        seg.state = _RETX_OUT
        seg.retx = True
        seg.sent_t = now
        self.retrans_out += 1
        self.retrans_segs += 1
        self._retx_fifo.append((now, seg))
        self._link.send(seg, self._retx_copy(now))
        if seg.n == self._una_n:
            # Linux: resending the head restarts the timer, which gives the repair a full RTO.
            self._rto.set(now + self.rto_s)

    def _next_lost(self) -> Segment | None:
        """Pop the lowest segment still waiting for its retransmission (stale entries are skipped)."""
        lost_q = self._lost_q
        while lost_q:
            s = lost_q.popleft()
            if s.state == _LOST and s.n >= self._una_n:
                return s
        return None

    def _on_ack(self, ev: Event) -> None:
        """An ACK reached the sender: `ev.value` = (cumulative ack, the segment that triggered it)."""
        if self.closed:
            return
        ack_seq, seg = ev._value  # not .value: this runs once per ACK and the event is known processed
        now = self._env.now
        delivered = 0  # segments newly ACKed or SACKed
        rtt_s = -1.0

        advanced = ack_seq > self.snd_una
        if advanced:
            # Cumulative ACK: retire segments up to ack_seq.
            segs, base, next_n = self._segs, self._segs_base_n, self._next_n
            k = self._una_n
            first_sent_s = -1.0
            retx_acked = False
            while k < next_n:
                s = segs[k - base]
                if s.end > ack_seq:
                    break
                st = s.state
                if st == _SACKED:
                    self.sacked_out -= 1
                else:
                    delivered += 1
                    if st != _IN_FLIGHT:
                        self.lost_out -= 1
                        if st == _RETX_OUT:
                            self.retrans_out -= 1
                    if s.retx:
                        retx_acked = True
                    elif first_sent_s < 0:
                        first_sent_s = s.sent_t
                segs[k - base] = None  # retired: freed now, not left for the cyclic GC with its connection
                k += 1
            self.packets_out -= k - self._una_n
            self._una_n = k
            if k - base > 1024 and 2 * (k - base) > len(segs):
                del segs[: k - base]  # drop retired segments now and then, not on every ACK
                self._segs_base_n = k
            self.snd_una = ack_seq
            self._rto_backoffs = 0
            # Karn: no sample from sequence numbers if any newly ACKed segment was retransmitted (which
            # copy arrived?). But Linux runs with timestamps: the ACK echoes the send time of the copy
            # that filled the hole (`seg.echo_t`: the original's if it arrived after all, a spurious
            # retransmission's queueing included), and `tcp_ack_update_rtt` takes that sample instead,
            # which also recomputes an RTO that timeouts had doubled.
            if first_sent_s >= 0 and not retx_acked:
                rtt_s = now - first_sent_s
            elif retx_acked and seg.end <= ack_seq:
                rtt_s = now - seg.echo_t
            if self.acked_log is not None:
                self.acked_log[0].append(now)
                self.acked_log[1].append(ack_seq)
            if self.on_acked is not None:
                self.on_acked(ack_seq)

        if seg.seq >= ack_seq and seg.state != _SACKED:
            delivered += 1
            self._on_sack(seg)
            if rtt_s < 0 and not seg.retx:
                rtt_s = now - seg.sent_t

        if self._retx_fifo:
            self._detect_lost_retransmissions(seg, now)

        if rtt_s >= 0:
            self._rtt_sample(rtt_s)
            samples = self._rtt_samples
            samples.append(rtt_s)
            if len(samples) >= 2 * _RTT_SAMPLES_KEPT:
                del samples[:-_RTT_SAMPLES_KEPT]  # nobody drains (a bulk flow): keep memory bounded

        if advanced:
            # RFC 6298 (5.2)/(5.3): stop the timer when everything is ACKed, else restart it.
            if self.packets_out:
                self._rto.set(now + self.rto_s)
            else:
                self._rto.deadline = None

        state = self._state
        if state != _OPEN and self.snd_una >= self._recovery_point:
            state = self._state = _OPEN
        if self._tlp_high_seq is not None and (self.snd_una >= self._tlp_high_seq or state != _OPEN):
            self._tlp_high_seq = None  # the probe's episode is over: a new probe may be armed
        if self.lost_out and state == _OPEN:
            self._enter_recovery(now)
        elif (
            delivered
            and state != _RECOVERY
            and (
                # Linux `tcp_is_cwnd_limited`; in slow start cwnd may reach twice what was in use.
                self._cwnd_limited
                or (self.cwnd_pkts < self.ssthresh_pkts and self.cwnd_pkts < 2 * self._max_packets_out)
            )
        ):
            self._cc.cong_avoid(self, delivered, now)
        self._push()
        if self._state == _OPEN and self.packets_out:
            self._arm_tlp(now)

    def _rtt_sample(self, rtt_s: float) -> None:
        """RFC 6298 (2.2)-(2.4) with Linux's floor. A valid sample also ends RTO backoff."""
        srtt = self.srtt_s
        if srtt is None:
            srtt = rtt_s
            var = rtt_s / 2
        else:
            err = srtt - rtt_s
            var = 0.75 * self.rttvar_s + 0.25 * (err if err > 0 else -err)
            srtt = 0.875 * srtt + 0.125 * rtt_s
        self.srtt_s = srtt
        self.rttvar_s = var
        # RTO = srtt + max(4 rttvar, min_rto): Linux puts the floor on the variance term, not
        # on the sum as RFC 6298 (2.4) does. On a long steady path rttvar -> 0, and a floored
        # sum would be ~srtt: recovery of one hole (ACKs stall for an RTT) would time out.
        var *= 4
        cfg = self.cfg
        rto = srtt + (var if var > cfg.min_rto_s else cfg.min_rto_s)
        self.rto_s = rto if rto < cfg.max_rto_s else cfg.max_rto_s
        if self.min_rtt_s is None or rtt_s < self.min_rtt_s:
            self.min_rtt_s = rtt_s

    def _enter_recovery(self, now: float) -> None:
        """Fast retransmit: one multiplicative decrease for everything lost in this window."""
        self.ssthresh_pkts = self._cc.on_congestion(self)
        self.cwnd_pkts = self.ssthresh_pkts
        self._recovery_point = self.snd_max
        self._state = _RECOVERY
        self.recovery_events += 1
        self._tlp_high_seq = None
        self._tlp.deadline = None
        # RFC 6675 (4.3), Linux PRR: the first lost segment goes out now, whatever the pipe says.
        first = self._next_lost()
        if first is not None:
            self._retransmit(first, now)

    def _on_sack(self, seg: Segment) -> None:
        """`seg` arrived out of order: SACK it, then mark lost what three SACKs above a hole show."""
        if seg.state != _IN_FLIGHT:
            self.lost_out -= 1
            if seg.state == _RETX_OUT:
                self.retrans_out -= 1
        seg.state = _SACKED
        self.sacked_out += 1
        n = seg.n
        if n > self._rack_top_n:
            # RACK: the newest segment known delivered. A retransmitted one counts only if this
            # copy could have made the round trip (RFC 8985 6.2 step 2); the path never reorders.
            now = self._env.now
            if not seg.retx or (self.min_rtt_s is not None and now - seg.sent_t >= self.min_rtt_s):
                self._rack_top_n = n
                self._rack_xmit_s = seg.sent_t
                self._rack_rtt_s = now - seg.sent_t
        top = self._sack_top
        if n <= top[2]:
            self._rack_detect()
            return
        if n > top[0]:
            top[0], top[1], top[2] = n, top[0], top[1]
        elif n > top[1]:
            top[1], top[2] = n, top[1]
        else:
            top[2] = n
        # Everything below the third-highest SACKed segment has DupThresh SACKs above it. The link
        # never reorders, so these are losses; the scan resumes where it stopped (amortised O(1)).
        below_n = top[2]
        if below_n > self._mark_n:
            segs, base, lost_q = self._segs, self._segs_base_n, self._lost_q
            for k in range(max(self._mark_n, self._una_n), below_n):
                s = segs[k - base]
                if s.state == _IN_FLIGHT:
                    s.state = _LOST
                    self.lost_out += 1
                    self.lost_segs_detected += 1
                    lost_q.append(s)
            self._mark_n = below_n
        self._rack_detect()

    def _rack_detect(self) -> None:
        """RACK (RFC 8985 6.2, Linux `tcp_rack_detect_loss`) for segments sent before the newest
        delivered one: lost once ``sent + rack_rtt + reo_wnd`` has passed. reo_wnd is min_rtt / 4
        (at most srtt) while the connection is open with fewer than three SACKed segments, else 0
        (Linux, no reordering seen: this path never reorders). A thin stream -- one token per
        segment, seldom three segments out -- thus repairs a loss once the next token's SACK is
        back, not after three more tokens or the RTO. Holes not yet due arm the REO timer."""
        top_n = self._rack_top_n
        k = self._rack_scan_n
        if k < self._una_n:
            k = self._una_n
        if k >= top_n:
            return
        now = self._env.now
        if self._state != _OPEN or self.sacked_out >= 3 or self.min_rtt_s is None:
            reo_s = 0.0
        else:
            reo_s = self.min_rtt_s / 4
            if self.srtt_s is not None and self.srtt_s < reo_s:
                reo_s = self.srtt_s
        limit_s = self._rack_rtt_s + reo_s
        rack_xmit_s = self._rack_xmit_s
        segs, base, lost_q = self._segs, self._segs_base_n, self._lost_q
        while k < top_n:
            s = segs[k - base]
            if s.state == _IN_FLIGHT and s.sent_t <= rack_xmit_s:
                due_s = s.sent_t + limit_s
                if due_s > now + 1e-12:
                    self._reo.set_earliest(due_s)  # later holes were sent later: due later
                    break
                s.state = _LOST
                self.lost_out += 1
                self.lost_segs_detected += 1
                lost_q.append(s)
            k += 1
        self._rack_scan_n = k

    def _on_reo_due(self, _deadline_s: float) -> None:
        """Linux `tcp_rack_reo_timeout`: recheck the holes; losses found start a recovery."""
        if self.closed:
            return
        lost_before = self.lost_out
        self._rack_detect()
        if self.lost_out > lost_before:
            if self._state == _OPEN:
                self._enter_recovery(self._env.now)
            self._push()

    # ---------------------------------------------------------------- tail loss probe

    def _arm_tlp(self, now: float) -> None:
        """Linux `tcp_schedule_loss_probe`: PTO = 2 srtt, plus the minimum RTO when a single
        segment is out (the receiver may delay its ACK), else plus 2 ms; never later than the RTO."""
        if self._tlp_high_seq is not None:
            return
        srtt = self.srtt_s
        if srtt is None:
            pto_s = self.cfg.init_rto_s
        else:
            pto_s = 2 * srtt + (self.cfg.min_rto_s if self.packets_out == 1 else _TLP_MIN_S)
        deadline_s = now + pto_s
        rto_at = self._rto.deadline
        if rto_at is not None and rto_at < deadline_s:
            deadline_s = rto_at
        self._tlp.set(deadline_s)

    def _on_tlp_due(self, _deadline_s: float) -> None:
        if not self.closed:
            self._send_loss_probe()

    def _send_loss_probe(self) -> None:
        """Linux `tcp_send_loss_probe`: new data if the window allows, else the last segment again;
        an ACK for it reveals any loss before it to RACK. Then the RTO restarts from now."""
        self._tlp.deadline = None
        if self.closed or self._state != _OPEN or not self.packets_out or self._tlp_high_seq is not None:
            return
        now = self._env.now
        before = self.snd_max
        if self._bulk or self.written_bytes > before:
            self._push()
        if self.snd_max == before:
            segs, base = self._segs, self._segs_base_n
            k = self._next_n - 1
            while k >= self._una_n and segs[k - base].state != _IN_FLIGHT:  # type: ignore[union-attr]
                k -= 1
            if k < self._una_n:
                return
            s = segs[k - base]
            assert s is not None
            s.retx = True  # Karn: its ACK gives no RTT sample
            s.sent_t = now
            self.retrans_segs += 1
            self._link.send(s, self._retx_copy(now))
        self.tlp_probes += 1
        self._tlp_high_seq = self.snd_max
        self._rto.set(now + self.rto_s)

    def _detect_lost_retransmissions(self, seg: Segment, now: float) -> None:
        """RACK for retransmissions: `seg` just arrived, so on a FIFO path every retransmission sent
        before it that has not arrived is lost. Mark those lost again (they go out once more) instead
        of leaving them to the RTO, as Linux's RACK does."""
        sent_s = seg.sent_t
        # If seg was retransmitted, the arriving copy may be the original: trust its (latest) send
        # time only if that copy could have made the round trip (RFC 8985 6.2, step 2).
        if seg.retx and (self.min_rtt_s is None or now - sent_s < self.min_rtt_s):
            return
        fifo = self._retx_fifo
        relost: list[Segment] = []
        while fifo and fifo[0][0] < sent_s:
            t_retx, s = fifo.popleft()
            # Still outstanding, and that very retransmission is still out (not resent since).
            if s.n >= self._una_n and s.state == _RETX_OUT and s.sent_t == t_retx:
                s.state = _LOST
                self.retrans_out -= 1
                self.lost_segs_detected += 1
                relost.append(s)
        if relost:
            self._lost_q.extendleft(reversed(relost))  # ahead of later holes: they are lower or older

    # ---------------------------------------------------------------- RTO timer

    def _on_rto_due(self, deadline_s: float) -> None:
        if self.closed:
            return
        tlp_at = self._tlp.deadline
        if tlp_at is not None and tlp_at <= deadline_s:
            # Linux keeps one timer: a probe due by now fires instead of the RTO (and restarts it).
            self._send_loss_probe()
            if self._rto.deadline is not None:
                return
        self._on_rto()

    def _on_rto(self) -> None:
        """RFC 6298 (5.4)-(5.6) with Linux's `tcp_enter_loss`."""
        self.rto_events += 1
        in_flight = self.packets_out - self.sacked_out - self.lost_out + self.retrans_out
        # Reduce ssthresh once per episode: not again when the same data times out again.
        if (
            self._state == _OPEN
            or self.snd_una >= self._recovery_point
            or (self._state == _LOSS and self._rto_backoffs == 0)
        ):
            self.ssthresh_pkts = self._cc.on_timeout(self, in_flight)
        self.cwnd_pkts = 1.0
        self._state = _LOSS
        self._recovery_point = self.snd_max
        # Everything not SACKed is lost, retransmissions still out included; resend it in order.
        segs, base = self._segs, self._segs_base_n
        lost_q: deque[Segment] = deque()
        for k in range(self._una_n, self._next_n):
            s = segs[k - base]
            if s.state == _SACKED:
                continue
            if s.state == _IN_FLIGHT:
                self.lost_segs_detected += 1
            s.state = _LOST
            lost_q.append(s)
        self._lost_q = lost_q
        self._retx_fifo.clear()
        self.lost_out = len(lost_q)
        self.retrans_out = 0
        self._mark_n = self._rack_scan_n = self._next_n
        self._tlp_high_seq = None
        self._tlp.deadline = None
        self._rto_backoffs += 1
        self.rto_s = min(self.rto_s * 2, self.cfg.max_rto_s)
        self._rto.deadline = None  # _push re-arms it with the backed-off RTO
        self._push()

    # ---------------------------------------------------------------- receiver

    def _retx_copy(self, sent_s: float) -> Callable[[Segment], None]:
        """The arrival callback of a retransmitted copy: the receiver then echoes this copy's send
        time (originals use `_on_segment` directly and leave the original's)."""

        def arrived(seg: Segment) -> None:
            seg.echo_t = sent_s
            self._on_segment(seg)

        return arrived

    def _on_segment(self, seg: Segment) -> None:
        """A data segment reached the receiver."""
        if self.closed:
            return
        seq = seg.seq
        rcv = self.rcv_nxt
        if seq == rcv:
            rcv = seg.end
            ooo = self._ooo
            ack_now = self.cfg.ack_every_pkts == 1
            if ooo:
                # The hole at rcv_nxt is filled: release what was held behind it (RFC 5681: ACK at once).
                ack_now = True
                end = ooo.pop(rcv, None)
                while end is not None:
                    rcv = end
                    end = ooo.pop(rcv, None)
            self.rcv_nxt = rcv
            if self.on_delivered is not None:
                self.on_delivered(rcv)
            if not ack_now:
                self._unacked_in_order += 1
                if self._unacked_in_order < self.cfg.ack_every_pkts:
                    if not self._delack_pending:
                        self._delack_pending = True
                        self._env.timeout(self.cfg.delack_s, seg).callbacks.append(self._on_delack_timer)
                    return
        elif seq > rcv:
            self._ooo.setdefault(seq, seg.end)
        # Out-of-order segments and duplicates are ACKed at once (dupACK, D-SACK).
        self._unacked_in_order = 0
        # self._ack_line.send((rcv, seg), self._ack_cb), inlined: this runs for every segment.
        env = self._env
        ev = _new_event(Event)
        ev.env = env
        ev.callbacks = [self._ack_cb]
        ev._ok = True
        ev._value = (rcv, seg)
        heappush(env._queue, (env.now + self._ack_delay_s, NORMAL, next(env._eid), ev))  # type: ignore[attr-defined]

    def _on_delack_timer(self, ev: Event) -> None:
        self._delack_pending = False
        if self.closed or self._unacked_in_order == 0:
            return
        self._unacked_in_order = 0
        self._ack_line.send((self.rcv_nxt, ev.value), self._ack_cb)
