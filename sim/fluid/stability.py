"""``python -m sim stability SCENARIO``: the largest arrival rate the serving node sustains.

    python -m sim stability SCENARIO [--controller unpaced] [--discrete] [--slo "ttft_p99_s<=5"]
                                     [--seeds 1] [--tol 0.05]

Three answers side by side:

1. **The fluid fixed point** (``sim/fluid/model.py`` at steady state). At arrival rate lambda per
   replica, class c (share w_c, prompt p_c, output o_c, per-request generation rate g_c = min(pace_c,
   1/tau)) holds N_c = lambda w_c o_c / g_c running requests (Little's law), and the step time solves
   tau = d0 + d1 (sum_c N_c min(1, pace_c tau) + lambda pbar tau). The rate is sustainable while tau
   is finite and the running requests fit: KV sum_c N_c (p_c + o_c / 2) <= kv_tokens, sum_c N_c <=
   max_running, a step's decodes and prefills <= batch_tokens. The largest such lambda (bisection)
   times the replicas, with the constraint that binds.
2. **The closed-form bound** of Nie, Si and Zhou, "A Queueing-Theoretic Framework for Stability
   Analysis of LLM Inference with KV Cache Memory Constraints" (arXiv 2605.04595):
   lambda < M / (bbar E[g(s, o)]), g(s, o) = s o + o (o + 1) / 2 the lifetime KV-token demand of a
   request (KV-token-steps, no chunked prefill), bbar the step time with KV memory full of decoding
   requests (d0 + d1 M E[o] / E[g]). It sees memory only; the fluid fixed point adds compute, prefill,
   max_running and pacing.
3. **A discrete capacity search** (``--discrete``): ``sim.capacity_search.bisect`` over the rate factor
   k with ``sim.capacity.run_probe`` (the simulator itself), the SLO ``--slo`` (default
   ``ttft_p99_s<=5``: under a load the node cannot sustain the queue grows over the run until waiting
   requests give up at their patience, so the slowest first tokens approach the patience; below it
   they stay a few steps long). Unlike ``python -m sim capacity``, ``workload.streams`` is scaled with
   the rate, so the arrivals last as long at every k: a fixed number of requests arriving ever faster
   is a burst the node clears, not a load it must sustain.

Paths are reported separately: a path whose mean capacity is below the bytes its classes ask for
(lambda x share x mean output x bytes per token) backs up however fast the node is.
"""

from __future__ import annotations

import argparse
import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from scenarios import LoadedScenario, load_scenario
from scenarios.cli_errors import BadInput
from scenarios.loader import find_scenario, parse_scenario
from scenarios.schema import ServerSpec
from sim.fluid.inputs import Classes, scenario_arrivals, scenario_classes, scenario_paths
from sim.fluid.model import NodeView
from sim.fluid.pacing import UnsupportedController, pacing_law

PROG = "python -m sim stability"
DEFAULT_SLO = "ttft_p99_s<=5"


@dataclass(frozen=True)
class FixedPoint:
    feasible: bool
    binding: str  # the constraint that fails ("" when feasible)
    tau_s: float
    running: float
    kv_tokens: float


def fixed_point(server: ServerSpec, classes: Classes, lam: float, pace: np.ndarray) -> FixedPoint:
    """The fluid node's steady state at ``lam`` requests/s per replica (``pace``: per-class rate caps)."""
    w, p, o = classes.weight, classes.prompt, classes.output
    d0, d1 = server.d0_s, server.d1_s
    prefill = lam * float((w * p).sum())  # prompt tokens per second
    tau = d0
    for _ in range(200):
        gamma = np.minimum(pace, 1.0 / tau)
        n = lam * w * o / gamma
        decodes = float((n * np.minimum(1.0, pace * tau)).sum())
        new = d0 + d1 * (decodes + prefill * tau)
        if not math.isfinite(new) or new > 1e4:
            return FixedPoint(False, "compute", math.inf, math.inf, math.inf)
        if abs(new - tau) < 1e-12:
            break
        tau = 0.5 * tau + 0.5 * new
    else:
        return FixedPoint(False, "compute", math.inf, math.inf, math.inf)
    gamma = np.minimum(pace, 1.0 / tau)
    n = lam * w * o / gamma
    kv = float((n * (p + o / 2)).sum())
    running = float(n.sum())
    decodes = float((n * np.minimum(1.0, pace * tau)).sum())
    for name, bad in (("kv memory", kv > server.kv_tokens),
                      ("max_running", server.max_running is not None and running > server.max_running),
                      ("batch budget", decodes + prefill * tau > server.batch_tokens),
                      ("compute", d1 * (decodes / tau + prefill) >= 1.0)):
        if bad:
            return FixedPoint(False, name, tau, running, kv)
    return FixedPoint(True, "", tau, running, kv)


def fluid_capacity(server: ServerSpec, classes: Classes, pace: np.ndarray, tol: float = 1e-4) -> tuple[float, str]:
    """The largest sustainable arrival rate per replica and the constraint that binds above it."""
    lo, hi = 0.0, 1.0
    while fixed_point(server, classes, hi, pace).feasible:
        lo, hi = hi, hi * 2
        if hi > 1e7:
            return math.inf, "none"
    while hi - lo > tol * max(lo, 1e-9):
        mid = (lo + hi) / 2
        if fixed_point(server, classes, mid, pace).feasible:
            lo = mid
        else:
            hi = mid
    return lo, fixed_point(server, classes, hi, pace).binding


def closed_form(server: ServerSpec, classes: Classes) -> tuple[float, float]:
    """arXiv 2605.04595's bound per replica, lambda < M / (bbar E[g]), and the bbar used."""
    w, s, o = classes.weight, classes.prompt, classes.output
    g = float((w * (s * o + o * (o + 1) / 2)).sum())
    full = server.kv_tokens * float((w * o).sum()) / g  # running requests that fill KV memory
    bbar = server.d0_s + server.d1_s * full
    return server.kv_tokens / (bbar * g), bbar


def _steady_pace(controller: str, params: dict[str, Any], classes: Classes) -> np.ndarray:
    """A controller's per-class rate cap at steady state (buffers full, no backlog)."""
    law = pacing_law(controller, params)
    if law is None:
        return np.full(len(classes), np.inf)
    view = NodeView(classes.reading, np.full(len(classes), 1e6), np.zeros(len(classes)), np.full(len(classes), 1e6))
    return law(view)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="The largest arrival rate the serving node sustains: "
                                "fluid fixed point, the closed-form bound of arXiv 2605.04595, and (--discrete) "
                                "a capacity search with the discrete simulator.")
    p.add_argument("scenario", help="scenario YAML file, or a built-in scenario name")
    p.add_argument("--controller", default="unpaced", help="pacing controller (fluid laws: unpaced, fixed, buffer)")
    p.add_argument("--discrete", action="store_true", help="also search the discrete simulator's capacity (slow)")
    p.add_argument("--slo", default=DEFAULT_SLO, help=f"SLO of the discrete search, 'METRIC OP NUMBER' "
                   f"(default {DEFAULT_SLO!r})")
    p.add_argument("--seeds", type=int, default=1, help="seeds per discrete probe (default 1)")
    p.add_argument("--tol", type=float, default=0.05, help="relative width of the discrete bisection (default 0.05)")
    return p


def main_stability(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    loaded = load_scenario(args.scenario)
    scn = loaded.scenario
    params = scn.controllers.get(args.controller, {})
    if scn.server.scheduler.name != "fcfs":
        raise BadInput(f"{find_scenario(args.scenario)}: server.scheduler",
                       f"scheduler {scn.server.scheduler.name!r} is not a fluid law; the fixed point is fcfs's")
    classes = scenario_classes(scn, scn.seed)
    try:
        pace = _steady_pace(args.controller, params, classes)
    except UnsupportedController as exc:
        raise BadInput("--controller", str(exc)) from None
    replicas = scn.server.replicas
    lam_fluid, binding = fluid_capacity(scn.server, classes, pace)
    lam_closed, bbar = closed_form(scn.server, classes)
    print(f"{scn.name}: {replicas} replica(s), kv_tokens {scn.server.kv_tokens}, controller {args.controller}")
    print(f"  fluid fixed point      lambda_max = {lam_fluid * replicas:.3f} req/s  (binds: {binding})")
    print(f"  closed form (2605.04595) lambda < {lam_closed * replicas:.3f} req/s  "
          f"(KV memory only; step time {bbar * 1000:.1f} ms with memory full)")
    horizon = scn.max_duration_s
    for p in scenario_paths(scn, loaded.base_dir, horizon):
        j = list(scn.paths).index(p.name)
        demand = float((classes.weight * classes.output)[classes.path == j].sum()) * scn.workload.bytes_per_token
        widths = np.diff(np.append(p.breaks, horizon))
        mean_cap = float((p.capacity_Bps * widths).sum() / widths.sum())
        print(f"  path {p.name:<14} lambda < {mean_cap / demand:.3f} req/s  (mean capacity "
              f"{mean_cap * 8 / 1e6:.2f} Mbit/s over the run)")
    if args.discrete:
        from sim.capacity import run_probe
        from sim.capacity_search import bisect, check_scalable, parse_slos, scaled_scenario, slos_hold

        key, base = check_scalable(loaded)
        slos = parse_slos([args.slo])

        def holds(k: float) -> bool:
            scaled = scaled_scenario(loaded, k)
            raw = copy.deepcopy(scaled.raw)  # as many streams per second of arrivals at every k
            raw["workload"]["streams"] = max(1, round(scn.workload.streams * k))
            scaled = LoadedScenario(parse_scenario(raw, loaded.path), loaded.path, raw)
            per_seed = [run_probe(scaled, args.controller, params, scn.seed + i) for i in range(args.seeds)]
            return slos_hold(slos, per_seed)[0]

        search = bisect(holds, args.tol)
        timeline = scenario_arrivals(scaled_scenario(loaded, search.capacity).scenario) if search.capacity else None
        mean = timeline.total() / timeline.end_s if timeline is not None and timeline.end_s > 0 else 0.0
        print(f"  discrete search        lambda_max = {mean:.3f} req/s mean over the arrivals ({key} = "
              f"{search.capacity * base:.3f}, x {search.capacity:.3f}; SLO {args.slo}; {search.outcome}; "
              f"{len(search.probes)} probes)")
    return 0
