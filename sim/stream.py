"""One stream end to end: the node's Sequence, a TCP connection over its path, and the Reader.

Token i is bytes [i*b, (i+1)*b) of the response body (b = bytes_per_token, one SSE event per
token). It is *sent* when its last byte first leaves the sender, *received* when the client's
in-order byte stream reaches its end, *acked* when the sender's snd_una passes it.
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Callable

import numpy as np

from controllers import Controller, Observation, ReaderEstimate
from sim.client import ABANDONED, Reader
from sim.model.serving import Sequence
from sim.model.workload import Request
from sim.network import PathRuntime
from sim.node import ServingNode
from sim.tcp import TcpConnection


class SimStream:
    __slots__ = (
        "_env",
        "_last_retrans",
        "bpt",
        "conn",
        "controller",
        "ended",
        "estimate",
        "node",
        "path",
        "rate_tps",
        "reader",
        "req",
        "seq",
        "t_generated",
    )

    def __init__(self, req: Request, bytes_per_token: int, node: ServingNode, path: PathRuntime,
                 controller: Controller, on_end: Callable[[SimStream], None], ttft_expected_s: float = 1.0) -> None:
        env = node.env
        self._env = env
        self.req = req
        self.bpt = bytes_per_token
        self.node = node
        self.path = path
        self.controller = controller
        self.estimate = ReaderEstimate(req.reading_tps)
        n = req.output_tokens
        self.t_generated: list[float] = [math.nan] * n
        self._last_retrans = 0
        self.rate_tps: float | None = None
        self.ended = False

        def end(reader: Reader) -> None:
            self.ended = True
            if reader.state == ABANDONED:
                node.cancel(self.seq)  # the server notices the closed connection within one step
                self.conn.close()
            on_end(self)

        # The connection logs when its snd_max / snd_una moved, and to where: enough to tell when each
        # token was sent / acked (`sent_times`, `acked_times`) without a per-token loop on every packet.
        self.conn = TcpConnection(env, path.link, path.ack_delay_s, path.tcp, name=req.stream_id, log_progress=True)
        self.reader = Reader(env, req.arrival_s, n, req.reading_tps, req.patience_s, req.first_token_patience_s, end,
                             bytes_per_token=bytes_per_token)
        self.conn.on_delivered = self.reader.on_bytes  # in-order bytes go straight to the reader
        self.seq = Sequence(req.stream_id, req.arrival_s, req.prompt_tokens, n, self._on_token, req.reading_tps,
                            ttft_expected_s, req.prefix_id, req.prefix_tokens)
        # The client connects at its arrival; the request reaches the node with the handshake's last
        # ACK, and that is the node's arrival time (as in live mode, where the HTTP handler submits it).
        def request_arrived() -> None:
            self.seq.arrival_s = env.now
            node.submit(self.seq)

        self.conn.connect(request_arrived)

    # ------------------------------------------------------------------ byte stream callbacks
    def _on_token(self, t_s: float, idx: int) -> None:
        self.t_generated[idx] = t_s
        if not self.ended:
            self.conn.write(self.bpt)

    @property
    def n_acked(self) -> int:
        """Tokens whose every byte the client has acked."""
        return min(self.conn.snd_una // self.bpt, self.req.output_tokens)

    def sent_times(self, n: int) -> np.ndarray:
        """When each of the first ``n`` tokens was sent (its last byte first left the sender); NaN: not yet."""
        assert self.conn.sent_log is not None
        return _first_times(*self.conn.sent_log, self.bpt, self.req.output_tokens, n)

    def acked_times(self, n: int) -> np.ndarray:
        """When the sender learnt that each of the first ``n`` tokens had arrived; NaN: not yet."""
        assert self.conn.acked_log is not None
        return _first_times(*self.conn.acked_log, self.bpt, self.req.output_tokens, n)

    # ------------------------------------------------------------------ control
    @property
    def generating(self) -> bool:
        """Still making tokens: the controller has something to decide."""
        return not self.ended and self.seq.generated < self.seq.output_tokens

    def observe(self, t_s: float) -> Observation:
        c = self.conn
        samples = c.drain_rtt_samples()
        retrans = c.retrans_segs - self._last_retrans
        self._last_retrans = c.retrans_segs
        acked_tokens = min(c.snd_una // self.bpt, self.req.output_tokens)
        snd_una = c.snd_una
        return _observation(  # the fields in _OBSERVATION_FIELDS order
            t_s,
            self.req.stream_id,
            None if c.srtt_s is None else c.srtt_s * 1000,
            min(samples) * 1000 if samples else None,
            _p95(samples) * 1000 if samples else None,
            retrans,
            int(c.cwnd_pkts),
            c.snd_max - snd_una,  # inflight_bytes: snd_nxt = snd_max (see TcpConnection.snd_nxt)
            c.written_bytes - snd_una,
            acked_tokens,
            self.seq.generated,
            self.req.reading_tps,
            self.estimate.update(t_s, acked_tokens),
        )

    def control(self, t_s: float) -> Observation:
        """Observe, decide, apply: one control interval."""
        obs = self.observe(t_s)
        decision = self.controller.decide(obs)
        self.node.observe(self.req.stream_id, obs, decision)  # for the scheduler
        rate = decision.rate_tps
        if rate != self.rate_tps:
            self.rate_tps = rate
            self.seq.set_rate(t_s, rate)
            self.node.wake()
        return obs


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


def _first_times(times: list[float], progress: list[int], bpt: int, n_tokens: int, n: int) -> np.ndarray:
    """Token i's time is the first of ``times`` at which ``progress`` (bytes, non-decreasing) covered
    all of it: the same as filling in every newly covered token at each callback, done once."""
    covered = np.minimum(np.array(progress, dtype=np.int64) // bpt, n_tokens)
    first = np.searchsorted(covered, np.arange(n), side="right")  # first entry covering more than i tokens
    return np.append(np.array(times, dtype=np.float64), math.nan)[first]


def _p95(samples: list[float]) -> float:
    """95th percentile with linear interpolation (numpy's default), without numpy's per-call cost."""
    xs = sorted(samples)
    pos = 0.95 * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
