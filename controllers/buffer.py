"""Buffer: buffer-based pacing, BBA's reservoir and cushion applied to the reader's token buffer.

Origin: Huang, Johari, McKeown, Trunnell, Watson, "A Buffer-Based Approach to Rate Adaptation:
Evidence from a Large Video Streaming Service" (SIGCOMM 2014). BBA picks the video rate from the
playback buffer alone: the minimum rate while the buffer is below a *reservoir*, the maximum once
it is above reservoir + *cushion*, and a linear map in between. A video player wants a *higher*
rate when its buffer is *full*; a token stream is the other way round -- the reader's pace is
fixed and what we choose is how fast to refill, so the map is mirrored:

* buffer below the reservoir -> generate at ``max_tps`` (the reader is about to stall);
* buffer above reservoir + cushion -> generate at the reader's pace (hold the buffer there);
* in between -> linear from ``max_tps`` down to the reader's pace.

The buffer is measured in seconds of reading, ``(client_buffer_est + backlog) / reading_tps``:
tokens acked ahead of the reader plus tokens generated and not yet acked, which will reach the
reader unless the path fails. Counting the backlog keeps us from over-filling on a long path; but
on its own the map would keep feeding a dead link at the reader's pace (the client buffer drains
into the backlog and the sum never falls). Those backlogged tokens are useless to the reader and
are exactly what is wasted if the reader gives up, so the backlog is also capped: once it exceeds
what the path acked over the last ``inflight_s`` seconds (at least ``min_inflight_tokens``), the
stream pauses until the path has drained it. When the path keeps up the cap never binds.
"""

from __future__ import annotations

from pydantic import Field

from controllers.base import Controller, Decision, Observation, Params
from controllers.registry import register
from controllers.signals import DeliveryMeter, backlog_tokens


class BufferParams(Params):
    reservoir_s: float = Field(default=2.0, gt=0, description="below this many seconds of reading buffered: max rate")
    cushion_s: float = Field(default=28.0, gt=0, description="seconds of reading above the reservoir where the rate "
                                                     "falls linearly to the reader's pace")
    max_tps: float = Field(default=60.0, gt=0, description="fastest generation rate (tokens/s)")
    inflight_s: float = Field(default=0.5, gt=0, description="backlog cap: seconds of the recent ack rate")
    min_inflight_tokens: float = Field(default=8.0, gt=0, description="backlog cap floor (tokens), lets a stream start")
    rate_window_s: float = Field(default=1.0, gt=0, description="window of the ack-rate estimate (s)")


@register("Buffer-based (BBA)", "#2ca02c")
class Buffer(Controller):
    name = "buffer"
    Params = BufferParams
    params: BufferParams

    def reset(self) -> None:
        self._meter = DeliveryMeter(self.params.rate_window_s)

    def buffer_rate_tps(self, buffer_s: float, reading_tps: float) -> float:
        """The reservoir/cushion map alone (no backlog cap)."""
        p = self.params
        top = max(p.max_tps, reading_tps)
        if buffer_s <= p.reservoir_s:
            return top
        if buffer_s >= p.reservoir_s + p.cushion_s:
            return reading_tps
        frac = (buffer_s - p.reservoir_s) / p.cushion_s
        return top - frac * (top - reading_tps)

    def decide(self, obs: Observation) -> Decision:
        p = self.params
        self._meter.update(obs.t_s, obs.acked_tokens)
        backlog = backlog_tokens(obs)
        budget = max(p.min_inflight_tokens, self._meter.rate_tps() * p.inflight_s)
        if backlog >= budget:
            return Decision(0.0)  # the path is behind: let it drain what we already made
        reading = max(obs.reading_tps, 1e-9)
        buffer_s = (max(0.0, obs.client_buffer_est) + backlog) / reading
        return Decision(self.buffer_rate_tps(buffer_s, obs.reading_tps))
