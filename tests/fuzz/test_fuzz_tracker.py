"""Fuzz tracker parsing on both sides: the client's HTTP/UDP response parsers (bridge/proto/tracker.py) and
the embedded tracker's request parsers (bridge/tracker/codec.py). Only TrackerError may escape."""

from __future__ import annotations

import os
import struct
from urllib.parse import quote_from_bytes

from fuzz_support import DEADLINE, SUPPRESS, check, mutated, mutated_text
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import TrackerError
from bridge.proto import bencode
from bridge.proto.tracker import (
    parse_http_announce_response,
    parse_tracker_url,
    parse_udp_announce_response,
    parse_udp_connect_response,
    udp_response_transaction_id,
)
from bridge.tracker.codec import parse_http_announce, parse_http_scrape, parse_udp_request

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=DEADLINE, suppress_health_check=SUPPRESS)
ERR = (TrackerError,)
TID = 0x01020304

#: Any code point, lone surrogates included (a raw non-UTF-8 byte in a request target can reach a parser
#: as a surrogate escape).
any_text = st.text(st.characters(blacklist_categories=()), max_size=300)
#: Query-like text with lone surrogates mixed in (found by this harness: see corpus/tracker-http-*).
surrogate_queries = st.text(st.sampled_from("info_hash=peer_id=port=&%ff0\udc80\udcff\ud800"), max_size=60)


# ------------------------------------------------------------------------------------ client side

ips = st.sampled_from([b"1.2.3.4", b"::1", b"fe80::1%eth0", b"host.example", b"::ffff:1.2.3.4", b"\xff"])
announce_bodies = st.fixed_dictionaries(
    {},
    optional={
        b"interval": st.integers(-10, 10**6), b"min interval": st.integers(-10, 10**6),
        b"peers": st.binary(max_size=60) | st.lists(st.fixed_dictionaries(
            {b"ip": ips, b"port": st.integers(-1, 70000)}, optional={b"peer id": st.binary(max_size=20)}), max_size=4),
        b"peers6": st.binary(max_size=72), b"complete": st.integers(-1, 100), b"incomplete": st.integers(-1, 100),
        b"warning message": st.binary(max_size=40), b"failure reason": st.binary(max_size=40),
        b"tracker id": st.binary(max_size=20),
    },
).map(bencode.encode)

udp_responses = st.one_of(
    st.builds(lambda cid: struct.pack(">IIQ", 0, TID, cid), st.integers(0, 2**64 - 1)),
    st.builds(lambda i, leech, seed, peers: struct.pack(">IIIII", 1, TID, i, leech, seed) + peers,
              st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
              st.binary(max_size=72)),
    st.builds(lambda msg: struct.pack(">II", 3, TID) + msg, st.binary(max_size=40)),
)


def _client(data: bytes, ipv6: bool = False) -> None:
    check(parse_http_announce_response, data, allowed=ERR)
    check(udp_response_transaction_id, data, allowed=())
    check(parse_udp_connect_response, data, TID, allowed=ERR)
    check(parse_udp_announce_response, data, TID, ipv6=ipv6, allowed=ERR)


@FUZZ
@given(st.binary(max_size=2048), st.booleans())
def test_fuzz_tracker_client_bytes(data: bytes, ipv6: bool) -> None:
    _client(data, ipv6)


@FUZZ
@given(st.one_of(mutated(announce_bodies), mutated(udp_responses)), st.booleans())
def test_fuzz_tracker_client_mutated(data: bytes, ipv6: bool) -> None:
    _client(data, ipv6)


@FUZZ
@given(st.one_of(any_text, mutated_text(st.sampled_from(
    ["http://t.example/announce", "udp://1.2.3.4:6969/x", "wss://[::1]:8000", "https://h:443/a?b=c"]))))
def test_fuzz_tracker_url(url: str) -> None:
    check(parse_tracker_url, url, allowed=ERR)


# ------------------------------------------------------------------------------------ server side

def _q(params: list[tuple[str, bytes]]) -> str:
    return "&".join(f"{k}={quote_from_bytes(v, safe='')}" for k, v in params)


id20 = st.binary(min_size=20, max_size=20)
num = st.integers(-(2**65), 2**65).map(lambda n: str(n).encode())
announce_queries = st.builds(
    lambda ih, pid, port, extra: _q([("info_hash", ih), ("peer_id", pid), ("port", port), *extra]),
    id20, id20, st.integers(0, 70000).map(lambda n: str(n).encode()),
    st.lists(st.tuples(st.sampled_from(["uploaded", "downloaded", "left", "numwant", "event", "compact",
                                        "no_peer_id", "key", "ip"]),
                       num | st.sampled_from([b"started", b"stopped", b"completed", b"paused", b"", b"1"])),
             max_size=6),
)
scrape_queries = st.lists(id20, min_size=1, max_size=70).map(lambda hs: _q([("info_hash", h) for h in hs]))
udp_requests = st.one_of(
    st.builds(lambda tid: struct.pack(">QII", 0x41727101980, 0, tid), st.integers(0, 2**32 - 1)),
    st.builds(lambda cid, tid, ih, pid, nums, ev, key, want, port: struct.pack(
        ">QII20s20sQQQIIIiH", cid, 1, tid, ih, pid, *nums, ev, 0, key, want, port),
        st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), id20, id20,
        st.tuples(*[st.integers(0, 2**64 - 1)] * 3), st.integers(0, 4), st.integers(0, 2**32 - 1),
        st.integers(-(2**31), 2**31 - 1), st.integers(0, 65535)),
    st.builds(lambda cid, tid, hs: struct.pack(">QII", cid, 2, tid) + b"".join(hs), st.integers(0, 2**64 - 1),
              st.integers(0, 2**32 - 1), st.lists(id20, max_size=80)),
)


@FUZZ
@given(st.one_of(any_text, surrogate_queries, mutated_text(announce_queries), mutated_text(scrape_queries)))
def test_fuzz_tracker_server_http(query: str) -> None:
    # A lone surrogate in the raw query (what aiohttp's pure-Python HTTP parser makes of a non-UTF-8 byte)
    # once raised UnicodeEncodeError (corpus/tracker-http-surrogate.txt); now a TrackerError.
    check(parse_http_announce, query, allowed=ERR)
    check(parse_http_scrape, query, allowed=ERR)


@FUZZ
@given(st.one_of(st.binary(max_size=2048), mutated(udp_requests)))
def test_fuzz_tracker_server_udp(data: bytes) -> None:
    check(parse_udp_request, data, allowed=ERR)
