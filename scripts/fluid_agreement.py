"""The fluid engine against the discrete simulator on the built-in scenarios: a markdown table.

    python scripts/fluid_agreement.py [--scenarios a,b] [--controller unpaced] [--discrete-dir DIR]
                                      [--inputs scenario|requests]

For each scenario: the discrete simulator's effective throughput, GPU busy fraction and mean TTFT
(from its run's files: ``DIR/<scenario>/<controller>/``, or a fresh ``python -m sim`` run of that
controller when no folder is given) beside the fluid engine's, with the relative errors, and whether
the targets hold: throughput and GPU busy within 5%, mean TTFT within 15% where a queue forms (the
discrete node's waiting count reaches ``QUEUE_FORMS``). A scenario the fluid engine refuses is a row
saying why; a row that misses a target names what the fluid model leaves out there.

``--inputs requests`` feeds the fluid model the discrete run's drawn requests (their lengths, readers,
paths and arrival times binned) instead of the scenario's distributions, which takes the sampling
noise of a few hundred requests out of the comparison.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.metrics import stream_metrics, summarize_controller
from analysis.results import load_controller_dir, read_csv
from scenarios import builtin_scenarios, load_scenario
from sim.fluid.engine import refusals, simulate

QUEUE_FORMS = 5  # waiting requests at the discrete node: a queue has formed
TARGETS = {"effective_tps": 0.05, "gpu_busy_frac": 0.05, "ttft_mean_s": 0.15}
# Why a row misses, as measured: what the fluid model leaves out there.
WHY = {
    "bursty-loss": "200 drawn requests are not the distribution (their longest read sets the run time; met with "
                   "--inputs requests); first tokens delayed by single retransmission timeouts after bursts",
    "cellular-trace": "the UMTS trace is nearly dead from 30 s to 80 s: discrete readers give up one by one and "
                      "their backlog goes, the fluid class keeps a pooled buffer and backlog (per-stream stalls, "
                      "individual abandonment)",
    "flash-outage": "individual abandonment during the outages (a class's pooled buffer hides its starving readers)",
    "gpu-overload": "with 80% of the GPU in prefill, discrete steps are full-budget prefill steps that admit a few "
                    "prompts each, in bursts; the fluid's mean step admits smoothly, so its queue and first tokens "
                    "are shorter (throughput and GPU busy met with --inputs requests)",
    "kv-broadband": "the Gamma burst is a mean rate with scenario inputs, so the KV queue it builds is not the drawn "
                    "one (met with --inputs requests)",
    "kv-mobile": "as kv-broadband; with the drawn requests GPU busy is 5.2% over (the running tail after the "
                 "arrivals stop, see the fluid model text)",
    "shared-bottleneck": "200 drawn requests are not the distribution (met with --inputs requests)",
    "wifi-fade": "during the 200 kbit/s fade the class's pooled backlog delays every first token; discrete readers of "
                 "stuck streams give up and their bytes go (individual abandonment, per-stream stalls)",
}


def discrete_metrics(folder: Path, slo: float, replicas: int) -> dict[str, float | None]:
    """The discrete run's metrics, plus the mean TTFT and whether a queue formed."""
    summary = summarize_controller(folder, slo, replicas)
    ctrl = load_controller_dir(folder)
    ttft = stream_metrics(ctrl).ttft_s
    server = read_csv(folder / "server.csv") if (folder / "server.csv").exists() else None
    waiting = float(np.max(server["waiting_count"])) if server is not None and len(server) else 0.0
    return {"effective_tps": summary["effective_tps"], "gpu_busy_frac": summary["gpu_busy_frac"],
            "ttft_mean_s": float(np.nanmean(ttft)) if np.any(~np.isnan(ttft)) else None, "queue": waiting}


def _rel(fluid: float | None, discrete: float | None) -> float | None:
    if fluid is None or discrete is None or discrete == 0:
        return None
    return (fluid - discrete) / discrete


def row(name: str, controller: str, discrete_dir: Path | None, inputs: str) -> list[str]:
    loaded = load_scenario(name)
    refused = refusals(loaded)
    if refused:
        return [name, *[""] * 9, "refused: " + "; ".join(m for _, m in refused)]
    scn = loaded.scenario
    if discrete_dir is not None:
        folder = discrete_dir / name / controller
        d = discrete_metrics(folder, scn.slo.qoe, scn.server.replicas)
    else:
        with tempfile.TemporaryDirectory(prefix="fl-agree-") as tmp:
            subprocess.run([sys.executable, "-m", "sim", name, "--controllers", controller, "--out", tmp,
                            "--quiet"], check=True)
            d = discrete_metrics(Path(tmp) / controller, scn.slo.qoe, scn.server.replicas)
    f = simulate(loaded, controller, scn.controllers.get(controller, {}), inputs=inputs).summary
    cells, misses = [name], []
    for key, tol in TARGETS.items():
        err = _rel(f[key], d[key])
        cells += [_fmt(d[key]), _fmt(f[key]), "" if err is None else f"{err:+.1%}"]
        applies = key != "ttft_mean_s" or (d["queue"] or 0) >= QUEUE_FORMS
        if applies and (err is None or abs(err) > tol):
            misses.append(key)
    queue = "queue" if (d["queue"] or 0) >= QUEUE_FORMS else "no queue"
    verdict = "met" if not misses else f"missed {', '.join(misses)}: {WHY.get(name, 'see the fluid model text')}"
    return [*cells, f"{verdict} ({queue})"]


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4g}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", default=None, help="comma-separated built-in scenarios (default: all)")
    p.add_argument("--controller", default="unpaced", help="controller to compare (default unpaced)")
    p.add_argument("--discrete-dir", type=Path, default=None,
                   help="folder with a discrete run per scenario (DIR/<scenario>/<controller>/); default: run them")
    p.add_argument("--inputs", choices=("scenario", "requests"), default="scenario",
                   help="fluid inputs: the scenario's distributions, or the discrete run's drawn requests")
    args = p.parse_args(argv)
    names = args.scenarios.split(",") if args.scenarios else list(builtin_scenarios())
    head = ["scenario", "eff. tok/s discrete", "fluid", "err", "GPU busy discrete", "fluid", "err",
            "mean TTFT discrete (s)", "fluid", "err", "targets"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name in names:
        print("| " + " | ".join(row(name, args.controller, args.discrete_dir, args.inputs)) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
