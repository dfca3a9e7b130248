"""Seed 001's ``net_data.csv``: one host-level row per interval from the eBPF telemetry.

NetDiag-LLM's collector (``smart_agent.py``) wrote these columns, and its trainer, dashboard and
pacer read them; we keep the names, order and units exactly so those tools read our file unchanged:

==================== ======================================================================
column               meaning (all RTTs in microseconds, as in the seed)
==================== ======================================================================
timestamp            wall-clock time of the interval's end, Unix seconds (the seed wrote an
                     int; we keep milliseconds: intervals are often shorter than a second)
avg_rtt_us           mean of the srtt values of every tcp_probe hit in the interval
p95_rtt_us           95th percentile of those values (histogram, within ~6 %)
min_rtt_us           smallest of them
max_rtt_us           largest of them
retrans_count        retransmitted skbs in the interval
rtt_samples          tcp_probe hits in the interval (segments received by matched sockets)
rolling_avg_rtt_us   mean of avg_rtt_us over the last ``window`` intervals that had samples
rolling_p95_rtt_us   mean of p95_rtt_us over the same intervals (the seed's definition: a
                     smoothed p95, not the p95 of the window)
label                1 while a fault is active (when a fault player is attached), else 0
==================== ======================================================================

As in the seed, an interval without RTT samples writes 0 in the RTT columns (its models read
numbers, not blanks). Unlike the seed, such intervals do not drag the rolling means to 0, and the
samples are the sockets of the server's port(s) rather than every TCP socket of the host
(``--port`` none = every socket, the seed's behaviour).
"""

from __future__ import annotations

import argparse
import csv
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO

from live.kernel.telemetry import BccTelemetry, HostInterval

__all__ = ["COLUMNS", "NetDataAggregator", "NetDataRow", "NetDataWriter", "collect", "main"]


@dataclass(frozen=True, slots=True)
class NetDataRow:
    timestamp: float
    avg_rtt_us: int
    p95_rtt_us: int
    min_rtt_us: int
    max_rtt_us: int
    retrans_count: int
    rtt_samples: int
    rolling_avg_rtt_us: int
    rolling_p95_rtt_us: int
    label: int


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(NetDataRow))


class NetDataAggregator:
    """Turns HostIntervals into rows, keeping the rolling window (``window`` intervals)."""

    def __init__(self, window: int = 30) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self._recent: deque[tuple[float, float] | None] = deque(maxlen=window)

    def add(self, host: HostInterval, label: int = 0) -> NetDataRow:
        has = host.samples > 0 and host.rtt_avg_us is not None
        avg = float(host.rtt_avg_us) if has and host.rtt_avg_us is not None else 0.0
        p95 = float(host.rtt_p95_us) if has and host.rtt_p95_us is not None else avg
        self._recent.append((avg, p95) if has else None)
        kept = [x for x in self._recent if x is not None]
        roll_avg = sum(a for a, _ in kept) / len(kept) if kept else 0.0
        roll_p95 = sum(p for _, p in kept) / len(kept) if kept else 0.0
        return NetDataRow(
            timestamp=round(host.wall_s, 3),
            avg_rtt_us=round(avg),
            p95_rtt_us=round(p95),
            min_rtt_us=int(host.rtt_min_us or 0) if has else 0,
            max_rtt_us=int(host.rtt_max_us or 0) if has else 0,
            retrans_count=int(host.retrans),
            rtt_samples=int(host.samples),
            rolling_avg_rtt_us=round(roll_avg),
            rolling_p95_rtt_us=round(roll_p95),
            label=int(label),
        )


class NetDataWriter:
    """Appends rows to a net_data.csv (header written when the file is new or empty)."""

    def __init__(self, path: str | Path, window: int = 30) -> None:
        self.path = Path(path)
        self.agg = NetDataAggregator(window)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._f: IO[str] = self.path.open("a", newline="")
        self._w = csv.writer(self._f)
        if new:
            self._w.writerow(COLUMNS)
            self._f.flush()

    def write(self, host: HostInterval, label: int = 0) -> NetDataRow:
        row = self.agg.add(host, label)
        d = asdict(row)
        self._w.writerow([d[c] for c in COLUMNS])
        self._f.flush()  # readers (dashboard, hint server) tail the file live
        return row

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> NetDataWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def collect(ports: Sequence[int], csv_path: str | Path, *, interval_s: float = 1.0, window: int = 30,
            duration_s: float | None = None, label_fn: Callable[[], int] | None = None,
            on_row: Callable[[NetDataRow], None] | None = None) -> int:
    """Run the probes and write one row per interval until ``duration_s`` (or Ctrl-C); returns rows written."""
    n = 0
    with BccTelemetry(ports, interval_s) as tel, NetDataWriter(csv_path, window) as out:
        t0 = time.monotonic()
        next_t = t0 + interval_s
        try:
            while duration_s is None or time.monotonic() - t0 < duration_s - 1e-9:
                time.sleep(max(0.0, next_t - time.monotonic()))
                next_t += interval_s
                row = out.write(tel.drain().host, label_fn() if label_fn else 0)
                n += 1
                if on_row is not None:
                    on_row(row)
        except KeyboardInterrupt:
            pass
    return n


def main(argv: Sequence[str] | None = None) -> int:
    """Collect seed 001's net_data.csv from the eBPF probes (smart_agent.py's flags)."""
    ap = argparse.ArgumentParser(prog="python -m live.kernel.netdata", description=main.__doc__)
    ap.add_argument("--port", type=int, action="append", default=[], help="server port (repeat; none = all sockets)")
    ap.add_argument("--interval", type=float, default=1.0, help="aggregation interval in seconds")
    ap.add_argument("--window", type=int, default=30, help="rolling window length (in intervals)")
    ap.add_argument("--csv", default="net_data.csv", help="path to write CSV measurements")
    ap.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    def show(r: NetDataRow) -> None:
        if not args.quiet:
            print(f"{r.timestamp:<15.3f} | avg {r.avg_rtt_us:<8}us | p95 {r.p95_rtt_us:<8}us | "
                  f"retrans {r.retrans_count:<5} | samples {r.rtt_samples:<5} | roll_avg {r.rolling_avg_rtt_us}us")

    print(f"writing {args.csv} every {args.interval:g} s (Ctrl-C to stop)")
    collect(args.port, args.csv, interval_s=args.interval, window=args.window, duration_s=args.duration, on_row=show)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
