"""Shared by the command-line fuzz tests: run a CLI's ``main`` in this process, capture what it
printed, and check that it ended the way every tokenpace command must (an exit code, plain lines,
never a traceback).

In-process so that hypothesis can try hundreds of inputs in seconds; ``run_module`` does the same
through a real ``python -m`` for the cases that must cross the process boundary.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Ended:
    code: int
    out: str
    err: str

    def check(self, allowed: Sequence[int] = (0, 2)) -> Ended:
        """No traceback anywhere, and an allowed exit code; a bad-input exit says ``error:``."""
        text = self.out + self.err
        assert "Traceback (most recent call last)" not in text, text[-3000:]
        assert self.code in allowed, f"exit {self.code} not in {tuple(allowed)}:\n{text[-3000:]}"
        if self.code == 2:
            assert self.err.strip(), "exit 2 with nothing on stderr"
        return self


def call_main(main: Callable[[list[str]], int | None], argv: Sequence[str]) -> Ended:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return Ended(int(code or 0), out.getvalue(), err.getvalue())


def run_module(module: str, argv: Sequence[str], timeout_s: float = 120, cwd: Path | None = None,
               env: dict[str, str] | None = None) -> Ended:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("TOKENPACE_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True,
                          timeout=timeout_s, cwd=cwd or ROOT, env=full_env, check=False)
    return Ended(proc.returncode, proc.stdout, proc.stderr)


# Text a user might type as an argument: flags, numbers out of range, paths that are not there.
argv_token = st.one_of(
    st.sampled_from(["--seed", "--out", "--jobs", "--controllers", "--help", "-h", "--quiet", "--resume",
                     "-1", "0", "1e309", "nan", "-inf", "99999999999999999999", "", " ", "/", "/dev/null",
                     "/nonexistent/x.yaml", "steady-broadband", "unpaced", "a,,b", "..", "--", "-"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
argv_lists = st.lists(argv_token, max_size=6)

# File contents: bytes that are not UTF-8, YAML of the wrong shape, numbers out of range, huge values.
yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
)
yaml_values = st.recursive(yaml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=12)
file_bytes = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"\xff\xfe\x00bad", b"name: x\n\xc3\x28: 1\n", b"- a\n- b\n", b"42\n", b"{{{{", b"",
                     b"name: bad\nduration_s: -5\nnot_a_key: 1\n", b"a: &x [*x]\n", b"\t- tab\n"]),
)
