"""Regenerate the controller regression goldens after an intended change.

    python scripts/regen_goldens.py [SCENARIO ...] [--jobs 2]

Runs every built-in scenario (or the ones named) with every registered controller and writes
the pinned metrics to tests/golden/<scenario>.json. Review the diff before committing it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The repository first: tests/scenarios (YAML files, no __init__.py) would otherwise shadow the scenarios
# package as a namespace package, and the imports below would fail.
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from regression_support import GOLDEN_DIR, run_all_controllers  # noqa: E402

from analysis.golden import pinned  # noqa: E402
from scenarios import builtin_scenarios  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="*", help="built-in scenario names (default: all)")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    names = args.scenarios or list(builtin_scenarios())
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            t0 = time.perf_counter()
            summary = run_all_controllers(name, Path(tmp) / name, jobs=args.jobs)
            path = GOLDEN_DIR / f"{name}.json"
            path.write_text(json.dumps(pinned(summary), indent=2, sort_keys=True) + "\n")
            print(f"wrote {path.relative_to(ROOT)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
