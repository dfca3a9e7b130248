"""Token events padded to the scenario's bytes_per_token: exact wire size, the same data for clients."""

from __future__ import annotations

import pytest
from conftest import live_import

from live.serve.protocol import ChunkEncoder
from live.serve.sse import chunked_wire_size, event_data, is_token_event, pad_event, split_sse


@pytest.mark.parametrize("wire", [240, 253, 256, 300, 4095 + 7, 4096 + 7, 5000])
def test_padded_token_event_takes_exactly_bytes_per_token_on_the_wire(wire: int):
    plain = ChunkEncoder(True, "tokenpace-engine")
    padded = ChunkEncoder(True, "tokenpace-engine", wire)
    padded.id, padded.created, padded._head = plain.id, plain.created, plain._head
    for idx, word in enumerate(["Once", " upon", " a", " time."]):
        ev, pev = plain.token(word, idx, None), padded.token(word, idx, None)
        want = wire - 1 if wire == 4096 + 7 else wire  # 4103 B cannot be one chunk: 4102 is the closest below
        assert chunked_wire_size(len(pev)) == max(want, chunked_wire_size(len(ev)))
        assert event_data(pev) == event_data(ev) and is_token_event(event_data(pev))
        assert split_sse(bytearray(pev)) == [pev]  # still one event


def test_an_event_larger_than_the_target_is_not_cut():
    ev = b"data: " + b"x" * 300 + b"\n\n"
    assert pad_event(ev, 100) == ev
    assert pad_event(ev, chunked_wire_size(len(ev)) + 1) == ev  # one byte short of the shortest comment


def test_official_openai_decoder_skips_the_padding():
    sse = live_import("openai._streaming")
    enc = ChunkEncoder(True, "tokenpace-engine", 300)
    raw = enc.token(" word", 1, None) + b"data: [DONE]\n\n"
    events = list(sse.SSEDecoder().iter_bytes(iter([raw])))
    assert [e.data for e in events][-1] == "[DONE]"
    assert '"content":" word"' in events[0].data
