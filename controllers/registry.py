"""Controllers by name, with the display information plots and tables use (Pantheon's registry).

Analysis never imports this module: a run copies ``display_info()`` into its run.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from controllers.base import Controller


@dataclass(frozen=True)
class ControllerInfo:
    cls: type[Controller]
    label: str
    color: str
    sim_only: bool = False  # needs knowledge only a simulator has (the oracle)


REGISTRY: dict[str, ControllerInfo] = {}


def register(label: str, color: str, *, sim_only: bool = False):  # type: ignore[no-untyped-def]
    """Class decorator: ``@register("Fixed rate", "#888888")``."""

    def wrap(cls: type[Controller]) -> type[Controller]:
        if cls.name in REGISTRY:
            raise ValueError(f"controller {cls.name!r} registered twice")
        REGISTRY[cls.name] = ControllerInfo(cls, label, color, sim_only)
        return cls

    return wrap


class UnknownController(KeyError):
    def __str__(self) -> str:
        return f"unknown controller {self.args[0]!r}; known: {', '.join(sorted(REGISTRY))}"


def get(name: str) -> ControllerInfo:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownController(name) from None


def make(name: str, params: dict[str, Any] | None = None) -> Controller:
    """A fresh controller instance; raises UnknownController or pydantic.ValidationError."""
    return get(name).cls.from_dict(params)


def validate_params(name: str, params: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Problems with a controller's parameters as (key path, message) pairs; empty when valid."""
    info = get(name)
    try:
        info.cls.Params.model_validate(params or {})
    except ValidationError as exc:
        return [(".".join(str(p) for p in err["loc"]), err["msg"]) for err in exc.errors()]
    return []


def display_info() -> dict[str, dict[str, str]]:
    return {name: {"label": i.label, "color": i.color} for name, i in sorted(REGISTRY.items())}
