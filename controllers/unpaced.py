"""Unpaced: generate as fast as the server can. What every serving stack does today."""

from __future__ import annotations

from controllers.base import UNPACED, Controller, Decision, Observation
from controllers.registry import register


@register("Unpaced", "#d62728")
class Unpaced(Controller):
    name = "unpaced"

    def decide(self, obs: Observation) -> Decision:
        return UNPACED
