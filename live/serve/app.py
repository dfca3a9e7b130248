"""The paced streaming server: OpenAI-compatible endpoints, per-connection pacing, /hint, /metrics.

Endpoints (aiohttp; binds 127.0.0.1 unless told otherwise):

* ``POST /v1/chat/completions`` and ``POST /v1/completions`` — OpenAI's request and response
  shapes. With ``"stream": true`` one SSE event ``data: {...chunk...}`` per token, a usage chunk
  when ``stream_options.include_usage``, then ``data: [DONE]``; without, one JSON response.
  tokenpace reads an optional extension object ``"tokenpace": {"stream_id", "reading_tps",
  "prompt_tokens", "output_tokens", "path"}`` (official clients: ``extra_body``) and the headers
  ``x-reading-tps`` and ``x-tokenpace-stream-id``. Errors are 4xx JSON in OpenAI's shape
  ``{"error": {"message", "type", "param", "code"}}``.
* ``GET /hint`` — the seeds' host-wide hint ``{"token_rate", "sleep_seconds", "health", ...}``;
  ``GET /hint?stream=<id>`` the same for one connection's stream.
* ``GET /metrics`` (Prometheus), ``GET /healthz``, ``GET /v1/models``. Besides throughput and pacing,
  /metrics says whether departed clients are really let go (what ``bench/soak.py`` checks):
  ``tokenpace_tokens_after_disconnect_total`` (tokens made after the client was seen gone: the one
  step in flight at most), ``tokenpace_zombie_streams_total`` (streams still decoded in a step planned
  after that: must stay 0), ``tokenpace_orphaned_streams`` (streams still held whose connection is
  closed) and ``tokenpace_http_connections`` (connections open now).

Tokens come from the built-in :class:`live.serve.backends.engine.LiveEngine` (the simulator's serving core in
real time, scheduled by ``server.scheduler``) or, with ``upstream``, from an OpenAI-compatible server
(:mod:`live.serve.backends.upstream`). Either way each streamed response gets its own controller, run by
:class:`live.serve.pacing.PacingLoop` on the kernel telemetry of its own socket; with the built-in engine,
each control interval's Observation and Decision also reach the scheduler (when it uses them), and
each sequence carries its request's reader hint (``reading_tps``, the configured ``ttft_expected_s``).
Writes apply TCP backpressure: the transport's write buffer high-water mark is 0 and every token is
drained into the kernel before the next is written (:func:`live.serve.pump.pump`, the one write loop of
both backends).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

import controllers
from live.kernel.source import TelemetrySource
from live.recorder import LiveRecorder, boot_id, write_run_json
from live.serve.backends.engine import LiveEngine, LiveSequence, TextGenerator
from live.serve.backends.upstream import UpstreamProxy
from live.serve.config import LiveConfig
from live.serve.pacing import LiveMetrics, NullTelemetry, PacedStream, PacingLoop
from live.serve.protocol import (
    DONE,
    SSE_HEADERS,
    ApiError,
    ChunkEncoder,
    CompletionRequest,
    error_response,
    parse_completion_request,
    read_json_body,
)
from live.serve.pump import pump
from live.serve.sse import chunked_wire_size

__all__ = ["LiveServer", "RunningServer", "make_app", "running_server", "serve"]

log = logging.getLogger("tokenpace.live")
STATE_KEY: web.AppKey[Any] = web.AppKey("tokenpace")  # -> LiveServer
DISCONNECTS = (ConnectionResetError, ClientConnectionResetError, ConnectionError)
KEEP_SEQS = 4096  # engine sequences kept for inspection when nothing records them (LiveEngine.keep_seqs)


# --------------------------------------------------------------------------- the server
class LiveServer:
    """The state behind one app: engine or upstream, pacing loop, metrics, recorder."""

    def __init__(self, config: LiveConfig, telemetry: TelemetrySource | None = None,
                 engine: LiveEngine | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.t0 = clock()
        self.faults_t0: float | None = None  # monotonic time 0 of a fault timeline played with this run
        self.source: TelemetrySource = telemetry if telemetry is not None else NullTelemetry()
        self.metrics = LiveMetrics()
        self.recorder: LiveRecorder | None = None
        if config.record_dir is not None:
            self.recorder = LiveRecorder(config.record_dir, config.record_name, self.t0,
                                         kv_tokens=config.server.kv_tokens, ttft_expected_s=config.ttft_expected_s)
        self.upstream: UpstreamProxy | None = None
        self.engine: LiveEngine | None = None
        if config.upstream:
            self.upstream = UpstreamProxy(config.upstream, api_key=config.upstream_api_key,
                                          model=config.upstream_model, buffer_tokens=config.upstream_buffer_tokens)
        else:
            self.engine = engine if engine is not None else LiveEngine(
                config.server, seed=config.seed, clock=clock,
                keep_seqs=None if self.recorder is not None else KEEP_SEQS)
            self.engine.tee.add(self.metrics)
            if self.recorder is not None:
                self.engine.tee.add(self.recorder)
        self.pacing = PacingLoop(self.source, interval_s=config.control_interval_s, clock=clock,
                                 recorder=self.recorder, metrics=self.metrics, ack_grace_s=config.ack_grace_s,
                                 tcp_congestion=config.tcp_congestion)
        self.started = False
        self.http_server: web.Server | None = None  # set by running_server: its open connections
        self.metrics.registry.register(_DepartureCollector(self))

    def orphaned_streams(self) -> int:
        """Streams still held whose client's connection is closed: engine sequences still queued or
        running, and streamed responses not yet ended. Nonzero only for the instant between a
        departure and the next step boundary (or the handler's next turn)."""
        ids: set[str] = set()
        if self.engine is not None:
            ids.update(q.req_id for q in self.engine.held() if isinstance(q, LiveSequence) and not q.alive())
        ids.update(sid for sid, ps in self.pacing.streams.items()
                   if not ps.ended and ps.conn is not None and ps.conn.closed)
        return len(ids)

    @property
    def mode(self) -> str:
        return "upstream" if self.upstream is not None else "engine"

    def new_controller(self) -> controllers.Controller:
        return controllers.make(self.config.controller, self.config.controller_params)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self.started:
            return
        self.started = True
        self.t0 = self.clock()
        self._write_run_json()
        self.source.start()
        if self.engine is not None:
            self.engine.start()
        if self.upstream is not None:
            await self.upstream.start()
        self.pacing.start()

    def _write_run_json(self) -> None:
        if self.recorder is None:
            return
        self.recorder.t0 = self.t0
        cfg = self.config
        scheduler = cfg.server.scheduler.model_dump() if self.engine is not None else None
        scenario = cfg.scenario
        if scenario is not None and scheduler is not None and isinstance(scenario.get("server"), dict):
            # the scheduler that ran (--scheduler may have replaced the scenario's)
            scenario = {**scenario, "server": {**scenario["server"], "scheduler": scheduler}}
        write_run_json(cfg.record_dir, controller=cfg.record_name, params=cfg.controller_params,  # type: ignore[arg-type]
                       scenario=scenario, slo_qoe=cfg.slo_qoe, control_interval_s=cfg.control_interval_s,
                       seed=cfg.seed, live={"t0_monotonic": self.t0, "boot_id": boot_id(), "iface": cfg.iface,
                                            "fault": cfg.fault, "upstream": cfg.upstream, "host": cfg.host,
                                            "server_mode": self.mode, "scheduler": scheduler,
                                            **({"faults_t0_s": round(self.faults_t0 - self.t0, 6)}
                                               if self.faults_t0 is not None else {})})

    def rebase_epoch(self, t0_monotonic: float) -> bool:
        """Make ``t0_monotonic`` time 0 of the recording (the lab: the moment its load and its fault
        timeline start). Only before the first stream: later, rows already written would disagree.
        Returns whether it was applied."""
        if self.pacing.streams:
            log.warning("epoch not moved: streams have started already")
            return False
        self.t0 = float(t0_monotonic)
        self._write_run_json()
        return True

    def start_faults_at(self, t0_monotonic: float) -> bool:
        """A fault timeline starts at ``t0_monotonic``: make it the recording's time 0 too (when no
        stream has started yet) and note it in run.json as ``live.faults_t0_s``, relative to the
        recording's time 0 (0 when they agree). Returns whether the epoch moved to it."""
        self.faults_t0 = float(t0_monotonic)
        moved = self.rebase_epoch(t0_monotonic)
        if not moved:
            self._write_run_json()
        return moved

    def replace_source(self, source: TelemetrySource) -> None:
        """Swap the telemetry source (the previous one is closed; the new one started if we run)."""
        old, self.source = self.source, source
        self.pacing.source = source
        if self.started:
            source.start()
        with contextlib.suppress(Exception):
            old.close()

    @property
    def engine_alive(self) -> bool:
        task = self.engine.running_task if self.engine is not None else None
        return task is None or not task.done()

    async def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        await self.pacing.stop()
        if self.engine is not None:
            await self.engine.stop()
        if self.upstream is not None:
            await self.upstream.close()
        self.pacing.flush()
        if self.recorder is not None:
            self.recorder.close(self.engine.all_seqs if self.engine is not None else None)
        with contextlib.suppress(Exception):
            self.source.close()

    # ------------------------------------------------------------------ streams
    def new_stream(self, request: web.Request, req: CompletionRequest, kind: str) -> PacedStream:
        conn = self.pacing.connection(request.transport)
        sid = self.pacing.unique_id(req.stream_id)
        return PacedStream(sid, conn, self.new_controller(), reading_tps=req.reading_tps, arrival_s=self.clock(),
                           prompt_tokens=req.prompt_tokens, output_tokens=req.output_tokens, path=req.path, kind=kind)

    async def stream_engine(self, request: web.Request, req: CompletionRequest) -> web.StreamResponse:
        engine = self.engine
        assert engine is not None
        ps = self.new_stream(request, req, "engine")
        source = _EngineTokens(self, request, req, ps)
        ps.target = source.seq
        ps.wake = engine.wake
        if engine.uses_observations:
            ps.observer = engine.observe
        resp = web.StreamResponse(status=200, headers={**SSE_HEADERS, "x-tokenpace-stream-id": ps.stream_id})
        await pump(self.pacing, ps, request, resp, source)
        return resp

    async def complete_engine(self, request: web.Request, req: CompletionRequest) -> web.Response:
        engine = self.engine
        assert engine is not None
        transport = request.transport
        words = TextGenerator(self.config.seed, self.pacing.unique_id(req.stream_id))
        parts: list[str] = []
        done = asyncio.Event()
        n_out = req.output_tokens

        def on_token(t_s: float, idx: int) -> None:
            parts.append(words.next())
            self.metrics.tokens_generated.inc()
            if idx + 1 >= n_out:
                done.set()

        # no reading pace: a non-streamed answer is read only once it is whole (no read-on-schedule)
        seq: LiveSequence = engine.new_sequence(f"req-{uuid.uuid4().hex[:8]}", req.prompt_tokens, n_out, on_token,
                                                lambda: transport is not None and not transport.is_closing(),
                                                ttft_expected_s=self.config.ttft_expected_s)
        engine.submit(seq)
        try:
            while not done.is_set():
                if seq.state == "cancelled":
                    raise ConnectionResetError("client left")
                if not self.engine_alive:
                    raise ApiError(500, "the token engine stopped", type="server_error")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 1.0)
        finally:
            if not done.is_set():
                engine.detach(seq)
        finish = "length" if n_out >= req.max_tokens else "stop"
        body = ChunkEncoder(req.chat, req.model).full("".join(parts), finish, req.prompt_tokens, len(parts))
        self.metrics.tokens_sent.inc(len(parts))
        return web.json_response(body)

    # ------------------------------------------------------------------ handlers
    async def completions(self, request: web.Request, chat: bool) -> web.StreamResponse:
        body = await read_json_body(request)
        req = parse_completion_request(body, chat=chat, config=self.config, headers=request.headers)
        if self.upstream is not None:
            return await self.upstream.handle(self, request, req)
        if req.stream:
            return await self.stream_engine(request, req)
        return await self.complete_engine(request, req)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self.completions(request, chat=True)

    async def text_completions(self, request: web.Request) -> web.StreamResponse:
        return await self.completions(request, chat=False)

    async def hint(self, request: web.Request) -> web.Response:
        sid = request.query.get("stream")
        if sid is not None:
            s = self.pacing.get(sid)
            if s is None:
                raise ApiError(404, f"no stream {sid!r}", param="stream", code="stream_not_found")
            return web.json_response({**s.hint(), "controller": self.config.controller})
        return web.json_response({**self.pacing.host_hint(), "controller": self.config.controller})

    async def metrics_handler(self, request: web.Request) -> web.Response:
        if self.engine is not None:
            self.metrics.waiting.set(len(self.engine.waiting))
            self.metrics.kv_used.set(self.engine.kv_used)
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        now = self.clock()
        body: dict[str, Any] = {
            "status": "ok" if self.engine_alive else "engine stopped",
            "mode": self.mode,
            "controller": self.config.record_name,  # names the client's half: the lab's entry, if any
            "model": self.config.model,
            "active_streams": sum(1 for s in self.pacing.streams.values() if not s.ended),
            "control_interval_s": self.config.control_interval_s,
            "t0_monotonic": self.t0,
            "now_monotonic": now,
            "uptime_s": now - self.t0,
            "boot_id": boot_id(),
            "record_dir": None if self.config.record_dir is None else str(self.config.record_dir),
        }
        if self.engine is not None:
            e = self.engine
            body["engine"] = {"steps": e.steps, "busy_s": e.busy_s, "waiting": len(e.waiting),
                              "running": len(e.running), "swapped": len(e.swapped), "kv_used": e.kv_used,
                              "completed": e.completed, "scheduler": e.scheduler.name}
        return web.json_response(body)

    async def models(self, request: web.Request) -> web.Response:
        if self.upstream is not None:
            with contextlib.suppress(Exception):
                return web.json_response(await self.upstream.models())
        return web.json_response({"object": "list", "data": [
            {"id": self.config.model, "object": "model", "created": int(time.time()), "owned_by": "tokenpace"}]})


class _EngineTokens:
    """A streamed response's tokens from the built-in engine (a :class:`live.serve.pump.TokenSource`): its
    sequence, submitted once the headers are out; each token's SSE event as it is decoded."""

    def __init__(self, server: LiveServer, request: web.Request, req: CompletionRequest, ps: PacedStream) -> None:
        engine = server.engine
        assert engine is not None
        self.server = server
        self.engine = engine
        self.req = req
        transport = request.transport
        enc = ChunkEncoder(req.chat, req.model, server.config.bytes_per_token)
        self.enc = enc
        words = TextGenerator(server.config.seed, ps.stream_id)
        finish = "length" if req.output_tokens >= req.max_tokens else "stop"
        n_out = req.output_tokens
        self.pending: deque[bytes] = deque()
        self.ready = asyncio.Event()
        self.sent = 0
        metrics = server.metrics

        def on_token(t_s: float, idx: int) -> None:
            payload = enc.token(words.next(), idx, finish if idx + 1 >= n_out else None)
            self.pending.append(payload)
            ps.on_generated(t_s, chunked_wire_size(len(payload)))
            metrics.tokens_generated.inc()
            self.ready.set()

        def alive() -> bool:
            return transport is not None and not transport.is_closing()

        self.alive = alive
        self.seq = engine.new_sequence(ps.stream_id, req.prompt_tokens, n_out, on_token, alive,
                                       reading_tps=req.reading_tps, ttft_expected_s=server.config.ttft_expected_s)

    async def events(self) -> AsyncGenerator[tuple[bytes, bool], None]:
        seq, pending, ready = self.seq, self.pending, self.ready
        self.engine.submit(seq)
        n_out = self.req.output_tokens
        interval = self.server.config.control_interval_s
        while self.sent < n_out:
            if not pending:
                if seq.cancel_requested or seq.state == "cancelled" or not self.alive() or not self.server.engine_alive:
                    return
                ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), interval)
                continue
            yield pending.popleft(), True
            self.sent += 1

    def trailer(self) -> list[bytes] | None:
        if self.sent < self.req.output_tokens:
            return None
        req = self.req
        usage = [self.enc.usage(req.prompt_tokens, self.sent)] if req.include_usage else []
        return [*usage, DONE]

    async def close(self, given_up_s: float | None) -> None:
        if given_up_s is not None:
            self.seq.mark_detached(given_up_s)
            self.engine.cancel(self.seq)


class _DepartureCollector:
    """/metrics families read at scrape time: what departed clients still cost (module doc)."""

    def __init__(self, state: LiveServer) -> None:
        self.state = state

    def describe(self) -> list[Any]:
        return []  # families are built at collect time (the registry need not call collect early)

    def collect(self) -> list[Any]:
        st = self.state
        engine = st.engine
        after = CounterMetricFamily("tokenpace_tokens_after_disconnect",
                                    "tokens made for a stream after its client was seen gone (the step in flight)",
                                    value=engine.tokens_after_detach if engine is not None else 0)
        zombies = CounterMetricFamily("tokenpace_zombie_streams",
                                      "streams decoded in a step planned after their client was seen gone",
                                      value=engine.zombie_streams if engine is not None else 0)
        orphaned = GaugeMetricFamily("tokenpace_orphaned_streams", "streams still held whose connection is closed",
                                     value=st.orphaned_streams())
        conns = GaugeMetricFamily("tokenpace_http_connections", "HTTP connections open (this scrape's included)",
                                  value=len(st.http_server.connections) if st.http_server is not None else math.nan)
        return [after, zombies, orphaned, conns]


@web.middleware
async def _errors(request: web.Request,
                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    if request.transport is not None:
        state.pacing.connection(request.transport)  # count this connection's bytes from its first response on
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = "not_found_error" if exc.status == 404 else "invalid_request_error"
        return error_response(exc.status, exc.reason or "error", type=kind)
    except DISCONNECTS:
        raise
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # an internal error still answers in OpenAI's shape
        log.exception("internal error")
        return error_response(500, f"internal error: {exc}", type="server_error")


def make_app(config: LiveConfig, telemetry_source: TelemetrySource | None = None,
             engine: LiveEngine | None = None) -> web.Application:
    """The aiohttp application. It starts the telemetry, the engine and the pacing loop on startup
    and stops them (flushing the recorder) on cleanup. ``telemetry_source`` None = no kernel telemetry."""
    state = LiveServer(config, telemetry_source, engine)
    app = web.Application(middlewares=[_errors], client_max_size=8 * 1024 * 1024)
    app[STATE_KEY] = state
    app.router.add_post("/v1/chat/completions", state.chat_completions)
    app.router.add_post("/v1/completions", state.text_completions)
    app.router.add_get("/v1/models", state.models)
    app.router.add_get("/hint", state.hint)
    app.router.add_get("/metrics", state.metrics_handler)
    app.router.add_get("/healthz", state.healthz)

    async def on_startup(_app: web.Application) -> None:
        await state.start()

    async def on_cleanup(_app: web.Application) -> None:
        await state.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def server_state(app: web.Application) -> LiveServer:
    return app[STATE_KEY]


@dataclass
class RunningServer:
    app: web.Application
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def state(self) -> LiveServer:
        return self.app[STATE_KEY]


TelemetryArg = TelemetrySource | Callable[[int], TelemetrySource] | None


@contextlib.asynccontextmanager
async def running_server(config: LiveConfig, telemetry: TelemetryArg = None,
                         engine: LiveEngine | None = None) -> AsyncIterator[RunningServer]:
    """Serve ``make_app(config, ...)`` on config.host:config.port (0 = a free port) inside the block.

    ``telemetry`` is a source, or a factory called with the bound port once the socket is bound
    (``lambda port: BccTelemetry(ports=[port])`` works with port 0 too). Handlers are cancelled
    when their client disconnects (aiohttp's ``handler_cancellation``), so a stream notices a
    departed client at once and not only at its next write."""
    factory = telemetry if telemetry is not None and not hasattr(telemetry, "poll") else None
    app = make_app(config, None if factory is not None else telemetry, engine)  # type: ignore[arg-type]
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    app[STATE_KEY].http_server = runner.server
    try:
        site = web.TCPSite(runner, config.host, config.port, backlog=1024, reuse_address=True)
        await site.start()
        port = config.port
        for sock in getattr(site._server, "sockets", None) or ():
            port = sock.getsockname()[1]
            break
        if factory is not None:
            app[STATE_KEY].replace_source(factory(port))  # type: ignore[operator]
        yield RunningServer(app, runner, config.host, port)
    finally:
        await runner.cleanup()


async def serve(config: LiveConfig, telemetry: TelemetryArg = None, *,
                ready: Callable[[RunningServer], None] | None = None) -> None:
    """Serve until cancelled (Ctrl-C) or for ``config.duration_s``; records to ``config.record_dir``.

    ``telemetry``: a TelemetrySource, a factory ``port -> TelemetrySource``, or None (no kernel
    telemetry: controllers see only what the server knows). ``ready`` is called once listening."""
    async with running_server(config, telemetry) as server:
        sched = f", scheduler {config.server.scheduler.name}" if server.state.engine is not None else ""
        log.info("tokenpace live: %s mode, controller %s%s, on %s", server.state.mode, config.controller, sched,
                 server.url)
        if ready is not None:
            ready(server)
        if config.duration_s is not None:
            await asyncio.sleep(config.duration_s)
        else:
            await asyncio.Event().wait()
