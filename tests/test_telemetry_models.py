"""The model layer: features (online == offline, scale-free), safe model files, and compiled trees that
equal scikit-learn's own predictions."""

from __future__ import annotations

import json
import math
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor, IsolationForest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from controllers.features import (
    ANOMALY_FEATURES,
    FEATURE_VERSION,
    FORECAST_FEATURES,
    LAGS,
    WINDOW,
    FeatureState,
    series_features,
)
from controllers.modelio import ModelFileError, UnsafeModelError, load_model, save_model
from controllers.telemetry_models import (
    DEFAULT_ANOMALY_PATH,
    DEFAULT_FORECAST_PATH,
    AnomalyDetector,
    RttForecaster,
    compile_hist_gbdt,
    compile_isolation_forest,
)


def synthetic_rows(seed: int = 0, n_streams: int = 6, n_steps: int = 150) -> list[dict[str, object]]:
    """telemetry.csv-like rows: per stream a base RTT, a sawtooth queue, missing samples, retransmit bursts."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    for s in range(n_streams):
        base = float(rng.uniform(10, 200))
        for k in range(n_steps):
            queue = 0.8 * ((k % 25) / 25.0) + rng.normal(0, 0.03)
            spike = 2.5 if 60 <= k < 75 and s % 2 == 0 else 0.0
            p95 = base * math.exp(max(queue, 0.0) + spike)
            no_sample = rng.random() < 0.08
            rows.append(
                {
                    "t": round(0.1 * (k + 1) + 0.01 * s, 6),
                    "stream_id": f"s{s:03d}",
                    "srtt_ms": "" if k < 2 else f"{p95 * 0.9:.4f}",  # a string, as csv.DictReader gives
                    "rtt_min_ms": None if no_sample else base * (1 + abs(rng.normal(0, 0.01))),
                    "rtt_p95_ms": None if no_sample else p95,
                    "retrans": int(rng.poisson(4)) if spike else 0,
                }
            )
    return rows


# ------------------------------------------------------------------ features
def test_feature_state_waits_for_rtt_then_forward_fills() -> None:
    st = FeatureState()
    st.update(0.1, None, None, None, 0)
    assert st.anomaly_vector() is None and st.forecast_vector() is None and st.baseline_ms is None
    st.update(0.2, 30.0, 40.0, 20.0, 0)
    v = st.anomaly_vector()
    assert v is not None
    assert v[0] == pytest.approx(math.log(2.0))  # p95 / baseline, baseline = rtt_min 20
    assert v[1] == pytest.approx(math.log(1.5))
    assert v[2] == 0.0 and v[3] == pytest.approx(0.0) and v[4] == 0.0
    st.update(0.5, None, None, None, 3)  # no sample: forward fill, age 300 ms = 15 baselines
    v = st.anomaly_vector()
    assert v[0] == pytest.approx(math.log(2.0))
    assert v[2] == pytest.approx(math.log1p(3))
    assert v[4] == pytest.approx(math.log1p(300.0 / 20.0))
    assert st.forecast_vector() is None  # 2 intervals with an RTT < LAGS
    for i in range(LAGS):
        st.update(0.6 + 0.1 * i, 30.0, 40.0 + i, 25.0, 0)
    f = st.forecast_vector()
    assert f is not None and f.shape == (len(FORECAST_FEATURES),)
    assert f[0] == pytest.approx(math.log((40.0 + LAGS - 1) / 20.0))  # lag 0
    assert f[1] == pytest.approx(math.log((40.0 + LAGS - 2) / 20.0))  # lag 1
    assert st.to_ms(f[0]) == pytest.approx(40.0 + LAGS - 1)


def test_feature_state_seed_zeros_are_missing() -> None:
    st = FeatureState()
    st.update(1.0, 0, 0, 0, 0)  # net_data.csv writes 0 for "no sample"
    assert st.anomaly_vector() is None
    st.update(2.0, "12.5", "", "nan", "")
    assert st.baseline_ms == 12.5
    assert st.anomaly_vector() is not None


def test_features_are_scale_free() -> None:
    a, b = FeatureState(), FeatureState()
    rng = np.random.default_rng(1)
    for k in range(3 * WINDOW):
        srtt, p95, low = (float(v) for v in rng.uniform(20, 60, 3))
        retr = int(rng.integers(0, 3))
        a.update(0.1 * k, srtt, p95, low, retr)
        b.update(0.1 * k, srtt * 10, p95 * 10, low * 10, retr)  # the same path, 10x longer
        np.testing.assert_allclose(a.anomaly_vector(), b.anomaly_vector(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.forecast_vector(), b.forecast_vector(), rtol=0, atol=1e-12)


def test_online_state_equals_offline_series_features() -> None:
    rows = synthetic_rows(seed=2, n_streams=4, n_steps=80)
    shuffled = list(rows)
    np.random.default_rng(0).shuffle(shuffled)  # the offline path must sort per stream by time
    feats = series_features(shuffled)
    online_anom: dict[int, np.ndarray] = {}
    online_fcst: dict[int, np.ndarray] = {}
    states: dict[str, FeatureState] = {}
    index = {id(r): i for i, r in enumerate(shuffled)}
    for r in rows:  # rows are already per stream in time order
        st = states.setdefault(str(r["stream_id"]), FeatureState())
        st.update(r["t"], r["srtt_ms"], r["rtt_p95_ms"], r["rtt_min_ms"], r["retrans"])
        if (v := st.anomaly_vector()) is not None:
            online_anom[index[id(r)]] = v
        if (f := st.forecast_vector()) is not None:
            online_fcst[index[id(r)]] = f
    assert sorted(online_anom) == sorted(feats.meta["anom_row"].tolist())
    for row, vec in zip(feats.meta["anom_row"].tolist(), feats.X_anom, strict=True):
        np.testing.assert_array_equal(vec, online_anom[row])
    # forecast rows are those whose next interval has a measured p95: a subset of the online vectors
    assert set(feats.meta["fcst_row"].tolist()) <= set(online_fcst)
    assert len(feats.meta["fcst_row"]) > 0.8 * len(online_fcst)  # ~8% of next intervals have no sample
    for row, vec in zip(feats.meta["fcst_row"].tolist(), feats.X_fcst, strict=True):
        np.testing.assert_array_equal(vec, online_fcst[row])
    # targets: the next interval's measured p95, relative to the baseline at the forecast row
    np.testing.assert_allclose(np.exp(feats.y_fcst_log) * feats.meta["fcst_baseline_ms"], feats.y_fcst_ms, rtol=1e-12)
    assert np.all(feats.meta["fcst_target_t"] > feats.t)


# ------------------------------------------------------------------ compiled trees == sklearn
def _vectors(seed: int) -> tuple[np.ndarray, np.ndarray]:
    feats = series_features(synthetic_rows(seed=seed, n_streams=8, n_steps=200))
    return feats.X_anom, feats.X_fcst


@pytest.mark.parametrize("max_features", [1.0, 0.6])
def test_compiled_isolation_forest_equals_sklearn(max_features: float) -> None:
    X_real, _ = _vectors(3)
    pipe = Pipeline(
        [
            ("scaler", StandardScaler()),
            ("iforest", IsolationForest(n_estimators=60, max_samples=128, max_features=max_features, random_state=4)),
        ]
    ).fit(X_real)
    rng = np.random.default_rng(5)
    X_rand = rng.normal(0, 1, (2000, len(ANOMALY_FEATURES))) * X_real.std(0) * 3 + X_real.mean(0)
    X = np.vstack([X_real[:1500], X_rand])
    ref = pipe.decision_function(X)
    compiled = compile_isolation_forest(pipe)
    np.testing.assert_allclose(compiled.decision_many(X), ref, rtol=0, atol=1e-9)
    one = np.array([compiled.decision(x) for x in X[::7]])
    np.testing.assert_allclose(one, ref[::7], rtol=0, atol=1e-9)
    assert compiled.forest.depth <= math.ceil(math.log2(128))


@pytest.mark.parametrize("loss", ["absolute_error", "squared_error"])
def test_compiled_gbdt_equals_sklearn(loss: str) -> None:
    _, X_real = _vectors(6)
    y = np.log(np.exp(X_real[:, 0]) * 1.1) + 0.05 * np.sin(np.arange(len(X_real)))
    model = HistGradientBoostingRegressor(loss=loss, max_iter=40, max_depth=4, early_stopping=False, random_state=0)
    model.fit(X_real, y)
    rng = np.random.default_rng(7)
    X_rand = rng.normal(0, 1, (2000, X_real.shape[1])) * (X_real.std(0) + 0.1) + X_real.mean(0)
    X = np.vstack([X_real, X_rand])
    ref = model.predict(X)
    compiled = compile_hist_gbdt(model)
    np.testing.assert_allclose(compiled.predict_many(X), ref, rtol=0, atol=1e-9)
    one = np.array([compiled.predict(x) for x in X[::7]])
    np.testing.assert_allclose(one, ref[::7], rtol=0, atol=1e-9)


def test_compiled_trees_of_one_leaf() -> None:
    X = np.ones((50, len(ANOMALY_FEATURES)))  # nothing to split: every tree is a single leaf
    pipe = Pipeline([("scaler", StandardScaler()), ("iforest", IsolationForest(n_estimators=5, random_state=0))])
    pipe.fit(X)
    compiled = compile_isolation_forest(pipe)
    assert compiled.forest.depth == 0
    probe = np.vstack([X[:3], np.zeros((1, len(ANOMALY_FEATURES)))])
    np.testing.assert_allclose(compiled.decision_many(probe), pipe.decision_function(probe), atol=1e-12)
    assert compiled.decision(probe[-1]) == pytest.approx(pipe.decision_function(probe[-1:])[0], abs=1e-12)


# ------------------------------------------------------------------ model files
def _small_detector(tmp_path: Path) -> tuple[Pipeline, Path]:
    X, _ = _vectors(8)
    pipe = Pipeline([("scaler", StandardScaler()), ("iforest", IsolationForest(n_estimators=30, random_state=0))])
    pipe.fit(X)
    path = save_model(pipe, tmp_path / "anomaly.skops", {"kind": "anomaly", "feature_names": list(ANOMALY_FEATURES)})
    return pipe, path


def test_detector_round_trip_and_flag_rows(tmp_path: Path) -> None:
    pipe, path = _small_detector(tmp_path)
    det = AnomalyDetector.load(path)
    assert det.meta["feature_version"] == FEATURE_VERSION and det.meta["kind"] == "anomaly"
    rows = synthetic_rows(seed=9, n_streams=3, n_steps=100)
    rows.insert(0, {"t": 0.0, "stream_id": "silent", "srtt_ms": None, "rtt_min_ms": "", "rtt_p95_ms": None})
    flags = det.flag_rows(rows)
    assert len(flags) == len(rows) and flags[0] is False
    feats = series_features(rows)
    expected = [False] * len(rows)
    for i, s in zip(feats.meta["anom_row"].tolist(), pipe.decision_function(feats.X_anom), strict=True):
        expected[i] = bool(s < 0)
    assert flags == expected
    assert any(flags) and not all(flags)
    st = FeatureState()
    st.update(0.1, 20.0, 20.0, 20.0, 0)
    assert det.score(st.anomaly_vector()) == pytest.approx(pipe.decision_function([st.anomaly_vector()])[0], abs=1e-9)
    assert AnomalyDetector.load(path) is det  # cached per file


def test_forecaster_predicts_ms_from_state(tmp_path: Path) -> None:
    _, X = _vectors(10)
    y = 0.1 * np.tanh(X[:, 1])
    model = HistGradientBoostingRegressor(max_iter=30, max_depth=3, early_stopping=False, random_state=0).fit(X, y)
    path = save_model(
        model,
        tmp_path / "f.skops",
        {"kind": "rtt_forecast", "feature_names": list(FORECAST_FEATURES), "target": "log(p95_next / p95_now)"},
    )
    fc = RttForecaster.load(path)
    st = FeatureState()
    assert fc.predict_p95_ms(st) is None
    for k in range(LAGS + 2):
        st.update(0.1 * k, 50.0 + k, 60.0 + 2 * k, 40.0, k % 2)
    v = st.forecast_vector()
    expected = 40.0 * math.exp(v[0] + model.predict([v])[0])
    assert fc.predict_p95_ms(st) == pytest.approx(expected, rel=1e-12)


def test_pickle_and_joblib_files_are_refused(tmp_path: Path) -> None:
    pipe, _ = _small_detector(tmp_path)
    pkl = tmp_path / "isolation_forest.pkl"
    pkl.write_bytes(pickle.dumps(pipe))
    with pytest.raises(UnsafeModelError) as err:
        AnomalyDetector.load(pkl)
    msg = str(err.value)
    assert "isolation_forest.pkl" in msg and "pickle" in msg and "python -m analysis train" in msg
    import joblib  # installed with scikit-learn (a core dependency)

    jl = tmp_path / "model.joblib"
    joblib.dump(pipe, jl, compress=3)
    with pytest.raises(UnsafeModelError, match=r"model\.joblib"):
        load_model(jl)
    notskops = tmp_path / "other.zip"
    with zipfile.ZipFile(notskops, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(UnsafeModelError, match="not a skops model file"):
        load_model(notskops)


class Evil:
    """Not on the allowlist (its type would have to be trusted to be rebuilt)."""

    def __init__(self) -> None:
        self.payload = "rm -rf"


def test_skops_file_with_disallowed_types_is_refused(tmp_path: Path) -> None:
    for name, obj, type_name in [
        ("evil.skops", Evil(), "Evil"),
        ("func.skops", FunctionTransformer(func=math.sqrt), "math.sqrt"),
    ]:
        path = save_model(obj, tmp_path / name, {"kind": "anomaly", "feature_names": list(ANOMALY_FEATURES)})
        with pytest.raises(UnsafeModelError) as err:
            load_model(path)
        assert type_name in str(err.value) and name in str(err.value)


def test_stale_or_foreign_skops_files_are_refused(tmp_path: Path) -> None:
    pipe, path = _small_detector(tmp_path)
    old = save_model(pipe, tmp_path / "old.skops", {"kind": "anomaly", "feature_version": "tokenpace-features-0"})
    with pytest.raises(ModelFileError, match="tokenpace-features-0"):
        load_model(old)
    import skops.io as sio

    bare = tmp_path / "bare.skops"
    sio.dump(pipe, bare)
    with pytest.raises(ModelFileError, match="not a tokenpace model"):
        load_model(bare)
    with pytest.raises(ModelFileError, match="expected 'rtt_forecast'"):
        RttForecaster.load(path)
    with pytest.raises(ModelFileError, match="not found"):
        AnomalyDetector.load(tmp_path / "missing.skops")
    with zipfile.ZipFile(path) as z:  # the metadata is inside the skops file itself
        schema = json.loads(z.read("schema.json"))
    assert "meta_json" in json.dumps(schema)


def test_bundled_default_models_load_and_agree_with_sklearn() -> None:
    assert DEFAULT_ANOMALY_PATH.is_file() and DEFAULT_FORECAST_PATH.is_file()
    det, fc = AnomalyDetector.load(), RttForecaster.load()
    assert det.feature_names == ANOMALY_FEATURES and fc.feature_names == FORECAST_FEATURES
    X_anom, X_fcst = _vectors(11)
    np.testing.assert_allclose(det.score_many(X_anom), det.model.decision_function(X_anom), rtol=0, atol=1e-9)
    np.testing.assert_allclose(fc.predict_log_many(X_fcst), X_fcst[:, 0] + fc.model.predict(X_fcst), atol=1e-9)
    calm = FeatureState()
    for k in range(20):
        calm.update(0.1 * k, 30.0, 30.5, 30.0, 0)
    assert det.score(calm.anomaly_vector()) > 0  # a clean path is not an anomaly
    jam = FeatureState()
    for k in range(20):
        jam.update(0.1 * k, 30.0, 30.5, 30.0, 0)
    jam.update(2.0, 900.0, 1500.0, 800.0, 12)  # RTT x50 and a retransmit burst
    assert det.score(jam.anomaly_vector()) < 0
