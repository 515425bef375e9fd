"""Tracker codecs: HTTP announce URL/response (BEP 3, 7, 23) and UDP (BEP 15)."""

from __future__ import annotations

import ipaddress
import struct
import urllib.parse
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import TrackerError
from bridge.proto.tracker import (
    DEFAULT_ANNOUNCE_INTERVAL,
    MAX_ANNOUNCE_INTERVAL,
    MAX_HTTP_BODY,
    MAX_MESSAGE_CHARS,
    MAX_PEERS_PER_RESPONSE,
    MIN_ANNOUNCE_INTERVAL,
    AnnounceRequest,
    AnnounceResponse,
    build_http_announce_url,
    parse_http_announce_response,
    parse_tracker_url,
    parse_udp_announce_response,
    parse_udp_connect_response,
    udp_announce_request,
    udp_connect_request,
    udp_response_transaction_id,
)

INFO_HASH = bytes(range(0, 40, 2))  # includes bytes that need escaping and some that do not
PEER_ID = b"-WB0001-" + bytes(range(0xF4, 0x100))
assert len(INFO_HASH) == 20 and len(PEER_ID) == 20


def make_req(**kw: Any) -> AnnounceRequest:
    args: dict[str, Any] = dict(
        info_hash=INFO_HASH, peer_id=PEER_ID, port=6881, uploaded=1, downloaded=2, left=3, event="started"
    )
    args.update(kw)
    return AnnounceRequest(**args)


# --- a small independent bencoder for building tracker answers ---------------------------------------------


def benc(v: Any) -> bytes:
    if isinstance(v, int):
        return b"i" + str(v).encode() + b"e"
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return str(len(v)).encode() + b":" + v
    if isinstance(v, list):
        return b"l" + b"".join(benc(x) for x in v) + b"e"
    if isinstance(v, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, x) for k, x in v.items())
        return b"d" + b"".join(benc(k) + benc(x) for k, x in items) + b"e"
    raise TypeError(type(v))


def compact4(peers: list[tuple[str, int]]) -> bytes:
    return b"".join(ipaddress.IPv4Address(h).packed + struct.pack(">H", p) for h, p in peers)


def compact6(peers: list[tuple[str, int]]) -> bytes:
    return b"".join(ipaddress.IPv6Address(h).packed + struct.pack(">H", p) for h, p in peers)


def udp_announce_answer(tid: int, interval: int, leechers: int, seeders: int, peers: bytes) -> bytes:
    return struct.pack(">IIIII", 1, tid, interval, leechers, seeders) + peers


# --- AnnounceRequest ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"info_hash": b"x" * 19},
        {"peer_id": b"x" * 21},
        {"info_hash": "a" * 20},
        {"port": -1},
        {"port": 65536},
        {"uploaded": -1},
        {"left": 2**64},
        {"event": "paused"},
        {"numwant": 2**31},
        {"key": -1},
        {"key": 2**32},
        {"port": "80"},
        {"port": True},
    ],
)
def test_request_validation(kw: dict[str, Any]) -> None:
    with pytest.raises(TrackerError):
        make_req(**kw)


# --- URLs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://t.example/announce", ("http", "t.example", 80, "/announce")),
        ("HTTPS://T.Example:8443/a?x=1", ("https", "t.example", 8443, "/a?x=1")),
        ("udp://tracker.example:1337", ("udp", "tracker.example", 1337, "")),
        ("udp://[::1]:6969/announce", ("udp", "::1", 6969, "/announce")),
        ("ws://t.example/", ("ws", "t.example", 80, "/")),
        ("wss://t.example", ("wss", "t.example", 443, "")),
    ],
)
def test_parse_tracker_url(url: str, expected: tuple[str, str, int, str]) -> None:
    assert tuple(parse_tracker_url(url)) == expected


@pytest.mark.parametrize(
    "url",
    [
        "ftp://t.example/announce",
        "t.example/announce",
        "udp://t.example/announce",  # udp needs a port
        "http://t.example:99999/",
        "http://t.example:0/",
        "http://[::1/announce",
        "http:///announce",
        "http://t.example/ann ounce",
        "http://t.example/\nannounce",
        "http://t.example/" + "a" * 5000,
        "",
    ],
)
def test_parse_tracker_url_rejects(url: str) -> None:
    with pytest.raises(TrackerError):
        parse_tracker_url(url)


def _query(url: str) -> dict[str, bytes]:
    query = url.split("?", 1)[1]
    out: dict[str, bytes] = {}
    for part in query.split("&"):
        k, _, v = part.partition("=")
        out[k] = urllib.parse.unquote_to_bytes(v)
    return out


def test_build_url_encodes_binary_exactly() -> None:
    ih = bytes(range(256))[:20]
    pid = bytes(range(236, 256))
    url = build_http_announce_url("http://t.example/announce", make_req(info_hash=ih, peer_id=pid))
    assert url.startswith("http://t.example/announce?")
    q = _query(url)
    assert q["info_hash"] == ih and q["peer_id"] == pid
    assert q["port"] == b"6881" and q["uploaded"] == b"1" and q["downloaded"] == b"2" and q["left"] == b"3"
    assert q["compact"] == b"1" and q["event"] == b"started" and q["numwant"] == b"50"
    assert q["key"] == b"00000000"


def test_build_url_escapes_everything_but_unreserved() -> None:
    every = bytes(range(256))
    for start in range(0, 256, 20):
        chunk = (every[start : start + 20] + b"\0" * 20)[:20]
        url = build_http_announce_url("http://t/a", make_req(info_hash=chunk))
        value = url.split("info_hash=", 1)[1].split("&", 1)[0]
        i = 0
        decoded = bytearray()
        while i < len(value):
            if value[i] == "%":
                assert value[i + 1 : i + 3].upper() == value[i + 1 : i + 3]
                byte = int(value[i + 1 : i + 3], 16)
                assert not (chr(byte).isascii() and (chr(byte).isalnum() or chr(byte) in "-._~"))
                decoded.append(byte)
                i += 3
            else:
                assert value[i].isascii() and (value[i].isalnum() or value[i] in "-._~")
                decoded.append(ord(value[i]))
                i += 1
        assert bytes(decoded) == chunk


def test_build_url_keeps_existing_query_and_drops_fragment() -> None:
    url = build_http_announce_url("https://t.example/announce?passkey=abc#frag", make_req(event=""))
    assert url.startswith("https://t.example/announce?passkey=abc&info_hash=")
    assert "#" not in url and "event=" not in url
    url2 = build_http_announce_url("http://t.example/a?", make_req())
    assert url2.startswith("http://t.example/a?info_hash=")


def test_build_url_optional_params() -> None:
    url = build_http_announce_url("http://t/a", make_req(numwant=-1, key=0xDEADBEEF), tracker_id=b"id &1")
    q = _query(url)
    assert "numwant" not in q
    assert q["key"] == b"DEADBEEF"
    assert q["trackerid"] == b"id &1"


@pytest.mark.parametrize("base", ["udp://t:1/a", "wss://t/a", "nonsense"])
def test_build_url_rejects_non_http(base: str) -> None:
    with pytest.raises(TrackerError):
        build_http_announce_url(base, make_req())


# --- HTTP responses -----------------------------------------------------------------------------------------

PEERS4 = [("1.2.3.4", 6881), ("10.0.0.1", 1), ("255.255.255.255", 65535)]
PEERS6 = [("2001:db8::1", 51413), ("::1", 80)]


def test_compact_response() -> None:
    body = benc(
        {
            "interval": 900,
            "min interval": 120,
            "complete": 5,
            "incomplete": 7,
            "peers": compact4(PEERS4),
            "peers6": compact6(PEERS6),
            "tracker id": b"tid",
            "warning message": "be nice",
        }
    )
    resp = parse_http_announce_response(body)
    assert resp == AnnounceResponse(
        interval=900,
        min_interval=120,
        peers=tuple(PEERS4 + PEERS6),
        complete=5,
        incomplete=7,
        warning="be nice",
        tracker_id=b"tid",
    )


def test_non_compact_response() -> None:
    peers = [
        {"ip": "1.2.3.4", "port": 6881, "peer id": b"x" * 20},
        {"ip": "2001:db8::2", "port": 7000},
        {"ip": "::ffff:5.6.7.8", "port": 9},
        {"ip": "peer.example.com", "port": 6881},  # DNS names are not resolved: skipped
        {"ip": "9.9.9.9", "port": 0},  # port 0: dropped
    ]
    resp = parse_http_announce_response(benc({"interval": 1800, "peers": peers}))
    assert resp.peers == (("1.2.3.4", 6881), ("2001:db8::2", 7000), ("5.6.7.8", 9))
    assert resp.min_interval is None and resp.complete is None and resp.warning is None


def test_port_zero_dropped_and_duplicates_removed() -> None:
    peers = compact4([("1.1.1.1", 0), ("2.2.2.2", 5), ("2.2.2.2", 5), ("2.2.2.2", 6)])
    resp = parse_http_announce_response(benc({"interval": 60, "peers": peers}))
    assert resp.peers == (("2.2.2.2", 5), ("2.2.2.2", 6))


def test_ipv4_mapped_peers6_become_ipv4() -> None:
    resp = parse_http_announce_response(benc({"peers6": compact6([("::ffff:1.2.3.4", 80)])}))
    assert resp.peers == (("1.2.3.4", 80),)


@pytest.mark.parametrize(
    "raw, expected",
    [
        (None, DEFAULT_ANNOUNCE_INTERVAL),
        (0, MIN_ANNOUNCE_INTERVAL),
        (-5, 60),
        (10**9, MAX_ANNOUNCE_INTERVAL),
        ("x", 1800),
    ],
)
def test_interval_clamped(raw: Any, expected: int) -> None:
    d: dict[str, Any] = {"peers": b""}
    if raw is not None:
        d["interval"] = raw
    assert parse_http_announce_response(benc(d)).interval == expected


def test_min_interval_clamped_to_interval() -> None:
    resp = parse_http_announce_response(benc({"interval": 100, "min interval": 5000, "peers": b""}))
    assert resp.min_interval == 100
    resp = parse_http_announce_response(benc({"interval": 100, "min interval": -3, "peers": b""}))
    assert resp.min_interval == 0


def test_failure_reason() -> None:
    with pytest.raises(TrackerError, match="unregistered torrent"):
        parse_http_announce_response(benc({"failure reason": "unregistered torrent", "interval": 5}))


def test_failure_reason_is_truncated_and_sanitized() -> None:
    with pytest.raises(TrackerError) as info:
        parse_http_announce_response(benc({"failure reason": "a\nb" + "x" * 10_000}))
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < MAX_MESSAGE_CHARS + 100


def test_peer_cap() -> None:
    many = [(str(ipaddress.IPv4Address(i + 1)), 1000) for i in range(MAX_PEERS_PER_RESPONSE + 50)]
    resp = parse_http_announce_response(benc({"peers": compact4(many), "peers6": compact6([("::2", 1)])}))
    assert len(resp.peers) == MAX_PEERS_PER_RESPONSE
    assert resp.peers[0] == many[0]


def test_missing_peers_is_empty() -> None:
    assert parse_http_announce_response(benc({"interval": 1800})).peers == ()


def test_informational_fields_of_wrong_type_are_ignored() -> None:
    body = benc(
        {"peers": b"", "complete": "many", "incomplete": -1, "warning message": 3, "tracker id": b"x" * 1000}
    )
    resp = parse_http_announce_response(body)
    assert resp.complete is None and resp.incomplete is None and resp.warning is None
    assert resp.tracker_id is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not bencode",
        b"<html>502 Bad Gateway</html>",
        benc([1, 2]),
        benc(b"peers"),
        benc({"peers": b"\x01\x02\x03\x04\x05"}),  # not a multiple of 6
        benc({"peers": compact4(PEERS4) + b"\x00"}),
        benc({"peers6": b"\x00" * 17}),
        benc({"peers": 5}),
        benc({"peers6": [1]}),
        benc({"peers": [1]}),
        benc({"peers": [{"ip": "1.2.3.4"}]}),
        benc({"peers": [{"ip": "1.2.3.4", "port": 70000}]}),
        benc({"peers": [{"ip": 4, "port": 1}]}),
        benc({"interval": 1}) + b"garbage",
        b"d8:intervali01ee",  # non-canonical integer
        b"d" * 100 + b"e" * 100,  # deep nesting + non-string keys
    ],
)
def test_bad_http_bodies(body: bytes) -> None:
    with pytest.raises(TrackerError):
        parse_http_announce_response(body)


def test_oversize_body() -> None:
    body = benc({"peers": b"\0" * (MAX_HTTP_BODY - 6 - (MAX_HTTP_BODY % 6))})
    assert len(body) > MAX_HTTP_BODY
    with pytest.raises(TrackerError):
        parse_http_announce_response(body)


def test_trailing_whitespace_is_tolerated() -> None:
    assert parse_http_announce_response(benc({"interval": 60}) + b"\r\n").interval == 60


def test_whole_input_then_every_prefix() -> None:
    body = benc({"interval": 900, "peers": compact4(PEERS4), "peers6": compact6(PEERS6), "complete": 1})
    assert len(parse_http_announce_response(body).peers) == 5
    for n in range(len(body)):
        with pytest.raises(TrackerError):
            parse_http_announce_response(body[:n])


# --- UDP ----------------------------------------------------------------------------------------------------


def test_udp_connect_roundtrip() -> None:
    req = udp_connect_request(0xCAFEBABE)
    assert req == bytes.fromhex("0000041727101980") + struct.pack(">II", 0, 0xCAFEBABE)
    answer = struct.pack(">IIQ", 0, 0xCAFEBABE, 0x0123456789ABCDEF)
    assert udp_response_transaction_id(answer) == 0xCAFEBABE
    assert parse_udp_connect_response(answer, 0xCAFEBABE) == 0x0123456789ABCDEF
    # longer datagrams are fine (BEP 15: check it is *at least* 16 bytes)
    assert parse_udp_connect_response(answer + b"xx", 0xCAFEBABE) == 0x0123456789ABCDEF


@pytest.mark.parametrize(
    "data, match",
    [
        (struct.pack(">IIQ", 0, 2, 7), "transaction"),
        (struct.pack(">II", 3, 1) + b"go away", "go away"),
        (struct.pack(">IIQ", 1, 1, 7), "action"),
        (struct.pack(">II", 0, 1) + b"\0" * 7, "short"),
        (b"\0\0\0", "short"),
        (b"\0" * 70000, "datagram"),
    ],
)
def test_udp_connect_errors(data: bytes, match: str) -> None:
    with pytest.raises(TrackerError, match=match):
        parse_udp_connect_response(data, 1)


@pytest.mark.parametrize("event, code", [("", 0), ("completed", 1), ("started", 2), ("stopped", 3)])
def test_udp_announce_request_layout(event: str, code: int) -> None:
    req = make_req(event=event, uploaded=2**64 - 1, downloaded=5, left=2**40, numwant=-1, key=0xABCDEF01)
    data = udp_announce_request(0x1122334455667788, 42, req)
    assert len(data) == 98
    fields = struct.unpack(">QII20s20sQQQIIIiH", data)
    assert fields == (
        0x1122334455667788,
        1,
        42,
        INFO_HASH,
        PEER_ID,
        5,
        2**40,
        2**64 - 1,
        code,
        0,
        0xABCDEF01,
        -1,
        6881,
    )


@pytest.mark.parametrize("cid, tid", [(-1, 1), (2**64, 1), (1, -1), (1, 2**32)])
def test_udp_request_ranges(cid: int, tid: int) -> None:
    with pytest.raises(TrackerError):
        udp_announce_request(cid, tid, make_req())


def test_udp_announce_response_ipv4_and_ipv6() -> None:
    data = udp_announce_answer(9, 1200, 3, 4, compact4(PEERS4))
    resp = parse_udp_announce_response(data, 9)
    assert resp == AnnounceResponse(1200, None, tuple(PEERS4), 4, 3, None, None)
    data6 = udp_announce_answer(9, 1, 0, 0, compact6(PEERS6))
    resp6 = parse_udp_announce_response(data6, 9, ipv6=True)
    assert resp6.peers == tuple(PEERS6) and resp6.interval == MIN_ANNOUNCE_INTERVAL
    with pytest.raises(TrackerError):
        parse_udp_announce_response(data6 + b"\0" * 4, 9, ipv6=True)


@pytest.mark.parametrize(
    "data, match",
    [
        (udp_announce_answer(8, 60, 0, 0, b""), "transaction"),
        (struct.pack(">II", 3, 9) + b"bad connection id", "bad connection id"),
        (struct.pack(">IIQ", 0, 9, 1) + b"\0" * 4, "action"),
        (udp_announce_answer(9, 60, 0, 0, b"\1" * 7), "multiple of 6"),
        (udp_announce_answer(9, 60, 0, 0, b"")[:19], "short"),
    ],
)
def test_udp_announce_errors(data: bytes, match: str) -> None:
    with pytest.raises(TrackerError, match=match):
        parse_udp_announce_response(data, 9)


def test_udp_every_prefix() -> None:
    data = udp_announce_answer(9, 60, 1, 2, compact4(PEERS4))
    for n in range(len(data)):
        if n >= 20 and (n - 20) % 6 == 0:
            assert len(parse_udp_announce_response(data[:n], 9).peers) == (n - 20) // 6
        else:
            with pytest.raises(TrackerError):
                parse_udp_announce_response(data[:n], 9)


# --- properties ---------------------------------------------------------------------------------------------


@settings(max_examples=250, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_tracker_error(data: bytes) -> None:
    for parse in (
        parse_http_announce_response,
        lambda d: parse_udp_connect_response(d, 0),
        lambda d: parse_udp_announce_response(d, 0),
        lambda d: parse_udp_announce_response(d, 0, ipv6=True),
    ):
        try:
            parse(data)
        except TrackerError:
            pass
    udp_response_transaction_id(data)


_values = st.recursive(
    st.integers(min_value=-(2**70), max_value=2**70) | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from([b"ip", b"port", b"peer id", b"x"]), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=250, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                b"peers",
                b"peers6",
                b"interval",
                b"min interval",
                b"complete",
                b"incomplete",
                b"failure reason",
                b"warning message",
                b"tracker id",
            ]
        ),
        _values,
        max_size=6,
    )
)
def test_structured_garbage_only_raises_tracker_error(d: dict[bytes, Any]) -> None:
    try:
        resp = parse_http_announce_response(benc(d))
    except TrackerError:
        return
    assert MIN_ANNOUNCE_INTERVAL <= resp.interval <= MAX_ANNOUNCE_INTERVAL
    assert all(0 < port < 65536 for _, port in resp.peers)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_urls_only_raise_tracker_error(url: str) -> None:
    try:
        parsed = parse_tracker_url(url)
    except TrackerError:
        return
    assert 0 < parsed.port < 65536


_peer4 = st.tuples(
    st.integers(0, 2**32 - 1).map(lambda i: str(ipaddress.IPv4Address(i))), st.integers(1, 65535)
)
_peer6 = st.tuples(
    st.binary(min_size=16, max_size=16)
    .map(ipaddress.IPv6Address)
    .filter(lambda a: a.ipv4_mapped is None)
    .map(str),
    st.integers(0, 65535),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(_peer4, max_size=30),
    st.lists(_peer6, max_size=30),
    st.integers(0, 2**32 - 1),
    st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_http_roundtrip(
    peers4: list[tuple[str, int]], peers6: list[tuple[str, int]], interval: int, mi: Any
) -> None:
    d: dict[str, Any] = {"interval": interval, "peers": compact4(peers4), "peers6": compact6(peers6)}
    if mi is not None:
        d["min interval"] = mi
    resp = parse_http_announce_response(benc(d))
    expected = list(dict.fromkeys(p for p in peers4 + peers6 if p[1] != 0))
    assert list(resp.peers) == expected
    assert resp.interval == min(max(interval, MIN_ANNOUNCE_INTERVAL), MAX_ANNOUNCE_INTERVAL)
    assert resp.min_interval == (None if mi is None else min(mi, resp.interval))


@settings(max_examples=200, deadline=None)
@given(st.lists(_peer4, max_size=40), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_udp_roundtrip(peers: list[tuple[str, int]], tid: int, seeders: int) -> None:
    resp = parse_udp_announce_response(udp_announce_answer(tid, 1800, 7, seeders, compact4(peers)), tid)
    assert list(resp.peers) == list(dict.fromkeys(peers))
    assert resp.complete == seeders and resp.incomplete == 7


@settings(deadline=None)
@given(
    st.builds(
        make_req,
        event=st.sampled_from(["", "started", "completed", "stopped"]),
        uploaded=st.integers(0, 2**64 - 1),
        left=st.integers(0, 2**64 - 1),
        numwant=st.integers(-(2**31), 2**31 - 1),
        key=st.integers(0, 2**32 - 1),
        info_hash=st.binary(min_size=20, max_size=20),
    )
)
def test_http_url_roundtrip(req: AnnounceRequest) -> None:
    q = _query(build_http_announce_url("http://t.example:8080/announce?pk=1", req))
    assert q["pk"] == b"1"
    assert q["info_hash"] == req.info_hash
    assert int(q["uploaded"]) == req.uploaded and int(q["left"]) == req.left
    assert q.get("event", b"") == req.event.encode()
