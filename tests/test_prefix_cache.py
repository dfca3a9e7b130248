"""The KV prefix cache (sim/model/prefix_cache.py, seed 004's STATIC / FLUID / FREQUENCY): hand-computed.

Core cases. The node: d0 = 0.01 s, d1 = 0.001 s per batch token, budget 2048, FCFS.

Hit skips the prefix (KV 10 000, STATIC 5 entries). A: prompt 300 of which prefix 7's 200, 2 output
tokens; B: prompt 250 with the same prefix, 1 output token, arriving when A's first step ends.

  t=0      admit A: miss (empty cache); prefill 300 tokens, 0.01 + 0.300 = 0.31 s; kv 300
  t=0.31   A tok0 (kv 301); the step's miss is cached: prefix 7, kv 301 + 200 = 501
           admit B: hit, 200 tokens skipped; decode A + prefill 250 - 200 = 51 batch tokens, 0.061 s;
           kv 501 + 250 = 751 (B holds its whole prompt; the cache holds the prefix once)
  t=0.371  B tok0, done: kv 751 + 1 - 251 = 501; A tok1, done: 501 + 1 - 302 = 200 (the cache alone)

LRU eviction and memory (KV 1 000, STATIC 3 entries). Prefixes 1 (200 tokens), 2 (300), 3 (100) are
cached in that order: kv 600. C (prompt 250 with prefix 1, 5 outputs) arrives at t=0: the step may need
251 more, 600 + 251 <= 1000, nothing evicted; C hits prefix 1, now the most recent (order 2, 3, 1);
kv 850, 0.01 + 0.05 = 0.06 s -> t=0.06 C tok0, kv 851. Prefix 4 (50 tokens) is cached: the cache is
full, so its least recent entry, 2, goes (capacity): kv 551, then 601 (order 3, 1, 4). D (a 600-token
prompt, no prefix) arrives: the next step may need C's decode token and D's prompt + 1: 601 + 602 >
1000, so the cache gives way, least recent first: 3 (kv 501: 1103 > 1000), then 1 (kv 301: 903 <=
1000). D is admitted beside C with no stream preempted: kv 301 + 600 = 901.
"""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from scenarios import load_scenario
from scenarios.schema import PrefixCacheSpec, PrefixSpec, ServerSpec
from sim.model.prefix_cache import FluidSizer, FrequencySizer, StaticSizer
from sim.model.serving import Sequence, ServingCore
from sim.model.workload import draw_requests

TESTS = Path(__file__).parent


class Log:
    def __init__(self) -> None:
        self.steps: list[tuple[float, int, float, int]] = []
        self.events: list[tuple[float, str, str, str]] = []
        self.mem: list[tuple[float, str, str, int, int, str]] = []

    def step(self, t, batch_id, batch_size, batch_tokens, duration_s, waiting, running, swapped, completed, kv_used):
        self.steps.append((round(t, 9), batch_tokens, round(duration_s, 9), kv_used))

    def event(self, t, kind, req_id, details=""):
        self.events.append((round(t, 9), kind, req_id, details))

    def memory(self, t, kind, req_id, before, after, reason):
        self.mem.append((round(t, 9), kind, req_id, before, after, reason))


def core_with(kv_tokens: int, cache: PrefixCacheSpec | str | None) -> tuple[ServingCore, Log]:
    spec = ServerSpec(d0_s=0.01, d1_s=0.001, batch_tokens=2048, kv_tokens=kv_tokens, max_running=10,
                      prefix_cache=cache)
    log = Log()
    return ServingCore(spec, np.random.default_rng(0), log), log


def seq(rid: str, t: float, prompt: int, out: int, prefix: int | None = None, prefix_tokens: int = 0) -> Sequence:
    return Sequence(rid, t, prompt, out, lambda t, i: None, prefix_id=prefix, prefix_tokens=prefix_tokens)


def run_step(core: ServingCore, now: float) -> float:
    step = core.plan(now)
    assert step is not None
    end = round(now + step.duration_s, 9)
    core.finish(step, end)
    return end


# --------------------------------------------------------------------------- the core
def test_a_hit_skips_the_prefix_prefill_and_the_cache_holds_it_once():
    core, log = core_with(10_000, "static")
    core.add(seq("A", 0.0, 300, 2, prefix=7, prefix_tokens=200), 0.0)
    t = run_step(core, 0.0)
    assert t == 0.31 and log.steps[-1] == (0.31, 300, 0.31, 501)
    assert log.mem == [(0.31, "cache_insert", "prefix-7", 301, 501, "miss")]
    core.add(seq("B", t, 250, 1, prefix=7, prefix_tokens=200), t)
    t = run_step(core, t)
    assert log.steps[-1] == (0.371, 51, 0.061, 200)
    assert core.kv_used == core.prefix_cache.kv_tokens == 200
    kinds = [(e[1], e[2], e[3]) for e in log.events if e[1] != "arrive"]
    assert kinds == [("cache_miss", "A", "prefix=7 tokens=200"), ("admit", "A", "prefill=300"),
                     ("cache_hit", "B", "prefix=7 tokens=200"), ("admit", "B", "prefill=50"),
                     ("complete", "B", "tokens=1"), ("complete", "A", "tokens=2")]
    cache = core.prefix_cache
    assert (cache.lookups, cache.hits, cache.saved_tokens, cache.evictions) == (2, 1, 200, 0)


def test_lru_eviction_order_and_the_cache_gives_way_before_streams():
    core, log = core_with(1000, PrefixCacheSpec(strategy="static", size=3))
    cache = core.prefix_cache
    for pid, tokens in ((1, 200), (2, 300), (3, 100)):
        assert cache.insert(core, pid, tokens, 0.0)
    assert core.kv_used == 600 and list(cache.entries) == [1, 2, 3]
    core.add(seq("C", 0.0, 250, 5, prefix=1, prefix_tokens=200), 0.0)
    t = run_step(core, 0.0)
    assert (t, core.kv_used, list(cache.entries)) == (0.06, 851, [2, 3, 1])
    assert cache.insert(core, 4, 50, t)
    assert (core.kv_used, list(cache.entries)) == (601, [3, 1, 4])
    core.add(seq("D", t, 600, 5), t)
    step = core.plan(t)
    assert [s.req_id for s in step.prefills] == ["D"] and [s.req_id for s in step.decodes] == ["C"]
    assert not step.preempted and core.kv_used == 901 and list(cache.entries) == [4]
    assert [(m[1], m[2], m[3], m[4], m[5]) for m in log.mem if m[1] == "cache_evict"] == [
        ("cache_evict", "prefix-2", 851, 551, "capacity"),
        ("cache_evict", "prefix-3", 601, 501, "memory"),
        ("cache_evict", "prefix-1", 501, 301, "memory"),
    ]


def test_a_prefix_that_does_not_fit_beside_the_streams_is_not_cached():
    core, _ = core_with(1000, "static")
    core.add(seq("E", 0.0, 900, 3, prefix=5, prefix_tokens=150), 0.0)
    run_step(core, 0.0)  # kv 901: 150 more tokens and E's next decode token would overflow 1000
    assert core.kv_used == 901 and not core.prefix_cache.entries


def test_without_a_cache_nothing_changes_in_the_core():
    core, log = core_with(10_000, None)
    core.add(seq("A", 0.0, 300, 2, prefix=7, prefix_tokens=200), 0.0)
    core.add(seq("B", 0.0, 250, 1, prefix=7, prefix_tokens=200), 0.0)
    run_step(core, 0.0)
    assert core.prefix_cache is None and log.steps == [(0.56, 550, 0.56, 301)] and not log.mem


# --------------------------------------------------------------------------- the sizing rules
def test_static_size_never_changes():
    sizer = StaticSizer(PrefixCacheSpec(strategy="static", size=7))
    for t in range(100):
        sizer.record(float(t), t % 3)
    assert sizer.size(100.0, 7) == 7


def test_fluid_grows_above_1_35x_and_shrinks_below_0_65x_of_its_average_rate():
    sizer = FluidSizer(PrefixCacheSpec(strategy="fluid"))
    for t in range(20):  # 1 lookup/s for 20 s
        sizer.record(float(t), 0)
    # window [16, 19]: 4 lookups over 3 s; the first rate sets the average: no change
    assert sizer.size(19.0, 5) == 5 and sizer.last_rate == pytest.approx(4 / 3)
    for k in range(191, 211):  # then 10 lookups/s: 19.1 .. 21.0
        sizer.record(k / 10, 0)
    # window [18, 21]: 22 lookups over 3 s = 7.333/s; average 0.7 x 1.333 + 0.3 x 7.333 = 3.133;
    # 7.333 > 1.35 x 3.133 = 4.23: grow, ceil(5 x 1.15) = 6
    assert sizer.size(21.0, 5) == 6
    assert sizer.average == pytest.approx(0.7 * 4 / 3 + 0.3 * 22 / 3)
    sizer.record(40.0, 0)  # quiet: 1 lookup in [37, 40], over at least 1 s = 1/s
    # average 0.7 x 3.133 + 0.3 = 2.493; 1 < 0.65 x 2.493 = 1.62: shrink, ceil(20 / 1.08) = 19
    assert sizer.size(40.0, 20) == 19


def test_fluid_stays_within_its_bounds():
    spec = PrefixCacheSpec(strategy="fluid", min_size=5, max_size=6)
    sizer = FluidSizer(spec)
    sizer.record(0.0, 0)
    assert sizer.size(0.0, 6) == 6  # first rate: the average, no change
    for k in range(1, 31):
        sizer.record(k / 10, 0)
    assert sizer.size(3.0, 6) == 6  # grows, capped at max_size
    assert sizer.size(30.0, 5) == 5  # no lookup in the window: rate 0 shrinks, floored at min_size


def test_frequency_sizes_from_the_hottest_buckets():
    sizer = FrequencySizer(PrefixCacheSpec(strategy="frequency", min_size=1))
    accesses = [0] * 6 + [1] * 3 + [2] + [500] * 2  # 500 shares bucket 0 with prefix 0 (500 buckets)
    for i, pid in enumerate(accesses[:9]):
        sizer.record(float(i), pid)
    assert sizer.size(9.0, 4) == 5  # 9 lookups: under seed 004's warm-up of 10, the initial size
    for i, pid in enumerate(accesses[9:]):
        sizer.record(9.0 + i, pid)
    # buckets: 0 -> 8 accesses / 2 keys (4 per key), 1 -> 3 / 1, 2 -> 1 / 1; 12 accesses in all.
    # target 0.9: ceil(10.8) = 11 accesses -> buckets 0 and 1 (8 + 3), holding 3 keys
    assert sizer.accesses[:3] == [8, 3, 1] and sizer.keys[:3] == [2, 1, 1]
    assert sizer.estimate(0.9) == 3 and sizer.size(12.0, 4) == 3
    assert sizer.estimate(0.5) == 2  # ceil(6): bucket 0 alone
    assert sizer.estimate(1.0) == 4
    default = FrequencySizer(PrefixCacheSpec(strategy="frequency"))  # min_size 5 (seed 004)
    for i, pid in enumerate(accesses):
        default.record(float(i), pid)
    assert default.size(12.0, 9) == 5


def test_resizing_every_adjust_every_lookups_evicts_lru():
    core, log = core_with(100_000, PrefixCacheSpec(strategy="frequency", size=4, min_size=1, adjust_every=10))
    cache = core.prefix_cache
    for pid in (10, 11, 12, 13):
        cache.insert(core, pid, 100, 0.0)
    for i in range(10):  # 10 lookups of prefix 10: the hottest bucket alone covers 90%
        s = seq(f"r{i}", 0.0, 150, 1, prefix=10, prefix_tokens=100)
        cache.admit(core, s, float(i))
    assert cache.capacity == 1 and list(cache.entries) == [10]
    assert [e[3] for e in log.events if e[1] == "cache_resize"] == ["frequency 4->1"]
    assert (cache.lookups, cache.hits) == (10, 10)


def test_schema_shorthands_and_checks():
    assert ServerSpec(prefix_cache="fluid").prefix_cache == PrefixCacheSpec(strategy="fluid")
    assert ServerSpec(prefix_cache="none").prefix_cache is None and ServerSpec().prefix_cache is None
    with pytest.raises(ValidationError, match="min_size"):
        PrefixCacheSpec(strategy="fluid", min_size=10, max_size=5)
    with pytest.raises(ValidationError):
        ServerSpec(prefix_cache="lru")
    with pytest.raises(ValidationError):
        PrefixSpec(groups=0, tokens={"dist": "constant", "value": 10})


# --------------------------------------------------------------------------- the workload
def test_prefixes_are_drawn_apart_and_leave_the_rest_of_the_requests_alone():
    loaded = load_scenario(TESTS / "scenarios" / "capacity-tiny.yaml")
    scn = loaded.scenario
    plain = draw_requests(scn, loaded.base_dir)
    prefix = PrefixSpec(groups=4, tokens={"dist": "constant", "value": 64}, popularity={"zipf": 1.0}, share=0.5)
    with_prefix = scn.model_copy(update={"workload": scn.workload.model_copy(update={"prefix": prefix})})
    drawn = draw_requests(with_prefix, loaded.base_dir)
    assert len(drawn) == len(plain) == scn.workload.streams
    for a, b in zip(plain, drawn, strict=True):
        assert a.prefix_id is None and a.prefix_tokens == 0
        assert (b.prompt_tokens - b.prefix_tokens, b.output_tokens, b.arrival_s, b.reading_tps) == (
            a.prompt_tokens, a.output_tokens, a.arrival_s, a.reading_tps)
        assert (b.prefix_id is None) == (b.prefix_tokens == 0)
        assert b.prefix_id is None or (0 <= b.prefix_id < 4 and b.prefix_tokens == 64)
    assert draw_requests(with_prefix, loaded.base_dir) == drawn  # its own stream: reproducible
    carried = sum(r.prefix_id is not None for r in drawn)
    assert 0 < carried < len(drawn)


def test_a_configured_cache_without_prefixes_changes_no_output_file(tmp_path):
    from sim.runner import make_plan, run_plan

    src = TESTS / "scenarios" / "capacity-tiny.yaml"
    raw = yaml.safe_load(src.read_text())
    raw["server"]["prefix_cache"] = {"strategy": "frequency"}
    cached = tmp_path / "cached.yaml"
    cached.write_text(yaml.safe_dump(raw))
    for name, path in (("plain", src), ("cached", cached)):
        run_plan(make_plan(path, tmp_path / name, ["unpaced"], None), jobs=1, show_progress=False)
    cmp = filecmp.dircmp(tmp_path / "plain" / "unpaced", tmp_path / "cached" / "unpaced")
    assert cmp.left_list == cmp.right_list and not cmp.diff_files and not cmp.funny_files
    assert (tmp_path / "plain" / "summary.json").read_bytes() == (tmp_path / "cached" / "summary.json").read_bytes()


def test_summary_gains_cache_metrics_only_with_lookups(tmp_path):
    from analysis.metrics import cache_metrics
    from analysis.results import EVENTS_COLUMNS, read_csv

    rows = ["time,event_type,req_id,details", "0.0,arrive,A,prompt=300 output=2",
            "0.0,cache_miss,A,prefix=7 tokens=200", "0.0,admit,A,prefill=300",
            "0.31,cache_hit,B,prefix=7 tokens=200", "0.31,admit,B,prefill=50",
            "0.5,cache_evict,prefix-7,memory; 200 KV tokens"]
    (tmp_path / "events.csv").write_text("\n".join(rows) + "\n")
    assert cache_metrics(read_csv(tmp_path / "events.csv", EVENTS_COLUMNS)) == {
        "cache_lookups": 2, "cache_hits": 1, "cache_hit_rate": 0.5, "cache_prefill_tokens_saved": 200,
        "cache_evictions": 1}
    (tmp_path / "events.csv").write_text("\n".join(rows[:2] + rows[3:4]) + "\n")
    assert cache_metrics(read_csv(tmp_path / "events.csv", EVENTS_COLUMNS)) == {}


def _fake_run(run_dir: Path, cache: dict | None, events: list[str], delays: list[float], ttfts: list[float]) -> None:
    ctrl = run_dir / "unpaced"
    ctrl.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"scenario": {"server": {"prefix_cache": cache}}}))
    (ctrl / "events.csv").write_text("time,event_type,req_id,details\n" + "".join(
        f"0.0,{kind},r{i},prefix=1 tokens=100\n" for i, kind in enumerate(events)))
    (ctrl / "request_traces.csv").write_text("req_id,total_delay\n" + "".join(
        f"r{i},{d}\n" for i, d in enumerate(delays)))
    (ctrl / "streams.csv").write_text("stream_id,ttft_s,qoe\n" + "".join(
        f"r{i},{t},1.0\n" for i, t in enumerate(ttfts)))


def test_seed004_cache_experiments_csv(tmp_path):
    from analysis.seed004_cache import cache_stats, write_cache_experiments

    static = PrefixCacheSpec(strategy="static").model_dump()
    cells = [{"id": "prefix_cache=none", "values": {"server.prefix_cache": "none"}},
             {"id": "prefix_cache=static", "values": {"server.prefix_cache": "static"}}]
    (tmp_path / "run.json").write_text(json.dumps({"grid": {"server.prefix_cache": ["none", "static"]}, "cells": cells,
                                                   "seeds": [1, 2], "controllers": ["unpaced"]}))
    runs = tmp_path / "cells"
    _fake_run(runs / "prefix_cache=none" / "seed-1", None, ["admit"] * 3, [1.0, 2.0, 3.0], [0.5])
    _fake_run(runs / "prefix_cache=none" / "seed-2", None, ["admit"] * 2, [4.0], [0.7])
    _fake_run(runs / "prefix_cache=static" / "seed-1", static, ["cache_hit", "cache_miss", "cache_hit", "admit"],
              [1.0, 1.0], [0.2])
    _fake_run(runs / "prefix_cache=static" / "seed-2", static, ["cache_miss", "cache_hit", "cache_miss"], [2.5],
              [0.4])
    out = write_cache_experiments(tmp_path, tmp_path / "cache_experiments.csv")
    # NONE: 5 admitted, latency (1 + 2 + 3 + 4) / 4 s; STATIC: 2 + 1 hits of 3 + 3 lookups, (1 + 1 + 2.5) / 3 s
    assert out.read_text() == ("strategy,total_requests,cache_hits,hit_rate_percent,avg_latency_ms,strategy_config\n"
                               "NONE,5,0,0.0,2500.0,no cache\n"
                               "STATIC,6,3,50.0,1500.0,size=5\n")
    stats = cache_stats(tmp_path)
    hit = stats["strategies"]["STATIC"]["hit_rate_percent"]
    assert hit["per_seed"] == {1: pytest.approx(200 / 3), 2: pytest.approx(100 / 3)} and hit["n"] == 2
    # paired by seed: latency STATIC - NONE = (1.0 - 2.0, 2.5 - 4.0) s = (-1000, -1500) ms, mean -1250 ms
    diff = stats["differences"]["STATIC-NONE"]["avg_latency_ms"]
    assert diff["mean"] == pytest.approx(-1250.0) and diff["n"] == 2
    assert stats["differences"]["STATIC-NONE"]["ttft_ms"]["mean"] == pytest.approx(-300.0)
