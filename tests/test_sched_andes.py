"""The ``andes`` scheduler (arXiv 2404.16283, artifact AmberLJC/vllm-0.6.1): hand-computed small cases.

The knapsack cases share one node: d0 = 0.125 s, d1 = 0 (every step takes 0.125 s), budget 1000,
KV memory 100 tokens, the knapsack allowed every step (``solve_every_steps=1``), TTFT target 1 s.
A (prompt 20) and B (prompt 40) arrive at 0, each for 100 tokens; C arrives at 1.0.

  t=0      admit A (0 + 21 <= 100) and B (20 + 1 + 41 = 62 <= 100); utilisation 0
  t=0.125  A tok0, B tok0 (kv 62); then each step decodes both: kv + 2 per 0.125 s
  t=1.0    kv 76; C waits: its prompt does not fit (76 + 2 + 31 = 109 > 100 for prompt 30)
  t=1.75   kv 88, A and B have made 14 tokens each (A holds 34 KV tokens, B 54); utilisation
           (88 + 2 running) / 100 = 0.9: the knapsack runs, with C 0.75 s old.

Values over the horizon h = 10 s (``qoe_gain``), readers at r tokens/s, age t = 1.75, L = 14:
expected length E = (t + h) r. A and B made their 14th token at 1.75, before their timeline
1 + 14 / r, so served QoE is 1. Paused: 1 - ((E - L) / E)^2. C (no token yet): served
(h / (0.75 + h))^2 = (40/43)^2, paused 0 (0.75 + 10 > 1).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from analysis.results import load_controller_dir
from scenarios import parse_scenario
from scenarios.loader import LoadedScenario, load_scenario
from scenarios.schema import ServerSpec
from sim.model import schedulers
from sim.model.schedulers.andes import Andes, AndesParams, qoe_gain
from sim.model.schedulers.fcfs import Fcfs
from sim.model.serving import FINISHED, SWAPPED, WAITING, Sequence, ServingCore
from sim.model.workload import draw_requests
from sim.world import run_controller
from tests.test_preemption_cost import A_TOKENS, Log


def drive(sched, reqs, until=100.0, **server):
    """A plain loop over the clock-free core: arrivals as they come, steps back to back, idle to the next event.

    ``reqs``: (req_id, arrival_s, prompt, output, reading_tps). Returns (core, log, tokens by req_id)."""
    spec = ServerSpec(**{"d0_s": 0.125, "d1_s": 0.0, "batch_tokens": 1000, "kv_tokens": 100, "max_running": 10,
                         **server})
    log = Log()
    core = ServingCore(spec, np.random.default_rng(0), log, scheduler=sched)
    tokens: dict[str, list[float]] = {r[0]: [] for r in reqs}
    pending = sorted(reqs, key=lambda r: r[1])
    now = 0.0
    while now < until:
        while pending and pending[0][1] <= now:
            rid, t, prompt, output, tds = pending.pop(0)
            core.add(Sequence(rid, t, prompt, output, lambda t, i, rid=rid: tokens[rid].append(round(t, 9)),
                              reading_tps=tds, ttft_expected_s=1.0), now)
        step = core.plan(now)
        if step is None:
            nxt = [t for t in (core.next_ready(now), pending[0][1] if pending else None) if t is not None]
            if not nxt:
                break
            now = min(nxt)
            continue
        now += step.duration_s
        core.finish(step, now)
    return core, log, tokens


def ab_c(c_arrival: float, c_prompt: int, tds: float, outputs: tuple[int, int, int] = (100, 100, 50),
         ) -> list[tuple[str, float, int, int, float]]:
    a, b, c = outputs
    return [("A", 0.0, 20, a, tds), ("B", 0.0, 40, b, tds), ("C", c_arrival, c_prompt, c, tds)]


def knapsack_events(log: Log) -> list[tuple[float, str, str]]:
    return [(t, kind, rid) for t, kind, rid, _ in log.events if kind in ("swap_out", "preempt", "admit")]


def test_qoe_gain_by_hand():
    # ahead of its timeline (1 + 50 * 0.2 = 11 > 4): served 1; E = 15 * 5 = 75, paused 1 - (25/75)^2 = 8/9
    assert qoe_gain(5.0, 50, 4.0, 1.0, 5.0, 10.0, 0.02, True, 0.1) == pytest.approx((1 - 8 / 9) * 1.1)
    # behind it (1 + 20 * 0.2 = 5 < 9.9): served ((20 + 10/0.2) / 100)^2 = 0.49; paused 1 - 0.8^2 = 0.36
    assert qoe_gain(10.0, 20, 9.9, 1.0, 5.0, 10.0, 0.02, False, 0.1) == pytest.approx(0.49 - 0.36)
    # waiting 2 s: served (50 / 60)^2, paused 0 (the horizon ends after the 1 s TTFT target)
    assert qoe_gain(2.0, 0, 2.0, 1.0, 5.0, 10.0, 0.02, False, 0.1) == pytest.approx(25 / 36)
    # a slow reader far ahead (E = 11.75 <= 14 made): nothing to lose by pausing it
    assert qoe_gain(1.75, 14, 1.75, 1.0, 1.0, 10.0, 0.02, True, 0.1) == 0.0


def test_below_threshold_it_is_fcfs():
    """Queueing (max_running 2), distinct arrivals and sizes, utilisation never above 0.4: every step and
    event as fcfs's, with waiting requests taken in arrival order (admit_order fcfs)."""
    reqs = [("R0", 0.0, 10, 5, 5.0), ("R1", 0.05, 30, 8, 5.0), ("R2", 0.1, 20, 6, 4.0),
            ("R3", 0.3, 15, 7, 5.0), ("R4", 0.35, 25, 5, 4.5), ("R5", 0.9, 10, 6, 5.0)]
    server = {"d0_s": 0.1, "d1_s": 0.01, "batch_tokens": 100, "kv_tokens": 200, "max_running": 2}
    runs = [drive(s, reqs, **server) for s in (Fcfs(), Andes(AndesParams(admit_order="fcfs", solve_every_steps=1)))]
    (_, log_f, tok_f), (core_a, log_a, tok_a) = runs
    assert max(row[-1] for row in log_a.steps) + 2 <= 0.4 * 200
    assert log_a.steps == log_f.steps and log_a.events == log_f.events and tok_a == tok_f
    assert core_a.scheduler.solves == 0 and core_a.kv_used == 0


@pytest.mark.parametrize(("preemption", "b_tokens"), [("swap", [0.3, 0.42, 0.98, 1.09, 1.2]),
                                                     ("recompute", [0.3, 0.42, 0.97, 1.08, 1.19])])
def test_preemption_cost_hand_computation_holds(preemption, b_tokens):
    """tests/test_preemption_cost.py's node (KV 24) with andes at its defaults: the knapsack never has a
    waiting or preempted request to weigh while memory is tight, so it schedules as fcfs (LIFO victim)."""
    reqs = [("A", 0.0, 10, 5, None), ("B", 0.0, 10, 5, None)]
    server = {"d0_s": 0.1, "d1_s": 0.01, "batch_tokens": 100, "kv_tokens": 24, "preemption": preemption,
              "swap_gbps": 0.08, "kv_bytes_per_token": 100_000}
    runs = [drive(s, reqs, **server) for s in (Fcfs(), Andes())]
    (_, log_f, _), (core, log_a, tokens) = runs
    assert tokens["A"] == A_TOKENS and tokens["B"] == b_tokens
    assert log_a.steps == log_f.steps and log_a.events == log_f.events
    assert core.kv_used == 0


def test_admission_below_threshold_by_value_per_kv_token():
    """At its defaults andes admits waiting requests by value per KV token (KnapSack.schedule_requests):
    three requests at t = 0 (equal value, 1 each: no age), room for one (max_running 1): the shortest goes first."""
    reqs = [("L", 0.0, 50, 2, 5.0), ("S", 0.0, 10, 2, 5.0), ("M", 0.0, 30, 2, 5.0)]
    _, log, _ = drive(Andes(), reqs, max_running=1, kv_tokens=1000)
    _, log_f, _ = drive(Fcfs(), reqs, max_running=1, kv_tokens=1000)
    admits = [(t, rid) for t, kind, rid, _ in log.events if kind == "admit"]
    assert admits == [(0.0, "S"), (0.25, "M"), (0.5, "L")]  # each: a prefill step and one decode step
    assert [rid for _, kind, rid, _ in log_f.events if kind == "admit"] == ["L", "S", "M"]


def test_knapsack_preempts_the_lowest_value_per_kv_token():
    """Readers at 5 tokens/s, C a 30-token prompt, free swaps (the cap is lifted).

    At 1.75: E = 11.75 * 5 = 58.75; paused 1 - (44.75/58.75)^2, so A and B are each worth
    (44.75/58.75)^2 * 1.1 = 0.63821, per KV token (context + 1) A 0.63821/35 = 0.018235, B /55 = 0.011604;
    C is worth (40/43)^2 / 31 = 0.027914 per token. A and B are both candidates (below C); greedy by
    value per token: C (31), A (31 + 35 = 66), B (66 + 55 = 121 > 100): B, the lowest, is swapped out
    and C admitted in the same step (kv 88 - 54 = 34; 34 + 1 + 30 + 1 = 66 <= 100)."""
    andes = Andes(AndesParams(solve_every_steps=1))
    core, _, _ = drive(andes, ab_c(1.0, 30, 5.0), until=1.75)  # the state the knapsack sees at 1.75
    a, b, c = core.all_seqs
    assert (a.kv_tokens, b.kv_tokens, c.kv_tokens, core.kv_used) == (34, 54, 30, 88)
    value = (44.75 / 58.75) ** 2 * 1.1
    assert andes.density(a, 1.75, True) == pytest.approx(value / 35)
    assert andes.density(b, 1.75, True) == pytest.approx(value / 55)
    assert andes.density(c, 1.75, False) == pytest.approx((40 / 43) ** 2 / 31)
    assert andes.preemption_cap(core, 1.75) == 2  # free swaps: as many as are running
    andes = Andes(AndesParams(solve_every_steps=1))
    core, log, _ = drive(andes, ab_c(1.0, 30, 5.0), until=1.8)
    b = core.all_seqs[1]
    assert knapsack_events(log) == [(0.0, "admit", "A"), (0.0, "admit", "B"), (1.75, "swap_out", "B"),
                                    (1.75, "admit", "C")]
    assert (1.75, "swap_out", "B", 88, 34, "andes: 0.0116 QoE/KV token") in log.mem
    assert andes.solves == 1 and andes.knapsack_preemptions == 1 and b.state == SWAPPED


def test_preemption_cap():
    """Readers at 1 token/s: A and B are far ahead (E = 11.75 <= 14 made), worth 0; C a 70-token prompt.

    Uncapped (free swaps) the knapsack takes C (71) and then nothing else fits (71 + 35 > 100): both
    A and B are preempted and C admitted. With swaps at 0.2 Gbit/s (100 kB per token: 0.004 s per token)
    the slacks are A, B: 14/1 + 1 - 1.75 = 13.25 and C: 1 - 0.75 = 0.25; the 10% quantile of the three
    is the smallest, 0.25; a preemption of mean context (35 + 55 + 71)/3 costs 0.004 * 53.67 = 0.2147 s,
    so at most int(0.25 // 0.2147) = 1 may go: the first candidate in running order, A. C still does
    not fit (34 freed: kv 54 + 1 + 71 > 100) and waits -- the artifact's greedy packing does the same."""
    free = Andes(AndesParams(solve_every_steps=1))
    _, log, _ = drive(free, ab_c(1.0, 70, 1.0), until=1.8)
    assert knapsack_events(log)[2:] == [(1.75, "swap_out", "A"), (1.75, "swap_out", "B"), (1.75, "admit", "C")]
    assert free.knapsack_preemptions == 2

    capped = Andes(AndesParams(solve_every_steps=1))
    core, log, _ = drive(capped, ab_c(1.0, 70, 1.0), until=1.8, swap_gbps=0.2, kv_bytes_per_token=100_000)
    assert capped.preempt_cost_s(core) == pytest.approx(0.004)
    assert knapsack_events(log)[2:] == [(1.75, "swap_out", "A")]
    assert capped.knapsack_preemptions == 1 and core.all_seqs[2].state == WAITING
    # recompute costs d1 per context token: 0.0 here, so the cap is lifted again
    assert Andes.preempt_cost_s(ServingCore(ServerSpec(preemption="recompute", d1_s=3e-5),
                                            np.random.default_rng(0), Log(), Fcfs())) == 3e-5


def test_no_slack_no_preemption():
    """C arrived at 0.25, so at 1.75 it is 0.5 s past its 1 s TTFT target: its slack is -0.5, the cap
    int(-0.5 // 0.2147) < 1, and the knapsack preempts nobody (each step from 1.75 on, C never fits).
    Memory runs out when kv reaches 100 at 2.5 (62 + 2 * 19): 100 + 2 > 100, and the fallback preempts the
    tail of the running queue, B, as vLLM's _schedule_running does."""
    andes = Andes(AndesParams(solve_every_steps=1))
    _, log, _ = drive(andes, ab_c(0.25, 70, 1.0), until=2.6, swap_gbps=0.2, kv_bytes_per_token=100_000)
    assert andes.solves == 7 and andes.knapsack_preemptions == 0  # 1.75, 1.875, ..., 2.5
    assert knapsack_events(log)[2:] == [(2.5, "swap_out", "B")]
    assert log.mem == [(2.5, "swap_out", "B", 100, 40, "kv 100+2 > 100")]


def test_knapsack_waits_for_its_iteration():
    """At its defaults the knapsack runs every 10th iteration: iterations 1..14 are 0 .. 1.625; at
    1.75 (iteration 15) memory is tight but it waits for iteration 20 (2.375, kv 98 of 100)."""
    andes = Andes()
    _, log, _ = drive(andes, ab_c(1.0, 30, 5.0), until=2.4)
    events = knapsack_events(log)
    assert events[2:4] == [(2.375, "swap_out", "B"), (2.375, "admit", "C")]
    assert andes.solves == 1


def test_kv_accounting_returns_to_zero():
    """The knapsack case run to the end (outputs cut to 60, 50, 50 so that every context fits the 100 KV
    tokens), with swaps over the host link, with recompute and with free swaps: all finish, memory is 0."""
    for server in ({"swap_gbps": 0.2, "kv_bytes_per_token": 100_000}, {"preemption": "recompute"}, {}):
        andes = Andes(AndesParams(solve_every_steps=1))
        core, log, tokens = drive(andes, ab_c(1.0, 30, 5.0, (60, 50, 50)), **server)
        assert andes.knapsack_preemptions >= 1
        assert [s.state for s in core.all_seqs] == [FINISHED] * 3 and core.kv_used == 0
        assert not core.swapped and not core.incoming and [len(tokens[r]) for r in "ABC"] == [60, 50, 50]
        assert log.steps[-1][-1] == 0 and max(row[-1] for row in log.steps) <= 100


def test_registry_and_params():
    assert schedulers.get("andes") is Andes
    assert schedulers.make("andes", {"horizon_s": 5}).params.horizon_s == 5
    p = Andes().params
    assert (p.horizon_s, p.token_latency_s, p.kv_threshold, p.solve_every_steps, p.sacrifice_fraction,
            p.running_bonus) == (10.0, 0.02, 0.9, 10, 0.1, 0.1)
    assert schedulers.validate_params("andes", {"kv_threshold": 2})[0][0] == "kv_threshold"
    assert schedulers.validate_params("andes", {"nope": 1})[0][0] == "nope"
    assert ServerSpec(scheduler="andes").scheduler.name == "andes" and not Andes.uses_observations


def _first_admit_waits(controller_dir) -> tuple[dict[str, float], int]:
    ev = load_controller_dir(controller_dir).events
    arrive: dict[str, float] = {}
    admit: dict[str, float] = {}
    for kind, rid, t in zip(ev["event_type"], ev["req_id"], ev["time"], strict=True):
        if kind == "arrive":
            arrive[rid] = float(t)
        elif kind == "admit":
            admit.setdefault(rid, float(t))
    return {r: admit[r] - arrive[r] for r in arrive}, sum(t <= 6.0 for t in admit.values())


def test_kv_bound_scenario_andes_admits_earlier_than_fcfs(tmp_path):
    """tests/scenarios/kv-tiny-andes.yaml (KV memory for ~8 of 40 requests), unpaced, once with andes and
    once with fcfs on the same requests: both finish every stream; andes, preempting streams that are far
    ahead of their 4-5 tokens/s readers, admits waiting requests sooner."""
    loaded = load_scenario("tests/scenarios/kv-tiny-andes.yaml")
    assert loaded.scenario.server.scheduler.name == "andes"
    results = {}
    for name in ("andes", "fcfs"):
        raw = copy.deepcopy(loaded.raw)
        raw["server"]["scheduler"] = name
        run = LoadedScenario(parse_scenario(raw, loaded.path), loaded.path, raw)
        run_controller(run, draw_requests(run.scenario, run.base_dir), "unpaced", {}, tmp_path / name, 1)
        outcomes = list(load_controller_dir(tmp_path / name).streams["outcome"])
        assert outcomes == ["completed"] * 40
        results[name] = _first_admit_waits(tmp_path / name)
    (waits_a, by6_a), (waits_f, by6_f) = results["andes"], results["fcfs"]
    assert np.mean(list(waits_a.values())) < np.mean(list(waits_f.values()))
    assert by6_a > by6_f
