"""``--upstream``: proxying a (fake, loopback) OpenAI-compatible server, re-pacing it, cancelling it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import live_import

from live.serve.app import running_server
from live.serve.config import LiveConfig
from live.serve.sse import is_token_event, split_sse
from sim.model.serving import CREDIT_CAP_TOKENS

openai = live_import("openai")
pytestmark = pytest.mark.timeout(60)


class FakeUpstream:
    """vLLM-shaped streaming: a role chunk, one chunk per token at ``tps``, a finish chunk, usage, [DONE]."""

    def __init__(self, tps: float, n: int) -> None:
        self.tps, self.n = tps, n
        self.written: dict[str, int] = {}
        self.t_written: dict[str, list[float]] = {}  # when each token chunk was written
        self.left_at: dict[str, float] = {}
        self.requests: list[dict[str, Any]] = []

    def word(self, i: int) -> str:
        return f" w{i}"

    def chunk(self, rid: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
        obj = {"id": f"up-{rid}", "object": "chat.completion.chunk", "created": 1, "model": "up",
               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return b"data: " + json.dumps(obj).encode() + b"\r\n\r\n"  # CRLFs, as some servers send

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        rid = body.get("user", "anon")
        if body.get("model") == "bad":
            return web.json_response({"error": {"message": "The model `bad` does not exist.",
                                                "type": "NotFoundError", "param": None, "code": 404}}, status=404)
        n = min(self.n, body.get("max_tokens") or self.n)
        if not body.get("stream"):
            return web.json_response({"id": "up", "object": "chat.completion", "created": 1, "model": "up",
                                      "choices": [{"index": 0, "message": {"role": "assistant",
                                                   "content": "".join(self.word(i) for i in range(n))},
                                                   "finish_reason": "length"}],
                                      "usage": {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": n + 3}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        self.written[rid] = 0
        self.t_written[rid] = []
        try:
            await resp.write(self.chunk(rid, {"role": "assistant", "content": ""}))
            for i in range(n):
                await resp.write(self.chunk(rid, {"content": self.word(i)}))
                self.written[rid] = i + 1
                self.t_written[rid].append(time.monotonic())
                await asyncio.sleep(1 / self.tps)
            await resp.write(self.chunk(rid, {}, "length"))
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except (asyncio.CancelledError, ConnectionResetError, aiohttp.ClientConnectionResetError):
            self.left_at[rid] = time.monotonic()
            raise
        return resp

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "up-model", "object": "model"}]})


@contextlib.asynccontextmanager
async def upstream(tps: float, n: int) -> AsyncIterator[tuple[FakeUpstream, str]]:
    fake = FakeUpstream(tps, n)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.chat)
    app.router.add_get("/v1/models", fake.models)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield fake, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 45))


def test_sse_helpers() -> None:
    buf = bytearray(b'data: {"choices":[{"delta":{"content":"a"}}]}\r\n\r\ndata: [DONE]\n\npartial')
    events = split_sse(buf)
    assert len(events) == 2 and bytes(buf) == b"partial"
    assert is_token_event(b'{"choices":[{"delta":{"content":"a"}}]}') is True
    assert is_token_event(b'{"choices":[{"delta":{"role":"assistant","content":""}}]}') is False
    assert is_token_event(b'{"choices":[{"text":" x"}]}') is True
    assert is_token_event(b'{"choices":[],"usage":{}}') is False
    assert is_token_event(b"[DONE]") is None


def test_openai_client_through_the_proxy() -> None:
    async def main() -> None:
        async with upstream(tps=2000, n=8) as (fake, up_url), running_server(
                LiveConfig(port=0, upstream=up_url, control_interval_s=0.05)) as srv:
            def call() -> tuple[str, Any, Any]:
                client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
                text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
                    model="up-model", messages=[{"role": "user", "content": "hi"}], stream=True, user="r1",
                    extra_body={"tokenpace": {"reading_tps": 12}}) if c.choices)
                full = client.chat.completions.create(model="up-model", max_tokens=5,
                                                      messages=[{"role": "user", "content": "hi"}])
                with pytest.raises(openai.NotFoundError) as err:
                    client.chat.completions.create(model="bad", messages=[{"role": "user", "content": "x"}])
                return text, full, err.value

            text, full, err = await asyncio.to_thread(call)
            async with aiohttp.ClientSession() as s, s.get(srv.url + "/v1/models") as r:
                models = await r.json()
            ps = srv.state.pacing.get("c000001")
        assert text == "".join(fake.word(i) for i in range(8))
        assert full.choices[0].message.content == "".join(fake.word(i) for i in range(5))
        assert err.status_code == 404 and "does not exist" in str(err.body)
        assert models["data"][0]["id"] == "up-model"
        assert "tokenpace" not in fake.requests[0] and fake.requests[0]["stream"] is True
        assert ps.kind == "upstream" and ps.generated == 8 and ps.sent == 8 and ps.outcome == "completed"

    run(main())


def test_proxy_repaces_upstream_tokens() -> None:
    """The upstream makes 300 tok/s; the client gets them at the controller's 25 tok/s."""
    async def main() -> tuple[list[float], Any, list[float]]:
        async with upstream(tps=300, n=40) as (fake, up_url):
            cfg = LiveConfig(port=0, upstream=up_url, controller="fixed", controller_params={"rate_tps": 25},
                             control_interval_s=0.05)
            async with running_server(cfg) as srv, aiohttp.ClientSession() as s:
                times: list[float] = []
                body = {"model": "up", "stream": True, "user": "p1",
                        "messages": [{"role": "user", "content": "hi"}]}
                async with s.post(srv.url + "/v1/chat/completions", json=body,
                                  headers={"x-tokenpace-stream-id": "p1"}) as r:
                    buf = bytearray()
                    async for chunk in r.content.iter_any():
                        buf += chunk
                        for ev in split_sse(buf):
                            if is_token_event(ev.split(b"data: ", 1)[1].strip()):
                                times.append(time.monotonic())
                return times, srv.state.pacing.get("p1"), fake.t_written["p1"]

    times, ps, written = run(main())
    assert len(times) == 40 and ps.generated == 40 and ps.outcome == "completed"
    # the upstream was read as fast as it sent (at the pace this machine let it send: 0.13 s idle, more
    # when loaded), not at the client's 1.6 s: every token within 0.2 s of its write
    lag_s = [g - w for g, w in zip(ps.t_generated, written, strict=True)]
    print(f"\nupstream wrote 40 tokens in {written[-1] - written[0]:.3f} s; read lag max {max(lag_s):.3f} s")
    assert max(lag_s) < 0.2
    steady = [t for t in times if t >= times[0] + 0.1]
    rate = (len(steady) - 1) / (steady[-1] - steady[0])
    assert rate == pytest.approx(25, rel=0.05)
    worst = max((j - i) - 25 * (steady[j] - steady[i]) for i in range(len(steady)) for j in range(i, len(steady)))
    assert worst <= CREDIT_CAP_TOKENS + 1


def test_proxy_cancels_the_upstream_request_when_the_client_leaves() -> None:
    async def main() -> tuple[FakeUpstream, float, Any, int]:
        async with upstream(tps=200, n=100_000) as (fake, up_url):
            cfg = LiveConfig(port=0, upstream=up_url, controller="fixed", controller_params={"rate_tps": 20},
                             control_interval_s=0.05)
            async with running_server(cfg) as srv:
                async with aiohttp.ClientSession() as s:
                    body = {"model": "up", "stream": True, "user": "gone",
                            "messages": [{"role": "user", "content": "hi"}]}
                    resp = await s.post(srv.url + "/v1/chat/completions", json=body,
                                        headers={"x-tokenpace-stream-id": "gone"})
                    got = 0
                    async for chunk in resp.content.iter_any():
                        got += chunk.count(b'"content"')
                        if got >= 6:
                            break
                    t_close = time.monotonic()
                    resp.close()
                    for _ in range(200):
                        if "gone" in fake.left_at:
                            break
                        await asyncio.sleep(0.01)
                    written_then = fake.written["gone"]
                    await asyncio.sleep(0.3)
                assert fake.written["gone"] == written_then  # the upstream stopped generating
                return fake, t_close, srv.state.pacing.get("gone"), srv.state.upstream.cancelled_upstream

    fake, t_close, ps, cancelled = run(main())
    assert "gone" in fake.left_at, "the upstream never saw the client leave"
    assert fake.left_at["gone"] - t_close < 1.0
    assert fake.written["gone"] < 1000
    assert cancelled == 1 and ps.outcome == "cancelled"


def test_unreachable_upstream_is_a_502_in_openai_shape() -> None:
    import socket

    async def main(dead: str) -> tuple[int, dict[str, Any]]:
        async with running_server(LiveConfig(port=0, upstream=dead)) as srv, aiohttp.ClientSession() as s:
            body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            async with s.post(srv.url + "/v1/chat/completions", json=body) as r:
                return r.status, await r.json()

    # a loopback port bound but not listening, held for the whole test: a connection to it is refused,
    # and no other process can take the port in the meantime and answer
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        status, body = run(main(f"http://127.0.0.1:{probe.getsockname()[1]}"))
    assert status == 502 and body["error"]["type"] == "upstream_error"
