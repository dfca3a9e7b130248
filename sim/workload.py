"""The requests of one run, drawn once and shared by every controller (common random numbers).

Each quantity has its own random stream (``default_rng([seed, k])``), so the arrivals, lengths,
paths and readers are identical across controllers and adding a new quantity later does not
reshuffle the others.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scenarios.schema import Scenario

# stream ids of the per-quantity random streams; never renumber (it would change every result)
RNG_ARRIVALS, RNG_PROMPT, RNG_OUTPUT, RNG_PATH, RNG_READING, RNG_PATIENCE, RNG_FIRST_PATIENCE = range(1, 8)
RNG_VICTIM = 8
RNG_LOSS_BASE = 100  # + path index


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
    rows = list(csv.DictReader((base_dir / a.file).open()))[:n]
    t = np.array([float(r["arrival_time"]) for r in rows])
    pre = np.array([int(float(r["prefill_length"])) for r in rows])
    dec = np.array([int(float(r["decode_length"])) for r in rows])
    return t, pre, dec


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
        )
        for i in range(n)
    ]
