"""``python -m analysis train INPUT``: fit the telemetry models and say honestly how good they are.

Two models, both over the scale-free features of :mod:`controllers.features` (the same code the
controllers run online, so training and serving cannot drift apart):

* **anomaly** — ``Pipeline(StandardScaler, IsolationForest(contamination, n_estimators, max_samples))``
  fitted on every interval's anomaly vector (unsupervised: no hold-out). By construction about
  ``contamination`` of the training intervals score below 0; what the metrics add is the score
  distribution and, when the input has a ``label`` column (net_data.csv: 1 while a fault was
  injected), how well the flags agree with it.
* **rtt_forecast** — ``HistGradientBoostingRegressor`` (absolute-error loss) predicting the next
  interval's p95 RTT as a change over the current one (see :data:`controllers.features.FORECAST_TARGET`). It is
  scored on a time-ordered hold-out: the rows are sorted by time, the last ``holdout`` fraction is
  the test set, and a training row must have its target measured before the first test row (so no
  test interval is ever seen in training; nothing is shuffled). The yardstick is persistence (next
  p95 = this p95): MAE and RMSE in ms for both, and skill = 1 - MAE_model / MAE_persistence
  (> 0: the model beats persistence). The saved model is the one that was scored.

Input, told apart by its header:

* seed 001's ``net_data.csv`` (timestamp, avg_rtt_us, p95_rtt_us, min_rtt_us, retrans_count, ...,
  label; RTTs in µs, 0 = no sample in that interval): one host-level series;
* a results ``telemetry.csv`` (t, stream_id, srtt_ms, rtt_min_ms, rtt_p95_ms, retrans, ...; empty
  cell = no sample): one series per stream;
* a results folder: every ``<controller>/telemetry.csv`` in it, streams named ``controller/stream``.

Output (``--out``, default ``models/`` beside a file, inside a folder): ``anomaly.skops``,
``rtt_forecast.skops`` (safe skops files, :mod:`controllers.modelio`), ``training_metrics.json`` and
``model_result.png``. Bad input raises :class:`~analysis.results.ResultsFormatError` (one line naming
the file and column); the command line turns it into exit code 2. scikit-learn, skops and the
``controllers`` package are imported when training starts, so building the command line stays light.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.results import ResultsFormatError, read_csv, write_json

if TYPE_CHECKING:
    from controllers.features import SeriesFeatures

__all__ = [
    "NET_DATA_COLUMNS",
    "TELEMETRY_USED",
    "TrainOptions",
    "TrainResult",
    "TrainingData",
    "default_out_dir",
    "format_metrics",
    "load_training_data",
    "train",
]

#: the telemetry.csv columns training reads (the other columns of the file are ignored).
TELEMETRY_USED: tuple[str, ...] = ("t", "stream_id", "srtt_ms", "rtt_min_ms", "rtt_p95_ms", "retrans")
#: the net_data.csv columns training reads (seed 001's names; µs).
NET_DATA_COLUMNS: tuple[str, ...] = ("timestamp", "avg_rtt_us", "p95_rtt_us", "min_rtt_us", "retrans_count")
ANOMALY_FILE, FORECAST_FILE, METRICS_FILE, PLOT_FILE = (
    "anomaly.skops",
    "rtt_forecast.skops",
    "training_metrics.json",
    "model_result.png",
)
MIN_ANOMALY_ROWS = 50  # intervals with an RTT needed to fit the Isolation Forest
MIN_FORECAST_TRAIN, MIN_FORECAST_TEST = 50, 10  # forecast rows on each side of the time split
PROGRESS_MIN_ROWS = 20_000  # show what is being done (on a terminal) from this many rows
QUANTILES = (1, 5, 25, 50, 75, 95, 99)
#: MAE is what the forecaster is judged by, and RTT changes are heavy-tailed (a fade multiplies p95
#: by 100): squared error chases the tail and loses to persistence; absolute error fits the median.
GBDT_LOSS = "absolute_error"


@dataclass(frozen=True)
class TrainOptions:
    contamination: float = 0.15
    n_estimators: int = 200
    max_samples: int = 256
    holdout: float = 0.2
    seed: int = 0
    max_rows: int | None = None
    gbdt_max_iter: int = 200
    gbdt_max_depth: int = 4
    gbdt_learning_rate: float = 0.1

    def check(self) -> None:
        """Raise ValueError naming the option when one is out of range."""
        if not 0.0 < self.contamination <= 0.5:
            raise ValueError(f"--contamination must be in (0, 0.5], got {self.contamination}")
        if self.n_estimators < 1:
            raise ValueError(f"--estimators must be at least 1, got {self.n_estimators}")
        if self.max_samples < 2:
            raise ValueError(f"--max-samples must be at least 2, got {self.max_samples}")
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"--holdout must be in (0, 1), got {self.holdout}")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"--max-rows must be at least 1, got {self.max_rows}")


@dataclass(frozen=True)
class TrainingData:
    """Telemetry in the shape :func:`controllers.features.series_features_from_columns` reads."""

    path: Path
    kind: str  # "net_data" | "telemetry" | "results"
    columns: Mapping[str, np.ndarray]  # TELEMETRY_USED, RTTs in ms, NaN = no sample
    label: np.ndarray | None = None  # 1 = fault active (net_data.csv), NaN = unknown
    files: tuple[Path, ...] = ()

    @property
    def n_rows(self) -> int:
        return len(self.columns["t"])

    @property
    def n_streams(self) -> int:
        return len(np.unique(self.columns["stream_id"])) if self.n_rows else 0


@dataclass(frozen=True)
class TrainResult:
    metrics: dict[str, Any]
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)


# ------------------------------------------------------------------ reading the input
def _header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            first = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ResultsFormatError(path, f"cannot read: {exc}") from None
    if not first:
        raise ResultsFormatError(path, "empty file (no header line)")
    return [h.strip() for h in first]


def _telemetry_columns(path: Path, prefix: str = "") -> dict[str, np.ndarray]:
    table = read_csv(path, TELEMETRY_USED)
    bad = np.flatnonzero(~np.isfinite(table["t"]))
    if len(bad):
        raise ResultsFormatError(path, "empty cell (every row needs a time)", column="t", line=int(bad[0]) + 2)
    cols = {c: table[c] for c in TELEMETRY_USED}
    if prefix:
        cols["stream_id"] = np.char.add(prefix, table["stream_id"].astype(str))
    return cols


def _net_data_columns(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    table = read_csv(path, NET_DATA_COLUMNS)
    if not np.isfinite(table["timestamp"]).all():
        line = int(np.flatnonzero(~np.isfinite(table["timestamp"]))[0]) + 2
        raise ResultsFormatError(path, "empty cell (every row needs a time)", column="timestamp", line=line)

    def ms(col: str) -> np.ndarray:
        v = table[col] / 1000.0
        v[~(v > 0)] = np.nan  # the seed writes 0 when the interval had no RTT sample
        return v

    srtt, p95, low = ms("avg_rtt_us"), ms("p95_rtt_us"), ms("min_rtt_us")
    if "rtt_samples" in table:
        none = table["rtt_samples"] == 0
        srtt[none] = p95[none] = low[none] = np.nan
    cols = {
        "t": table["timestamp"],
        "stream_id": np.full(len(table), "host"),
        "srtt_ms": srtt,
        "rtt_min_ms": low,
        "rtt_p95_ms": p95,
        "retrans": np.nan_to_num(table["retrans_count"], nan=0.0),
    }
    label = table.columns.get("label")
    return cols, label


def load_training_data(path: Path | str, max_rows: int | None = None) -> TrainingData:
    """Read a net_data.csv, a telemetry.csv or a results folder (see the module doc)."""
    path = Path(path)
    label = None
    if path.is_dir():
        files = tuple(sorted(path.glob("*/telemetry.csv")))
        if not files:
            raise ResultsFormatError(path / "*" / "telemetry.csv", "no controller folder with a telemetry.csv")
        parts = [_telemetry_columns(f, prefix=f.parent.name + "/") for f in files]
        cols = {c: np.concatenate([p[c] for p in parts]) for c in TELEMETRY_USED}
        kind = "results"
    elif path.is_file():
        header = _header(path)
        files = (path,)
        if "stream_id" in header or "rtt_p95_ms" in header:
            cols, kind = _telemetry_columns(path), "telemetry"
        elif {"p95_rtt_us", "avg_rtt_us", "timestamp"} & set(header):
            cols, label = _net_data_columns(path)
            kind = "net_data"
        else:
            raise ResultsFormatError(
                path,
                "neither a telemetry.csv header (t, stream_id, srtt_ms, rtt_min_ms, rtt_p95_ms, retrans) nor a "
                "net_data.csv one (timestamp, avg_rtt_us, p95_rtt_us, min_rtt_us, retrans_count); "
                f"has: {', '.join(header)}",
                column=TELEMETRY_USED[0] if "t" not in header else "stream_id",
            )
    else:
        raise ResultsFormatError(path, "file not found")
    if max_rows is not None:
        cols = {c: v[:max_rows] for c, v in cols.items()}
        label = label[:max_rows] if label is not None else None
    return TrainingData(path=path, kind=kind, columns=cols, label=label, files=files)


def default_out_dir(path: Path | str) -> Path:
    """``models/`` beside an input file, inside an input folder."""
    path = Path(path)
    return path / "models" if path.is_dir() else path.parent / "models"


# ------------------------------------------------------------------ training
@contextmanager
def _quiet_stage(_: str) -> Iterator[None]:
    yield


def _stages(show: bool) -> Callable[[str], Any]:
    """A context-manager factory naming what training is doing, on stderr when it is a terminal."""
    if not show:
        return _quiet_stage
    from rich.console import Console

    err = Console(stderr=True)
    if not err.is_terminal:
        return _quiet_stage

    @contextmanager
    def stage(text: str) -> Iterator[None]:
        t0 = time.perf_counter()
        with err.status(f"train: {text}"):
            yield
        err.print(f"train: {text} ({time.perf_counter() - t0:.1f} s)", highlight=False)

    return stage


def _time_split(feats: SeriesFeatures, holdout: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Train and test masks over the forecast rows, and the cut-off time (first test time)."""
    t = feats.t
    n = len(t)
    n_test = max(1, math.ceil(holdout * n))
    cutoff = float(np.sort(t, kind="stable")[n - n_test])
    test = t >= cutoff
    train = feats.meta["fcst_target_t"] < cutoff  # the target, too, precedes every test row
    return train, test, cutoff


def _errors(pred_ms: np.ndarray, actual_ms: np.ndarray) -> tuple[float, float]:
    err = pred_ms - actual_ms
    return float(np.mean(np.abs(err))), float(np.sqrt(np.mean(err * err)))


def _label_agreement(flags: np.ndarray, label: np.ndarray) -> dict[str, Any]:
    known = ~np.isnan(label)
    positive = label[known] > 0
    flagged = flags[known]
    tp = int(np.sum(flagged & positive))
    fp = int(np.sum(flagged & ~positive))
    fn = int(np.sum(~flagged & positive))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else None
    return {
        "rows_labelled": int(known.sum()),
        "rows_label_positive": int(positive.sum()),
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def train(
    path: Path | str,
    out_dir: Path | str | None = None,
    options: TrainOptions | None = None,
    *,
    plots: bool = True,
    progress: bool = True,
    source: str | None = None,
) -> TrainResult:
    """Fit both models on ``path`` and write them, the metrics and the plot into ``out_dir``.

    ``source`` is what the model files record as their training data (default: the input path).
    """
    from sklearn.ensemble import HistGradientBoostingRegressor, IsolationForest
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from controllers.features import (
        ANOMALY_FEATURES,
        FEATURE_VERSION,
        FORECAST_FEATURES,
        FORECAST_TARGET,
        series_features_from_columns,
    )
    from controllers.modelio import save_model

    opts = options or TrainOptions()
    opts.check()
    data = load_training_data(path, opts.max_rows)
    where = data.files[0] if len(data.files) == 1 else data.path
    stage = _stages(progress and data.n_rows >= PROGRESS_MIN_ROWS)
    with stage(f"features of {data.n_rows} rows"):
        feats = series_features_from_columns(data.columns)
    n_anom = len(feats.X_anom)
    if n_anom < MIN_ANOMALY_ROWS:
        raise ResultsFormatError(
            where, f"too few rows to train: {n_anom} intervals with an RTT, need at least {MIN_ANOMALY_ROWS}"
        )
    if len(feats.t) < MIN_FORECAST_TRAIN + MIN_FORECAST_TEST:
        train_mask = test_mask = np.zeros(len(feats.t), dtype=bool)
        cutoff = math.nan
    else:
        train_mask, test_mask, cutoff = _time_split(feats, opts.holdout)
    n_train, n_test = int(train_mask.sum()), int(test_mask.sum())
    if n_train < MIN_FORECAST_TRAIN or n_test < MIN_FORECAST_TEST:
        raise ResultsFormatError(
            where,
            f"too few rows to train: {len(feats.t)} forecast rows ({n_train} before the hold-out, {n_test} in it); "
            f"need {MIN_FORECAST_TRAIN} and {MIN_FORECAST_TEST} (each stream needs {len(FORECAST_FEATURES)} "
            "features' worth of history)",
        )

    # ---- anomaly detector
    max_samples = min(opts.max_samples, n_anom)
    pipeline = Pipeline(
        [
            ("scaler", StandardScaler()),
            (
                "iforest",
                IsolationForest(
                    n_estimators=opts.n_estimators,
                    max_samples=max_samples,
                    contamination=opts.contamination,
                    random_state=opts.seed,
                ),
            ),
        ]
    )
    with stage(f"Isolation Forest on {n_anom} intervals"):
        pipeline.fit(feats.X_anom)
        scores = pipeline.decision_function(feats.X_anom)
    flags = scores < 0.0
    anomaly: dict[str, Any] = {
        "model": ANOMALY_FILE,
        "feature_names": list(ANOMALY_FEATURES),
        "n_vectors": n_anom,
        "contamination": opts.contamination,
        "n_estimators": opts.n_estimators,
        "max_samples": max_samples,
        "anomaly_rate": float(flags.mean()),
        "score_quantiles": {f"p{q}": float(np.percentile(scores, q)) for q in QUANTILES},
        "label_agreement": None,
    }
    if data.label is not None:
        anomaly["label_agreement"] = _label_agreement(flags, data.label[feats.meta["anom_row"]])

    # ---- forecaster
    gbdt = HistGradientBoostingRegressor(
        loss=GBDT_LOSS,
        max_iter=opts.gbdt_max_iter,
        max_depth=opts.gbdt_max_depth,
        learning_rate=opts.gbdt_learning_rate,
        early_stopping=False,
        random_state=opts.seed,
    )
    with stage(f"gradient boosting on {n_train} intervals"):
        # the trees learn the change over persistence (see FORECAST_TARGET); lag 0 is added back
        lag0 = feats.X_fcst[:, 0]
        gbdt.fit(feats.X_fcst[train_mask], (feats.y_fcst_log - lag0)[train_mask])
        pred_log = lag0[test_mask] + gbdt.predict(feats.X_fcst[test_mask])
    base = feats.meta["fcst_baseline_ms"][test_mask]
    pred_ms = base * np.exp(pred_log)
    actual_ms = feats.y_fcst_ms[test_mask]
    persist_ms = feats.persist_ms[test_mask]
    mae_m, rmse_m = _errors(pred_ms, actual_ms)
    mae_p, rmse_p = _errors(persist_ms, actual_ms)
    forecast: dict[str, Any] = {
        "model": FORECAST_FILE,
        "feature_names": list(FORECAST_FEATURES),
        "target": FORECAST_TARGET,
        "n_rows": len(feats.t),
        "n_train": n_train,
        "n_test": n_test,
        "holdout": opts.holdout,
        "split_t": cutoff,
        "mae_ms": {"model": mae_m, "persistence": mae_p},
        "rmse_ms": {"model": rmse_m, "persistence": rmse_p},
        "skill": (1.0 - mae_m / mae_p) if mae_p > 0 else None,
        "params": {
            "max_iter": opts.gbdt_max_iter,
            "max_depth": opts.gbdt_max_depth,
            "learning_rate": opts.gbdt_learning_rate,
            "loss": GBDT_LOSS,
        },
    }

    metrics: dict[str, Any] = {
        "input": source or str(data.path),
        "input_kind": data.kind,
        "rows": data.n_rows,
        "streams": data.n_streams,
        "feature_version": FEATURE_VERSION,
        "seed": opts.seed,
        "anomaly": anomaly,
        "forecast": forecast,
    }
    out = Path(out_dir) if out_dir is not None else default_out_dir(path)
    out.mkdir(parents=True, exist_ok=True)
    trained_on = {"source": source or str(data.path), "input_kind": data.kind, "rows": data.n_rows}
    files = {
        "anomaly": save_model(
            pipeline,
            out / ANOMALY_FILE,
            {
                "kind": "anomaly",
                "feature_names": list(ANOMALY_FEATURES),
                "trained_on": trained_on,
                "anomaly_rate": anomaly["anomaly_rate"],
            },
        ),
        "forecast": save_model(
            gbdt,
            out / FORECAST_FILE,
            {
                "kind": "rtt_forecast",
                "feature_names": list(FORECAST_FEATURES),
                "target": FORECAST_TARGET,
                "trained_on": trained_on,
                "mae_ms": forecast["mae_ms"],
                "skill": forecast["skill"],
            },
        ),
    }
    files["metrics"] = write_json(out / METRICS_FILE, metrics)
    if plots:
        with stage("plot"):
            files["plot"] = _plot(
                out / PLOT_FILE,
                data,
                feats,
                scores,
                test_mask,
                pred_ms,
                metrics,
            )
    return TrainResult(metrics=metrics, out_dir=out, files=files)


# ------------------------------------------------------------------ the picture
_MAX_POINTS = 20_000


def _plot(
    path: Path,
    data: TrainingData,
    feats: SeriesFeatures,
    scores: np.ndarray,
    test_mask: np.ndarray,
    pred_ms: np.ndarray,
    metrics: Mapping[str, Any],
) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 11), layout="constrained")
    FigureCanvasAgg(fig)
    ax_rtt, ax_fc, ax_hist = fig.subplots(3, 1, height_ratios=(1.2, 1.0, 0.8))
    rows = feats.meta["anom_row"]
    t = data.columns["t"][rows]
    p95 = np.exp(feats.X_anom[:, 0])  # p95 / baseline (forward-filled)
    flags = scores < 0
    single = data.n_streams == 1
    rng = np.random.default_rng(0)

    def thin(mask: np.ndarray) -> np.ndarray:
        idx = np.flatnonzero(mask)
        return idx if len(idx) <= _MAX_POINTS else np.sort(rng.choice(idx, _MAX_POINTS, replace=False))

    ok, bad = thin(~flags), thin(flags)
    if single:
        ax_rtt.plot(t, p95, lw=0.8, color="#1f77b4", label="p95 RTT / baseline")
    else:
        ax_rtt.scatter(t[ok], p95[ok], s=2, color="#1f77b4", alpha=0.3, lw=0, label="p95 RTT / baseline")
    ax_rtt.scatter(t[bad], p95[bad], s=6, color="#d62728", lw=0, label="flagged anomalous (score < 0)")
    if data.label is not None:
        lab = data.label[rows] > 0
        ax_rtt.fill_between(t, 0, 1, where=lab, transform=ax_rtt.get_xaxis_transform(), color="0.85", label="label = 1")
    ax_rtt.set_yscale("log")
    ax_rtt.set_xlabel("time (s)")
    ax_rtt.set_ylabel("p95 RTT / stream baseline")
    a = metrics["anomaly"]
    ax_rtt.set_title(
        f"Isolation Forest: {a['anomaly_rate']:.1%} of {a['n_vectors']} intervals flagged "
        f"({data.n_streams} stream{'s' if data.n_streams != 1 else ''})"
    )
    ax_rtt.legend(loc="upper left", fontsize=8, markerscale=3)

    # forecast vs actual on the hold-out, for the stream whose p95 moved most there (>= 20 rows)
    f = metrics["forecast"]
    streams = feats.meta["fcst_stream"][test_mask]
    t_test = feats.t[test_mask]
    names, inverse, counts = np.unique(streams, return_inverse=True, return_counts=True)
    moved = np.bincount(inverse, np.abs(feats.y_fcst_ms[test_mask] - feats.persist_ms[test_mask]))
    moved[counts < min(20, counts.max())] = -1.0
    pick = names[int(np.argmax(moved))]
    sel = streams == pick
    order = np.argsort(t_test[sel], kind="stable")
    tt = t_test[sel][order]
    ax_fc.plot(tt, feats.y_fcst_ms[test_mask][sel][order], color="k", lw=1.0, label="actual next p95")
    ax_fc.plot(tt, feats.persist_ms[test_mask][sel][order], color="#7f7f7f", lw=0.8, ls="--", label="persistence")
    ax_fc.plot(tt, pred_ms[sel][order], color="#ff7f0e", lw=1.0, label="GBDT forecast")
    ax_fc.set_xlabel("time (s)")
    ax_fc.set_ylabel("p95 RTT (ms)")
    skill = f["skill"]
    ax_fc.set_title(
        f"next-interval p95 forecast on the hold-out (last {f['holdout']:.0%} of rows by time), stream {pick}\n"
        f"all {f['n_test']} hold-out rows: MAE model {f['mae_ms']['model']:.3g} ms, "
        f"persistence {f['mae_ms']['persistence']:.3g} ms" + (f", skill {skill:+.3f}" if skill is not None else ""),
        fontsize=10,
    )
    ax_fc.legend(loc="upper left", fontsize=8)

    ax_hist.hist(scores, bins=80, color="#1f77b4")
    ax_hist.axvline(0.0, color="#d62728", lw=1.0, label="threshold (0)")
    ax_hist.set_xlabel("anomaly score (decision_function; negative = anomalous)")
    ax_hist.set_ylabel("intervals")
    ax_hist.set_yscale("log")
    ax_hist.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    return path


# ------------------------------------------------------------------ the command line
def format_metrics(metrics: Mapping[str, Any]) -> Any:
    """A rich table of the headline numbers."""
    from rich.table import Table

    a, f = metrics["anomaly"], metrics["forecast"]
    table = Table(
        title=f"telemetry models: {metrics['rows']} rows, {metrics['streams']} streams",
        caption=f"input: {metrics['input']}",
    )
    table.add_column("model")
    table.add_column("metric")
    table.add_column("value", justify="right")
    q = a["score_quantiles"]
    table.add_row("anomaly", "intervals", str(a["n_vectors"]))
    table.add_row("", "flagged (score < 0)", f"{a['anomaly_rate']:.2%}")
    table.add_row("", "score p1 / p50 / p99", f"{q['p1']:+.3f} / {q['p50']:+.3f} / {q['p99']:+.3f}")
    la = a.get("label_agreement")
    if la:
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        table.add_row("", "label precision / recall", f"{fmt(la['precision'])} / {fmt(la['recall'])}")
    table.add_row("rtt_forecast", "train / hold-out rows", f"{f['n_train']} / {f['n_test']}")
    table.add_row("", "MAE ms model / persistence", f"{f['mae_ms']['model']:.3f} / {f['mae_ms']['persistence']:.3f}")
    table.add_row("", "RMSE ms model / persistence", f"{f['rmse_ms']['model']:.3f} / {f['rmse_ms']['persistence']:.3f}")
    table.add_row("", "skill (1 - MAE ratio)", "n/a" if f["skill"] is None else f"{f['skill']:+.3f}")
    return table


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, metavar="INPUT", help="net_data.csv, telemetry.csv, or a results folder")
    p.add_argument(
        "--out", type=Path, metavar="DIR", default=None, help="output folder (default: models/ beside INPUT)"
    )
    d = TrainOptions()
    p.add_argument("--contamination", type=float, default=d.contamination, help="expected anomaly fraction (0, 0.5]")
    p.add_argument("--estimators", type=int, default=d.n_estimators, help="Isolation Forest trees")
    p.add_argument("--max-samples", type=int, default=d.max_samples, help="samples per Isolation Forest tree")
    p.add_argument("--holdout", type=float, default=d.holdout, help="last fraction of time held out for the forecast")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed of both models")
    p.add_argument("--max-rows", type=int, default=None, metavar="N", help="use only the first N rows of the input")
    p.add_argument("--no-plots", action="store_true", help="skip model_result.png")


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    return TrainOptions(
        contamination=args.contamination,
        n_estimators=args.estimators,
        max_samples=args.max_samples,
        holdout=args.holdout,
        seed=args.seed,
        max_rows=args.max_rows,
    )
