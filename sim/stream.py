"""One stream end to end: the node's Sequence, a TCP connection over its path, and the Reader.

Token i is bytes [i*b, (i+1)*b) of the response body (b = bytes_per_token, one SSE event per
token). It is *sent* when its last byte first leaves the sender, *received* when the client's
in-order byte stream reaches its end, *acked* when the sender's snd_una passes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from controllers import Controller, Observation
from sim.client import Reader
from sim.model.control import StreamControl
from sim.model.reader import ABANDONED
from sim.model.serving import Sequence
from sim.model.workload import Request
from sim.network import PathRuntime
from sim.node import ServingNode
from sim.tcp import TcpConnection


class SimStream:
    __slots__ = (
        "_env",
        "bpt",
        "conn",
        "ctl",
        "ended",
        "node",
        "path",
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
        self.ctl = StreamControl(req.stream_id, req.reading_tps, controller)  # its controller and rate in force
        n = req.output_tokens
        self.t_generated: list[float] = [math.nan] * n
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

    def control(self, t_s: float) -> Observation:
        """One control interval (sim.model.control): observe, decide, show the node, apply.

        The TCP model's state now, with the RTT samples taken since the last interval, goes to
        ``StreamControl.step_values`` field by field rather than as a ``TransportSnapshot``: this runs
        once per stream per interval and the object cost ~3% of a run (issue #13). It is the same step
        as ``StreamControl.step`` (which goes through it); tests/test_control_step.py pins the two.
        """
        c = self.conn
        snd_una = c.snd_una
        return self.ctl.step_values(  # the values in TransportSnapshot field order
            self, self.node.observe, t_s,
            None if c.srtt_s is None else c.srtt_s * 1000,
            c.drain_rtt_samples(),
            None,  # rtt_min_ms, rtt_p95_ms: computed from the samples
            None,
            c.retrans_segs,
            int(c.cwnd_pkts),
            c.snd_max - snd_una,  # inflight: snd_nxt = snd_max (see TcpConnection.snd_nxt)
            c.written_bytes,
            snd_una,
            min(snd_una // self.bpt, self.req.output_tokens),
            self.seq.generated,
        )

    def set_rate(self, t_s: float, rate_tps: float | None) -> None:
        """A new rate for the sequence's pacing credit; the node re-plans if it was idle."""
        self.seq.set_rate(t_s, rate_tps)
        self.node.wake()


def _first_times(times: list[float], progress: list[int], bpt: int, n_tokens: int, n: int) -> np.ndarray:
    """Token i's time is the first of ``times`` at which ``progress`` (bytes, non-decreasing) covered
    all of it: the same as filling in every newly covered token at each callback, done once."""
    covered = np.minimum(np.array(progress, dtype=np.int64) // bpt, n_tokens)
    first = np.searchsorted(covered, np.arange(n), side="right")  # first entry covering more than i tokens
    return np.append(np.array(times, dtype=np.float64), math.nan)[first]

