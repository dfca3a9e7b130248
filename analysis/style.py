"""How controllers look in tables and plots: a label and a colour each.

The ``controllers`` package knows the proper names and colours, but analysis must not import
it (it reads only what a run wrote). So a run copies that display information into run.json
under ``controller_info`` (``{"name": {"label": ..., "color": ...}}``) and this module reads it
back; a controller without an entry is shown by its name in a colour from a fixed palette,
picked by its position in the run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from analysis.results import Run

__all__ = ["PALETTE", "PER_CONTROLLER_PREFIXES", "ControllerStyle", "controller_style", "safe_name"]

#: colours for controllers run.json gives none for (matplotlib's tab10, fixed order).
PALETTE: tuple[str, ...] = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
#: file-name prefixes of the per-controller plots (``<prefix><safe_name(controller)>.png``).
PER_CONTROLLER_PREFIXES: tuple[str, ...] = ("timeline_", "system_dynamics_", "request_timeline_")


@dataclass(frozen=True)
class ControllerStyle:
    label: str
    color: str


def controller_style(run: Run, name: str) -> ControllerStyle:
    """Label and colour of a controller: run.json ``controller_info`` first, else the palette."""
    info = run.info.get("controller_info")
    entry = info.get(name) if isinstance(info, Mapping) else None
    names = run.controller_names
    index = names.index(name) if name in names else 0
    label, color = name, PALETTE[index % len(PALETTE)]
    if isinstance(entry, Mapping):
        label = str(entry.get("label") or label)
        wanted = entry.get("color")
        if isinstance(wanted, str) and wanted:
            from matplotlib.colors import is_color_like  # no pyplot, no backend

            if is_color_like(wanted):  # an unusable colour falls back to the palette
                color = wanted
    return ControllerStyle(label, color)


def safe_name(name: str) -> str:
    """A controller name made safe for a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
