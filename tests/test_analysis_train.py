"""``python -m analysis train``: the anomaly detector finds injected spikes, the forecaster is scored
honestly on a time-ordered hold-out, every input layout works, bad input exits 2 with one line."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.cli import main
from analysis.results import TELEMETRY_COLUMNS
from analysis.train import TrainOptions, load_training_data, train
from controllers.features import series_features_from_columns
from controllers.telemetry_models import AnomalyDetector, RttForecaster

REPO = Path(__file__).resolve().parents[1]
NET_DATA_HEADER = (
    "timestamp",
    "avg_rtt_us",
    "p95_rtt_us",
    "min_rtt_us",
    "max_rtt_us",
    "retrans_count",
    "rtt_samples",
    "rolling_avg_rtt_us",
    "rolling_p95_rtt_us",
    "label",
)
FAST = TrainOptions(n_estimators=100, gbdt_max_iter=80)


def synthetic_telemetry(seed: int = 0, n_streams: int = 16, n_steps: int = 300) -> tuple[list[dict], set[int]]:
    """Rows of a telemetry.csv and the indices of the rows inside an injected spike.

    Each stream has its own base RTT (15-150 ms), a queue that fills and drains in a 3 s sawtooth
    (autocorrelated, so the next interval is predictable beyond persistence), 5% intervals without
    an RTT sample, and two 1.2 s spikes (RTT x7-20 and a retransmit burst) at random times.
    """
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    spikes: set[int] = set()
    for s in range(n_streams):
        base = float(rng.uniform(15, 150))
        start = float(rng.uniform(0, 5))
        onsets = rng.choice(np.arange(20, n_steps - 20, 20), size=2, replace=False)
        for k in range(n_steps):
            queue = 0.6 * (k % 30) / 30 + rng.normal(0, 0.02)
            in_spike = any(o <= k < o + 12 for o in onsets)
            p95 = base * math.exp(max(queue, 0.0) + (rng.uniform(2.0, 3.0) if in_spike else 0.0))
            sample = rng.random() > 0.05
            if in_spike:
                spikes.add(len(rows))
            rows.append(
                {
                    "t": round(start + 0.1 * (k + 1), 4),
                    "stream_id": f"s{s:04d}",
                    "srtt_ms": round(base * math.exp(max(queue, 0.0) * 0.8), 4),
                    "rtt_min_ms": round(base * (1 + abs(rng.normal(0, 0.01))), 4) if sample else None,
                    "rtt_p95_ms": round(p95, 4) if sample else None,
                    "retrans": int(rng.poisson(6)) if in_spike else 0,
                    "cwnd_pkts": 10,
                    "inflight_bytes": 2000,
                    "queued_bytes": 2000,
                    "acked_tokens": k,
                    "generated_tokens": k + 5,
                    "reading_tps": 8.0,
                    "client_buffer_est": 3.0,
                    "rate_tps": None,
                }
            )
    return rows, spikes


def write_csv(path: Path, rows: list[dict], columns: tuple[str, ...] = TELEMETRY_COLUMNS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r[c] for c in columns])
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], set[int], dict]:
    root = tmp_path_factory.mktemp("train")
    rows, spikes = synthetic_telemetry()
    path = write_csv(root / "telemetry.csv", rows)
    result = train(path, None, FAST, progress=False)
    assert result.out_dir == root / "models"
    metrics = json.loads((root / "models" / "training_metrics.json").read_text())
    return path, rows, spikes, metrics


def test_detector_flags_spikes_far_more_than_clean_intervals(trained) -> None:
    path, rows, spikes, metrics = trained
    det = AnomalyDetector.load(path.parent / "models" / "anomaly.skops")
    flags = np.array(det.flag_rows(rows))
    in_spike = np.zeros(len(rows), dtype=bool)
    in_spike[list(spikes)] = True
    spike_rate, clean_rate = flags[in_spike].mean(), flags[~in_spike].mean()
    assert spike_rate > 0.8, (spike_rate, clean_rate)
    assert spike_rate > 5 * clean_rate, (spike_rate, clean_rate)
    # the reported rate is what the saved model does on the training vectors
    feats = series_features_from_columns(load_training_data(path).columns)
    scores = det.score_many(feats.X_anom)
    a = metrics["anomaly"]
    assert a["anomaly_rate"] == pytest.approx(float(np.mean(scores < 0)), abs=1.0 / len(scores))
    assert a["anomaly_rate"] == pytest.approx(0.15, abs=0.01)  # contamination sets the threshold
    assert a["n_vectors"] == len(feats.X_anom)
    q = a["score_quantiles"]
    assert sorted(q) == sorted(["p1", "p5", "p25", "p50", "p75", "p95", "p99"])
    assert q["p1"] <= q["p50"] <= q["p99"]
    assert q["p50"] == pytest.approx(float(np.percentile(scores, 50)), abs=1e-9)
    assert a["label_agreement"] is None  # telemetry.csv has no label column
    assert metrics["rows"] == len(rows) and metrics["streams"] == 16 and metrics["input_kind"] == "telemetry"


def test_forecast_metrics_are_recomputable_on_a_time_ordered_split(trained) -> None:
    path, _, _, metrics = trained
    f = metrics["forecast"]
    fc = RttForecaster.load(path.parent / "models" / "rtt_forecast.skops")
    feats = series_features_from_columns(load_training_data(path).columns)
    split = f["split_t"]
    test = feats.t >= split
    train_rows = feats.meta["fcst_target_t"] < split
    assert (test.sum(), train_rows.sum()) == (f["n_test"], f["n_train"])
    assert not np.any(test & train_rows)
    # no hold-out row is earlier than any training row, nor any training target
    assert feats.t[train_rows].max() < feats.t[test].min()
    assert feats.meta["fcst_target_t"][train_rows].max() < feats.t[test].min()
    assert f["n_test"] == pytest.approx(0.2 * len(feats.t), abs=16)  # ties at the cut go to the test side
    pred_ms = feats.meta["fcst_baseline_ms"][test] * np.exp(fc.predict_log_many(feats.X_fcst[test]))
    actual = feats.y_fcst_ms[test]
    mae_model = float(np.mean(np.abs(pred_ms - actual)))
    mae_persist = float(np.mean(np.abs(feats.persist_ms[test] - actual)))
    rmse_persist = float(np.sqrt(np.mean((feats.persist_ms[test] - actual) ** 2)))
    assert f["mae_ms"]["model"] == pytest.approx(mae_model, rel=1e-9)
    assert f["mae_ms"]["persistence"] == pytest.approx(mae_persist, rel=1e-12)
    assert f["rmse_ms"]["persistence"] == pytest.approx(rmse_persist, rel=1e-12)
    assert f["skill"] == pytest.approx(1 - mae_model / mae_persist, rel=1e-9)
    # the sawtooth queue is predictable beyond persistence: the model must find that
    assert f["skill"] > 0.1, f
    assert f["feature_names"] == list(fc.feature_names)


def test_outputs_are_written(trained) -> None:
    path, *_ = trained
    out = path.parent / "models"
    for name in ("anomaly.skops", "rtt_forecast.skops", "training_metrics.json", "model_result.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "model_result.png").read_bytes()[:4] == b"\x89PNG"


def test_net_data_csv_with_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    rows = []
    for i in range(700):
        fault = 200 <= i < 260 or 500 <= i < 540
        samples = 0 if rng.random() < 0.05 else int(rng.integers(5, 50))
        rtt = 20_000 * (1 + 0.05 * rng.random()) * (10 if fault else 1)
        has = samples > 0
        rows.append(
            {
                "timestamp": round(1_700_000_000 + 0.5 * i, 3),
                "avg_rtt_us": round(rtt * 0.9) if has else 0,
                "p95_rtt_us": round(rtt) if has else 0,
                "min_rtt_us": round(rtt * 0.8) if has else 0,
                "max_rtt_us": round(rtt * 1.1) if has else 0,
                "retrans_count": int(rng.poisson(5)) if fault else 0,
                "rtt_samples": samples,
                "rolling_avg_rtt_us": 0,
                "rolling_p95_rtt_us": 0,
                "label": int(fault),
            }
        )
    path = write_csv(tmp_path / "net_data.csv", rows, NET_DATA_HEADER)
    result = train(path, tmp_path / "m", TrainOptions(n_estimators=60, gbdt_max_iter=40), plots=False)
    m = result.metrics
    assert (m["input_kind"], m["streams"], m["rows"]) == ("net_data", 1, 700)
    data = load_training_data(path)
    assert np.nanmin(data.columns["rtt_p95_ms"]) == pytest.approx(20.0, rel=0.06)  # µs -> ms, 0 = no sample
    assert np.isnan(data.columns["rtt_p95_ms"][[r["rtt_samples"] == 0 for r in rows]]).all()
    la = m["anomaly"]["label_agreement"]
    det = AnomalyDetector.load(tmp_path / "m" / "anomaly.skops")
    feats = series_features_from_columns(data.columns)
    flags = det.score_many(feats.X_anom) < 0
    label = data.label[feats.meta["anom_row"]] > 0
    assert la["true_positives"] == int(np.sum(flags & label))
    assert la["false_positives"] == int(np.sum(flags & ~label))
    assert la["false_negatives"] == int(np.sum(~flags & label))
    assert la["precision"] == pytest.approx(la["true_positives"] / (la["true_positives"] + la["false_positives"]))
    assert la["recall"] > 0.5  # x10 RTT with retransmits is not subtle
    assert not (tmp_path / "m" / "model_result.png").exists()


def test_results_folder_input(tmp_path: Path) -> None:
    rows, _ = synthetic_telemetry(seed=1, n_streams=6, n_steps=200)
    for ctrl in ("unpaced", "buffer"):
        write_csv(tmp_path / "run" / ctrl / "telemetry.csv", rows)
    (tmp_path / "run" / "plots").mkdir()  # a folder without telemetry.csv is not a controller
    data = load_training_data(tmp_path / "run")
    assert data.kind == "results" and data.n_rows == 2 * len(rows) and data.n_streams == 12
    assert set(np.unique(data.columns["stream_id"])) >= {"buffer/s0000", "unpaced/s0000"}
    result = train(tmp_path / "run", None, TrainOptions(n_estimators=40, gbdt_max_iter=30), plots=False)
    assert result.out_dir == tmp_path / "run" / "models"
    assert result.metrics["streams"] == 12 and result.metrics["input_kind"] == "results"


def test_cli_train_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows, _ = synthetic_telemetry(seed=2, n_streams=8, n_steps=200)
    path = write_csv(tmp_path / "telemetry.csv", rows)
    rc = main(["train", str(path), "--out", str(tmp_path / "out"), "--estimators", "30", "--max-rows", "1200"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "skill" in out and "MAE" in out and "flagged" in out
    metrics = json.loads((tmp_path / "out" / "training_metrics.json").read_text())
    assert metrics["rows"] == 1200 and metrics["anomaly"]["n_estimators"] == 30
    assert (tmp_path / "out" / "model_result.png").is_file()


def _bad(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    rc = main(["train", *args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_bad_input_exits_2_naming_file_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows, _ = synthetic_telemetry(seed=3, n_streams=2, n_steps=100)
    err = _bad(tmp_path, capsys, str(tmp_path / "nope.csv"))
    assert "nope.csv" in err and "not found" in err

    no_p95 = write_csv(tmp_path / "no_p95.csv", rows, tuple(c for c in TELEMETRY_COLUMNS if c != "rtt_p95_ms"))
    err = _bad(tmp_path, capsys, str(no_p95))
    assert "no_p95.csv" in err and "rtt_p95_ms" in err

    text = write_csv(tmp_path / "text.csv", rows)
    lines = text.read_text().splitlines()
    cells = lines[5].split(",")
    cells[TELEMETRY_COLUMNS.index("srtt_ms")] = "fast"
    lines[5] = ",".join(cells)
    text.write_text("\n".join(lines) + "\n")
    err = _bad(tmp_path, capsys, str(text))
    assert "text.csv:6" in err and "srtt_ms" in err and "fast" in err

    net = write_csv(
        tmp_path / "net_data.csv", [{"timestamp": 1.0}], tuple(c for c in NET_DATA_HEADER if c != "p95_rtt_us")
    )
    err = _bad(tmp_path, capsys, str(net))
    assert "net_data.csv" in err and "p95_rtt_us" in err

    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    err = _bad(tmp_path, capsys, str(other))
    assert "other.csv" in err and "telemetry.csv" in err

    no_time = write_csv(tmp_path / "no_time.csv", [{**r, "t": None} if i == 3 else r for i, r in enumerate(rows)])
    err = _bad(tmp_path, capsys, str(no_time))
    assert "no_time.csv:5" in err and "'t'" in err

    short = write_csv(tmp_path / "short.csv", rows[:30])
    err = _bad(tmp_path, capsys, str(short))
    assert "short.csv" in err and "too few rows" in err

    err = _bad(tmp_path, capsys, str(short), "--holdout", "1.5")
    assert "--holdout" in err

    empty = tmp_path / "empty_run"
    empty.mkdir()
    err = _bad(tmp_path, capsys, str(empty))
    assert "telemetry.csv" in err


def test_analysis_does_not_import_sim_or_live() -> None:
    code = (
        "import sys, analysis.train, analysis.cli, controllers.telemetry_models; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('sim', 'live')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
