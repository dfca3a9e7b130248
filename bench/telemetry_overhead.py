"""What do the eBPF probes cost a bulk TCP sender? iperf3 over a veth pair between two fresh network
namespaces, alternately with and without ``BccTelemetry`` attached (and drained every 0.1 s, as
live mode does), in ABBA order so drift on this shared machine cancels out. The probes fire on
every ACK the sender receives — the worst case for them, a multi-Gbit/s flow on a veth.

Throughput on a shared 2-core machine swings by 10-30 % from run to run, so the ratio is the
median over ABBA groups of (sum with) / (sum without) of adjacent runs. As a noise-free cross-check
the kernel's own accounting (BPF_ENABLE_STATS) gives the probes' run time per hit and as a share
of the measured time: that share is what the probes can take from the sender at most.

The runs alike (all with, all without) also give the run's own noise: ``same_condition_spread`` is the
larger of max/min over the runs with probes and over the runs without. A ratio further from 1 than
that is the probes' doing, not the machine's; one closer to 1 cannot resolve a cost that small.

Last line: ``throughput_ratio=<x>``; target >= 0.98.

    sudo python bench/telemetry_overhead.py [--reps 6] [--duration 2] [--all-ports]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

from live.kernel.netns import VethPair, veth_pair
from live.kernel.telemetry import BccTelemetry, bpf_run_stats

PORT = 5201  # iperf3's


def iperf_bps(pair: VethPair, duration_s: float, omit_s: int) -> float:
    """Receiver-side throughput (bit/s) of one iperf3 run: the server in namespace a sends (-R)."""
    proc = pair.run("b", ["iperf3", "-c", pair.addr_a, "-p", str(PORT), "-R", "-J", "-t", f"{duration_s:g}",
                          "-O", str(omit_s)], timeout_s=duration_s + omit_s + 30)
    result = json.loads(proc.stdout)
    return float(result["end"]["sum_received"]["bits_per_second"])


def run_with_probes(pair: VethPair, duration_s: float, omit_s: int, ports: list[int]
                    ) -> tuple[float, int, dict[str, tuple[int, int]], float]:
    """(bit/s, probe hits drained, per-program (runs, run ns), seconds the flow ran) with the telemetry
    attached, drained every 0.1 s. The seconds are the iperf3 run's alone, not BCC's compile and attach:
    the probes' share of a CPU is taken over the time they had a flow to fire on."""
    hits = 0
    stop = threading.Event()
    with BccTelemetry(ports, 0.1) as tel:
        tel.poll()

        def drain() -> None:
            nonlocal hits
            while not stop.wait(0.1):
                hits += tel.drain().host.samples

        t = threading.Thread(target=drain, daemon=True)
        t.start()
        t0 = time.monotonic()
        try:
            bps = iperf_bps(pair, duration_s, omit_s)
        finally:
            flow_s = time.monotonic() - t0
            stop.set()
            t.join()
        runtime = tel.probe_runtime()
    return bps, hits, runtime, flow_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=6, help="ABBA groups (each: 2 runs with, 2 without)")
    ap.add_argument("--duration", type=float, default=2.0, help="seconds measured per run")
    ap.add_argument("--omit", type=int, default=1, help="seconds of slow start left out of each run")
    ap.add_argument("--all-ports", action="store_true", help="probe every TCP socket (no port filter)")
    args = ap.parse_args()
    ports = [] if args.all_ports else [PORT]
    without: list[float] = []
    with_: list[float] = []
    group_ratios: list[float] = []
    runs = run_ns = 0
    run_wall_s = 0.0
    with veth_pair() as pair, bpf_run_stats() as stats_on:
        server = pair.popen("a", ["iperf3", "-s", "-p", str(PORT)])
        try:
            time.sleep(0.5)
            iperf_bps(pair, 1.0, 0)  # warm up
            for rep in range(args.reps):
                on: list[float] = []
                off: list[float] = []
                for probes in (False, True, True, False) if rep % 2 == 0 else (True, False, False, True):
                    if probes:
                        bps, hits, rt, flow_s = run_with_probes(pair, args.duration, args.omit, ports)
                        run_wall_s += flow_s
                        runs += sum(c for c, _ in rt.values())
                        run_ns += sum(ns for _, ns in rt.values())
                        on.append(bps)
                        extra = f"  probe hits/s {hits / (args.duration + args.omit):,.0f}"
                    else:
                        bps = iperf_bps(pair, args.duration, args.omit)
                        off.append(bps)
                        extra = ""
                    print(f"rep {rep}  probes {'on ' if probes else 'off'}  {bps / 1e9:6.2f} Gbit/s{extra}", flush=True)
                with_ += on
                without += off
                group_ratios.append(sum(on) / sum(off))
        finally:
            VethPair.stop(server)
    m_with, m_without = statistics.median(with_), statistics.median(without)
    print(f"median with probes {m_with / 1e9:.2f} Gbit/s, without {m_without / 1e9:.2f} Gbit/s "
          f"({len(with_)} runs each, ports={ports if ports else 'all'}); "
          f"ABBA group ratios: {' '.join(f'{r:.3f}' for r in group_ratios)}")
    spread_off, spread_on = max(without) / min(without), max(with_) / min(with_)
    print(f"same_condition_spread={max(spread_off, spread_on):.3f} (max/min of runs alike: probes off "
          f"{spread_off:.3f}, probes on {spread_on:.3f}; a ratio closer to 1 than this is within this run's noise)")
    if stats_on and runs:
        print(f"probe cost (kernel accounting): {runs:,} runs, {run_ns / runs:.0f} ns per run, "
              f"{100 * run_ns / (run_wall_s * 1e9):.3f}% of one CPU while the flow ran")
    print(f"throughput_ratio={statistics.median(group_ratios):.3f}")


if __name__ == "__main__":
    main()
