"""The load client: a scenario's requests and readers, against a live server, over real sockets.

``run_load(url, streams=N, scenario=...)`` draws the requests exactly as the simulator does
(:func:`sim.model.workload.draw_requests`: arrivals, prompt and output lengths, path, reading pace,
patience — common random numbers with a simulated run of the same scenario and seed), opens one
streaming ``/v1/chat/completions`` request per arrival with aiohttp, and feeds every token's
arrival to the simulator's reader model (:class:`sim.model.reader.ReaderModel`, on the asyncio clock):
token i is displayed no earlier than it arrives and ``1/reading_tps`` after token i-1, a due
token that has not arrived is a stall, and after ``patience_s`` of continuous stall (or of
waiting for the first token) the reader abandons — the client closes the connection then, as a
person closing the tab would.

The request tells the server the reader's pace (``x-reading-tps``) and the stream id
(``x-tokenpace-stream-id``), plus the drawn lengths in the ``tokenpace`` extension, so the two
halves of the results (:mod:`live.recorder`) join on stream id. Times are mapped onto the
server's clock origin (``GET /healthz``): directly when both run on one kernel boot (one
CLOCK_MONOTONIC), by an NTP-style offset estimate otherwise.

Bounded: at most ``streams`` requests, and everything still open at ``time_limit_s`` is cut
(outcome ``cancelled``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from live.recorder import ClientRecorder, boot_id, merge_live_run, write_run_json
from live.serve.sse import event_data, is_token_event, split_sse
from scenarios.cli_errors import BadInput
from sim.model.reader import ABANDONED, CANCELLED, COMPLETED, READING, ReaderModel
from sim.model.workload import Request, draw_requests

__all__ = ["LoadError", "LoadResult", "StreamResult", "run_load"]

log = logging.getLogger("tokenpace.live")
HEALTHZ_TIMEOUT_S = 30.0  # the server's first answer; the streams themselves have no total timeout


class LoadError(BadInput):
    """The load cannot start for a reason the user can fix (no tokenpace server at the URL, or one on
    another kernel where ``start_at`` needs this one); ``where`` is the URL."""


# --------------------------------------------------------------------------- the reader on asyncio
class LiveReader(ReaderModel):
    """The reader model on the asyncio clock: ``clock()`` is the time now, the patience deadline is an
    event-loop timer (cancelled and set again when it moves), and ``on_end(reader)`` is called when the
    reader completes or abandons."""

    __slots__ = ("_clock", "_loop", "_on_end", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float], arrival_s: float,
                 n_tokens: int, reading_tps: float, patience_s: float, first_patience_s: float,
                 on_end: Callable[[LiveReader], None]) -> None:
        super().__init__(arrival_s, n_tokens, reading_tps, patience_s, first_patience_s)
        self._loop = loop
        self._clock = clock
        self._on_end = on_end
        self._timer: asyncio.TimerHandle | None = None
        self._arm()

    def on_tokens(self, count: int) -> None:
        """The first ``count`` tokens of the response have arrived."""
        if not self.receive(count, self._clock()):
            return
        if self.state == COMPLETED:
            self.stop_timer()
            self._on_end(self)
        else:
            self._arm()

    def stop_timer(self) -> None:
        """No more deadline: the reader has ended, or the load is over."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        self.stop_timer()
        self._timer = self._loop.call_later(max(0.0, self.deadline_s - self._clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.state != READING:
            return
        if self.expire(self._clock()):
            self._on_end(self)
        else:
            self._arm()  # woken a hair early: wait for the rest


# --------------------------------------------------------------------------- results
@dataclass
class StreamResult:
    stream_id: str
    outcome: str
    tokens: int
    ttft_s: float | None
    stall_s: float
    qoe: float | None
    error: str | None = None


@dataclass
class LoadResult:
    url: str
    controller: str
    out_dir: Path | None
    wall_s: float
    streams: list[StreamResult] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(1 for s in self.streams if s.outcome == outcome)

    @property
    def errors(self) -> int:
        return sum(1 for s in self.streams if s.error)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.streams)

    def summary(self) -> dict[str, Any]:
        qoes = [s.qoe for s in self.streams if s.qoe is not None]
        return {"url": self.url, "controller": self.controller, "streams": len(self.streams),
                "completed": self.count(COMPLETED), "abandoned": self.count(ABANDONED),
                "cancelled": self.count(CANCELLED), "errors": self.errors, "tokens": self.tokens,
                "qoe_mean": sum(qoes) / len(qoes) if qoes else None, "wall_s": self.wall_s,
                "out_dir": None if self.out_dir is None else str(self.out_dir)}


# --------------------------------------------------------------------------- helpers
def _load_scenario(scenario: Any) -> tuple[Any, Path, dict[str, Any]]:
    from scenarios import LoadedScenario, Scenario, load_scenario
    from scenarios.loader import find_scenario

    if scenario is None:
        scenario = "steady-broadband"
    if isinstance(scenario, LoadedScenario):
        return scenario.scenario, scenario.base_dir, scenario.resolved()
    if isinstance(scenario, Scenario):
        return scenario, Path.cwd(), json.loads(scenario.model_dump_json(by_alias=True))
    loaded = load_scenario(find_scenario(scenario))
    return loaded.scenario, loaded.base_dir, loaded.resolved()


async def _server_clock(session: aiohttp.ClientSession, base: str) -> tuple[dict[str, Any], float]:
    """The server's /healthz and the offset to add to our time.monotonic() to get server time - t0."""
    t_send = time.monotonic()
    try:
        async with session.get(base + "/healthz", timeout=aiohttp.ClientTimeout(total=HEALTHZ_TIMEOUT_S)) as r:
            r.raise_for_status()
            health = await r.json()
    except (aiohttp.ClientError, OSError, ValueError) as exc:  # OSError covers TimeoutError
        raise LoadError(base, f"no tokenpace server answers /healthz ({type(exc).__name__}: "
                        f"{str(exc) or 'no answer'})") from None
    if not isinstance(health, dict):
        raise LoadError(base, "/healthz did not answer a JSON object: not a tokenpace server")
    t_recv = time.monotonic()
    t0 = float(health.get("t0_monotonic", t_send))
    if health.get("boot_id") == boot_id():
        return health, -t0  # one kernel: one CLOCK_MONOTONIC
    server_now = float(health.get("now_monotonic", t0))
    return health, server_now - (t_send + t_recv) / 2 - t0


def _token_count(event: bytes) -> int | None:
    """1 if the event carries text, 0 if not, None for [DONE]."""
    data = event_data(event)
    if data is None:
        return 0
    kind = is_token_event(data)
    return None if kind is None else int(kind)


# --------------------------------------------------------------------------- the load
async def run_load(url: str, streams: int | None = None, scenario: Any = None, out_dir: Path | str | None = None,
                   *, seed: int | None = None, time_limit_s: float | None = None, endpoint: str = "chat",
                   model: str | None = None, controller: str | None = None, ttft_expected_s: float | None = None,
                   max_connections: int = 0, merge: bool = True,
                   start_at: Callable[[], Awaitable[float]] | None = None,
                   bind: dict[str, str] | None = None) -> LoadResult:
    """Run a scenario's workload and readers against ``url``; record the client half to ``out_dir``.

    ``streams`` overrides the scenario's request count; ``time_limit_s`` (default: the scenario's
    ``max_duration_s``, at most 600 s) bounds the whole load. ``controller`` names the results
    folder (default: the one the server reports on /healthz). Returns per-stream outcomes.

    ``start_at``: called once the server has answered; returns the ``time.monotonic()`` instant
    that is time 0 of the load (arrival i is sent at start + arrival_i) and of the recording (the
    server, on the same kernel, has been told the same epoch). The lab uses it to start the load,
    the server's recording and the path's timeline together. Default: now, in the server's epoch.

    ``bind``: scenario path name -> local address. A request the scenario puts on that path connects
    from that address (the lab's link gives each path its own client address, so a stream crosses its
    own path's bottleneck); other requests use the kernel's choice.
    """
    wall0 = time.monotonic()
    scn, base_dir, resolved = _load_scenario(scenario)
    if streams is not None:
        if streams < 1:
            raise ValueError("streams must be at least 1")
        scn = scn.model_copy(update={"workload": scn.workload.model_copy(update={"streams": int(streams)})})
        resolved = {**resolved, "workload": {**resolved.get("workload", {}), "streams": int(streams)}}
    requests: list[Request] = draw_requests(scn, base_dir, seed)
    limit_s = time_limit_s if time_limit_s is not None else min(scn.max_duration_s, 600.0)
    ttft_e = scn.clients.ttft_expected_s if ttft_expected_s is None else ttft_expected_s
    base = url.rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    loop = asyncio.get_running_loop()
    # One connection per stream, as the simulator has it (and as separate users would): no keep-alive reuse.
    connector = aiohttp.TCPConnector(limit=max_connections, force_close=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    by_path: dict[str, aiohttp.ClientSession] = {}
    async with contextlib.AsyncExitStack() as sessions:
        session = await sessions.enter_async_context(aiohttp.ClientSession(connector=connector, timeout=timeout))
        for path_name, addr in (bind or {}).items():
            by_path[path_name] = await sessions.enter_async_context(aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=max_connections, force_close=True, local_addr=(addr, 0)),
                timeout=timeout))
        health, offset = await _server_clock(session, base)
        epoch: float | None = None
        if start_at is not None:
            if health.get("boot_id") != boot_id():
                raise LoadError(url, "the server runs on another kernel, and a shared time 0 (start_at, "
                                "--sync-stdin) needs the server on this machine (one CLOCK_MONOTONIC)")
            epoch = await start_at()
            offset = -epoch
        name = controller or str(health.get("controller") or "live")
        model_name = model or str(health.get("model") or "tokenpace-engine")

        def now() -> float:
            return time.monotonic() + offset

        readers: list[LiveReader] = []
        rec: ClientRecorder | None = None
        if out_dir is not None:
            out_dir = Path(out_dir)
            if not (out_dir / "run.json").is_file():
                write_run_json(out_dir, controller=name, scenario=resolved, slo_qoe=scn.slo.qoe,
                               control_interval_s=scn.control_interval_s, seed=scn.seed if seed is None else seed,
                               live={"client_clock_offset_s": offset, "url": url})
            rec = ClientRecorder(out_dir, name)
        results: list[StreamResult] = []
        start = time.monotonic() if epoch is None else epoch
        deadline = start + limit_s
        tasks: list[asyncio.Task[None]] = []

        async def one(req: Request) -> None:
            delay = start + req.arrival_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            arrival = now()
            holder: dict[str, Any] = {"resp": None, "abandoned": False}
            me = asyncio.current_task()

            def on_end(reader: LiveReader) -> None:
                if reader.state == ABANDONED:
                    holder["abandoned"] = True
                    resp = holder["resp"]
                    if resp is not None:
                        resp.close()  # the person leaves: the connection goes, unread bytes and all
                    if me is not None and me is not asyncio.current_task():
                        me.cancel()

            reader = LiveReader(loop, now, arrival, req.output_tokens, req.reading_tps, req.patience_s,
                                req.first_token_patience_s, on_end)
            readers.append(reader)
            body: dict[str, Any] = {
                "model": model_name,
                "stream": True,
                "max_tokens": req.output_tokens,
                "tokenpace": {"stream_id": req.stream_id, "reading_tps": req.reading_tps,
                              "prompt_tokens": req.prompt_tokens, "output_tokens": req.output_tokens,
                              "path": req.path},
            }
            prompt = f"Tell me a story, stream {req.stream_id}."
            if endpoint == "chat":
                body["messages"] = [{"role": "user", "content": prompt}]
            else:
                body["prompt"] = prompt
            headers = {"x-reading-tps": f"{req.reading_tps:.6g}", "x-tokenpace-stream-id": req.stream_id}
            error: str | None = None
            done = False
            sid = req.stream_id
            try:
                async with by_path.get(req.path, session).post(base + path, json=body, headers=headers) as resp:
                    holder["resp"] = resp
                    sid = resp.headers.get("x-tokenpace-stream-id", sid)  # the server renames a clash
                    if resp.status != 200:
                        error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                    else:
                        buf = bytearray()
                        count = 0
                        async for chunk in resp.content.iter_any():
                            buf += chunk
                            for ev in split_sse(buf):
                                k = _token_count(ev)
                                if k is None:
                                    done = True
                                    break
                                count += k
                            if count:
                                reader.on_tokens(count)
                            if done or (reader.state != READING and reader.state != COMPLETED):
                                break
            except asyncio.CancelledError:
                if not holder["abandoned"] and reader.state == READING:
                    reader.cut(now())  # the run's time limit
                if not holder["abandoned"]:
                    raise
            except (aiohttp.ClientError, OSError) as exc:
                if not holder["abandoned"]:
                    error = f"{type(exc).__name__}: {exc}"
            finally:
                if reader.state == READING:
                    if done and reader.received > 0:
                        reader.finish_short()  # the server ended the stream early (upstream stop)
                    else:
                        reader.cut(now())
                results.append(_record(rec, req, sid, reader, arrival, ttft_e, error))

        for req in requests:
            tasks.append(loop.create_task(one(req), name=f"load-{req.stream_id}"))
        try:
            remaining = deadline - time.monotonic()
            _done, pending = await asyncio.wait(tasks, timeout=max(0.0, remaining))
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        finally:
            for r in readers:
                r.stop_timer()
            for t in tasks:
                if not t.done():
                    t.cancel()
            if rec is not None:
                rec.close()
    if out_dir is not None and merge:
        merge_live_run(out_dir)
    return LoadResult(url=url, controller=name, out_dir=Path(out_dir) if out_dir is not None else None,
                      wall_s=time.monotonic() - wall0, streams=results)


def _record(rec: ClientRecorder | None, req: Request, sid: str, reader: ReaderModel, arrival: float, ttft_e: float,
            error: str | None) -> StreamResult:
    n = reader.received
    t_recv = list(reader.t_received[:n])
    t_disp = list(reader.t_displayed[:n])
    end = reader.end_s
    qoe: float | None = None
    if rec is not None:
        qoe = rec.stream(stream_id=sid, path=req.path, arrival_s=arrival, prompt_tokens=req.prompt_tokens,
                         output_tokens=max(1, reader.n_tokens), reading_tps=req.reading_tps,
                         patience_s=req.patience_s, ttft_expected_s=ttft_e, outcome=reader.state,
                         stall_s=reader.stall_s, end_s=None if math.isnan(end) else end,
                         t_received=t_recv, t_displayed=t_disp)
    ttft = t_disp[0] - arrival if t_disp else None
    return StreamResult(sid, reader.state, n, ttft, reader.stall_s, qoe, error)
