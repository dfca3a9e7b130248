"""`python -m live --scheduler NAME` on real kernel telemetry: a stream is preempted (its KV swapped to
the host over a link of finite bandwidth) and resumed while its client keeps reading.

The server is the command line a user types (``--scheduler``, a paced controller, eBPF telemetry on
loopback, ``--record``), with a scenario whose KV memory holds only 140 tokens. Three streams of 60
output tokens, paced at a fixed 40 tok/s, are read by this test; their readers read at 5 tok/s (the
request's hint). s0 and s1 (16 prompt tokens) start together; s2 (64 prompt tokens) is sent once
their clients hold 30 tokens each: by then the kernel's ACKs have shown the scheduler their buffers
(seconds of reading), and s0 and s1 hold 92 KV tokens, so s2's prefill (65) does not fit although
memory has not overflowed yet (that takes 53 tokens each): it must wait for memory, and tokenpace
makes room by giving up the memory of a stream whose buffer covers the round trip. (When s2 was sent
at a fixed 0.3 s, whether it fit depended on how many tokens s0 and s1 made unpaced before the first
control tick, and under CPU load it often fit: every preemption was then a memory overflow.) Two
streams alone need 152 KV tokens to finish, so memory overflows later too. A swap of tens of KV
tokens at 128 KiB each over the 1 Gb/s host link takes tens of milliseconds each way.
Asserted from the recording:

* a stream was swapped out and later swapped in, its KV on the host link for a while each way,
  the same number of KV tokens out and back; one preemption was the scheduler's choice (a client
  buffer, seen through the kernel's ACKs, covering the round trip) to make room for s2, not a memory
  overflow;
* its client received tokens made before the preemption and after the resume on one open
  connection and, reading at 5 tok/s what arrived at 40, had tokens to read throughout the preemption;
* every client got every token, in order: the texts equal the engine's deterministic words;
* the KV accounting is back to zero at the end (the last step's row, /healthz), run.json names
  the scheduler, and the controller saw the kernel's RTT.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import live_import

from live.serve.backends.engine import TextGenerator
from live.serve.sse import event_data, split_sse

pytestmark = [pytest.mark.live, pytest.mark.timeout(300)]
aiohttp = live_import("aiohttp")

PY = sys.executable
ROOT = Path(__file__).resolve().parents[1]
SCHEDULER = "tokenpace"
RATE_TPS, READING_TPS = 40.0, 5.0
PROMPT, OUTPUT = 16, 60
STREAMS = (("s0", PROMPT), ("s1", PROMPT), ("s2", 64))  # (stream id, prompt tokens)
LATE, AFTER_TOKENS = "s2", 30  # s2 is sent once every other stream's client holds this many tokens
KV_TOKENS = 140
SEED = 7


def scenario(path: Path) -> Path:
    base = yaml.safe_load((ROOT / "scenarios" / "steady-broadband.yaml").read_text())
    base.update(
        name="kv-tiny-live", seed=SEED,
        server={"d0_s": 0.005, "d1_s": 1e-5, "batch_tokens": 256, "kv_tokens": KV_TOKENS, "max_running": 8,
                "preemption": "swap", "swap_gbps": 1.0, "kv_bytes_per_token": 131072},
        controllers={"fixed": {"rate_tps": RATE_TPS}},
    )
    path.write_text(yaml.safe_dump(base))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[Any], log: Path, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s  # the probes compile at start: seconds on a busy machine
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url + "/healthz", timeout=2).read()
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"server at {url} not ready after {timeout_s} s:\n{log.read_text()[-3000:]}")


async def read_stream(session: Any, url: str, sid: str, prompt: int, got: list[tuple[float, str]]) -> None:
    """Append (monotonic time received, text) of every token of one streamed response to ``got``."""
    body = {"model": "tokenpace-engine", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "max_tokens": OUTPUT,
            "tokenpace": {"stream_id": sid, "prompt_tokens": prompt, "output_tokens": OUTPUT,
                          "reading_tps": READING_TPS}}
    async with session.post(url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200, await r.text()
        assert r.headers["x-tokenpace-stream-id"] == sid
        buf = bytearray()
        async for chunk in r.content.iter_any():
            now = time.monotonic()
            buf += chunk
            for ev in split_sse(buf):  # events are padded to the scenario's bytes_per_token (SSE comments)
                data = event_data(ev)
                if data is None:
                    continue
                if data == b"[DONE]":
                    return
                for ch in json.loads(data)["choices"]:
                    if ch["delta"].get("content"):
                        got.append((now, ch["delta"]["content"]))
    raise AssertionError(f"{sid}: the stream ended without [DONE] after {len(got)} tokens")


async def load(url: str) -> dict[str, list[tuple[float, str]]]:
    """Every stream's tokens; LATE is sent once the others' clients hold AFTER_TOKENS tokens each."""
    got: dict[str, list[tuple[float, str]]] = {sid: [] for sid, _ in STREAMS}

    async def one(session: Any, sid: str, prompt: int) -> None:
        while sid == LATE and any(len(g) < AFTER_TOKENS for s, g in got.items() if s != LATE):
            await asyncio.sleep(0.005)
        await read_stream(session, url, sid, prompt, got[sid])

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, sid, prompt) for sid, prompt in STREAMS))
    return got


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def host_link_s(details: str) -> tuple[float, float]:
    """(start, end) of a transfer from an event's details ``... N B to host START-END``."""
    start, end = details.rsplit(" ", 1)[1].split("-")
    return float(start), float(end)


def displayed(received: list[float], reading_tps: float) -> list[float]:
    """When a reader at ``reading_tps`` shows each token: on arrival, or one reading gap after the last."""
    shown: list[float] = []
    for t in received:
        shown.append(max(t, shown[-1] + 1.0 / reading_tps) if shown else t)
    return shown


def test_a_stream_is_preempted_and_resumed_while_its_client_keeps_reading(tmp_path: Path) -> None:
    scn = scenario(tmp_path / "kv-tiny.yaml")
    out = tmp_path / "rec"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with log.open("w") as err:
        server = subprocess.Popen([PY, "-m", "live", "--iface", "lo", "--port", str(port), "--scenario", str(scn),
                                   "--controller", "fixed", "--scheduler", SCHEDULER, "--record", str(out),
                                   "--duration", "240"], stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                  env=env, cwd=ROOT)
    try:
        wait_ready(url, server, log)
        got = asyncio.run(asyncio.wait_for(load(url), 120))
        health = json.loads(urllib.request.urlopen(url + "/healthz", timeout=5).read())
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
    assert server.returncode == 0, log.read_text()[-3000:]

    # every client got every token, in order: the engine's words for (seed, stream id)
    for sid, _ in STREAMS:
        words = TextGenerator(SEED, sid)
        assert [text for _, text in got[sid]] == [words.next() for _ in range(OUTPUT)], sid

    run = json.loads((out / "run.json").read_text())
    t0 = run["live"]["t0_monotonic"]
    assert run["live"]["scheduler"] == {"name": SCHEDULER, "params": {}}
    assert run["scenario"]["server"]["scheduler"]["name"] == SCHEDULER
    rec = out / "fixed"
    events = rows(rec / "events.csv")
    memory = rows(rec / "memory_events.csv")

    # a stream was swapped out, and later swapped back in, over the host link
    outs = [r for r in memory if r["event_type"] == "swap_out"]
    assert outs, "no stream was preempted"
    # tokenpace gave memory up for the waiting s2 because a client's buffer (its Observation, from the
    # kernel's ACKs) covered the round trip -- not only when memory overflowed ("kv used+growth > total")
    assert any(r["reason"].startswith("buffer ") and r["reason"].endswith(f"room for {LATE}") for r in outs), \
        [r["reason"] for r in outs]
    first = outs[0]
    sid = first["req_id"]
    t_out = float(first["time"])
    back = next(r for r in memory if r["event_type"] == "swap_in" and r["req_id"] == sid and float(r["time"]) >= t_out)
    kv_out = int(first["memory_before"]) - int(first["memory_after"])
    assert kv_out >= PROMPT and int(back["memory_after"]) - int(back["memory_before"]) == kv_out  # all of it back
    ev_out = next(r for r in events if r["event_type"] == "swap_out" and r["req_id"] == sid)
    ev_in = next(r for r in events if r["event_type"] == "swap_in" and r["req_id"] == sid
                 and float(r["time"]) >= t_out)
    out_start, out_end = host_link_s(ev_out["details"])
    in_start, in_end = host_link_s(ev_in["details"])
    link_s = kv_out * 131072 / (1.0e9 / 8)  # its KV tokens over 1 Gb/s
    assert out_end - out_start == pytest.approx(link_s, abs=2e-6)
    assert in_end - in_start == pytest.approx(link_s, abs=2e-6) and in_start >= out_end - 1e-6
    assert f"{kv_out * 131072} B to host" in ev_out["details"]

    # its client, on one open connection: tokens made before the preemption and after the resume, and
    # (reading at 5 tok/s what came at 40) tokens still to read all through the preemption
    made = sorted((int(r["idx"]), float(r["t_generated"])) for r in rows(rec / "server_tokens.csv")
                  if r["stream_id"] == sid)
    assert [i for i, _ in made] == list(range(OUTPUT))
    before = sum(t <= t_out for _, t in made)
    assert 0 < before < OUTPUT and made[before][1] >= in_end
    received = [t - t0 for t, _ in got[sid]]
    shown = displayed(received, READING_TPS)
    assert shown[before - 1] > in_end, (shown[before - 1], t_out, in_end)  # never ran dry while swapped out
    print(f"\n{SCHEDULER}: {sid} swapped out at {t_out:.3f} s ({kv_out} KV tokens, link "
          f"{out_start:.3f}-{out_end:.3f}), back at {in_end:.3f} s; its reader had {before} tokens, read "
          f"until {shown[before - 1]:.3f} s; {len(outs)} preemptions in all")

    # the KV accounting is back to zero: no stream holds memory, every preemption was undone
    server_rows = rows(rec / "server.csv")
    assert int(server_rows[-1]["gpu_memory_used"]) == 0 and int(server_rows[-1]["completed_count"]) == len(STREAMS)
    assert health["engine"]["kv_used"] == 0 and health["engine"]["scheduler"] == SCHEDULER
    assert health["engine"]["running"] == health["engine"]["swapped"] == health["engine"]["waiting"] == 0
    assert sum(r["event_type"] == "swap_out" for r in memory) == sum(r["event_type"] == "swap_in" for r in memory)
    assert sum(r["event_type"] == "complete" for r in events) == len(STREAMS)

    # the controller paced on the kernel's view of each socket
    telemetry = rows(rec / "telemetry.csv")
    assert any(r["srtt_ms"] for r in telemetry), "no kernel RTT reached the controller"
    assert {float(r["rate_tps"]) for r in telemetry} == {RATE_TPS}
