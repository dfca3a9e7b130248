"""The results folder's format: its files, their columns, how many decimals each column keeps, and
what run.json's ``status`` says.

A run (simulated or live) leaves a folder behind::

    DIR/run.json                      what was run: scenario, controllers, seed, versions, started_at
    DIR/summary.json                  the metrics per controller (written by analysis)
    DIR/<controller>/tokens.csv       one row per generated token
    DIR/<controller>/streams.csv      one row per request
    DIR/<controller>/telemetry.csv    one row per stream per control interval
    DIR/<controller>/server.csv       one row per batch the serving node ran (replicas.csv with
                                      server.replicas > 1: the same columns after a ``replica`` one)
    DIR/<controller>/request_traces.csv, events.csv, memory_events.csv   server-side detail
    DIR/<controller>/links.csv        path capacity and bottleneck backlog over time

Cells are numbers or short text. An empty cell means "missing": a token that was never
displayed, an RTT that was not measured, a stream that was not paced. In memory a missing
number is NaN and a missing text is the empty string; when writing, ``None`` and NaN both
become an empty cell. A number is written with every digit of ``round(value, decimals)``, the
column's entry in :data:`DECIMALS` (None: the value as it is); times are kept to 1 us.

Every problem with the files is reported as a :class:`ResultsFormatError` whose message is one
line naming the file (and the column, and the line when known), so the command line can print
it instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

# --------------------------------------------------------------------------- the columns
TOKENS_COLUMNS: tuple[str, ...] = (
    "stream_id",
    "idx",
    "t_generated",
    "t_sent",
    "t_acked",
    "t_received",
    "t_displayed",
)
STREAMS_COLUMNS: tuple[str, ...] = (
    "stream_id",
    "path",
    "arrival",
    "prompt_tokens",
    "output_tokens",
    "ttft_s",
    "stall_s",
    "qoe",
    "outcome",
    "wasted_tokens",
    "reading_tps",
    "patience_s",
    "ttft_expected_s",
    "end_s",
    "generated_tokens",
    "displayed_tokens",
)
TELEMETRY_COLUMNS: tuple[str, ...] = (
    "t",
    "stream_id",
    "srtt_ms",
    "rtt_min_ms",
    "rtt_p95_ms",
    "retrans",
    "cwnd_pkts",
    "inflight_bytes",
    "queued_bytes",
    "acked_tokens",
    "generated_tokens",
    "reading_tps",
    "client_buffer_est",
    "rate_tps",
)
SERVER_COLUMNS: tuple[str, ...] = (
    "time",
    "batch_id",
    "batch_size",
    "batch_tokens",
    "batch_duration",
    "waiting_count",
    "running_count",
    "swapped_count",
    "completed_count",
    "gpu_memory_used",
    "memory_utilization",
)
REQUEST_TRACES_COLUMNS: tuple[str, ...] = (
    "req_id",
    "arrival_time",
    "prefill_length",
    "decode_length",
    "completion_time",
    "first_enter_running_time",
    "waiting_time",
    "execution_time",
    "swap_count",
    "total_delay",
)
EVENTS_COLUMNS: tuple[str, ...] = ("time", "event_type", "req_id", "details")
MEMORY_EVENTS_COLUMNS: tuple[str, ...] = (
    "time",
    "event_type",
    "req_id",
    "memory_before",
    "memory_after",
    "reason",
)
LINKS_COLUMNS: tuple[str, ...] = ("t", "path", "rate_bps", "backlog_bytes")
REPLICAS_CSV = "replicas.csv"
#: replicas.csv (``server.replicas`` > 1, instead of server.csv): each replica numbers its own batches.
REPLICAS_COLUMNS: tuple[str, ...] = ("replica", *SERVER_COLUMNS)


#: file name -> its columns, for every file a controller's folder may hold.
CONTROLLER_FILES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "tokens.csv": TOKENS_COLUMNS,
        "streams.csv": STREAMS_COLUMNS,
        "telemetry.csv": TELEMETRY_COLUMNS,
        "server.csv": SERVER_COLUMNS,
        "request_traces.csv": REQUEST_TRACES_COLUMNS,
        "events.csv": EVENTS_COLUMNS,
        "memory_events.csv": MEMORY_EVENTS_COLUMNS,
        "links.csv": LINKS_COLUMNS,
    }
)
#: files without which a controller's results cannot be summarised.
REQUIRED_FILES: tuple[str, ...] = ("streams.csv", "tokens.csv")
#: columns holding text; every other column is a number (float64, NaN when empty).
TEXT_COLUMNS: frozenset[str] = frozenset(
    {"stream_id", "path", "outcome", "event_type", "req_id", "details", "reason", "batch_id"}
)
OUTCOMES: tuple[str, ...] = ("completed", "abandoned", "cancelled")
EVENT_TYPES: tuple[str, ...] = ("arrive", "admit", "swap_out", "swap_in", "preempt", "recompute", "complete", "cancel")

# --------------------------------------------------------------------------- decimals
#: Decimals per column (None: written as it is), in column order. Writers round nothing themselves:
#: :class:`analysis.results.writer.RunRecorder` writes rows through these.
TOKENS_DECIMALS: tuple[int | None, ...] = (None, None, 6, 6, 6, 6, 6)
STREAMS_DECIMALS: tuple[int | None, ...] = (None, None, 6, None, None, 6, 6, 6, None, None, 6, 6, None, 6, None, None)
TELEMETRY_DECIMALS: tuple[int | None, ...] = (6, None, 6, 6, 6, None, None, None, None, None, None, 6, 4, 6)
SERVER_DECIMALS: tuple[int | None, ...] = (6, None, None, None, 6, None, None, None, None, None, 6)
REPLICAS_DECIMALS: tuple[int | None, ...] = (None, *SERVER_DECIMALS)
REQUEST_TRACES_DECIMALS: tuple[int | None, ...] = (None, 6, None, None, 6, 6, 6, 6, None, 6)
EVENTS_DECIMALS: tuple[int | None, ...] = (6, None, None, None)
MEMORY_EVENTS_DECIMALS: tuple[int | None, ...] = (6, None, None, None, None, None)
LINKS_DECIMALS: tuple[int | None, ...] = (6, None, 1, None)
#: file name -> its decimals, for every file the writer makes (columns: CONTROLLER_FILES, REPLICAS_COLUMNS).
DECIMALS: Mapping[str, tuple[int | None, ...]] = MappingProxyType({
    "tokens.csv": TOKENS_DECIMALS,
    "streams.csv": STREAMS_DECIMALS,
    "telemetry.csv": TELEMETRY_DECIMALS,
    "server.csv": SERVER_DECIMALS,
    "request_traces.csv": REQUEST_TRACES_DECIMALS,
    "events.csv": EVENTS_DECIMALS,
    "memory_events.csv": MEMORY_EVENTS_DECIMALS,
    "links.csv": LINKS_DECIMALS,
    REPLICAS_CSV: REPLICAS_DECIMALS,
})

# --------------------------------------------------------------------------- run.json
RUN_JSON = "run.json"
#: run.json ``status``: written ``running`` when a run starts (a killed run keeps it), ``interrupted``
#: when Ctrl-C or SIGTERM stopped it, ``complete`` at the end. A run.json without one predates the
#: field and was written by a run that finished.
RUNNING, INTERRUPTED, COMPLETE = "running", "interrupted", "complete"
RUN_STATUSES: tuple[str, ...] = (RUNNING, INTERRUPTED, COMPLETE)
STATUS_COMPLETE = COMPLETE  # the name the readers use
STATUS_MEANING: Mapping[str, str] = MappingProxyType({
    RUNNING: "the run was killed or is still going",
    INTERRUPTED: "the run was stopped by Ctrl-C or SIGTERM",
    COMPLETE: "every controller finished",
})
RESULTS_FOLDER_HOLDS = ("a results folder holds run.json and one folder per controller with streams.csv and "
                        "tokens.csv, as python -m sim and python -m live --record write it")
#: run.json's key for when the run started: ISO 8601 in UTC, set once and kept when the run is resumed.
STARTED_AT = "started_at"


class ResultsFormatError(ValueError):
    """A results file is missing or malformed. ``str()`` is one line naming the file."""

    def __init__(self, path: Path | str, problem: str, *, column: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        self.path = Path(path)
        self.problem = problem
        self.column = column
        self.line = line
        self.key = key
        where = str(self.path) + (f":{line}" if line is not None else "")
        col = f" column {column!r}:" if column is not None else ""
        col += f" key {key!r}:" if key is not None else ""
        super().__init__(f"{where}:{col} {problem}")
