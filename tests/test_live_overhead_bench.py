"""bench/telemetry_overhead.py runs for real (iperf3 over veth, probes on and off, ABBA then BAAB) and its
figures hold what the README claims of the probes, each judged against this run's own baseline:

- the kernel's accounting (BPF_ENABLE_STATS) of the probes' run time, the noise-free figure, stays under
  2% of one CPU while the flow runs: the bench's target (throughput ratio >= 0.98) in CPU terms, the most
  the probes can take from the sender. README: 0.7-1.1%; ten runs of ``--reps 2`` here on a busy machine
  (load 9-13 on 2 cores, other sessions' busy loops): 0.10-0.24%.
- the throughput ratio (with / without) is no further from 1 than the 2% claim widened by how much the
  same run's runs alike differ among themselves (``same_condition_spread``: max/min over the runs with,
  and over the runs without): [0.98 / spread, spread / 0.98]. A cost the machine's noise cannot hide
  fails, and so does a gain as large (then the two halves did not measure the same flow). Ten runs of
  ``--reps 2`` here: ratio 0.905-1.752 against spreads 1.62-2.95, each inside its band by a factor 1.42
  or more; five of ``--reps 1``: 0.597-1.298 against 1.11-2.51. This shared machine swings too much to
  resolve the 2% itself (README), so the band is wide when the machine is busy and narrows when it is not.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.live

BENCH = Path(__file__).resolve().parent.parent / "bench" / "telemetry_overhead.py"
TARGET_RATIO = 0.98  # the bench's target: the probes cost the sender at most 2%
MAX_PROBE_CPU_PCT = 100 * (1 - TARGET_RATIO)


def test_overhead_bench_meets_its_claims_against_its_own_baseline(live):  # type: ignore[no-untyped-def]
    proc = subprocess.run([sys.executable, str(BENCH), "--reps", "2", "--duration", "2", "--omit", "1"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    last = out.strip().splitlines()[-1]
    m = re.fullmatch(r"throughput_ratio=([0-9.]+)", last)
    assert m, last
    ratio = float(m.group(1))
    spread_m = re.search(r"^same_condition_spread=([0-9.]+) ", out, re.M)
    cost_m = re.search(r"^probe cost \(kernel accounting\): ([0-9,]+) runs, ([0-9]+) ns per run, ([0-9.]+)% of one CPU",
                       out, re.M)
    assert spread_m and cost_m, out[-2000:]  # this kernel has BPF_ENABLE_STATS (live set-up checked)
    spread = float(spread_m.group(1))
    runs, cpu_pct = int(cost_m.group(1).replace(",", "")), float(cost_m.group(3))
    assert runs > 1000, out[-2000:]  # the probes fired on the flow's ACKs
    assert cpu_pct <= MAX_PROBE_CPU_PCT, f"probes took {cpu_pct}% of one CPU (> {MAX_PROBE_CPU_PCT:.0f}%)\n{out}"
    low, high = TARGET_RATIO / spread, spread / TARGET_RATIO  # the 2% claim widened by this run's own noise
    assert low <= ratio <= high, f"throughput ratio {ratio} outside [{low:.3f}, {high:.3f}] (spread {spread})\n{out}"
