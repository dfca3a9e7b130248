"""How every tokenpace command line ends: exit codes, bad-input lines, and no tracebacks.

A user who meets a traceback stops trusting the tool. Every ``python -m sim|analysis|live``
command therefore runs its ``main`` through :func:`run_cli`, which turns

- :class:`BadInput` (and :class:`scenarios.ScenarioError`, which is one) into its lines on stderr,
  each ``error: <file or --flag>: <key>: <problem>``, and exit code 2;
- Ctrl-C into ``interrupted`` and exit code 130;
- anything unexpected into one line and exit code 1, saying how to see the traceback
  (``--debug`` anywhere on the command line, or ``TOKENPACE_DEBUG=1``).

argparse's own usage errors already exit 2 with plain lines and pass through untouched.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence

__all__ = [
    "DEBUG_ENV",
    "EXIT_BAD_INPUT",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "BadInput",
    "debug_requested",
    "printable",
    "run_cli",
]

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
DEBUG_ENV = "TOKENPACE_DEBUG"
DEBUG_FLAG = "--debug"


class BadInput(ValueError):
    """Input the user can fix: one or more problems, each naming where (a file and key, or a flag).

    ``BadInput("--seed", "must be >= 0")`` or ``BadInput.many([("cfg.yaml: a.b", "too big"), ...])``.
    ``str()`` is every problem, one per line.
    """

    def __init__(self, where: str, message: str) -> None:
        self.problems: list[tuple[str, str]] = [(str(where), str(message))]
        super().__init__(self._text())

    @classmethod
    def many(cls, problems: Sequence[tuple[str, str]]) -> BadInput:
        if not problems:
            raise ValueError("BadInput.many needs at least one problem")
        err = cls(*problems[0])
        err.problems = [(str(w), str(m)) for w, m in problems]
        err.args = (err._text(),)
        return err

    def _text(self) -> str:
        return "\n".join(f"{w}: {m}" if w else m for w, m in self.problems)

    def lines(self) -> list[str]:
        return str(self).splitlines() or [type(self).__name__]


def printable(text: str) -> str:
    """``text`` with every character that is not printable escaped (``\\x1e``), so that one problem stays
    one line: a name read from a file may hold a line or record separator, which ``splitlines`` and a
    terminal would break the line at."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def debug_requested(argv: Sequence[str] = ()) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def run_cli(main: Callable[[list[str]], int], argv: Sequence[str] | None, prog: str,
            bad_input: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``main(argv)`` and return its exit code, never letting a traceback reach the user.

    ``--debug`` is removed from ``argv`` before ``main`` sees it (any command accepts it);
    ``bad_input`` names further exception types whose message is a user-facing problem (exit 2).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(args)
    args = [a for a in args if a != DEBUG_FLAG]
    try:
        code = main(args)
    except (BadInput, *bad_input) as exc:
        lines = exc.lines() if isinstance(exc, BadInput) else (str(exc).splitlines() or [type(exc).__name__])
        for line in lines:
            print(f"error: {printable(line)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `... | head`: the reader left; nothing to say
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return EXIT_OK
    except SystemExit:
        raise  # argparse: usage errors exit 2 with plain lines, --help exits 0
    except Exception as exc:
        if debug:
            traceback.print_exc()
        else:
            print(f"{prog}: internal error: {type(exc).__name__}: {_one_line(str(exc))} "
                  f"(rerun with {DEBUG_FLAG} or {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    return EXIT_OK if code is None else int(code)
