"""One streamed response's write loop, the same for both backends: register, backpressure, tokens, end.

The built-in engine (:meth:`live.serve.app.LiveServer.stream_engine`) and the upstream proxy
(:meth:`live.serve.backends.upstream.UpstreamProxy._stream`) each hand :func:`pump` a :class:`TokenSource`: the
SSE events of one response as their backend makes them (the engine's decoded tokens; the upstream's
events, released at the paced rate). The pump registers the stream with the pacing loop, sends the
headers, applies TCP backpressure, writes each event and waits until the kernel took it before
asking for the next, counts every token sent, ends the response when the source completed, and
otherwise marks the stream given up and lets the source let go of its backend.

Backpressure: the transport's write buffer high-water mark is 0, so every ``drain()`` waits until
the bytes are in the kernel. A client that stops reading fills its socket's buffers, and the
tokens made after that wait in the server, where the controller sees them as ``queued_bytes``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any, Protocol

from live.serve.pacing import PacedStream, PacingLoop
from live.serve.sse import chunked_wire_size

__all__ = ["TokenSource", "apply_backpressure", "pump", "write_token"]


class TokenSource(Protocol):
    """What one streamed response's bytes come from (a backend)."""

    def events(self) -> AsyncGenerator[tuple[bytes, bool], None]:
        """The response body's SSE events in order, each with whether it carries a token. Starts once the
        response's headers are out; ends when the stream is complete or given up (the client left, the
        backend stopped). The pump has written an event, and the kernel taken it, before it asks for
        the next."""
        ...

    def trailer(self) -> list[bytes] | None:
        """Once ``events()`` ended: the events that complete the response after its tokens (the engine's
        usage chunk and ``[DONE]``; the upstream forwards its own), or None when it is incomplete."""
        ...

    async def close(self, given_up_s: float | None) -> None:
        """The response is over; let go of the backend's side. ``given_up_s``: when the stream was given up
        (None: it completed)."""
        ...


async def write_token(resp: Any, writer: Any, payload: bytes) -> None:
    """Write one SSE event and wait until the kernel took it (TCP backpressure)."""
    await resp.write(payload)
    await writer.drain()


def apply_backpressure(transport: Any) -> None:
    """Pause the protocol whenever anything is left in user space, so drain() waits for the kernel."""
    with contextlib.suppress(AttributeError, RuntimeError, ValueError):
        transport.set_write_buffer_limits(high=0, low=0)


async def pump(pacing: PacingLoop, ps: PacedStream, request: Any, resp: Any, source: TokenSource) -> None:
    """Stream ``source``'s events as ``resp`` (not yet prepared) to ``request``'s client, under ``ps``'s pacing.

    The stream ends ``completed`` once every token and the trailer are out (a client that closes
    then has it all), else ``cancelled``; a client that leaves mid-write (a ConnectionError, aiohttp's
    reset included) is not an error here.
    """
    pacing.register(ps)
    clock, metrics = pacing.clock, pacing.metrics
    outcome = "cancelled"
    events = source.events()
    try:
        await resp.prepare(request)
        apply_backpressure(request.transport)
        writer = request.writer
        async for payload, token in events:
            await write_token(resp, writer, payload)
            if token:
                ps.on_sent(clock(), chunked_wire_size(len(payload)))
                if metrics is not None:
                    metrics.tokens_sent.inc()
        trailer = source.trailer()
        if trailer is not None:
            for payload in trailer:
                await resp.write(payload)
            outcome = "completed"
            await resp.write_eof()
    except ConnectionError:
        pass
    finally:
        await events.aclose()
        given_up_s = None
        if outcome != "completed":
            given_up_s = clock()
            ps.detach(given_up_s)
        await source.close(given_up_s)
        pacing.end(ps, outcome)
