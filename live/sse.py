"""Server-sent events as OpenAI-compatible servers stream them: split a byte buffer into events,
take an event's data, and tell a text-carrying chunk from the rest. Used by the load client and
the upstream proxy alike."""

from __future__ import annotations

import json

__all__ = ["event_data", "is_token_event", "split_sse"]


def is_token_event(data: bytes) -> bool | None:
    """True for an event carrying text, False for other JSON events, None for ``[DONE]``."""
    text = data.strip()
    if text == b"[DONE]":
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return False
    if not isinstance(obj, dict):
        return False
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict) and delta.get("content"):
            return True
        if choice.get("text"):
            return True
    return False


def split_sse(buffer: bytearray) -> list[bytes]:
    """Take every complete event (up to a blank line) out of ``buffer``; CRLFs become LFs."""
    if b"\r" in buffer:
        buffer[:] = buffer.replace(b"\r\n", b"\n")
    events: list[bytes] = []
    while True:
        end = buffer.find(b"\n\n")
        if end < 0:
            return events
        events.append(bytes(buffer[: end + 2]))
        del buffer[: end + 2]


def event_data(event: bytes) -> bytes | None:
    lines = [ln[5:].lstrip(b" ") if ln.startswith(b"data:") else None for ln in event.split(b"\n")]
    data = [d for d in lines if d is not None]
    return b"\n".join(data) if data else None
