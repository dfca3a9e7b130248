"""``python -m analysis DIR``: a full synthetic run gets plots, a report and a table; bad input
exits 2 with one line naming the file, never a traceback."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.cli import main
from analysis.plots import pick_streams
from analysis.results import load_run, open_recorder, write_json

REPO = Path(__file__).resolve().parents[1]
BYTES_PER_TOKEN = 200


def _reader(arrival: float, received: np.ndarray, tps: float, patience: float) -> tuple[np.ndarray, str, float]:
    """The reader model: display times, outcome and end time for tokens received at ``received``."""
    shown = np.full(received.size, math.nan)
    due = arrival
    for i, t in enumerate(received):
        limit = due + patience
        if math.isnan(t) or t > limit:
            return shown, "abandoned", limit
        shown[i] = t if i == 0 else max(t, due)
        due = shown[i] + 1.0 / tps
    return shown, "completed", float(shown[-1])


def write_synthetic_run(root: Path, *, n_streams: int = 14, seed: int = 3) -> Path:
    """A small but complete results folder: two controllers, a capacity fault on path "lte".

    Unpaced streams push tokens as fast as they are generated and queue behind the fault;
    "fixed" paces at 1.2x the reading speed. Numbers are plausible, not a simulation.
    """
    fault = {"kind": "rate", "at_s": 4.0, "duration_s": 3.0, "path": "lte", "factor": 0.05}
    scenario = {
        "name": "synthetic-fault",
        "description": "Two paths; path lte loses 95% of its capacity from 4 s to 7 s.",
        "faults": [fault],
        "paths": {"wan": {}, "lte": {}},
        "slo": {"qoe": 0.9},
    }
    write_json(
        root / "run.json",
        {
            "mode": "sim",
            "scenario": scenario,
            "controllers": ["unpaced", "fixed"],
            "seed": seed,
            "versions": {"python": "3.11"},
            "git_rev": "abc1234",
            "slo_qoe": 0.9,
            "controller_info": {"fixed": {"label": "Fixed 1.2x", "color": "#555555"}},
        },
        sig_digits=None,
    )
    for ctrl in ("unpaced", "fixed"):
        rng = np.random.default_rng(seed)
        folder = root / ctrl
        streams = open_recorder(folder, "streams.csv")
        tokens = open_recorder(folder, "tokens.csv")
        telemetry = open_recorder(folder, "telemetry.csv")
        traces = open_recorder(folder, "request_traces.csv")
        events = open_recorder(folder, "events.csv")
        memory = open_recorder(folder, "memory_events.csv")
        busy_until = 0.0
        for k in range(n_streams):
            sid, path = f"s{k:04d}", ("lte" if k % 2 else "wan")
            arrival = 0.6 * k
            n = int(rng.integers(20, 60))
            tps = float(rng.uniform(8, 20))
            start = max(arrival, busy_until * 0.3) + 0.2 + 0.05 * rng.random()
            gen = start + np.arange(n) * 0.03 + np.where(np.arange(n) > n // 2, 0.4 * (k % 3 == 0), 0)
            sent = gen if ctrl == "unpaced" else np.maximum(gen, start + np.arange(n) / (1.2 * tps))
            one_way = 0.02 if path == "wan" else 0.04
            recv = np.empty(n)
            link_free = 0.0
            for i, t in enumerate(sent):
                slow = path == "lte" and 4.0 <= t < 7.0
                service = 0.25 if slow else 0.002
                link_free = max(link_free, t) + service
                recv[i] = link_free + one_way
            shown, outcome, end = _reader(arrival, recv, tps, patience=2.0)
            if k == n_streams - 1:
                outcome = "cancelled"
                cut = n // 2
                shown[cut:] = math.nan
                recv[cut:] = math.nan
                end = float(np.nanmax(shown))
            generated = gen if outcome != "abandoned" else gen[gen <= end + 0.5]
            for i in range(generated.size):
                tokens.write([sid, i, gen[i], sent[i], recv[i] + one_way, recv[i], shown[i]])
            displayed = int(np.count_nonzero(~np.isnan(shown)))
            streams.write(
                {
                    "stream_id": sid,
                    "path": path,
                    "arrival": arrival,
                    "prompt_tokens": int(rng.integers(100, 600)),
                    "output_tokens": n,
                    "ttft_s": float(np.nanmin(shown)) - arrival if displayed else None,
                    "stall_s": None,
                    "qoe": None,
                    "outcome": outcome,
                    "wasted_tokens": generated.size - displayed,
                    "reading_tps": tps,
                    "patience_s": 2.0,
                    "ttft_expected_s": 1.0,
                    "end_s": end,
                    "generated_tokens": generated.size,
                    "displayed_tokens": displayed,
                }
            )
            for t in np.arange(arrival, end, 0.1):
                g = int(np.count_nonzero(generated <= t))
                got = int(np.count_nonzero(recv <= t))
                bump = 250.0 if path == "lte" and 4.0 <= t < 7.0 else 0.0
                telemetry.write(
                    {
                        "t": t,
                        "stream_id": sid,
                        "srtt_ms": 2e3 * one_way + bump + 3 * rng.random(),
                        "rtt_min_ms": 2e3 * one_way,
                        "rtt_p95_ms": 2e3 * one_way + 1.3 * bump + 8,
                        "retrans": 0,
                        "cwnd_pkts": 10,
                        "inflight_bytes": (g - got) * BYTES_PER_TOKEN,
                        "queued_bytes": (g - got) * BYTES_PER_TOKEN,
                        "acked_tokens": got,
                        "generated_tokens": g,
                        "reading_tps": tps,
                        "client_buffer_est": got - int(np.count_nonzero(shown <= t)),
                        "rate_tps": None if ctrl == "unpaced" else 1.2 * tps,
                    }
                )
            swaps = int(k % 4 == 1)
            finish = float(generated[-1])
            traces.write(
                {
                    "req_id": sid,
                    "arrival_time": arrival,
                    "prefill_length": 300,
                    "decode_length": n,
                    "completion_time": finish if outcome == "completed" else None,
                    "first_enter_running_time": start,
                    "waiting_time": start - arrival,
                    "execution_time": finish - start,
                    "swap_count": swaps,
                    "total_delay": finish - arrival,
                }
            )
            events.write({"time": arrival, "event_type": "arrive", "req_id": sid, "details": ""})
            events.write({"time": start, "event_type": "admit", "req_id": sid, "details": ""})
            if swaps:
                mid = (start + finish) / 2
                events.write({"time": mid, "event_type": "swap_out", "req_id": sid, "details": "kv full"})
                events.write({"time": mid + 0.3, "event_type": "swap_in", "req_id": sid, "details": ""})
                memory.write(
                    {
                        "time": mid,
                        "event_type": "swap_out",
                        "req_id": sid,
                        "memory_before": 0.9,
                        "memory_after": 0.7,
                        "reason": "kv full",
                    }
                )
            kind = "complete" if outcome == "completed" else "cancel"
            events.write({"time": finish, "event_type": kind, "req_id": sid, "details": outcome})
            busy_until = max(busy_until, finish)
        for rec in (streams, tokens, telemetry, traces, events, memory):
            rec.close()
        with open_recorder(folder, "server.csv") as server:
            done = 0
            for b, t in enumerate(np.arange(0.0, busy_until, 0.05)):
                running = int(rng.integers(1, 8))
                done += int(rng.random() < 0.1)
                server.write(
                    [
                        t,
                        f"b{b}",
                        running,
                        running * 4,
                        0.02 + 0.01 * rng.random(),
                        int(rng.integers(0, 4)),
                        running,
                        int(b % 40 < 3),
                        done,
                        20 + running,
                        0.3 + 0.05 * running,
                    ]
                )
        with open_recorder(folder, "links.csv") as links:
            for t in np.arange(0.0, busy_until, 0.1):
                links.write([t, "wan", 20e6, 0])
                slow = 4.0 <= t < 7.0
                links.write([t, "lte", 0.5e6 if slow else 10e6, 60000 if slow else 2000])
    return root


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "analysis", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_run(tmp_path_factory.mktemp("cli") / "run")


def test_cli_writes_plots_report_and_table(synthetic: Path):
    result = run_cli(str(synthetic))
    assert result.returncode == 0, result.stderr
    plots = synthetic / "plots"
    expected = {"comparison.png", "cdf_qoe.png", "cdf_stall.png"} | {
        f"{kind}_{c}.png" for kind in ("timeline", "system_dynamics", "request_timeline") for c in ("unpaced", "fixed")
    }
    assert expected <= {p.name for p in plots.iterdir()}
    for name in expected:
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (synthetic / "report.html").read_text()
    assert 'src="plots/comparison.png"' in report and 'src="plots/timeline_fixed.png"' in report
    assert "synthetic-fault" in report and "Fixed 1.2x" in report and "<script" not in report
    assert f"report: {synthetic / 'report.html'}" in result.stdout
    assert "Fixed 1.2x" in result.stdout and "unpaced" in result.stdout
    assert (synthetic / "summary.json").is_file()


def test_report_subcommand_without_plots(tmp_path: Path):
    run = write_synthetic_run(tmp_path / "run", n_streams=4)
    assert main(["report", str(run), "--no-plots"]) == 0
    assert not (run / "plots").exists()
    assert "--no-plots" in (run / "report.html").read_text()


def test_timeline_picks_the_faulted_path(synthetic: Path):
    run = load_run(synthetic)
    picks = pick_streams(run, run.controllers["unpaced"])
    assert picks[0].reason.startswith("worst during a fault on lte")
    assert len({p.row for p in picks}) == len(picks) <= 4


def test_missing_streams_csv_exits_2_naming_the_file(tmp_path: Path):
    run = write_synthetic_run(tmp_path / "run", n_streams=3)
    (run / "fixed" / "streams.csv").unlink()
    result = run_cli(str(run))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(run / "fixed" / "streams.csv") in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_malformed_cell_names_file_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    run = write_synthetic_run(tmp_path / "run", n_streams=3)
    path = run / "unpaced" / "tokens.csv"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace(",", ",oops", 2).replace(",oops", ",", 1)  # idx column ok, t_generated bad
    path.write_text("\n".join(lines) + "\n")
    assert main([str(run), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4: column 't_generated'" in err and "Traceback" not in err


@pytest.mark.parametrize("target", ["missing-folder", "run.json"])
def test_missing_folder_or_run_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str):
    run = write_synthetic_run(tmp_path / "run", n_streams=2)
    if target == "run.json":
        (run / "run.json").unlink()
        arg, named = run, run / "run.json"
    else:
        arg = named = tmp_path / "nowhere"
    assert main([str(arg)]) == 2
    assert str(named) in capsys.readouterr().err


def test_help_mentions_the_default_form():
    result = run_cli("--help")
    assert result.returncode == 0 and "python -m analysis DIR" in result.stdout
    assert run_cli("report", "--help").returncode == 0
