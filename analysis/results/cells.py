"""Values as CSV cells, one at a time (:func:`format_cell`, :func:`rounded_cell`) or a block of rows
at a time with numpy (:func:`format_rows`), the two giving the same text.

None and NaN become an empty cell; a float keeps every digit of its ``repr`` (after rounding to
the column's decimals, :data:`analysis.results.schema.DECIMALS`), so a file read back gives the
very numbers written.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
from collections.abc import Sequence

import numpy as np


def format_cell(value: object) -> str:
    """One value as a CSV cell: None and NaN become empty, floats keep every digit."""
    kind = type(value)
    if kind is float:
        return "" if value != value else repr(value)  # NaN is the only value unequal to itself
    if kind is int or kind is str:
        return str(value)
    if kind is np.float64:
        return "" if value != value else repr(float(value))  # type: ignore[arg-type]
    if value is None:
        return ""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        x = float(value)
        return "" if math.isnan(x) else repr(x)
    return str(value)


def rounded_cell(value: object, decimals: int | None) -> str:
    """``format_cell(round(value, decimals))``; None and NaN give an empty cell, ``decimals=None`` no rounding."""
    if value is None:
        return ""
    if decimals is None or value != value:  # NaN is the only value unequal to itself
        return format_cell(value)
    return format_cell(round(value, decimals))  # type: ignore[call-overload]


# Column-wise formatting. A run writes hundreds of thousands of cells (a row per token, per stream per
# control interval, per decode step); formatting them one Python call at a time was most of a
# simulation's run time. `format_rows` builds a block of rows with numpy instead: each column becomes
# a fixed-width matrix of ASCII bytes in which NUL marks an unused byte, the columns are put side by
# side with separators, and deleting the NULs from the bytes, row after row, leaves the CSV text.
# The text is exactly what `CsvRecorder.write` makes of the same rows (`rounded_cell` per cell, csv
# quoting): every value the fast paths cannot vouch for is formatted by `rounded_cell` itself.
_COMMA, _NEWLINE, _MINUS = (ord(c) for c in ",\n-")
_POW10 = 10 ** np.arange(19, dtype=np.int64)
_CSV_SPECIAL = frozenset(',"\n\r\0')  # csv quotes ',', '"' and '\n'; '\r' and NUL go the careful way too
_SPECIAL_POINTS = np.array([ord(c) for c in _CSV_SPECIAL if c != "\0"], np.uint32)
_INT64_MIN = np.iinfo(np.int64).min
_NONE = type(None)


def _table(fmt: str) -> np.ndarray:
    """A 4-byte word per number 0..999 (spaces become NUL), viewed as uint32 so that a lookup is one
    1-d gather; the words of a cell are later viewed back as bytes."""
    rows = [fmt.format(i).replace(" ", "\0").encode() for i in range(1000)]
    return np.frombuffer(b"".join(rows), np.uint32)


_FULL = _table("{:03d} ")  # "007"
_LEAD = _table("{:3d} ")  # "  7": no leading zeros
_FULL_DOT = _table("{:03d}.")
_LEAD_DOT = _table("{:3d}.")
_TRAIL = np.frombuffer(b"".join(f"{i:03d}".rstrip("0").ljust(4).replace(" ", "\0").encode() for i in range(1000)),
                       np.uint32)  # "12" for 120, nothing for 0
_TRAIL1 = _TRAIL.copy()  # as _TRAIL, but 0 is "0"
_TRAIL1[0] = _FULL[0] & np.frombuffer(b"\xff\0\0\0", np.uint32)[0]


def _uint_words(n: np.ndarray, dot: bool) -> np.ndarray:
    """Non-negative int64s in decimal, no leading zeros (then "." if ``dot``), as 4-byte words [N, K]."""
    top = int(n.max(initial=0))
    k_words = max(1, (len(str(top)) + 2) // 3)
    out = np.empty((len(n), k_words), np.uint32)
    rest = n
    for k in range(k_words):  # k = 0 is the least significant triple, the last word
        rest, t = np.divmod(rest, 1000) if k < k_words - 1 else (None, rest)
        full, lead = (_FULL_DOT, _LEAD_DOT) if dot and k == 0 else (_FULL, _LEAD)
        # the most significant triple of a number has no leading zeros; triples above it are blank
        word = lead[t] if k == k_words - 1 else np.where(n >= _POW10[3 * k + 3], full[t], lead[t])
        if k:
            word = word * (n >= _POW10[3 * k])
        out[:, k_words - 1 - k] = word
    return out


def _bytes_of(words: np.ndarray) -> np.ndarray:
    return words.view(np.uint8).reshape(len(words), -1)


def _signed(negative: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Prefix "-" where negative (no column at all when nothing is)."""
    if not negative.any():
        return cells
    return np.hstack([(negative * _MINUS).astype(np.uint8)[:, None], cells])


def _place(cells: np.ndarray, rows: Sequence[int], texts: Sequence[bytes]) -> np.ndarray:
    """Overwrite these rows' cells with these texts, widening the matrix if one does not fit."""
    extra = max(map(len, texts), default=0) - cells.shape[1]
    if extra > 0:
        cells = np.hstack([cells, np.zeros((len(cells), extra), np.uint8)])
    for i, text in zip(rows, texts, strict=True):
        cells[i] = 0
        cells[i, : len(text)] = np.frombuffer(text, np.uint8)
    return cells


def _int_cells(v: np.ndarray) -> np.ndarray:
    return _signed(v < 0, _bytes_of(_uint_words(np.abs(v), dot=False)))


def _float_cells(x: np.ndarray, decimals: int) -> np.ndarray:
    """``repr(round(v, decimals))`` of float64s (as Python floats); NaN is an empty cell.

    Why this is exact: with y = |v| * 10**d (one rounding, relative error <= 2**-53), np.rint(y)
    is the correctly rounded integer n that round() and '%.{d}f' compute, unless y lies within that
    error of a .5 tie. round(v, d) is then the double nearest n / 10**d, and with at most 15
    significant digits no shorter decimal maps to that double, so its repr is n's digits with the
    point put back and trailing zeros dropped. Near-ties, |v| < 1e-4 (repr switches to exponent
    form), |v| >= 10**(15 - d), infinities and d > 6 are left to `rounded_cell`.
    """
    a = np.abs(x)
    nan = np.isnan(x)
    with np.errstate(invalid="ignore", over="ignore"):
        y = a * float(10**decimals)
        frac = y - np.floor(y)
        fast = (a < 10.0 ** (15 - decimals)) & ((a >= 1e-4) | (a == 0.0)) & (np.abs(frac - 0.5) > y * 4.5e-16)
    if decimals > 6:
        fast[:] = False
    n = np.rint(np.where(fast, y, 0.0)).astype(np.int64)
    whole, part = np.divmod(n, _POW10[decimals])
    hi, lo = np.divmod(part * _POW10[6 - min(decimals, 6)], 1000)  # the fraction as 6 digits
    # trailing zeros go, but one fractional digit stays: "2.5", "2.05", "2.0"
    frac_words = np.stack([np.where(lo != 0, _FULL[hi], _TRAIL1[hi]), _TRAIL[lo]], axis=1)
    words = np.hstack([_uint_words(whole, dot=True), frac_words])
    words[nan] = 0
    cells = _signed(np.signbit(x) & ~nan, _bytes_of(words))  # -0.0 stays "-0.0", as repr writes it
    slow = np.flatnonzero(~(fast | nan)).tolist()
    if slow:
        return _place(cells, slow, [rounded_cell(float(x[i]), decimals).encode() for i in slow])
    return cells


def _csv_field(text: str) -> str:
    """One cell as the csv module writes it (quoted if it must be)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([text, ""])
    return buf.getvalue()[:-2]


class _HasNul(Exception):
    """A cell holds a NUL byte, which this scheme uses for "no byte" (or the block has one column,
    where csv quotes an empty cell): format the block row by row."""


def _any_cells(values: Sequence[object], decimals: int | None) -> np.ndarray:
    """The general case, one Python call per cell."""
    texts = []
    for v in values:
        cell = rounded_cell(v, decimals)
        if "\0" in cell:
            raise _HasNul
        texts.append((_csv_field(cell) if _CSV_SPECIAL.intersection(cell) else cell).encode())
    return _place(np.zeros((len(texts), 0), np.uint8), range(len(texts)), texts)


def _text_cells(values: Sequence[str]) -> np.ndarray:
    """Texts as NUL-padded rows, cut out of one encoded string with numpy (no per-text Python call)."""
    joined = "\n".join(values)
    if _CSV_SPECIAL.intersection(joined.replace("\n", "")) or joined.count("\n") != len(values) - 1:
        return _any_cells(values, None)  # quoting, NUL, or a text holding a newline: one by one
    buf = np.frombuffer(joined.encode("utf-8") + b"\n", np.uint8)
    n = len(values)
    ends = np.flatnonzero(buf == _NEWLINE)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts
    width = int(lengths.max(initial=0))
    # byte k of text i goes to cells[i, k]: flat index i * width + (position in buf - starts[i])
    dest = np.arange(len(buf)) + np.repeat(np.arange(n) * width - starts, lengths + 1)
    text = buf != _NEWLINE
    cells = np.zeros(n * width, np.uint8)
    cells[dest[text]] = buf[text]
    return cells.reshape(n, width)


def _ascii_cells(values: np.ndarray) -> np.ndarray | None:
    """A str array's cells straight from its UCS-4 code points, when they are plain ASCII needing no quotes."""
    points = values.view(np.uint32).reshape(len(values), -1)
    used = points != 0
    if (points >= 128).any() or np.isin(points, _SPECIAL_POINTS).any() or (used[:, 1:] > used[:, :-1]).any():
        return None  # non-ASCII, quoting, or a NUL inside a text: the general path
    return points.astype(np.uint8)


def _column_cells(values: Sequence[object] | np.ndarray, decimals: int | None) -> np.ndarray:
    """One column's cells, each equal to ``rounded_cell(value, decimals)`` (csv-quoted if need be)."""
    if isinstance(values, np.ndarray):
        kind = values.dtype.kind
        if kind == "U":
            cells = _ascii_cells(values)
            if cells is not None:
                return cells
        elif kind == "f" and decimals is not None:
            return _float_cells(values.astype(np.float64, copy=False), decimals)
        if kind == "i" and not (values == _INT64_MIN).any():
            return _int_cells(values.astype(np.int64, copy=False))
        values = values.tolist()
    if not values:
        return np.zeros((0, 0), np.uint8)
    if type(values[0]) is int:
        # Python ints (and bools) become an int64 array; anything else (a float, None, a huge int, a
        # text) makes numpy choose another dtype, and the column goes the careful way below. One C
        # conversion instead of a type check per value.
        try:
            v = np.array(values)
        except (OverflowError, ValueError):
            v = None
        if v is not None and v.dtype == np.int64 and not (v == _INT64_MIN).any():
            return _int_cells(v)
    kinds = set(map(type, values))
    if decimals is not None and kinds <= {float, _NONE}:
        return _float_cells(np.array(values, dtype=np.float64), decimals)  # None becomes NaN: an empty cell
    if decimals is not None and kinds <= {float, int, _NONE}:  # e.g. env.now is the int 0 until time moves
        ints = [i for i, v in enumerate(values) if type(v) is int]
        cells = _float_cells(np.array(values, dtype=np.float64), decimals)
        return _place(cells, ints, [rounded_cell(values[i], decimals).encode() for i in ints])
    if kinds <= {int, bool}:  # round(int, d) is the int itself; format_cell(True) is "1" like 1
        try:
            v = np.array(values, dtype=np.int64)
        except OverflowError:
            return _any_cells(values, decimals)
        if not (v == _INT64_MIN).any():
            return _int_cells(v)
    if kinds <= {str}:
        return _text_cells(values)  # type: ignore[arg-type]
    return _any_cells(values, decimals)


def format_rows(columns: Sequence[Sequence[object] | np.ndarray], decimals: Sequence[int | None]) -> str:
    """CSV text of the rows given column by column: cell = ``rounded_cell(value, decimals[j])``.

    The same text :class:`CsvRecorder` writes for these rows (rounded as ``decimals`` says), made
    a block at a time with numpy; see the comment above `_float_cells` for why it is exact.
    """
    if len(columns) != len(decimals):
        raise ValueError("one decimals entry per column")
    n = len(columns[0]) if columns else 0
    if n == 0:
        return ""
    parts: list[np.ndarray] = []
    for j, (values, d) in enumerate(zip(columns, decimals, strict=True)):
        if len(values) != n:
            raise ValueError(f"column {j} has {len(values)} values, expected {n}")
        if j:
            parts.append(np.full((n, 1), _COMMA, np.uint8))
        try:
            if len(columns) == 1:
                raise _HasNul  # csv writes a lone empty cell as '""': not worth a fast path
            parts.append(_column_cells(values, d))
        except _HasNul:
            return _rows_one_by_one(columns, decimals)
    parts.append(np.full((n, 1), _NEWLINE, np.uint8))
    return np.hstack(parts).tobytes().translate(None, b"\0").decode("utf-8")


def _rows_one_by_one(columns: Sequence[Sequence[object] | np.ndarray], decimals: Sequence[int | None]) -> str:
    buf = io.StringIO()
    rows = zip(*(v.tolist() if isinstance(v, np.ndarray) else v for v in columns), strict=True)
    csv.writer(buf, lineterminator="\n").writerows(
        [rounded_cell(v, d) for v, d in zip(row, decimals, strict=True)] for row in rows)
    return buf.getvalue()
