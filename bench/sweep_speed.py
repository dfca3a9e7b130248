"""How fast does a sweep run on two processes, and on Ray? Three runs of one sweep, in one run of this
script (the machine is shared and noisy, so the figures are ratios measured back to back):

1. ``python -m sim sweep`` with ``--jobs 1``, then ``--jobs 2``: ``jobs2_over_jobs1`` is the ratio of
   their wall times; target <= 0.6 on a 2-core machine (issue #14).
2. the same sweep with ``--backend ray --jobs 2`` (a local Ray instance, num_cpus=2, started and
   stopped inside the timed command): ``ray_over_local`` is its wall time over ``--jobs 2``'s;
   target <= 1.15. Ray's fixed cost (starting its processes, importing tokenpace in each worker,
   shutting down) is a few seconds, so the sweep is sized to take about a minute on two processes.
3. ``identical``: whether the three sweep.csv files (and every run's summary.json) are byte-identical.

The sweep: the built-in wifi-fade scenario (a Wi-Fi path that fades to 0.2 Mbit/s beside a wired one)
over the Wi-Fi rate x the arrival rate, 4 seeds, the unpaced and buffer controllers: 48 runs.

    python bench/sweep_speed.py [--quick]     (--quick: 8 runs, a smoke test; its Ray ratio means little)
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SWEEP = {
    "name": "sweep-speed",
    "base": "wifi-fade",
    "grid": {"paths.wifi.rate_mbps": [5, 10, 20, 40], "workload.arrivals.rate_per_s": [1.0, 2.0, 3.0]},
    "seeds": [1, 2, 3, 4],
    "controllers": ["unpaced", "buffer"],
}
QUICK = {**SWEEP, "grid": {"paths.wifi.rate_mbps": [5, 20], "workload.arrivals.rate_per_s": [2.0]},
         "seeds": [1, 2, 3, 4]}


def timed(sweep: Path, out: Path, *flags: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sim", "sweep", str(sweep), "--out", str(out), "--quiet", *flags],
                   check=True)
    return time.perf_counter() - t0


def same_files(a: Path, b: Path) -> bool:
    if (a / "sweep.csv").read_bytes() != (b / "sweep.csv").read_bytes():
        return False
    runs = sorted(p.relative_to(a) for p in a.glob("cells/*/seed-*/summary.json"))
    return bool(runs) and all((a / r).read_bytes() == (b / r).read_bytes() for r in runs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small sweep (smoke test)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="tokenpace-sweep-speed-") as tmp:
        root = Path(tmp)
        sweep = root / "sweep.yaml"
        spec = QUICK if args.quick else SWEEP
        sweep.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        runs = len(spec["seeds"])
        for values in spec["grid"].values():
            runs *= len(values)
        print(f"sweep: {spec['base']} over {', '.join(spec['grid'])}; {runs} runs x {len(spec['controllers'])} "
              "controllers", flush=True)
        j1 = timed(sweep, root / "j1", "--jobs", "1")
        print(f"--jobs 1: {j1:.1f} s", flush=True)
        j2 = timed(sweep, root / "j2", "--jobs", "2")
        print(f"--jobs 2: {j2:.1f} s", flush=True)
        identical = same_files(root / "j1", root / "j2")
        ray_ratio = None
        if importlib.util.find_spec("ray") is None:
            print("ray: not installed (pip install 'tokenpace[ray]'): no Ray figure")
        else:
            r2 = timed(sweep, root / "ray", "--backend", "ray", "--jobs", "2")
            print(f"--backend ray --jobs 2: {r2:.1f} s", flush=True)
            ray_ratio = r2 / j2
            identical = identical and same_files(root / "j1", root / "ray")
        print(f"jobs2_over_jobs1={j2 / j1:.3f} (target <= 0.6)")
        if ray_ratio is not None:
            print(f"ray_over_local={ray_ratio:.3f} (target <= 1.15)")
        print(f"identical={identical}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
