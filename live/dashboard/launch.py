"""``python -m live dashboard``: a Streamlit page over a running (or finished) live recording.

    python -m live dashboard --record DIR [--metrics-url URL] [--port 8501] [--host 127.0.0.1]

Checks the arguments, then runs ``python -m streamlit run live/dashboard/app.py`` headless (no browser
opened, no usage statistics sent, no file watcher, no developer toolbar) with the page's own arguments after ``--``, and
waits for it. Streamlit runs in its own session so that a Ctrl-C reaches it exactly once: SIGINT,
SIGTERM and SIGHUP sent to this process are forwarded to it, and it is sent SIGTERM should this
process die (PR_SET_PDEATHSIG). The exit code is Streamlit's.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import importlib.util
import math
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

APP = Path(__file__).with_name("app.py")
PR_SET_PDEATHSIG = 1
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m live dashboard",
        description="Serve a live dashboard (Streamlit) of a recording that `python -m live --record DIR` is "
        "writing: per-connection RTT, retransmits, decided rate, client buffer and anomaly flags, refreshed "
        "every second, plus the server's counters from its /metrics.")
    p.add_argument("--record", type=Path, required=True, metavar="DIR",
                   help="the recording folder (the server's --record DIR) or one controller folder in it")
    p.add_argument("--metrics-url", metavar="URL",
                   help="the server's base URL or /metrics URL for server-wide counters, e.g. http://127.0.0.1:8000")
    p.add_argument("--port", type=int, default=8501, help="port of the page (default 8501)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--window", type=float, default=60.0, help="seconds of history per connection (default 60)")
    p.add_argument("--refresh", type=float, default=1.0, help="seconds between refreshes (default 1)")
    return p


def check_args(args: argparse.Namespace) -> list[tuple[str, str]]:
    """Every problem with the arguments as (flag, message) pairs (empty = none). Looks only."""
    from live.argcheck import Problems

    problems = Problems()
    problems.input_dir("--record", args.record)
    if problems.port("--port", args.port):
        problems.listen("--host", args.host, "--port", args.port)
    if args.metrics_url:
        problems.http_url("--metrics-url", args.metrics_url)
    problems.positive_s("--window", args.window)
    if not (math.isfinite(args.refresh) and args.refresh >= 0.2):
        problems.add("--refresh", f"at least 0.2 s, got {args.refresh!r}")
    if importlib.util.find_spec("streamlit") is None:
        problems.add("", "streamlit is not installed: pip install -e '.[live]'")
    return problems.items


def streamlit_argv(args: argparse.Namespace) -> list[str]:
    """The command that serves the page."""
    argv = [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.headless", "true", "--server.port", str(args.port), "--server.address", args.host,
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--client.toolbarMode", "viewer",
            "--", "--record", str(args.record.resolve()), "--window", f"{args.window:g}",
            "--refresh", f"{args.refresh:g}"]
    if args.metrics_url:
        argv += ["--metrics-url", args.metrics_url]
    return argv


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def validate(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed arguments once every one checks out (else a BadInput naming each bad flag)."""
    from scenarios.cli_errors import BadInput

    args = parser().parse_args(argv)
    problems = check_args(args)
    if problems:
        raise BadInput.many(problems)
    return args


def main(argv: list[str] | None = None) -> int:
    return run(validate(argv))


def run(args: argparse.Namespace) -> int:
    """Serve the page until Streamlit exits (or this process is told to stop)."""
    print(f"dashboard: http://{args.host}:{args.port}/ (recording {args.record}; Ctrl-C stops)", flush=True)
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    try:
        proc = subprocess.Popen(streamlit_argv(args), start_new_session=True, preexec_fn=preexec)
    except OSError as exc:
        from scenarios.cli_errors import BadInput

        raise BadInput("", f"cannot start streamlit: {exc}") from None

    def forward(signum: int, _frame: FrameType | None) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        rc = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0 if rc in (-signal.SIGINT, -signal.SIGTERM) else rc
