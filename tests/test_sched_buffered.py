"""Buffer-aware schedulers (``tokenflow``, ``tokenpace``): who gives KV memory up, who comes back, who is admitted.

Hand-computed on the clock-free core. The node: d0 = 0.125 s, d1 = 0 (every step 0.125 s, exact in
binary), budget 100, free swaps (round trip 0), margins at their defaults (preempt 2 s, resume 1 s:
a stream may give memory up with 3 s of buffer, comes back with 1 s left).

Two streams at t = 0, A and B, 10-token prompts, admitted together: token k (k = 0, 1, ...) of each is
made at 0.125 (k + 1). A's reader reads 8 tokens/s (one a step: its read-on-schedule buffer stays 0),
B's 4 tokens/s, so after n tokens B's token n-1 is due at 0.125 + 0.25 (n - 1) and its buffer (TokenFlow's,
generated minus read on schedule) at t = 0.125 n is 0.125 n - 0.125 s. At t = 4.0 (n = 32): B's buffer
3.875 s, slack 3.875 - 1 = 2.875 >= 2; A's 0. KV: 2 x (10 + 32) = 84 of 94.

C arrives at t = 4.0 with a 10-token prompt: 84 + 2 decodes + 11 = 97 > 94, 3 tokens short.
  fcfs: C waits until A completes (40 tokens, at 5.0): C's first token at 5.125 (TTFT 1.125 s); B is
    preempted anyway when growth overflows at 4.625 and resumed at 5.0.
  tokenflow: B can afford it: swapped out (free: 43 tokens back), C admitted, first token at 4.125
    (TTFT 0.125 s). B's token 31 is due at 7.875: urgent from 5.875. At 5.0 A completes; B is not urgent
    (slack 7.875 - 5 - 1 = 1.875) but memory is free (C 18 + 1 + B 42 + 1 = 62 <= 94): B comes back into
    it at 5.0 and makes its 18 remaining tokens at 5.125 .. 7.25, before its reader needs them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from analysis.results import load_controller_dir
from controllers import Decision, Observation
from scenarios import parse_scenario
from scenarios.loader import LoadedScenario
from scenarios.schema import ServerSpec
from sim.model import schedulers
from sim.model.schedulers.buffered import round_trip_s
from sim.model.serving import FINISHED, Sequence, ServingCore
from sim.model.workload import draw_requests
from sim.world import run_controller


class Log:
    def __init__(self) -> None:
        self.steps: list[tuple] = []
        self.events: list[tuple[float, str, str, str]] = []

    def step(self, t, batch_id, batch_size, batch_tokens, duration_s, waiting, running, swapped, completed, kv_used):
        self.steps.append((t, batch_size, batch_tokens, waiting, running, swapped, completed, kv_used))

    def event(self, t, kind, req_id, details=""):
        self.events.append((t, kind, req_id, details))

    def memory(self, t, kind, req_id, before, after, reason):
        pass


def spec(**kw) -> ServerSpec:
    base = {"d0_s": 0.125, "d1_s": 0.0, "batch_tokens": 100, "kv_tokens": 94, "max_running": 10,
            "victim_policy": "LIFO"}
    base.update(kw)
    return ServerSpec(**base)


class Driver:
    """The core under a plain loop; ``at`` holds things to do at given times (arrivals, observations)."""

    def __init__(self, server: ServerSpec, scheduler: str) -> None:
        self.log = Log()
        self.core = ServingCore(server, np.random.default_rng(0), self.log, scheduler=schedulers.make(scheduler))
        self.tokens: dict[str, list[float]] = {}
        self.at: list[tuple[float, object]] = []

    def add(self, rid: str, prompt: int, output: int, reading_tps: float | None, now: float = 0.0) -> Sequence:
        self.tokens[rid] = []
        s = Sequence(rid, now, prompt, output, lambda t, i, rid=rid: self.tokens[rid].append(t), reading_tps)
        self.core.add(s, now)
        return s

    def run(self, until: float = 60.0) -> None:
        core, now = self.core, 0.0
        pending = sorted(self.at, key=lambda x: x[0])
        while now < until:
            while pending and pending[0][0] <= now:
                pending.pop(0)[1]()  # type: ignore[operator]
            step = core.plan(now)
            if step is None:
                ready = core.next_ready(now)
                nxt = [t for t in (ready, pending[0][0] if pending else None) if t is not None]
                if not nxt:
                    break
                now = max(now, min(nxt))
                continue
            now += step.duration_s
            core.finish(step, now)


def burst(scheduler: str) -> Driver:
    d = Driver(spec(), scheduler)
    d.add("A", 10, 40, 8.0)
    d.add("B", 10, 50, 4.0)
    d.at.append((4.0, lambda: d.add("C", 10, 20, 4.0, now=4.0)))
    return d


def steps(t0: float, n: int) -> list[float]:
    return [t0 + 0.125 * k for k in range(1, n + 1)]


def test_tokenflow_preempts_the_largest_buffer_for_a_new_arrival():
    d = burst("tokenflow")
    d.run()
    assert d.tokens["A"] == steps(0.0, 40)
    assert d.tokens["C"] == steps(4.0, 20)  # TTFT 0.125 s
    assert d.tokens["B"] == steps(0.0, 32) + steps(5.0, 18)
    assert [e for e in d.log.events if e[1] in ("swap_out", "swap_in", "admit")] == [
        (0.0, "admit", "A", "prefill=10"), (0.0, "admit", "B", "prefill=10"),
        (4.0, "swap_out", "B", "buffer 2.875s beyond its round trip; room for C"),
        (4.0, "admit", "C", "prefill=10"),
        (5.0, "swap_in", "B", ""),
    ]
    assert d.core.kv_used == 0 and all(s.state == FINISHED for s in d.core.all_seqs)


def test_fcfs_makes_the_arrival_wait():
    d = burst("fcfs")
    d.run()
    assert d.tokens["C"] == steps(5.0, 20)  # TTFT 1.125 s: admitted when A completes
    # at 4.625 the two streams' growth overflows (2 x 47 + 2 > 94): fcfs preempts the last to enter, B,
    # whose reader had 4.75 s of buffer, and brings it back (before admitting C) when A completes
    assert d.tokens["B"] == steps(0.0, 37) + steps(5.0, 13)
    assert preempted(d) == [(4.625, "B", "kv 94+2 > 94")] and d.core.kv_used == 0


def test_tokenpace_without_observations_is_fcfs():
    """No stream has an Observation: tokenpace decides as fcfs, even with memory short."""
    ref, d = burst("fcfs"), burst("tokenpace")
    ref.run()
    d.run()
    assert d.log.steps == ref.log.steps and d.log.events == ref.log.events and d.tokens == ref.tokens


def obs(t: float, rid: str, acked: int, generated: int, est: float, queued: int, reading_tps: float,
        retrans: int = 0) -> Observation:
    return Observation(t_s=t, stream_id=rid, srtt_ms=60.0, rtt_min_ms=60.0, rtt_p95_ms=60.0, retrans=retrans,
                       cwnd_pkts=10, inflight_bytes=min(queued, 2560), queued_bytes=queued, acked_tokens=acked,
                       generated_tokens=generated, reading_tps=reading_tps, client_buffer_est=est)


def network_case(scheduler: str, b_stalled: bool = False) -> Driver:
    """A (reader 4 tok/s) is paced by its controller (decision 4 tok/s) and its client has acked 30 of its
    32 tokens, 14 unread; B's reader is slower (2 tok/s), so TokenFlow sees B's buffer as the larger
    (15.625 - 4.0 = 11.625 s against A's 3.875 s), but B's path is faded: 6 of 32 acked, 1 acked in the
    last 0.875 s, half a token unread.

    tokenpace at t = 4.0 (observations from 3.875: age 0.125, horizon 0 + 1 s, so T = 1.125 s):
      A: acked rate (30 - 22) / 0.875 = 9.14 tok/s; backlog 32 - 30 = 2, all deliverable;
         slack (14 + 2) / 4 - 1.125 = 2.875 >= 2, held back (rank 1): gives its memory up.
      B: acked rate 1 / 0.875 = 1.14 tok/s; of its 26-token backlog 1.14 x 1.125 = 1.29 arrive in time;
         slack (0.5 + 1.29) / 2 - 1.125 = -0.23: cannot afford it.
    With B's path stalled instead (no ack since 2.5, bytes queued: 1.375 s >= stall_s), B cannot feed its
    reader anyway: it gives its memory up first (rank 0).
    """
    d = Driver(spec(), scheduler)
    d.add("A", 10, 40, 4.0)
    d.add("B", 10, 50, 2.0)
    d.at.append((4.0, lambda: d.add("C", 10, 20, 4.0, now=4.0)))
    core = d.core
    paced = Decision(rate_tps=4.0)
    b0 = (2.5, 6) if b_stalled else (3.0, 5)

    def first() -> None:
        core.observe("A", obs(3.0, "A", 22, 24, 10.0, 512, 4.0), paced)
        core.observe("B", obs(b0[0], "B", b0[1], 24, 0.5, 18 * 256, 2.0), Decision(None))

    def second() -> None:
        core.observe("A", obs(3.875, "A", 30, 31, 14.0, 256, 4.0), paced)
        core.observe("B", obs(3.875, "B", 6, 31, 0.5, 25 * 256, 2.0), Decision(None))

    d.at += [(b0[0], first), (3.875, second)]
    return d


def preempted(d: Driver) -> list[tuple[float, str, str]]:
    return [(e[0], e[2], e[3]) for e in d.log.events if e[1] == "swap_out"]


def test_tokenpace_preempts_the_paced_stream_whose_acked_buffer_covers_not_the_stuck_one():
    tf, tp = network_case("tokenflow"), network_case("tokenpace")
    tf.run()
    tp.run()
    assert preempted(tf)[0] == (4.0, "B", "buffer 10.625s beyond its round trip; room for C")
    assert preempted(tp)[0] == (4.0, "A", "buffer 2.875s beyond its round trip; room for C")
    # its last observation's view (the core forgets a finished stream's observation: hand it back)
    tp.core.observe("B", obs(3.875, "B", 6, 31, 0.5, 25 * 256, 2.0), Decision(None))
    rank, slack = tp.core.scheduler.assess(tp.core, tp.core.by_id["B"], 4.0, 1.0)
    assert rank == 2 and slack == pytest.approx((0.5 + 1 / 0.875 * 1.125) / 2 - 1.125)  # -0.23
    for d in (tf, tp):
        assert d.tokens["C"][0] == 4.125 and d.core.kv_used == 0
        assert all(s.state == FINISHED for s in d.core.all_seqs)


def test_tokenpace_gives_a_stalled_path_s_memory_up_first():
    d = network_case("tokenpace", b_stalled=True)
    d.run()
    assert preempted(d)[0] == (4.0, "B", "buffer infs beyond its round trip; room for C")
    assert d.core.kv_used == 0


def test_round_trip_of_a_swap_over_the_host_link():
    # 42 KV tokens x 100 000 B at 1e7 B/s: 0.42 s each way, after 0.3 s already queued on the link
    core = ServingCore(spec(swap_gbps=0.08, kv_bytes_per_token=100_000), np.random.default_rng(0), Log(),
                       scheduler=schedulers.make("tokenflow"))
    s = Sequence("A", 0.0, 10, 40, lambda t, i: None, 4.0)
    core.add(s, 0.0)
    core.admit(s, 0.0)
    s.generated = 32
    core.link_free_s = 1.3
    assert round_trip_s(core, s, 1.0) == pytest.approx(0.3 + 2 * 0.42)
    core.preempt(s, 1.0, "test")  # the swap-out queues behind 1.3: back in takes 0.42 after 1.72
    assert round_trip_s(core, s, 1.0) == pytest.approx(0.72 + 0.42)
    rc = ServingCore(spec(preemption="recompute"), np.random.default_rng(0), Log(), scheduler=schedulers.make("fcfs"))
    assert round_trip_s(rc, s, 1.0) == pytest.approx(0.125)  # d0 + d1 x 42 with d1 = 0


@pytest.mark.parametrize("scheduler", ["tokenpace", "tokenflow"])
def test_with_ample_memory_every_step_is_fcfs_s(scheduler):
    """Twelve streams, some paced, observations every 0.1 s: memory never short, every decision fcfs's."""

    def build(name: str) -> Driver:
        d = Driver(spec(kv_tokens=100_000, batch_tokens=64, max_running=8), name)
        rng = np.random.default_rng(7)
        for i in range(12):
            t0, p, n = float(rng.uniform(0, 3)), int(rng.integers(5, 40)), int(rng.integers(10, 60))
            r = float(rng.uniform(3, 9))
            d.at.append((t0, lambda rid=f"s{i}", t0=t0, p=p, n=n, r=r: d.add(rid, p, n, r, now=t0)))
        for k in range(1, 120):
            t = round(0.1 * k, 9)

            def control(t=t, d=d) -> None:
                for s in list(d.core.running) + list(d.core.swapped):
                    rate = 5.0 if int(s.req_id[1:]) % 3 == 0 else None
                    if rate != s.rate_tps:
                        s.set_rate(t, rate)
                    d.core.observe(s.req_id, obs(t, s.req_id, max(0, s.generated - 3), s.generated, 2.0, 768,
                                                 5.0), Decision(rate))
            d.at.append((t, control))
        return d

    ref, d = build("fcfs"), build(scheduler)
    ref.run()
    d.run()
    assert len(d.log.steps) > 100 and max(row[4] for row in d.log.steps) == 8  # max_running binds, memory not
    assert d.log.steps == ref.log.steps and d.log.events == ref.log.events and d.tokens == ref.tokens
    assert d.core.kv_used == 0


def test_params_validated():
    assert schedulers.validate_params("tokenpace", {"stall_s": 0.5, "ack_window_s": 2}) == []
    assert schedulers.validate_params("tokenflow", {"preempt_margin_s": 0.5})[0][1].endswith(
        "resume_margin_s must not exceed preempt_margin_s (a stream would thrash)")
    assert schedulers.validate_params("tokenflow", {"stall_s": 1})[0][0] == "stall_s"  # tokenpace's only
    assert schedulers.get("tokenpace").uses_observations and not schedulers.get("tokenflow").uses_observations


SCENARIO = Path(__file__).parent / "scenarios" / "kv-tiny-buffered.yaml"


def _e2e(tmp_path: Path, scheduler: str, controller: str) -> tuple[float, int, float]:
    raw = yaml.safe_load(SCENARIO.read_text())
    raw["server"]["scheduler"] = scheduler
    loaded = LoadedScenario(parse_scenario(raw, SCENARIO.name), SCENARIO, raw)
    run_controller(loaded, draw_requests(loaded.scenario, loaded.base_dir), controller, {}, tmp_path / scheduler, 5)
    run = load_controller_dir(tmp_path / scheduler)
    swaps = sum(1 for k in run.events["event_type"] if k == "swap_out")
    return float(np.mean(run.streams["qoe"])), swaps, float(run.server["gpu_memory_used"][-1])


@pytest.mark.parametrize("scheduler", ["tokenflow", "tokenpace"])
def test_kv_bound_end_to_end_paced_streams_give_memory_up(tmp_path, scheduler):
    """The paced ``buffer`` controller on a KV-bound node: under fcfs its streams hold memory while held back
    and arrivals queue (mean QoE 0.668, 6 of 20 readers leave); buffer-aware scheduling moves that memory to
    the arrivals (measured: 0.981, nobody leaves)."""
    fcfs_qoe, fcfs_swaps, _ = _e2e(tmp_path / "f", "fcfs", "buffer")
    qoe, swaps, kv_end = _e2e(tmp_path, scheduler, "buffer")
    assert fcfs_qoe == pytest.approx(0.668, abs=0.001)
    assert qoe == pytest.approx(0.981, abs=0.001)
    assert swaps > fcfs_swaps and kv_end == 0
