"""The simulator's fast recording paths write exactly what the plain ones did.

Blocks of rows are formatted column-wise with numpy (`analysis.results.format_rows`), and per-token
send / ack times are derived at the end from the connection's progress log (`sim.stream._first_times`);
both must equal, byte for byte, the row-by-row and callback-by-callback code they replaced.
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.results import CsvRecorder, format_rows, rounded_cell
from sim.stream import _first_times

EDGE_FLOATS = [0.0, -0.0, math.nan, math.inf, -math.inf, 1e-4, 9.99999e-5, 5e-7, 4.9e-7, -3e-7, 2.5e-6,
               0.0078125, 0.5, 1.0000005, 123456789.123456, 1e9, 1e15, 1e20, 1e-300, 5e-324]


def slow_rows(columns: list[list[object]], decimals: list[int | None]) -> str:
    """What CsvRecorder.write made of the same rows, one cell at a time."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for row in zip(*columns, strict=True):
        w.writerow([rounded_cell(v, d) for v, d in zip(row, decimals, strict=True)])
    return buf.getvalue()


floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e4, max_value=1e4),
    st.integers(0, 10**9).map(lambda k: k / 1e6),  # times on the us grid, ties included
    st.integers(0, 10**7).map(lambda k: (k + 0.5) / 1e6),
    st.sampled_from(EDGE_FLOATS),
)


@given(st.lists(floats, min_size=1, max_size=60), st.sampled_from([1, 4, 6]))
@settings(max_examples=300, deadline=None)
def test_float_cells_equal_repr_of_round(values: list[float], decimals: int):
    ids = [f"s{i}" for i in range(len(values))]  # a second column: a lone empty cell is quoted by csv
    expected = slow_rows([ids, values], [None, decimals])
    assert format_rows([ids, values], [None, decimals]) == expected
    assert format_rows([np.array(ids), np.array(values)], [None, decimals]) == expected
    assert format_rows([values], [decimals]) == slow_rows([values], [decimals])  # one column: csv's own way


@given(st.lists(st.tuples(
    st.one_of(st.none(), floats, st.integers(-(2**70), 2**70)),
    st.one_of(st.integers(-(2**63) + 1, 2**63 - 1), st.booleans(), st.none()),
    st.text(max_size=6),
), min_size=1, max_size=30))
@settings(max_examples=200, deadline=None)
def test_mixed_columns_equal_row_by_row_writing(rows: list[tuple]):
    columns = [list(c) for c in zip(*rows, strict=True)]
    for decimals in ([6, None, None], [None, None, None]):
        assert format_rows(columns, decimals) == slow_rows(columns, decimals)


def test_write_columns_matches_write(tmp_path):
    cols = ("stream_id", "t", "n")
    rows = [("s0001", 0, 3), ("s0001", 0.1, 4), ("a,b", 1 / 3, -7), ("é", None, True), ("s2", math.nan, 0)]
    with CsvRecorder(tmp_path / "a.csv", cols) as a:
        for r in rows:
            a.write((r[0], None if r[1] is None else round(r[1], 6), r[2]))
    with CsvRecorder(tmp_path / "b.csv", cols) as b:
        b.write(("first", 1.0, 1))  # rows queued by write() go before the block
        b.write_columns([list(c) for c in zip(*rows, strict=True)], [None, 6, None])
    assert (tmp_path / "b.csv").read_text() == "stream_id,t,n\nfirst,1.0,1\n" + (tmp_path / "a.csv").read_text()[14:]


def per_callback_times(times: list[float], progress: list[int], bpt: int, n_tokens: int, n: int) -> list[float]:
    """The replaced code: at each callback, every newly covered token gets the callback's time."""
    out = [math.nan] * n_tokens
    done = 0
    for t, p in zip(times, progress, strict=True):
        k = min(p // bpt, n_tokens)
        for i in range(done, k):
            out[i] = t
        done = max(done, k)
    return out[:n]


@given(st.lists(st.integers(0, 5000), max_size=40), st.integers(1, 300), st.integers(1, 40), st.data())
@settings(max_examples=200, deadline=None)
def test_first_times_equal_filling_in_at_each_callback(steps: list[int], bpt: int, n_tokens: int, data):
    progress = list(np.cumsum(steps).tolist())  # non-decreasing, as snd_max and snd_una are
    times = [0.25 * i + 0.001 for i in range(len(progress))]
    n = data.draw(st.integers(0, n_tokens))
    got = _first_times(times, progress, bpt, n_tokens, n)
    want = per_callback_times(times, progress, bpt, n_tokens, n)
    assert len(got) == n
    assert all((math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(got.tolist(), want, strict=True))


def test_fast_observation_is_the_dataclass_itself():
    import dataclasses

    from controllers import Observation
    from sim.model.control import _OBSERVATION_FIELDS, _observation

    values = (1.5, "s0007", None, 20.25, 31.0, 2, 10, 400, 1200, 17, 23, 12.5, -0.75)
    fast, plain = _observation(*values), Observation(*values)
    assert type(fast) is Observation and fast == plain and hash(fast) == hash(plain) and repr(fast) == repr(plain)
    assert tuple(f.name for f in dataclasses.fields(Observation)) == _OBSERVATION_FIELDS
    try:
        fast.t_s = 2.0  # type: ignore[misc]
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("an Observation must stay frozen")
