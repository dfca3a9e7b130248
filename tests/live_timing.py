"""Timing plumbing for live tests: ports nobody else can hold, waits on conditions, and this machine's
own scheduling jitter, measured in the same run instead of guessed.

Why: the live tests share a 2-core machine with other work. A fixed ``sleep`` followed by an exact
assertion, or a window of a few milliseconds, passes on an idle machine and fails when a busy process
takes a core. So a test waits for the condition it means (with a generous deadline that only bounds
a broken run), and a timing window is sized from what this machine showed while the test ran.
"""

from __future__ import annotations

import contextlib
import math
import socket
import time
from collections.abc import Callable

__all__ = ["binomial_min_n", "free_port_in", "timer_lateness_s", "wait_until"]


def free_port_in(ns: str) -> int:
    """A TCP port free in network namespace ``ns``: bound there as port 0 and read back.

    Only for namespaces private to the test (a fresh ``veth_pair``): nobody else can take the port
    between this call and the test's own bind. Never hard-code or draw ports at random from Linux's
    ephemeral range (32768-60999): another process' outgoing connection may hold it.
    """
    from live.kernel.netns import in_netns

    with in_netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with contextlib.closing(s):
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.001) -> float:
    """Poll ``cond`` until it is true; the seconds it took. Raises AssertionError naming ``what`` after
    ``timeout_s`` (a bound for a broken run, not a measurement: make it generous)."""
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)
    return time.monotonic() - t0


def timer_lateness_s(n: int = 50, period_s: float = 0.002) -> list[float]:
    """How late ``n`` timer wake-ups ``period_s`` apart came (seconds, sorted): this process'
    scheduling jitter right now, on whatever else the machine is doing."""
    late = []
    t_next = time.monotonic() + period_s
    for _ in range(n):
        time.sleep(max(0.0, t_next - time.monotonic()))
        late.append(max(0.0, time.monotonic() - t_next))
        t_next += period_s
    return sorted(late)


def binomial_min_n(p: float, min_count: int, sigmas: float = 5.0) -> int:
    """The fewest Bernoulli(p) trials whose count is ``min_count`` or more at ``sigmas`` standard
    deviations below its mean: ``n p - sigmas sqrt(n p (1 - p)) >= min_count``."""
    # solve p x^2 - sigmas sqrt(p (1 - p)) x - min_count = 0 for x = sqrt(n)
    b = sigmas * math.sqrt(p * (1 - p))
    x = (b + math.sqrt(b * b + 4 * p * min_count)) / (2 * p)
    return math.ceil(x * x)
