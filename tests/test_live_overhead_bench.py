"""bench/telemetry_overhead.py runs for real (iperf3 over veth, probes on and off) and prints its
figure last. The >= 0.98 target is a benchmark figure, read from its output, not asserted here:
this shared 2-core machine swings +-30% between run groups (see README)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.live

BENCH = Path(__file__).resolve().parent.parent / "bench" / "telemetry_overhead.py"


def test_overhead_bench_prints_throughput_ratio(live):  # type: ignore[no-untyped-def]
    proc = subprocess.run([sys.executable, str(BENCH), "--reps", "1", "--duration", "2", "--omit", "1"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"throughput_ratio=([0-9.]+)", last)
    assert m, last
    assert 0.3 < float(m.group(1)) < 3.0  # a measured ratio of two real iperf3 throughputs, not a placeholder
