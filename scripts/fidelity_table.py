"""The README's fidelity table: one Markdown row per ``fidelity.json`` (``python -m analysis compare``).

    PYTHONPATH=. python scripts/fidelity_table.py runs/bursty-loss-lab/fidelity.json runs/wifi-fade-lab/fidelity.json

Each row: the scenario and its controllers, the median APE per metric (bold where above the 10%
target), and whether sim and lab agree on the best controller -- strictly, or only within the ties
(:func:`analysis.metrics.tied_best`). Reads files only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PAIRS = (("ttft_p50_s", "ttft_p99_s"), ("itl_p50_s", "itl_p99_s"), ("stall_ratio",), ("waste_frac",),
         ("effective_tps",))
HEADER = ("| scenario (controllers) | ttft p50 / p99 | itl p50 / p99 | stall | waste | eff. tok/s | same best |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")


def _cell(per_metric: dict, key: str, target: float) -> str:
    m = per_metric.get(key) or {}
    ape = m.get("median_ape")
    if ape is None:
        return "–"
    text = f"{100 * ape:.1f}%"
    return f"**{text}**" if ape > target else text


def row(fidelity: dict) -> str:
    target = float(fidelity.get("target_median_ape", 0.10))
    pm = fidelity["per_metric"]
    cells = [" / ".join(_cell(pm, k, target) for k in group) for group in PAIRS]
    r = fidelity["ranking"]
    if r["same_best"]:
        best = f"yes (`{r['sim_best']}`)"
    elif r.get("best_within_ties"):
        best = (f"within ties (sim `{r['sim_best']}`, lab `{r['lab_best']}`; tied: sim "
                f"{', '.join(r['sim_tied_best'])}, lab {', '.join(r['lab_tied_best'])})")
    else:
        best = f"**no** (sim `{r['sim_best']}`, lab `{r['lab_best']}`)"
    scn = fidelity.get("scenario")
    name = (scn.get("lab") or scn.get("sim")) if isinstance(scn, dict) else scn or Path(fidelity["lab_dir"]).name
    return f"| `{name}` ({', '.join(fidelity['controllers'])}) | " + " | ".join(cells) + f" | {best} |"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    rows = []
    for f in argv:
        try:
            rows.append(row(json.loads(Path(f).read_text())))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"error: {f}: not a fidelity.json of `python -m analysis compare` ({type(exc).__name__}: {exc})",
                  file=sys.stderr)
            return 2
    print(HEADER)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
