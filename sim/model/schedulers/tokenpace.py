"""``tokenpace``: buffer-aware scheduling fed by what the transport says, coupled to pacing.

The machinery is TokenFlow's (arXiv 2510.02758; :mod:`sim.model.schedulers.buffered`): a stream
whose reader's buffer outlasts the round trip of a preemption may give its KV memory up; a
preempted stream comes back when its reader's buffer runs low. What differs is the buffer. TokenFlow
and Andes (arXiv 2404.16283) take it as tokens generated minus tokens read, so a token stuck in a
socket buffer or on a faded link counts as delivered. Here it is what the client can read within the
horizon, from the stream's latest Observation (controllers/base.py) aged to now:

* ``client_buffer_est``: tokens the client has acked and not read yet (the ACK-driven reader replay,
  controllers/reader.py), at ``obs.t_s``;
* plus the tokens made and not yet acked that the path will deliver in time: at most the acked rate
  (tokens/s, averaged over ``ack_window_s``) times the horizon, one smoothed RTT less when the last
  interval retransmitted. A faded link delivers little of its backlog; a healthy one all of it.

The reader at ``reading_tps`` is covered for ``T = (now - obs.t_s) + horizon`` if that supply is at
least ``reading_tps * T``; with a concave supply (a backlog delivered at a constant rate) and a linear
demand, checking the end of the horizon is enough. Slack is supply / reading_tps - T.

The coupling: a stream its controller holds back (its decision sets a rate, or its pacing credit is
below one) is, among streams that can afford it, the first to give its memory up -- it skips decode
steps anyway, so its memory is the least used. A stream whose path is stalled (an outage: queued
bytes and no acked progress for ``stall_s``) cannot feed its reader whatever the GPU does: it gives
its memory up first of all, and is not brought back while the stall lasts (once acks flow again its
slack, from a near-zero acked rate, makes it urgent).

The other half of the coupling: while requests wait for KV memory, a paced stream on a path that keeps
up runs ahead of its pacer (:meth:`Tokenpace.run_ahead`): memory held while skipping steps is what the
waiting requests lack, and a stream ahead of its reader is the one that can give memory up. Pacing
holds where memory does not bind, and on paths that cannot take the tokens.

A stream without an Observation yet is treated as fcfs would treat it: never chosen to give memory
up, brought back first and in preemption order; when memory overflows and no stream can afford a
preemption, the victim is fcfs's (``server.victim_policy``). So with no observations at all, and
whenever KV memory is not short, the decisions are exactly fcfs's.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import Field

from sim.model.schedulers.base import policy_victim
from sim.model.schedulers.buffered import BufferAware, BufferParams
from sim.model.serving import _READY

if TYPE_CHECKING:
    from controllers import Observation
    from sim.model.serving import Sequence, ServingCore

STALLED, HELD_BACK, FREE_RUNNING = 0, 1, 2  # ranks: who gives memory up first


class TokenpaceParams(BufferParams):
    ack_window_s: float = Field(1.0, gt=0, description="time constant of the acked-rate average (s)")
    stall_s: float = Field(1.0, gt=0, description="a path with bytes queued and no acked progress for this "
                           "long is stalled (s)")
    run_ahead_s: float | None = Field(None, ge=0, description="while requests wait for KV memory, a paced stream "
                                      "on a path that keeps up decodes ahead of its pace until its reader holds "
                                      "this much beyond a preemption's round trip (s of reading); null: no limit, "
                                      "0: never")


class _Path:
    """What one stream's observations say about its path over time."""

    __slots__ = ("acked", "obs", "rate_tps", "t", "t_progress")

    def __init__(self, obs: Observation) -> None:
        self.obs = obs
        self.t = obs.t_s
        self.acked = obs.acked_tokens
        self.rate_tps: float | None = None  # acked tokens per second (None: one observation so far)
        self.t_progress = obs.t_s  # last time acks advanced (or nothing was queued)

    def update(self, obs: Observation, window_s: float) -> None:
        dt = obs.t_s - self.t
        if dt > 0:
            inst = (obs.acked_tokens - self.acked) / dt
            if self.rate_tps is None:
                self.rate_tps = inst
            else:
                self.rate_tps += (1.0 - math.exp(-dt / window_s)) * (inst - self.rate_tps)
        if obs.acked_tokens > self.acked or obs.queued_bytes == 0:
            self.t_progress = obs.t_s
        self.obs, self.t, self.acked = obs, obs.t_s, obs.acked_tokens


class Tokenpace(BufferAware):
    name = "tokenpace"
    label = "tokenpace (network-aware)"
    Params = TokenpaceParams
    uses_observations = True

    def __init__(self, params: TokenpaceParams | None = None) -> None:
        super().__init__(params)
        self._paths: dict[str, _Path] = {}

    def prepare(self, core: ServingCore, now: float) -> None:
        """Fold each live stream's newest observation into its path's acked rate and progress time."""
        paths = self._paths
        window = self.params.ack_window_s  # type: ignore[attr-defined]
        observations = core.observations
        for queue in (core.running, core.swapped, core.incoming):
            for s in queue:
                got = observations.get(s.req_id)
                if got is None:
                    continue
                obs = got[0]
                p = paths.get(s.req_id)
                if p is None:
                    paths[s.req_id] = _Path(obs)
                elif p.obs is not obs:
                    p.update(obs, window)
        live = len(core.running) + len(core.swapped) + len(core.incoming)
        if len(paths) > 2 * live + 64:  # forget streams that ended
            keep = {s.req_id for q in (core.running, core.swapped, core.incoming) for s in q}
            self._paths = {k: v for k, v in paths.items() if k in keep}

    def stalled(self, s: Sequence) -> bool:
        """Bytes queued and no acked progress for ``stall_s``: the path cannot feed the reader now."""
        p = self._paths.get(s.req_id)
        return (p is not None and p.obs.queued_bytes > 0
                and p.obs.t_s - p.t_progress >= self.params.stall_s)  # type: ignore[attr-defined]

    def assess(self, core: ServingCore, s: Sequence, now: float, horizon_s: float) -> tuple[int, float] | None:
        got = core.observation(s.req_id)
        p = self._paths.get(s.req_id)
        if got is None or p is None:
            return None
        obs, decision = got
        r = obs.reading_tps
        if not r or r <= 0:
            return None
        if self.stalled(s):
            return STALLED, math.inf
        age = now - obs.t_s if now > obs.t_s else 0.0
        t = age + horizon_s
        backlog = s.generated - obs.acked_tokens
        deliverable = 0.0
        if backlog > 0 and p.rate_tps is not None and p.rate_tps > 0:
            reach = t - (obs.srtt_ms or 0.0) / 1000 if obs.retrans > 0 else t
            deliverable = min(float(backlog), p.rate_tps * reach) if reach > 0 else 0.0
        slack = (obs.client_buffer_est + deliverable) / r - t
        held = decision.rate_tps is not None or (s.rate_tps is not None and s.credit < _READY)
        return (HELD_BACK if held else FREE_RUNNING), slack

    def run_ahead(self, core: ServingCore, s: Sequence, now: float) -> bool:
        """While requests wait for KV memory, a paced stream on a path that keeps up (not stalled, nothing
        retransmitted in the last interval, less than a second of reading made and not acked) decodes
        although its pacer says "not yet" (until its slack reaches ``run_ahead_s``, if set).

        Why: a paced stream holds its memory while it skips steps, and on a KV-bound node memory is what
        the waiting requests lack. Its tokens reach a reader who is being fed (so they are not wasted unless
        the reader leaves), it finishes sooner, and once ahead it is the first to give its memory up. A
        stream on a slow or stalled path stays paced: tokens made for it would wait in a socket.
        """
        limit = self.params.run_ahead_s  # type: ignore[attr-defined]
        if limit == 0:
            return False
        p = self._paths.get(s.req_id)
        if p is None or self.stalled(s):
            return False
        obs = p.obs
        reading = obs.reading_tps
        # the path keeps up with what was made: less than a second of reading unacked, nothing retransmitted
        if not reading or obs.retrans > 0 or s.generated - obs.acked_tokens > reading + 2:
            return False
        a = self._slack(core, s, now)
        return a is not None and (limit is None or a[1] < limit)

    def fallback_victim(self, core: ServingCore, now: float) -> Sequence:
        """fcfs's victim (``server.victim_policy``)."""
        return policy_victim(core)
