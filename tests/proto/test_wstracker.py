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


def test_counters_fast_path_and_conversions():
    base = {"action": "announce", "info_hash": "x" * 20, "peer_id": "p" * 20}
    msg = parse_client_message(json.dumps(base))
    assert (msg.numwant, msg.uploaded, msg.downloaded, msg.left, msg.event) == (50, 0, 0, None, None)
    msg = parse_client_message(json.dumps({**base, "numwant": None, "uploaded": 3.0, "downloaded": 2**53, "left": 0,
                                           "event": "update"}))
    assert (msg.numwant, msg.uploaded, msg.downloaded, msg.left, msg.event) == (50, 3, 2**53, 0, None)
    for key, value in [("numwant", True), ("numwant", 1001), ("numwant", -1), ("uploaded", 2**53 + 1),
                       ("downloaded", False), ("left", 1.5), ("left", "7")]:
        with pytest.raises(TrackerError, match=f"^{key}: expected an integer"):
            parse_client_message(json.dumps({**base, key: value}))


def test_offer_errors_name_the_offer():
    base = {"action": "announce", "info_hash": "x" * 20, "peer_id": "p" * 20}
    good = {"offer_id": "o" * 20, "offer": {"type": "offer", "sdp": "v=0"}}
    cases = [
        ("nope", r"offers\[1\]: expected an object"),
        ({"offer": good["offer"]}, r"offers\[1\]\.offer_id: expected a 20-character string"),
        ({**good, "offer_id": "\u0100" * 20}, r"offers\[1\]\.offer_id: characters above U\+00FF"),
        ({**good, "offer": "sdp"}, r"offers\[1\]\.offer: expected"),
        ({**good, "offer": {"sdp": "v=0"}}, r"offers\[1\]\.offer: expected"),
        ({**good, "offer": {"type": "answer", "sdp": "v=0"}}, r"offers\[1\]\.offer: expected"),
        ({**good, "offer": {"type": "offer", "sdp": "v" * 20000}}, r"offers\[1\]\.offer\.sdp: longer than"),
    ]
    for bad, error in cases:
        with pytest.raises(TrackerError, match=error):
            parse_client_message(json.dumps({**base, "offers": [good, bad]}))
    # A non-ASCII (Latin-1) offer_id takes the careful path and decodes the same way.
    latin = {**good, "offer_id": "\u00e9" * 20}
    msg = parse_client_message(json.dumps({**base, "offers": [good, latin]}, ensure_ascii=False).encode())
    assert msg.offers == (Offer(b"o" * 20, "v=0"), Offer(b"\xe9" * 20, "v=0"))


def test_deeply_nested_values_in_errors_stay_short():
    # A value nested deeper than the recursion limit (as a parser with its own limit can return): showing it
    # in the error must not recurse through it.
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(TrackerError, match=r"^unknown action '\[\[\[") as exc:
        parse_client_message("{}", lambda _data: {"action": nested})
    assert len(str(exc.value)) < 80
    with pytest.raises(TrackerError, match="event: unknown value '.{40}'$"):
        parse_client_message(json.dumps({"action": "announce", "info_hash": "x" * 20, "peer_id": "p" * 20,
                                         "event": "e" * 100}))


def test_messages_equal_only_their_own_type():
    a, b, c = b"a" * 20, b"b" * 20, b"c" * 20
    forwarded, relayed = ForwardedOffer(a, b, c, "s"), RelayedAnswer(a, b, c, "s")
    assert forwarded == ForwardedOffer(a, b, c, "s") and hash(forwarded) == hash(ForwardedOffer(a, b, c, "s"))
    assert forwarded != relayed and not forwarded == relayed  # noqa: SIM201
    assert Offer(a, "s") != (a, "s") and (a, "s") != Offer(a, "s")
    assert {AnnounceReply(a, 120, None, 1, 2): "cached"}[AnnounceReply(a, 120, None, 1, 2)] == "cached"
    with pytest.raises(AttributeError):
        forwarded.sdp = "changed"  # type: ignore[misc]
    assert Announce(a, b)._replace(numwant=3) == Announce(a, b, numwant=3)
