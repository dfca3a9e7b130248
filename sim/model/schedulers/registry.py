"""Schedulers by name (``server.scheduler.name``), parameters validated like a controller's."""

from __future__ import annotations

from typing import Any

from sim.model.schedulers.base import Scheduler
from sim.model.schedulers.fcfs import Fcfs

REGISTRY: dict[str, type[Scheduler]] = {cls.name: cls for cls in (Fcfs,)}


class UnknownScheduler(KeyError):
    def __str__(self) -> str:
        return f"unknown scheduler {self.args[0]!r}; known: {', '.join(sorted(REGISTRY))}"


def get(name: str) -> type[Scheduler]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownScheduler(name) from None


def make(name: str, params: dict[str, Any] | None = None) -> Scheduler:
    """A fresh scheduler; raises UnknownScheduler or pydantic.ValidationError."""
    return get(name).from_dict(params)


def validate_params(name: str, params: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Problems with a scheduler's parameters as (key path, message) pairs; empty when valid."""
    cls = get(name)
    try:
        cls.Params.model_validate(params or {})
    except ValueError as exc:  # pydantic.ValidationError
        errors = getattr(exc, "errors", None)
        if errors is None:
            raise
        return [(".".join(str(p) for p in err["loc"]), err["msg"]) for err in errors()]
    return []
