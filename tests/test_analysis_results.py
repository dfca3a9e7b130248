"""The results format: cells round-trip, JSON is deterministic, a killed writer keeps its flushed rows."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.results import (
    CONTROLLER_FILES,
    TEXT_COLUMNS,
    TOKENS_COLUMNS,
    CsvRecorder,
    ResultsFormatError,
    format_cell,
    read_csv,
    read_json,
    write_json,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        (None, ""),
        (math.nan, ""),
        (np.float64("nan"), ""),
        (0.1, "0.1"),
        (1e-300, "1e-300"),
        (np.float32(0.5), "0.5"),
        (3, "3"),
        (np.int64(7), "7"),
        (True, "1"),
        (np.bool_(False), "0"),
        ("s0001", "s0001"),
        (math.inf, "inf"),
    ],
)
def test_format_cell(value: object, cell: str):
    assert format_cell(value) == cell


@given(
    st.lists(
        st.tuples(
            st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc", "Zs", "Zl", "Zp"]), max_size=8),
            st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
            st.integers(-(2**40), 2**40),
        ),
        max_size=30,
    ),
    st.integers(1, 5),
)
@settings(max_examples=100, deadline=None)
def test_cells_round_trip(tmp_path_factory: pytest.TempPathFactory, rows: list, flush_every: int):
    path = tmp_path_factory.mktemp("rt") / "x.csv"
    with CsvRecorder(path, ("stream_id", "t", "idx"), flush_every=flush_every) as rec:
        for row in rows:
            rec.write(row)
    table = read_csv(path, ("stream_id", "t", "idx"))
    assert len(table) == len(rows)
    assert table["stream_id"].tolist() == [r[0] for r in rows]
    for got, (_, t, _) in zip(table["t"].tolist(), rows, strict=True):
        assert (math.isnan(got) and t is None) or got == t
    assert table["idx"].tolist() == [float(r[2]) for r in rows]


def test_killed_writer_keeps_flushed_rows(tmp_path: Path):
    path = tmp_path / "tokens.csv"
    script = (
        "import os\n"
        "from analysis.results import CsvRecorder, TOKENS_COLUMNS\n"
        f"rec = CsvRecorder({str(path)!r}, TOKENS_COLUMNS, flush_every=4)\n"
        "for i in range(10):\n"
        "    rec.write({'stream_id': 's1', 'idx': i, 't_generated': i / 10})\n"
        "os._exit(9)  # no close(), no atexit: like a crash\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", script], env=env, check=False, timeout=60)
    assert result.returncode == 9
    table = read_csv(path, TOKENS_COLUMNS)
    assert table["idx"].tolist() == list(range(8))  # two full batches of 4 reached the disk


def test_write_json_is_deterministic_and_null_safe(tmp_path: Path):
    obj = {"b": [np.float64(1 / 3), np.int64(2), math.nan], "a": {"z": math.inf, "y": np.bool_(True)}}
    write_json(tmp_path / "one.json", obj, sig_digits=6)
    write_json(tmp_path / "two.json", dict(reversed(list(obj.items()))), sig_digits=6)
    text = (tmp_path / "one.json").read_text()
    assert text == (tmp_path / "two.json").read_text()
    assert json.loads(text) == {"a": {"y": True, "z": None}, "b": [0.333333, 2, None]}
    write_json(tmp_path / "full.json", {"x": 1 / 3})
    assert read_json(tmp_path / "full.json") == {"x": 1 / 3}
    assert not list(tmp_path.glob(".*.tmp*"))


def test_every_file_has_its_columns_and_text_columns_are_known():
    assert CONTROLLER_FILES["tokens.csv"] == TOKENS_COLUMNS
    for columns in CONTROLLER_FILES.values():
        assert len(set(columns)) == len(columns)
    assert {"stream_id", "path", "outcome", "event_type", "req_id"} <= TEXT_COLUMNS


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "empty file"),
        ("a,b\n1,2\n\n3,4\n", "blank line"),
        ("a,b\n1,2,3\n4,5\n", r"x\.csv:2: 3 cells"),
        ("a,a\n1,2\n", "column 'a': appears twice"),
        ("a,b\n1,x\n", r"x\.csv:2: column 'b': not a number"),
    ],
)
def test_malformed_csv(tmp_path: Path, content: str, match: str):
    path = tmp_path / "x.csv"
    path.write_text(content)
    with pytest.raises(ResultsFormatError, match=match):
        read_csv(path)


def test_bad_json(tmp_path: Path):
    (tmp_path / "run.json").write_text("{\n  'single quotes': 1}\n")
    with pytest.raises(ResultsFormatError, match=r"run\.json:2: invalid JSON"):
        read_json(tmp_path / "run.json")
    (tmp_path / "run.json").write_text("[1, 2]")
    with pytest.raises(ResultsFormatError, match="JSON object"):
        read_json(tmp_path / "run.json")
