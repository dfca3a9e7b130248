"""Regenerate the controller regression goldens after an intended change.

    python scripts/regen_goldens.py [SCENARIO ...] [--jobs 2] [--only controllers|schedulers]

Runs every built-in scenario (or the ones named) with every registered controller on the scenario's
scheduler and writes the pinned metrics to tests/golden/<scenario>.json, then with the scheduler entries
(tests/regression_support.py: SCHEDULER_ENTRIES) to tests/golden/schedulers/<scenario>.json. Review the
diff before committing it.
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

from regression_support import (  # noqa: E402
    GOLDEN_DIR,
    SCHEDULER_GOLDEN_DIR,
    run_all_controllers,
    run_scheduler_entries,
)

from analysis.golden import pinned  # noqa: E402
from scenarios import builtin_scenarios  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="*", help="built-in scenario names (default: all)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", choices=("controllers", "schedulers"), default=None,
                    help="only tests/golden/<scenario>.json (every controller on the scenario's scheduler) or only "
                    "tests/golden/schedulers/<scenario>.json (the scheduler entries)")
    args = ap.parse_args()
    names = args.scenarios or list(builtin_scenarios())
    runs = [(GOLDEN_DIR, run_all_controllers), (SCHEDULER_GOLDEN_DIR, run_scheduler_entries)]
    if args.only == "controllers":
        runs = runs[:1]
    elif args.only == "schedulers":
        runs = runs[1:]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for folder, run in runs:
                folder.mkdir(parents=True, exist_ok=True)
                t0 = time.perf_counter()
                summary = run(name, Path(tmp) / folder.name / name, jobs=args.jobs)
                path = folder / f"{name}.json"
                path.write_text(json.dumps(pinned(summary), indent=2, sort_keys=True) + "\n")
                print(f"wrote {path.relative_to(ROOT)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
