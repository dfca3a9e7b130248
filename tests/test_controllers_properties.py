"""Properties every registered controller keeps, for any observation sequence.

Increasing ``t_s``, any field that may be None being None or not, non-negative counts: the
decision is finite (None only for ``unpaced``), within the controller's own limits, and the same
sequence after ``reset()`` gives the same decisions. The oracle runs against a fake future.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from test_controllers_laws import FakeView

import controllers
from controllers import Controller, Observation
from controllers.oracle import Oracle

ms = st.one_of(st.none(), st.floats(0.1, 20_000.0))
counts = st.integers(0, 100_000)


@st.composite
def observations(draw: Any) -> list[Observation]:
    n = draw(st.integers(1, 40))
    steps = draw(st.lists(st.floats(1e-3, 5.0), min_size=n, max_size=n))
    reading = draw(st.floats(0.5, 50.0))
    t = draw(st.floats(0.0, 1000.0))
    out = []
    for i in range(n):
        t += steps[i]
        out.append(Observation(
            t_s=t, stream_id="s", srtt_ms=draw(ms), rtt_min_ms=draw(ms), rtt_p95_ms=draw(ms),
            retrans=draw(st.integers(0, 200)), cwnd_pkts=draw(st.one_of(st.none(), st.integers(0, 10_000))),
            inflight_bytes=draw(counts), queued_bytes=draw(counts), acked_tokens=draw(counts),
            generated_tokens=draw(counts), reading_tps=reading, client_buffer_est=draw(st.floats(0.0, 1e5)),
        ))
    return out


@st.composite
def fake_views(draw: Any) -> FakeView:
    windows = draw(st.lists(st.tuples(st.floats(0, 500), st.floats(0.1, 60), st.floats(0, 1e8)), max_size=4))
    return FakeView(capacity=[(a, a + d, bps) for a, d, bps in windows], streams=draw(st.integers(1, 300)),
                    reading_tps=draw(st.floats(0.5, 50.0)), output_tokens=draw(st.integers(1, 5000)),
                    loss=draw(st.floats(0.0, 0.5)))


def limits(c: Controller, o: Observation) -> tuple[float, float]:
    p: Any = c.params
    match c.name:
        case "fixed":
            r = p.rate_tps if p.rate_tps is not None else o.reading_tps * p.headroom
            return r, r
        case "sigmoid" | "ewma" | "pid" | "aimd" | "anomaly":
            return min(p.min_tps, p.max_tps), max(p.min_tps, p.max_tps)
        case "buffer":
            return 0.0, max(p.max_tps, o.reading_tps)
        case "mpc" | "oracle" | "predictive":
            return 0.0, p.max_tps
    raise AssertionError(f"no limits known for controller {c.name!r}: add them here")


def run(c: Controller, seq: list[Observation]) -> list[float | None]:
    out = []
    for o in seq:
        rate = c.decide(o).rate_tps
        if c.name == "unpaced":
            assert rate is None
        else:
            assert rate is not None and math.isfinite(rate), (c.name, o, rate)
            lo, hi = limits(c, o)
            assert lo - 1e-9 <= rate <= hi + 1e-9, (c.name, rate, lo, hi)
        out.append(rate)
    return out


NON_ORACLE = sorted(n for n, i in controllers.REGISTRY.items() if not i.cls.needs_oracle)


@settings(max_examples=60, deadline=None)
@given(seq=observations())
def test_all_controllers_finite_bounded_deterministic(seq: list[Observation]) -> None:
    for name in NON_ORACLE:
        c = controllers.make(name)
        first = run(c, seq)
        c.reset()
        assert run(c, seq) == first, name
        assert run(controllers.make(name), seq) == first, name


@settings(max_examples=60, deadline=None)
@given(seq=observations(), view=fake_views())
def test_oracle_finite_bounded_deterministic(seq: list[Observation], view: FakeView) -> None:
    c = controllers.make("oracle")
    c.attach_oracle(view)
    first = run(c, seq)
    c.reset()
    c.attach_oracle(view)
    assert run(c, seq) == first


@settings(max_examples=40, deadline=None)
@given(seq=observations(), view=fake_views())
def test_oracle_never_outruns_the_path_once_backlogged(seq: list[Observation], view: FakeView) -> None:
    c = controllers.make("oracle")
    assert isinstance(c, Oracle)
    c.attach_oracle(view)
    p = c.params
    for o in seq:
        rate = c.decide(o).rate_tps
        assert rate is not None
        share = c.bin_tps(int(o.t_s / p.step_s)) / view.streams
        if o.generated_tokens - o.acked_tokens >= share * p.inflight_s:
            assert rate <= share + 1e-9
