"""Fuzz the WebSocket tracker messages (bridge/proto/wstracker.py) as server (parse_client_message, with
json.loads and with orjson.loads, as the embedded tracker uses it) and as client (parse_tracker_message).
Only TrackerError may escape."""

from __future__ import annotations

import json
import os

import orjson
from fuzz_support import DEADLINE, SUPPRESS, check, mutated
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import TrackerError
from bridge.proto.wstracker import (
    Announce,
    AnnounceReply,
    Answer,
    Failure,
    ForwardedOffer,
    Offer,
    RelayedAnswer,
    Scrape,
    ScrapeReply,
    encode_client_message,
    encode_tracker_message,
    parse_client_message,
    parse_tracker_message,
)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=DEADLINE, suppress_health_check=SUPPRESS)
ERR = (TrackerError,)

id20 = st.binary(min_size=20, max_size=20)
sdp = st.text(max_size=60)
counter = st.integers(0, 2**53)
client_msgs = st.one_of(
    st.builds(Announce, id20, id20, st.integers(0, 1000), counter, counter, st.none() | counter,
              st.sampled_from([None, "started", "completed", "stopped"]),
              st.lists(st.builds(Offer, id20, sdp), max_size=3).map(tuple)),
    st.builds(Answer, id20, id20, id20, id20, sdp),
    st.builds(Scrape, st.lists(id20, max_size=3).map(tuple)),
).map(encode_client_message)
tracker_msgs = st.one_of(
    st.builds(AnnounceReply, id20, st.none() | counter, st.none() | counter, st.none() | counter,
              st.none() | counter, st.none() | st.text(max_size=20)),
    st.builds(ForwardedOffer, id20, id20, id20, sdp), st.builds(RelayedAnswer, id20, id20, id20, sdp),
    st.builds(ScrapeReply, st.lists(st.tuples(id20, counter, counter, counter), max_size=3).map(tuple)),
    st.builds(Failure, st.text(max_size=20), st.none() | id20),
).map(encode_tracker_message)

# JSON objects built from the protocol's own vocabulary, with values of every JSON type.
KEYS = ["action", "info_hash", "peer_id", "to_peer_id", "offer_id", "offers", "offer", "answer", "type", "sdp",
        "numwant", "uploaded", "downloaded", "left", "event", "files", "complete", "incomplete", "interval",
        "min interval", "failure reason", "warning message"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(allow_nan=False),
                    st.text(max_size=25), st.sampled_from(["announce", "scrape", "offer", "answer", "started",
                                                           "update", "x" * 20, "\u00ff" * 20, "\u0100" * 20]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=6),
                           max_leaves=25)
json_objects = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=8).map(
    lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8", "surrogatepass"))
nasty = st.one_of(st.integers(1, 100_000).map(lambda n: b"[" * n + b"]" * n),
                  st.integers(1, 30_000).map(lambda n: b'{"action":' + b"[" * n + b"]" * n + b"}"),
                  st.integers(1, 70_000).map(lambda n: b'{"numwant":' + b"9" * n + b"}"),
                  st.integers(60_000, 70_000).map(lambda n: b'"' + b"a" * n + b'"'))


def _parse_all(data: bytes) -> None:
    check(parse_client_message, data, allowed=ERR)
    check(parse_client_message, data, orjson.loads, allowed=ERR)
    check(parse_tracker_message, data, allowed=ERR)
    text = data.decode("utf-8", "replace")  # WebSocket text frames arrive as str
    check(parse_client_message, text, allowed=ERR)
    check(parse_client_message, text, orjson.loads, allowed=ERR)
    check(parse_tracker_message, text, allowed=ERR)


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_wstracker_bytes(data: bytes) -> None:
    _parse_all(data)


@FUZZ
@given(st.one_of(mutated(client_msgs.map(str.encode)), mutated(tracker_msgs.map(str.encode)), json_objects,
                 mutated(json_objects), mutated(nasty, max_ops=2)))
def test_fuzz_wstracker_mutated(data: bytes) -> None:
    _parse_all(data)


@FUZZ
@given(client_msgs)
def test_fuzz_wstracker_roundtrip(text: str) -> None:
    a = check(parse_client_message, text, allowed=())
    b = check(parse_client_message, text.encode(), orjson.loads, allowed=())
    assert a == b
