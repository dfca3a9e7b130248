"""How fast is the simulator? Two figures, measured in one run (this machine is shared and noisy,
so the first is a ratio against SimPy itself, measured back to back in the same process):

1. events per second of the full model (serving node + TCP + links + readers + control loop),
   against a bare SimPy loop (`yield env.timeout(1)`) in the same process. Last line:
   ``ratio_to_bare_simpy=<x>``; target >= 0.5.
2. wall time of 200 concurrent streams x 120 simulated seconds (each stream 1200 tokens read at
   10 tok/s over a 50 Mbit/s path), per controller; target < 30 s on one core.

Each run also prints its events per simulated packet (data segment offered to a bottleneck) and
per generated token: the model's cost per event only means something while those stay put.

    python bench/sim_speed.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import simpy

from scenarios import load_scenario, parse_scenario
from scenarios.loader import LoadedScenario
from sim.model.workload import draw_requests
from sim.world import RunStats, run_controller


def bare_simpy_events_per_s(n_events: int) -> float:
    env = simpy.Environment()

    def loop(env: simpy.Environment):  # type: ignore[no-untyped-def]
        while True:
            yield env.timeout(1)

    env.process(loop(env))
    t0 = time.perf_counter()
    env.run(until=n_events)
    wall = time.perf_counter() - t0
    return next(env._eid) / wall


def run(loaded: LoadedScenario, controller: str, out: Path) -> RunStats:
    scn = loaded.scenario
    return run_controller(loaded, draw_requests(scn, loaded.base_dir), controller, scn.controllers.get(controller),
                          out / controller, scn.seed)


def per_unit(stats: RunStats) -> str:
    return (f"packets={stats.packets} tokens={stats.tokens} events_per_packet={stats.events / stats.packets:.3f} "
            f"events_per_token={stats.events / stats.tokens:.3f}")


def concurrent_scenario() -> LoadedScenario:
    data = {
        "name": "bench-200x120",
        "seed": 1,
        "server": {"d0_s": 0.02, "d1_s": 2e-5, "batch_tokens": 4096, "kv_tokens": 1_000_000, "max_running": 256},
        "workload": {"arrivals": {"kind": "periodic", "rate_per_s": 100}, "streams": 200, "prompt_tokens": 300,
                     "output_tokens": 1200, "bytes_per_token": 200},
        "clients": {"reading_tps": 10, "patience_s": 30},
        "paths": {f"p{i}": {"rate_mbps": 50, "rtt_ms": 20 + 20 * i} for i in range(4)},
        "max_duration_s": 200,
    }
    scn = parse_scenario(data, "bench")
    return LoadedScenario(scn, Path("bench.yaml").resolve(), data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller runs (a smoke test, not the figure of record)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        # 2. 200 streams x 120 s, per controller
        loaded = concurrent_scenario()
        for controller in ("unpaced", "fixed"):
            if args.quick and controller == "fixed":
                continue
            stats = run(loaded, controller, out / "concurrent")
            print(f"concurrent_200x120_{controller}_wall_s={stats.wall_s:.2f} events={stats.events} "
                  f"events_per_s={stats.events / stats.wall_s:,.0f} {per_unit(stats)}")
        # 1. events/s of the full model on a built-in fault scenario vs bare SimPy, interleaved
        scenario = load_scenario("wifi-fade")
        ratios = []
        for rep in range(1 if args.quick else 3):
            bare = bare_simpy_events_per_s(300_000 if args.quick else 1_000_000)
            stats = run(scenario, "fixed", out / f"wifi{rep}")
            model = stats.events / stats.wall_s
            ratios.append(model / bare)
            print(f"rep={rep} bare_simpy_events_per_s={bare:,.0f} model_events_per_s={model:,.0f} "
                  f"model_events={stats.events} model_wall_s={stats.wall_s:.2f} {per_unit(stats)}")
        ratios.sort()
        print(f"ratio_to_bare_simpy={ratios[len(ratios) // 2]:.3f}")


if __name__ == "__main__":
    main()
