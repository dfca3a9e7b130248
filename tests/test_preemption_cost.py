"""Preemption that frees memory, with its cost: swap over a host link of given bandwidth, and recompute.

Hand-computed. The node: d0 = 0.1 s, d1 = 0.01 s per batch token, budget 100, KV memory 24 tokens,
LIFO victims. Two requests at t = 0, A and B, each a 10-token prompt and 5 output tokens.
For swap: kv_bytes_per_token = 100 000 B and swap_gbps = 0.08 (1e7 B/s), so one KV token takes
0.01 s on the host link.

  t=0     admit A (kv 0+11 <= 24) and B (10 + 1 + 11 = 22 <= 24): prefill 20 tokens, 0.1 + 0.2 = 0.3 s
  t=0.3   A tok0, B tok0 (kv 22). Decode A, B: 22 + 2 <= 24; 0.12 s
  t=0.42  A tok1, B tok1 (kv 24). Decode A, B: 24 + 2 > 24 -> preempt the last to enter, B (ties at
          t=0: LIFO takes the later in the running list). kv 24 - 12 = 12.
            swap:      B's 12 KV tokens = 1 200 000 B go to the host over 0.42 .. 0.54
            recompute: B's 12 KV tokens are dropped
          Decode A alone: 0.11 s. No swap-in or admission in a step that preempted.
  t=0.53  A tok2 (kv 13). B back? 13 + 1 (A's decode) + 12 + 1 = 27 > 24: no. Decode A -> 0.64
  t=0.64  A tok3 (kv 14). 14 + 1 + 12 + 1 = 28 > 24: no. Decode A -> 0.75
  t=0.75  A tok4: A completes, kv 15 - 15 = 0. B back: 0 + 12 + 1 <= 24.
            swap:      memory reserved (kv 12), transfer 0.75 .. 0.87 (the link is free since 0.54);
                       nothing can step until it lands: the node sleeps to 0.87.
                       0.87 decode B -> 0.98 (tok2), -> 1.09 (tok3), -> 1.20 (tok4, done)
            recompute: prefill B's prompt and 2 generated tokens = 12 batch tokens: 0.1 + 0.12 = 0.22 s
                       -> 0.97 (tok2), -> 1.08 (tok3), -> 1.19 (tok4, done)
  Free swaps (swap_gbps null, the default) would resume B at 0.75: 0.86, 0.97, 1.08 -- the swap link
  costs B exactly its 0.12 s transfer back; the recomputation makes B's next token in a 0.22 s step
  instead of a 0.11 s decode, so B is 0.11 s later (and the GPU spends those 0.12 s of prefill).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import simpy

from scenarios.schema import ServerSpec
from sim.model import schedulers
from sim.model.serving import FINISHED, Sequence, ServingCore
from sim.node import ServingNode


class Log:
    def __init__(self) -> None:
        self.steps: list[tuple[float, int, int, float, int, int, int]] = []
        self.events: list[tuple[float, str, str, str]] = []
        self.mem: list[tuple[float, str, str, int, int, str]] = []

    def step(self, t, batch_id, batch_size, batch_tokens, duration_s, waiting, running, swapped, completed, kv_used):
        self.steps.append((round(t, 9), batch_size, batch_tokens, round(duration_s, 9), running, swapped, kv_used))

    def event(self, t, kind, req_id, details=""):
        self.events.append((round(t, 9), kind, req_id, details))

    def memory(self, t, kind, req_id, before, after, reason):
        self.mem.append((round(t, 9), kind, req_id, before, after, reason))


def spec(**kw) -> ServerSpec:
    return ServerSpec(d0_s=0.1, d1_s=0.01, batch_tokens=100, kv_tokens=24, max_running=10, victim_policy="LIFO",
                      kv_bytes_per_token=100_000, **kw)


def run_sim(server: ServerSpec) -> tuple[Log, dict[str, list[float]], ServingNode]:
    env = simpy.Environment()
    log = Log()
    node = ServingNode(env, server, np.random.default_rng(0), log)
    tokens: dict[str, list[float]] = {"A": [], "B": []}
    for rid in ("A", "B"):
        node.submit(Sequence(rid, 0.0, 10, 5, lambda t, i, rid=rid: tokens[rid].append(round(t, 9))))
    env.run(until=10)
    return log, tokens, node


A_TOKENS = [0.3, 0.42, 0.53, 0.64, 0.75]
COMMON_STEPS = [  # (t_end, batch_size, batch_tokens, duration, running, swapped, kv_used)
    (0.3, 2, 20, 0.3, 2, 0, 22),
    (0.42, 2, 2, 0.12, 2, 0, 24),
    (0.53, 1, 1, 0.11, 1, 1, 13),
    (0.64, 1, 1, 0.11, 1, 1, 14),
    (0.75, 1, 1, 0.11, 0, 1, 0),
]
ARRIVALS = [(0.0, "arrive", "A", "prompt=10 output=5"), (0.0, "arrive", "B", "prompt=10 output=5"),
            (0.0, "admit", "A", "prefill=10"), (0.0, "admit", "B", "prefill=10")]


def test_swap_over_a_host_link():
    log, tokens, node = run_sim(spec(preemption="swap", swap_gbps=0.08))
    assert tokens["A"] == A_TOKENS
    assert tokens["B"] == [0.3, 0.42, 0.98, 1.09, 1.2]
    assert log.steps == [
        *COMMON_STEPS,
        (0.98, 1, 1, 0.11, 1, 0, 13),  # B landed at 0.87; no step from 0.75 to 0.87
        (1.09, 1, 1, 0.11, 1, 0, 14),
        (1.2, 1, 1, 0.11, 0, 0, 0),
    ]
    assert log.events == [
        *ARRIVALS,
        (0.42, "swap_out", "B", "kv 24+2 > 24; 1200000 B to host 0.420000-0.540000"),
        (0.75, "complete", "A", "tokens=5"),
        (0.75, "swap_in", "B", "1200000 B from host 0.750000-0.870000"),
        (1.2, "complete", "B", "tokens=5"),
    ]
    assert log.mem == [(0.42, "swap_out", "B", 24, 12, "kv 24+2 > 24"),
                       (0.75, "swap_in", "B", 0, 12, "memory freed")]
    core = node.core
    assert core.swap_bytes == 2 * 1_200_000 and core.kv_used == 0 and not core.incoming
    assert core.busy_s == pytest.approx(0.3 + 0.12 + 3 * 0.11 + 3 * 0.11)  # the GPU idled 0.75 .. 0.87
    assert [s.swap_count for s in core.all_seqs] == [0, 1]


def test_free_swap_is_the_default():
    log, tokens, _ = run_sim(spec())
    assert tokens["B"] == [0.3, 0.42, 0.86, 0.97, 1.08]  # 0.12 s earlier than over the link
    assert (0.42, "swap_out", "B", "kv 24+2 > 24") in log.events
    assert (0.75, "swap_in", "B", "") in log.events


def test_recompute_prefills_again():
    log, tokens, node = run_sim(spec(preemption="recompute", swap_gbps=0.08))  # no link used
    assert tokens["A"] == A_TOKENS
    assert tokens["B"] == [0.3, 0.42, 0.97, 1.08, 1.19]
    assert log.steps == [
        *COMMON_STEPS,
        (0.97, 1, 12, 0.22, 1, 0, 13),  # B's prompt (10) and its 2 tokens, prefilled again
        (1.08, 1, 1, 0.11, 1, 0, 14),
        (1.19, 1, 1, 0.11, 0, 0, 0),
    ]
    assert log.events == [
        *ARRIVALS,
        (0.42, "preempt", "B", "recompute: kv 24+2 > 24; dropped 12 KV tokens"),
        (0.75, "complete", "A", "tokens=5"),
        (0.75, "recompute", "B", "prefill=12"),
        (1.19, "complete", "B", "tokens=5"),
    ]
    assert log.mem == [(0.42, "preempt", "B", 24, 12, "kv 24+2 > 24"),
                          (0.75, "recompute", "B", 0, 12, "memory freed")]
    assert node.core.recomputed_tokens == 12 and node.core.swap_bytes == 0 and node.core.kv_used == 0


def test_the_core_needs_no_clock():
    """The same swap run, driven by a plain loop over the clock-free core: the same tokens and steps."""
    log = Log()
    core = ServingCore(spec(preemption="swap", swap_gbps=0.08), np.random.default_rng(0), log)
    tokens: dict[str, list[float]] = {"A": [], "B": []}
    for rid in ("A", "B"):
        core.add(Sequence(rid, 0.0, 10, 5, lambda t, i, rid=rid: tokens[rid].append(round(t, 9))), 0.0)
    now = 0.0
    while True:
        step = core.plan(now)
        if step is None:
            ready = core.next_ready(now)
            if ready is None:
                break
            now = ready
            continue
        now += step.duration_s
        core.finish(step, now)
    assert tokens["B"] == [0.3, 0.42, 0.98, 1.09, 1.2] and tokens["A"] == A_TOKENS
    assert [s.state for s in core.all_seqs] == [FINISHED, FINISHED]
    assert len(log.steps) == 8


def test_scheduler_spec_and_params():
    assert ServerSpec().scheduler.name == "fcfs" and ServerSpec().preemption == "swap"
    assert ServerSpec().swap_gbps is None and ServerSpec().kv_bytes_per_token == 131_072
    assert ServerSpec(scheduler="fcfs").scheduler == ServerSpec().scheduler  # a bare name is enough
    assert schedulers.validate_params("fcfs", {}) == []
    assert schedulers.validate_params("fcfs", {"horizon_s": 1})[0][0] == "horizon_s"  # unknown keys rejected
    with pytest.raises(schedulers.UnknownScheduler, match=r"known: .*\bfcfs\b"):
        schedulers.get("nope")


def test_model_imports_no_driver():
    code = ("import sys, sim.model.serving, sim.model.schedulers; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('simpy', 'asyncio', 'live')); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
