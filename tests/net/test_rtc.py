"""The WebRTC transport: aiortc offerer <-> aiortc answerer on 127.0.0.1, then the real wire codec over it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import re
import socket
import struct
from collections.abc import AsyncIterator

import aioice.ice
import aioice.turn
import pytest
import rtc_pair

from bridge.errors import LocalProtocolError, RemoteProtocolError
from bridge.net import rtc
from bridge.net.rtc import (
    MAX_MESSAGE_SIZE,
    MAX_SDP_LENGTH,
    RtcConfig,
    RtcTransport,
    answer_offer,
    check_sdp,
    create_offer,
)
from bridge.proto.events import Bitfield, Handshake, Have, Interested, Piece, Request, Unchoke
from bridge.proto.wire import Wire, encode_piece_header, make_reserved

pytestmark = pytest.mark.timeout(90)

LOOPBACK = rtc_pair.LOOPBACK
#: Every wait in these tests is bounded by this many seconds.
WAIT = 30.0


async def connect(config: RtcConfig = LOOPBACK) -> tuple[RtcTransport, RtcTransport]:
    """(offerer's transport, answerer's transport)."""
    return await rtc_pair.connect(config, WAIT)


@pytest.fixture(autouse=True)
async def nothing_left_open() -> AsyncIterator[None]:
    """After each test, every peer connection closed in the background has finished closing."""
    yield
    async with asyncio.timeout(WAIT):
        await rtc.wait_closing()


@pytest.fixture
async def pair() -> AsyncIterator[tuple[RtcTransport, RtcTransport]]:
    a, b = await connect()
    yield a, b
    await rtc_pair.close((a, b), WAIT)


async def read_exactly(t: RtcTransport, n: int) -> bytes:
    return await rtc_pair.read_exactly(t, n, WAIT)


async def write_in_odd_chunks(t: RtcTransport, data: bytes, seed: int) -> None:
    rng = random.Random(seed)
    pos = 0
    while pos < len(data):
        n = rng.choice([1, 7, 13, 68, 1000, 16383, 16384, 16385, 40_000, 100_003])
        chunk = data[pos : pos + n]
        # bytes, bytearray and memoryview are all accepted
        await t.write(rng.choice([bytes, bytearray, memoryview])(chunk))
        pos += n


# ------------------------------------------------------------------------------------- byte stream


async def test_connects_on_loopback_with_addresses(pair: tuple[RtcTransport, RtcTransport]) -> None:
    a, b = pair
    assert a.kind == b.kind == "webrtc"
    assert a.remote_address[0] == "127.0.0.1" and a.remote_address[1] > 0
    assert b.remote_address[0] == "127.0.0.1" and b.remote_address[1] > 0
    assert a.channel.label == b.channel.label and re.fullmatch(r"[0-9a-f]{40}", a.channel.label)
    assert a.channel.ordered and a.channel.maxRetransmits is None and a.channel.maxPacketLifeTime is None


async def test_malformed_stun_on_the_ice_port_is_ignored_quietly(pair: tuple[RtcTransport, RtcTransport]) -> None:
    """Datagrams that look like STUN (magic cookie) but carry an attribute too short for its type: aioice
    alone lets struct.error escape its datagram_received, and the event loop logs a traceback for each
    one. They are dropped without a word, and the channel carries on."""
    a, b = pair
    loop = asyncio.get_running_loop()
    logged: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: logged.append(context))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for kind in (0x0024, 0x8029, 0x000D):  # PRIORITY, ICE-CONTROLLED, LIFETIME, each 1 byte long
                attrs = struct.pack("!HH", kind, 1) + b"\x01\x00\x00\x00"
                sock.sendto(struct.pack("!HHI", 0x0001, len(attrs), 0x2112A442) + os.urandom(12) + attrs,
                            a.remote_address)
        await asyncio.sleep(0.3)
        data = os.urandom(50_000)
        await a.write(data)
        assert await read_exactly(b, len(data)) == data
    finally:
        loop.set_exception_handler(previous)
    assert logged == []


async def test_byte_stream_both_ways_in_odd_chunks(pair: tuple[RtcTransport, RtcTransport]) -> None:
    a, b = pair
    there, back = os.urandom(1 << 20), os.urandom(1 << 20)
    async with asyncio.timeout(WAIT):
        got_there, got_back, _, _ = await asyncio.gather(
            read_exactly(b, len(there)),
            read_exactly(a, len(back)),
            write_in_odd_chunks(a, there, 1),
            write_in_odd_chunks(b, back, 2),
        )
    assert got_there == there
    assert got_back == back


async def test_messages_are_at_most_16_kib(pair: tuple[RtcTransport, RtcTransport]) -> None:
    a, b = pair
    sizes: list[int] = []
    b.channel.on("message", lambda m: sizes.append(len(m)))
    data = os.urandom(100_000) + os.urandom(MAX_MESSAGE_SIZE + 1) + os.urandom(5)
    await a.write(data[:100_000])
    await a.write(data[100_000 : 100_000 + MAX_MESSAGE_SIZE + 1])
    await a.write(data[100_000 + MAX_MESSAGE_SIZE + 1 :])
    assert await read_exactly(b, len(data)) == data
    assert sum(sizes) == len(data)
    assert max(sizes) == MAX_MESSAGE_SIZE == 16 * 1024
    # 100,000 = 6 x 16384 + 1696; 16385 = 16384 + 1; then 5
    assert sizes == [16384] * 6 + [1696, 16384, 1, 5]


async def test_back_pressure_bounds_buffered_amount(pair: tuple[RtcTransport, RtcTransport]) -> None:
    a, b = pair
    high = LOOPBACK.buffered_amount_high
    channel = a.channel
    seen: list[int] = []
    send = channel.send

    def recording_send(message: bytes | str) -> None:
        send(message)
        seen.append(channel.bufferedAmount)

    channel.send = recording_send  # type: ignore[method-assign,assignment]
    total = 32 << 20
    block = os.urandom(1 << 20)

    async def writer() -> None:
        # one huge write, then many small ones: both must respect the mark
        await a.write(block * 16)
        for _ in range(16 * 64):
            await a.write(block[:16384])

    async def reader() -> int:
        n = 0
        while n < total:
            chunk = await b.read()
            assert chunk
            n += len(chunk)
        return n

    async with asyncio.timeout(120):
        received, _ = await asyncio.gather(reader(), writer())
    assert received == total
    assert len(seen) == total // MAX_MESSAGE_SIZE
    assert max(seen) <= high + MAX_MESSAGE_SIZE, max(seen)
    assert max(seen) > high  # the writer really ran into the mark and waited
    assert channel.bufferedAmountLowThreshold == LOOPBACK.buffered_amount_low


async def test_writer_waits_while_reader_is_slow(pair: tuple[RtcTransport, RtcTransport]) -> None:
    """With nobody reading on the far side aiortc still drains (no receive flow control), but a write far
    larger than the mark cannot finish before the data has actually been sent."""
    a, b = pair
    data = os.urandom(8 << 20)
    write = asyncio.create_task(a.write(data))
    await asyncio.sleep(0)
    assert not write.done()
    assert a.buffered_amount <= LOOPBACK.buffered_amount_high + MAX_MESSAGE_SIZE
    assert await read_exactly(b, len(data)) == data
    async with asyncio.timeout(WAIT):
        await write


# ----------------------------------------------------------------------------------------- closing


async def test_close_gives_eof_on_both_sides() -> None:
    a, b = await connect()
    await a.write(b"x" * 1000)
    assert await read_exactly(b, 1000) == b"x" * 1000
    pending = asyncio.create_task(b.read())
    await asyncio.sleep(0.05)
    a.close()
    assert await a.read() == b""
    with pytest.raises(ConnectionResetError):
        await a.write(b"more")
    async with asyncio.timeout(WAIT):
        assert await pending == b""
        assert await b.read() == b""
        await a.wait_closed()
        await b.wait_closed()
    with pytest.raises(ConnectionResetError):
        await b.write(b"more")
    a.close()  # idempotent
    b.close()


async def test_local_close_wakes_a_blocked_writer() -> None:
    a, b = await connect()
    try:
        write = asyncio.create_task(a.write(os.urandom(16 << 20)))
        await asyncio.sleep(0.05)
        assert not write.done()
        a.close()
        async with asyncio.timeout(WAIT):
            with pytest.raises(ConnectionResetError):
                await write
    finally:
        a.close()
        b.close()


async def test_text_message_is_a_protocol_error() -> None:
    a, b = await connect()
    try:
        a.channel.send("hello")  # WebTorrent only ever sends binary messages
        async with asyncio.timeout(WAIT):
            with pytest.raises(RemoteProtocolError, match="text message"):
                await b.read()
            assert await b.read() == b""
            assert await a.read() == b""  # the offending peer is disconnected
    finally:
        a.close()
        b.close()


async def test_unread_flood_is_a_protocol_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rtc, "READ_QUEUE_LIMIT", 256 * 1024)
    a, b = await connect()
    try:
        await a.write(os.urandom(512 * 1024))
        async with asyncio.timeout(WAIT):
            while not b._inbox.eof:  # b drops the association once 256 KiB wait unread
                await asyncio.sleep(0.01)
            with pytest.raises(RemoteProtocolError, match="not read"):
                await b.read()
            assert await b.read() == b""
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------------------------------- timeouts


async def test_unreachable_answer_times_out() -> None:
    """An answer whose candidate is a UDP socket that never replies: accept_answer gives up at the timeout."""
    config = RtcConfig(host_addresses=("127.0.0.1",), connect_timeout=1.0)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    try:
        offer = await create_offer(config)
        answer_sdp, answered = await answer_offer(offer.sdp, config)
        answered.cancel()
        await asyncio.sleep(0.1)  # let the answering side close, so nothing can reach us as peer-reflexive
        # point every address in the answer at the silent socket
        answer_sdp = re.sub(r"(a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1) \d+", rf"\1 {port}", answer_sdp)
        answer_sdp = re.sub(r"m=application \d+", f"m=application {port}", answer_sdp)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError, match="within 1 s"):
            await offer.accept_answer(answer_sdp)
        assert 0.9 <= loop.time() - started < 5.0
        with pytest.raises(LocalProtocolError):
            await offer.accept_answer(answer_sdp)
        offer.close()
        async with asyncio.timeout(WAIT):
            await offer.wait_closed()
    finally:
        silent.close()


async def test_undelivered_answer_times_out_on_the_answering_side() -> None:
    config = RtcConfig(host_addresses=("127.0.0.1",), connect_timeout=1.0)
    offer = await create_offer(config)
    try:
        _, answered = await answer_offer(offer.sdp, config)  # the answer never reaches the offerer
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(WAIT):
            with pytest.raises(TimeoutError):
                await answered
        assert loop.time() - started < 5.0
    finally:
        offer.close()


async def test_failed_ice_is_reported_before_the_timeout() -> None:
    """The answer's only candidate cannot pair with ours (IPv6 against our IPv4). Because end-of-candidates
    is signalled for the complete answer, ICE fails at once instead of waiting for the timeout. (A
    candidate that never replies is different: aioice retransmits its checks for about 31 s, so
    connect_timeout is what bounds that case.)"""
    config = RtcConfig(host_addresses=("127.0.0.1",), connect_timeout=20.0)
    offer, other = await create_offer(config), await create_offer(config)
    # An answer to another offer: its side never learnt our address, so no peer-reflexive rescue either.
    answer_sdp, answered = await answer_offer(other.sdp, config)
    answered.cancel()
    other.close()
    answer_sdp = re.sub(r"(a=candidate:\S+ 1 udp \d+) 127\.0\.0\.1 ", r"\1 fd00::7 ", answer_sdp)
    answer_sdp = answer_sdp.replace("a=end-of-candidates\r\n", "")  # as simple-peer sends it
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(WAIT):
        with pytest.raises(ConnectionError):
            await offer.accept_answer(answer_sdp)
    assert loop.time() - started < 5.0


async def test_failed_dtls_is_reported_at_once() -> None:
    """ICE works but the answer's certificate fingerprint is wrong: the offerer fails fast."""
    config = RtcConfig(host_addresses=("127.0.0.1",), connect_timeout=20.0)
    offer = await create_offer(config)
    answer_sdp, answered = await answer_offer(offer.sdp, config)
    try:
        answer_sdp = re.sub(r"a=fingerprint:sha-256 \S+", "a=fingerprint:sha-256 " + ":".join(["AB"] * 32), answer_sdp)
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(WAIT):
            with pytest.raises(ConnectionError):
                await offer.accept_answer(answer_sdp)
        assert loop.time() - started < 5.0
    finally:
        answered.cancel()


async def test_offer_without_candidates_connects_peer_reflexively() -> None:
    """An offer listing no candidate at all (nothing usable, e.g. unresolvable mDNS names only) is not
    given up at once: the offerer's own checks reach our answer's candidate and ICE finds the pair."""
    offer = await create_offer(LOOPBACK)
    bare = re.sub(r"a=(candidate:.*|end-of-candidates)\r\n", "", offer.sdp)
    assert "a=candidate" not in bare
    async with asyncio.timeout(WAIT):
        answer_sdp, answered = await answer_offer(bare, LOOPBACK)
        a = await offer.accept_answer(answer_sdp)
        b = await answered
    try:
        await a.write(b"ping")
        assert await read_exactly(b, 4) == b"ping"
        assert b.remote_address[0] == "127.0.0.1"
    finally:
        a.close()
        b.close()


async def test_closing_an_offer_while_it_connects_fails_accept_answer() -> None:
    config = RtcConfig(host_addresses=("127.0.0.1",), connect_timeout=20.0)
    offer, other = await create_offer(config), await create_offer(config)
    answer_sdp, answered = await answer_offer(other.sdp, config)  # never connects to ``offer``
    answered.cancel()
    other.close()
    accepting = asyncio.create_task(offer.accept_answer(answer_sdp))
    await asyncio.sleep(0.2)
    offer.close()
    async with asyncio.timeout(WAIT):
        with pytest.raises(ConnectionError, match="closed"):
            await accepting
        await offer.wait_closed()


async def test_many_offers_are_cheap_to_discard() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    offers = [await create_offer(LOOPBACK) for _ in range(20)]
    assert len({o.sdp for o in offers}) == 20
    for o in offers:
        o.close()
        o.close()
    async with asyncio.timeout(WAIT):
        for o in offers:
            await o.wait_closed()
    assert loop.time() - started < 10.0
    with pytest.raises(LocalProtocolError):
        await offers[0].accept_answer("v=0\r\n")


async def test_cancelling_the_answer_task_closes_the_connection() -> None:
    offer = await create_offer(LOOPBACK)
    try:
        _, answered = await answer_offer(offer.sdp, LOOPBACK)
        answered.cancel()
        with pytest.raises(asyncio.CancelledError):
            await answered
    finally:
        offer.close()


# ------------------------------------------------------------------------------------ untrusted SDP


GARBAGE = [
    "",
    "garbage",
    "v=0\r\n",
    "m=audio x\r\n",
    "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n",
    "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=candidate:1 1 udp 2 1.2.3.4 x typ host\r\n",
    "\x00\xff\u20ac",
    "v=0\r\n" + "a=x\r\n" * (MAX_SDP_LENGTH // 5),
]


@pytest.mark.parametrize("sdp", GARBAGE)
async def test_garbage_offer_is_a_remote_protocol_error(sdp: str) -> None:
    with pytest.raises(RemoteProtocolError):
        await answer_offer(sdp, LOOPBACK)


async def test_non_string_offer_is_a_remote_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError):
        await answer_offer(b"v=0", LOOPBACK)  # type: ignore[arg-type]
    with pytest.raises(RemoteProtocolError):
        await answer_offer(None, LOOPBACK)  # type: ignore[arg-type]


@pytest.mark.parametrize("sdp", GARBAGE)
async def test_garbage_answer_is_a_remote_protocol_error(sdp: str) -> None:
    offer = await create_offer(LOOPBACK)
    with pytest.raises(RemoteProtocolError):
        await offer.accept_answer(sdp)
    with pytest.raises(LocalProtocolError):  # the offer is closed after a bad answer
        await offer.accept_answer(sdp)
    async with asyncio.timeout(WAIT):
        await offer.wait_closed()


async def test_offers_with_media_or_too_many_candidates_are_refused() -> None:
    offer = await create_offer(LOOPBACK)
    offer.close()
    audio = offer.sdp + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=rtpmap:111 opus/48000/2\r\n"
    with pytest.raises(RemoteProtocolError, match="audio"):
        await answer_offer(audio, LOOPBACK)
    candidate = next(line for line in offer.sdp.splitlines() if line.startswith("a=candidate:"))
    extra = "".join(candidate.replace(" 127.0.0.1 ", f" 127.0.0.{i} ") + "\r\n" for i in range(2, 100))
    crowded = offer.sdp.replace(candidate + "\r\n", candidate + "\r\n" + extra)
    with pytest.raises(RemoteProtocolError, match="candidates"):
        await answer_offer(crowded, LOOPBACK)
    with pytest.raises(RemoteProtocolError, match="over the limit"):
        check_sdp(offer.sdp + "a=x\r\n" * MAX_SDP_LENGTH, "offer")
    assert check_sdp(offer.sdp, "offer") == offer.sdp


async def test_mutated_offers_fail_only_with_remote_protocol_error() -> None:
    """Real offers with lines dropped, duplicated, swapped, cut or garbled: answer_offer either works or
    raises RemoteProtocolError, never an aiortc exception."""
    base = await create_offer(LOOPBACK)
    base.close()
    lines = base.sdp.split("\r\n")
    rng = random.Random(7)
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(150):
        mutated = list(lines)
        op = rng.randrange(5)
        i = rng.randrange(len(mutated))
        if op == 0:
            del mutated[i]
        elif op == 1:
            mutated.insert(i, mutated[i])
        elif op == 2:
            j = rng.randrange(len(mutated))
            mutated[i], mutated[j] = mutated[j], mutated[i]
        elif op == 3:
            mutated[i] = mutated[i][: rng.randrange(len(mutated[i]) + 1)]
        else:
            words = mutated[i].split(" ")
            words[rng.randrange(len(words))] = rng.choice(["x", "-1", "", "99999999999", "a=", ":"])
            mutated[i] = " ".join(words)
        try:
            _, answered = await answer_offer("\r\n".join(mutated), LOOPBACK)
        except RemoteProtocolError:
            outcomes["refused"] += 1
        else:
            outcomes["ok"] += 1
            answered.cancel()
    assert outcomes["refused"] > 10 and outcomes["ok"] > 10, outcomes


# ------------------------------------------------------------------------------------ configuration


def test_config_validation_and_turn_credentials() -> None:
    with pytest.raises(ValueError):
        RtcConfig(ice_servers=("http://example.com",))
    with pytest.raises(ValueError):
        RtcConfig(ice_servers=("stun:user:pw@example.com",))
    with pytest.raises(ValueError):
        RtcConfig(host_addresses=("localhost",))
    with pytest.raises(ValueError):
        RtcConfig(buffered_amount_high=10, buffered_amount_low=10)
    with pytest.raises(ValueError):
        RtcConfig(receive_buffer=-1)
    with pytest.raises(ValueError):
        RtcConfig(receive_buffer=rtc.ICE_RECEIVE_BUFFER_MAX + 1)
    server = rtc._ice_server("turn:us%40er:p%3Aw@turn.example.com:3478?transport=tcp")
    assert server.urls == "turn:turn.example.com:3478?transport=tcp"
    assert (server.username, server.credential) == ("us@er", "p:w")
    assert rtc._ice_server("stun:stun.example.com:19302").urls == "stun:stun.example.com:19302"
    defaults = RtcConfig()
    assert defaults.ice_servers == () and defaults.host_addresses == ()
    assert defaults.buffered_amount_low < defaults.buffered_amount_high


async def test_host_address_hook_leaves_other_gathering_alone() -> None:
    offer = await create_offer(LOOPBACK)  # installs the hook
    offer.close()
    assert getattr(aioice.ice.get_host_addresses, "_bridge_hook", False)
    outside = aioice.ice.get_host_addresses(True, True)
    assert "127.0.0.1" not in outside and "::1" not in outside
    candidates = [line for line in offer.sdp.splitlines() if line.startswith("a=candidate:")]
    assert candidates and all(" 127.0.0.1 " in line for line in candidates)


# -------------------------------------------------------------------------------- the real wire codec


async def test_wire_handshake_and_pieces_over_rtc(pair: tuple[RtcTransport, RtcTransport]) -> None:
    a, b = pair
    info_hash = bytes(range(20))
    wa, wb = Wire(), Wire()
    blocks = [os.urandom(16384) for _ in range(8)] + [os.urandom(1000)]

    async def events(t: RtcTransport, wire: Wire, count: int) -> list[object]:
        out: list[object] = []
        async with asyncio.timeout(WAIT):
            while len(out) < count:
                data = await t.read()
                assert data, "stream ended early"
                out.extend(wire.receive_data(data))
        return out

    # Both sides send their handshake as soon as the channel is open, as WebTorrent does.
    await a.write(wa.send(Handshake(info_hash, b"-WB0001-aaaaaaaaaaaa", make_reserved())))
    await b.write(wb.send(Handshake(info_hash, b"-WW0208-bbbbbbbbbbbb", make_reserved())))
    await b.write(wb.send(Interested()) + wb.send(Request(0, 0, 16384)))
    got_a = await events(a, wa, 3)
    assert got_a[0] == Handshake(info_hash, b"-WW0208-bbbbbbbbbbbb", make_reserved())
    assert got_a[1:] == [Interested(), Request(0, 0, 16384)]

    await a.write(wa.send(Bitfield(b"\xff\x80")) + wa.send(Unchoke()))
    for i, block in enumerate(blocks):
        # WebTorrent's way: a piece's 13-byte header and its block as separate writes (messages)
        await a.write(encode_piece_header(i, 0, len(block)))
        await a.write(block)
    await a.write(wa.send(Have(3)))
    got_b = await events(b, wb, 3 + len(blocks) + 1)
    assert got_b[0] == Handshake(info_hash, b"-WB0001-aaaaaaaaaaaa", make_reserved())
    assert got_b[1:3] == [Bitfield(b"\xff\x80"), Unchoke()]
    pieces = got_b[3:-1]
    assert all(isinstance(p, Piece) for p in pieces)
    assert [(p.index, p.begin, bytes(p.data)) for p in pieces] == [(i, 0, blk) for i, blk in enumerate(blocks)]  # type: ignore[attr-defined]
    assert got_b[-1] == Have(3) and wb.buffered == 0

    # and a piece back the other way, in one write
    await b.write(wb.send(Piece(5, 16384, blocks[0])))
    (back,) = await events(a, wa, 1)
    assert isinstance(back, Piece) and (back.index, back.begin, bytes(back.data)) == (5, 16384, blocks[0])


def _ice_receive_buffers(t: RtcTransport) -> list[int]:
    return [p.transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            for p in rtc._ice_connection(t._pc)._protocols]


async def test_ice_sockets_get_the_configured_receive_buffer() -> None:
    """Both roles ask for RtcConfig.receive_buffer on the sockets they gathered on; 0 leaves what aioice
    asks for. Linux grants at most net.core.rmem_max and reports twice what it grants, so a size below
    any host's limit shows the setting is applied, whatever this host allows."""
    with open("/proc/sys/net/core/rmem_max") as f:
        rmem_max = int(f.read())
    cases = [
        (100_000, 200_000),  # under every rmem_max (the kernel's default is 212,992), unlike aioice's 256 KiB
        (rtc.ICE_RECEIVE_BUFFER, 2 * min(rtc.ICE_RECEIVE_BUFFER, rmem_max)),  # the default
        (0, 2 * min(aioice.turn.UDP_SOCKET_BUFFER_SIZE, rmem_max)),
    ]
    for asked, reported in cases:
        pair = await rtc_pair.connect(dataclasses.replace(LOOPBACK, receive_buffer=asked), WAIT)
        try:
            for t in pair:
                assert _ice_receive_buffers(t) == [reported], (asked, rmem_max)
        finally:
            await rtc_pair.close(pair, WAIT)


# ----------------------------------------------------------------------------- ICE servers that fail

STUN = "stun:stun.example:3478"
TURN = "turn:alice:s3cret@turn.example:3478"


def test_an_ice_server_that_gave_nothing_is_left_out_for_a_growing_while(caplog: pytest.LogCaptureFixture) -> None:
    """A TURN server without a relay candidate, or a STUN server slow and without a server-reflexive one, is
    left out of new connections for ICE_SERVER_RETRY, then tried again; each new failure doubles the wait up
    to ICE_SERVER_RETRY_MAX, and a success ends it. The first failure of each is a warning, later ones are
    info, and no credentials are logged."""
    now = [1000.0]
    servers = rtc.IceServers(clock=lambda: now[0])
    both = (STUN, TURN, "turn:bob:pw@second.example")
    caplog.set_level("INFO", logger=rtc.__name__)
    assert servers.usable(both) == list(both)
    # fast, without srflx: the STUN server answered (no IPv4 host address, say); no relay: TURN failed
    servers.gathered([STUN, TURN], "a=candidate:1 1 udp 1 10.0.0.1 5000 typ host", 0.1)
    assert servers.usable(both) == [STUN, "turn:bob:pw@second.example"]  # aiortc now uses the second TURN URL
    now[0] += rtc.ICE_SERVER_RETRY - 1
    assert TURN not in servers.usable(both)
    now[0] += 1
    waits = []
    for _ in range(7):
        assert TURN in servers.usable(both)
        servers.gathered([TURN], "", 0.1)
        waits.append(round(servers._down[TURN][0] - now[0]))
        now[0] += waits[-1]
    assert waits == [120, 240, 480, 900, 900, 900, 900]
    servers.gathered([TURN], "a=candidate:2 1 udp 1 1.2.3.4 6000 typ relay raddr 0.0.0.0 rport 0", 0.1)
    assert servers.usable(both) == list(both)
    servers.gathered([STUN], "", rtc.GATHER_SLOW + 1)  # slow and no srflx: the STUN server did not answer
    assert servers.usable(both) == [TURN, "turn:bob:pw@second.example"]
    servers.gathered([STUN], "", rtc.GATHER_SLOW + 1)
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == rtc.__name__]
    assert [level for level, _ in messages] == ["WARNING"] + ["INFO"] * 7 + ["WARNING", "INFO"]
    assert "turn:turn.example:3478 gave no relay candidate" in messages[0][1]
    assert "stun:stun.example:3478 did not answer" in messages[8][1]
    assert not any("s3cret" in m or "alice" in m for _, m in messages)


async def test_a_stun_server_that_does_not_answer_costs_one_offer_not_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice waits 5 s for a STUN server that does not answer, in every offer and answer. After the first,
    offers go without it (and at once) until ICE_SERVER_RETRY has passed."""
    monkeypatch.setattr(rtc, "ICE_SERVERS", rtc.IceServers())
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole.bind(("127.0.0.1", 0))
    hole.setblocking(False)

    def requests() -> int:
        n = 0
        with contextlib.suppress(BlockingIOError):
            while hole.recv(2048):
                n += 1
        return n

    config = dataclasses.replace(LOOPBACK, ice_servers=(f"stun:127.0.0.1:{hole.getsockname()[1]}",))
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = await create_offer(config)
        first.close()
        assert loop.time() - started >= rtc.GATHER_SLOW and requests() >= 1
        started = loop.time()
        offers = [await create_offer(config) for _ in range(3)]
        for offer in offers:
            offer.close()
            assert " typ host" in offer.sdp
        assert loop.time() - started < rtc.GATHER_SLOW and requests() == 0
    finally:
        hole.close()


async def test_wait_closing_returns_when_only_ended_tasks_are_left() -> None:
    """A clean-up task that has ended but whose done callback has not run (it runs a moment later, or never
    if its event loop has closed) must not keep wait_closing() waiting. Since Python 3.12 gather() of
    ended tasks returns without yielding to the loop, so a loop on the set alone would spin forever."""

    async def nothing() -> None:
        return None

    ended = asyncio.get_running_loop().create_task(nothing())
    await ended
    rtc._background.add(ended)  # as if its done callback had not run yet
    try:
        async with asyncio.timeout(5):
            await rtc.wait_closing()
        assert ended not in rtc._background
    finally:
        rtc._background.discard(ended)
