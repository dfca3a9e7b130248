"""The requests of one run, drawn once and shared by every controller (common random numbers).

Each quantity has its own random stream (``default_rng([seed, k])``), so the arrivals, lengths,
paths and readers are identical across controllers and adding a new quantity later does not
reshuffle the others.

Arrival times are standardised gaps (mean 1) drawn from the arrivals stream and divided by the
rate, so multiplying every rate by k divides every arrival time by k (to rounding) and the same
requests arrive in the same order: the common random numbers a capacity search bisects over.
A ``phases`` timeline gives each phase its own stream (``default_rng([seed, RNG_ARRIVALS, i])``);
there the arrivals inside each phase move closer to its start by 1/k.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scenarios.schema import Gamma, Periodic, PhaseArrivals, Phases, Poisson, PrefixSpec, Scenario, Zipf

# stream ids of the per-quantity random streams; never renumber (it would change every result)
RNG_ARRIVALS, RNG_PROMPT, RNG_OUTPUT, RNG_PATH, RNG_READING, RNG_PATIENCE, RNG_FIRST_PATIENCE = range(1, 8)
RNG_VICTIM = 8
RNG_PREFIX = 9  # workload.prefix: the prefixes' lengths, who carries one, which one
RNG_LOSS_BASE = 100  # + path index
GAP_BLOCK = 256  # a phase's standardised gaps are drawn this many at a time, whatever its rate


@dataclass(frozen=True, slots=True)
class Request:
    stream_id: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    path: str
    reading_tps: float
    patience_s: float
    first_token_patience_s: float
    prefix_id: int | None = None  # the shared prefix its prompt starts with (workload.prefix), if any
    prefix_tokens: int = 0  # that prefix's length: part of prompt_tokens


def rng_for(seed: int, k: int) -> np.random.Generator:
    return np.random.default_rng([seed, k])


def _arrival_times(scn: Scenario, base_dir: Path, seed: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Arrival times, and prompt/output lengths when the arrivals come from a requests.csv."""
    a = scn.workload.arrivals
    n = scn.workload.streams
    rng = rng_for(seed, RNG_ARRIVALS)
    if a.kind == "poisson":
        return np.cumsum(rng.exponential(1.0 / a.rate_per_s, n)), None, None
    if a.kind == "periodic":
        return np.arange(n) / a.rate_per_s, None, None
    if a.kind == "bursty":
        # Poisson while on; an off period shifts every later arrival by off_s
        busy = np.cumsum(rng.exponential(1.0 / a.rate_on_per_s, n))
        return busy + np.floor(busy / a.on_s) * a.off_s, None, None
    if a.kind == "gamma":
        return np.cumsum(_standard_gaps(a, rng, n)) / a.rate_per_s, None, None
    if a.kind == "phases":
        return _phase_times(a, seed, n, scn.max_duration_s), None, None
    rows = list(csv.DictReader((base_dir / a.file).open()))[:n]
    t = np.array([float(r["arrival_time"]) for r in rows])
    pre = np.array([int(float(r["prefill_length"])) for r in rows])
    dec = np.array([int(float(r["decode_length"])) for r in rows])
    return t, pre, dec


def _standard_gaps(a: Poisson | Gamma, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` inter-arrival gaps with mean 1: Exp(1), or Gamma(k, 1/k) (variance 1/k)."""
    if a.kind == "gamma":
        return rng.standard_gamma(a.shape, n) / a.shape
    return rng.standard_exponential(n)


class _PhaseProcess:
    """One phase's arrival process, drawing its standardised gaps from its own stream in blocks of
    ``GAP_BLOCK``; a repeat of the phase continues where the last one stopped. The gap that runs past
    the phase's end is used up (the process is cut there)."""

    def __init__(self, spec: PhaseArrivals, rng: np.random.Generator) -> None:
        self.spec, self.rng = spec, rng
        self.gaps = np.empty(0)
        self.used = 0

    def times(self, start_s: float, duration_s: float, limit: int) -> np.ndarray:
        """Arrival times in [start_s, start_s + duration_s), at most ``limit`` of them."""
        a = self.spec
        if isinstance(a, Periodic):  # one arrival at the phase's start, then every 1/rate
            count = int(min(limit, np.ceil(duration_s * a.rate_per_s)))
            offsets = np.arange(count) / a.rate_per_s
            return start_s + offsets[offsets < duration_s]
        out: list[np.ndarray] = []
        total, base = 0, 0.0  # base: standardised time of the last arrival so far
        while total < limit:
            if self.used == len(self.gaps):
                self.gaps, self.used = _standard_gaps(a, self.rng, GAP_BLOCK), 0
            u = base + np.cumsum(self.gaps[self.used:])
            offsets = u / a.rate_per_s
            inside = int(np.searchsorted(offsets, duration_s, side="left"))  # offsets < duration_s
            take = min(inside, limit - total)
            out.append(start_s + offsets[:take])
            total += take
            if take < len(offsets):  # the phase ended (or the requests ran out) inside this block
                self.used += take + (take == inside)
                break
            self.used, base = len(self.gaps), float(u[-1])
        return np.concatenate(out) if out else np.empty(0)


def _phase_times(a: Phases, seed: int, n: int, max_duration_s: float) -> np.ndarray:
    """The timeline's arrival times: at most ``n``, none past the last phase (or, with ``repeat``,
    past max_duration_s, when the run stops anyway)."""
    procs = [_PhaseProcess(p.arrivals, np.random.default_rng([seed, RNG_ARRIVALS, i]))
             for i, p in enumerate(a.phases)]
    out: list[np.ndarray] = []
    total, start = 0, 0.0
    while total < n and start < max_duration_s:
        for phase, proc in zip(a.phases, procs, strict=True):
            t = proc.times(start, phase.duration_s, n - total)
            out.append(t)
            total += len(t)
            start += phase.duration_s
            if total >= n:
                break
        if not a.repeat:
            break
    return np.concatenate(out) if out else np.empty(0)


def draw_requests(scn: Scenario, base_dir: Path, seed: int | None = None) -> list[Request]:
    seed = scn.seed if seed is None else seed
    w, c = scn.workload, scn.clients
    t, prompts, outputs = _arrival_times(scn, base_dir, seed)
    n = len(t)
    if prompts is None:
        prompts = np.maximum(1, np.rint(w.prompt_tokens.sample(rng_for(seed, RNG_PROMPT), n))).astype(int)
    if outputs is None:
        outputs = np.maximum(1, np.rint(w.output_tokens.sample(rng_for(seed, RNG_OUTPUT), n))).astype(int)
    names = list(scn.paths)
    weights = np.array([(w.paths or {}).get(p, 0.0 if w.paths else 1.0) for p in names], dtype=float)
    path_idx = rng_for(seed, RNG_PATH).choice(len(names), size=n, p=weights / weights.sum())
    reading = np.maximum(0.1, c.reading_tps.sample(rng_for(seed, RNG_READING), n))
    patience = np.maximum(0.0, c.patience_s.sample(rng_for(seed, RNG_PATIENCE), n))
    first = (
        patience
        if c.first_token_patience_s is None
        else np.maximum(0.0, c.first_token_patience_s.sample(rng_for(seed, RNG_FIRST_PATIENCE), n))
    )
    prefix_ids, prefix_len = _prefixes(w.prefix, seed, n)
    if w.prefix is not None:
        prompts = prompts + np.where(prefix_ids >= 0, prefix_len[np.maximum(prefix_ids, 0)], 0)
    width = max(4, len(str(n)))
    return [
        Request(
            stream_id=f"s{i:0{width}d}",
            arrival_s=float(t[i]),
            prompt_tokens=int(prompts[i]),
            output_tokens=int(outputs[i]),
            path=names[int(path_idx[i])],
            reading_tps=float(reading[i]),
            patience_s=float(patience[i]),
            first_token_patience_s=float(first[i]),
            prefix_id=None if prefix_ids[i] < 0 else int(prefix_ids[i]),
            prefix_tokens=0 if prefix_ids[i] < 0 else int(prefix_len[prefix_ids[i]]),
        )
        for i in range(n)
    ]


def _prefixes(spec: PrefixSpec | None, seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each request's prefix id (-1: none) and each prefix's length, from the prefix stream: the lengths
    (one per prefix), then who carries one (``share``), then which (``popularity``), in that order."""
    if spec is None:
        return np.full(n, -1), np.zeros(0, dtype=int)
    rng = rng_for(seed, RNG_PREFIX)
    lengths = np.maximum(1, np.rint(spec.tokens.sample(rng, spec.groups))).astype(int)
    carries = rng.random(n) < spec.share
    if isinstance(spec.popularity, Zipf):
        weights = 1.0 / np.arange(1, spec.groups + 1, dtype=float) ** spec.popularity.zipf
    else:
        weights = np.ones(spec.groups)
    ids = rng.choice(spec.groups, size=n, p=weights / weights.sum())
    return np.where(carries, ids, -1), lengths
