"""Ties said as ties: the table ranks every controller of ``tied_best`` ``=1`` and the best line names
them all with the tie rule, while ``rank_controllers``' order stays what it was (goldens rely on it)."""

from __future__ import annotations

import io

from rich.console import Console

from analysis.metrics import best_text, format_table, rank_controllers, rank_labels, ranking_text, tied_best
from analysis.report import summary_html_table

RULE = "(QoE within 0.005 and waste within 0.5 points)"


def _m(qoe: float, waste_frac: float, tokens_wasted: int) -> dict[str, float | int]:
    return {"qoe_mean": qoe, "waste_frac": waste_frac, "tokens_wasted": tokens_wasted, "streams": 10}


# b is 0.002 QoE and 0.2 points of waste from a: a tie. c is 0.1 QoE behind.
TIED = {"scenario": "hand", "controllers": {"c": _m(0.800, 0.000, 0), "b": _m(0.898, 0.012, 120),
                                             "a": _m(0.900, 0.010, 100)}}
# the same, but b wastes 1 point more than a: no tie
CLEAR = {"scenario": "hand", "controllers": {"c": _m(0.800, 0.000, 0), "b": _m(0.898, 0.020, 200),
                                             "a": _m(0.900, 0.010, 100)}}
# everyone alike (steady-broadband's case): alphabetical order decides rank_controllers, and says nothing
ALIKE = {"controllers": {n: _m(0.990, 0.0, 0) for n in ("mpc", "aimd", "buffer")}}


def _text(summary: dict) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(format_table(summary))
    return console.file.getvalue()  # type: ignore[attr-defined]


def _rows(summary: dict) -> list[tuple[str, str]]:
    """(rank, controller) of each body row of the printed table."""
    out = []
    for line in _text(summary).splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 3 and cells[1]:
            out.append((cells[1], cells[2]))
    return out


def test_ranking_itself_is_unchanged():
    assert rank_controllers(TIED) == ["a", "b", "c"] and tied_best(TIED) == ["a", "b"]
    assert rank_controllers(CLEAR) == ["a", "b", "c"] and tied_best(CLEAR) == ["a"]
    assert rank_controllers(ALIKE) == ["aimd", "buffer", "mpc"]


def test_table_ranks_tied_controllers_equal():
    assert _rows(TIED) == [("=1", "a"), ("=1", "b"), ("3", "c")]
    assert _rows(CLEAR) == [("1", "a"), ("2", "b"), ("3", "c")]
    assert _rows(ALIKE) == [("=1", "aimd"), ("=1", "buffer"), ("=1", "mpc")]


def test_best_line_says_tie():
    assert best_text(TIED) == f"best: a tie of a, b {RULE}"
    assert best_text(CLEAR) == "best: a"
    assert best_text(ALIKE) == f"best: a tie of aimd, buffer, mpc {RULE}"
    assert best_text(ALIKE, {"aimd": "AIMD"}) == f"best: a tie of AIMD, buffer, mpc {RULE}"
    assert best_text({"controllers": {}}) == "best: none (no controllers)"
    assert ranking_text(TIED) == "a = b > c" and ranking_text(CLEAR) == "a > b > c"
    assert ranking_text(ALIKE) == "aimd = buffer = mpc"


def test_tie_that_does_not_lead_the_ranking():
    # x has the top QoE (0.004 above best) but wastes 9 points more, so best ranks first and x second;
    # y ranks third (0.0055 below x) yet is within 0.0015 QoE and 0.1 point of waste of best: tied
    summary = {"controllers": {"best": _m(0.900, 0.010, 100), "x": _m(0.904, 0.100, 1000),
                               "y": _m(0.8985, 0.011, 110)}}
    assert rank_controllers(summary) == ["best", "x", "y"] and tied_best(summary) == ["best", "y"]
    assert rank_labels(summary) == [("=1", "best"), ("2", "x"), ("=1", "y")]
    assert ranking_text(summary) == "best > x > y"  # no "=" where the tied are not side by side
    assert best_text(summary) == f"best: a tie of best, y {RULE}"


def test_report_table_marks_every_tied_row_best():
    html = summary_html_table(TIED)
    assert html.count('<tr class="best"><td>=1</td>') == 2 and "<tr><td>3</td>" in html
    html = summary_html_table(CLEAR)
    assert html.count('<tr class="best">') == 1 and '<tr class="best"><td>1</td>' in html
