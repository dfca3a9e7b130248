"""The fluid engine's speed on a capacity-planning sized scenario, and the discrete simulator's beside it.

    python bench/fluid_speed.py [--quick] [--budget-s 300]

The scenario: 4 replicas (a large GPU each: d1 = 1 us per batch token, 64k-token budget, 50M KV
tokens), 8 paths (100 Mbit/s to 1 Gbit/s, 10-120 ms, one with 1% loss, one fading to a fifth for a
minute, one with a 20 s outage; requests spread over them in proportion to their rates), Poisson
arrivals at 2,750 requests/s for 10 simulated minutes.
A stream stays open ~36 s (generation, then reading at 5-15 tokens/s), so about 100,000 streams are
open at once (Little's law: the rate times
the mean time a stream stays open; the fluid engine's own count is printed). Target: under 10 s on
one core.

Then the discrete simulator on the same scenario with the arrival rate (and streams) scaled down by
a factor f, from f = 1/3000 up by x3 until a run takes longer than ``--budget-s`` (default 300 s,
stopped there): the largest case it finished, its concurrent streams and wall time, for the ratio.
``--quick``: the fluid run and the smallest discrete case only. Each case runs once.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# One core, as the target says: a multi-threaded BLAS under the solver's vector products only adds threads
# that spin (on a busy machine its CPU time doubled the fluid run's).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from scenarios import LoadedScenario
from scenarios.loader import parse_scenario

RATE = 2750.0
DURATION_S = 600.0


def scenario(factor: float = 1.0) -> LoadedScenario:
    rate = RATE * factor
    raw: dict[str, Any] = {
        "name": "fluid-speed",
        "seed": 1,
        "max_duration_s": DURATION_S,
        "server": {"d0_s": 0.02, "d1_s": 1e-6, "batch_tokens": 65536, "kv_tokens": 50_000_000,
                   "max_running": 60_000, "replicas": 4},
        "workload": {"arrivals": {"kind": "poisson", "rate_per_s": rate}, "streams": max(1, int(rate * DURATION_S)),
                     "prompt_tokens": {"dist": "uniform", "low": 100, "high": 600},
                     "output_tokens": {"dist": "lognormal", "median": 250, "sigma": 0.5, "min": 20, "max": 1200},
                     "bytes_per_token": 256},
        "clients": {"reading_tps": {"dist": "uniform", "low": 5, "high": 15}},
        "paths": {f"p{i}": {"rate_mbps": mbps * factor, "rtt_ms": rtt} for i, (mbps, rtt) in
                  enumerate([(1000, 10), (800, 20), (600, 30), (500, 40), (400, 60), (300, 80), (200, 100),
                             (100, 120)])},
        "faults": [{"kind": "rate", "path": "p1", "at_s": 200, "duration_s": 60, "factor": 0.2},
                   {"kind": "outage", "path": "p5", "at_s": 300, "duration_s": 20}],
        "controllers": {"unpaced": {}},
    }
    raw["paths"]["p3"]["loss"] = {"kind": "bernoulli", "p": 0.01}
    raw["workload"]["paths"] = {name: p["rate_mbps"] for name, p in raw["paths"].items()}  # load ~ capacity
    return LoadedScenario(parse_scenario(copy.deepcopy(raw), "bench/fluid_speed.py"), Path("scenarios/x.yaml"), raw)


def fluid() -> None:
    from sim.fluid.engine import simulate

    t0 = time.process_time()
    run = simulate(scenario(), "unpaced", {})
    cpu = time.process_time() - t0
    # open streams: admitted and not yet read to the end, plus waiting (all replicas), at the busiest sample
    opened = [(run.acc("admitted", i) - run.acc("done", i)) for i in range(len(run.t))]
    s = run.summary
    print(f"fluid: {DURATION_S:.0f} simulated s, {RATE:.0f} req/s, 4 replicas, 8 paths: {cpu:.2f} s CPU "
          f"({run.wall_s:.2f} s wall, {run.rhs_calls} right-hand-side calls, {len(run.classes)} classes)")
    print(f"  open streams: peak {max(opened):,.0f}; {s['streams']:,.0f} requests, "
          f"{s['tokens_generated']:,.0f} tokens, GPU busy {s['gpu_busy_frac']:.2f}; target < 10 s: "
          f"{'met' if cpu < 10 else 'missed'}")


def _discrete(factor: float, out: Any) -> None:
    from sim.model.workload import draw_requests
    from sim.world import run_controller

    loaded = scenario(factor)
    t0 = time.perf_counter()
    reqs = draw_requests(loaded.scenario, loaded.base_dir, 1)
    with tempfile.TemporaryDirectory(prefix="fl-bench-") as tmp:
        run_controller(loaded, reqs, "unpaced", {}, Path(tmp) / "unpaced", 1)
    out.put((len(reqs), time.perf_counter() - t0))


def discrete(budget_s: float, quick: bool) -> None:
    factor, best = 1 / 3000, None
    ctx = mp.get_context("fork")
    while True:
        q = ctx.Queue()
        proc = ctx.Process(target=_discrete, args=(factor, q))
        t0 = time.perf_counter()
        proc.start()
        proc.join(budget_s)
        if proc.is_alive():
            proc.kill()
            proc.join()
            print(f"discrete: f = {factor:.5f} ({RATE * factor:.1f} req/s) did not finish in {budget_s:.0f} s")
            break
        n, wall = q.get()
        best = (factor, n, wall)
        print(f"discrete: f = {factor:.5f} ({RATE * factor:.1f} req/s, {n} requests, about "
              f"{100_000 * factor:,.0f} open streams): {wall:.1f} s wall ({time.perf_counter() - t0:.1f} s with fork)",
              flush=True)
        if quick:
            break
        factor *= 3
    if best is not None:
        print(f"largest discrete case finished: about {100_000 * best[0]:,.0f} open streams for 10 simulated minutes "
              f"in {best[2]:.1f} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the fluid run and the smallest discrete case only")
    p.add_argument("--budget-s", type=float, default=300.0, help="wall-time limit of one discrete case (s)")
    args = p.parse_args()
    fluid()
    discrete(args.budget_s, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
