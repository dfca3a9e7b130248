"""Whether the path loses a packet: the loss models, decided packet by packet.

Bernoulli (independent drops) and Gilbert-Elliott (two-state bursty loss, netem's ``gemodel``:
Gilbert 1960, Elliott 1963), each drawing from a caller's ``np.random.Generator`` so that the same
seed loses the same packets wherever the model runs; ``TimedLoss`` lays loss-fault windows over a
base model. :func:`gilbert_elliott_mean_loss` is the long-run rate every user of the model reads
(the oracle, the live fault player's Bernoulli approximation).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = [
    "BernoulliLoss",
    "GilbertElliottLoss",
    "LossModel",
    "NoLoss",
    "TimedLoss",
    "gilbert_elliott_mean_loss",
]

_RANDOM_BATCH = 4096  # loss models draw this many uniforms at a time: one numpy call, not one per packet


def gilbert_elliott_mean_loss(p: float, r: float, loss_bad: float = 1.0, loss_good: float = 0.0) -> float:
    """Long-run loss rate of the Gilbert-Elliott chain (p = P(Good->Bad), r = P(Bad->Good)): its
    stationary share of Bad, p / (p + r), weights ``loss_bad``, the rest ``loss_good``. With
    p + r = 0 the chain stays in Good, where it starts."""
    if p + r == 0:
        return loss_good
    pi_bad = p / (p + r)
    return pi_bad * loss_bad + (1 - pi_bad) * loss_good


class LossModel:
    """Decides, packet by packet, whether the link loses it."""

    __slots__ = ()

    def lost(self, t_s: float) -> bool:
        raise NotImplementedError


class NoLoss(LossModel):
    __slots__ = ()

    def lost(self, t_s: float) -> bool:
        return False


class BernoulliLoss(LossModel):
    """Each packet is lost independently with probability `p`."""

    __slots__ = ("_buf", "_i", "_rng", "p")

    def __init__(self, p: float, rng: np.random.Generator) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p
        self._rng = rng
        self._buf: list[bool] = []
        self._i = 0

    def lost(self, t_s: float) -> bool:
        i = self._i
        if i == len(self._buf):
            self._buf = (self._rng.random(_RANDOM_BATCH) < self.p).tolist()
            i = 0
        self._i = i + 1
        return self._buf[i]


class GilbertElliottLoss(LossModel):
    """Two-state bursty loss with netem's `gemodel` semantics, per packet.

    State Good or Bad; for each packet first move G->B with probability `p` (B->G with `r`),
    then lose it with `loss_good` / `loss_bad`. Long-run loss rate:
    p/(p+r)*loss_bad + r/(p+r)*loss_good. Starts in Good.
    """

    __slots__ = ("_bad", "_buf", "_i", "_rng", "loss_bad", "loss_good", "p", "r")

    def __init__(
        self,
        p: float,
        r: float,
        loss_bad: float = 1.0,
        loss_good: float = 0.0,
        rng: np.random.Generator | None = None,
    ) -> None:
        if rng is None:
            raise ValueError("GilbertElliottLoss needs an np.random.Generator (no global seeding)")
        for name, v in (("p", p), ("r", r), ("loss_bad", loss_bad), ("loss_good", loss_good)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        self.p, self.r, self.loss_bad, self.loss_good = p, r, loss_bad, loss_good
        self._rng = rng
        self._bad = False
        self._buf: list[float] = []
        self._i = 0

    def lost(self, t_s: float) -> bool:
        i = self._i
        if i + 2 > len(self._buf):
            self._buf = self._rng.random(_RANDOM_BATCH).tolist()
            i = 0
        self._i = i + 2
        u_move, u_loss = self._buf[i], self._buf[i + 1]
        if self._bad:
            if u_move < self.r:
                self._bad = False
        elif u_move < self.p:
            self._bad = True
        return u_loss < (self.loss_bad if self._bad else self.loss_good)

    @property
    def mean_loss(self) -> float:
        """Long-run loss rate (stationary distribution of the two-state chain)."""
        return gilbert_elliott_mean_loss(self.p, self.r, self.loss_bad, self.loss_good)


class TimedLoss(LossModel):
    """A base model with time windows `(start_s, end_s, model)` over it; the model in force at
    `t_s` is the last window that covers `t_s` in list order, else the base."""

    __slots__ = ("_base", "_base_lost", "_windows")

    def __init__(self, base: LossModel, windows: Iterable[tuple[float, float, LossModel]]) -> None:
        self._base = base
        # Per packet: outside the windows a NoLoss base costs no call.
        self._base_lost = None if isinstance(base, NoLoss) else base.lost
        # Reversed once here so that `lost` can return the first match.
        self._windows = list(reversed(list(windows)))

    def lost(self, t_s: float) -> bool:
        for start_s, end_s, model in self._windows:
            if start_s <= t_s < end_s:
                return model.lost(t_s)
        return self._base_lost is not None and self._base_lost(t_s)


