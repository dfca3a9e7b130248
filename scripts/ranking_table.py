"""Print the README's ranking table (markdown) from the checked-in regression goldens.

    python scripts/ranking_table.py

Per built-in scenario: controllers ranked by QoE (then waste), with waste, stall ratio,
effective throughput and SLO attainment. The numbers are those in tests/golden/*.json.
"""

from __future__ import annotations

import json
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"


def main() -> None:
    print("| scenario | rank | controller | QoE | waste | stall | eff. tok/s | SLO |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for path in sorted(GOLDEN.glob("*.json")):
        pinned = json.loads(path.read_text())
        order = sorted(pinned, key=lambda c: (-(pinned[c]["qoe_mean"] or 0), pinned[c]["waste_frac"] or 0, c))
        for rank, c in enumerate(order, 1):
            m = pinned[c]
            print(f"| {path.stem if rank == 1 else ''} | {rank} | `{c}` | {m['qoe_mean']:.4f} | {m['waste_frac']:.2%} "
                  f"| {m['stall_ratio']:.2%} | {m['effective_tps']:.1f} | {m['slo_attainment']:.1%} |")


if __name__ == "__main__":
    main()
