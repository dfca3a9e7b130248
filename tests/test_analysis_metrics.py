"""Summary metrics on a hand-built results folder whose numbers are worked out in the comments.

Both controllers serve the same three requests: 4 tokens each, reading pace 2 tok/s (one token
every 0.5 s), expected TTFT 1 s, so ∫E = 1·0.5 + 2·0.5 + 3·0.5 + 4·0.5 = 5 token·s per stream.

alpha
  s1  arrival 0: shown 1.0 1.5 2.0 2.5 (on schedule)        QoE 1    stall 0    TTFT 1
  s2  arrival 1: shown 2.0 2.5 3.5 4.0 (token 2 due 3.0)    QoE 0.8  stall 0.5  TTFT 1
  s3  arrival 2: shown 4.0 4.5, token 2 due 5.0, left 6.0   QoE 0.3  stall 1.0  TTFT 2
      (2 of 4 tokens from 2 s after arrival: ∫min = 1·0.5 + 2·0.5 = 1.5; token 2 received 6.5,
      token 3 generated, never received)
  stall_ratio = (0 + 0.5 + 1.0) / ((2.5-1) + (4-2) + (6-4)) = 1.5 / 5.5
  ITL gaps: .5 .5 .5 | .5 1 .5 | .5 2  ->  p50 0.5, p99 1 + 0.93·1 = 1.93
  tokens 12 generated, 10 displayed -> waste 1/6; run time 6 s -> 10/6 tok/s
  server.csv batches 0.5 + 1.0 + 1.5 = 3 s of 6 -> GPU busy 0.5; peak queued 800 B; rate (2, -, 4)

beta (no server.csv, no telemetry.csv)
  s1  arrival 0: shown 0.5 1.0 1.5 2.0 (early)              QoE 1    stall 0    TTFT 0.5
  s2  arrival 1: cancelled after 2 tokens at 2.0 2.5, end 3 QoE 3.5/5 = 0.7
  s3  arrival 2: 1 token generated, nothing received, left 4.0    QoE 0   TTFT -
  tokens 7 generated, 6 displayed; run time 4 s
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from analysis.metrics import (
    METRIC_KEYS,
    format_table,
    rank_controllers,
    stream_metrics,
    summarize_controller,
    summarize_run,
    tied_best,
)
from analysis.results import (
    STREAMS_COLUMNS,
    CsvRecorder,
    ResultsFormatError,
    load_controller_dir,
    load_run,
    open_recorder,
    read_csv,
    write_json,
)

NAN = math.nan
# stream_id -> (arrival, outcome, end_s, [(t_generated, t_received, t_displayed) per token])
ALPHA = {
    "s1": (0.0, "completed", 2.5, [(0.9, 1.0, 1.0), (1.4, 1.5, 1.5), (1.9, 2.0, 2.0), (2.4, 2.5, 2.5)]),
    "s2": (1.0, "completed", 4.0, [(1.9, 2.0, 2.0), (2.4, 2.5, 2.5), (3.4, 3.5, 3.5), (3.9, 4.0, 4.0)]),
    "s3": (2.0, "abandoned", 6.0, [(3.9, 4.0, 4.0), (4.4, 4.5, 4.5), (6.4, 6.5, NAN), (6.9, NAN, NAN)]),
}
BETA = {
    "s1": (0.0, "completed", 2.0, [(0.4, 0.5, 0.5), (0.9, 1.0, 1.0), (1.4, 1.5, 1.5), (1.9, 2.0, 2.0)]),
    "s2": (1.0, "cancelled", 3.0, [(1.9, 2.0, 2.0), (2.4, 2.5, 2.5)]),
    "s3": (2.0, "abandoned", 4.0, [(2.5, NAN, NAN)]),
}


def write_controller(folder: Path, streams: dict, *, server: bool) -> None:
    with open_recorder(folder, "streams.csv") as rec:
        for sid, (arrival, outcome, end, toks) in streams.items():
            shown = [t for t in toks if not math.isnan(t[2])]
            rec.write(
                {
                    "stream_id": sid,
                    "path": "wan" if sid != "s3" else "lte",
                    "arrival": arrival,
                    "prompt_tokens": 100,
                    "output_tokens": 4,
                    "ttft_s": None,
                    "stall_s": 9.9,
                    "qoe": 0.123,
                    "outcome": outcome,
                    "wasted_tokens": len(toks) - len(shown),
                    "reading_tps": 2.0,
                    "patience_s": 1.0,
                    "ttft_expected_s": 1.0,
                    "end_s": end,
                    "generated_tokens": len(toks),
                    "displayed_tokens": len(shown),
                }
            )
    with open_recorder(folder, "tokens.csv", flush_every=3) as rec:
        for sid, (_, _, _, toks) in streams.items():
            for i, (gen, recv, disp) in enumerate(toks):
                rec.write([sid, i, gen, gen + 0.01, None, recv, disp])
    if server:
        with open_recorder(folder, "server.csv") as rec:
            for i, dur in enumerate([0.5, 1.0, 1.5]):
                rec.write(
                    {
                        "time": float(i),
                        "batch_id": i,
                        "batch_size": 2,
                        "batch_tokens": 2,
                        "batch_duration": dur,
                        "waiting_count": 0,
                        "running_count": 2,
                        "swapped_count": 0,
                        "completed_count": i,
                        "gpu_memory_used": 10,
                        "memory_utilization": 0.5,
                    }
                )
        with open_recorder(folder, "telemetry.csv") as rec:
            for t, queued, rate in [(0.1, 200, 2.0), (0.2, 800, None), (0.3, 400, 4.0)]:
                rec.write(
                    {
                        "t": t,
                        "stream_id": "s1",
                        "queued_bytes": queued,
                        "rate_tps": rate,
                        "reading_tps": 2.0,
                        "srtt_ms": None,
                    }
                )


def write_run(root: Path) -> Path:
    write_json(
        root / "run.json",
        {"mode": "sim", "scenario": {"name": "hand"}, "controllers": ["beta", "alpha"], "seed": 1, "slo_qoe": 0.9},
        sig_digits=None,
    )
    write_controller(root / "alpha", ALPHA, server=True)
    write_controller(root / "beta", BETA, server=False)
    (root / "plots").mkdir()  # a folder without streams.csv is not a controller
    return root


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run")


def test_alpha_metrics_by_hand(run_dir: Path):
    m = summarize_controller(run_dir / "alpha", slo_qoe=0.9)
    assert set(m) == set(METRIC_KEYS)
    exact = {
        "streams": 3,
        "completed": 2,
        "abandoned": 1,
        "cancelled": 0,
        "ttft_p50_s": 1.0,
        "ttft_p99_s": 1.98,
        "itl_p50_s": 0.5,
        "itl_p99_s": 1.93,
        "stall_ratio": 1.5 / 5.5,
        "qoe_mean": 0.7,
        "qoe_p10": 0.4,
        "slo_attainment": 1 / 3,
        "tokens_generated": 12,
        "tokens_displayed": 10,
        "tokens_wasted": 2,
        "waste_frac": 1 / 6,
        "run_time_s": 6.0,
        "effective_tps": 10 / 6,
        "gpu_busy_frac": 0.5,
        "peak_queued_bytes": 800.0,
        "mean_rate_tps": 3.0,
    }
    for key, value in exact.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key
    assert isinstance(m["streams"], int) and isinstance(m["tokens_wasted"], int)


def test_beta_metrics_by_hand(run_dir: Path):
    m = summarize_controller(run_dir / "beta", slo_qoe=0.9)
    exact = {
        "streams": 3,
        "completed": 1,
        "abandoned": 1,
        "cancelled": 1,
        "ttft_p50_s": 0.75,
        "ttft_p99_s": 0.995,
        "itl_p50_s": 0.5,
        "itl_p99_s": 0.5,
        "stall_ratio": 0.0,
        "qoe_mean": 1.7 / 3,
        "slo_attainment": 1 / 3,
        "tokens_generated": 7,
        "tokens_displayed": 6,
        "tokens_wasted": 1,
        "waste_frac": 1 / 7,
        "run_time_s": 4.0,
        "effective_tps": 1.5,
    }
    for key, value in exact.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key
    assert m["gpu_busy_frac"] is None and m["peak_queued_bytes"] is None and m["mean_rate_tps"] is None


def test_per_stream_values(run_dir: Path):
    sm = stream_metrics(load_controller_dir(run_dir / "alpha"))
    assert sm.stream_id.tolist() == ["s1", "s2", "s3"]
    assert sm.qoe.tolist() == pytest.approx([1.0, 0.8, 0.3])
    assert sm.stall_s.tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert sm.ttft_s.tolist() == pytest.approx([1.0, 1.0, 2.0])


def test_summary_json_is_deterministic(run_dir: Path):
    summary = summarize_run(run_dir)
    first = (run_dir / "summary.json").read_bytes()
    summarize_run(load_run(run_dir))
    assert (run_dir / "summary.json").read_bytes() == first
    on_disk = json.loads(first)
    assert on_disk == summary
    assert on_disk["scenario"] == "hand"
    assert list(on_disk["controllers"]) == ["alpha", "beta"]  # sort_keys
    assert on_disk["controllers"]["alpha"]["stall_ratio"] == 0.272727  # 6 significant digits
    assert on_disk["controllers"]["beta"]["gpu_busy_frac"] is None
    assert first.endswith(b"}\n") and b"NaN" not in first


def test_controller_order_follows_run_json(run_dir: Path):
    assert load_run(run_dir).controller_names == ["beta", "alpha"]


def test_rank_and_table(run_dir: Path):
    summary = summarize_run(run_dir, write=False)
    assert rank_controllers(summary) == ["alpha", "beta"]
    tie = {
        "controllers": {
            "b": {"qoe_mean": 0.5, "waste_frac": 0.1},
            "a": {"qoe_mean": 0.5, "waste_frac": 0.2},
            "c": {"qoe_mean": None, "waste_frac": 0.0},
        }
    }
    assert rank_controllers(tie) == ["b", "a", "c"]
    # QoE within QOE_TIE (0.005) of the top is a tie that fewer wasted tokens break; beyond it QoE rules
    close = {"x": {"qoe_mean": 0.900, "tokens_wasted": 50}, "y": {"qoe_mean": 0.897, "tokens_wasted": 10},
             "z": {"qoe_mean": 0.890, "tokens_wasted": 0}}
    assert rank_controllers(close) == ["y", "x", "z"]
    assert rank_controllers(close, qoe_tie=0) == ["x", "y", "z"]
    # tied with the best: QoE within 0.005 and waste within 0.005 of its; here x wastes 4 points more
    close_w = {"x": {"qoe_mean": 0.900, "waste_frac": 0.05}, "y": {"qoe_mean": 0.897, "waste_frac": 0.01},
               "w": {"qoe_mean": 0.899, "waste_frac": 0.013}, "z": {"qoe_mean": 0.890, "waste_frac": 0.0}}
    assert rank_controllers(close_w)[0] == "y"
    assert tied_best(close_w) == ["y", "w"]
    assert tied_best({}) == []
    table = format_table(summary)
    assert table.row_count == 2
    from rich.console import Console

    console = Console(width=250, record=True)
    console.print(table)
    text = console.export_text()
    assert "alpha" in text and "0.700" in text and "16.7%" in text


def test_recorder_flushes_every_n_rows(tmp_path: Path):
    path = tmp_path / "x.csv"
    rec = CsvRecorder(path, ("a", "b"), flush_every=2)
    assert path.read_text() == "a,b\n"  # the header is on disk at once
    rec.write({"a": 1})
    assert path.read_text() == "a,b\n"
    rec.write([2.5, float("nan")])
    assert path.read_text() == "a,b\n1,\n2.5,\n"
    rec.write({"b": "x,y"})
    rec.close()
    assert path.read_text() == 'a,b\n1,\n2.5,\n,"x,y"\n'
    with pytest.raises(ValueError, match="unknown column"):
        CsvRecorder(tmp_path / "y.csv", ("a",)).write({"zzz": 1})


def test_reader_round_trips_empty_cells(run_dir: Path):
    tokens = read_csv(run_dir / "alpha" / "tokens.csv")
    assert math.isnan(tokens["t_acked"][0]) and math.isnan(tokens["t_displayed"][10])
    assert tokens["stream_id"][0] == "s1" and len(tokens) == 12


def test_truncated_last_row_is_dropped(run_dir: Path):
    path = run_dir / "alpha" / "tokens.csv"
    path.write_text(path.read_text() + "s1,4,3.0")  # the writer died mid-row
    assert len(read_csv(path)) == 12


@pytest.mark.parametrize(
    ("edit", "column"),
    [
        (lambda text: text.replace("reading_tps,", "reading_pace,", 1), "reading_tps"),
        (lambda text: text.replace(",2.0,1.0,1.0,", ",fast,1.0,1.0,", 1), "reading_tps"),
        (lambda text: text.replace("completed", "finished", 1), "outcome"),
    ],
)
def test_malformed_streams_csv_names_file_and_column(run_dir: Path, edit, column: str):
    path = run_dir / "alpha" / "streams.csv"
    path.write_text(edit(path.read_text()))
    with pytest.raises(ResultsFormatError) as info:
        load_run(run_dir)
    message = str(info.value)
    assert "streams.csv" in message and repr(column) in message and "\n" not in message


def test_zero_reading_pace_is_a_format_error(run_dir: Path):
    path = run_dir / "beta" / "streams.csv"
    lines = path.read_text().splitlines()
    cells = lines[1].split(",")
    cells[STREAMS_COLUMNS.index("reading_tps")] = "0"
    lines[1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ResultsFormatError, match=r"streams\.csv:2: column 'reading_tps'"):
        summarize_run(run_dir)


def test_tokens_of_unknown_stream(run_dir: Path):
    path = run_dir / "beta" / "tokens.csv"
    path.write_text(path.read_text() + "s9,0,1.0,,,,\n")
    with pytest.raises(ResultsFormatError, match=r"tokens\.csv:\d+: column 'stream_id'"):
        load_run(run_dir)
