"""One stream's control step, with time passed in: transport snapshot -> Observation -> decision -> rate.

Once per control interval a driver reads its stream's transport -- the simulator its TCP model
(``sim/stream.py``), live mode the kernel (``live/serve/pacing.py``: eBPF telemetry and the socket's
SIOCOUTQ) -- into a :class:`TransportSnapshot` and hands it to the stream's :class:`StreamControl`
(the simulator hands the same fields one by one, ``step_values``: no object per stream per interval),
which keeps what spans intervals (the retransmit counter's last value, the reader estimate, the
rate in force), builds the :class:`controllers.Observation` of DESIGN.md, asks the stream's
controller for a :class:`controllers.Decision`, shows both to the scheduler and applies a changed
rate to the stream's pacing credit. The Observation is built here and nowhere else, so a
controller sees the same fields computed the same way in both halves.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from controllers import Controller, Decision, Observation, ReaderEstimate

__all__ = ["RateTarget", "StreamControl", "TransportSnapshot", "p95"]


@dataclass(slots=True)
class TransportSnapshot:
    """What a driver read from one stream's transport at one control instant.

    RTT over the interval comes either as raw samples (a TCP model keeps every one) or as the
    interval's min and p95 already aggregated by the source (the kernel's histogram); a driver gives
    one or the other. Counters are cumulative: the step takes their differences.
    """

    srtt_ms: float | None  # smoothed RTT now
    rtt_samples_s: Sequence[float]  # RTT samples taken since the previous snapshot (seconds)
    rtt_min_ms: float | None  # ... or their min and p95, aggregated by the source (used when no samples)
    rtt_p95_ms: float | None
    retrans_segs: int  # segments retransmitted so far (cumulative)
    cwnd_pkts: int | None
    inflight_bytes: int  # sent, not yet acked (snd_nxt - snd_una)
    written_bytes: int  # bytes the app produced for the stream: handed to the transport or waiting to be
    acked_bytes: int  # of those, acked by the client (snd_una)
    acked_tokens: int  # tokens whose every byte the client acked
    generated_tokens: int


class RateTarget(Protocol):
    """Where a changed rate goes: the driver's pacing credit (a Sequence, a PacingCredit), woken as needed."""

    def set_rate(self, now: float, rate_tps: float | None) -> None: ...


Observer = Callable[[str, Observation, Decision], None]  # the scheduler's view of every stream


class StreamControl:
    """One stream's control state between intervals and its step."""

    __slots__ = ("controller", "estimate", "rate_tps", "reading_tps", "retrans_seen", "stream_id")

    def __init__(self, stream_id: str, reading_tps: float, controller: Controller) -> None:
        self.stream_id = stream_id
        self.reading_tps = reading_tps  # the reader's expected pace (scenario / request hint)
        self.controller = controller
        self.estimate = ReaderEstimate(reading_tps)
        self.retrans_seen = 0  # the retransmit counter at the previous snapshot
        self.rate_tps: float | None = None  # the rate in force (None: unpaced)

    def observe(self, t_s: float, snap: TransportSnapshot) -> Observation:
        """The interval's Observation: retransmits since the last one, the interval's RTT min and p95, the
        app's backlog (written, not acked), the reader's estimated buffer from the acked tokens."""
        return self.observe_values(t_s, snap.srtt_ms, snap.rtt_samples_s, snap.rtt_min_ms, snap.rtt_p95_ms,
                                   snap.retrans_segs, snap.cwnd_pkts, snap.inflight_bytes, snap.written_bytes,
                                   snap.acked_bytes, snap.acked_tokens, snap.generated_tokens)

    def observe_values(self, t_s: float, srtt_ms: float | None, rtt_samples_s: Sequence[float],
                       rtt_min_ms: float | None, rtt_p95_ms: float | None, retrans_segs: int, cwnd_pkts: int | None,
                       inflight_bytes: int, written_bytes: int, acked_bytes: int, acked_tokens: int,
                       generated_tokens: int) -> Observation:
        """`observe` with the snapshot's fields passed one by one (in `TransportSnapshot` order): the one
        place the Observation's arithmetic lives. The simulator calls it through `step_values`, which
        spares it a snapshot object per stream per interval (issue #13: ~3% of a run)."""
        if rtt_samples_s:
            rtt_min_ms = min(rtt_samples_s) * 1000
            rtt_p95_ms = p95(rtt_samples_s) * 1000
        retrans = retrans_segs - self.retrans_seen
        self.retrans_seen = retrans_segs
        queued = written_bytes - acked_bytes  # written by the app, not yet acked
        if queued < 0:  # (comparisons, not max/min: this runs once per stream per interval)
            queued = 0
        if inflight_bytes > queued:  # a connection-wide count (live) cannot exceed this stream's backlog
            inflight_bytes = queued
        return _observation(  # the fields in _OBSERVATION_FIELDS order
            t_s,
            self.stream_id,
            srtt_ms,
            rtt_min_ms,
            rtt_p95_ms,
            retrans,
            cwnd_pkts,
            inflight_bytes,
            queued,
            acked_tokens,
            generated_tokens,
            self.reading_tps,
            self.estimate.update(t_s, acked_tokens),
        )

    def step(self, t_s: float, snap: TransportSnapshot, target: RateTarget,
             observer: Observer | None = None) -> Observation:
        """One control interval: observe, decide, show the scheduler (``observer``), and hand a rate that
        differs from the one in force to ``target``. Returns the Observation; the rate is ``rate_tps``."""
        return self.step_values(target, observer, t_s, snap.srtt_ms, snap.rtt_samples_s, snap.rtt_min_ms,
                                snap.rtt_p95_ms, snap.retrans_segs, snap.cwnd_pkts, snap.inflight_bytes,
                                snap.written_bytes, snap.acked_bytes, snap.acked_tokens, snap.generated_tokens)

    def step_values(self, target: RateTarget, observer: Observer | None, t_s: float, *values: object) -> Observation:
        """`step` with the snapshot's fields as ``values`` (in `TransportSnapshot` order, as for
        `observe_values`): the simulator's way in, without a snapshot object. `step` goes through here."""
        obs = self.observe_values(t_s, *values)  # type: ignore[arg-type]
        decision = self.controller.decide(obs)
        if observer is not None:
            observer(self.stream_id, obs, decision)
        rate = decision.rate_tps
        if rate != self.rate_tps:
            self.rate_tps = rate
            target.set_rate(t_s, rate)
        return obs


def p95(samples: Sequence[float]) -> float:
    """95th percentile with linear interpolation (numpy's default), without numpy's per-call cost."""
    xs = sorted(samples)
    pos = 0.95 * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


_OBSERVATION_FIELDS = ("t_s", "stream_id", "srtt_ms", "rtt_min_ms", "rtt_p95_ms", "retrans", "cwnd_pkts",
                       "inflight_bytes", "queued_bytes", "acked_tokens", "generated_tokens", "reading_tps",
                       "client_buffer_est")


def _observation_builder() -> Callable[..., Observation]:
    """``Observation(*values)`` (values in `_OBSERVATION_FIELDS` order), made faster when that is safe.

    A frozen dataclass's __init__ sets each field through object.__setattr__ (its own __setattr__
    raises): half the cost of an Observation, and the control loop makes one per stream per
    interval. Setting the slots through their descriptors makes the very same object. Should the
    class change -- other fields, a __post_init__, no slots -- the class itself builds them.
    """
    fields = dataclasses.fields(Observation)
    if tuple(f.name for f in fields) != _OBSERVATION_FIELDS:
        return lambda *values: Observation(**dict(zip(_OBSERVATION_FIELDS, values, strict=True)))
    slots = [vars(Observation).get(name) for name in _OBSERVATION_FIELDS]
    if hasattr(Observation, "__post_init__") or not all(isinstance(d, types.MemberDescriptorType) for d in slots):
        return Observation
    new = object.__new__
    s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12 = (d.__set__ for d in slots)  # type: ignore[union-attr]

    def build(t_s, stream_id, srtt_ms, rtt_min_ms, rtt_p95_ms, retrans, cwnd_pkts,  # type: ignore[no-untyped-def]
              inflight_bytes, queued_bytes, acked_tokens, generated_tokens, reading_tps, client_buffer_est):
        o = new(Observation)
        s0(o, t_s)
        s1(o, stream_id)
        s2(o, srtt_ms)
        s3(o, rtt_min_ms)
        s4(o, rtt_p95_ms)
        s5(o, retrans)
        s6(o, cwnd_pkts)
        s7(o, inflight_bytes)
        s8(o, queued_bytes)
        s9(o, acked_tokens)
        s10(o, generated_tokens)
        s11(o, reading_tps)
        s12(o, client_buffer_est)
        return o

    return build


_observation = _observation_builder()
