"""Server-sent events as OpenAI-compatible servers stream them: split a byte buffer into events,
take an event's data, and tell a text-carrying chunk from the rest. Used by the load client and
the upstream proxy alike."""

from __future__ import annotations

import json

__all__ = ["chunked_wire_size", "event_data", "is_token_event", "pad_event", "split_sse"]


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


def chunked_wire_size(payload_bytes: int) -> int:
    """Bytes one HTTP/1.1 chunk of ``payload_bytes`` takes on the wire (hex size, CRLFs)."""
    return payload_bytes + len(f"{payload_bytes:x}") + 4


def pad_event(event: bytes, wire_bytes: int) -> bytes:
    """``event`` with an SSE comment line (``: ...``, which every client skips) put in front so that,
    sent as one HTTP chunk, it takes exactly ``wire_bytes`` on the wire -- the scenario's
    ``bytes_per_token``, so that the simulator and a live server carry the same bytes per token.
    An event already that large, or too close to it for the shortest comment, is returned as is
    (it cannot shrink). Where the chunk's hex length gains a digit (4103 B: a 4095 B payload takes
    4102, a 4096 B one 4104) the largest size below is taken."""
    need = wire_bytes - chunked_wire_size(len(event))
    if need < 2:  # ":\n" is the shortest comment line
        return event
    pad = need
    # the chunk's hex length may gain a digit as the payload grows: settle it
    while pad >= 2 and chunked_wire_size(len(event) + pad) > wire_bytes:
        pad -= 1
    if pad < 2:
        return event
    return b":" + b" " * (pad - 2) + b"\n" + event
