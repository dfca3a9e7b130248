"""The serving node on its own: step timing, budget, memory, preemption, pacing, cancellation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import simpy

from scenarios.schema import ServerSpec
from sim.model.serving import CANCELLED, FINISHED, RUNNING, SWAPPED, Sequence
from sim.node import ServingNode


class Log:
    def __init__(self) -> None:
        self.steps: list[tuple[float, int, int, float]] = []  # (t, size, tokens, duration)
        self.events: list[tuple[float, str, str]] = []
        self.memory_log: list[tuple[str, str, int, int]] = []

    def step(self, t, batch_id, batch_size, batch_tokens, duration_s, waiting, running, swapped, completed, kv_used):
        self.steps.append((round(t, 9), batch_size, batch_tokens, round(duration_s, 9)))

    def event(self, t, kind, req_id, details=""):
        self.events.append((round(t, 9), kind, req_id))

    def memory(self, t, kind, req_id, before, after, reason):
        self.memory_log.append((kind, req_id, before, after))


@dataclass
class World:
    env: simpy.Environment
    node: ServingNode
    log: Log
    tokens: dict[str, list[float]]
    seqs: dict[str, Sequence]


def make(spec: ServerSpec, arrivals: list[tuple[str, float, int, int]]) -> World:
    env = simpy.Environment()
    log = Log()
    node = ServingNode(env, spec, np.random.default_rng(0), log)
    tokens: dict[str, list[float]] = {}
    seqs: dict[str, Sequence] = {}

    def arrive(rid, t, prompt, out):
        yield env.timeout(t)
        tokens[rid] = []
        seqs[rid] = Sequence(rid, env.now, prompt, out, lambda t_s, idx, rid=rid: tokens[rid].append(round(t_s, 9)))
        node.submit(seqs[rid])

    for a in arrivals:
        env.process(arrive(*a))
    return World(env, node, log, tokens, seqs)


def test_hand_computed_steps():
    # d0 = 0.1 s, d1 = 0.01 s per batch token.
    # t=0     A arrives, prefill 10 tokens     -> step 0.1 + 0.10 = 0.20, ends 0.20, A token 0
    # t=0.05  B arrives while the GPU is busy
    # t=0.20  A decode 1 + B prefill 5 = 6      -> 0.16, ends 0.36: A token 1, B token 0
    # t=0.36  A decode + B decode = 2           -> 0.12, ends 0.48: A token 2 (done), B token 1 (done)
    spec = ServerSpec(d0_s=0.1, d1_s=0.01, batch_tokens=100, kv_tokens=1000, max_running=10)
    w = make(spec, [("A", 0.0, 10, 3), ("B", 0.05, 5, 2)])
    env, node, log, tokens = w.env, w.node, w.log, w.tokens
    env.run(until=5)
    assert log.steps == [(0.2, 1, 10, 0.2), (0.36, 2, 6, 0.16), (0.48, 2, 2, 0.12)]
    assert tokens == {"A": [0.2, 0.36, 0.48], "B": [0.36, 0.48]}
    assert node.core.steps == 3 and node.core.completed == 2 and node.core.kv_used == 0
    assert node.core.busy_s == pytest.approx(0.48)


def test_budget_limits_prefill():
    # B = 8: A's prefill (6) fits; B's (5) must wait for the next step, where A's decode (1) + 5 = 6 fit.
    spec = ServerSpec(d0_s=0.1, d1_s=0.0, batch_tokens=8, kv_tokens=1000, max_running=10)
    w = make(spec, [("A", 0.0, 6, 3), ("B", 0.0, 5, 1)])
    env, log, tokens = w.env, w.log, w.tokens
    env.run(until=5)
    assert [s[2] for s in log.steps] == [6, 6, 1]
    assert tokens["B"] == [pytest.approx(0.2)]


def test_preemption_swaps_lifo_victim_and_swaps_back():
    # Memory 30 tokens: A (10+...) and B (10+...) run; growth forces a swap-out of the last to enter (B).
    spec = ServerSpec(d0_s=0.01, d1_s=0.0, batch_tokens=100, kv_tokens=30, max_running=10, victim_policy="LIFO")
    w = make(spec, [("A", 0.0, 10, 8), ("B", 0.0, 10, 8)])
    env, log, tokens, seqs = w.env, w.log, w.tokens, w.seqs
    env.run(until=10)
    kinds = [(k, r) for _, k, r in log.events if k in ("swap_out", "swap_in")]
    assert kinds[0] == ("swap_out", "B")
    assert ("swap_in", "B") in kinds
    assert seqs["A"].state == FINISHED and seqs["B"].state == FINISHED
    assert len(tokens["A"]) == 8 and len(tokens["B"]) == 8
    assert max(b for _, _, b, _ in log.memory_log) <= 30  # type: ignore[attr-defined]
    assert seqs["B"].swap_count >= 1


def test_paced_stream_skips_steps_but_keeps_memory():
    # A paced at 2 tok/s next to an unpaced B: steps every 0.1 s, A generates every 5th step. Between its
    # tokens A stays RUNNING with its KV cache (prompt + tokens so far) held: pacing skips steps, it does not
    # preempt, so resuming costs no swap-in or recompute.
    spec = ServerSpec(d0_s=0.1, d1_s=0.0, batch_tokens=100, kv_tokens=1000, max_running=10)
    w = make(spec, [("A", 0.0, 10, 4), ("B", 0.0, 10, 30)])
    env, node, tokens, seqs = w.env, w.node, w.tokens, w.seqs
    env.run(until=0.05)
    seqs["A"].set_rate(env.now, 2.0)
    a, b = seqs["A"], seqs["B"]
    held: list[tuple[float, int, int]] = []  # (t, A's generated, kv_used) sampled mid-step while A is paced
    for k in range(1, 16):  # 0.15 .. 1.55 s: between steps, before A's last token at 1.6 s
        env.run(until=0.05 + 0.1 * k)
        assert a.state == RUNNING and a in node.core.running, (env.now, a.state)
        assert node.core.kv_used == (10 + a.generated) + (10 + b.generated), (env.now, node.core.kv_used)
        held.append((env.now, a.generated, node.core.kv_used))
    assert [g for _, g, _ in held] == [1] * 5 + [2] * 5 + [3] * 5  # A skipped 4 of every 5 steps B took
    env.run(until=10)
    assert tokens["A"] == [0.1, pytest.approx(0.6), pytest.approx(1.1), pytest.approx(1.6)]
    gaps = np.diff(tokens["A"])
    assert len(gaps) == 3 and np.allclose(gaps, 0.5)  # 2 tokens/s exactly, on step boundaries
    assert len(tokens["B"]) == 30
    assert w.log.memory_log == []  # no swap-out or swap-in: A's memory was held throughout
    assert a.swap_count == 0 and node.core.kv_used == 0  # and freed when both finished


def test_paused_node_idles_until_rate_rises():
    spec = ServerSpec(d0_s=0.1, d1_s=0.0, batch_tokens=100, kv_tokens=1000, max_running=10)
    w = make(spec, [("A", 0.0, 10, 3)])
    env, node, tokens, seqs = w.env, w.node, w.tokens, w.seqs
    env.run(until=0.05)
    seqs["A"].set_rate(env.now, 0.0)
    env.run(until=3.0)
    assert tokens["A"] == [0.1]  # the prefill already consumed its credit; then paused
    seqs["A"].set_rate(env.now, None)
    node.wake()
    env.run(until=5)
    assert tokens["A"] == [0.1, pytest.approx(3.1), pytest.approx(3.2)]
    assert node.core.busy_s == pytest.approx(0.3)


def test_cancel_takes_effect_within_one_step():
    spec = ServerSpec(d0_s=0.1, d1_s=0.0, batch_tokens=100, kv_tokens=1000, max_running=10)
    w = make(spec, [("A", 0.0, 10, 100)])
    env, node, tokens, seqs = w.env, w.node, w.tokens, w.seqs
    env.run(until=0.55)
    node.cancel(seqs["A"])
    env.run(until=5)
    assert seqs["A"].state == CANCELLED
    assert len(tokens["A"]) == 6  # the step running at 0.55 finishes (0.6), nothing after
    assert node.core.kv_used == 0


def test_swapped_state_visible():
    spec = ServerSpec(d0_s=0.01, d1_s=0.0, batch_tokens=100, kv_tokens=25, max_running=10)
    w = make(spec, [("A", 0.0, 10, 20), ("B", 0.0, 10, 20)])
    env, seqs = w.env, w.seqs
    env.run(until=0.1)
    assert SWAPPED in {seqs["A"].state, seqs["B"].state}
