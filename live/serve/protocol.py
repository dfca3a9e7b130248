"""The OpenAI-compatible wire protocol of the server: a (chat) completion request checked into a
:class:`CompletionRequest`, errors in OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``,
raised as :class:`ApiError`), and a response's SSE chunks (:class:`ChunkEncoder`, ``DONE``).

tokenpace reads an optional extension object ``"tokenpace": {"stream_id", "reading_tps",
"prompt_tokens", "output_tokens", "path"}`` (official clients: ``extra_body``) and the headers
``x-reading-tps`` and ``x-tokenpace-stream-id``.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from live.serve.config import LiveConfig
from live.serve.sse import pad_event

__all__ = ["DONE", "SSE_HEADERS", "ApiError", "ChunkEncoder", "CompletionRequest", "error_response",
           "parse_completion_request", "read_json_body"]


class ApiError(Exception):
    """An error returned to the client in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 type: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code

    def response(self) -> web.Response:
        return error_response(self.status, self.message, param=self.param, type=self.type, code=self.code)


def error_response(status: int, message: str, *, param: str | None = None, type: str = "invalid_request_error",
                   code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return web.json_response(body, status=status)


@dataclass
class CompletionRequest:
    chat: bool
    model: str
    stream: bool
    include_usage: bool
    max_tokens: int  # the cap the request asked for (finish_reason "length" when reached)
    output_tokens: int  # tokens the engine makes
    prompt_tokens: int
    reading_tps: float
    stream_id: str | None
    path: str
    body: dict[str, Any] = field(repr=False, default_factory=dict)


def _positive_int(value: Any, param: str, limit: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, f"'{param}' must be a positive integer, got {value!r}", param=param)
    if limit is not None and value > limit:
        raise ApiError(400, f"'{param}' is {value}, more than this server allows ({limit})", param=param)
    return value


def _positive_float(value: Any, param: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"'{param}' must be a positive number, got {value!r}", param=param) from None
    if isinstance(value, bool) or not math.isfinite(x) or x <= 0:
        raise ApiError(400, f"'{param}' must be a positive number, got {value!r}", param=param)
    return x


def _words(text: Any) -> int:
    if isinstance(text, str):
        return len(text.split())
    if isinstance(text, list):
        total = 0
        for part in text:
            if isinstance(part, dict):
                total += _words(part.get("text", ""))
            elif isinstance(part, int):
                total += 1  # a token id
            else:
                total += _words(part)
        return total
    return 0


def parse_completion_request(body: Any, *, chat: bool, config: LiveConfig,
                             headers: Any = None) -> CompletionRequest:
    """Validate an OpenAI (chat) completion request; raises :class:`ApiError` (400) on a bad one."""
    headers = headers or {}
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "you must provide a model parameter", param="model")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty array", param="messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise ApiError(400, f"messages[{i}] must be an object with a 'role'", param=f"messages[{i}]")
            content = m.get("content")
            if content is not None and not isinstance(content, str | list):
                raise ApiError(400, f"messages[{i}].content must be a string or an array",
                               param=f"messages[{i}].content")
        prompt_tokens = sum(_words(m.get("content")) + 3 for m in messages)
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str | list) or (isinstance(prompt, list) and not prompt):
            raise ApiError(400, "'prompt' must be a string or a non-empty array", param="prompt")
        prompt_tokens = _words(prompt)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(400, f"'stream' must be a boolean, got {stream!r}", param="stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise ApiError(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                           param="stream_options")
        if not isinstance(options, dict):
            raise ApiError(400, "'stream_options' must be an object", param="stream_options")
        include_usage = bool(options.get("include_usage", False))
    n = body.get("n")
    if n is not None and n != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    cap_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    cap = body.get(cap_key)
    max_tokens = (_positive_int(cap, cap_key, config.max_tokens_limit) if cap is not None
                  else config.default_max_tokens)
    ext = body.get("tokenpace") or {}
    if not isinstance(ext, dict):
        raise ApiError(400, "'tokenpace' must be an object", param="tokenpace")
    output_tokens = max_tokens
    if ext.get("output_tokens") is not None:
        output_tokens = min(max_tokens, _positive_int(ext["output_tokens"], "tokenpace.output_tokens"))
    if ext.get("prompt_tokens") is not None:
        prompt_tokens = _positive_int(ext["prompt_tokens"], "tokenpace.prompt_tokens", 10_000_000)
    reading = config.default_reading_tps
    if ext.get("reading_tps") is not None:
        reading = _positive_float(ext["reading_tps"], "tokenpace.reading_tps")
    elif headers.get("x-reading-tps") is not None:
        reading = _positive_float(headers.get("x-reading-tps"), "x-reading-tps")
    stream_id = ext.get("stream_id") or headers.get("x-tokenpace-stream-id")
    if stream_id is not None and (not isinstance(stream_id, str) or not 0 < len(stream_id) <= 128
                                  or any(c in stream_id for c in ',"\n\r')):
        raise ApiError(400, "the stream id must be 1-128 characters without commas or quotes",
                       param="tokenpace.stream_id")
    path = ext.get("path") or "live"
    if not isinstance(path, str) or any(c in path for c in ',"\n\r'):
        raise ApiError(400, "'tokenpace.path' must be a plain string", param="tokenpace.path")
    return CompletionRequest(chat=chat, model=model, stream=stream, include_usage=include_usage,
                             max_tokens=max_tokens, output_tokens=output_tokens, prompt_tokens=max(1, prompt_tokens),
                             reading_tps=reading, stream_id=stream_id, path=path, body=body)


# --------------------------------------------------------------------------- response chunks
class ChunkEncoder:
    """SSE events of one streamed response, OpenAI's chunk shapes, one event per token."""

    def __init__(self, chat: bool, model: str, wire_bytes: int | None = None) -> None:
        self.chat = chat
        self.wire_bytes = wire_bytes  # pad each token's event to this many bytes on the wire (None: don't)
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.model = model
        head = json.dumps({"id": self.id, "object": "chat.completion.chunk" if chat else "text_completion",
                           "created": self.created, "model": model}, separators=(",", ":"))[:-1]
        self._head = ("data: " + head + ',"choices":[{"index":0,').encode()

    def token(self, text: str, idx: int, finish: str | None) -> bytes:
        fin = b"null" if finish is None else json.dumps(finish).encode()
        t = json.dumps(text).encode()
        if self.chat:
            delta = b'{"role":"assistant","content":' + t + b"}" if idx == 0 else b'{"content":' + t + b"}"
            event = self._head + b'"delta":' + delta + b',"logprobs":null,"finish_reason":' + fin + b"}]}\n\n"
        else:
            event = self._head + b'"text":' + t + b',"logprobs":null,"finish_reason":' + fin + b"}]}\n\n"
        return event if self.wire_bytes is None else pad_event(event, self.wire_bytes)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        obj: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                               "created": self.created, "model": self.model, "choices": [],
                               "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                         "total_tokens": prompt_tokens + completion_tokens}}
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    def full(self, text: str, finish: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                      "logprobs": None, "finish_reason": finish}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            obj = "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": [choice], "usage": usage}


DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def read_json_body(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "request body too large") from None
    try:
        return json.loads(raw or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"could not parse the JSON body of your request: {exc}") from None
