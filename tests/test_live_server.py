"""Live server on loopback, no root: OpenAI compatibility, errors, /hint, /metrics, per-connection pacing.

The kernel side is replaced by telemetry sources that report what a test wants for the cookies
the server registered, so the control loop runs exactly as it would on eBPF samples.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import aiohttp
import pytest
from conftest import live_import

from live.kernel.source import FakeTelemetry, SocketStats
from live.serve.app import running_server
from live.serve.backends.engine import TextGenerator
from live.serve.config import LiveConfig
from live.serve.pacing import PacingLoop
from scenarios.schema import ServerSpec
from sim.model.serving import CREDIT_CAP_TOKENS

openai = live_import("openai")

pytestmark = pytest.mark.timeout(60)
FAST = ServerSpec(d0_s=0.005, d1_s=1e-5)


def run(coro: Any, timeout: float = 45.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def config(**kw: Any) -> LiveConfig:
    kw.setdefault("server", FAST)
    kw.setdefault("control_interval_s", 0.05)
    return LiveConfig(port=0, **kw)


def chat_body(n: int, **kw: Any) -> dict[str, Any]:
    return {"model": "tokenpace-engine", "messages": [{"role": "user", "content": "hello there"}], "stream": True,
            "max_tokens": n, **kw}


async def sse_tokens(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
                     headers: dict[str, str] | None = None) -> tuple[list[float], list[str]]:
    """Arrival time and text of every token event of one streamed response."""
    times: list[float] = []
    texts: list[str] = []
    async with session.post(url + "/v1/chat/completions", json=body, headers=headers or {}) as r:
        assert r.status == 200, await r.text()
        buf = b""
        async for chunk in r.content.iter_any():
            now = time.monotonic()
            buf += chunk
            while b"\n\n" in buf:
                ev, buf = buf.split(b"\n\n", 1)
                data = ev.removeprefix(b"data: ")
                if data == b"[DONE]":
                    return times, texts
                obj = json.loads(data)
                for ch in obj["choices"]:
                    if ch["delta"].get("content"):
                        times.append(now)
                        texts.append(ch["delta"]["content"])
    return times, texts


class CookieTelemetry(FakeTelemetry):
    """Reports ``stats_for(stream)`` for the socket of every registered stream it returns one for."""

    def __init__(self, stats_for: Any) -> None:
        super().__init__()
        self.stats_for = stats_for
        self.pacing: PacingLoop | None = None

    def poll(self) -> dict[int, SocketStats]:
        if self.pacing is not None:
            for s in list(self.pacing.streams.values()):
                if s.conn is not None and s.conn.cookie is not None:
                    st = self.stats_for(s)
                    if st is not None:
                        self.push(st)
        return super().poll()


def bad_link(cookie: int) -> SocketStats:
    return SocketStats(cookie=cookie, srtt_us=800_000, rtt_min_us=700_000, rtt_max_us=950_000, rtt_p95_us=900_000,
                       retrans=10, cwnd_pkts=2, ssthresh_pkts=2, snd_wnd_bytes=65535, inflight_bytes=3000,
                       acked_bytes=0, samples=5)


# --------------------------------------------------------------------------- OpenAI compatibility
def test_openai_client_streams_a_chat_completion() -> None:
    async def main() -> None:
        async with running_server(config()) as srv:
            def call() -> tuple[str, list[Any]]:
                client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
                stream = client.chat.completions.create(
                    model="tokenpace-engine", messages=[{"role": "user", "content": "Tell me a story"}],
                    stream=True, max_tokens=12, stream_options={"include_usage": True},
                    extra_headers={"x-tokenpace-stream-id": "oa-1"})
                chunks = list(stream)
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                return text, chunks

            text, chunks = await asyncio.to_thread(call)
            words = TextGenerator(srv.state.config.seed, "oa-1")
            assert text == "".join(words.next() for _ in range(12))  # deterministic pseudo-text
            token_chunks = [c for c in chunks if c.choices]
            assert len(token_chunks) == 12  # one SSE event per token
            assert token_chunks[0].choices[0].delta.role == "assistant"
            assert token_chunks[-1].choices[0].finish_reason == "length"
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
            assert all(c.object == "chat.completion.chunk" for c in chunks)

    run(main())


def test_openai_client_non_streaming_and_legacy_completions() -> None:
    async def main() -> None:
        async with running_server(config()) as srv:
            def call() -> tuple[Any, str, Any]:
                client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
                full = client.chat.completions.create(
                    model="m1", messages=[{"role": "user", "content": "hi"}], max_tokens=7)
                streamed = "".join(c.choices[0].text for c in client.completions.create(
                    model="m1", prompt="Once upon a time", max_tokens=5, stream=True) if c.choices)
                legacy = client.completions.create(model="m1", prompt="Once", max_tokens=4)
                return full, streamed, legacy

            full, streamed, legacy = await asyncio.to_thread(call)
            assert full.object == "chat.completion" and full.model == "m1"
            assert full.choices[0].message.role == "assistant"
            assert len(full.choices[0].message.content.split()) >= 6
            assert full.usage.completion_tokens == 7 and full.choices[0].finish_reason == "length"
            assert len(streamed.split()) >= 4
            assert legacy.object == "text_completion" and legacy.usage.completion_tokens == 4

    run(main())


def test_bad_requests_get_openai_shaped_errors() -> None:
    async def main() -> None:
        async with running_server(config()) as srv:
            def official() -> Any:
                client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
                with pytest.raises(openai.BadRequestError) as info:
                    client.chat.completions.create(model="m", messages=[], max_tokens=3)
                return info.value

            err = await asyncio.to_thread(official)
            assert err.status_code == 400 and err.body["param"] == "messages"
            cases = [
                (b"{not json", 400, None),
                (json.dumps({"model": "m"}).encode(), 400, "messages"),
                (json.dumps(chat_body(0)).encode(), 400, "max_tokens"),
                (json.dumps({**chat_body(3), "stream": False, "stream_options": {"include_usage": True}}).encode(),
                 400, "stream_options"),
                (json.dumps({**chat_body(3), "n": 2}).encode(), 400, "n"),
                (json.dumps({**chat_body(3), "stream": "yes"}).encode(), 400, "stream"),
                (json.dumps({k: v for k, v in chat_body(3).items() if k != "model"}).encode(), 400, "model"),
                (json.dumps({**chat_body(3), "tokenpace": {"reading_tps": -1}}).encode(), 400,
                 "tokenpace.reading_tps"),
            ]
            async with aiohttp.ClientSession() as s:
                for raw, status, param in cases:
                    async with s.post(srv.url + "/v1/chat/completions", data=raw,
                                      headers={"Content-Type": "application/json"}) as r:
                        body = await r.json()
                        assert r.status == status, body
                        assert set(body["error"]) == {"message", "type", "param", "code"}
                        assert body["error"]["type"] == "invalid_request_error"
                        assert body["error"]["param"] == param
                async with s.post(srv.url + "/v1/chat/completions", json=chat_body(3),
                                  headers={"x-reading-tps": "fast"}) as r:
                    assert r.status == 400 and (await r.json())["error"]["param"] == "x-reading-tps"
                async with s.post(srv.url + "/v1/completions", json={"model": "m", "prompt": 3}) as r:
                    assert r.status == 400 and (await r.json())["error"]["param"] == "prompt"
                async with s.get(srv.url + "/v1/nothing-here") as r:
                    assert r.status == 404 and "error" in await r.json()
                async with s.get(srv.url + "/v1/chat/completions") as r:
                    assert r.status == 405 and "error" in await r.json()
                async with s.get(srv.url + "/hint", params={"stream": "nope"}) as r:
                    assert r.status == 404 and (await r.json())["error"]["code"] == "stream_not_found"

    run(main())


def test_config_rejects_unknown_and_sim_only_controllers() -> None:
    with pytest.raises(ValueError, match="unknown controller"):
        LiveConfig(controller="no-such-thing")
    with pytest.raises(ValueError, match="sim only"):
        LiveConfig(controller="oracle")
    with pytest.raises(ValueError, match="controller_params"):
        LiveConfig(controller="fixed", controller_params={"rate_tps": -1})
    cfg = LiveConfig.from_scenario("steady-broadband", "fixed", port=0)
    assert cfg.server.d0_s == 0.02 and cfg.control_interval_s == 0.1 and cfg.scenario["name"] == "steady-broadband"
    assert 5 <= cfg.default_reading_tps <= 15 and cfg.host == "127.0.0.1"


def test_telemetry_factory_gets_the_bound_port() -> None:
    made: list[int] = []

    def factory(port: int) -> FakeTelemetry:
        made.append(port)
        return FakeTelemetry()

    async def main() -> tuple[int, Any]:
        async with running_server(config(), factory) as srv:
            await asyncio.sleep(0.15)
            return srv.port, srv.state.source

    port, source = run(main())
    assert made == [port] and port > 0 and source.started and source.polls >= 2 and source.closed


# --------------------------------------------------------------------------- /hint, /metrics, /healthz
def test_hint_metrics_healthz_and_models() -> None:
    async def main() -> None:
        cfg = config(controller="fixed", controller_params={"rate_tps": 20})
        async with running_server(cfg) as srv, aiohttp.ClientSession() as s:
            task = asyncio.create_task(sse_tokens(s, srv.url, chat_body(16), {"x-tokenpace-stream-id": "h1"}))
            await asyncio.sleep(0.3)
            async with s.get(srv.url + "/hint") as r:
                host = await r.json()
            async with s.get(srv.url + "/hint", params={"stream": "h1"}) as r:
                one = await r.json()
            async with s.get(srv.url + "/metrics") as r:
                assert r.status == 200 and r.content_type == "text/plain"
                metrics = await r.text()
            times, _ = await task
            async with s.get(srv.url + "/healthz") as r:
                health = await r.json()
            async with s.get(srv.url + "/v1/models") as r:
                models = await r.json()
            async with s.get(srv.url + "/metrics") as r:
                after = await r.text()
        assert set(host) >= {"token_rate", "sleep_seconds", "health"}
        assert host["token_rate"] == pytest.approx(20) and host["sleep_seconds"] == pytest.approx(0.05)
        assert 0 <= host["health"] <= 1 and host["streams"] == 1
        assert one["stream"] == "h1" and one["token_rate"] == pytest.approx(20) and one["cookie"] is not None
        assert one["sleep_seconds"] == pytest.approx(0.05) and one["health"] == 1.0
        assert "tokenpace_active_streams 1.0" in metrics
        assert "tokenpace_decided_rate_tps_bucket" in metrics and "tokenpace_srtt_seconds_bucket" in metrics
        assert "tokenpace_tokens_generated_total" in after and "tokenpace_tokens_sent_total 16.0" in after
        assert 'tokenpace_streams_total{outcome="completed"} 1.0' in after
        assert health["status"] == "ok" and health["controller"] == "fixed" and health["mode"] == "engine"
        assert health["engine"]["steps"] >= 16
        assert models["object"] == "list" and models["data"][0]["id"] == "tokenpace-engine"
        assert len(times) == 16

    run(main())


# --------------------------------------------------------------------------- pacing
def released_within(times: list[float], rate: float) -> float:
    """Largest excess of tokens over ``rate * window`` for any window of consecutive arrivals."""
    worst = 0.0
    for i in range(len(times)):
        for j in range(i + 1, len(times)):
            worst = max(worst, (j - i) - rate * (times[j] - times[i]))
    return worst


def test_per_connection_pacing_follows_each_sockets_telemetry() -> None:
    """ewma on two concurrent streams: the one whose socket reports 800 ms RTT and retransmits is
    held at min_tps, the other is allowed max_tps. The rates reach the client: the bad stream's tokens
    arrive no faster than min_tps, the good stream's as fast as the engine made them.

    How fast the good stream goes is not a constant: the engine steps at most 1/d0 times a second,
    far fewer when the process is starved (another test, a busy core). So the good stream is judged
    against the engine's own steps in the same run: a wrapper around the engine's batch planning (its
    core's ``plan``) records every plan, who was in it and when pacing would next let the good stream
    in. Pacing spends one credit when a stream joins a batch and gives it back at max_tps, so a stream held only
    by its own max_tps allowance is left out of a plan only within 1/max_tps of its last one, and
    is due again (the engine, if idle, sleeps until then) at most 1/max_tps after it -- however slow
    the machine. Held at the bad stream's 20 tok/s, it would be due only 50 ms after."""
    params = {"min_tps": 20.0, "max_tps": 120.0, "alpha": 1.0}
    tel = CookieTelemetry(lambda s: bad_link(s.conn.cookie) if s.stream_id.startswith("bad") else None)
    # (plan time, a step was planned, good-1 was in it, when pacing lets good-1 in next)
    plans: list[tuple[float, bool, bool, float]] = []

    async def main() -> tuple[Any, ...]:
        async with running_server(config(controller="ewma", controller_params=params), tel) as srv:
            tel.pacing = srv.state.pacing
            engine = srv.state.engine
            assert engine is not None
            core = engine.core
            plan = core.plan

            def recorded_plan(now: float) -> Any:
                step = plan(now)
                members = [] if step is None else [*step.decodes, *step.prefills, *step.recomputes]
                good_in = any(q.req_id == "good-1" for q in members)
                due = min((q.ready_at(now) for q in engine.running if q.req_id == "good-1"), default=now)
                plans.append((now, step is not None, good_in, due))
                return step

            core.plan = recorded_plan  # type: ignore[method-assign]
            async with aiohttp.ClientSession() as s:
                bad, good = await asyncio.gather(
                    sse_tokens(s, srv.url, chat_body(40), {"x-tokenpace-stream-id": "bad-1", "x-reading-tps": "9"}),
                    sse_tokens(s, srv.url, chat_body(120), {"x-tokenpace-stream-id": "good-1"}))
            return bad[0], good[0], srv.state.pacing.get("bad-1"), srv.state.pacing.get("good-1")

    bad_t, good_t, bad_s, good_s = run(main())
    assert len(bad_t) == 40 and len(good_t) == 120
    # the bad socket's samples reached its controller (cookie -> stream), not the other one's
    assert bad_s.last_obs.srtt_ms == pytest.approx(800) and bad_s.last_obs.retrans == 10
    assert bad_s.last_obs.rtt_p95_ms == pytest.approx(900) and bad_s.last_obs.reading_tps == 9
    assert bad_s.rate_tps == pytest.approx(20) and good_s.rate_tps == pytest.approx(120)
    assert good_s.last_obs is None or good_s.last_obs.srtt_ms is None
    # after the first decision (<= one interval), no window of bad-1's arrivals beats 20 tok/s
    steady = [t for t in bad_t if t >= bad_t[0] + 0.1]
    assert released_within(steady, 20.0) <= CREDIT_CAP_TOKENS + 1
    bad_rate = (len(steady) - 1) / (steady[-1] - steady[0])
    assert bad_rate == pytest.approx(20, rel=0.1)

    # good-1 was held back only by its own max_tps: every plan that left it out (a step without it,
    # or the engine going idle) came, and had it due again, within 1/max_tps of the plan that last took it
    joined = [t for t, _, good_in, _ in plans if good_in]
    assert len(joined) == 120  # one plan per token
    held_s: list[float] = []  # per plan inside good-1's life that left it out: from its last step to when due
    last_in: float | None = None
    for t, _, good_in, due in plans:
        if t > joined[-1]:
            break
        if good_in:
            last_in = t
        elif last_in is not None:
            held_s.append(max(t, due) - last_in)
    longest_held_s = max(held_s, default=0.0)
    n_steps = sum(busy for t, busy, _, _ in plans if joined[0] <= t <= joined[-1])
    step_rate = n_steps / (joined[-1] - joined[0])
    good_gen = good_s.t_generated
    good_gen_rate = (len(good_gen) - 1) / (good_gen[-1] - good_gen[0])
    good_rate = (len(good_t) - 1) / (good_t[-1] - good_t[0])
    print(f"\nengine stepped {step_rate:.0f} times a second while good-1 ran; good-1 left out of {len(held_s)} "
          f"plans, due again at most {longest_held_s * 1000:.2f} ms after its last step (1/max_tps = "
          f"{1000 / params['max_tps']:.2f} ms); generated at {good_gen_rate:.1f} tok/s, received at {good_rate:.1f}; "
          f"bad-1 received at {bad_rate:.1f}")
    # (1e-6: float rounding of the credit arithmetic; 20 tok/s would be 6x over, 100 tok/s 20% over)
    assert longest_held_s <= (1 + 1e-6) / params["max_tps"], "good-1 was held back beyond its max_tps allowance"
    # ... and its tokens reached the client as fast as they were made
    assert good_rate == pytest.approx(good_gen_rate, rel=0.1)


def test_fixed_rate_reaches_the_client() -> None:
    async def main() -> list[float]:
        cfg = config(controller="fixed", controller_params={"rate_tps": 25})
        async with running_server(cfg) as srv, aiohttp.ClientSession() as s:
            times, _ = await sse_tokens(s, srv.url, chat_body(50))
        return times

    times = run(main())
    steady = [t for t in times if t >= times[0] + 0.1]
    rate = (len(steady) - 1) / (steady[-1] - steady[0])
    assert rate == pytest.approx(25, rel=0.05)
    assert released_within(steady, 25.0) <= CREDIT_CAP_TOKENS + 1


def test_writes_apply_tcp_backpressure() -> None:
    """A client that stops reading: tokens wait in the server (counted in queued_bytes), never in the
    transport's user-space buffer beyond one event; the kernel's socket buffers are all that fills."""
    import socket

    async def main() -> tuple[int, int, int, int, int]:
        cfg = config(server=ServerSpec(d0_s=0.001, d1_s=0.0))
        loop = asyncio.get_running_loop()
        async with running_server(cfg) as srv:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", srv.port))
            body = json.dumps(chat_body(20000, tokenpace={"stream_id": "slow"})).encode()
            req = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            await loop.sock_sendall(sock, req)
            while srv.state.pacing.get("slow") is None:
                await asyncio.sleep(0.001)
            ps = srv.state.pacing.get("slow")
            # a fixed, small send buffer (no autotuning) so the kernel fills within the test
            ps.conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            # until the kernel buffers are full: the server holds tokens the socket would not take (a
            # condition, not a fixed wait: how long filling takes depends on how fast this machine runs)
            deadline = time.monotonic() + 20
            while ps.generated - ps.sent < 20:
                assert time.monotonic() < deadline, "the socket never stopped taking tokens"
                await asyncio.sleep(0.01)
            written0, generated0 = ps.written_bytes, ps.generated
            worst_user_buffer = 0
            for _ in range(50):  # 1 s without reading a byte
                await asyncio.sleep(0.02)
                worst_user_buffer = max(worst_user_buffer, ps.conn.transport.get_write_buffer_size())
            now = time.monotonic()
            obs = ps.ctl.observe(now, ps.snapshot(now, None))
            result = (ps.generated, ps.generated - generated0, ps.sent, ps.written_bytes - written0,
                      worst_user_buffer, obs.queued_bytes)
            sock.close()
            return result

    generated, generated_late, sent, written_late, user_buf, queued = run(main())
    print(f"\nbackpressure: generated {generated} ({generated_late} in the second unread), sent {sent}, "
          f"written late {written_late} B, queued {queued} B")
    # The engine kept going (unpaced: ~1000 tok/s idle, what this machine allows when loaded) ...
    assert generated_late >= 100
    # ... but the socket stopped taking them: what it made in that second waits in the server
    assert written_late < 20_000  # nothing more went into the full kernel buffers
    assert generated - sent >= generated_late - written_late // 100  # events are >= 100 B: few went out
    assert user_buf <= 400  # at most one SSE event (~200 B plus chunk framing) outside the kernel
    assert queued > (generated - sent) * 180  # the held tokens count as queued (written by the app, not acked)


def test_byte_accounting_is_exact_across_keep_alive_responses() -> None:
    """Two streamed responses on one connection: the server's per-token end offsets are exactly where
    each token's chunk ends in the bytes the client received (headers and chunk framing included), so
    acked bytes from the kernel map to tokens without error."""
    import socket

    async def main() -> tuple[list[bytes], list[Any], Any]:
        loop = asyncio.get_running_loop()
        async with running_server(config()) as srv:
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", srv.port))
            raws: list[bytes] = []
            for k in range(2):
                body = json.dumps(chat_body(7 + k, tokenpace={"stream_id": f"ka{k}"})).encode()
                await loop.sock_sendall(sock, (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                               f"Content-Type: application/json\r\nContent-Length: {len(body)}"
                                               f"\r\n\r\n").encode() + body)
                raw = b""
                while not raw.endswith(b"0\r\n\r\n"):
                    raw += await loop.sock_recv(sock, 65536)
                raws.append(raw)
            await asyncio.sleep(0.1)
            streams = [srv.state.pacing.get(f"ka{k}") for k in range(2)]
            conn = streams[0].conn
            sock.close()
            return raws, streams, conn

    raws, streams, conn = run(main())
    assert streams[0].conn is streams[1].conn and conn.written == len(raws[0]) + len(raws[1])
    assert streams[1].base == len(raws[0])
    for raw, ps in zip(raws, streams, strict=True):
        assert ps.written_bytes == len(raw)
        ends, pos = [], 0
        for _ in range(ps.generated):  # each token event is one chunk: "<hex>\r\ndata: {...}\n\n\r\n"
            pos = raw.index(b"\n\n\r\n", raw.index(b"data: {", pos)) + 4
            ends.append(pos)
        assert ps.token_end == ends
    # the socket's own count (SIOCOUTQ at each tick): the client read everything, so every token is acked
    assert conn.acked == conn.written and [ps.n_acked for ps in streams] == [ps.generated for ps in streams]
    # the mapping from acked bytes to tokens: the first response and 3 bytes short of token 4 of the second
    ps = streams[1]
    ps.t_acked.clear()
    conn.acked = len(raws[0]) + ps.token_end[4] - 3
    assert ps.update_acks(1.0) == 4
    conn.acked = len(raws[0]) + ps.token_end[4]
    assert ps.update_acks(2.0) == 5 and ps.t_acked == [1.0] * 4 + [2.0]


def test_tcp_congestion_is_set_on_every_client_connection() -> None:
    """``tcp_congestion`` (the lab: the path's cc) is what each client connection runs, whatever the
    machine's default (BBR here); reno is always allowed, so this needs no privilege."""
    import socket

    async def main() -> bytes:
        async with running_server(config(tcp_congestion="reno")) as srv, aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{srv.port}/v1/chat/completions"
            body = chat_body(5, tokenpace={"stream_id": "cc1"})
            async with session.post(url, json=body) as resp:
                await resp.read()
                conn = srv.state.pacing.get("cc1").conn
                sock = socket.socket(fileno=os.dup(conn.fd))
                try:
                    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\0")
                finally:
                    sock.close()

    assert run(main()) == b"reno"
