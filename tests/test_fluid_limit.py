"""The fluid limit: the discrete simulator's averages approach the fluid engine's as the system grows.

steady-broadband with periodic arrivals (the Poisson sample path's own rate wanders by 1/sqrt(n),
which says nothing about the model) is scaled by k = 1, 4, 16 (``sim.fluid.scaling.scale``: arrivals,
streams, KV memory, max_running, batch budget and path capacities x k, d1 / k so a step lasts as long)
and run by both engines. At k = 16 (3,200 streams) throughput (tokens generated per second while the
arrivals last) and mean KV use agree within 5%, and the errors are smaller than at k = 1.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scenarios import find_scenario, load_scenario
from sim.fluid.scaling import compare

KEYS = ("throughput_tps", "ttft_mean_s", "kv_mean_tokens")


@pytest.mark.slow
def test_discrete_converges_to_fluid(tmp_path: Path) -> None:
    raw = yaml.safe_load(find_scenario("steady-broadband").read_text())
    raw["workload"]["arrivals"] = {"kind": "periodic", "rate_per_s": 2.0}
    path = tmp_path / "periodic.yaml"
    path.write_text(yaml.safe_dump(raw))
    base = load_scenario(str(path))
    err = {}
    for k in (1, 4, 16):
        r = compare(base, k)
        err[k] = {key: abs(r["fluid"][key] - r["discrete"][key]) / r["discrete"][key] for key in KEYS}
    assert err[16]["throughput_tps"] <= 0.05
    assert err[16]["kv_mean_tokens"] <= 0.05
    assert err[16]["throughput_tps"] < err[1]["throughput_tps"]
    assert err[16]["ttft_mean_s"] < err[4]["ttft_mean_s"] < err[1]["ttft_mean_s"]
    assert sum(err[16].values()) < sum(err[1].values())  # taken together, the error shrinks with k
