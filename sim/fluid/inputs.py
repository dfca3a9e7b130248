"""What the fluid model is fed: request classes, the arrival rate over time, and each path's rates.

* **Classes.** A request is (prompt, output, reading pace, path). The scenario's distributions are
  sampled (``SAMPLES`` draws from a fixed stream of the scenario's seed, rounded as
  :func:`sim.model.workload.draw_requests` rounds them) and the samples binned jointly: output length
  by quantiles with the tail resolved finer (it sets KV lifetimes and the last stream's end),
  prompt by halves, reading pace by quantiles (or its few distinct values), path as drawn. A class
  carries its bin's means and its share of requests. ``inputs="requests"`` bins the drawn requests
  of the run instead (the same ones the discrete simulator serves): the fluid model then sees that
  sample's lengths and arrival times, not the distribution they were drawn from.
* **Arrivals.** A piecewise-constant rate: the mean rate of the scenario's process (Poisson, Gamma
  and periodic at their rate; on/off and phases piece by piece), cut where the expected count
  reaches ``workload.streams``; a requests.csv (and ``inputs="requests"``) by a histogram of the
  drawn arrival times.
* **Paths.** Per path and per segment of time: capacity (bytes/s; a trace averaged over
  ``TRACE_BIN_S`` bins, rate and outage faults applied), mean loss rate in force, propagation RTT
  with delay faults, bulk cross-traffic flows present, drop-tail queue size. Read from the path
  model every other user reads (:class:`sim.model.path.model.PathModel`).

Every change of any of these is a breakpoint: the engine integrates between breakpoints, so no
solver step straddles a discontinuity of the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scenarios.schema import Bursty, Periodic, Phases, Scenario
from sim.model.path.model import PathModel
from sim.model.workload import Request, rng_for

SAMPLES = 20_000  # draws of the scenario's distributions discretised into classes
RNG_FLUID_CLASSES = 1000  # the stream they are drawn from (never used by the discrete simulator)
OUTPUT_QUANTILES = (0.0, 0.2, 0.4, 0.6, 0.75, 0.875, 0.95, 0.99, 1.0)
PROMPT_QUANTILES = (0.0, 0.5, 1.0)
READING_QUANTILES = (0.0, 1 / 3, 2 / 3, 1.0)
TRACE_BIN_S = 1.0  # a trace's capacity is averaged over bins this long
LOOKAHEAD_S = 0.1  # TraceCapacity.rate_bps_at averages a window this long


@dataclass(frozen=True)
class Classes:
    """Request classes: per class its mean prompt, output and reading pace, its path and its share."""

    prompt: np.ndarray
    output: np.ndarray
    reading: np.ndarray
    path: np.ndarray  # index into the scenario's paths
    weight: np.ndarray  # shares, summing to 1
    samples_output: np.ndarray  # the samples binned (for the last stream's end), with their class
    samples_reading: np.ndarray
    samples_class: np.ndarray

    def __len__(self) -> int:
        return len(self.weight)


def _bins(x: np.ndarray, quantiles: tuple[float, ...]) -> np.ndarray:
    """Bin index of each sample: quantile edges, or one bin per value when there are few values."""
    values = np.unique(x)
    if len(values) <= len(quantiles) - 1:
        return np.searchsorted(values, x)
    edges = np.unique(np.quantile(x, quantiles[1:-1]))
    return np.searchsorted(edges, x, side="right")


def classes_from_samples(prompt: np.ndarray, output: np.ndarray, reading: np.ndarray,
                         path: np.ndarray) -> Classes:
    """Joint bins of the samples, each non-empty cell a class with its means and share."""
    key = np.stack([_bins(prompt, PROMPT_QUANTILES), _bins(output, OUTPUT_QUANTILES),
                    _bins(reading, READING_QUANTILES), path])
    cells, cls = np.unique(key, axis=1, return_inverse=True)
    cls = cls.ravel()
    n = cells.shape[1]
    count = np.bincount(cls, minlength=n).astype(float)

    def mean(x: np.ndarray) -> np.ndarray:
        return np.bincount(cls, weights=x, minlength=n) / count

    return Classes(mean(prompt.astype(float)), mean(output.astype(float)), mean(reading), cells[3].astype(int),
                   count / count.sum(), output.astype(float), reading.astype(float), cls)


def scenario_classes(scn: Scenario, seed: int) -> Classes:
    """The scenario's distributions, sampled and binned."""
    w, c = scn.workload, scn.clients
    rng = rng_for(seed, RNG_FLUID_CLASSES)
    prompt = np.maximum(1, np.rint(w.prompt_tokens.sample(rng, SAMPLES)))
    output = np.maximum(1, np.rint(w.output_tokens.sample(rng, SAMPLES)))
    reading = np.maximum(0.1, c.reading_tps.sample(rng, SAMPLES))
    names = list(scn.paths)
    weights = np.array([(w.paths or {}).get(p, 0.0 if w.paths else 1.0) for p in names], dtype=float)
    path = rng.choice(len(names), size=SAMPLES, p=weights / weights.sum())
    if w.prefix is not None:  # a prefix lengthens the prompt (the cache itself is refused, engine.check)
        share, mean_prefix = w.prefix.share, w.prefix.tokens.mean()
        prompt = prompt + np.where(rng.random(SAMPLES) < share, np.rint(mean_prefix), 0)
    return classes_from_samples(prompt, output, reading, path)


def request_classes(requests: list[Request], path_names: list[str]) -> Classes:
    """The drawn requests of a run, binned."""
    index = {p: i for i, p in enumerate(path_names)}
    return classes_from_samples(np.array([r.prompt_tokens for r in requests], dtype=float),
                                np.array([r.output_tokens for r in requests], dtype=float),
                                np.array([r.reading_tps for r in requests]),
                                np.array([index[r.path] for r in requests]))


# --------------------------------------------------------------------------- patience
HAZARD_GRID_S = 0.1
HAZARD_CAP = 2.0  # per second: the last readers of a bounded patience leave within about half a second


@dataclass(frozen=True)
class Hazard:
    """A patience distribution's hazard rate h(z) = f(z) / S(z) on a grid (sampled, capped at HAZARD_CAP):
    of the people who have waited z seconds, the share per second that give up now."""

    grid_s: np.ndarray
    rate: np.ndarray

    def at(self, z: np.ndarray | float) -> np.ndarray:
        return np.interp(z, self.grid_s, self.rate)


def hazard(samples: np.ndarray) -> Hazard:
    top = float(np.max(samples)) + 1.0
    grid = np.arange(0.0, top + HAZARD_GRID_S, HAZARD_GRID_S)
    x = np.sort(samples)
    survive = 1.0 - np.searchsorted(x, grid, side="right") / len(x)  # S(z)
    ahead = 1.0 - np.searchsorted(x, grid + HAZARD_GRID_S, side="right") / len(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(survive > 0, (survive - ahead) / (survive * HAZARD_GRID_S), HAZARD_CAP)
    return Hazard(grid, np.minimum(rate, HAZARD_CAP))


def patience_hazards(scn: Scenario, seed: int) -> tuple[Hazard, Hazard]:
    """(stall patience, first-token patience) of the scenario's readers."""
    c = scn.clients
    rng = rng_for(seed, RNG_FLUID_CLASSES + 1)
    stall = np.maximum(0.0, c.patience_s.sample(rng, SAMPLES))
    first = (stall if c.first_token_patience_s is None
             else np.maximum(0.0, c.first_token_patience_s.sample(rng, SAMPLES)))
    return hazard(stall), hazard(first)


# --------------------------------------------------------------------------- arrivals
@dataclass(frozen=True)
class ArrivalRate:
    """A piecewise-constant rate: ``rates[i]`` requests/s from ``starts[i]``, zero from ``end_s``."""

    starts: np.ndarray
    rates: np.ndarray
    end_s: float

    def at(self, t: float) -> float:
        if t >= self.end_s or t < 0:
            return 0.0
        return float(self.rates[max(0, int(np.searchsorted(self.starts, t, side="right")) - 1)])

    def breakpoints(self) -> list[float]:
        return [*self.starts.tolist(), self.end_s]

    def total(self) -> float:
        edges = np.append(self.starts, self.end_s)
        return float(np.sum(self.rates * np.clip(np.diff(edges), 0, None)))


def _cut(pieces: list[tuple[float, float]], count: int, horizon_s: float) -> ArrivalRate:
    """Pieces (start, rate) in order, ending where ``count`` requests are expected (or at the horizon)."""
    starts, rates, expected = [], [], 0.0
    end = 0.0
    for i, (start, rate) in enumerate(pieces):
        if start >= horizon_s:
            break
        nxt = pieces[i + 1][0] if i + 1 < len(pieces) else horizon_s
        starts.append(start)
        rates.append(rate)
        if rate > 0 and expected + rate * (nxt - start) >= count:
            end = start + (count - expected) / rate
            break
        expected += rate * (nxt - start)
        if rate > 0:
            end = min(nxt, horizon_s)  # trailing pieces without arrivals do not extend it
    return ArrivalRate(np.array(starts, dtype=float), np.array(rates, dtype=float), end)


def scenario_arrivals(scn: Scenario) -> ArrivalRate:
    """The mean rate of the scenario's arrival process (a requests.csv: call :func:`request_arrivals`)."""
    a, n, horizon = scn.workload.arrivals, scn.workload.streams, scn.max_duration_s
    if isinstance(a, Bursty):
        pieces, t = [], 0.0
        while t < horizon:
            pieces.append((t, a.rate_on_per_s))
            if a.off_s > 0:
                pieces.append((t + a.on_s, 0.0))
            t += a.on_s + a.off_s
        return _cut(pieces, n, horizon)
    if isinstance(a, Phases):
        pieces, t = [], 0.0
        while t < horizon:
            for ph in a.phases:
                pieces.append((t, ph.arrivals.rate_per_s))
                t += ph.duration_s
            if not a.repeat:
                pieces.append((t, 0.0))
                break
        return _cut(pieces, n, horizon)
    if isinstance(a, Periodic) or hasattr(a, "rate_per_s"):
        return _cut([(0.0, a.rate_per_s)], n, horizon)  # type: ignore[union-attr]
    raise ValueError(f"no mean rate for arrivals of kind {a.kind!r}")


def request_arrivals(requests: list[Request], horizon_s: float) -> ArrivalRate:
    """A histogram of the drawn arrival times: bins holding about ten arrivals each (0.5 s to 10 s)."""
    t = np.sort(np.array([r.arrival_s for r in requests]))
    if len(t) == 0:
        return ArrivalRate(np.zeros(1), np.zeros(1), 0.0)
    span = max(t[-1], 1e-3)
    width = float(np.clip(10.0 * span / len(t), 0.5, 10.0))
    edges = np.arange(0.0, span + width, width)
    counts, _ = np.histogram(t, bins=edges)
    end = min(float(edges[-1]), horizon_s)
    return ArrivalRate(edges[:-1], counts / width, end)


# --------------------------------------------------------------------------- paths
@dataclass(frozen=True)
class PathRates:
    """One path's inputs over time: piecewise constant between ``breaks`` (values hold from each
    break to the next; ``breaks[0] == 0``)."""

    name: str
    breaks: np.ndarray
    capacity_Bps: np.ndarray  # bytes/s
    loss: np.ndarray  # mean loss rate in force
    rtt_s: np.ndarray  # propagation round trip, delay faults included
    bulk_flows: np.ndarray  # cross-traffic flows present
    queue_bytes: float
    mss_bytes: float
    init_cwnd: float
    cc: str

    def index(self, t: float) -> int:
        return max(0, int(np.searchsorted(self.breaks, t, side="right")) - 1)


def path_rates(name: str, model: PathModel, horizon_s: float) -> PathRates:
    """The path's rates over ``[0, horizon_s]`` from its model (capacity with its faults, loss, delay)."""
    spec = model.spec
    cuts = {0.0}
    for f in model.faults:
        cuts.update((f.at_s, f.at_s + f.duration_s))
    if spec.rate_schedule is not None:
        cuts.update(p.at_s for p in spec.rate_schedule)
    ct = spec.cross_traffic
    if ct is not None:
        cuts.add(ct.start_s)
        if ct.stop_s is not None:
            cuts.add(ct.stop_s)
    if spec.trace is not None:
        cuts.update(np.arange(0.0, horizon_s, TRACE_BIN_S).tolist())
    breaks = np.array(sorted(c for c in cuts if c < horizon_s))
    ends = np.append(breaks[1:], horizon_s)
    cap = model.capacity()
    caps, losses, rtts, bulk = [], [], [], []
    for lo, hi in zip(breaks, ends, strict=True):
        if spec.trace is not None:  # the mean over the segment of the 100 ms windows that tile it
            n = max(1, round((hi - lo) / LOOKAHEAD_S))
            pts = lo + (np.arange(n) + 0.5) * (hi - lo) / n
            caps.append(float(np.mean([cap.rate_bps_at(float(x)) for x in pts])) / 8)
        else:
            caps.append(cap.rate_bps_at(float(lo)) / 8)
        losses.append(model.loss_rate(float(lo)))
        rtts.append(2 * model.one_way_s + sum(d for s, e, d in model.delay_windows if s <= lo < e))
        on = ct is not None and ct.start_s <= lo and (ct.stop_s is None or lo < ct.stop_s)
        bulk.append(float(ct.flows) if on and ct is not None else 0.0)
    return PathRates(name, breaks, np.array(caps), np.array(losses), np.array(rtts), np.array(bulk),
                     float(model.queue_bytes), float(spec.mss_bytes), float(spec.init_cwnd_pkts), spec.cc)


def scenario_paths(scn: Scenario, base_dir: Path, horizon_s: float) -> list[PathRates]:
    return [path_rates(name, PathModel.from_spec(spec, scn.faults_for(name), base_dir), horizon_s)
            for name, spec in scn.paths.items()]
