"""Writes one controller's run in the results layout (DESIGN.md) as the simulation goes.

Implements the node's log (server.csv, events.csv, memory_events.csv) and takes telemetry,
link samples and finished streams (tokens.csv, streams.csv). Analysis reads these files and
nothing else.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from analysis.qoe import andes_qoe
from analysis.results import (
    EVENTS_COLUMNS,
    LINKS_COLUMNS,
    MEMORY_EVENTS_COLUMNS,
    REQUEST_TRACES_COLUMNS,
    SERVER_COLUMNS,
    STREAMS_COLUMNS,
    TELEMETRY_COLUMNS,
    TOKENS_COLUMNS,
    CsvRecorder,
)
from controllers import Observation

if TYPE_CHECKING:
    from sim.node import Sequence
    from sim.stream import SimStream


def _t(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else round(x, 6)


class Recorder:
    def __init__(self, out_dir: Path, ttft_expected_s: float, kv_tokens: int) -> None:
        self.dir = out_dir
        self.ttft_expected_s = ttft_expected_s
        self._kv_total = kv_tokens
        self._files = {
            "tokens": CsvRecorder(out_dir / "tokens.csv", TOKENS_COLUMNS),
            "streams": CsvRecorder(out_dir / "streams.csv", STREAMS_COLUMNS),
            "telemetry": CsvRecorder(out_dir / "telemetry.csv", TELEMETRY_COLUMNS),
            "server": CsvRecorder(out_dir / "server.csv", SERVER_COLUMNS),
            "events": CsvRecorder(out_dir / "events.csv", EVENTS_COLUMNS),
            "memory": CsvRecorder(out_dir / "memory_events.csv", MEMORY_EVENTS_COLUMNS),
            "links": CsvRecorder(out_dir / "links.csv", LINKS_COLUMNS),
        }
        self._written: set[str] = set()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        for f in self._files.values():
            f.close()

    # ------------------------------------------------------------------ the node's log
    def step(self, t: float, batch_id: int, batch_size: int, batch_tokens: int, duration_s: float,
             waiting: int, running: int, swapped: int, completed: int, kv_used: int) -> None:
        self._files["server"].write((round(t, 6), batch_id, batch_size, batch_tokens, round(duration_s, 6), waiting,
                                     running, swapped, completed, kv_used, round(kv_used / self._kv_total, 6)))

    def event(self, t: float, kind: str, req_id: str, details: str = "") -> None:
        self._files["events"].write((round(t, 6), kind, req_id, details))

    def memory(self, t: float, kind: str, req_id: str, before: int, after: int, reason: str) -> None:
        self._files["memory"].write((round(t, 6), kind, req_id, before, after, reason))

    # ------------------------------------------------------------------ control loop samples
    def telemetry(self, o: Observation, rate_tps: float | None) -> None:
        self._files["telemetry"].write((
            round(o.t_s, 6), o.stream_id, _t(o.srtt_ms), _t(o.rtt_min_ms), _t(o.rtt_p95_ms), o.retrans, o.cwnd_pkts,
            o.inflight_bytes, o.queued_bytes, o.acked_tokens, o.generated_tokens, round(o.reading_tps, 6),
            round(o.client_buffer_est, 4), _t(rate_tps),
        ))

    def link(self, t: float, path: str, rate_bps: float, backlog_bytes: int) -> None:
        self._files["links"].write((round(t, 6), path, round(rate_bps, 1), backlog_bytes))

    # ------------------------------------------------------------------ streams
    def stream(self, s: SimStream) -> None:
        """Write a finished stream's tokens and summary row (once)."""
        req = s.req
        if req.stream_id in self._written:
            return
        self._written.add(req.stream_id)
        r = s.reader
        tokens = self._files["tokens"]
        for i in range(s.seq.generated):
            tokens.write((req.stream_id, i, _t(s.t_generated[i]), _t(s.t_sent[i]), _t(s.t_acked[i]),
                          _t(r.t_received[i]), _t(r.t_displayed[i]) if i < r.received else None))
        displayed = [r.t_displayed[i] for i in range(r.received)]
        qoe = andes_qoe(req.arrival_s, self.ttft_expected_s, req.reading_tps, req.output_tokens, displayed)
        ttft = displayed[0] - req.arrival_s if displayed else None
        self._files["streams"].write((
            req.stream_id, req.path, round(req.arrival_s, 6), req.prompt_tokens, req.output_tokens, _t(ttft),
            round(r.stall_s, 6), round(qoe, 6), r.state, s.seq.generated - r.received, round(req.reading_tps, 6),
            round(req.patience_s, 6), self.ttft_expected_s, _t(r.end_s), s.seq.generated, r.received,
        ))

    def flush_streams(self, streams: list[SimStream]) -> None:
        for s in streams:
            self.stream(s)

    def request_traces(self, seqs: list[Sequence]) -> None:
        with CsvRecorder(self.dir / "request_traces.csv", REQUEST_TRACES_COLUMNS) as f:
            for q in seqs:
                done = q.done_s if q.state == "finished" else None
                first = q.first_running_s
                f.write((q.req_id, round(q.arrival_s, 6), q.prompt_tokens, q.output_tokens, _t(done), _t(first),
                         None if first is None else round(first - q.arrival_s, 6), round(q.exec_s, 6), q.swap_count,
                         None if done is None else round(done - q.arrival_s, 6)))
