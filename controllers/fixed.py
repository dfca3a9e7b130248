"""Fixed: one constant rate for every stream, blind to the network and the reader.

With ``rate_tps`` unset it paces each stream at its reader's declared pace times ``headroom``
(the request's hint), which is what a careful operator would configure by hand.
"""

from __future__ import annotations

from pydantic import Field

from controllers.base import Controller, Decision, Observation, Params
from controllers.registry import register


class FixedParams(Params):
    rate_tps: float | None = Field(default=None, gt=0, description="constant rate; unset = reader pace × headroom")
    headroom: float = Field(default=1.5, gt=0, description="multiplier on the reader's pace when rate_tps is unset")


@register("Fixed rate", "#7f7f7f")
class Fixed(Controller):
    name = "fixed"
    Params = FixedParams
    params: FixedParams

    def decide(self, obs: Observation) -> Decision:
        if self.params.rate_tps is not None:
            return Decision(self.params.rate_tps)
        return Decision(obs.reading_tps * self.params.headroom)
