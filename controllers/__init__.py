"""Pacing controllers behind one interface, used unchanged by the simulator and live mode.

Importing the package registers every built-in controller in ``REGISTRY``.
"""

from controllers import fixed, unpaced  # noqa: F401  (registration side effect)
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
