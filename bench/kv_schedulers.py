"""Issue #12's targets on the KV-bound built-ins, as ratios measured in one run.

    python bench/kv_schedulers.py [--out results/bench-kv] [--seeds 2] [--jobs 2] [--tol 0.05]

1. Capacity (``python -m sim capacity``, common random numbers, mean QoE >= 0.9 over the seeds) of every
   scheduler x {unpaced, buffer} on ``kv-broadband`` and ``kv-mobile``. Prints the largest sustainable
   rate per pair and:
   - kv-broadband: the best scheduler's capacity over fcfs + unpaced's (target >= 1.6), and the best
     pair's P99 TTFT over fcfs + unpaced's at fcfs + unpaced's capacity (target <= 0.5);
   - kv-mobile: tokenpace's capacity over the better of andes and tokenflow, controller by controller and
     best against best (target >= 1.15).
2. Through the burst (the Gamma phase and the 20 s after it), on kv-mobile at the rate tokenpace sustains:
   tokens displayed per second with tokenpace's best controller over fcfs + unpaced's (target >= 1.5).

Capacity folders are resumable (``--resume`` is passed when they exist), so an interrupted bench loses only
the probes in flight; a complete search found there is reused as it is. Takes ~30-40 min of CPU with two seeds.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scenarios import load_scenario  # noqa: E402
from sim.capacity import main_capacity, run_probe  # noqa: E402
from sim.capacity_search import scaled_scenario  # noqa: E402
from sim.model.workload import draw_requests  # noqa: E402
from sim.world import run_controller  # noqa: E402

SCHEDULERS = ("fcfs", "andes", "tokenflow", "tokenpace")
CONTROLLERS = ("unpaced", "buffer")
BURST_TAIL_S = 20.0


def capacities(scenario: str, out: Path, seeds: int, jobs: int, tol: float) -> dict[tuple[str, str], dict[str, Any]]:
    argv = [scenario, "--slo", "qoe_mean>=0.9", "--schedulers", ",".join(SCHEDULERS), "--controllers",
            ",".join(CONTROLLERS), "--seeds", str(seeds), "--jobs", str(jobs), "--tol", str(tol), "--out", str(out)]
    done = out / "capacity.json"
    if done.is_file() and json.loads(done.read_text()).get("status") == "complete":
        print(f"{scenario}: reusing the complete search in {out} (delete it to search again)")
        return {(p["scheduler"], p["controller"]): p for p in json.loads(done.read_text())["pairs"]}
    if (out / "run.json").is_file():
        argv.append("--resume")
    code = main_capacity(argv)
    if code != 0:
        raise SystemExit(f"capacity search on {scenario} exited {code}")
    info = json.loads((out / "capacity.json").read_text())
    return {(p["scheduler"], p["controller"]): p for p in info["pairs"]}


def rate(pairs: dict[tuple[str, str], dict[str, Any]], pair: tuple[str, str]) -> float:
    return float(pairs[pair]["capacity_rate_per_s"] or 0.0)


def factor(pairs: dict[tuple[str, str], dict[str, Any]], pair: tuple[str, str]) -> float:
    return float(pairs[pair]["capacity_factor"] or 0.0)


def burst_window(loaded: Any) -> tuple[float, float]:
    """The Gamma phase of ``workload.arrivals`` (phases) and BURST_TAIL_S after it."""
    t = 0.0
    for phase in loaded.scenario.workload.arrivals.phases:
        if phase.arrivals.kind == "gamma":
            return t, t + phase.duration_s + BURST_TAIL_S
        t += phase.duration_s
    raise SystemExit("no gamma phase in the scenario's arrivals")


def displayed_per_s(scenario: str, k: float, scheduler: str, controller: str, seed: int) -> float:
    base = load_scenario(scenario)
    loaded = scaled_scenario(base, k, scheduler)
    t0, t1 = burst_window(loaded)
    requests = draw_requests(loaded.scenario, loaded.base_dir, seed)
    with tempfile.TemporaryDirectory(prefix="tokenpace-bench-") as tmp:
        folder = Path(tmp)
        run_controller(loaded, requests, controller, loaded.scenario.controllers.get(controller) or {}, folder, seed)
        n = 0
        with (folder / "tokens.csv").open() as f:
            for row in csv.DictReader(f):
                t = row["t_displayed"]
                if t and t0 <= float(t) < t1:
                    n += 1
    return n / (t1 - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("results/bench-kv"))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--tol", type=float, default=0.05)
    args = ap.parse_args()
    figures: dict[str, Any] = {}

    # 1a. kv-broadband
    b = capacities("kv-broadband", args.out / "kv-broadband", args.seeds, args.jobs, args.tol)
    base = ("fcfs", "unpaced")
    best = max(b, key=lambda p: (rate(b, p), p[0] == "tokenpace"))
    figures["broadband_capacity_ratio"] = rate(b, best) / rate(b, base)
    loaded = load_scenario("kv-broadband")
    seed0 = loaded.scenario.seed
    k = factor(b, base)
    ttft = {p: run_probe(scaled_scenario(loaded, k, p[0]), p[1], loaded.scenario.controllers.get(p[1]) or {},
                         seed0)["ttft_p99_s"] for p in (base, best)}
    figures["broadband_best"] = "@".join(reversed(best))
    figures["broadband_ttft_p99_ratio_at_fcfs_capacity"] = ttft[best] / ttft[base]

    # 1b. kv-mobile
    m = capacities("kv-mobile", args.out / "kv-mobile", args.seeds, args.jobs, args.tol)
    for c in CONTROLLERS:
        other = max(rate(m, ("andes", c)), rate(m, ("tokenflow", c)))
        figures[f"mobile_tokenpace_over_published_{c}"] = rate(m, ("tokenpace", c)) / other
    best_tp = max(CONTROLLERS, key=lambda c: rate(m, ("tokenpace", c)))
    best_pub = max(((s, c) for s in ("andes", "tokenflow") for c in CONTROLLERS), key=lambda p: rate(m, p))
    figures["mobile_tokenpace_over_published_best"] = rate(m, ("tokenpace", best_tp)) / rate(m, best_pub)

    # 2. through the burst, at the rate tokenpace sustains
    k_tp = factor(m, ("tokenpace", best_tp))
    mobile_seed = load_scenario("kv-mobile").scenario.seed
    tp = displayed_per_s("kv-mobile", k_tp, "tokenpace", best_tp, mobile_seed)
    fc = displayed_per_s("kv-mobile", k_tp, "fcfs", "unpaced", mobile_seed)
    figures["mobile_burst_rate_factor"] = k_tp
    figures["mobile_burst_displayed_tps"] = {f"{best_tp}@tokenpace": tp, "unpaced@fcfs": fc}
    figures["mobile_burst_effective_ratio"] = tp / fc

    print("\ncapacity (req/s at mean QoE >= 0.9):")
    for name, pairs in (("kv-broadband", b), ("kv-mobile", m)):
        for p in sorted(pairs):
            print(f"  {name:<13} {p[1]}@{p[0]:<10} {rate(pairs, p):6.3f}")
    print()
    for key, value in figures.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    (args.out / "figures.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
