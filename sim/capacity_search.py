"""The pieces of a capacity search that involve no simulation: the SLO, the rate scaling, the bisection.

A capacity search (``python -m sim capacity``, :mod:`sim.capacity`) asks, for each scheduler x
controller pair, for the largest arrival rate at which a service-level objective still holds, as
Andes does for its headline "request rate at mean QoE >= 0.9" (arXiv 2404.16283, Fig. 11) and
TokenFlow for its effective throughput under load (arXiv 2510.02758). Three pure parts:

* :func:`parse_slos`: ``METRIC OP NUMBER`` (``qoe_mean>=0.9``, ``ttft_p99_s<2``), METRIC a key of
  summary.json (:data:`analysis.metrics.METRIC_KEYS`). Every one must hold, on the mean over seeds.
* :func:`scaled_scenario`: the scenario with every ``rate_per_s`` / ``rate_on_per_s`` found anywhere
  inside ``workload.arrivals`` multiplied by a factor k, whatever the arrival kind (and its scheduler
  replaced). The simulator draws arrivals as standardised variates divided by the rate, so at every k
  the same seed gives the same requests with their arrival times divided by k (common random numbers
  across rates). A ``csv`` kind is a fixed list of times: it cannot be scaled.
* :class:`Search`: bracket k by doubling (SLO holds at 1) or halving (it fails at 1), then bisect the
  bracket [lo, hi] (lo holds, hi fails) until (hi - lo) <= tol x lo. It asks for one k at a time and
  is told whether the SLO held there, so probes of different pairs can run in parallel.
"""

from __future__ import annotations

import copy
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from analysis.metrics import METRIC_KEYS
from scenarios import LoadedScenario
from scenarios.cli_errors import BadInput
from scenarios.loader import key_text, parse_scenario

__all__ = [
    "MAX_DOUBLINGS",
    "RATE_KEYS",
    "Search",
    "Slo",
    "bisect",
    "check_scalable",
    "mean_over_seeds",
    "parse_slos",
    "rate_fields",
    "scaled_scenario",
    "slos_hold",
]

#: the arrival-rate fields a rate factor multiplies, in any arrival kind.
RATE_KEYS: tuple[str, ...] = ("rate_per_s", "rate_on_per_s")
#: bracketing gives up after this many doublings (or halvings) from k = 1: k in [2**-10, 2**10].
MAX_DOUBLINGS = 10

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_SLO_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|>|<)\s*(\S+)\s*$")


@dataclass(frozen=True)
class Slo:
    """One objective: ``metric op threshold`` on the mean of ``metric`` over seeds."""

    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"

    def holds(self, value: float | None) -> bool:
        """A metric that has no value (no stream showed a token: no TTFT) fails every objective."""
        return value is not None and math.isfinite(value) and _OPS[self.op](value, self.threshold)


def parse_slos(texts: Sequence[str], flag: str = "--slo") -> list[Slo]:
    """Each ``--slo`` text as an :class:`Slo`; a :class:`BadInput` names every bad one at once."""
    slos: list[Slo] = []
    problems: list[tuple[str, str]] = []
    for text in texts:
        shown = key_text(text)
        m = _SLO_RE.match(text)
        if m is None:
            problems.append((flag, f"expected METRIC OP NUMBER with OP one of >=, <=, >, < "
                             f"(e.g. qoe_mean>=0.9), got {shown}"))
            continue
        metric, op, number = m.groups()
        if metric not in METRIC_KEYS:
            problems.append((flag, f"unknown metric {metric!r} in {shown}; known: {', '.join(METRIC_KEYS)}"))
            continue
        try:
            threshold = float(number)
        except ValueError:
            threshold = math.nan
        if not math.isfinite(threshold):
            problems.append((flag, f"the threshold must be a finite number, got {key_text(number)} in {shown}"))
            continue
        slos.append(Slo(metric, op, threshold))
    if not texts:
        problems.append((flag, "give at least one objective, e.g. --slo 'qoe_mean>=0.9'"))
    if problems:
        raise BadInput.many(problems)
    return slos


def mean_over_seeds(values: Sequence[float | None]) -> float | None:
    """The mean of one metric over seeds, to 6 significant digits as summary.json keeps every metric
    (so the mean of 0.95 and 0.85 is 0.9, not 0.8999999999999999, and meets ``qoe_mean>=0.9``); None
    when any seed has no value (or there are none)."""
    if not values or any(v is None for v in values):
        return None
    return float(f"{math.fsum(v for v in values if v is not None) / len(values):.6g}")


def slos_hold(slos: Sequence[Slo], per_seed: Sequence[Mapping[str, float | None]]) -> tuple[bool, dict[str, Any]]:
    """Whether every objective holds on the mean over seeds of ``per_seed`` metrics, and those means."""
    means = {s.metric: mean_over_seeds([m.get(s.metric) for m in per_seed]) for s in slos}
    return all(s.holds(means[s.metric]) for s in slos), means


# --------------------------------------------------------------------------- scaling the arrival rate
def rate_fields(arrivals: Any, where: str = "workload.arrivals") -> list[tuple[str, float]]:
    """Every (key path, value) of a rate field inside ``arrivals`` (mapping or list, any depth), in
    file order; a :class:`ValueError` whose text is ``key path: problem`` for a ``csv`` kind."""
    found: list[tuple[str, float]] = []
    if isinstance(arrivals, Mapping):
        if arrivals.get("kind") == "csv":
            raise ValueError(f"{where}.kind: csv arrivals are a fixed list of request times and cannot be "
                             "scaled by a rate factor (capacity search needs a rate kind: poisson, periodic, "
                             "bursty, ...)")
        for key, value in arrivals.items():
            path = f"{where}.{key_text(key)}"
            if key in RATE_KEYS and isinstance(value, int | float) and not isinstance(value, bool):
                found.append((path, float(value)))
            else:
                found.extend(rate_fields(value, path))
    elif isinstance(arrivals, list):
        for i, value in enumerate(arrivals):
            found.extend(rate_fields(value, f"{where}.{i}"))
    return found


def _scale(node: Any, k: float) -> Any:
    if isinstance(node, Mapping):
        return {key: (float(v) * k if key in RATE_KEYS and isinstance(v, int | float) and not isinstance(v, bool)
                      else _scale(v, k)) for key, v in node.items()}
    if isinstance(node, list):
        return [_scale(v, k) for v in node]
    return node


def check_scalable(loaded: LoadedScenario) -> tuple[str, float]:
    """The first rate field of the scenario's arrivals (its key path and value: the nominal rate that
    a factor k makes k x value), or a :class:`BadInput` naming the key that cannot be scaled."""
    arrivals = (loaded.raw.get("workload") or {}).get("arrivals")
    try:
        fields = rate_fields(arrivals)
    except ValueError as exc:
        key, _, problem = str(exc).partition(": ")
        raise BadInput(f"{loaded.path}: {key}", problem) from None
    if not fields:
        raise BadInput(f"{loaded.path}: workload.arrivals",
                       f"no {' or '.join(RATE_KEYS)} to scale: capacity search varies the arrival rate")
    return fields[0]


def scaled_scenario(loaded: LoadedScenario, k: float, scheduler: str | None = None,
                    scheduler_params: Mapping[str, Any] | None = None) -> LoadedScenario:
    """``loaded`` with every arrival rate multiplied by ``k`` and, when given, ``server.scheduler``
    replaced by ``scheduler`` with ``scheduler_params``; validated as a scenario file would be."""
    check_scalable(loaded)
    raw = copy.deepcopy(loaded.raw)
    raw["workload"] = dict(raw["workload"])
    raw["workload"]["arrivals"] = _scale(raw["workload"]["arrivals"], k)
    if scheduler is not None:
        server = dict(raw.get("server") or {})
        server["scheduler"] = {"name": scheduler, "params": dict(scheduler_params or {})}
        raw["server"] = server
    return LoadedScenario(parse_scenario(raw, loaded.path), loaded.path, raw)


# --------------------------------------------------------------------------- the search
@dataclass
class Search:
    """Bracket then bisect the rate factor k of one pair; ask :meth:`next_k`, tell :meth:`record`.

    ``lo`` is the largest k at which the SLO held, ``hi`` the smallest at which it failed (None
    until seen). From ``start`` it doubles while the SLO holds and halves while it fails, at most
    ``max_steps`` times each way; once both ends are known it probes the midpoint until
    ``hi - lo <= tol * lo``. The capacity is ``lo`` (0 when even ``start / 2**max_steps`` fails).
    """

    tol: float
    start: float = 1.0
    max_steps: int = MAX_DOUBLINGS
    lo: float | None = None
    hi: float | None = None
    probes: list[tuple[float, bool]] = field(default_factory=list)

    def next_k(self) -> float | None:
        """The next factor to probe, or None when the search is over."""
        if not self.probes:
            return self.start
        if self.hi is None:
            assert self.lo is not None
            return None if self.lo >= self.start * 2.0**self.max_steps else self.lo * 2.0
        if self.lo is None:
            return None if self.hi <= self.start / 2.0**self.max_steps else self.hi / 2.0
        if self.hi - self.lo <= self.tol * self.lo:
            return None
        return (self.lo + self.hi) / 2.0

    def record(self, k: float, holds: bool) -> None:
        self.probes.append((k, holds))
        if holds:
            self.lo = k if self.lo is None else max(self.lo, k)
        else:
            self.hi = k if self.hi is None else min(self.hi, k)

    @property
    def done(self) -> bool:
        return bool(self.probes) and self.next_k() is None

    @property
    def capacity(self) -> float:
        return self.lo if self.lo is not None else 0.0

    @property
    def outcome(self) -> str:
        """``found`` (bracketed to the tolerance), ``unbounded`` (held up to the largest factor
        tried), ``none`` (failed down to the smallest) or ``searching``."""
        if not self.done:
            return "searching"
        if self.hi is None:
            return "unbounded"
        return "none" if self.lo is None else "found"

    def probes_left(self) -> int:
        """How many more probes the bisection needs once bracketed (an estimate while bracketing)."""
        if self.done:
            return 0
        if self.lo is None or self.hi is None:
            return 1 + max(1, math.ceil(math.log2(1.0 / self.tol)))
        return max(1, math.ceil(math.log2((self.hi - self.lo) / (self.tol * self.lo))))


def bisect(holds: Callable[[float], bool], tol: float, start: float = 1.0,
           max_steps: int = MAX_DOUBLINGS) -> Search:
    """Run a :class:`Search` to its end on ``holds(k)``, one probe at a time."""
    search = Search(tol, start, max_steps)
    while (k := search.next_k()) is not None:
        search.record(k, holds(k))
    return search
