"""Fuzz STUN parsing on the ICE sockets (aioice's parser behind bridge.net.rtc's guard): datagrams with a
STUN header and magic cookie and random attributes, whole or damaged. Only ValueError may escape, which
aioice takes as "not STUN"; anything else would escape its datagram_received into the event loop's log."""

from __future__ import annotations

import os
import struct

import aioice.stun
from fuzz_support import DEADLINE, SUPPRESS, check, mutated
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.net import rtc

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=DEADLINE, suppress_health_check=SUPPRESS)

#: Attribute types aioice decodes (addresses, integers, strings, flags), plus some it does not know.
KINDS = [0x0001, 0x0006, 0x0008, 0x0009, 0x000C, 0x000D, 0x0014, 0x0015, 0x0019, 0x0020, 0x0024, 0x0025,
         0x8022, 0x8028, 0x8029, 0x802A, 0x7777]

attribute = st.builds(lambda kind, value: struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4),
                      st.sampled_from(KINDS), st.binary(max_size=24))
message = st.builds(
    lambda method, txid, attrs: struct.pack("!HHI", method, len(b"".join(attrs)), 0x2112A442) + txid + b"".join(attrs),
    st.sampled_from([0x0001, 0x0101, 0x0111, 0x0003, 0x0103, 0x0016]), st.binary(min_size=12, max_size=12),
    st.lists(attribute, max_size=6))


@FUZZ
@given(st.one_of(message, mutated(message)))
def test_only_value_error_escapes_the_guarded_parser(data: bytes) -> None:
    rtc._install_stun_parse_guard()
    result = check(aioice.stun.parse_message, data, allowed=(ValueError,))
    if not isinstance(result, ValueError):
        assert isinstance(result, aioice.stun.Message)
