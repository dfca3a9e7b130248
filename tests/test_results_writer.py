"""The one writer (analysis.results.RunRecorder): rows as the schema says, times on a live recording's
clock, and the QoE the writer puts in streams.csv being the one analysis computes (analysis.qoe.stream_qoe).

Values are hand-computed. A stream of n = 3 tokens read at r = 2 tok/s with ttft_expected_s = 1 is
due on screen at 1.0, 1.5 and 2.0 s after arrival, and the reader is done at 2.5 s; the expected area
is n(n+1)/(2r) = 3 token-seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.metrics import stream_metrics
from analysis.results import (
    CONTROLLER_FILES,
    DECIMALS,
    REPLICAS_COLUMNS,
    REPLICAS_CSV,
    RunRecorder,
    load_controller_dir,
)


def body(path: Path) -> list[str]:
    """The rows of a CSV file (its header dropped)."""
    return path.read_text(encoding="utf-8").splitlines()[1:]


def reader_stream(rec: RunRecorder, displayed_at: list[float], *, outcome: str = "completed",
                  end_s: float = 102.5) -> float | None:
    return rec.write_stream(
        stream_id="s1", path="wifi", arrival_s=100.0, prompt_tokens=10, output_tokens=3, reading_tps=2.0,
        ttft_expected_s=1.0, outcome=outcome, token_rows=3, t_generated=[100.2, 100.4, 100.6],
        t_sent=[100.3, 100.5, 100.7], t_acked=[100.4, 100.6, 100.8], t_received=displayed_at,
        t_displayed=displayed_at, generated=3, displayed=len(displayed_at), stall_s=0.0, patience_s=1.5, end_s=end_s)


def test_every_file_has_one_decimals_entry_per_column() -> None:
    for name, decimals in DECIMALS.items():
        columns = REPLICAS_COLUMNS if name == REPLICAS_CSV else CONTROLLER_FILES[name]
        assert len(decimals) == len(columns), name


def test_on_time_stream_scores_one_and_late_by_a_second_scores_a_sixth(tmp_path: Path) -> None:
    with RunRecorder(tmp_path / "a", ("tokens.csv", "streams.csv")) as rec:
        assert reader_stream(rec, [101.0, 101.5, 102.0]) == 1.0
    assert body(tmp_path / "a" / "streams.csv") == [
        "s1,wifi,100.0,10,3,1.0,0.0,1.0,completed,0,2.0,1.5,1.0,102.5,3,3"]
    assert body(tmp_path / "a" / "tokens.csv")[0] == "s1,0,100.2,100.3,100.4,101.0,101.0"
    # every token 1 s late: 1 - (min(0.5, 1) + min(1, 1) + min(1.5, 1)) / 3 = 1/6
    with RunRecorder(tmp_path / "b", ("tokens.csv", "streams.csv")) as rec:
        assert reader_stream(rec, [102.0, 102.5, 103.0], end_s=103.0) == pytest.approx(1 / 6)
    assert body(tmp_path / "b" / "streams.csv")[0].split(",")[5:8] == ["2.0", "0.0", "0.166667"]
    assert stream_metrics(load_controller_dir(tmp_path / "b")).qoe[0] == pytest.approx(1 / 6)


def test_a_reader_who_left_is_scored_on_what_it_saw_by_the_writer_and_by_analysis(tmp_path: Path) -> None:
    # left at 101.2 (1.2 s after arrival) with token 0 shown at 1.0 s; token 1 shown at 1.5 s is after it
    # left and does not count: min(A, E) = 1 from 1.0 s to 2.5 s, so QoE = 1.5 / 3 = 0.5 (0.8333 if it did)
    with RunRecorder(tmp_path, ("tokens.csv", "streams.csv")) as rec:
        assert reader_stream(rec, [101.0, 101.5], outcome="abandoned", end_s=101.2) == 0.5
    assert body(tmp_path / "streams.csv")[0].split(",")[7] == "0.5"
    assert stream_metrics(load_controller_dir(tmp_path)).qoe[0] == 0.5


def test_live_server_half_writes_times_since_t0_under_its_own_names(tmp_path: Path) -> None:
    files = ("server.csv", "events.csv", "tokens.csv", "streams.csv")
    rec = RunRecorder(tmp_path, files, kv_tokens=1000, t0=100.0, rename={"tokens.csv": "server_tokens.csv"},
                      block_rows=64, stream_at_once=True)
    rec.step(100.1234567, 0, 2, 40, 0.01999999, 1, 2, 0, 0, 250)
    rec.event(100.5, "swap_out", "r1", "kv full; 4096 B to host 100.500000-100.750000")
    rec.write_stream(stream_id="s1", path="wifi", arrival_s=100.0, prompt_tokens=10, output_tokens=3, reading_tps=2.0,
                     ttft_expected_s=1.0, outcome="cancelled", token_rows=2, t_generated=[100.5, 101.0],
                     t_sent=[100.6], generated=2, end_s=101.25)
    # the stream's rows are on disk before the recorder is closed; no tokens.csv under its own name
    assert body(tmp_path / "server_tokens.csv") == ["s1,0,0.5,0.6,,,", "s1,1,1.0,,,,"]
    assert body(tmp_path / "streams.csv") == ["s1,wifi,0.0,10,3,,,,cancelled,,2.0,,1.0,1.25,2,"]
    assert not (tmp_path / "tokens.csv").exists()
    rec.close()
    assert body(tmp_path / "server.csv") == ["0.123457,0,2,40,0.02,1,2,0,0,250,0.25"]
    assert body(tmp_path / "events.csv") == ["0.5,swap_out,r1,kv full; 4096 B to host 0.500000-0.750000"]
