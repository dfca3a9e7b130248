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

import numpy as np

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

# The big files (a row per token, per stream per control interval, per decode step, per path per
# interval) are collected column-wise and formatted a block at a time with numpy
# (`CsvRecorder.write_columns`): formatting cell by cell in Python was most of a run's time. The text
# is the same; a crash loses at most the rows of the unfinished block.
BLOCK_ROWS = 4096

# Decimals per column of those files (None: written as is). Times are kept to 1 us.
_TOKENS_DECIMALS = (None, None, 6, 6, 6, 6, 6)
_TELEMETRY_DECIMALS = (6, None, 6, 6, 6, None, None, None, None, None, None, 6, 4, 6)
_SERVER_DECIMALS = (6, None, None, None, 6, None, None, None, None, None, 6)
_LINKS_DECIMALS = (6, None, 1, None)


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
        # Pending rows of the block-written files.
        self._tokens: list[tuple[str, list[np.ndarray]]] = []  # (stream_id, its token columns) per stream
        self._token_rows = 0
        self._telemetry: list[tuple] = []
        self._steps: list[tuple] = []
        self._links: list[tuple] = []

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self._flush_tokens()
            self._flush_telemetry()
            self._flush_steps()
            self._flush_links()
        finally:
            for f in self._files.values():
                f.close()

    # ------------------------------------------------------------------ the node's log
    def step(self, t: float, batch_id: int, batch_size: int, batch_tokens: int, duration_s: float,
             waiting: int, running: int, swapped: int, completed: int, kv_used: int) -> None:
        self._steps.append((t, batch_id, batch_size, batch_tokens, duration_s, waiting, running, swapped, completed,
                            kv_used, kv_used / self._kv_total))
        if len(self._steps) >= BLOCK_ROWS:
            self._flush_steps()

    def _flush_steps(self) -> None:
        if self._steps:
            self._files["server"].write_columns(list(zip(*self._steps, strict=True)), _SERVER_DECIMALS)
            self._steps.clear()

    def event(self, t: float, kind: str, req_id: str, details: str = "") -> None:
        self._files["events"].write((round(t, 6), kind, req_id, details))

    def memory(self, t: float, kind: str, req_id: str, before: int, after: int, reason: str) -> None:
        self._files["memory"].write((round(t, 6), kind, req_id, before, after, reason))

    # ------------------------------------------------------------------ control loop samples
    def telemetry(self, o: Observation, rate_tps: float | None) -> None:
        self._telemetry.append((
            o.t_s, o.stream_id, o.srtt_ms, o.rtt_min_ms, o.rtt_p95_ms, o.retrans, o.cwnd_pkts, o.inflight_bytes,
            o.queued_bytes, o.acked_tokens, o.generated_tokens, o.reading_tps, o.client_buffer_est, rate_tps,
        ))
        if len(self._telemetry) >= BLOCK_ROWS:
            self._flush_telemetry()

    def _flush_telemetry(self) -> None:
        if self._telemetry:
            self._files["telemetry"].write_columns(list(zip(*self._telemetry, strict=True)), _TELEMETRY_DECIMALS)
            self._telemetry.clear()

    def link(self, t: float, path: str, rate_bps: float, backlog_bytes: int) -> None:
        self._links.append((t, path, rate_bps, backlog_bytes))
        if len(self._links) >= BLOCK_ROWS:
            self._flush_links()

    def _flush_links(self) -> None:
        if self._links:
            self._files["links"].write_columns(list(zip(*self._links, strict=True)), _LINKS_DECIMALS)
            self._links.clear()

    # ------------------------------------------------------------------ streams
    def stream(self, s: SimStream) -> None:
        """Write a finished stream's tokens and summary row (once)."""
        req = s.req
        if req.stream_id in self._written:
            return
        self._written.add(req.stream_id)
        r = s.reader
        n = s.seq.generated
        # Every time here is a float (a simulated time after at least one step), NaN when missing;
        # t_displayed of a token is set exactly when it is received.
        self._tokens.append((req.stream_id, [
            np.array(s.t_generated[:n]), s.sent_times(n), s.acked_times(n), np.array(r.t_received[:n]),
            np.array(r.t_displayed[:n]),
        ]))
        self._token_rows += n
        if self._token_rows >= BLOCK_ROWS:
            self._flush_tokens()
        displayed = r.t_displayed[: r.received]
        qoe = andes_qoe(req.arrival_s, self.ttft_expected_s, req.reading_tps, req.output_tokens, displayed)
        ttft = displayed[0] - req.arrival_s if displayed else None
        self._files["streams"].write((
            req.stream_id, req.path, round(req.arrival_s, 6), req.prompt_tokens, req.output_tokens, _t(ttft),
            round(r.stall_s, 6), round(qoe, 6), r.state, s.seq.generated - r.received, round(req.reading_tps, 6),
            round(req.patience_s, 6), self.ttft_expected_s, _t(r.end_s), s.seq.generated, r.received,
        ))

    def _flush_tokens(self) -> None:
        pending = self._tokens
        if not pending:
            return
        counts = [len(cols[0]) for _, cols in pending]
        ids = np.repeat(np.array([sid for sid, _ in pending]), counts)
        idx = np.concatenate([np.arange(c) for c in counts])
        times = [np.concatenate([cols[j] for _, cols in pending]) for j in range(5)]
        self._files["tokens"].write_columns([ids, idx, *times], _TOKENS_DECIMALS)
        pending.clear()
        self._token_rows = 0

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
