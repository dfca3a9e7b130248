"""Seed 004's CSVs from a sweep folder (analysis/seed004.py), on a hand-written folder: every figure by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis.cli import main
from analysis.results import SERVER_COLUMNS
from analysis.seed004 import BATCH_ANALYSIS_COLUMNS, GPU_SCALING_COLUMNS, export, run_figures

TRACE_HEADER = "req_id,arrival_time,prefill_length,decode_length,completion_time,first_enter_running_time," \
               "waiting_time,execution_time,swap_count,total_delay"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _traces(rows: list[tuple[float, float | None, float | None, float | None]]) -> str:
    """(arrival, completion, waiting, total_delay) per request."""
    lines = [TRACE_HEADER]
    for i, (arr, done, wait, delay) in enumerate(rows):
        cells = [f"r{i}", arr, 100, 10, done, None if wait is None else arr + wait, wait, 1.0, 0, delay]
        lines.append(",".join("" if c is None else str(c) for c in cells))
    return "\n".join(lines) + "\n"


def _streams(n: int) -> str:
    return "stream_id,path\n" + "".join(f"r{i},p\n" for i in range(n))


def _steps(completed: dict[int, list[int]], replicas: int) -> str:
    """server.csv (one replica) or replicas.csv rows whose completed_count runs through the lists given."""
    cols = SERVER_COLUMNS if replicas == 1 else ("replica", *SERVER_COLUMNS)
    lines = [",".join(cols)]
    for rep, counts in completed.items():
        for k, c in enumerate(counts):
            row = {"time": k + 1, "batch_id": k + 1, "batch_size": 1, "batch_tokens": 1, "batch_duration": 0.5,
                   "waiting_count": 0, "running_count": 1, "swapped_count": 0, "completed_count": c,
                   "gpu_memory_used": 10, "memory_utilization": 0.01, "replica": rep}
            lines.append(",".join(str(row[c]) for c in cols))
    return "\n".join(lines) + "\n"


def _sweep(root: Path, grid: dict, cells: list[dict], seeds: list[int]) -> Path:
    info = {"mode": "sweep", "name": "t", "grid": grid, "grid_keys": list(grid), "cells": cells, "seeds": seeds,
            "controllers": ["unpaced", "buffer"], "status": "complete"}
    _write(root / "run.json", json.dumps(info))
    return root


def _run(root: Path, cell: str, seed: int, replicas: int, traces: str, n: int, steps: str) -> None:
    d = root / "cells" / cell / f"seed-{seed}"
    _write(d / "run.json", json.dumps({"mode": "sim", "scenario": {"server": {"replicas": replicas}}}))
    _write(d / "unpaced" / "streams.csv", _streams(n))
    _write(d / "unpaced" / "request_traces.csv", traces)
    _write(d / "unpaced" / ("server.csv" if replicas == 1 else "replicas.csv"), steps)


@pytest.fixture
def scaling(tmp_path: Path) -> Path:
    root = _sweep(tmp_path / "gpu", {"server.replicas": [1, 2]},
                  [{"id": "replicas=1", "values": {"server.replicas": 1}},
                   {"id": "replicas=2", "values": {"server.replicas": 2}}], [1, 2])
    # one replica: seed 1 serves 4 requests from t=0 to t=10 (0.4 req/s), seed 2 to t=8 (0.5 req/s)
    _run(root, "replicas=1", 1, 1, _traces([(0, 10, 1, 10), (0, 9, 1, 9), (1, 8, 1, 7), (1, 5, 1, 4)]), 4,
         _steps({0: [0, 1, 2, 3, 4]}, 1))
    _run(root, "replicas=1", 2, 1, _traces([(0, 8, 1, 8), (0, 7, 1, 7), (1, 6, 1, 5), (2, 5, 1, 3)]), 4,
         _steps({0: [1, 2, 4]}, 1))
    # two replicas: spans 5 s and 4 s (0.8 and 1.0 req/s); replica 0 completed 3, replica 1 one, both seeds
    two = {0: [0, 1, 3], 1: [0, 1]}
    _run(root, "replicas=2", 1, 2, _traces([(0, 5, 0, 5), (0, 4, 0, 4), (0, 3, 0, 3), (0, 2, 0, 2)]), 4,
         _steps(two, 2))
    _run(root, "replicas=2", 2, 2, _traces([(1, 5, 0, 4), (1, 4, 0, 3), (2, 3, 0, 1), (3, 2, 0, 1)]), 4,
         _steps(two, 2))
    return root


def test_gpu_scaling_columns_and_values(scaling: Path):
    out = export(scaling, "gpu_scaling")
    assert out.text == (
        "parallelism,total_throughput,scale_factor,gpu_distribution,execution_time\n"
        "1,0.45,1.00,GPU0:4,9.0\n"  # (0.4 + 0.5) / 2; spans (10 + 8) / 2
        "2,0.90,2.00,GPU0:3;GPU1:1,4.5\n"  # (0.8 + 1.0) / 2 = 2 x 0.45; spans (5 + 4) / 2
    )
    assert out.text.splitlines()[0].split(",") == list(GPU_SCALING_COLUMNS)
    thr = out.intervals[1]["total_throughput"]
    # Student t, 2 seeds: 0.9 +- t(0.975, 1) x sd(0.8, 1.0) / sqrt(2) = 12.706 x 0.1414 / 1.414
    assert thr["mean"] == pytest.approx(0.9) and thr["half_width"] == pytest.approx(12.7062 * 0.1, rel=1e-4)


def test_cli_writes_the_csv_into_the_sweep_folder(scaling: Path, capsys):
    assert main(["sweep-export", str(scaling), "--format", "gpu_scaling"]) == 0
    assert (scaling / "gpu_scaling.csv").read_text().splitlines()[2] == "2,0.90,2.00,GPU0:3;GPU1:1,4.5"
    assert "gpu_scaling.csv" in capsys.readouterr().out


def test_batch_analysis_columns_and_values(tmp_path: Path):
    grid = {"server.max_running": [2, 8], "server.router": ["round_robin", "least_outstanding"]}
    cells = [{"id": f"m={m},r={r}", "values": {"server.max_running": m, "server.router": r}}
             for m in (8, 2) for r in ("round_robin", "least_outstanding")]
    root = _sweep(tmp_path / "batch", grid, cells, [1])
    # limit 2: five requests, waits 0..4 s (mean 2 s); four complete by t=5 (0.8 req/s) after 2..5 s
    # (mean 3.5 s); the fifth started but never finished (its wait counts, its latency cannot)
    _run(root, "m=2,r=round_robin", 1, 1, _traces([(0, 2, 0, 2), (0, 3, 1, 3), (0, 4, 2, 4), (0, 5, 3, 5),
                                                  (0, None, 4, None)]), 5, _steps({0: [4]}, 1))
    # limit 8: four requests, no wait, each 3 s: 4 / 3 req/s
    _run(root, "m=8,r=round_robin", 1, 1, _traces([(0, 3, 0, 3)] * 4), 4, _steps({0: [4]}, 1))
    out = export(root, "batch_analysis", where={"server.router": "round_robin"})
    assert out.text == (
        "batch_size,avg_wait_ms,avg_latency_ms,throughput_req_per_sec,total_requests,efficiency_notes\n"
        "2,2000.0,3500.0,0.80,5,baseline\n"
        "8,0.0,3000.0,1.33,4,throughput x1.67; latency x0.86; wait -2000 ms vs batch_size 2\n"
    )
    assert out.text.splitlines()[0].split(",") == list(BATCH_ANALYSIS_COLUMNS)
    figs = run_figures(root / "cells" / "m=2,r=round_robin" / "seed-1" / "unpaced", 1)
    assert (figs.requests, figs.completed, figs.execution_time_s, figs.per_replica_completed) == (5, 4, 5.0, (4,))


def test_bad_input_is_named(tmp_path: Path, scaling: Path, capsys):
    grid = {"server.max_running": [2, 8], "server.router": ["round_robin", "least_outstanding"]}
    root = _sweep(tmp_path / "b", grid, [], [1])
    assert main(["sweep-export", str(root), "--format", "batch_analysis"]) == 2
    assert "pin it with --where server.router=VALUE" in capsys.readouterr().err
    assert main(["sweep-export", str(root), "--format", "batch_analysis", "--where", "server.router=x"]) == 2
    assert "not one of its values" in capsys.readouterr().err
    assert main(["sweep-export", str(scaling), "--format", "gpu_scaling", "--controller", "pid"]) == 2
    assert "no controller 'pid'" in capsys.readouterr().err
    _write(tmp_path / "plain" / "run.json", json.dumps({"mode": "sim"}))
    assert main(["sweep-export", str(tmp_path / "plain"), "--format", "gpu_scaling"]) == 2
    assert "not a sweep folder" in capsys.readouterr().err
