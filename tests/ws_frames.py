"""Client-to-server WebSocket frames written by hand (RFC 6455 5.2), for the tests of the tracker's own
framing (tests/proto/test_websocket.py, tests/tracker/test_tracker_websocket_framing.py and the fuzz
harness). Independent of bridge/proto/websocket.py, so the tests do not share the parser's code."""

from __future__ import annotations


def client_frame(opcode: int, payload: bytes, fin: bool = True, key: bytes = b"\x12\x34\x56\x78",
                 rsv: int = 0, masked: bool = True, length_form: str = "shortest") -> bytes:
    """One frame. ``length_form``: "shortest" (as RFC 6455 asks), "16" or "64" (a longer form than needed)."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv << 4 | opcode
    mask_bit = 0x80 if masked else 0
    if length_form == "64" or (length_form == "shortest" and n >= 0x10000):
        head = bytes((b0, mask_bit | 127)) + n.to_bytes(8, "big")
    elif length_form == "16" or (length_form == "shortest" and n >= 126):
        head = bytes((b0, mask_bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, mask_bit | n))
    if not masked:
        return head + payload
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + body
