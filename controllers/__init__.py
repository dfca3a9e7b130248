"""Pacing controllers behind one interface, used unchanged by the simulator and live mode.

Importing the package registers every built-in controller in ``REGISTRY``.
"""

from controllers import (  # noqa: F401  (registration)
    aimd,
    anomaly,
    buffer,
    ewma,
    fixed,
    mpc,
    oracle,
    pid,
    predictive,
    sigmoid,
    unpaced,
)
from controllers.base import UNPACED, Controller, Decision, Observation, OracleView, Params
from controllers.reader import ReaderEstimate
from controllers.registry import REGISTRY, ControllerInfo, UnknownController, display_info, get, make, validate_params

__all__ = [
    "REGISTRY",
    "UNPACED",
    "Controller",
    "ControllerInfo",
    "Decision",
    "Observation",
    "OracleView",
    "Params",
    "ReaderEstimate",
    "UnknownController",
    "display_info",
    "get",
    "make",
    "validate_params",
]
