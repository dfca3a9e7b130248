"""The live gate of tests/conftest.py: a missing live dependency skips with its reason, and fails under
TOKENPACE_REQUIRE_LIVE=1 -- in a test and at a test module's top level, where pytest.importorskip would
have skipped the whole file even in CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REQUIRE_ENV, live_import

MISSING = "tokenpace_no_such_module_for_the_gate"
TESTS = Path(__file__).resolve().parent


def test_live_import_returns_the_module() -> None:
    assert live_import("json").dumps([1]) == "[1]"


def test_live_import_skips_or_fails_on_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=MISSING):
        live_import(MISSING)
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{MISSING}.*{REQUIRE_ENV}=1"):
        live_import(MISSING)


@pytest.mark.parametrize("required", [False, True])
def test_module_level_live_import(tmp_path: Path, required: bool) -> None:
    (tmp_path / "test_needs_it.py").write_text(
        f"from conftest import live_import\n\nmod = live_import({MISSING!r})\n\n\ndef test_x():\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k != REQUIRE_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    if required:
        env[REQUIRE_ENV] = "1"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert MISSING in out, out
    if required:  # a collection error: pytest runs nothing and exits 2, CI fails with the reason
        assert proc.returncode == pytest.ExitCode.INTERRUPTED and "1 error" in out and "skipped" not in out, out
    else:  # the file is skipped with the reason; nothing left to run
        assert proc.returncode == pytest.ExitCode.NO_TESTS_COLLECTED and "1 skipped" in out, out
