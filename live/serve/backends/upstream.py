"""``--upstream URL``: proxy an OpenAI-compatible streaming server (vLLM, Ollama) and re-pace it.

A streamed request is forwarded with ``"stream": true``; the upstream's SSE events are read as
fast as it sends them (up to ``buffer_tokens`` held tokens, beyond which reading stops and TCP
pushes back on the upstream) and released to the client at the rate the connection's controller
decides. Release uses the simulator's pacing credit (:class:`sim.model.serving.PacingCredit`, through
its public methods: ``eligible``, ``ready_at``, ``spend``; a token may go when the credit reaches one,
the credit accrues at the rate, capped at two tokens), so a live proxied stream is paced exactly like
a simulated one. An event carrying text (``delta.content`` or ``text``) is a token; other events
(role only, usage, finish) are forwarded in order without spending credit. Events are forwarded
byte for byte, by the write loop the built-in engine's streams use too (:func:`live.serve.pump.pump`).

When the client leaves, the upstream request is cancelled: its response is closed, which closes
the connection to the upstream (vLLM and Ollama abort a request whose client went away).
Non-streamed requests are forwarded unchanged and unpaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from live.serve.config import LiveConfig
from live.serve.pacing import LiveMetrics, PacedStream, PacingLoop
from live.serve.protocol import ApiError, CompletionRequest
from live.serve.pump import pump
from live.serve.sse import chunked_wire_size, event_data, is_token_event, split_sse
from sim.model.serving import PacingCredit

__all__ = ["StreamHost", "UpstreamProxy"]

log = logging.getLogger("tokenpace.live")
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"}


class StreamHost(Protocol):
    """What the proxy needs of the server it runs in (:class:`live.serve.app.LiveServer`): its clock,
    config, metrics and pacing loop, and a new paced stream for a request."""

    clock: Callable[[], float]
    config: LiveConfig
    metrics: LiveMetrics
    pacing: PacingLoop

    def new_stream(self, request: web.Request, req: CompletionRequest, kind: str) -> PacedStream: ...


class UpstreamProxy:
    def __init__(self, base_url: str, *, api_key: str | None = None, model: str | None = None,
                 buffer_tokens: int = 4096, connect_timeout_s: float = 10.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"upstream URL must be http(s)://host[:port][/v1], got {base_url!r}")
        base = base_url.rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        self.base = base
        self.api_key = api_key
        self.model = model
        self.buffer_tokens = buffer_tokens
        self.connect_timeout_s = connect_timeout_s
        self.session: aiohttp.ClientSession | None = None
        self.cancelled_upstream = 0  # upstream requests closed because the client left

    async def start(self) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s),
                connector=aiohttp.TCPConnector(limit=0))

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    async def models(self) -> Any:
        assert self.session is not None
        async with self.session.get(self.base + "/models", headers=self._headers()) as r:
            r.raise_for_status()
            return await r.json()

    def _body(self, req: CompletionRequest, stream: bool) -> dict[str, Any]:
        body = {k: v for k, v in req.body.items() if k != "tokenpace"}
        if self.model:
            body["model"] = self.model
        body["stream"] = stream
        if not stream:
            body.pop("stream_options", None)
        return body

    async def handle(self, server: StreamHost, request: web.Request, req: CompletionRequest) -> web.StreamResponse:
        assert self.session is not None, "UpstreamProxy.start() was not called"
        url = self.base + ("/chat/completions" if req.chat else "/completions")
        try:
            if not req.stream:
                async with self.session.post(url, json=self._body(req, False), headers=self._headers()) as up:
                    payload = await up.read()
                    headers = {k: v for k, v in up.headers.items() if k.lower() not in _HOP_HEADERS}
                    return web.Response(status=up.status, body=payload, headers=headers)
            return await self._stream(server, request, req, url)
        except aiohttp.ClientConnectorError as exc:
            raise ApiError(502, f"upstream {self.base} unreachable: {exc}", type="upstream_error") from None

    async def _stream(self, server: StreamHost, request: web.Request, req: CompletionRequest,
                      url: str) -> web.StreamResponse:
        assert self.session is not None
        ps = server.new_stream(request, req, "upstream")
        credit = PacingCredit(server.clock())
        ps.target = credit
        up = await self.session.post(url, json=self._body(req, True), headers=self._headers())
        if up.status != 200:
            try:
                payload = await up.read()
            finally:
                up.release()
            headers = {k: v for k, v in up.headers.items() if k.lower() not in _HOP_HEADERS}
            return web.Response(status=up.status, body=payload, headers=headers)
        source = _UpstreamTokens(self, server, request, ps, credit, up)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                                       "x-tokenpace-stream-id": ps.stream_id})
        await pump(server.pacing, ps, request, resp, source)
        return resp


class _UpstreamTokens:
    """A streamed response's events from the upstream (a :class:`live.serve.pump.TokenSource`): read as fast as
    the upstream sends them (up to ``buffer_tokens`` held), released at the pacing credit's rate."""

    def __init__(self, proxy: UpstreamProxy, server: StreamHost, request: web.Request, ps: PacedStream,
                 credit: PacingCredit, up: aiohttp.ClientResponse) -> None:
        self.proxy = proxy
        self.clock = server.clock
        self.interval_s = server.config.control_interval_s
        self.transport = request.transport
        self.ps = ps
        self.credit = credit
        self.up = up
        self.events_in: deque[tuple[bytes, bool]] = deque()
        self.done = False  # the upstream's stream ended (or failed)
        self.complete = False  # ... and every event of it went out
        self.held = 0  # tokens read, not yet released
        self.wake = asyncio.Event()  # an event arrived, or the rate changed
        ps.wake = self.wake.set
        self.room = asyncio.Event()
        self.room.set()
        self.metrics = server.metrics
        # started now, runs from the pump's first wait (after the stream is registered)
        self.reader = asyncio.get_running_loop().create_task(self.read_upstream(), name=f"upstream-{ps.stream_id}")

    def alive(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    async def read_upstream(self) -> None:
        ps, events, wake, room = self.ps, self.events_in, self.wake, self.room
        buffer_tokens = self.proxy.buffer_tokens
        buf = bytearray()
        try:
            async for chunk in self.up.content.iter_any():
                buf += chunk
                for ev in split_sse(buf):
                    data = event_data(ev)
                    if data is None:
                        continue  # comments, keep-alives
                    kind = is_token_event(data)
                    if kind is None:
                        self.done = True
                        events.append((ev, False))
                        wake.set()
                        return
                    if kind:
                        ps.on_generated(self.clock(), chunked_wire_size(len(ev)))
                        self.metrics.tokens_generated.inc()
                        self.held += 1
                    events.append((ev, kind))
                    wake.set()
                while self.held >= buffer_tokens:
                    room.clear()
                    await room.wait()  # stop reading: TCP pushes back on the upstream
        finally:
            self.done = True
            ps.done_generating = True
            wake.set()

    async def events(self) -> AsyncGenerator[tuple[bytes, bool], None]:
        events, wake, credit, clock = self.events_in, self.wake, self.credit, self.clock
        interval = self.interval_s
        while True:
            if not self.alive():
                return
            if not events:
                if self.done and self.reader.done():
                    self.complete = True
                    return
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), interval)
                continue
            ev, token = events[0]
            if token:
                now = clock()
                if not credit.eligible(now):
                    wait = min(credit.ready_at(now) - now, interval)
                    wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), max(wait, 1e-4))
                    continue
                credit.spend(now)  # the release spends credit exactly as a decode step does
            events.popleft()
            yield ev, token
            if token:
                self.held -= 1
                if self.held < self.proxy.buffer_tokens:
                    self.room.set()

    def trailer(self) -> list[bytes] | None:
        return [] if self.complete else None  # the upstream's own end ([DONE]) went out as an event

    async def close(self, given_up_s: float | None) -> None:
        reader, up = self.reader, self.up
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        if given_up_s is None and self.done:
            up.release()
        else:
            if not up.closed:
                self.proxy.cancelled_upstream += 1
            up.close()  # closes the upstream connection: the upstream aborts the request
        self.ps.done_generating = True
