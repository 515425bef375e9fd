"""The WebSocket tracker JSON codec: round trips, both id encodings, and hostile input."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import TrackerError
from bridge.proto.wstracker import (
    MAX_MESSAGE_SIZE,
    MAX_OFFERS,
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

ids = st.binary(min_size=20, max_size=20)
sdp = st.text(max_size=200)


@settings(max_examples=200, deadline=None)
@given(ids, ids, st.one_of(st.none(), st.integers(0, 2**40)), st.sampled_from([None, "started", "completed", "stopped"]),
       st.lists(st.tuples(ids, sdp), max_size=MAX_OFFERS))
def test_announce_round_trip(info_hash, peer_id, left, event, offers):
    msg = Announce(info_hash, peer_id, 5, 1, 2, left, event, tuple(Offer(o, s) for o, s in offers))
    assert parse_client_message(encode_client_message(msg)) == msg


@settings(max_examples=100, deadline=None)
@given(ids, ids, ids, ids, sdp)
def test_answer_and_tracker_messages_round_trip(a, b, c, d, s):
    for msg in (Answer(a, b, c, d, s), Scrape((a, b))):
        assert parse_client_message(encode_client_message(msg)) == msg
    for tmsg in (ForwardedOffer(a, b, c, s), RelayedAnswer(a, b, c, s), AnnounceReply(a, 120, 30, 1, 2, "w"),
                 ScrapeReply(((a, 1, 2, 3),)), Failure("nope", a)):
        assert parse_tracker_message(encode_tracker_message(tmsg)) == tmsg


def test_browser_utf8_and_libtorrent_escapes_decode_the_same():
    raw = bytes(range(236, 256))
    as_text = raw.decode("latin-1")
    browser = json.dumps({"action": "announce", "info_hash": as_text, "peer_id": "-WW0208-abcdefghijkl"},
                         ensure_ascii=False).encode("utf-8")
    escaped = json.dumps({"action": "announce", "info_hash": as_text, "peer_id": "-WW0208-abcdefghijkl"})
    assert "\\u00ff" in escaped
    assert parse_client_message(browser).info_hash == parse_client_message(escaped).info_hash == raw


@pytest.mark.parametrize(
    "obj",
    [
        [],
        {"action": "dance"},
        {"action": "announce", "info_hash": "short", "peer_id": "x" * 20},
        {"action": "announce", "info_hash": "x" * 20, "peer_id": "\u0100" * 20},
        {"action": "announce", "info_hash": "x" * 20, "peer_id": "x" * 20, "numwant": "many"},
        {"action": "announce", "info_hash": "x" * 20, "peer_id": "x" * 20, "uploaded": -1},
        {"action": "announce", "info_hash": "x" * 20, "peer_id": "x" * 20, "event": "exploded"},
        {"action": "announce", "info_hash": "x" * 20, "peer_id": "x" * 20, "offers": "lots"},
        {"action": "announce", "info_hash": "x" * 20, "peer_id": "x" * 20, "offers": [{"offer_id": "x" * 20}]},
        {"action": "announce", "info_hash": "x" * 20, "peer_id": "x" * 20,
         "offers": [{"offer_id": "x" * 20, "offer": {"type": "offer", "sdp": "v" * 20000}}]},
        {"action": "announce", "info_hash": "x" * 20, "peer_id": "x" * 20, "to_peer_id": "y" * 20,
         "offer_id": "z" * 20, "answer": {"type": "offer", "sdp": ""}},
        {"action": "scrape", "info_hash": ["x" * 20] * 1000},
    ],
)
def test_bad_client_messages(obj):
    with pytest.raises(TrackerError):
        parse_client_message(json.dumps(obj))


def test_offers_are_capped_and_huge_messages_refused():
    offer = {"offer_id": "o" * 20, "offer": {"type": "offer", "sdp": "v=0"}}
    msg = parse_client_message(json.dumps({"action": "announce", "info_hash": "x" * 20, "peer_id": "p" * 20,
                                           "offers": [offer] * 30}))
    assert len(msg.offers) == MAX_OFFERS
    with pytest.raises(TrackerError):
        parse_client_message(" " * (MAX_MESSAGE_SIZE + 1))
    with pytest.raises(TrackerError):
        parse_client_message("[" * 100_000)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_garbage_raises_only_tracker_errors(data):
    for parse in (parse_client_message, parse_tracker_message):
        try:
            parse(data)
        except TrackerError:
            pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=25),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["action", "info_hash", "peer_id", "to_peer_id", "offer_id", "offer",
                                        "answer", "offers", "numwant", "left", "event", "files", "interval",
                                        "failure reason"]), json_values, max_size=8),
       st.sampled_from(["announce", "scrape"]))
def test_structured_garbage_raises_only_tracker_errors(obj, action):
    obj = {**obj, "action": obj.get("action", action)}
    for parse in (parse_client_message, parse_tracker_message):
        try:
            parse(json.dumps(obj))
        except TrackerError:
            pass
