"""The live engine's asyncio driver of the serving core, on virtual time (no root, no network).

The engine runs on an asyncio loop whose clock is virtual: when nothing is ready, the loop's
selector jumps the clock to the next timer instead of blocking. The engine's clock is the same
virtual clock, so every step takes exactly ``d0 + d1 * batch_tokens`` and the figures below are
the hand-computed ones of ``tests/test_preemption_cost.py`` (d0 = 0.1 s, d1 = 0.01 s/token,
budget 100, KV 24 tokens, LIFO; A and B at t = 0, 10-token prompts, 5 output tokens; a KV token is
100 000 B, the swap link 0.08 Gb/s = 1e7 B/s, so 0.01 s per KV token):

* swap over the link: B is swapped out at 0.42 (its 12 KV tokens on the link 0.42 .. 0.54), comes
  back when A completes at 0.75, its transfer lands at 0.87 and nothing steps until then: B's
  tokens at 0.3, 0.42, 0.98, 1.09, 1.20;
* recompute: B's KV is dropped at 0.42; at 0.75 its prompt and 2 generated tokens are prefilled
  again in one 0.22 s step: B's tokens at 0.3, 0.42, 0.97, 1.08, 1.19.

Both also equal, row for row, the simulator's SimPy driver (``sim.node.ServingNode``) on the same
core: one node, two clocks. The old engine could not run either (its ``_plan`` raised
NotImplementedError for recompute and a swap link).
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
import simpy

from controllers import Decision, Observation
from live.serve.backends.engine import LiveEngine, LiveSequence
from scenarios.schema import ServerSpec
from sim.model.schedulers.fcfs import Fcfs
from sim.model.serving import CANCELLED, FINISHED, Sequence
from sim.node import ServingNode

pytestmark = pytest.mark.timeout(30)


class VirtualClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class _JumpingSelector(selectors.SelectSelector):
    """Polls without blocking; when nothing is ready, moves the clock to the loop's next timer."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self.clock = clock

    def select(self, timeout: float | None = None) -> list[Any]:
        ready = super().select(0)
        if not ready and timeout is None:
            raise RuntimeError("deadlock: nothing scheduled and nothing ready")
        if not ready and timeout > 0:
            self.clock.t += timeout
        return ready


def run_virtual(main: Callable[[VirtualClock], Awaitable[Any]]) -> Any:
    clock = VirtualClock()
    loop = asyncio.SelectorEventLoop(_JumpingSelector(clock))
    loop.time = clock  # type: ignore[method-assign]  # timers are set and fired on virtual time
    try:
        return loop.run_until_complete(main(clock))
    finally:
        loop.close()


class Log:
    def __init__(self) -> None:
        self.steps: list[tuple[float, ...]] = []
        self.events: list[tuple[Any, ...]] = []
        self.mem: list[tuple[Any, ...]] = []

    def step(self, t: float, batch_id: int, batch_size: int, batch_tokens: int, duration_s: float, waiting: int,
             running: int, swapped: int, completed: int, kv_used: int) -> None:
        self.steps.append((round(t, 9), batch_size, batch_tokens, round(duration_s, 9), running, swapped, kv_used))

    def event(self, t: float, kind: str, req_id: str, details: str = "") -> None:
        self.events.append((round(t, 9), kind, req_id, details))

    def memory(self, t: float, kind: str, req_id: str, before: int, after: int, reason: str) -> None:
        self.mem.append((round(t, 9), kind, req_id, before, after, reason))


def spec(**kw: Any) -> ServerSpec:
    return ServerSpec(d0_s=0.1, d1_s=0.01, batch_tokens=100, kv_tokens=24, max_running=10, victim_policy="LIFO",
                      kv_bytes_per_token=100_000, **kw)


def run_live(server: ServerSpec, n_out: int = 5, **engine_kw: Any) -> tuple[Log, dict[str, list[float]], LiveEngine]:
    """A and B (10-token prompts) submitted at t = 0 to a live engine; runs until both are done."""
    log = Log()
    tokens: dict[str, list[float]] = {"A": [], "B": []}

    async def main(clock: VirtualClock) -> LiveEngine:
        engine = LiveEngine(server, log=log, clock=clock, **engine_kw)
        done = asyncio.Event()

        def on_token(rid: str) -> Callable[[float, int], None]:
            def f(t: float, idx: int) -> None:
                assert idx == len(tokens[rid])  # in order, none skipped
                tokens[rid].append(round(t, 9))
                if all(len(v) == n_out for v in tokens.values()):
                    done.set()
            return f

        engine.start()
        for rid in ("A", "B"):
            engine.submit(engine.new_sequence(rid, 10, n_out, on_token(rid)))
        await done.wait()
        await engine.stop()
        return engine

    return log, tokens, run_virtual(main)


def run_sim(server: ServerSpec) -> tuple[Log, dict[str, list[float]]]:
    env = simpy.Environment()
    log = Log()
    node = ServingNode(env, server, np.random.default_rng(0), log)
    tokens: dict[str, list[float]] = {"A": [], "B": []}
    for rid in ("A", "B"):
        node.submit(Sequence(rid, 0.0, 10, 5, lambda t, i, rid=rid: tokens[rid].append(round(t, 9))))
    env.run(until=10)
    return log, tokens


A_TOKENS = [0.3, 0.42, 0.53, 0.64, 0.75]


def test_swap_over_a_host_link_runs_live_as_in_the_simulator() -> None:
    server = spec(preemption="swap", swap_gbps=0.08)
    log, tokens, engine = run_live(server)
    assert tokens == {"A": A_TOKENS, "B": [0.3, 0.42, 0.98, 1.09, 1.2]}
    assert (0.42, "swap_out", "B", "kv 24+2 > 24; 1200000 B to host 0.420000-0.540000") in log.events
    assert (0.75, "swap_in", "B", "1200000 B from host 0.750000-0.870000") in log.events
    assert log.mem == [(0.42, "swap_out", "B", 24, 12, "kv 24+2 > 24"), (0.75, "swap_in", "B", 0, 12, "memory freed")]
    assert log.steps[-3] == (0.98, 1, 1, 0.11, 1, 0, 13)  # B landed at 0.87: no step from 0.75 to 0.87
    core = engine.core
    assert core.swap_bytes == 2 * 1_200_000 and core.kv_used == 0 and engine.active() == 0
    assert engine.busy_s == pytest.approx(0.3 + 0.12 + 6 * 0.11) and engine.tokens_generated == 10
    assert not core.by_id and not core.observations  # finished sequences left the core's index
    sim_log, sim_tokens = run_sim(server)
    assert (log.steps, log.events, log.mem, tokens) == (sim_log.steps, sim_log.events, sim_log.mem, sim_tokens)


def test_recompute_runs_live_as_in_the_simulator() -> None:
    server = spec(preemption="recompute")
    log, tokens, engine = run_live(server)
    assert tokens == {"A": A_TOKENS, "B": [0.3, 0.42, 0.97, 1.08, 1.19]}
    assert (0.75, "recompute", "B", "prefill=12") in log.events
    assert (0.97, 1, 12, 0.22, 1, 0, 13) in log.steps  # the prompt and 2 generated tokens, prefilled again
    assert engine.core.recomputed_tokens == 12 and engine.kv_used == 0
    sim_log, sim_tokens = run_sim(server)
    assert (log.steps, log.events, log.mem, tokens) == (sim_log.steps, sim_log.events, sim_log.mem, sim_tokens)


def test_a_paced_stream_waits_for_its_credit_then_steps() -> None:
    """One stream at 10 tok/s on a 0.01 s step: token 0 at 0.01 (prefill spends the credit); then the
    engine idles until the credit is back at 0.1 (next_ready), and so on: 0.11, 0.21, 0.31."""
    tokens: list[float] = []

    async def main(clock: VirtualClock) -> LiveEngine:
        engine = LiveEngine(ServerSpec(d0_s=0.01, d1_s=0.0), clock=clock)
        done = asyncio.Event()

        def on_token(t: float, idx: int) -> None:
            tokens.append(round(t, 9))
            if idx == 3:
                done.set()

        engine.start()
        seq = engine.new_sequence("A", 1, 4, on_token, reading_tps=10.0, ttft_expected_s=0.5)
        seq.set_rate(clock(), 10.0)
        engine.submit(seq)
        await done.wait()
        await engine.stop()
        return engine

    engine = run_virtual(main)
    assert tokens == [0.01, 0.11, 0.21, 0.31]
    assert engine.steps == 4 and engine.busy_s == pytest.approx(0.04)
    seq = next(iter(engine.all_seqs))
    assert (seq.reading_tps, seq.ttft_expected_s) == (10.0, 0.5)  # the request's reader hint
    assert seq.due_s == pytest.approx(0.31)  # read on schedule: each token made just when due


@pytest.mark.parametrize("how", ["detach", "transport closed"])
def test_a_departed_client_leaves_at_the_next_step_boundary(how: str) -> None:
    """d0 = 0.1 s steps. The client leaves at 0.15, inside the step planned at 0.1: that step still
    makes token 1 at 0.2, and the stream is dropped before the next plan. A detach seen at 0.15
    counts that token as made after the departure (not a zombie: the step was planned before it); a
    closed transport is only noticed when the engine looks, at 0.2, after it."""
    tokens: list[float] = []
    log = Log()
    gone_at = 0.15

    async def main(clock: VirtualClock) -> tuple[LiveEngine, LiveSequence]:
        engine = LiveEngine(ServerSpec(d0_s=0.1, d1_s=0.0), clock=clock, log=log)
        engine.start()
        alive = (lambda: clock() < gone_at) if how == "transport closed" else None
        seq = engine.new_sequence("A", 1, 10, lambda t, i: tokens.append(round(t, 9)), alive)
        engine.submit(seq)
        if how == "detach":
            asyncio.get_running_loop().call_at(gone_at, engine.detach, seq)
        await asyncio.sleep(1.0)
        await engine.stop()
        return engine, seq

    engine, seq = run_virtual(main)
    assert tokens == [0.1, 0.2]
    assert log.events[-1] == (0.2, "cancel", "A", "generated=2")
    assert seq.state == CANCELLED and engine.active() == 0 and engine.kv_used == 0
    assert engine.tokens_after_detach == (1 if how == "detach" else 0) and engine.zombie_streams == 0
    assert seq.detached_s == pytest.approx(gone_at if how == "detach" else 0.2)
    assert not seq.alive() and "A" not in engine.core.by_id  # let go of its handler and its index entry


class ObservingFcfs(Fcfs):
    """fcfs that asks for Observations (only to see them reach the core)."""

    name = "observing-fcfs"
    uses_observations = True


def _obs(sid: str, t: float) -> Observation:
    return Observation(t_s=t, stream_id=sid, srtt_ms=20.0, rtt_min_ms=None, rtt_p95_ms=None, retrans=0, cwnd_pkts=10,
                       inflight_bytes=0, queued_bytes=0, acked_tokens=0, generated_tokens=0, reading_tps=5.0,
                       client_buffer_est=0.0)


@pytest.mark.parametrize("scheduler", [None, ObservingFcfs()])
def test_observations_reach_a_scheduler_that_uses_them(scheduler: Any) -> None:
    seen: list[Any] = []

    async def main(clock: VirtualClock) -> LiveEngine:
        engine = LiveEngine(ServerSpec(d0_s=0.1, d1_s=0.0), clock=clock, scheduler=scheduler)
        engine.start()
        seq = engine.new_sequence("A", 1, 3, lambda t, i: None)
        engine.submit(seq)
        engine.observe("A", _obs("A", 0.0), Decision(7.0))
        engine.observe("nobody", _obs("nobody", 0.0), Decision(None))  # not held: dropped
        seen.append(engine.core.observation("A"))
        await asyncio.sleep(1.0)
        seen.append(engine.core.observation("A"))
        await engine.stop()
        return engine

    engine = run_virtual(main)
    if scheduler is None:  # fcfs does not use them: nothing is kept
        assert engine.uses_observations is False and seen == [None, None]
    else:
        assert engine.uses_observations is True and seen[0][1] == Decision(7.0)
        assert seen[1] is None  # the stream finished: its observation went with it
    assert "nobody" not in engine.core.observations
    assert next(iter(engine.all_seqs)).state == FINISHED


def test_keep_seqs_bounds_what_the_engine_remembers() -> None:
    async def main(clock: VirtualClock) -> LiveEngine:
        engine = LiveEngine(ServerSpec(d0_s=0.01, d1_s=0.0), clock=clock, keep_seqs=3)
        engine.start()
        for i in range(8):
            engine.submit(engine.new_sequence(f"s{i}", 1, 2, lambda t, i: None))
        await asyncio.sleep(1.0)
        await engine.stop()
        return engine

    engine = run_virtual(main)
    assert [s.req_id for s in engine.all_seqs] == ["s5", "s6", "s7"]
    assert engine.completed == 8 and not engine.core.by_id
