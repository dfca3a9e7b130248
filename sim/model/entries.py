"""What an entry of a run is: ``CONTROLLER`` or ``CONTROLLER@SCHEDULER``, resolved to its controller's
parameters, the scheduler it runs on and the scenario it runs, plus its label and colour.

The simulator (:mod:`sim.runner`) and the lab (:mod:`live.lab.lab`) both resolve entries with this, so an
entry runs on the same scheduler, with the same parameters, and is drawn the same way in both.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import controllers
from scenarios import LoadedScenario
from scenarios.loader import ENTRY_SEP, split_entry
from scenarios.schema import SchedulerSpec


@dataclass(frozen=True)
class Plan:
    loaded: LoadedScenario
    controllers: dict[str, dict[str, Any]]  # entry name -> the controller's params
    seed: int
    out: Path
    # entry name -> the scheduler it runs on (an entry `CONTROLLER@SCHEDULER` overrides server.scheduler)
    schedulers: dict[str, str] = field(default_factory=dict)

    def controller_of(self, entry: str) -> str:
        return split_entry(entry)[0]

    def scheduler_of(self, entry: str) -> str:
        return self.schedulers.get(entry) or split_entry(entry)[1] or self.loaded.scenario.server.scheduler.name

    def scenario_for(self, entry: str) -> LoadedScenario:
        """The scenario an entry runs: the file's, with ``server.scheduler`` replaced for ``a@b`` when
        ``b`` is not the file's scheduler (the new one with its default parameters)."""
        scn = self.loaded.scenario
        name = self.scheduler_of(entry)
        if name == scn.server.scheduler.name:
            return self.loaded
        server = scn.server.model_copy(update={"scheduler": SchedulerSpec(name=name)})
        return replace(self.loaded, scenario=scn.model_copy(update={"server": server}))


def entry_info(plan: Plan, entry: str) -> dict[str, str]:
    """Label and colour of an entry for plots and tables: its controller's, the label followed by
    ``@ scheduler`` when the entry names one."""
    controller = plan.controller_of(entry)
    info = dict(controllers.display_info()[controller])
    if split_entry(entry)[1] is not None:
        info["label"] = f"{info.get('label', controller)} {ENTRY_SEP} {plan.scheduler_of(entry)}"
        # one controller on several schedulers: shades of its colour, in the order the plan holds them
        mine = [plan.scheduler_of(n) for n in plan.controllers if plan.controller_of(n) == controller]
        shade = SHADES[mine.index(plan.scheduler_of(entry)) % len(SHADES)]
        info["color"] = _shaded(info.get("color", "#333333"), shade)
    return info


SHADES = (0.0, -0.45, 0.45, -0.7, 0.7)  # toward black (< 0) or white (> 0)


def _shaded(color: str, amount: float) -> str:
    """``#rrggbb`` moved ``amount`` of the way toward white (> 0) or black (< 0)."""
    if len(color) != 7 or not color.startswith("#"):
        return color
    rgb = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
    rgb = [round(c + (255 - c) * amount) if amount > 0 else round(c * (1 + amount)) for c in rgb]
    return "#" + "".join(f"{c:02x}" for c in rgb)
