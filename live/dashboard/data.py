"""What the live dashboard shows, computed from a recording as it is being written (no Streamlit here).

A running ``python -m live --record DIR`` appends one row per stream per control interval to
``DIR/<controller>/telemetry.csv``. The dashboard tails that file: :class:`TelemetryTail` remembers
the byte offset it has read up to and, on each :meth:`~TelemetryTail.poll`, parses only what was
appended since — complete lines only, so a row the server is half-way through writing is read on the
next poll. It keeps the last ``window_s`` seconds of rows per connection (stream), which is what the
page's table and charts need; :func:`summarize` reduces each connection to its latest values.

Anomaly flags come from the trained telemetry model when it is installed
(``controllers.telemetry_models.AnomalyDetector`` with its bundled model file) and otherwise from a
fixed rule, :func:`rule_flags`: an interval is anomalous when it retransmitted, or when its smoothed
RTT exceeds twice the connection's minimum RTT *and* that minimum by at least 1 ms (on a LAN path of
0.05 ms, 0.2 ms is not congestion). :func:`detect_anomalies` says which of the two answered.

Server-wide counters (tokens generated and sent, requests waiting, KV memory in use) come from the
server's Prometheus ``/metrics``: :func:`fetch_metrics` reads it and :func:`parse_prometheus` parses
the text format's sample lines (``name{labels} value``), which is all the dashboard needs.

Times: telemetry ``t`` is seconds since the server's clock origin; :func:`run_clock` gives "now" on
that clock from ``run.json`` (same kernel boot), so a connection's "active" flag does not depend on
rows still arriving.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import time
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ACTIVE_S",
    "METRIC_LABELS",
    "RULE_DESCRIPTION",
    "RULE_RTT_MIN_EXCESS_MS",
    "RULE_RTT_RATIO",
    "TELEMETRY_FILE",
    "WINDOW_S",
    "AnomalyResult",
    "ConnectionSummary",
    "TelemetryTail",
    "anomaly_flags",
    "default_stream",
    "detect_anomalies",
    "fetch_metrics",
    "file_age_s",
    "find_controller_dir",
    "fmt_ms",
    "fmt_num",
    "metrics_url",
    "parse_prometheus",
    "rule_flags",
    "run_clock",
    "server_counters",
    "summarize",
    "to_float",
]

TELEMETRY_FILE = "telemetry.csv"
WINDOW_S = 60.0  # seconds of rows kept per connection
ACTIVE_S = 1.0  # a connection with a row this recent (server clock) is active
MAX_STREAMS = 500  # connections kept; the least recently seen are forgotten first
RULE_RTT_RATIO = 2.0  # srtt above this many times the connection's min RTT ...
RULE_RTT_MIN_EXCESS_MS = 1.0  # ... and above it by at least this much
RULE_DESCRIPTION = (f"retransmits > 0, or srtt > {RULE_RTT_RATIO:g}× the connection's min RTT "
                    f"(and ≥ {RULE_RTT_MIN_EXCESS_MS:g} ms above it)")

Row = dict[str, str]  # one telemetry.csv row as csv.DictReader gives it ("" = unknown)


def to_float(cell: str | float | None) -> float | None:
    """A CSV cell as a number; empty, missing, unparsable or NaN -> None."""
    if cell is None or cell == "":
        return None
    try:
        x = float(cell)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def fmt_ms(x: float | None) -> str:
    """An RTT in milliseconds as the page prints it: three significant-ish digits, "—" when unknown."""
    if x is None:
        return "—"
    if abs(x) < 1:
        return f"{x:.3f}"
    if abs(x) < 10:
        return f"{x:.2f}"
    if abs(x) < 100:
        return f"{x:.1f}"
    return f"{x:.0f}"


def fmt_num(x: float | None, digits: int = 1) -> str:
    """A rate, buffer or count for the page; "—" when unknown (None or NaN: a gauge nobody set)."""
    if x is None or math.isnan(x):
        return "—"
    if float(x).is_integer() and abs(x) >= 1000:
        return f"{int(x):,}"
    return f"{x:,.{digits}f}"


# --------------------------------------------------------------------------- where the telemetry is
def find_controller_dir(path: Path | str) -> Path | None:
    """The controller folder to show: ``path`` itself when it holds telemetry.csv, else the subfolder of
    ``path`` whose telemetry.csv was written last (a recording DIR with one folder per controller run).
    None when there is none yet."""
    p = Path(path)
    if (p / TELEMETRY_FILE).is_file():
        return p
    best: tuple[float, str] | None = None
    found: Path | None = None
    try:
        subs = list(p.iterdir())
    except OSError:
        return None
    for sub in subs:
        f = sub / TELEMETRY_FILE
        try:
            mtime = f.stat().st_mtime
        except OSError:
            continue
        key = (mtime, sub.name)
        if best is None or key > best:
            best, found = key, sub
    return found


def run_clock(run_dir: Path | str, boot: str | None = None) -> Callable[[], float] | None:
    """A function returning "now" in seconds on the recording's clock (telemetry ``t``), or None when
    run.json is missing or was written on another kernel boot (another machine's monotonic clock)."""
    path = Path(run_dir) / "run.json"
    try:
        info = json.loads(path.read_text())
        t0 = float(info["live"]["t0_monotonic"])
        run_boot = info["live"].get("boot_id")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if boot is None:
        try:
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        except OSError:
            return None
    if run_boot != boot:
        return None
    return lambda: time.monotonic() - t0


# --------------------------------------------------------------------------- tailing telemetry.csv
@dataclass
class TelemetryTail:
    """Incremental reader of one telemetry.csv: the last ``window_s`` seconds of rows per stream.

    ``poll()`` reads from the remembered byte offset to the last complete line; an unterminated last
    line (the writer is mid-row) stays unread until its newline arrives. A file that shrank or was
    replaced (a new run recording into the same folder) is read again from the start.
    """

    path: Path
    window_s: float = WINDOW_S
    max_streams: int = MAX_STREAMS
    offset: int = 0
    header: list[str] | None = None
    rows: dict[str, deque[Row]] = field(default_factory=dict)
    rows_read: int = 0
    latest_t: float | None = None
    _inode: int | None = None

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    def reset(self) -> None:
        self.offset, self.header, self.rows, self.rows_read, self.latest_t, self._inode = 0, None, {}, 0, None, None

    def poll(self, max_bytes: int = 32 << 20) -> int:
        """Read what was appended since the last poll; returns the number of new rows."""
        try:
            st = self.path.stat()
        except OSError:
            return 0
        if (self._inode is not None and st.st_ino != self._inode) or st.st_size < self.offset:
            self.reset()
        self._inode = st.st_ino
        if st.st_size == self.offset:
            return 0
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read(max_bytes)
        end = chunk.rfind(b"\n")
        if end < 0:
            return 0  # not one complete line yet
        self.offset += end + 1
        lines = chunk[: end + 1].decode("utf-8", errors="replace").splitlines()
        if self.header is None:
            self.header = next(csv.reader(lines[:1]), None)
            lines = lines[1:]
            if not self.header:
                self.header = None
                return 0
        return self._add(csv.reader(lines))

    def _add(self, records: Iterable[list[str]]) -> int:
        assert self.header is not None
        names = self.header
        n = 0
        touched: set[str] = set()
        for rec in records:
            if not rec:
                continue
            row = dict(zip(names, rec, strict=False))
            sid = row.get("stream_id", "")
            t = to_float(row.get("t"))
            if not sid or t is None:
                continue  # not a row (a torn write, a stray line)
            q = self.rows.get(sid)
            if q is None:
                q = self.rows[sid] = deque()
            else:  # re-insert so dict order is least -> most recently seen
                del self.rows[sid]
                self.rows[sid] = q
            q.append(row)
            touched.add(sid)
            if self.latest_t is None or t > self.latest_t:
                self.latest_t = t
            n += 1
        for sid in touched:
            q = self.rows[sid]
            horizon = to_float(q[-1]["t"])
            if horizon is None:
                continue
            while q and (to_float(q[0]["t"]) or 0.0) < horizon - self.window_s:
                q.popleft()
        while len(self.rows) > self.max_streams:
            del self.rows[next(iter(self.rows))]
        self.rows_read += n
        return n

    def window_rows(self) -> list[Row]:
        """Every kept row, in stream order (least recently seen stream first), each stream's by time."""
        return [r for q in self.rows.values() for r in q]


# --------------------------------------------------------------------------- per-connection summary
@dataclass(frozen=True)
class ConnectionSummary:
    stream_id: str
    last_t: float
    active: bool
    srtt_ms: float | None  # latest known smoothed RTT
    rtt_p95_ms: float | None  # latest known p95 of the interval's RTT samples
    rtt_min_ms: float | None  # smallest RTT seen in the window
    retrans_window: int  # retransmitted segments over the window
    rate_tps: float | None  # the controller's latest decision (None = unpaced)
    client_buffer_est: float | None
    generated_tokens: int | None
    acked_tokens: int | None
    anomalies: int  # anomalous intervals in the window
    anomalous_now: bool  # the latest interval is anomalous
    intervals: int  # rows in the window


def _latest(rows: Sequence[Row], key: str) -> float | None:
    for r in reversed(rows):
        x = to_float(r.get(key))
        if x is not None:
            return x
    return None


def summarize(rows_by_stream: Mapping[str, Sequence[Row]], now_t: float | None = None, *,
              flags: Mapping[str, Sequence[bool]] | None = None, active_s: float = ACTIVE_S
              ) -> list[ConnectionSummary]:
    """One summary per connection, most recently seen first (ties: larger stream id first).

    ``now_t`` is the current time on the recording's clock (default: the newest row's ``t``); a
    connection is active when its newest row is at most ``active_s`` older. ``flags`` are anomaly flags
    aligned with each stream's rows (:func:`detect_anomalies`)."""
    last: dict[str, float] = {}
    for sid, rows in rows_by_stream.items():
        t = to_float(rows[-1].get("t")) if rows else None
        if t is not None:
            last[sid] = t
    if now_t is None:
        now_t = max(last.values(), default=0.0)
    out = []
    for sid, t in last.items():
        rows = rows_by_stream[sid]
        f = list(flags.get(sid, ())) if flags is not None else []
        mins = [x for x in (to_float(r.get("rtt_min_ms")) for r in rows) if x is not None]
        retrans = sum(int(x) for x in (to_float(r.get("retrans")) for r in rows) if x is not None)
        gen, acked = _latest(rows, "generated_tokens"), _latest(rows, "acked_tokens")
        out.append(ConnectionSummary(
            stream_id=sid, last_t=t, active=now_t - t <= active_s,
            srtt_ms=_latest(rows, "srtt_ms"), rtt_p95_ms=_latest(rows, "rtt_p95_ms"),
            rtt_min_ms=min(mins) if mins else None, retrans_window=retrans,
            rate_tps=to_float(rows[-1].get("rate_tps")), client_buffer_est=to_float(rows[-1].get("client_buffer_est")),
            generated_tokens=None if gen is None else int(gen), acked_tokens=None if acked is None else int(acked),
            anomalies=sum(bool(x) for x in f), anomalous_now=bool(f[-1]) if f else False, intervals=len(rows),
        ))
    out.sort(key=lambda s: (s.last_t, s.stream_id), reverse=True)
    return out


def default_stream(summaries: Sequence[ConnectionSummary]) -> str | None:
    """The connection the page shows first: the most recently active one that has a measured RTT
    (else the most recently active one). ``summaries`` as :func:`summarize` orders them."""
    for s in summaries:
        if s.srtt_ms is not None:
            return s.stream_id
    return summaries[0].stream_id if summaries else None


# --------------------------------------------------------------------------- anomaly flags
AnomalySource = Literal["model", "rule"]


@dataclass(frozen=True)
class AnomalyResult:
    flags: list[bool]
    source: AnomalySource
    detail: str  # the model's description, or the rule and why the model was not used


def rule_flags(rows: Sequence[Row]) -> list[bool]:
    """The fallback rule, row by row: retransmits in the interval, or srtt above ``RULE_RTT_RATIO`` × the
    connection's minimum RTT and above it by ``RULE_RTT_MIN_EXCESS_MS``. The minimum is per stream,
    over the rows given (rtt_min_ms, or srtt where rtt_min is unknown)."""
    base: dict[str, float] = {}
    for r in rows:
        x = to_float(r.get("rtt_min_ms"))
        if x is None:
            x = to_float(r.get("srtt_ms"))
        if x is not None and x > 0:
            sid = r.get("stream_id", "")
            base[sid] = min(base.get(sid, x), x)
    out = []
    for r in rows:
        retrans = to_float(r.get("retrans")) or 0.0
        srtt = to_float(r.get("srtt_ms"))
        b = base.get(r.get("stream_id", ""))
        slow = (srtt is not None and b is not None and srtt > RULE_RTT_RATIO * b
                and srtt - b >= RULE_RTT_MIN_EXCESS_MS)
        out.append(retrans > 0 or slow)
    return out


MODEL_RETRY_S = 30.0  # a missing model is looked for again this often (it may be trained meanwhile)
_detector_cache: dict[str, Any] = {}


def _load_detector(now_s: float | None = None) -> tuple[Any | None, str]:
    """The trained detector (or None) and a note on it. A loaded detector is kept (``load()`` itself
    caches per model file); a failure is remembered for ``MODEL_RETRY_S``."""
    now_s = time.monotonic() if now_s is None else now_s
    cached = _detector_cache.get("result")
    if cached is not None and (cached[0] is not None or now_s - _detector_cache["at"] < MODEL_RETRY_S):
        return cached  # type: ignore[no-any-return]
    result: tuple[Any | None, str]
    try:
        from controllers.telemetry_models import AnomalyDetector  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        result = (None, f"no telemetry model ({exc})")
    else:
        try:
            detector = AnomalyDetector.load()
        except Exception as exc:  # a missing or unreadable model file: the rule still works
            result = (None, f"telemetry model not loadable ({type(exc).__name__}: {exc})")
        else:
            where = getattr(detector, "path", None)
            result = (detector, f"telemetry model {Path(where).name if where else type(detector).__name__}")
    _detector_cache.update(result=result, at=now_s)
    return result


def detect_anomalies(rows: Sequence[Row], *, use_model: bool = True) -> AnomalyResult:
    """Flags for ``rows`` (telemetry.csv dict rows, any mix of streams) and which source made them:
    the telemetry model when installed and working, else :func:`rule_flags`."""
    rows = list(rows)
    note = "model disabled"
    if use_model:
        detector, note = _load_detector()
        if detector is not None:
            try:
                flags = [bool(x) for x in detector.flag_rows(rows)]
            except Exception as exc:  # a model that fails on live rows must not take the page down
                note = f"telemetry model failed ({type(exc).__name__}: {exc})"
            else:
                if len(flags) == len(rows):
                    return AnomalyResult(flags, "model", note)
                note = f"telemetry model returned {len(flags)} flags for {len(rows)} rows"
    return AnomalyResult(rule_flags(rows), "rule", f"{RULE_DESCRIPTION}; {note}")


def anomaly_flags(rows: Sequence[Row]) -> list[bool]:
    """Anomaly flag per row (model when available, else the rule); see :func:`detect_anomalies`."""
    return detect_anomalies(rows).flags


# --------------------------------------------------------------------------- the server's /metrics
METRIC_LABELS: dict[str, str] = {  # Prometheus name -> what the page calls it
    "tokenpace_tokens_generated_total": "tokens generated",
    "tokenpace_tokens_sent_total": "tokens sent",
    "tokenpace_active_streams": "active streams",
    "tokenpace_paced_streams": "paced streams",
    "tokenpace_engine_waiting": "requests waiting",
    "tokenpace_engine_kv_tokens": "KV in use (tokens)",
    "tokenpace_mean_decided_rate_tps": "mean rate (tok/s)",
    "tokenpace_retransmits_total": "retransmits",
    "tokenpace_client_disconnects_total": "client disconnects",
}


def parse_prometheus(text: str) -> dict[str, float]:
    """Sample lines of the Prometheus text format as ``{"name{labels}": value}`` (``name`` alone when a
    sample has no labels). Comments, blank lines and malformed lines are skipped; timestamps ignored."""
    out: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            close = line.rfind("}")
            if close < 0:
                continue
            name, rest = line[:close + 1], line[close + 1:].split()
        else:
            parts = line.split()
            name, rest = parts[0], parts[1:]
        if not rest:
            continue
        try:
            out[name] = float(rest[0])
        except ValueError:
            continue
    return out


def metrics_url(url: str) -> str:
    """``http://host:8000`` or ``http://host:8000/metrics`` -> the /metrics URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.path.rstrip("/").endswith("/metrics"):
        return url
    return urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/metrics"))


def fetch_metrics(url: str, timeout_s: float = 1.0) -> dict[str, float]:
    """GET the server's /metrics and parse it; raises OSError (URLError) when the server is unreachable."""
    with urllib.request.urlopen(metrics_url(url), timeout=timeout_s) as resp:
        return parse_prometheus(resp.read().decode("utf-8", errors="replace"))


def server_counters(metrics: Mapping[str, float]) -> dict[str, float]:
    """The counters the page shows, under their page names (those the server exported)."""
    out: dict[str, float] = {}
    for name, label in METRIC_LABELS.items():
        if name in metrics:
            out[label] = metrics[name]
        elif name.endswith("_total") and name.removesuffix("_total") in metrics:  # older prometheus-client
            out[label] = metrics[name.removesuffix("_total")]
    return out


def file_age_s(path: Path | str) -> float | None:
    """Seconds since ``path`` was last written (None when it does not exist)."""
    with contextlib.suppress(OSError):
        return max(0.0, time.time() - os.stat(path).st_mtime)
    return None
