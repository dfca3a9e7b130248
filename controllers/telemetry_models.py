"""The telemetry models controllers and the dashboard use: an anomaly detector and an RTT forecaster.

* :class:`AnomalyDetector` — a ``Pipeline(StandardScaler, IsolationForest)`` over
  :meth:`FeatureState.anomaly_vector <controllers.features.FeatureState.anomaly_vector>`. ``score``
  follows scikit-learn's ``decision_function``: negative means anomalous (the training data's
  ``contamination`` fraction scored below 0).
* :class:`RttForecaster` — a ``HistGradientBoostingRegressor`` predicting the next interval's p95 RTT
  (its trees give the log change over the current p95, :data:`~controllers.features.FORECAST_TARGET`) from
  :meth:`FeatureState.forecast_vector <controllers.features.FeatureState.forecast_vector>`.

Both are trained by ``python -m analysis train`` (:mod:`analysis.train`) and stored as skops files
(:mod:`controllers.modelio`); ``load()`` with no path gives the bundled defaults in
``controllers/models/`` (``scripts/train_default_models.py`` makes them).

**Why the trees are compiled.** Controllers ask once per stream per control interval; a simulated run
makes about 250 000 such calls. scikit-learn's per-row ``decision_function`` / ``predict`` cost
milliseconds (input validation, joblib and OpenMP dispatch, a Python loop over 200 trees). At load
time the fitted trees are copied into padded arrays, one pair (feature, threshold) per level:
level ``L`` holds ``n_trees x 2**L`` slots, the children of slot ``s`` are slots ``2s`` and ``2s+1``
of level ``L+1``, and a leaf above the last level is padded with ``threshold = +inf`` splits that
always go left, so every tree ends at the last level. A sample walks all trees at once: the first
four levels in one block (every test of those 15 nodes per tree at once, the bit pattern looked up
in a table, :meth:`CompiledForest._build_top`), then six numpy operations per level
(``g = 2g + (x[feature[g]] > threshold[g])``), and the leaf values are summed.

The arithmetic is sklearn's, so the result equals ``decision_function`` / ``predict`` (the tests
hold it to 1e-9). Isolation Forest: each tree's features go through ``estimators_features_``; its
thresholds are moved to the unscaled input so that they split exactly where sklearn splits the
scaled vector rounded to float32 (:func:`_raw_thresholds`); per tree ``depth + c(n_leaf_samples) - 1``
is added and the score is ``-2 ** (-sum / (n_trees c(max_samples))) - offset_``. Gradient boosting:
raw values are compared with each node's ``num_threshold`` (no binning at predict time) and the leaf
values are added to the baseline prediction. Vectors must be finite (a FeatureState's are).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from controllers.features import ANOMALY_FEATURES, FORECAST_FEATURES, FORECAST_TARGET, FeatureState, series_features
from controllers.modelio import LoadedModel, ModelFileError, load_model

__all__ = [
    "DEFAULT_ANOMALY_PATH",
    "DEFAULT_FORECAST_PATH",
    "MODELS_DIR",
    "AnomalyDetector",
    "CompiledForest",
    "RttForecaster",
    "compile_hist_gbdt",
    "compile_isolation_forest",
]

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_ANOMALY_PATH = MODELS_DIR / "anomaly.skops"
DEFAULT_FORECAST_PATH = MODELS_DIR / "rtt_forecast.skops"
ANOMALY_KIND = "anomaly"
FORECAST_KIND = "rtt_forecast"
_BATCH_ROWS = 2048  # rows per block in the many-row paths (memory: rows x trees per level)
_TOP_LEVELS = 4  # levels evaluated as one block (a table of 2**15 entries)


class CompiledForest:
    """Trees as padded per-level arrays; :meth:`leaf_sum` adds each tree's leaf value for one sample.

    ``trees`` are ``(left, right, feature, threshold, value)`` node arrays in sklearn's layout (a
    leaf has ``left == -1``); ``feature`` is already the column of the input vector.
    """

    __slots__ = (
        "_roots",
        "_top_base",
        "_top_feat",
        "_top_levels",
        "_top_table",
        "_top_thr",
        "_top_weights",
        "depth",
        "feats",
        "n_features",
        "n_trees",
        "thrs",
        "values",
    )

    def __init__(self, trees: Sequence[tuple[np.ndarray, ...]], n_features: int) -> None:
        self.n_trees = len(trees)
        self.n_features = n_features
        self._roots = np.arange(self.n_trees)
        depth = 0
        for left, right, *_ in trees:
            depth = max(depth, _tree_depth(left, right))
        self.depth = depth
        self.feats = [np.zeros(self.n_trees << lvl, dtype=np.intp) for lvl in range(depth)]
        self.thrs = [np.full(self.n_trees << lvl, np.inf) for lvl in range(depth)]
        self.values = np.zeros(self.n_trees << depth)
        for t, (left, right, feature, threshold, value) in enumerate(trees):
            stack = [(0, 0, 0)]  # (node, level, slot within the tree's part of the level)
            while stack:
                node, lvl, slot = stack.pop()
                if lvl == depth:
                    self.values[(t << depth) + slot] = value[node]
                    continue
                g = (t << lvl) + slot
                if left[node] < 0:  # a leaf above the last level: +inf threshold, always left
                    stack.append((node, lvl + 1, 2 * slot))
                else:
                    self.feats[lvl][g] = feature[node]
                    self.thrs[lvl][g] = threshold[node]
                    stack.append((int(left[node]), lvl + 1, 2 * slot))
                    stack.append((int(right[node]), lvl + 1, 2 * slot + 1))
        self._check()
        self._build_top()

    def _build_top(self) -> None:
        """The first ``TOP_LEVELS`` levels as one block: every node's test at once, then a table.

        Per tree the top ``k`` levels hold ``2**k - 1`` nodes (heap order: level ``l`` slot ``s`` is
        node ``2**l - 1 + s``). All ``n_trees * (2**k - 1)`` comparisons cost two numpy calls; packed
        into one integer per tree (bit ``j`` = node ``j`` goes right, a dot product with powers of two)
        they index a table, shared by all trees, of the slot each bit pattern reaches at level ``k``.
        Five numpy calls replace the ``6 k`` of walking the levels one by one (packbits is slower).
        """
        k = min(self.depth, _TOP_LEVELS)
        n = self.n_trees
        self._top_levels = k
        if k:
            self._top_feat = np.hstack([self.feats[lvl].reshape(n, 1 << lvl) for lvl in range(k)]).ravel()
            self._top_thr = np.hstack([self.thrs[lvl].reshape(n, 1 << lvl) for lvl in range(k)]).ravel()
        else:  # every tree is a single leaf
            self._top_feat, self._top_thr = np.zeros(0, dtype=np.intp), np.zeros(0)
        nodes = (1 << k) - 1
        codes = np.arange(1 << nodes)
        node = np.zeros(len(codes), dtype=np.int64)
        for _ in range(k):
            node = 2 * node + 1 + ((codes >> node) & 1)
        self._top_table = (node - nodes).astype(np.intp)
        self._top_weights = np.left_shift(1, np.arange(nodes), dtype=np.int64)  # bit j <- node j
        self._top_base = np.arange(n) << k

    def _check(self) -> None:
        for f in self.feats:
            if len(f) and (f.min() < 0 or f.max() >= self.n_features):
                raise ValueError("a split on a feature outside the input vector")

    def leaf_sum(self, x: np.ndarray) -> float:
        """Sum over trees of the leaf value ``x`` falls in (``x``: float64 vector)."""
        k = self._top_levels
        if k:
            go = (x[self._top_feat] > self._top_thr).reshape(self.n_trees, -1)
            g = self._top_base + self._top_table[go.dot(self._top_weights)]
        else:
            g = self._roots
        for feat, thr in zip(self.feats[k:], self.thrs[k:], strict=True):
            go = x[feat[g]] > thr[g]
            g = g + g
            g += go  # in place: one temporary fewer per level
        return float(self.values[g].sum())

    def leaf_sums(self, X: np.ndarray) -> np.ndarray:
        """:meth:`leaf_sum` for every row of ``X`` (float64, [n, n_features])."""
        n = len(X)
        out = np.empty(n)
        nf = self.n_features
        for lo in range(0, n, _BATCH_ROWS):
            block = np.ascontiguousarray(X[lo : lo + _BATCH_ROWS], dtype=np.float64)
            flat = block.ravel()
            m = len(block)
            base = (np.arange(m) * nf)[:, None]
            g = np.broadcast_to(np.arange(self.n_trees), (m, self.n_trees)).copy()
            for feat, thr in zip(self.feats, self.thrs, strict=True):
                g = (g + g) + (flat[base + feat[g]] > thr[g])
            out[lo : lo + m] = self.values[g].sum(axis=1)
        return out


def _tree_depth(left: np.ndarray, right: np.ndarray) -> int:
    depth = 0
    stack = [(0, 0)]
    while stack:
        node, d = stack.pop()
        if left[node] < 0:
            depth = max(depth, d)
        else:
            stack.append((int(left[node]), d + 1))
            stack.append((int(right[node]), d + 1))
    return depth


def _avg_path_length(n: np.ndarray) -> np.ndarray:
    """sklearn.ensemble._iforest._average_path_length: c(n), the mean depth of an n-sample iTree."""
    from sklearn.ensemble._iforest import _average_path_length

    return np.asarray(_average_path_length(np.asarray(n, dtype=np.float64)), dtype=np.float64)


# ------------------------------------------------------------------ Isolation Forest
_SIGN = np.int64(-(2**63))  # the sign bit of a float64 seen as int64
_MAGNITUDE = np.int64(2**63 - 1)


def _order_key(d: np.ndarray) -> np.ndarray:
    """float64 -> int64 with the same order (-0.0 and 0.0 both 0; NaN excluded)."""
    bits = d.view(np.int64)
    return np.where(bits >= 0, bits, -(bits & _MAGNITUDE))


def _from_key(k: np.ndarray) -> np.ndarray:
    return np.where(k >= 0, k, (-k) | _SIGN).view(np.float64)


def _scaled32(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """What sklearn's trees compare: the StandardScaler output, rounded to float32."""
    with np.errstate(over="ignore", invalid="ignore"):
        return ((x - mean) / scale).astype(np.float32).astype(np.float64)


def _raw_thresholds(threshold: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Thresholds on the *unscaled* input that split exactly as sklearn does on the scaled one.

    ``g(x) = float32((x - mean) / scale)`` is non-decreasing in ``x`` (each IEEE operation rounds a
    monotone function), so ``g(x) > t`` holds exactly for ``x > T`` with ``T`` the largest double for
    which ``g(T) <= t``. ``T`` is found by bisection over the doubles in order (64 steps, all nodes at
    once), so the call path neither scales nor rounds: one comparison per node, bit-for-bit the same
    decision.
    """
    big = np.finfo(np.float64).max
    lo = np.full(threshold.shape, _order_key(np.array([-big]))[0])
    hi = np.full(threshold.shape, _order_key(np.array([big]))[0])
    all_right = _scaled32(_from_key(lo), mean, scale) > threshold  # even -max goes right
    none_right = _scaled32(_from_key(hi), mean, scale) <= threshold  # even +max goes left
    while True:
        open_ = hi > lo + 1
        if not open_.any():
            break
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # no overflow
        left = _scaled32(_from_key(mid), mean, scale) <= threshold
        lo = np.where(open_ & left, mid, lo)
        hi = np.where(open_ & ~left, mid, hi)
    out = _from_key(lo)
    out[all_right] = -np.inf
    out[none_right] = np.inf
    return out


class CompiledIsolationForest:
    """``Pipeline(StandardScaler, IsolationForest).decision_function`` for one vector, in numpy."""

    __slots__ = ("denominator", "forest", "mean", "n_features", "offset", "scale")

    def __init__(self, pipeline: Any) -> None:
        from sklearn.ensemble import IsolationForest
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
            raise ModelFileError(f"expected Pipeline(StandardScaler, IsolationForest), got {type(pipeline).__name__}")
        scaler, iforest = pipeline.steps[0][1], pipeline.steps[1][1]
        if not isinstance(scaler, StandardScaler) or not isinstance(iforest, IsolationForest):
            raise ModelFileError(
                f"expected Pipeline(StandardScaler, IsolationForest), got steps "
                f"{type(scaler).__name__}, {type(iforest).__name__}"
            )
        n_features = int(scaler.n_features_in_)
        self.n_features = n_features
        self.mean = np.asarray(scaler.mean_, dtype=np.float64) if scaler.with_mean else np.zeros(n_features)
        self.scale = np.asarray(scaler.scale_, dtype=np.float64) if scaler.with_std else np.ones(n_features)
        subsample = iforest._max_features != n_features  # as IsolationForest._compute_chunked_score_samples
        trees = []
        for i, (est, feats) in enumerate(zip(iforest.estimators_, iforest.estimators_features_, strict=True)):
            tree = est.tree_
            left, right = tree.children_left, tree.children_right
            column = np.asarray(feats)[np.maximum(tree.feature, 0)] if subsample else np.maximum(tree.feature, 0)
            if hasattr(iforest, "_decision_path_lengths"):
                depths = np.asarray(iforest._decision_path_lengths[i], dtype=np.float64)
                avg = np.asarray(iforest._average_path_length_per_tree[i], dtype=np.float64)
            else:  # pragma: no cover - older sklearn
                depths = tree.compute_node_depths().astype(np.float64)
                avg = _avg_path_length(tree.n_node_samples)
            value = depths + avg - 1.0  # sklearn: dpl[leaf] + apl[leaf] - 1.0
            trees.append((left, right, column, tree.threshold, value))
        # every tree's thresholds moved to the raw input in one bisection (see _raw_thresholds)
        thr = np.concatenate([t[3] for t in trees])
        col = np.concatenate([t[2] for t in trees])
        raw = np.split(
            _raw_thresholds(thr, self.mean[col], self.scale[col]), np.cumsum([len(t[3]) for t in trees])[:-1]
        )
        trees = [(left, right, column, r, value) for (left, right, column, _, value), r in zip(trees, raw, strict=True)]
        self.forest = CompiledForest(trees, n_features)
        c = float(_avg_path_length(np.array([iforest._max_samples]))[0])
        self.denominator = len(iforest.estimators_) * c
        self.offset = float(iforest.offset_)

    def decision(self, x: np.ndarray) -> float:
        depth = self.forest.leaf_sum(x)  # thresholds are on the raw vector (see _raw_thresholds)
        if self.denominator == 0:
            return -1.0 - self.offset
        return -(2.0 ** (-(depth / self.denominator))) - self.offset

    def decision_many(self, X: np.ndarray) -> np.ndarray:
        depth = self.forest.leaf_sums(np.asarray(X, dtype=np.float64))
        if self.denominator == 0:
            return np.full(len(depth), -1.0 - self.offset)
        return -(2.0 ** (-(depth / self.denominator))) - self.offset


def compile_isolation_forest(pipeline: Any) -> CompiledIsolationForest:
    return CompiledIsolationForest(pipeline)


# ------------------------------------------------------------------ gradient boosting
class CompiledGBDT:
    """``HistGradientBoostingRegressor.predict`` (identity link) for one vector, in numpy."""

    __slots__ = ("baseline", "forest", "n_features")

    def __init__(self, model: Any) -> None:
        from sklearn.ensemble import HistGradientBoostingRegressor

        if not isinstance(model, HistGradientBoostingRegressor):
            raise ModelFileError(f"expected a HistGradientBoostingRegressor, got {type(model).__name__}")
        if getattr(model, "_preprocessor", None) is not None:
            raise ModelFileError("a HistGradientBoostingRegressor with categorical preprocessing is not supported")
        if model.loss not in ("squared_error", "absolute_error"):
            raise ModelFileError(f"loss {model.loss!r}: only identity-link losses are supported")
        self.n_features = int(model.n_features_in_)
        self.baseline = float(np.asarray(model._baseline_prediction).ravel()[0])
        trees = []
        for predictors in model._predictors:
            if len(predictors) != 1:
                raise ModelFileError("expected one tree per iteration (a regressor)")
            nodes = predictors[0].nodes
            if nodes["is_categorical"].any():
                raise ModelFileError("categorical splits are not supported")
            leaf = nodes["is_leaf"].astype(bool)
            left = np.where(leaf, -1, nodes["left"].astype(np.int64))
            right = np.where(leaf, -1, nodes["right"].astype(np.int64))
            trees.append((left, right, nodes["feature_idx"].astype(np.intp), nodes["num_threshold"], nodes["value"]))
        self.forest = CompiledForest(trees, self.n_features)

    def predict(self, x: np.ndarray) -> float:
        return self.baseline + self.forest.leaf_sum(x)

    def predict_many(self, X: np.ndarray) -> np.ndarray:
        return self.baseline + self.forest.leaf_sums(np.asarray(X, dtype=np.float64))


def compile_hist_gbdt(model: Any) -> CompiledGBDT:
    return CompiledGBDT(model)


# ------------------------------------------------------------------ the public models
_CACHE: dict[tuple[str, str, int, int], Any] = {}


def _cached_load(cls: type, path: Path | str | None, default: Path, kind: str) -> Any:
    p = Path(default if path is None else path).resolve()
    try:
        st = p.stat()
    except OSError:
        hint = " (make it with `python scripts/train_default_models.py`)" if path is None else ""
        raise ModelFileError(f"{p}: model file not found{hint}") from None
    key = (cls.__name__, str(p), st.st_mtime_ns, st.st_size)
    obj = _CACHE.get(key)
    if obj is None:
        obj = cls(load_model(p, kind=kind))
        _CACHE[key] = obj
    return obj


def _check_features(loaded: LoadedModel, expected: tuple[str, ...]) -> None:
    names = tuple(loaded.meta.get("feature_names") or ())
    if names != expected:
        raise ModelFileError(f"{loaded.path}: trained on features {list(names)}, expected {list(expected)}")


def _finite_vector(vector: np.ndarray, n: int, what: str) -> np.ndarray:
    """``vector`` as float64, checked: ``n`` values, all finite (one dot product: cheaper than a reduction)."""
    x = np.asarray(vector, dtype=np.float64)
    if x.shape != (n,) or not math.isfinite(x.dot(x)):
        raise ValueError(f"expected a finite vector of {n} {what} features, got {x!r}")
    return x


class AnomalyDetector:
    """Isolation Forest over the anomaly features. ``score(v) < 0`` means anomalous.

    Immutable once built, so one instance can serve every stream; ``load()`` caches per file.
    """

    def __init__(self, loaded: LoadedModel) -> None:
        _check_features(loaded, ANOMALY_FEATURES)
        self.model = loaded.model
        self.meta = dict(loaded.meta)
        self.path = loaded.path
        self.feature_names = ANOMALY_FEATURES
        self._compiled = CompiledIsolationForest(loaded.model)

    @classmethod
    def from_pipeline(cls, pipeline: Any, meta: Mapping[str, Any] | None = None) -> AnomalyDetector:
        info = {"kind": ANOMALY_KIND, "feature_names": list(ANOMALY_FEATURES), **(meta or {})}
        return cls(LoadedModel(model=pipeline, meta=info))

    @classmethod
    def load(cls, path: Path | str | None = None) -> AnomalyDetector:
        """The model in ``path`` (default: the bundled ``controllers/models/anomaly.skops``)."""
        return _cached_load(cls, path, DEFAULT_ANOMALY_PATH, ANOMALY_KIND)

    def describe(self) -> str:
        f = self._compiled.forest
        return f"Isolation Forest, {f.n_trees} trees of depth <= {f.depth} over {f.n_features} features"

    def score(self, vector: np.ndarray) -> float:
        """sklearn's ``decision_function`` of one anomaly vector: negative = anomalous."""
        return self._compiled.decision(_finite_vector(vector, len(ANOMALY_FEATURES), "anomaly"))

    def score_many(self, X: np.ndarray) -> np.ndarray:
        """:meth:`score` of each row of ``X``."""
        X = np.asarray(X, dtype=np.float64).reshape(-1, len(ANOMALY_FEATURES))
        if not np.isfinite(X).all():
            raise ValueError("anomaly vectors must be finite")
        return self._compiled.decision_many(X)

    def is_anomalous(self, state: FeatureState) -> bool:
        """The stream's current interval scores below 0 (False while it has no vector)."""
        v = state.anomaly_vector()
        return v is not None and self._compiled.decision(v) < 0.0

    def flag_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[bool]:
        """telemetry.csv rows (t, stream_id, srtt_ms, rtt_min_ms, rtt_p95_ms, retrans, ...: numbers,
        strings or None) -> anomalous or not, in the rows' order; each stream is read in time order and
        rows before its first RTT are False."""
        flags = [False] * len(rows)
        if not rows:
            return flags
        feats = series_features(rows)
        if len(feats.X_anom):
            scores = self._compiled.decision_many(feats.X_anom)
            for i, s in zip(feats.meta["anom_row"].tolist(), scores.tolist(), strict=True):
                flags[i] = s < 0.0
        return flags


class RttForecaster:
    """Gradient-boosted forecast of a stream's next-interval p95 RTT."""

    def __init__(self, loaded: LoadedModel) -> None:
        _check_features(loaded, FORECAST_FEATURES)
        if loaded.meta.get("target") != FORECAST_TARGET:
            raise ModelFileError(
                f"{loaded.path}: forecasts {loaded.meta.get('target')!r}, expected {FORECAST_TARGET!r} (retrain)"
            )
        self.model = loaded.model
        self.meta = dict(loaded.meta)
        self.path = loaded.path
        self.feature_names = FORECAST_FEATURES
        self._compiled = CompiledGBDT(loaded.model)

    @classmethod
    def from_model(cls, model: Any, meta: Mapping[str, Any] | None = None) -> RttForecaster:
        info = {"kind": FORECAST_KIND, "feature_names": list(FORECAST_FEATURES), "target": FORECAST_TARGET}
        info.update(meta or {})
        return cls(LoadedModel(model=model, meta=info))

    @classmethod
    def load(cls, path: Path | str | None = None) -> RttForecaster:
        """The model in ``path`` (default: the bundled ``controllers/models/rtt_forecast.skops``)."""
        return _cached_load(cls, path, DEFAULT_FORECAST_PATH, FORECAST_KIND)

    def describe(self) -> str:
        f = self._compiled.forest
        return f"gradient boosting, {f.n_trees} trees of depth <= {f.depth} over {f.n_features} features"

    def predict_log(self, vector: np.ndarray) -> float:
        """log(next p95 / baseline) for one forecast vector: lag 0 plus the trees' predicted change."""
        x = _finite_vector(vector, len(FORECAST_FEATURES), "forecast")
        return float(x[0]) + self._compiled.predict(x)

    def predict_log_many(self, X: np.ndarray) -> np.ndarray:
        """:meth:`predict_log` of each row of ``X``."""
        X = np.asarray(X, dtype=np.float64).reshape(-1, len(FORECAST_FEATURES))
        if not np.isfinite(X).all():
            raise ValueError("forecast vectors must be finite")
        return X[:, 0] + self._compiled.predict_many(X)

    def predict_p95_ms(self, state: FeatureState) -> float | None:
        """The stream's next-interval p95 RTT in ms (None until the state has a forecast vector)."""
        v = state.forecast_vector()
        if v is None:
            return None
        return state.to_ms(float(v[0]) + self._compiled.predict(v))
