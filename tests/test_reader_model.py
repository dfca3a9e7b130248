"""The clock-free reader model (sim.model.reader), by hand; and its two drivers agreeing.

DESIGN.md "Reader and stall": token i is displayed no earlier than it arrives and no earlier than
1/reading_tps after token i-1; a due token that has not arrived is a stall that shifts the schedule;
after patience_s of continuous stall (or first_patience_s of waiting for the first token) the reader
leaves. The SimPy driver (sim.client.Reader) and the asyncio one (live.loadgen.client.LiveReader) must show
the same tokens at the same times for the same arrivals.
"""

from __future__ import annotations

import asyncio
import math

import pytest
import simpy

from live.loadgen.client import LiveReader
from sim.client import Reader
from sim.model.reader import ABANDONED, CANCELLED, COMPLETED, READING, ReaderModel


def test_display_times_and_stall_at_ten_tokens_a_second() -> None:
    # 0 -> shown at once; 0.05 -> due at 0.1, shown then; 0.5 -> due at 0.2, shown on arrival: 0.3 s of stall
    r = ReaderModel(0.0, 3, 10.0, 2.0, 5.0)
    assert r.receive(1, 0.0) and r.receive(2, 0.05) and r.state == READING
    assert r.t_displayed[:2] == pytest.approx([0.0, 0.1]) and r.stall_s == 0.0
    assert r.deadline_s == pytest.approx(0.1 + 0.1 + 2.0)  # the next due time plus patience
    assert r.receive(3, 0.5)
    assert r.t_received == pytest.approx([0.0, 0.05, 0.5])
    assert r.t_displayed == pytest.approx([0.0, 0.1, 0.5])
    assert r.stall_s == pytest.approx(0.3)
    assert r.state == COMPLETED and r.end_s == pytest.approx(0.5)


def test_tokens_arriving_together_are_read_at_the_readers_pace() -> None:
    r = ReaderModel(0.0, 5, 10.0, 2.0, 5.0)
    assert r.receive(5, 1.0)
    assert r.t_displayed == pytest.approx([1.0, 1.1, 1.2, 1.3, 1.4]) and r.t_received == [1.0] * 5
    assert r.stall_s == 0.0 and r.state == COMPLETED and r.end_s == pytest.approx(1.4)


def test_nothing_new_changes_nothing() -> None:
    r = ReaderModel(0.0, 4, 10.0, 2.0, 5.0)
    assert r.receive(2, 0.0)
    deadline = r.deadline_s
    assert not r.receive(2, 0.3) and not r.receive(1, 0.3)
    assert r.received == 2 and r.deadline_s == deadline and r.stall_s == 0.0


def test_patience_abandonment_counts_the_stall_up_to_leaving() -> None:
    # tokens at 0, 0.05, 0.5 of 4; token 3 is due at 0.6, patience 2 s: the reader leaves at 2.6
    r = ReaderModel(0.0, 4, 10.0, 2.0, 5.0)
    for count, t in ((1, 0.0), (2, 0.05), (3, 0.5)):
        r.receive(count, t)
    assert r.deadline_s == pytest.approx(2.6)
    assert not r.expire(2.5) and r.state == READING  # a timer that fired early: still reading
    assert r.expire(2.6)
    assert r.state == ABANDONED and r.end_s == 2.6 and r.received == 3
    assert r.stall_s == pytest.approx(0.3 + 2.0)
    assert not r.receive(4, 2.7) and r.received == 3  # too late: it has left
    assert not r.expire(3.0) and r.end_s == 2.6


def test_first_token_patience_and_the_deadline_it_gives_way_to() -> None:
    quitter = ReaderModel(1.0, 3, 10.0, 2.0, 5.0)
    assert quitter.deadline_s == 6.0
    assert quitter.expire(6.0)
    assert quitter.state == ABANDONED and quitter.end_s == 6.0 and quitter.stall_s == 0.0  # waiting is no stall
    # the first token at 1.2: the deadline moves *earlier*, to its successor's due time plus patience 1 s
    reader = ReaderModel(1.0, 3, 10.0, 1.0, 5.0)
    reader.receive(1, 1.2)
    assert reader.deadline_s == pytest.approx(1.2 + 0.1 + 1.0)


def test_cut_and_a_stream_that_ends_short() -> None:
    cut = ReaderModel(0.0, 4, 10.0, 2.0, 5.0)
    cut.receive(1, 0.0)
    cut.cut(1.5)
    assert cut.state == CANCELLED and cut.end_s == 1.5 and not cut.receive(4, 1.6)
    short = ReaderModel(0.0, 4, 10.0, 2.0, 5.0)
    short.receive(2, 0.0)
    short.finish_short()
    assert short.state == COMPLETED and short.n_tokens == 2 and short.end_s == pytest.approx(0.1)
    assert short.t_displayed == pytest.approx([0.0, 0.1]) and short.t_received == [0.0, 0.0]


# --------------------------------------------------------------------------- the two drivers
ARRIVALS = ((0.02, 1), (0.05, 2), (0.25, 5), (0.27, 6))  # (time, tokens in by then) for 8 tokens
N, TPS, PATIENCE, FIRST = 8, 20.0, 0.3, 0.5


def run_asyncio() -> LiveReader:
    """The asyncio driver, tokens fed on the loop's clock at about ARRIVALS; it abandons after the 6th."""
    async def main() -> LiveReader:
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        def now() -> float:
            return loop.time() - t0

        ended: list[LiveReader] = []
        r = LiveReader(loop, now, 0.0, N, TPS, PATIENCE, FIRST, ended.append)
        for at, count in ARRIVALS:
            await asyncio.sleep(max(0.0, at - now()))
            r.on_tokens(count)
        await asyncio.sleep(r.deadline_s - now() + 0.1)
        assert ended == [r]
        return r

    return asyncio.run(main())


def run_simpy(arrivals: list[tuple[float, int]]) -> Reader:
    """The SimPy driver fed the same (time, count) arrivals, each at exactly that simulated time."""
    env = simpy.Environment()
    ended: list[Reader] = []
    r = Reader(env, 0.0, N, TPS, PATIENCE, FIRST, ended.append)

    def feed(t: float, count: int):  # type: ignore[no-untyped-def]
        yield env.timeout(t)  # from time 0: env.now is t itself
        r.on_bytes(count)  # one byte per token

    for t, count in arrivals:
        env.process(feed(t, count))
    env.run()
    assert ended == [r]
    return r


def test_simpy_and_asyncio_drivers_display_the_same_times() -> None:
    live = run_asyncio()
    n = live.received
    assert n == 6 and live.state == ABANDONED
    # the asyncio run's actual arrival times, replayed in SimPy: the same floats in, the same floats out
    t = live.t_received
    arrivals = [(t[i], i + 1) for i in range(n) if i + 1 == n or t[i + 1] != t[i]]
    assert [c for _, c in arrivals] == [c for _, c in ARRIVALS]
    sim = run_simpy(arrivals)
    assert sim.t_received == live.t_received
    assert sim.t_displayed[:n] == live.t_displayed[:n] and all(math.isnan(t) for t in sim.t_displayed[n:])
    assert sim.state == ABANDONED and sim.received == n
    assert sim.deadline_s == live.deadline_s and sim.end_s == sim.deadline_s  # SimPy leaves on the deadline
    # asyncio leaves when its timer fires, on or a little after the deadline
    assert live.deadline_s <= live.end_s + 1e-9 and live.end_s == pytest.approx(sim.end_s, abs=0.05)
    assert live.stall_s - sim.stall_s == pytest.approx(live.end_s - sim.end_s, abs=1e-9)
