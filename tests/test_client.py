"""The reader on SimPy's clock (sim.client): display schedule, stalls that shift it, abandonment after patience."""

from __future__ import annotations

import pytest
import simpy

from sim.client import Reader
from sim.model.reader import ABANDONED, COMPLETED


def feed(arrivals: list[tuple[float, int]], n: int, tps: float = 10.0, patience: float = 2.0, first: float = 5.0,
         until: float = 100.0):
    env = simpy.Environment()
    ended = []
    r = Reader(env, 0.0, n, tps, patience, first, ended.append)

    def proc():
        for t, count in arrivals:
            yield env.timeout(t - env.now)
            r.on_bytes(count)  # one byte per token

    env.process(proc())
    env.run(until=until)
    return r, ended


def test_display_follows_reading_pace_when_tokens_are_early():
    # all 5 tokens arrive at t=1: displayed at 1.0, 1.1, ..., 1.4 (10 tok/s), no stall
    r, ended = feed([(1.0, 5)], 5)
    assert r.t_displayed == pytest.approx([1.0, 1.1, 1.2, 1.3, 1.4])
    assert r.stall_s == 0 and r.state == COMPLETED and r.end_s == pytest.approx(1.4) and ended == [r]


def test_stall_shifts_the_schedule():
    # token 0 at 1.0; token 1 due at 1.1 but arrives at 1.5 -> stall 0.4; token 2 arrives 1.5, shown 1.6
    r, _ = feed([(1.0, 1), (1.5, 3)], 3)
    assert r.t_displayed == pytest.approx([1.0, 1.5, 1.6])
    assert r.stall_s == pytest.approx(0.4)


def test_abandons_after_patience_of_continuous_stall():
    # token 0 at 1.0, token 1 due at 1.1; nothing else arrives -> leaves at 1.1 + 2.0 = 3.1
    r, ended = feed([(1.0, 1), (10.0, 5)], 5)
    assert r.state == ABANDONED and r.end_s == pytest.approx(3.1) and r.received == 1
    assert r.stall_s == pytest.approx(2.0)
    assert ended == [r]


def test_tokens_arriving_just_in_time_rearm_the_timer():
    # one token every 1.9 s with patience 2 s: stalls of 1.8 s each but never abandons
    arrivals = [(1.0 + 1.9 * i, i + 1) for i in range(6)]
    r, _ = feed(arrivals, 6)
    assert r.state == COMPLETED
    assert r.stall_s == pytest.approx(5 * 1.8)


def test_first_token_patience():
    r, _ = feed([(6.0, 3)], 3, first=5.0)
    assert r.state == ABANDONED and r.end_s == pytest.approx(5.0) and r.received == 0
