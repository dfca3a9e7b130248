"""One stream end to end: the node's Sequence, a TCP connection over its path, and the Reader.

Token i is bytes [i*b, (i+1)*b) of the response body (b = bytes_per_token, one SSE event per
token). It is *sent* when its last byte first leaves the sender, *received* when the client's
in-order byte stream reaches its end, *acked* when the sender's snd_una passes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from controllers import Controller, Observation, ReaderEstimate
from sim.client import ABANDONED, Reader
from sim.network import PathRuntime
from sim.node import Sequence, ServingNode
from sim.tcp import TcpConnection
from sim.workload import Request


class SimStream:
    __slots__ = (
        "req", "bpt", "node", "conn", "seq", "reader", "controller", "estimate", "t_generated",
        "t_sent", "t_acked", "n_sent", "n_acked", "_last_retrans", "rate_tps", "ended", "path",
    )

    def __init__(self, req: Request, bytes_per_token: int, node: ServingNode, path: PathRuntime,
                 controller: Controller, on_end: Callable[[SimStream], None]) -> None:
        env = node.env
        self.req = req
        self.bpt = bytes_per_token
        self.node = node
        self.path = path
        self.controller = controller
        self.estimate = ReaderEstimate(req.reading_tps)
        n = req.output_tokens
        self.t_generated: list[float] = [math.nan] * n
        self.t_sent: list[float] = [math.nan] * n
        self.t_acked: list[float] = [math.nan] * n
        self.n_sent = 0
        self.n_acked = 0
        self._last_retrans = 0
        self.rate_tps: float | None = None
        self.ended = False
        self.conn = TcpConnection(env, path.link, path.ack_delay_s, path.tcp, on_delivered=self._delivered,
                                  on_acked=self._acked, on_sent=self._sent, name=req.stream_id)

        def end(reader: Reader) -> None:
            self.ended = True
            if reader.state == ABANDONED:
                node.cancel(self.seq)  # the server notices the closed connection within one step
                self.conn.close()
            on_end(self)

        self.reader = Reader(env, req.arrival_s, n, req.reading_tps, req.patience_s, req.first_token_patience_s, end)
        self.seq = Sequence(req.stream_id, req.arrival_s, req.prompt_tokens, n, self._on_token)
        node.submit(self.seq)

    # ------------------------------------------------------------------ byte stream callbacks
    def _on_token(self, t_s: float, idx: int) -> None:
        self.t_generated[idx] = t_s
        if not self.ended:
            self.conn.write(self.bpt)

    def _sent(self, snd_max: int) -> None:
        n = min(snd_max // self.bpt, self.req.output_tokens)
        now = self.node.env.now
        for i in range(self.n_sent, n):
            self.t_sent[i] = now
        self.n_sent = max(self.n_sent, n)

    def _acked(self, snd_una: int) -> None:
        n = min(snd_una // self.bpt, self.req.output_tokens)
        now = self.node.env.now
        for i in range(self.n_acked, n):
            self.t_acked[i] = now
        self.n_acked = max(self.n_acked, n)

    def _delivered(self, rcv_nxt: int) -> None:
        self.reader.on_tokens(rcv_nxt // self.bpt)

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
        acked_tokens = self.n_acked
        return Observation(
            t_s=t_s,
            stream_id=self.req.stream_id,
            srtt_ms=None if c.srtt_s is None else c.srtt_s * 1000,
            rtt_min_ms=min(samples) * 1000 if samples else None,
            rtt_p95_ms=_p95(samples) * 1000 if samples else None,
            retrans=retrans,
            cwnd_pkts=int(c.cwnd_pkts),
            inflight_bytes=c.snd_nxt - c.snd_una,
            queued_bytes=c.written_bytes - c.snd_una,
            acked_tokens=acked_tokens,
            generated_tokens=self.seq.generated,
            reading_tps=self.req.reading_tps,
            client_buffer_est=self.estimate.update(t_s, acked_tokens),
        )

    def control(self, t_s: float) -> Observation:
        """Observe, decide, apply: one control interval."""
        obs = self.observe(t_s)
        rate = self.controller.decide(obs).rate_tps
        if rate != self.rate_tps:
            self.rate_tps = rate
            self.seq.set_rate(t_s, rate)
            self.node.wake()
        return obs


def _p95(samples: list[float]) -> float:
    """95th percentile with linear interpolation (numpy's default), without numpy's per-call cost."""
    xs = sorted(samples)
    pos = 0.95 * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
