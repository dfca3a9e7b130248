"""Schedulers by name (``server.scheduler.name``), parameters validated like a controller's."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

from sim.model.schedulers.base import Scheduler

_PACKAGE = __name__.rpartition(".")[0]  # sim.model.schedulers (not imported here: it imports this module)


def _discover() -> dict[str, type[Scheduler]]:
    """Every Scheduler subclass defined in a module of this package (one module per policy)."""
    found: dict[str, type[Scheduler]] = {}
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if info.name in ("base", "registry") or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{_PACKAGE}.{info.name}")
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, Scheduler) and obj.__module__ == module.__name__
                    and getattr(obj, "name", None)):
                found[obj.name] = obj
    return dict(sorted(found.items()))


REGISTRY: dict[str, type[Scheduler]] = _discover()


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
