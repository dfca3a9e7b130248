"""Andes QoE and stall time: exact values on hand-worked streams, and properties on random ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.qoe import andes_qoe, stall_intervals, stream_stall_s

readers = st.fixed_dictionaries(
    {
        "arrival_s": st.floats(0, 1000),
        "ttft_expected_s": st.floats(0, 5),
        "reading_tps": st.floats(0.5, 100),
        "n_tokens": st.integers(1, 60),
    }
)


def on_schedule(arrival_s: float, ttft_expected_s: float, reading_tps: float, n_tokens: int) -> np.ndarray:
    return arrival_s + ttft_expected_s + np.arange(n_tokens) / reading_tps


# --------------------------------------------------------------------------- hand-worked cases
def test_shift_by_hand():
    # n=4, r=2 tok/s, expected TTFT 1 s: due (from arrival) 1.0, 1.5, 2.0, 2.5; window ends 3.0.
    # ∫E = 1·0.5 + 2·0.5 + 3·0.5 + 4·0.5 = 5. Everything 0.75 s late: shown 1.75, 2.25, 2.75, 3.25.
    # ∫min(A,E): [1.75,2.25) 1·0.5 + [2.25,2.75) 2·0.5 + [2.75,3.0) 3·0.25 = 2.25 -> QoE 0.45.
    shown = 10.0 + np.array([1.75, 2.25, 2.75, 3.25])
    assert andes_qoe(10.0, 1.0, 2.0, 4, shown) == pytest.approx(0.45, abs=1e-12)


def test_one_stall_by_hand():
    # the metrics fixture's s2: tokens 2 and 3 each 0.5 s late -> loses 1.0 of 5.
    assert andes_qoe(1.0, 1.0, 2.0, 4, [2.0, 2.5, 3.5, 4.0]) == pytest.approx(0.8, abs=1e-12)


def test_abandoned_keeps_what_was_shown():
    # 2 of 4 tokens shown on time, then the reader left: ∫min = 1·0.5 + 2·1.5 = 3.5 of 5.
    assert andes_qoe(0.0, 1.0, 2.0, 4, [1.0, 1.5, math.nan, math.nan]) == pytest.approx(0.7, abs=1e-12)


def test_nothing_shown_scores_zero():
    assert andes_qoe(0.0, 1.0, 2.0, 4, [math.nan] * 4) == 0.0
    assert andes_qoe(0.0, 1.0, 2.0, 4, []) == 0.0


def test_early_earns_nothing():
    early = on_schedule(5.0, 1.0, 4.0, 10) - 0.9
    assert andes_qoe(5.0, 1.0, 4.0, 10, early) == 1.0


def test_single_token():
    # n=1: the window is [ttft_e, ttft_e + 1/r]; showing it d late loses d·r of 1.
    assert andes_qoe(0.0, 1.0, 4.0, 1, [1.0]) == 1.0
    assert andes_qoe(0.0, 1.0, 4.0, 1, [1.1]) == pytest.approx(0.6, abs=1e-12)
    assert andes_qoe(0.0, 1.0, 4.0, 1, [9.0]) == 0.0


def test_linear_variant_by_hand():
    # the literal line E = 1 + (t - 1)·2 on [1, 2.5]: ∫E = 1.5 + 2·1.5²/2 = 3.75.
    # on the step schedule A lies under it by n-1 = 3 triangles of 0.5·0.5·1 -> 3.75 - 0.75 = 3.0.
    shown = on_schedule(0.0, 1.0, 2.0, 4)
    assert andes_qoe(0.0, 1.0, 2.0, 4, shown, expected="linear") == pytest.approx(3.0 / 3.75, abs=1e-12)
    assert andes_qoe(0.0, 1.0, 2.0, 4, shown - 0.5, expected="linear") == pytest.approx(1.0)
    assert andes_qoe(0.0, 1.0, 2.0, 1, [1.0], expected="linear") == 1.0
    assert andes_qoe(0.0, 1.0, 2.0, 1, [1.1], expected="linear") == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reading_tps": 0.0}, "reading_tps"),
        ({"reading_tps": math.inf}, "reading_tps"),
        ({"n_tokens": 0}, "n_tokens"),
        ({"ttft_expected_s": -1.0}, "ttft_expected_s"),
    ],
)
def test_bad_reader_parameters(kwargs: dict[str, float], message: str):
    args = {"arrival_s": 0.0, "ttft_expected_s": 1.0, "reading_tps": 2.0, "n_tokens": 4} | kwargs
    with pytest.raises(ValueError, match=message):
        andes_qoe(display_times_s=[1.0], **args)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- properties
@given(readers, st.lists(st.one_of(st.floats(0, 50), st.just(math.nan)), max_size=60))
@settings(max_examples=300, deadline=None)
def test_qoe_is_between_zero_and_one(reader: dict, offsets: list[float]):
    shown = reader["arrival_s"] + np.asarray(offsets, dtype=float)
    for expected in ("step", "linear"):
        q = andes_qoe(display_times_s=shown, expected=expected, **reader)
        assert 0.0 <= q <= 1.0


@given(readers)
@settings(max_examples=200, deadline=None)
def test_on_schedule_scores_one(reader: dict):
    assert andes_qoe(display_times_s=on_schedule(**reader), **reader) == pytest.approx(1.0, abs=1e-9)


@given(readers, st.floats(0, 20))
@settings(max_examples=300, deadline=None)
def test_constant_shift_loses_what_theory_says(reader: dict, delay_s: float):
    # Each token late by d costs min(d, time left in the window) = min(d, m/r) for m = n..1.
    n, r = reader["n_tokens"], reader["reading_tps"]
    lost = sum(min(m / r, delay_s) for m in range(1, n + 1))
    expected = 1.0 - lost / (n * (n + 1) / (2.0 * r))
    got = andes_qoe(display_times_s=on_schedule(**reader) + delay_s, **reader)
    assert got == pytest.approx(expected, abs=1e-7)


@given(readers, st.floats(0, 5), st.floats(0, 5))
@settings(max_examples=200, deadline=None)
def test_later_is_never_better(reader: dict, d1: float, d2: float):
    base = on_schedule(**reader)
    q1 = andes_qoe(display_times_s=base + min(d1, d2), **reader)
    q2 = andes_qoe(display_times_s=base + max(d1, d2), **reader)
    assert q2 <= q1 + 1e-12


# --------------------------------------------------------------------------- stall
def test_stall_by_hand():
    # r=2: token 2 due at 2.5 + 0.5 = 3.0, received 3.5 -> one stall of 0.5 s
    stalls = stall_intervals(2.0, [2.0, 2.5, 3.5, 4.0], [2.0, 2.5, 3.5, 4.0])
    assert stalls.start_s.tolist() == [3.0] and stalls.end_s.tolist() == [3.5]
    assert stalls.total_s == pytest.approx(0.5)


def test_abandoned_stream_adds_the_final_stall():
    # shown at 4.0, 4.5; token 2 due 5.0, reader left at 6.0 -> final stall 1.0 s
    recv, disp = [4.0, 4.5, 6.5, math.nan], [4.0, 4.5, math.nan, math.nan]
    assert stream_stall_s(2.0, recv, disp, end_s=6.0, abandoned=True) == pytest.approx(1.0)
    assert stream_stall_s(2.0, recv, disp, end_s=6.0, abandoned=False) == 0.0


def test_waiting_for_the_first_token_is_not_stall():
    assert stream_stall_s(2.0, [math.nan] * 3, [math.nan] * 3, end_s=9.0, abandoned=True) == 0.0
    assert stream_stall_s(2.0, [5.0, 5.5], [5.0, 5.5]) == 0.0


@given(st.floats(0.5, 50), st.lists(st.floats(0, 3), min_size=1, max_size=40), st.floats(0, 100))
@settings(max_examples=200, deadline=None)
def test_stall_matches_the_reader_model(reading_tps: float, gaps: list[float], start_s: float):
    # Replay the reader: shown_i = max(received_i, shown_{i-1} + 1/r); stall = shown shifts.
    received = start_s + np.cumsum(gaps)
    shown = received.copy()
    stall = 0.0
    for i in range(1, len(shown)):
        due = shown[i - 1] + 1.0 / reading_tps
        stall += max(0.0, received[i] - due)
        shown[i] = max(received[i], due)
    assert stream_stall_s(reading_tps, received, shown) == pytest.approx(stall, abs=1e-9)
