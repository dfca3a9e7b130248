"""Reading, scoring and drawing tokenpace runs.

A run (simulated or live) writes a results folder (see :mod:`analysis.results` for the exact
files and columns). This package reads only that folder — never the simulator or live code —
and turns it into per-stream scores (:mod:`analysis.qoe`: Andes QoE and stall time), per
controller metrics (:mod:`analysis.metrics`, written to summary.json), plots
(:mod:`analysis.plots`) and an HTML report (:mod:`analysis.report`). ``python -m analysis DIR``
does all of it (:mod:`analysis.cli`).

The simulator and live mode import this package to *write* results (:class:`CsvRecorder`,
:func:`write_json`) and to score streams, so importing it stays light: matplotlib and rich are
loaded only by the plotting, report and command-line modules.
"""

from analysis.metrics import (
    METRIC_KEYS,
    StreamMetrics,
    format_table,
    rank_controllers,
    stream_metrics,
    summarize_controller,
    summarize_run,
)
from analysis.qoe import StallIntervals, andes_qoe, stall_intervals, stream_stall_s
from analysis.results import (
    CONTROLLER_FILES,
    EVENTS_COLUMNS,
    LINKS_COLUMNS,
    MEMORY_EVENTS_COLUMNS,
    REQUEST_TRACES_COLUMNS,
    SERVER_COLUMNS,
    STREAMS_COLUMNS,
    TELEMETRY_COLUMNS,
    TOKENS_COLUMNS,
    ControllerRun,
    CsvRecorder,
    ResultsFormatError,
    Run,
    Table,
    load_controller_dir,
    load_run,
    open_recorder,
    read_csv,
    write_json,
)

__all__ = [
    "CONTROLLER_FILES",
    "EVENTS_COLUMNS",
    "LINKS_COLUMNS",
    "MEMORY_EVENTS_COLUMNS",
    "METRIC_KEYS",
    "REQUEST_TRACES_COLUMNS",
    "SERVER_COLUMNS",
    "STREAMS_COLUMNS",
    "TELEMETRY_COLUMNS",
    "TOKENS_COLUMNS",
    "ControllerRun",
    "CsvRecorder",
    "ResultsFormatError",
    "Run",
    "StallIntervals",
    "StreamMetrics",
    "Table",
    "andes_qoe",
    "format_table",
    "load_controller_dir",
    "load_run",
    "open_recorder",
    "rank_controllers",
    "read_csv",
    "stall_intervals",
    "stream_metrics",
    "stream_stall_s",
    "summarize_controller",
    "summarize_run",
    "write_json",
]
