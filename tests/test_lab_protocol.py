"""live.lab.protocol: the JSON lines the lab and its children exchange (no root, no network)."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from live.lab.protocol import Events, ProtocolError, emit, read_message, read_t0, send, wait_event

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[1]


def test_send_then_read_message_round_trips_every_field() -> None:
    stream = io.StringIO()
    t0 = 12345.678901234567  # a time.monotonic() value: JSON keeps every bit of a float
    send(stream, "t0", t0=t0)
    send(stream, "start")
    send(stream, "set", rate=[1, 2.5], name="x")
    lines = stream.getvalue().splitlines(keepends=True)
    assert lines == ['{"cmd": "t0", "t0": 12345.678901234567}\n', '{"cmd": "start"}\n',
                     '{"cmd": "set", "rate": [1, 2.5], "name": "x"}\n']
    assert [read_message(line) for line in lines] == [{"cmd": "t0", "t0": t0}, {"cmd": "start"},
                                                      {"cmd": "set", "rate": [1, 2.5], "name": "x"}]
    assert read_t0(lines[0]) == t0


def test_emit_writes_one_event_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    emit("ready", port=5201)
    emit("exit", stats={"drops": 0})
    out = capsys.readouterr().out
    assert out == '{"event": "ready", "port": 5201}\n{"event": "exit", "stats": {"drops": 0}}\n'
    assert [read_message(line) for line in out.splitlines()] == [{"event": "ready", "port": 5201},
                                                                 {"event": "exit", "stats": {"drops": 0}}]


@pytest.mark.parametrize("line", ["T0 12345.6\n", "READY\n", "start 1.5\n", "[1, 2]\n", '"t0"\n', "{bad json}\n"])
def test_a_line_that_is_not_a_json_object_is_rejected_quoting_it(line: str) -> None:
    with pytest.raises(ProtocolError, match="not a JSON object") as exc:
        read_message(line)
    assert repr(line.strip()) in str(exc.value)


def test_blank_lines_are_nothing() -> None:
    assert read_message("\n") is None and read_message(b"  \r\n") is None


@pytest.mark.parametrize("line", ['{"cmd": "start", "t0": 1.0}', '{"cmd": "t0"}', '{"cmd": "t0", "t0": "soon"}',
                                  '{"event": "ready"}', "T0 1.0"])
def test_read_t0_wants_a_t0_command_with_a_number(line: str) -> None:
    with pytest.raises(ProtocolError):
        read_t0(line)


def _child(body: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(body)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1, cwd=REPO)


def _close(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


def test_wait_event_passes_over_other_events_and_returns_the_one_asked_for() -> None:
    proc = _child("""
        import json, sys
        print(json.dumps({"event": "log", "n": 1}), flush=True)
        print(json.dumps({"event": "ready", "port": 7}), flush=True)
        sys.stdin.readline()
    """)
    try:
        assert wait_event(proc, "ready", 20, "toy") == {"event": "ready", "port": 7}
    finally:
        _close(proc)


def test_wait_event_leaves_what_follows_the_event_to_communicate() -> None:
    """The lab waits for the client's ready, then reads the rest (its exit event) with communicate()."""
    proc = _child("""
        import json
        print(json.dumps({"event": "ready"}) + "\\n" + json.dumps({"event": "exit", "n": 3}), flush=True)
    """)
    assert wait_event(proc, "ready", 20, "toy") == {"event": "ready"}
    out, _ = proc.communicate(timeout=20)
    assert [read_message(line) for line in out.splitlines()] == [{"event": "exit", "n": 3}]


def test_wait_event_rejects_a_child_that_does_not_speak_json() -> None:
    proc = _child("""
        import sys
        print("READY", flush=True)
        sys.stdin.readline()
    """)
    try:
        with pytest.raises(ProtocolError, match=r"toy: not a JSON object: 'READY'"):
            wait_event(proc, "ready", 20, "toy")
    finally:
        _close(proc)


def test_wait_event_reports_a_child_that_ends_first_with_its_stderr() -> None:
    proc = _child("""
        import sys
        sys.exit("no probes here")
    """)
    with pytest.raises(ProtocolError, match=r"toy exited \(rc=1\) before its 'ready' event: no probes here"):
        wait_event(proc, "ready", 20, "toy")
    _close(proc)


def test_wait_event_times_out() -> None:
    proc = _child("""
        import sys
        sys.stdin.readline()
    """)
    try:
        with pytest.raises(TimeoutError, match=r"toy sent no 'ready' event within 0\.3 s"):
            wait_event(proc, "ready", 0.3, "toy")
    finally:
        _close(proc)


def test_events_carry_a_conversation_to_its_exit_event() -> None:
    """A child that answers each command with an event, and says exit at EOF: the parent side of the link."""
    proc = _child("""
        import json, sys
        from live.lab.protocol import emit, read_message
        emit("ready")
        n = 0
        for line in sys.stdin:
            msg = read_message(line)
            if msg is None:
                continue
            n += 1
            emit("echo", got=msg)
        emit("exit", commands=n)
    """)
    events = Events(proc, "echo child")
    try:
        assert events.wait("ready", 20) == {"event": "ready"}
        assert proc.stdin is not None
        send(proc.stdin, "stats")
        assert events.wait("echo", 20) == {"event": "echo", "got": {"cmd": "stats"}}
        send(proc.stdin, "start", t0=2.5)
        assert events.wait("echo", 20)["got"] == {"cmd": "start", "t0": 2.5}
        proc.stdin.close()
        assert events.wait("exit", 20) == {"event": "exit", "commands": 2}
        assert events.exit == {"event": "exit", "commands": 2}
        with pytest.raises(ProtocolError, match=r"echo child exited \(rc=0\) before its 'stats' event"):
            events.wait("stats", 20)
    finally:
        proc.wait(10)
        events.join(5)


def test_events_stop_at_a_line_that_breaks_the_protocol() -> None:
    proc = _child("""
        import json, sys
        print("hello there", flush=True)
        print(json.dumps({"event": "ready"}), flush=True)
        sys.stdin.readline()
    """)
    events = Events(proc, "chatty child")
    try:
        with pytest.raises(ProtocolError, match=r"chatty child broke the protocol \(not a JSON object: 'hello there'"):
            events.wait("ready", 20)
    finally:
        _close(proc)
        events.join(5)
