"""The tracker's server-side codecs (bridge.tracker.codec), checked against the bridge's client-side codecs
(bridge.proto.tracker) and an independent bencode decoder, plus fuzzing of every parser."""

from __future__ import annotations

import struct
import urllib.parse

import bencodepy  # the bencode.py package (test extra): an independent decoder
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import TrackerError
from bridge.proto.tracker import (
    AnnounceRequest,
    build_http_announce_url,
    parse_http_announce_response,
    parse_udp_announce_response,
    parse_udp_connect_response,
    udp_announce_request,
    udp_connect_request,
)
from bridge.tracker.codec import (
    CONNECTION_ID_WINDOW,
    MAX_SCRAPE_HASHES,
    ConnectionIds,
    UdpAnnounce,
    UdpConnect,
    UdpRequestError,
    UdpScrape,
    encode_http_announce_reply,
    encode_http_failure,
    encode_http_scrape_reply,
    encode_udp_announce,
    encode_udp_connect,
    encode_udp_error,
    encode_udp_scrape,
    normalize_ip,
    parse_http_announce,
    parse_http_scrape,
    parse_udp_request,
)
from bridge.tracker.state import MAX_NUMWANT, AddrReply, PeerAddress

IH = bytes(range(0x41, 0x55))
# Every awkward byte for a query string: %, &, =, +, space, #, ?, NUL, high bytes.
PID = b"-WB0001-\x00\xff%&=?+ /#\x80\x7f"


def query_of(url: str) -> str:
    return url.split("?", 1)[1]


def test_parse_http_announce_from_the_bridge_client_url() -> None:
    req = AnnounceRequest(IH, PID, 6881, 10, 20, 30, "started", numwant=25, key=0x1234)
    q = parse_http_announce(query_of(build_http_announce_url("http://t.example/announce", req)))
    assert (q.info_hash, q.peer_id, q.port, q.uploaded, q.downloaded, q.left) == (IH, PID, 6881, 10, 20, 30)
    assert q.event == "started" and q.numwant == 25 and q.compact and not q.no_peer_id


def test_parse_http_announce_defaults_and_events() -> None:
    base = "info_hash=" + urllib.parse.quote_from_bytes(IH) + "&peer_id=" + urllib.parse.quote_from_bytes(PID)
    q = parse_http_announce(base + "&port=1")
    assert q.left is None and q.event is None and q.numwant == 50 and q.compact
    assert parse_http_announce(base + "&port=1&event=paused").event is None
    assert parse_http_announce(base + "&port=1&event=").event is None
    assert parse_http_announce(base + "&port=1&numwant=-1").numwant == 50
    assert parse_http_announce(base + "&port=1&numwant=100000").numwant == MAX_NUMWANT
    assert not parse_http_announce(base + "&port=1&compact=0&no_peer_id=1").compact
    assert parse_http_announce(base + "&port=0&event=stopped").port == 0


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("", "missing info_hash"),
        ("info_hash=abc", "info_hash must be 20 bytes"),
        ("info_hash=" + "a" * 20, "missing peer_id"),
        ("info_hash=" + "a" * 20 + "&peer_id=" + "b" * 21, "peer_id must be 20 bytes"),
        ("info_hash=" + "a" * 20 + "&peer_id=" + "b" * 20, "missing port"),
        ("info_hash=" + "a" * 20 + "&peer_id=" + "b" * 20 + "&port=70000", "port is out of range"),
        ("info_hash=" + "a" * 20 + "&peer_id=" + "b" * 20 + "&port=0", "port 0"),
        ("info_hash=" + "a" * 20 + "&peer_id=" + "b" * 20 + "&port=1x", "port is not an integer"),
        ("info_hash=" + "a" * 20 + "&peer_id=" + "b" * 20 + "&port=1&left=-5", "left is out of range"),
        ("info_hash=" + "a" * 20 + "&peer_id=" + "b" * 20 + "&port=1&left=" + "9" * 40, "left is not"),
        ("info_hash=" + "a" * 20 + "&peer_id=" + "b" * 20 + "&port=1&event=bogus", "unknown event"),
        ("&".join(["x=1"] * 500), "query parameters"),
    ],
)
def test_parse_http_announce_rejects(query: str, reason: str) -> None:
    with pytest.raises(TrackerError, match=reason):
        parse_http_announce(query)


def test_http_announce_reply_compact_v4_v6_through_the_client_parser() -> None:
    reply = AddrReply(3, 4, 120,
                      (PeerAddress(b"a" * 20, "10.1.2.3", 6881), PeerAddress(b"b" * 20, "127.0.0.1", 1)),
                      (PeerAddress(b"c" * 20, "2001:db8::1", 65535),))
    body = encode_http_announce_reply(reply)
    decoded = bencodepy.decode(body)
    assert decoded[b"peers"] == bytes([10, 1, 2, 3, 0x1A, 0xE1, 127, 0, 0, 1, 0, 1])
    assert len(decoded[b"peers6"]) == 18
    parsed = parse_http_announce_response(body)
    assert parsed.peers == (("10.1.2.3", 6881), ("127.0.0.1", 1), ("2001:db8::1", 65535))
    assert (parsed.complete, parsed.incomplete, parsed.interval) == (3, 4, 120)
    # No IPv6 peers: no peers6 key.
    assert b"peers6" not in bencodepy.decode(encode_http_announce_reply(AddrReply(0, 1, 120, (), ())))


def test_http_announce_reply_non_compact() -> None:
    reply = AddrReply(1, 0, 60, (PeerAddress(b"a" * 20, "10.0.0.1", 5),), (PeerAddress(b"c" * 20, "::1", 6),))
    decoded = bencodepy.decode(encode_http_announce_reply(reply, compact=False))
    assert decoded[b"peers"] == [{b"ip": b"10.0.0.1", b"port": 5, b"peer id": b"a" * 20},
                                 {b"ip": b"::1", b"port": 6, b"peer id": b"c" * 20}]
    decoded = bencodepy.decode(encode_http_announce_reply(reply, compact=False, no_peer_id=True))
    assert b"peer id" not in decoded[b"peers"][0]
    assert parse_http_announce_response(encode_http_announce_reply(reply, compact=False)).peers == (
        ("10.0.0.1", 5), ("::1", 6))


def test_http_scrape_raw_keys_and_failure() -> None:
    other = b"\xc3\xa9" * 10  # bytes that a latin-1 -> UTF-8 re-encoding would turn into 40 bytes
    body = encode_http_scrape_reply([(IH, 1, 2, 3), (other, 0, 0, 0)])
    files = bencodepy.decode(body)[b"files"]
    assert set(files) == {IH, other}
    assert files[IH] == {b"complete": 1, b"incomplete": 2, b"downloaded": 3}
    q = "info_hash=" + urllib.parse.quote_from_bytes(IH) + "&info_hash=" + urllib.parse.quote_from_bytes(other)
    assert parse_http_scrape(q) == (IH, other)
    with pytest.raises(TrackerError, match="at least one"):
        parse_http_scrape("")
    with pytest.raises(TrackerError, match="20 bytes"):
        parse_http_scrape("info_hash=abc")
    with pytest.raises(TrackerError, match=f"more than {MAX_SCRAPE_HASHES}"):
        parse_http_scrape("&".join(["info_hash=" + "a" * 20] * (MAX_SCRAPE_HASHES + 1)))
    with pytest.raises(TrackerError, match="tracker failure: go away"):
        parse_http_announce_response(encode_http_failure("go away"))


def test_udp_roundtrip_with_the_bridge_client_codec() -> None:
    assert parse_udp_request(udp_connect_request(77)) == UdpConnect(77)
    assert parse_udp_connect_response(encode_udp_connect(77, 0xDEADBEEF12345678), 77) == 0xDEADBEEF12345678
    req = AnnounceRequest(IH, PID, 6881, 1, 2, 3, "completed", numwant=-1, key=9)
    parsed = parse_udp_request(udp_announce_request(0x1122334455667788, 5, req) + b"\x02\x05/path")  # BEP 41
    assert parsed == UdpAnnounce(0x1122334455667788, 5, IH, PID, 2, 3, 1, "completed", 50, 6881, 9)
    reply = AddrReply(2, 3, 120, (PeerAddress(PID, "10.0.0.1", 80),), (PeerAddress(PID, "::2", 81),))
    got = parse_udp_announce_response(encode_udp_announce(5, reply, ipv6=False), 5)
    assert (got.complete, got.incomplete, got.peers) == (2, 3, (("10.0.0.1", 80),))
    got6 = parse_udp_announce_response(encode_udp_announce(5, reply, ipv6=True), 5, ipv6=True)
    assert got6.peers == (("::2", 81),)
    with pytest.raises(TrackerError, match="tracker failure: nope"):
        parse_udp_connect_response(encode_udp_error(77, "nope"), 77)


def test_udp_scrape_and_bad_requests() -> None:
    head = struct.pack(">QII", 42, 2, 9)
    assert parse_udp_request(head + IH + PID) == UdpScrape(42, 9, (IH, PID))
    assert encode_udp_scrape(9, [(IH, 1, 2, 3)]) == struct.pack(">IIIII", 2, 9, 1, 3, 2)
    with pytest.raises(UdpRequestError) as exc:
        parse_udp_request(head + b"x" * 19)
    assert (exc.value.connection_id, exc.value.transaction_id) == (42, 9)
    with pytest.raises(UdpRequestError, match="more than"):
        parse_udp_request(head + IH * 75)
    with pytest.raises(UdpRequestError, match="unknown action"):
        parse_udp_request(struct.pack(">QII", 42, 9, 1))
    with pytest.raises(UdpRequestError, match="too short"):
        parse_udp_request(struct.pack(">QII", 42, 1, 1) + b"\0" * 10)
    with pytest.raises(UdpRequestError, match="unknown event"):
        parse_udp_request(struct.pack(">QII20s20sQQQIIIiH", 1, 1, 1, IH, PID, 0, 0, 0, 7, 0, 0, -1, 1))
    with pytest.raises(TrackerError, match="protocol id"):
        parse_udp_request(struct.pack(">QII", 1234, 0, 1))
    with pytest.raises(TrackerError, match="too short"):
        parse_udp_request(b"\0" * 15)


def test_connection_ids() -> None:
    ids = ConnectionIds(b"k" * 32)
    cid = ids.issue("10.0.0.1", 1000.0)
    assert ids.valid(cid, "10.0.0.1", 1000.0)
    assert ids.valid(cid, "10.0.0.1", 1000.0 + CONNECTION_ID_WINDOW)  # the next window too
    assert not ids.valid(cid, "10.0.0.1", 1000.0 + 2 * CONNECTION_ID_WINDOW + 1)
    assert not ids.valid(cid, "10.0.0.2", 1000.0)  # bound to the address
    assert not ids.valid(cid ^ 1, "10.0.0.1", 1000.0)
    assert not ConnectionIds(b"j" * 32).valid(cid, "10.0.0.1", 1000.0)  # and to the secret
    with pytest.raises(ValueError):
        ConnectionIds(b"short")


def test_normalize_ip() -> None:
    assert normalize_ip("::ffff:10.0.0.1") == "10.0.0.1"
    assert normalize_ip("fe80::1%eth0") == "fe80::1"
    assert normalize_ip("2001:DB8::1") == "2001:db8::1"


# ------------------------------------------------------------------------------------------- fuzzing


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_udp_request_only_tracker_errors(data: bytes) -> None:
    try:
        parse_udp_request(data)
    except TrackerError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["info_hash", "peer_id", "port", "left", "uploaded", "downloaded",
                                            "event", "numwant", "compact", "x", "%zz"]),
                          st.binary(max_size=30)), max_size=12))
def test_fuzz_http_queries_only_tracker_errors(params: list[tuple[str, bytes]]) -> None:
    query = "&".join(f"{k}={urllib.parse.quote_from_bytes(v)}" for k, v in params)
    for parse in (parse_http_announce, parse_http_scrape):
        try:
            parse(query)
        except TrackerError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_raw_http_query_text(query: str) -> None:
    for parse in (parse_http_announce, parse_http_scrape):
        try:
            parse(query)
        except TrackerError:
            pass
