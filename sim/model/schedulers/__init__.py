"""Scheduling policies of the serving node (``server.scheduler``), one module each, by name."""

from sim.model.schedulers.base import Params, Scheduler
from sim.model.schedulers.registry import REGISTRY, UnknownScheduler, get, make, validate_params

__all__ = ["REGISTRY", "Params", "Scheduler", "UnknownScheduler", "get", "make", "validate_params"]
