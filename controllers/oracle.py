"""Oracle: the simulator's knowledge of the future, used to pace as well as we know how.

Simulation only: live mode has no future. What it knows, from the ``OracleView`` the simulator
attaches, and nothing else:

* its reader exactly: pace ``reading_tps``, ``patience_s``, and the response length;
* the future capacity of its bottleneck (``capacity_bps(t0, t1)``: fades, outages, trace dips),
  the loss rate there, and how many streams are generating on that bottleneck right now;
* the serving node's memory *now* (``memory_short``): whether a request waits for KV memory.

What it does not know: the loss draws (only the rate), future arrivals, other streams' futures, and
what the scheduler will do. So it is **not an upper bound** on QoE -- no pacing policy is one, since
the node's batch and memory couple every stream to every other -- and it is not called one. It is the
best pacing we know how to compute with that knowledge, and it is held to one promise, checked on every
built-in scenario by the regression suite: it never scores below ``unpaced`` (beyond the 0.005 tie).
What keeps that promise on a node whose memory binds is the last rule: a stream held back holds KV
memory, so while a request waits for memory the oracle does not pace (the stream finishes sooner and
its memory goes to the waiting request).

How it uses it, each interval:

1. The stream's share of the path in each ``step_s`` bin ahead: capacity / 8 / wire bytes per
   token (a paced token travels in its own segment: payload + ``HEADER_BYTES``), times (1 - loss),
   divided by the streams generating on the bottleneck now. A bin whose share covers the reader's
   pace is *good*: it can feed the reader as it reads. A bin short of it is counted as feeding
   nothing: future arrivals are not known, and on a short path they pile up (stalled readers stay),
   so the oracle plans for the worst there.
2. The cushion the reader needs: the reading time that falls in short bins between now and the
   end of the response (at most ``lookahead_s`` ahead), times ``reading_tps``. That is the buffer
   the reader must hold before the shortfalls start to read through them without a stall.
3. ``margin_s`` of reading on top, for what even the oracle does not know: when random loss bursts
   leave the connection in RTO backoff for seconds (it knows the loss rate, not the draws), and how
   many streams will share the path later. On a good path ahead the target is just the margin; it
   never runs further ahead of the reader than need + margin (tokens the reader does not need are
   GPU time spent early, and wasted if the reader leaves).
4. Rate toward that target: ``reading_tps + (target - buffer) / catch_up_s``, clamped to
   ``[0, max_tps]``, where buffer = client buffer + backlog (generated, not yet acked).
5. It does not generate what the path cannot deliver in time. Once the backlog exceeds the
   stream's share of the next ``inflight_s`` seconds of capacity, it generates no faster than that
   share -- not at all into an outage. And once it exceeds what *this connection* acked over the
   last second times ``inflight_s`` (at least ``min_inflight_tokens``), no faster than that ack
   rate: the link may be fine while the connection is stuck in loss recovery.
6. While the node's memory is short (``memory_short``), it does not pace at all.
"""

from __future__ import annotations

import math

from pydantic import Field

from controllers.base import UNPACED, Controller, Decision, Observation, OracleView, Params
from controllers.registry import register
from controllers.signals import DeliveryMeter, backlog_tokens

HEADER_BYTES = 52  # IP + TCP (with timestamps) per segment, as the simulated TCP counts them


class OracleParams(Params):
    lookahead_s: float = Field(default=60.0, gt=0, description="how far ahead the capacity deficit is examined (s)")
    step_s: float = Field(default=0.5, gt=0, description="resolution of the look-ahead (s)")
    margin_s: float = Field(default=10.0, gt=0, description="buffer kept beyond the deficit, in seconds of reading")
    catch_up_s: float = Field(default=1.0, gt=0, description="time constant of closing the gap to the target (s)")
    max_tps: float = Field(default=60.0, gt=0, description="fastest generation rate (tokens/s)")
    inflight_s: float = Field(default=0.5, gt=0, description="backlog allowed: this many seconds of the path's share")
    min_inflight_tokens: float = Field(default=8.0, gt=0, description="backlog floor (tokens), lets a stream start")


@register("Oracle (sim only)", "#000000", sim_only=True)
class Oracle(Controller):
    name = "oracle"
    Params = OracleParams
    params: OracleParams
    needs_oracle = True

    def reset(self) -> None:
        self._view: OracleView | None = None
        self._bins: dict[int, float] = {}
        self._meter = DeliveryMeter(1.0)

    def attach_oracle(self, view: OracleView) -> None:
        self._view = view
        self._bins = {}

    def bin_tps(self, i: int) -> float:
        """Whole-path tokens/s in look-ahead bin i ([i, i+1) * step_s), memoised: capacity is a function of time."""
        tps = self._bins.get(i)
        if tps is None:
            v, step = self._view, self.params.step_s
            assert v is not None, "the oracle needs attach_oracle() before decide()"
            t0 = i * step
            tps = v.capacity_bps(t0, t0 + step) / 8 / (v.bytes_per_token + HEADER_BYTES) * (1 - v.loss_rate(t0))
            self._bins[i] = tps
        return tps

    def needed_buffer_tokens(self, t_s: float, to_read: float, reading_tps: float, sharing: int) -> float:
        """Reading the short bins ahead will cost (tokens): short bins until the reader would finish."""
        step = self.params.step_s
        if reading_tps <= 0 or to_read <= 0:
            return 0.0
        n_bins = min(round(self.params.lookahead_s / step), math.ceil(to_read / (reading_tps * step)))
        first = int(t_s / step)
        enough = reading_tps * sharing
        short = sum(1 for i in range(first, first + n_bins) if self.bin_tps(i) < enough)
        return min(to_read, short * step * reading_tps)

    def decide(self, obs: Observation) -> Decision:
        p, v = self.params, self._view
        if v is None:
            raise RuntimeError("the oracle needs attach_oracle() before decide()")
        if v.memory_short(obs.t_s):  # pacing would hold memory a waiting request needs: finish and free it
            return UNPACED
        reading = v.reading_tps
        backlog = backlog_tokens(obs)
        buffer = max(0.0, obs.client_buffer_est) + backlog
        read_pos = max(0.0, obs.acked_tokens - max(0.0, obs.client_buffer_est))
        to_read = max(0.0, v.output_tokens - read_pos)
        sharing = max(1, v.streams_on_path(obs.t_s))
        need = self.needed_buffer_tokens(obs.t_s, to_read, reading, sharing)
        target = min(to_read, need + p.margin_s * reading)
        rate = min(p.max_tps, max(0.0, reading + (target - buffer) / p.catch_up_s))
        share_now = self.bin_tps(int(obs.t_s / p.step_s)) / sharing
        if backlog >= share_now * p.inflight_s:  # exact knowledge: no floor needed, nothing into an outage
            rate = min(rate, share_now)
        self._meter.update(obs.t_s, obs.acked_tokens)
        if backlog >= max(p.min_inflight_tokens, self._meter.rate_tps() * p.inflight_s):
            rate = min(rate, self._meter.rate_tps())  # the connection lags the link (loss recovery, RTO backoff)
        return Decision(rate)
