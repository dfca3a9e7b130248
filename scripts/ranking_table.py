"""Print the README's ranking table (markdown) from the checked-in regression goldens.

    python scripts/ranking_table.py

Per built-in scenario: controllers ranked as everywhere (analysis.metrics.rank_controllers: QoE within
0.005 of the best is a tie, which fewer wasted tokens break; "=1" for each of a tied best), with waste, stall ratio,
effective throughput and SLO attainment. The numbers are those in tests/golden/*.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from analysis.metrics import rank_labels

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"


def main() -> None:
    print("| scenario | rank | controller | QoE | waste | stall | eff. tok/s | SLO |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in sorted(GOLDEN.glob("*.json")):
        pinned = json.loads(path.read_text())
        for i, (rank, c) in enumerate(rank_labels(pinned)):
            m = pinned[c]
            print(f"| {path.stem if i == 0 else ''} | {rank} | `{c}` | {m['qoe_mean']:.4f} | {m['waste_frac']:.2%} "
                  f"| {m['stall_ratio']:.2%} | {m['effective_tps']:.1f} | {m['slo_attainment']:.1%} |")


if __name__ == "__main__":
    main()
