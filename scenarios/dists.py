"""Distributions a scenario draws per-request and per-reader values from.

Each is a small pydantic model with ``sample(rng, n)``; the ``dist`` key picks the family.
A bare number in YAML means a constant.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


class _Dist(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    min: float | None = None  # results are clipped to [min, max] when given
    max: float | None = None

    def _draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        raise NotImplementedError

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        x = np.asarray(self._draw(rng, n), dtype=float)
        if self.min is not None or self.max is not None:
            x = np.clip(x, self.min, self.max)
        return x

    def mean(self) -> float:
        """Approximate mean (used for sizing and documentation, not for sampling)."""
        return float(np.mean(self.sample(np.random.default_rng(0), 20_000)))


class Constant(_Dist):
    dist: Literal["constant"] = "constant"
    value: float

    def _draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.value)


class Uniform(_Dist):
    dist: Literal["uniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _order(self) -> Uniform:
        if self.high < self.low:
            raise ValueError("high must be >= low")
        return self

    def _draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(self.low, self.high, n)


class Normal(_Dist):
    dist: Literal["normal"]
    mean_: float = Field(alias="mean")
    std: float = Field(ge=0)

    def _draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.normal(self.mean_, self.std, n)


class LogNormal(_Dist):
    """Log-normal given by its median and the sigma of log(x): output lengths look like this."""

    dist: Literal["lognormal"]
    median: float = Field(gt=0)
    sigma: float = Field(ge=0)

    def _draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.lognormal(np.log(self.median), self.sigma, n)


class Exponential(_Dist):
    dist: Literal["exponential"]
    mean_: float = Field(alias="mean", gt=0)

    def _draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.exponential(self.mean_, n)


class Choice(_Dist):
    dist: Literal["choice"]
    values: list[float] = Field(min_length=1)
    weights: list[float] | None = None

    @model_validator(mode="after")
    def _weights(self) -> Choice:
        if self.weights is not None and (len(self.weights) != len(self.values) or sum(self.weights) <= 0):
            raise ValueError("weights must match values and sum to > 0")
        return self

    def _draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        p = None if self.weights is None else np.asarray(self.weights) / sum(self.weights)
        return rng.choice(np.asarray(self.values, dtype=float), size=n, p=p)


def _coerce(v: object) -> object:
    return {"dist": "constant", "value": v} if isinstance(v, int | float) else v


Dist = Annotated[
    Constant | Uniform | Normal | LogNormal | Exponential | Choice,
    Field(discriminator="dist"),
    BeforeValidator(_coerce),
]
