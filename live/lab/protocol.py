"""What the lab and its children say to each other on their stdin and stdout.

Time 0: the lab picks one ``time.monotonic()`` instant just ahead and writes it as one line
``T0 <value>`` (:func:`epoch_line`) to the server child, the load client and the cross-traffic sender,
so that the load, the server's recording and the path's timeline all count from it (one machine,
one monotonic clock). The user-space link takes its clock as the command ``start <value>``.

Events: the link and the cross-traffic children report on stdout one JSON object a line
(:func:`emit`), ``{"event": "ready", ...}`` first and ``{"event": "exit", ...}`` last; the parent waits
for them.
"""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["emit", "epoch_line", "parse_epoch_line"]


def epoch_line(t0: float) -> str:
    """What the lab writes to a child's stdin: time 0 as a ``time.monotonic()`` value."""
    return f"T0 {t0!r}\n"


def parse_epoch_line(line: str) -> float | None:
    """The time 0 an :func:`epoch_line` carries, or None for anything else."""
    words = line.split()
    if len(words) != 2 or words[0] != "T0":
        return None
    try:
        return float(words[1])
    except ValueError:
        return None


def emit(obj: dict[str, Any]) -> None:
    """One JSON line on stdout, flushed at once: the parent waits for it."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
