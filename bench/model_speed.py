"""What does one model call cost a controller? The compiled trees of controllers/telemetry_models.py
against scikit-learn's own per-row ``decision_function`` / ``predict``, on the bundled default models
(or the ones named), measured in one run.

A controller asks once per stream per control interval (0.1 s), so a simulated run makes ~250 000
calls; the target is <= 60 µs per call for each model. The vectors come from FeatureStates fed with
a synthetic RTT walk (calm stretches, queue build-ups, retransmit bursts). Rounds alternate compiled
and sklearn so drift on a shared machine hits both; each figure is the median over rounds (the best
round is printed too: the cost with the least contention from other processes).

Last lines: ``anomaly_us=<compiled> sklearn_us=<sklearn> speedup=<x>`` and the same for ``forecast``.

    python bench/model_speed.py [--anomaly PATH] [--forecast PATH] [--rounds 7]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controllers.features import FeatureState
from controllers.telemetry_models import AnomalyDetector, RttForecaster

TARGET_US = 60.0


def states(n: int, seed: int = 0) -> list[FeatureState]:
    """``n`` streams' states after a random walk each, every one with both vectors available."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        st = FeatureState()
        base = float(rng.uniform(10, 200))
        queue = 0.0
        for k in range(int(rng.integers(8, 40))):
            queue = max(0.0, queue + rng.normal(0, 0.3))
            retr = int(rng.poisson(3)) if rng.random() < 0.1 else 0
            p95 = None if rng.random() < 0.05 else base * math.exp(queue)
            st.update(0.1 * k, base * math.exp(0.7 * queue), p95, base * (1 + 0.01 * rng.random()), retr)
        out.append(st)
    return out


def per_call_us(fn, items: list, repeat: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        for it in items:
            fn(it)
    return (time.perf_counter() - t0) / (repeat * len(items)) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anomaly", type=Path, default=None, help="anomaly model (default: the bundled one)")
    ap.add_argument("--forecast", type=Path, default=None, help="forecast model (default: the bundled one)")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    det = AnomalyDetector.load(args.anomaly)
    fc = RttForecaster.load(args.forecast)
    sts = states(200)
    anom = [st.anomaly_vector() for st in sts]
    pipe, gbdt = det.model, fc.model

    def sk_score(v: np.ndarray) -> float:
        return float(pipe.decision_function(v.reshape(1, -1))[0])

    def sk_forecast(st: FeatureState) -> float:
        v = st.forecast_vector()
        return st.to_ms(float(v[0]) + float(gbdt.predict(v.reshape(1, -1))[0]))

    # same answers first (the tests hold this to 1e-9 on thousands of vectors)
    worst_a = max(abs(det.score(v) - sk_score(v)) for v in anom[:20])
    worst_f = max(abs(fc.predict_p95_ms(st) - sk_forecast(st)) / sk_forecast(st) for st in sts[:20])
    few = sts[:10]
    rows: dict[str, list[float]] = {k: [] for k in ("a_fast", "a_sk", "f_fast", "f_sk", "feat")}
    for _ in range(args.rounds):
        rows["a_fast"].append(per_call_us(det.score, anom, 10))
        rows["a_sk"].append(per_call_us(sk_score, anom[: len(few)], 1))
        rows["f_fast"].append(per_call_us(fc.predict_p95_ms, sts, 10))
        rows["f_sk"].append(per_call_us(sk_forecast, few, 1))
        rows["feat"].append(per_call_us(lambda st: (st.update(9.9, 30.0, 31.0, 29.0, 0), st.anomaly_vector()), sts, 10))
    med = {k: statistics.median(v) for k, v in rows.items()}
    best = {k: min(v) for k, v in rows.items()}
    print(f"anomaly:  {det.describe()}; max |compiled - sklearn| on 20 vectors {worst_a:.1e}")
    print(f"forecast: {fc.describe()}; max relative difference on 20 states {worst_f:.1e}")
    print(f"FeatureState.update + anomaly_vector: {med['feat']:.1f} µs per interval")
    for name, fast, slow in (("anomaly", med["a_fast"], med["a_sk"]), ("forecast", med["f_fast"], med["f_sk"])):
        verdict = "meets" if fast <= TARGET_US else "misses"
        print(
            f"{name}: compiled {fast:.1f} µs/call (median of rounds; best round {best[name[0] + '_fast']:.1f}; "
            f"{verdict} the {TARGET_US:.0f} µs target), sklearn {slow:.0f} µs/call"
        )
    for name, fast, slow in (("anomaly", med["a_fast"], med["a_sk"]), ("forecast", med["f_fast"], med["f_sk"])):
        print(f"{name}_us={fast:.1f} sklearn_us={slow:.0f} speedup={slow / fast:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
