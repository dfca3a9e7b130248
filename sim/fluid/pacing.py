"""Pacing controllers the fluid model can run: those that are a law of a class's fluid state.

* ``unpaced``: no cap, a request makes a token every step.
* ``fixed`` (``controllers/fixed.py``): ``rate_tps``, or the reader's pace x ``headroom``.
* ``buffer`` (``controllers/buffer.py``, BBA of Huang et al., SIGCOMM 2014): the reservoir/cushion map
  on (tokens buffered at the reader + tokens written and not delivered) / reader pace, paused while
  the backlog exceeds what the stream's fair share of its path delivers in ``inflight_s`` (at least
  ``min_inflight_tokens``) -- the controller's ack-rate meter, read as the path's fair share.

Every other controller decides from per-stream signals the fluid model does not carry (RTT samples,
retransmits, learned models, the oracle's knowledge of the future): it is refused by name.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import controllers
from controllers.buffer import BufferParams
from controllers.fixed import FixedParams
from sim.fluid.model import NodeView, Pacing

SUPPORTED = ("unpaced", "fixed", "buffer")


class UnsupportedController(ValueError):
    """A controller that is not a law of the fluid state."""


def pacing_law(name: str, params: dict[str, Any] | None) -> Pacing | None:
    """The controller's law on the fluid state (None: unpaced); raises UnsupportedController."""
    if name == "unpaced":
        return None
    if name == "fixed":
        fixed = FixedParams.model_validate(params or {})
        return lambda v: (np.full(len(v.reading), fixed.rate_tps) if fixed.rate_tps is not None
                          else v.reading * fixed.headroom)
    if name == "buffer":
        return _buffer_law(BufferParams.model_validate(params or {}))
    known = "known" if name in controllers.REGISTRY else "unknown"
    raise UnsupportedController(
        f"controller {name!r} ({known}) is not a law of the fluid state; the fluid engine runs "
        f"{', '.join(SUPPORTED)} (use --controllers, or --engine discrete)")


def _buffer_law(p: BufferParams) -> Pacing:
    def law(v: NodeView) -> np.ndarray:
        reading = np.maximum(v.reading, 1e-9)
        top = np.maximum(p.max_tps, v.reading)
        buffer_s = (v.buffer_tokens + v.backlog_tokens) / reading
        frac = np.clip((buffer_s - p.reservoir_s) / p.cushion_s, 0.0, 1.0)
        rate = top - frac * (top - v.reading)
        budget = np.maximum(p.min_inflight_tokens, v.share_tps * p.inflight_s)
        return rate * np.clip(budget - v.backlog_tokens, 0.0, 1.0)  # paused once the backlog reaches it

    return law
