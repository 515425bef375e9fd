"""MSE/PE handshake state machines wired together in memory, and fed hostile bytes."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import RemoteProtocolError
from bridge.proto.mse import MseInitiator, MseResponder, Rc4, req2_key

IH = bytes(range(20))
IA = b"\x13BitTorrent protocol" + bytes(48)


def responder(**kw):
    return MseResponder(lambda r: IH if r == req2_key(IH) else None, os.urandom, **kw)


def run(a: MseInitiator, b: MseResponder, chunk: int | None = None, after_b: bytes = b"", after_a: bytes = b""):
    """Exchange the handshake; returns each side's result and the bytes that arrived after it finished
    (in a real connection those come through the payload stream)."""
    late = {id(a): b"", id(b): b""}

    def feed(dst, data):
        step = chunk or len(data) or 1
        for i in range(0, len(data), step):
            if dst.result is not None:
                late[id(dst)] += data[i:]
                return
            dst.receive_data(data[i : i + step])

    feed(b, a.data_to_send())
    feed(a, b.data_to_send())
    feed(b, a.data_to_send() + after_a)
    feed(a, b.data_to_send() + after_b)
    return a.result, b.result, late[id(a)], late[id(b)]


@pytest.mark.parametrize("chunk", [None, 1, 7, 100])
def test_plaintext_selected_when_both_allow(chunk):
    ra, rb, late_a, late_b = run(MseInitiator(IH, IA, os.urandom), responder(), chunk, after_b=b"bt-stream",
                                 after_a=b"more")
    assert ra is not None and rb is not None
    assert not ra.rc4 and not rb.rc4
    assert rb.payload + late_b == IA + b"more" and ra.payload + late_a == b"bt-stream"
    assert rb.info_hash == IH


def test_rc4_payload_when_required_and_keystreams_line_up():
    a = MseInitiator(IH, IA, os.urandom, allow_plaintext=False)
    b = responder(allow_plaintext=False)
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())
    b.receive_data(a.data_to_send())
    reply = b.data_to_send()
    ra, rb = a, b
    assert rb.result is not None and rb.result.rc4 and rb.result.payload == IA
    # B continues its RC4 stream for the payload; A must decrypt it with its own stream position.
    enc_b = Rc4(rb.result.send_key)
    enc_b.crypt(bytes(rb.result.send_used))
    ra.receive_data(reply + enc_b.crypt(b"hello from b"))
    assert ra.result is not None and ra.result.rc4
    assert ra.result.payload == b"hello from b"
    assert ra.result.send_key == rb.result.recv_key and ra.result.recv_key == rb.result.send_key



def test_unknown_torrent_is_refused():
    a = MseInitiator(b"\xff" * 20, IA, os.urandom)
    b = responder()
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())
    with pytest.raises(RemoteProtocolError, match="unknown torrent"):
        b.receive_data(a.data_to_send())


def test_no_common_method():
    a = MseInitiator(IH, IA, os.urandom, allow_plaintext=True)
    a._provide = 0x01  # plaintext only
    b = responder(allow_plaintext=False)
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())
    with pytest.raises(RemoteProtocolError):
        b.receive_data(a.data_to_send())


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0, max_size=3000))
def test_responder_garbage_raises_only_protocol_errors(data):
    b = responder()
    try:
        b.receive_data(data)
        b.receive_data(bytes(random.Random(len(data)).randbytes(700)))
    except RemoteProtocolError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0, max_size=3000))
def test_initiator_garbage_raises_only_protocol_errors(data):
    a = MseInitiator(IH, IA, os.urandom)
    try:
        a.receive_data(data)
        a.receive_data(bytes(random.Random(len(data)).randbytes(700)))
    except RemoteProtocolError:
        pass
