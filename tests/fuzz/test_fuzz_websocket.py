"""Fuzz the tracker's WebSocket frame parser (bridge/proto/websocket.py): any bytes, cut anywhere, and
damaged streams of valid frames. Only WebSocketError may escape, and the parser never holds more than one
message's worth of bytes."""

from __future__ import annotations

import os

from fuzz_support import DEADLINE, SUPPRESS, check, mutated
from hypothesis import given, settings
from hypothesis import strategies as st
from ws_frames import client_frame

from bridge.proto.websocket import MAX_HEADER, ServerFrameParser, WebSocketError, parse_close

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=DEADLINE, suppress_health_check=SUPPRESS)
LIMIT = 4096


frames = st.builds(client_frame, st.sampled_from([0, 1, 2, 8, 9, 10]), st.binary(max_size=300), st.booleans(),
                   st.binary(min_size=4, max_size=4))
streams = st.lists(frames, max_size=8).map(b"".join)


def _feed(data: bytes, cuts: list[int]) -> None:
    parser = ServerFrameParser(LIMIT)
    last = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        result = check(parser.feed, data[last:cut], allowed=(WebSocketError,))
        last = max(last, cut)
        if isinstance(result, WebSocketError):
            assert 1000 <= result.code <= 1011
            return
        for opcode, payload in result:
            assert opcode in (1, 2, 8, 9, 10)
            assert len(payload) <= LIMIT
            if opcode == 8:
                check(parse_close, payload, allowed=(WebSocketError,))
        # Buffered: at most one frame in progress (the limit plus its header) and its fragments.
        assert parser._buffered <= LIMIT + MAX_HEADER + len(data)
        assert parser._frag_size <= LIMIT


@FUZZ
@given(st.binary(max_size=2048), st.lists(st.integers(0, 4096), max_size=8))
def test_fuzz_websocket_bytes(data: bytes, cuts: list[int]) -> None:
    _feed(data, cuts)


@FUZZ
@given(mutated(streams), st.lists(st.integers(0, 4096), max_size=8))
def test_fuzz_websocket_mutated(data: bytes, cuts: list[int]) -> None:
    _feed(data, cuts)
