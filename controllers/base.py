"""The controller contract: one observation in, one decision out.

A pacing controller is called once per control interval for one stream. It sees what the
transport and the client-side estimate say about that stream (an :class:`Observation`) and
answers with a token rate (a :class:`Decision`). Time is passed in, never read: the simulator
passes ``env.now`` and live mode passes ``time.monotonic()``, so the same object runs in both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True, slots=True)
class Observation:
    """One stream, one control interval. The same fields in sim and live."""

    t_s: float
    stream_id: str
    srtt_ms: float | None  # smoothed RTT (tcp_probe srtt)
    rtt_min_ms: float | None  # min / p95 of the RTT samples this interval
    rtt_p95_ms: float | None
    retrans: int  # segments retransmitted this interval
    cwnd_pkts: int | None
    inflight_bytes: int  # snd_nxt - snd_una
    queued_bytes: int  # written by the app, not yet acked by the client
    acked_tokens: int  # tokens whose bytes the client has acked
    generated_tokens: int
    reading_tps: float  # the reader's expected pace (scenario / request hint)
    client_buffer_est: float  # acked tokens the reader has not consumed yet (estimate)


@dataclass(frozen=True, slots=True)
class Decision:
    rate_tps: float | None  # None = unpaced (as fast as the server can)


UNPACED = Decision(rate_tps=None)


class Params(BaseModel):
    """Base of every controller's parameters: validated from the scenario YAML, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Controller(ABC):
    """Per-stream pacing policy. Subclasses set ``name`` and ``Params`` and implement ``decide``."""

    name: ClassVar[str]
    Params: ClassVar[type[Params]] = Params
    needs_oracle: ClassVar[bool] = False  # the simulator calls attach_oracle() before the first decide()

    def __init__(self, params: Params | None = None) -> None:
        self.params = params if params is not None else self.Params()
        self.reset()

    @abstractmethod
    def decide(self, obs: Observation) -> Decision: ...

    def reset(self) -> None:  # noqa: B027 - stateless controllers need nothing
        """Forget all state (a new stream starts)."""

    def attach_oracle(self, view: OracleView) -> None:  # noqa: B027 - only the oracle uses it
        """Receive the simulator's knowledge of the future (only when ``needs_oracle``)."""

    @classmethod
    def from_dict(cls, params: dict[str, Any] | None) -> Controller:
        return cls(cls.Params.model_validate(params or {}))


class OracleView(Protocol):
    """What a simulator can tell a controller about the future (the ``oracle`` only).

    Live mode has no such view; a controller that needs one is registered ``sim_only``.
    """

    reading_tps: float  # this stream's reader, exactly
    patience_s: float
    output_tokens: int
    bytes_per_token: int
    base_rtt_s: float

    def capacity_bps(self, t0_s: float, t1_s: float) -> float:
        """Mean capacity of the stream's bottleneck over [t0_s, t1_s] (0 during outages)."""
        ...

    def loss_rate(self, t_s: float) -> float:
        """Long-run packet loss probability of the bottleneck's loss model active at t_s."""
        ...

    def streams_on_path(self, t_s: float) -> int:
        """Streams of this run generating on the same bottleneck at t_s (known to the sim)."""
        ...

    def memory_short(self, t_s: float) -> bool:
        """At t_s (the present: the sim answers from the node's state now), does a request wait for the
        serving node's KV memory (a stream preempted, or the first waiting request does not fit)?"""
        ...
