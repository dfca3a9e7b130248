"""Scenario files: the schema, the loader with errors that name file and key, link traces.

Depends on nothing else in tokenpace; the simulator and live mode both read these models.
"""

from scenarios.loader import (
    LoadedScenario,
    ScenarioError,
    builtin_scenarios,
    find_scenario,
    json_schema,
    load_scenario,
    parse_scenario,
)
from scenarios.schema import Scenario

__all__ = [
    "LoadedScenario",
    "Scenario",
    "ScenarioError",
    "builtin_scenarios",
    "find_scenario",
    "json_schema",
    "load_scenario",
    "parse_scenario",
]
