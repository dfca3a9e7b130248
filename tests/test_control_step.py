"""The stream control step (sim/model/control.py): snapshot -> Observation -> decision -> rate, in both halves.

Observations are computed by hand from a sequence of transport snapshots (retransmits as counter
differences, RTT min and p95 of the interval's samples, the reader's estimated buffer); the live
driver's reading of the kernel (units, the app's backlog) likewise; and a simulated run and a live
control tick are both shown to go through the one step.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controllers import Controller, Decision, Observation
from controllers.registry import make
from live.kernel.source import SocketStats
from live.serve.pacing import ConnState, NullTelemetry, PacedStream, PacingLoop
from scenarios import parse_scenario
from scenarios.loader import LoadedScenario
from sim.model.control import StreamControl, TransportSnapshot
from sim.model.workload import draw_requests
from sim.stream import SimStream
from sim.world import run_controller


class Scripted(Controller):
    """Answers the scripted rates in turn and keeps what it saw."""

    name = "scripted"

    def __init__(self, rates: list[float | None]) -> None:
        self.rates = list(rates)
        super().__init__()

    def reset(self) -> None:
        self.seen: list[Observation] = []

    def decide(self, obs: Observation) -> Decision:
        self.seen.append(obs)
        return Decision(self.rates[len(self.seen) - 1] if len(self.seen) <= len(self.rates) else self.rates[-1])


class Target:
    def __init__(self) -> None:
        self.calls: list[tuple[float, float | None]] = []

    def set_rate(self, now: float, rate_tps: float | None) -> None:
        self.calls.append((now, rate_tps))


def snap(**kw: object) -> TransportSnapshot:
    base: dict[str, object] = dict(srtt_ms=20.0, rtt_samples_s=(), rtt_min_ms=None, rtt_p95_ms=None, retrans_segs=0,
                                   cwnd_pkts=10, inflight_bytes=0, written_bytes=0, acked_bytes=0, acked_tokens=0,
                                   generated_tokens=0)
    base.update(kw)
    return TransportSnapshot(**base)  # type: ignore[arg-type]


def test_observations_from_a_snapshot_sequence_by_hand():
    ctl = StreamControl("s1", 10.0, Scripted([None]))
    # t = 1.0: four RTT samples (p95: sorted 10, 20, 30, 40 ms, position 0.95 * 3 = 2.85 -> 30 + 0.85 * 10);
    # 4 retransmits so far; 5000 B written, 1000 acked (10 tokens): the reader shows the first at once
    o1 = ctl.observe(1.0, snap(rtt_samples_s=[0.030, 0.010, 0.040, 0.020], retrans_segs=4, inflight_bytes=3000,
                                written_bytes=5000, acked_bytes=1000, acked_tokens=10, generated_tokens=25))
    assert o1 == Observation(1.0, "s1", 20.0, pytest.approx(10.0), pytest.approx(38.5), 4, 10, 3000, 4000, 10, 25,
                             10.0, 9.0)
    # t = 1.5: no samples, 2 more retransmits; the reader read 5 more (10 tok/s x 0.5 s) of 12 acked;
    # the connection reports 800 B in flight but only 500 are this stream's backlog
    o2 = ctl.observe(1.5, snap(srtt_ms=25.0, retrans_segs=6, inflight_bytes=800, written_bytes=6000, acked_bytes=5500,
                                acked_tokens=12, generated_tokens=30))
    assert o2 == Observation(1.5, "s1", 25.0, None, None, 2, 10, 500, 500, 12, 30, 10.0, 6.0)
    # t = 2.5: the reader would be at 16 but only 14 are acked: it caught up (buffer 0); the source gave
    # the interval's min and p95 already aggregated (the kernel's histogram)
    o3 = ctl.observe(2.5, snap(rtt_min_ms=12.5, rtt_p95_ms=30.0, retrans_segs=6, written_bytes=7000, acked_bytes=7000,
                                acked_tokens=14, generated_tokens=30))
    assert o3 == Observation(2.5, "s1", 20.0, 12.5, 30.0, 0, 10, 0, 0, 14, 30, 10.0, 0.0)
    # nothing acked yet: no reading clock, no buffer
    fresh = StreamControl("s2", 10.0, Scripted([None]))
    assert fresh.observe(0.5, snap(written_bytes=300, generated_tokens=3)).client_buffer_est == 0.0


def test_step_decides_shows_the_scheduler_and_applies_only_a_changed_rate():
    ctrl = Scripted([None, 5.0, 5.0, 7.0, None])
    ctl = StreamControl("s1", 10.0, ctrl)
    target, shown = Target(), []
    obs = [ctl.step(0.1 * k, snap(generated_tokens=k), target, lambda sid, o, d: shown.append((sid, o, d)))
           for k in range(5)]
    assert ctrl.seen == obs  # the controller decided on the Observation the step returned
    assert shown == [("s1", o, Decision(r)) for o, r in zip(obs, [None, 5.0, 5.0, 7.0, None], strict=True)]
    assert target.calls == [(0.1, 5.0), (pytest.approx(0.3), 7.0), (0.4, None)]
    assert ctl.rate_tps is None


_INTERVALS = st.lists(st.tuples(
    st.sampled_from([0.01, 0.05, 0.2, 1.0]),  # time since the last snapshot
    st.one_of(st.none(), st.floats(1.0, 500.0)),  # srtt_ms
    st.lists(st.floats(0.001, 0.5), max_size=6),  # RTT samples (s)
    st.one_of(st.none(), st.tuples(st.floats(1.0, 100.0), st.floats(0.0, 400.0))),  # or min and p95 - min (ms)
    st.integers(0, 3),  # more retransmits
    st.one_of(st.none(), st.integers(1, 100)),  # cwnd_pkts
    st.integers(0, 50_000),  # inflight_bytes
    st.integers(0, 20_000),  # more written
    st.integers(0, 20_000),  # more acked (may pass written: queued clamps at 0)
    st.integers(0, 50),  # more tokens made
), min_size=1, max_size=25)


def _snapshots(intervals):  # type: ignore[no-untyped-def]
    t = written = acked = retrans = generated = 0
    for dt, srtt, samples, agg, d_retrans, cwnd, inflight, d_written, d_acked, d_gen in intervals:
        t += dt
        written, acked, retrans = written + d_written, acked + d_acked, retrans + d_retrans
        generated += d_gen
        rtt_min, rtt_p95 = (None, None) if agg is None else (agg[0], agg[0] + agg[1])
        yield t, TransportSnapshot(srtt, samples, rtt_min, rtt_p95, retrans, cwnd, inflight, written, acked,
                                   acked // 200, generated)


@given(controller=st.sampled_from(["buffer", "aimd", "ewma", "fixed"]), intervals=_INTERVALS)
def test_the_simulators_step_values_is_step_on_a_snapshot(controller, intervals):
    """The simulator steps with the snapshot's fields (``step_values``, no TransportSnapshot object,
    issue #13); live with a TransportSnapshot (``step``). On any snapshot sequence both give the same
    Observations, decisions, rates handed on and state, and ``observe`` the same Observations."""
    by_snap, by_values, observing = (StreamControl("s", 12.0, make(controller)) for _ in range(3))
    seen: dict[str, list[tuple[str, Observation, Decision]]] = {"snap": [], "values": []}
    targets = {"snap": Target(), "values": Target()}
    for t, snap in _snapshots(intervals):
        o_snap = by_snap.step(t, snap, targets["snap"], lambda *a: seen["snap"].append(a))
        o_values = by_values.step_values(targets["values"], lambda *a: seen["values"].append(a), t,
                                         *(getattr(snap, f.name) for f in dataclasses.fields(snap)))
        assert o_values == o_snap == observing.observe(t, snap)
    assert seen["values"] == seen["snap"] and len(seen["snap"]) == len(intervals)
    assert targets["values"].calls == targets["snap"].calls
    assert (by_values.rate_tps, by_values.retrans_seen) == (by_snap.rate_tps, by_snap.retrans_seen)


def kernel_stats(**kw: object) -> SocketStats:
    base: dict[str, object] = dict(cookie=1, srtt_us=2000, rtt_min_us=1500, rtt_max_us=2500, rtt_p95_us=2400,
                                   retrans=3, cwnd_pkts=10, ssthresh_pkts=None, snd_wnd_bytes=65535,
                                   inflight_bytes=3000, acked_bytes=1000, samples=5)
    base.update(kw)
    return SocketStats(**base)  # type: ignore[arg-type]


class OpenTransport:
    """A connection's transport that stays open (no socket: the telemetry's acked count stands)."""

    def is_closing(self) -> bool:
        return False


def test_live_tick_reads_the_kernel_into_the_step():
    """The live driver: the telemetry's microseconds become milliseconds, its interval retransmits a
    counter's differences, and queued_bytes is DESIGN.md's (written by the app, not yet acked: tokens
    generated but still waiting for the socket included), not what is in flight."""
    pacing = PacingLoop(NullTelemetry())
    conn = ConnState(OpenTransport(), 1)
    pacing.conns[1] = conn
    target = Target()
    ps = PacedStream("s1", conn, Scripted([8.0]), reading_tps=12.0, arrival_s=0.0, prompt_tokens=5, output_tokens=60)
    ps.target = target
    pacing.register(ps)
    for i in range(50):  # 50 tokens of 100 B on the wire; the first 45 handed to the socket
        ps.on_generated(0.01 * i, 100)
        if i < 45:
            conn.written += 100
            ps.on_sent(0.01 * i, 100)
    [o1] = pacing.tick(12.5, {1: kernel_stats()})
    # acked 1000 B = 10 tokens; backlog 4500 + 500 waiting - 1000 acked; the kernel's 3000 in flight fit in it
    assert o1 == Observation(12.5, "s1", 2.0, 1.5, 2.4, 3, 10, 3000, 4000, 10, 50, 12.0, 9.0)
    assert ps.last_obs is o1 and ps.rate_tps == 8.0 and target.calls == [(12.5, 8.0)]
    [o2] = pacing.tick(13.0, {})  # a quiet interval: the connection's srtt stays, no interval RTT, no retransmits
    assert o2 == Observation(13.0, "s1", 2.0, None, None, 0, 10, 3000, 4000, 10, 50, 12.0, 3.0)
    [o3] = pacing.tick(13.1, {1: kernel_stats(retrans=2, rtt_min_us=None, rtt_p95_us=None, acked_bytes=3500)})
    assert (o3.retrans, o3.rtt_min_ms, o3.acked_tokens, o3.queued_bytes, o3.inflight_bytes) == (2, None, 45, 500, 500)
    assert target.calls == [(12.5, 8.0)]  # the same rate again: nothing to apply


TINY = {
    "name": "tiny",
    "server": {"d0_s": 0.1, "d1_s": 0.01, "batch_tokens": 100, "kv_tokens": 1000, "max_running": 10},
    "workload": {"arrivals": {"kind": "periodic", "rate_per_s": 1.0}, "streams": 2, "prompt_tokens": 10,
                 "output_tokens": 40, "bytes_per_token": 200},
    "clients": {"reading_tps": 20, "patience_s": 100},
    "paths": {"p": {"rate_mbps": 10, "rtt_ms": 40}},
}


def test_sim_and_live_drivers_run_the_one_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Every Observation either half hands on is built by StreamControl.observe_values, called from
    StreamControl.step_values (the simulator's way in; live goes through step, which calls it)."""
    built: list[tuple[str, Observation]] = []
    step, observe = StreamControl.step_values, StreamControl.observe_values
    inside = {"step": None}

    def spy_step(self, target, observer, t_s, *values):  # type: ignore[no-untyped-def]
        inside["step"] = type(target).__name__
        try:
            return step(self, target, observer, t_s, *values)
        finally:
            inside["step"] = None

    def spy_observe(self, t_s, *values):  # type: ignore[no-untyped-def]
        obs = observe(self, t_s, *values)
        built.append((inside["step"], obs))
        return obs

    monkeypatch.setattr(StreamControl, "step_values", spy_step)
    monkeypatch.setattr(StreamControl, "observe_values", spy_observe)

    returned: list[Observation] = []
    sim_control = SimStream.control

    def keep(self, t_s):  # type: ignore[no-untyped-def]
        obs = sim_control(self, t_s)
        returned.append(obs)
        return obs

    monkeypatch.setattr(SimStream, "control", keep)
    loaded = LoadedScenario(parse_scenario(TINY, "test"), Path("test.yaml").resolve(), TINY)
    run_controller(loaded, draw_requests(loaded.scenario, loaded.base_dir), "ewma", {}, tmp_path / "e", 1)
    assert len(returned) > 10 and [o for _, o in built] == returned
    assert {who for who, _ in built} == {"SimStream"}

    built.clear()
    pacing = PacingLoop(NullTelemetry())
    ps = PacedStream("live-1", None, Scripted([None]), reading_tps=20.0, arrival_s=0.0, prompt_tokens=1,
                     output_tokens=10)
    pacing.register(ps)
    live = pacing.tick(1.0, {}) + pacing.tick(1.1, {})
    assert [o for _, o in built] == live and {who for who, _ in built} == {"PacedStream"}
