"""What the lab and its children say to each other on their stdin and stdout: one protocol for all.

Every child the lab spawns -- the server (:mod:`live.lab.serve_child`), the load client (``python -m
live client --sync-stdin``), the cross-traffic sink and sender (:mod:`live.lab.crosstraffic`) and the
user-space link (:mod:`live.lab.tunlink`) -- speaks JSON lines, one object a line, each way:

* parent -> child, on the child's stdin, commands (:func:`send`): ``{"cmd": NAME, ...}``.
  ``{"cmd": "t0", "t0": T}`` hands the server, the client and the sender time 0, a ``time.monotonic()``
  instant just ahead (one machine, one monotonic clock), so that the load, the server's recording and
  the path's timeline all count from it. The link takes ``{"cmd": "start", "t0": T}`` (T optional:
  now), ``{"cmd": "stats"}`` and ``{"cmd": "quit"}``. EOF on stdin means the parent is gone (or has
  nothing more to say).
* child -> parent, on the child's stdout, events (:func:`emit`): ``{"event": "ready", ...}`` first,
  once the child serves, listens or waits for its time 0; replies to commands as events
  (``"started"``, ``"stats"``, ``"error"``); ``{"event": "exit", ...}`` last, with what it counted.
  Diagnostics go to stderr, never stdout.

A line that is not a JSON object is a protocol error (:func:`read_message` says so, quoting it); a
blank line is nothing. A human can drive any child by hand by typing the commands, e.g.
``{"cmd": "start"}`` to the link.

The parent waits for an event with :func:`wait_event` (one child, the caller's thread) or reads all of
a child's events on a thread of its own with :class:`Events` (children it keeps talking to).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
from typing import IO, Any

__all__ = ["Events", "ProtocolError", "emit", "read_message", "read_t0", "send", "wait_event"]


class ProtocolError(RuntimeError):
    """A line that is not a message, or a child that ended before the event its parent waited for."""


def send(stream: IO[str], cmd: str, **fields: Any) -> None:
    """One command ``{"cmd": cmd, **fields}`` as a line on ``stream`` (a child's stdin), flushed."""
    stream.write(json.dumps({"cmd": cmd, **fields}) + "\n")
    stream.flush()


def emit(event: str, **fields: Any) -> None:
    """One event ``{"event": event, **fields}`` as a line on stdout, flushed at once: the parent waits for it."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def read_message(line: str | bytes) -> dict[str, Any] | None:
    """The JSON object one line carries; None for a blank line; :class:`ProtocolError` for anything else."""
    text = line.decode(errors="replace") if isinstance(line, bytes) else line
    if not text.strip():
        return None
    try:
        msg = json.loads(text)
    except ValueError:
        msg = None
    if not isinstance(msg, dict):
        raise ProtocolError(f"not a JSON object: {text.strip()[:200]!r} (one JSON object a line, e.g. "
                            '{"cmd": "t0", "t0": 12345.6})')
    return msg


def read_t0(line: str) -> float:
    """The time 0 a ``{"cmd": "t0", "t0": T}`` line carries; :class:`ProtocolError` for any other line."""
    msg = read_message(line)
    if msg is None or msg.get("cmd") != "t0":
        raise ProtocolError(f'expected {{"cmd": "t0", "t0": <time.monotonic() value>}}, got {line.strip()[:200]!r}')
    try:
        return float(msg["t0"])
    except (KeyError, TypeError, ValueError):
        raise ProtocolError(f"t0 command without a number t0: {line.strip()[:200]!r}") from None


def wait_event(proc: subprocess.Popen[str], event: str, timeout_s: float, what: str = "child") -> dict[str, Any]:
    """Read ``proc``'s stdout in this thread until the event ``event`` (earlier events are passed over).
    :class:`TimeoutError` after ``timeout_s``; :class:`ProtocolError` on a line that is not a message, or
    if the child ends first (with the tail of its stderr, if that is a pipe).

    It reads the pipe a byte at a time, never past the event's line, so that whatever the child writes
    afterwards is still there for ``proc.communicate()`` (a buffered ``readline`` would take it, and
    ``select`` would not see it waiting in the buffer)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout_s
    line = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{what} sent no {event!r} event within {timeout_s:g} s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        byte = os.read(fd, 1)
        if byte and byte != b"\n":
            line += byte
            continue
        if not byte and not line:
            err = proc.stderr.read() if proc.stderr else ""
            raise ProtocolError(f"{what} exited (rc={proc.wait()}) before its {event!r} event: "
                                f"{err.strip()[-1500:]}")
        try:
            msg = read_message(bytes(line))
        except ProtocolError as exc:
            raise ProtocolError(f"{what}: {exc}") from None
        line.clear()
        if msg is not None and msg.get("event") == event:
            return msg


class Events:
    """A child's events, read from its stdout on a thread of its own (for children the parent keeps
    talking to): :meth:`wait` for one, :attr:`exit` the last. A line that is not a message ends the
    reading: the child no longer speaks the protocol."""

    def __init__(self, proc: subprocess.Popen[str], what: str) -> None:
        self.proc, self.what = proc, what
        self.exit: dict[str, Any] | None = None
        self._queue: queue.Queue[dict[str, Any] | BaseException | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True, name=f"{what}-events")
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(OSError, ValueError):  # the stream closed under us: the end
            for line in self.proc.stdout:
                try:
                    msg = read_message(line)
                except ProtocolError as exc:
                    self._queue.put(exc)
                    return
                if msg is None:
                    continue
                if msg.get("event") == "exit":
                    self.exit = msg
                self._queue.put(msg)
        self._queue.put(None)

    def wait(self, event: str, timeout_s: float) -> dict[str, Any]:
        """The next ``event`` event (others before it are passed over). :class:`TimeoutError` after
        ``timeout_s``; :class:`ProtocolError` if the child ends first or breaks the protocol."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                msg = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"{self.what} sent no {event!r} event within {timeout_s:g} s") from None
            if msg is None or isinstance(msg, BaseException):
                self._queue.put(msg)  # the end stays visible to later waits
                why = self._ended() if msg is None else f"broke the protocol ({msg})"
                raise ProtocolError(f"{self.what} {why} before its {event!r} event")
            if msg.get("event") == event:
                return msg

    def _ended(self) -> str:
        """How the child ended its stdout: by exiting (given a moment to be reaped) or not."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            return f"exited (rc={self.proc.wait(2.0)})"
        return "closed its stdout"

    def join(self, timeout_s: float) -> None:
        """Wait for the reading thread (after the child ended) for at most ``timeout_s``."""
        self._thread.join(timeout_s)
