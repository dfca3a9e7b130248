"""server.replicas behind server.router: the routers' choices, N = 1 unchanged, N = 2 splitting the load."""

from __future__ import annotations

import copy
import csv
import math
import typing
from pathlib import Path

import numpy as np
import pytest

from analysis.results import REPLICAS_COLUMNS, load_controller_dir
from scenarios import ScenarioError, parse_scenario
from scenarios.loader import LoadedScenario
from scenarios.schema import ServerSpec
from sim.model import router as routers
from sim.model.serving import Sequence, ServingCore
from sim.model.workload import draw_requests
from sim.world import run_controller


class _Log:
    def step(self, *a: object) -> None: ...
    def event(self, *a: object) -> None: ...
    def memory(self, *a: object) -> None: ...


def _seq(i: int, prompt: int = 10) -> Sequence:
    return Sequence(f"r{i}", 0.0, prompt, 5, lambda t, idx: None, 10.0, 1.0)


def _cores(n: int) -> list[ServingCore]:
    spec = ServerSpec(kv_tokens=1000)
    return [ServingCore(spec, np.random.default_rng(0), _Log()) for _ in range(n)]


# --------------------------------------------------------------------------- routers on hand-made cores
def test_round_robin_takes_replicas_in_turn_whatever_their_load():
    cores = _cores(3)
    for i in range(5):
        cores[0].add(_seq(i), 0.0)  # replica 0 is swamped: round robin does not look
    rr = routers.make("round_robin")
    assert [rr.choose(_seq(10 + i), cores) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_least_outstanding_counts_waiting_running_and_preempted():
    cores = _cores(3)
    a, b, c, d = _seq(0), _seq(1), _seq(2), _seq(3)
    cores[0].add(a, 0.0)  # replica 0: 2 waiting
    cores[0].add(b, 0.0)
    cores[1].add(c, 0.0)  # replica 1: 1 running + 1 preempted (swapped) = 2
    cores[1].admit(c, 0.0)
    cores[1].add(d, 0.0)
    cores[1].admit(d, 0.0)
    cores[1].preempt(d, 0.0, "test")
    assert [len(cores[1].running), len(cores[1].swapped)] == [1, 1]
    cores[2].add(_seq(4), 0.0)  # replica 2: 1 waiting
    assert [routers.outstanding(c) for c in cores] == [2, 2, 1]
    lo = routers.make("least_outstanding")
    assert lo.choose(_seq(9), cores) == 2
    cores[2].add(_seq(5), 0.0)  # now 2, 2, 2: a tie goes to the first replica after the last chosen (2)
    assert lo.choose(_seq(9), cores) == 0
    assert lo.choose(_seq(9), cores) == 1  # (nothing was added: still a tie, now after 0)
    # a finished request no longer counts: c completes its 5 tokens on replica 1
    for _ in range(5):
        cores[1]._make_token(c, 1.0)
    assert c.state == "finished" and [routers.outstanding(x) for x in cores] == [2, 1, 2]
    assert lo.choose(_seq(9), cores) == 1
    assert lo.choose(_seq(9), cores) == 1  # the least loaded wins even against the turn


def _pseq(i: int, pid: int | None) -> Sequence:
    return Sequence(f"p{i}", 0.0, 50, 5, lambda t, idx: None, 10.0, 1.0, prefix_id=pid,
                    prefix_tokens=0 if pid is None else 40)


def test_prefix_affinity_keeps_a_prefix_on_its_replica_within_the_load_bound():
    cores = _cores(2)
    pa = routers.make("prefix_affinity")
    # empty cluster: prefix 7 has no home yet -> least outstanding (a tie: replica 0); then it stays there
    first = pa.choose(_pseq(0, 7), cores)
    assert first == 0
    cores[0].add(_pseq(0, 7), 0.0)
    # loads [1, 0]: bound = ceil(1.25 * (1 + 1) / 2) = 2; replica 0 would hold 2 <= 2 -> home
    assert pa.choose(_pseq(1, 7), cores) == 0
    cores[0].add(_pseq(1, 7), 0.0)
    # loads [2, 0]: bound = ceil(1.25 * 3 / 2) = 2; replica 0 would hold 3 > 2 -> least outstanding (1),
    # and the prefix's home moves there
    assert pa.choose(_pseq(2, 7), cores) == 1
    cores[1].add(_pseq(2, 7), 0.0)
    assert pa.home[7] == 1
    # a request without a prefix is least outstanding's: loads [2, 1] -> 1
    assert pa.choose(_pseq(3, None), cores) == 1
    # another prefix gets its own home, by least outstanding at the time: loads [2, 1] -> 1
    assert pa.choose(_pseq(4, 9), cores) == 1 and pa.home[9] == 1


def test_prefix_affinity_load_bound_against_hand_counts():
    cores = _cores(4)
    pa = routers.make("prefix_affinity")
    pa.home[3] = 2
    for _ in range(4):
        cores[2].add(_pseq(0, 3), 0.0)  # loads [0, 0, 4, 0]
    for _ in range(3):
        cores[0].add(_pseq(0, None), 0.0)
        cores[1].add(_pseq(0, None), 0.0)
        cores[3].add(_pseq(0, None), 0.0)  # loads [3, 3, 4, 3]: mean with this request 14/4 -> bound 5
    assert pa.choose(_pseq(1, 3), cores) == 2  # 4 + 1 = 5 <= ceil(1.25 * 14 / 4) = 5
    cores[2].add(_pseq(1, 3), 0.0)  # loads [3, 3, 5, 3]: bound ceil(1.25 * 15 / 4) = 5, 6 > 5
    assert pa.choose(_pseq(2, 3), cores) == 0


def test_router_names_are_the_schemas():
    allowed = typing.get_args(ServerSpec.model_fields["router"].annotation)
    assert set(routers.REGISTRY) == set(allowed)
    with pytest.raises(KeyError, match="known: round_robin, least_outstanding, prefix_affinity"):
        routers.make("random")


# --------------------------------------------------------------------------- whole runs
TINY = {
    "name": "tiny",
    "server": {"d0_s": 0.1, "d1_s": 0.01, "batch_tokens": 100, "kv_tokens": 1000, "max_running": 10},
    "workload": {"arrivals": {"kind": "periodic", "rate_per_s": 100.0}, "streams": 2, "prompt_tokens": 10,
                 "output_tokens": 5, "bytes_per_token": 200},
    "clients": {"reading_tps": 100, "patience_s": 100},
    "paths": {"p": {"rate_mbps": 100, "rtt_ms": 10}},
}


def _run(data: dict, out: Path, name: str = "unpaced", seed: int = 1) -> Path:
    loaded = LoadedScenario(parse_scenario(data, "test"), Path("test.yaml").resolve(), data)
    run_controller(loaded, draw_requests(loaded.scenario, loaded.base_dir, seed), name, {}, out, seed)
    return out


def _with_server(data: dict, **server: object) -> dict:
    d = copy.deepcopy(data)
    d["server"].update(server)
    return d


def test_replicas_1_is_the_single_node_byte_for_byte(tmp_path):
    a = _run(TINY, tmp_path / "a")
    b = _run(_with_server(TINY, replicas=1, router="least_outstanding"), tmp_path / "b")
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()) and "server.csv" in names and "replicas.csv" not in names
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


def test_two_replicas_serve_two_simultaneous_requests_side_by_side(tmp_path):
    # A's request reaches the node at hs, B's 10 ms later. One node: B waits for A's prefill
    # (0.1 + 0.01 x 10 = 0.2 s), then is prefilled beside A's first decode (0.1 + 0.01 x 11). Two
    # replicas (round robin): B is prefilled at once on replica 1, so each replica runs TINY's
    # single-stream steps, B 10 ms later.
    hs = 0.015 + 60 * 8 / 100e6
    one = load_controller_dir(_run(TINY, tmp_path / "one")).server
    assert one["time"][:2] == pytest.approx([hs + 0.2, hs + 0.2 + 0.21])
    two = _run(_with_server(TINY, replicas=2, router="round_robin"), tmp_path / "two")
    assert not (two / "server.csv").exists()
    with (two / "replicas.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == REPLICAS_COLUMNS
    steps = [0.2, 0.11, 0.11, 0.11, 0.11]
    for replica, start in ((0, hs), (1, hs + 0.01)):
        mine = [r for r in rows if r["replica"] == str(replica)]
        assert [float(r["batch_duration"]) for r in mine] == pytest.approx(steps)
        assert [float(r["time"]) for r in mine] == pytest.approx(list(start + np.cumsum(steps)), abs=2e-6)
        assert [int(r["batch_id"]) for r in mine] == [1, 2, 3, 4, 5]  # each replica numbers its own
        assert mine[-1]["completed_count"] == "1"
    traces = load_controller_dir(two).request_traces
    assert traces["waiting_time"] == pytest.approx([0.0, 0.0])


SYMMETRIC = {
    "name": "symmetric",
    "server": {"d0_s": 0.01, "d1_s": 1e-4, "batch_tokens": 4096, "kv_tokens": 400_000, "max_running": 256},
    "workload": {"arrivals": {"kind": "poisson", "rate_per_s": 8.0}, "streams": 120,
                 "prompt_tokens": {"dist": "uniform", "low": 50, "high": 150},
                 "output_tokens": {"dist": "lognormal", "median": 60, "sigma": 0.5, "min": 10, "max": 300},
                 "bytes_per_token": 200},
    "clients": {"reading_tps": 1000, "patience_s": 1000},
    "paths": {"p": {"rate_mbps": 1000, "rtt_ms": 10}},
}


def _work(steps: dict[str, np.ndarray], replica: int | None = None) -> float:
    sel = np.ones(len(steps["batch_tokens"]), bool) if replica is None else steps["replica"] == replica
    return float(steps["batch_tokens"][sel].sum())


@pytest.mark.parametrize("router", ["round_robin", "least_outstanding"])
def test_two_replicas_halve_each_replicas_load(tmp_path, router):
    """Same requests on one node and on two: memory never binds, so every request costs its prompt plus
    (output - 1) batch tokens wherever it runs. Each replica's work is half the single node's within
    3 sigma of the split's sampling error, sigma from this run's own requests: a replica gets about half
    of them, and the error of a half-split of n works w is sqrt(n var(w)) / 2."""
    one = load_controller_dir(_run(SYMMETRIC, tmp_path / "one"))
    with (_run(_with_server(SYMMETRIC, replicas=2, router=router), tmp_path / "two") / "replicas.csv").open() as f:
        rows = list(csv.DictReader(f))
    steps = {k: np.array([float(r[k]) for r in rows]) for k in ("replica", "batch_tokens", "completed_count")}
    traces = one.request_traces
    w = traces["prefill_length"] + traces["decode_length"] - 1
    total = float(one.server["batch_tokens"].sum())
    assert total == pytest.approx(w.sum())  # every request's work, once
    assert _work(steps) == pytest.approx(total)  # the same work, split
    sigma = math.sqrt(len(w) * w.var(ddof=1)) / 2
    for replica in (0, 1):
        assert abs(_work(steps, replica) - total / 2) <= 3 * sigma
    done = [int(steps["completed_count"][steps["replica"] == r].max()) for r in (0, 1)]
    assert sum(done) == 120 and abs(done[0] - done[1]) <= (1 if router == "round_robin" else 10)
    # and the load per replica is lighter: a request waits no longer for its first step than on one node
    two_traces = load_controller_dir(tmp_path / "two").request_traces
    assert np.nanmean(two_traces["total_delay"]) < np.nanmean(traces["total_delay"])


def test_schema_bounds_replicas_and_names_routers():
    with pytest.raises(ScenarioError) as exc:
        parse_scenario(_with_server(TINY, replicas=0, router="random"), "bad.yaml")
    text = str(exc.value)
    assert "server.replicas" in text and "server.router" in text


def test_gpu_busy_frac_of_two_replicas_is_the_mean_over_gpus(tmp_path):
    from analysis.metrics import summarize_run

    out = _run(_with_server(SYMMETRIC, replicas=2, router="round_robin"), tmp_path / "two")
    (tmp_path / "run.json").write_text('{"mode": "sim", "controllers": ["unpaced"], "scenario": '
                                       '{"name": "symmetric", "server": {"replicas": 2}, "slo": {"qoe": 0.9}}}')
    out.rename(tmp_path / "unpaced")
    m = summarize_run(tmp_path, write=False)["controllers"]["unpaced"]
    with (tmp_path / "unpaced" / "replicas.csv").open() as f:
        stepping = math.fsum(float(r["batch_duration"]) for r in csv.DictReader(f))
    assert m["run_time_s"] > 0 and 0 < m["gpu_busy_frac"] < 1
    assert m["gpu_busy_frac"] == pytest.approx(stepping / (2 * m["run_time_s"]), rel=1e-4)
