"""WebSocket tracker messages (WebTorrent signalling, the bittorrent-tracker protocol). Sans-IO JSON codec.

20-byte values (info_hash, peer_id, to_peer_id, offer_id) travel as 20-character "binary strings", one
character per byte (U+0000-U+00FF). Both raw UTF-8 (browsers) and ``\\u00XX`` escapes (libtorrent) decode
to the same bytes, because JSON parsing happens before the latin-1 mapping.

Everything here is untrusted input: each parser returns a frozen message or raises TrackerError.
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from ..errors import TrackerError

#: Largest WebSocket message accepted, either direction. aquatic uses 64 KiB; ten offers of ~2 KB SDP
#: each fit many times over.
MAX_MESSAGE_SIZE = 64 * 1024
#: Offers taken from one announce. WebTorrent sends at most 5 and libtorrent 10.
MAX_OFFERS = 10
#: Longest SDP accepted in an offer or answer. Real ones are 0.5-3 KB.
MAX_SDP_LENGTH = 16 * 1024
#: Info-hashes in one scrape request.
MAX_SCRAPE_HASHES = 64
#: Largest counter accepted (uploaded/downloaded/left/numwant): 2**53 keeps JSON numbers exact.
MAX_COUNTER = 2**53
EVENTS = ("started", "completed", "stopped", "update")


def id_to_str(raw: bytes) -> str:
    """20 bytes -> the 20-character binary string used in JSON."""
    return raw.decode("latin-1")


def str_to_id(value: Any, field: str) -> bytes:
    if not isinstance(value, str) or len(value) != 20:
        raise TrackerError(f"{field}: expected a 20-character string")
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise TrackerError(f"{field}: characters above U+00FF") from None


# The messages are NamedTuples rather than frozen dataclasses: the tracker builds them on its hot path (an
# Announce and up to ten Offers per announce parsed, a ForwardedOffer per offer forwarded). A frozen
# dataclass's __init__ sets each field through object.__setattr__; a NamedTuple is built in half that time,
# and in a quarter through tuple.__new__ (``_build`` below). They stay immutable and hashable; ``_message``
# keeps equality as strict as a dataclass's (only between messages of the same type). Use ``_replace`` for
# a modified copy.


def _same_type_eq(self: tuple[Any, ...], other: object) -> bool:
    return other.__class__ is self.__class__ and tuple.__eq__(self, other)


def _same_type_ne(self: tuple[Any, ...], other: object) -> bool:
    return not _same_type_eq(self, other)


_M = TypeVar("_M", bound=tuple[Any, ...])


def _message(cls: type[_M]) -> type[_M]:
    """A NamedTuple on its own equals any tuple with the same items (``ForwardedOffer(a, b, c, s) ==
    RelayedAnswer(a, b, c, s)``, ``Offer(i, s) == (i, s)``): make ``cls`` equal only to its own kind. The hash
    stays the tuple's (equal messages still hash alike)."""
    setattr(cls, "__eq__", _same_type_eq)  # noqa: B010 (setattr: mypy refuses assigning to a method)
    setattr(cls, "__ne__", _same_type_ne)  # noqa: B010
    return cls


@_message
class Offer(NamedTuple):
    """One WebRTC offer inside an announce."""

    offer_id: bytes
    sdp: str


@_message
class Announce(NamedTuple):
    """Client -> tracker: join or update a swarm, optionally with offers for other peers."""

    info_hash: bytes
    peer_id: bytes
    numwant: int = 50
    uploaded: int = 0
    downloaded: int = 0
    #: None for a magnet whose size is unknown yet
    left: int | None = None
    #: "started", "completed", "stopped" or None for a regular update
    event: str | None = None
    offers: tuple[Offer, ...] = ()


@_message
class Answer(NamedTuple):
    """Client -> tracker: the answer to a forwarded offer, for the offering peer."""

    info_hash: bytes
    peer_id: bytes
    to_peer_id: bytes
    offer_id: bytes
    sdp: str


@_message
class Scrape(NamedTuple):
    """Client -> tracker: swarm statistics request."""

    info_hashes: tuple[bytes, ...]


@_message
class AnnounceReply(NamedTuple):
    """Tracker -> client: the answer to an announce (never a peer list)."""

    info_hash: bytes
    interval: int | None = None
    min_interval: int | None = None
    complete: int | None = None
    incomplete: int | None = None
    warning: str | None = None


@_message
class ForwardedOffer(NamedTuple):
    """Tracker -> client: another peer's offer; answer it with ``Answer``."""

    info_hash: bytes
    #: the offering peer
    peer_id: bytes
    offer_id: bytes
    sdp: str


@_message
class RelayedAnswer(NamedTuple):
    """Tracker -> client: the answer to one of our offers."""

    info_hash: bytes
    #: the answering peer
    peer_id: bytes
    offer_id: bytes
    sdp: str


@_message
class ScrapeReply(NamedTuple):
    """Tracker -> client: (complete, incomplete, downloaded) per info-hash."""

    files: tuple[tuple[bytes, int, int, int], ...]


@_message
class Failure(NamedTuple):
    """Tracker -> client: an error for one request (``failure reason``)."""

    reason: str
    info_hash: bytes | None = None


ClientMessage = Announce | Answer | Scrape
TrackerMessage = AnnounceReply | ForwardedOffer | RelayedAnswer | ScrapeReply | Failure


# ------------------------------------------------------------------------------------------ helpers


#: A JSON parser: ``json.loads`` by default. The tracker server passes a faster one (orjson); it must raise
#: ValueError (or RecursionError) on bad input, as both do.
Loads = Callable[[str | bytes], Any]


def _load(data: str | bytes, loads: Loads = json.loads) -> dict[str, Any]:
    if len(data) > MAX_MESSAGE_SIZE:
        raise TrackerError(f"message of {len(data)} bytes is over the limit of {MAX_MESSAGE_SIZE}")
    try:
        obj = loads(data)
    except (ValueError, RecursionError):
        raise TrackerError("message is not valid JSON") from None
    if not isinstance(obj, dict):
        raise TrackerError("message is not a JSON object")
    return obj


def _int(obj: dict[str, Any], key: str, default: int | None = None, lo: int = 0, hi: int = MAX_COUNTER) -> int | None:
    value = obj.get(key, default)
    if type(value) is int and lo <= value <= hi:  # the common case first (``type() is int`` rules out bool)
        return value
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise TrackerError(f"{key}: expected an integer in {lo}..{hi}")
    return value


def _sdp(value: Any, kind: str, field: str) -> str:
    if not isinstance(value, dict) or value.get("type") != kind or not isinstance(value.get("sdp"), str):
        raise TrackerError(f"{field}: expected {{type: {kind!r}, sdp: string}}")
    sdp: str = value["sdp"]
    if len(sdp) > MAX_SDP_LENGTH:
        raise TrackerError(f"{field}.sdp: longer than {MAX_SDP_LENGTH} characters")
    return sdp


def _shown(value: Any) -> str:
    """An unexpected JSON value for an error message: quoted, at most 40 characters. ``reprlib`` stops at a
    few levels of nesting, where ``str`` would walk (and recurse through) all of a deeply nested list."""
    text = value if isinstance(value, str) else reprlib.repr(value)
    return repr(text[:40])


def _text(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise TrackerError(f"{key}: expected a string")
    return value[:1000]


# ------------------------------------------------------------------------------- client -> tracker


#: Builds a message from a tuple of all its fields, in field order, without defaults. A NamedTuple's own
#: ``__new__`` is a Python function that just calls this; the hot paths (here and in tracker/state.py)
#: call it directly, which halves the cost of building a message.
_build = tuple.__new__
#: What an announce without ``offers`` has (never modified).
_NO_OFFERS: list[Any] = []


def parse_client_message(data: str | bytes, loads: Loads = json.loads) -> ClientMessage:
    """Parse what a WebTorrent client sends to a tracker (the tracker server's input)."""
    obj = _load(data, loads)
    action = obj.get("action")
    if action != "announce":
        if action == "scrape":
            raw = obj.get("info_hash", [])
            hashes = raw if isinstance(raw, list) else [raw]
            if len(hashes) > MAX_SCRAPE_HASHES:
                raise TrackerError(f"scrape: more than {MAX_SCRAPE_HASHES} info-hashes")
            return Scrape(tuple(str_to_id(h, "info_hash") for h in hashes))
        raise TrackerError(f"unknown action {_shown(action)}")
    info_hash = str_to_id(obj.get("info_hash"), "info_hash")
    peer_id = str_to_id(obj.get("peer_id"), "peer_id")
    if "answer" in obj:
        return Answer(
            info_hash=info_hash,
            peer_id=peer_id,
            to_peer_id=str_to_id(obj.get("to_peer_id"), "to_peer_id"),
            offer_id=str_to_id(obj.get("offer_id"), "offer_id"),
            sdp=_sdp(obj["answer"], "answer", "answer"),
        )
    event = obj.get("event")
    if event is not None and event not in EVENTS:
        raise TrackerError(f"event: unknown value {_shown(event)}")
    offers_raw = obj.get("offers", _NO_OFFERS)
    if not isinstance(offers_raw, list):
        raise TrackerError("offers: expected a list")
    offers: list[Offer] = []
    for item in offers_raw[:MAX_OFFERS]:
        # The hot path of a busy tracker: a well-formed offer (with an ASCII offer_id, as WebTorrent and
        # libtorrent make them) is taken in a few steps. Subscripting raises for a missing key and for any JSON
        # value that is not an object, which leaves the offer to _offer: it checks it again, field by field,
        # and says what is wrong.
        try:
            offer_id = item["offer_id"]
            offer = item["offer"]
            sdp = offer["sdp"]
            if (offer["type"] == "offer" and type(sdp) is str and len(sdp) <= MAX_SDP_LENGTH
                    and type(offer_id) is str and len(offer_id) == 20 and offer_id.isascii()):
                offers.append(_build(Offer, (offer_id.encode("ascii"), sdp)))
                continue
        except (KeyError, TypeError):
            pass
        offers.append(_offer(item, len(offers)))
    numwant = _int(obj, "numwant", 50, 0, 1000) or 0
    uploaded = _int(obj, "uploaded", 0) or 0
    downloaded = _int(obj, "downloaded", 0) or 0
    left = _int(obj, "left")
    if event == "update":
        event = None
    return _build(Announce, (info_hash, peer_id, numwant, uploaded, downloaded, left, event, tuple(offers)))


def _offer(item: Any, n: int) -> Offer:
    """``offers[n]`` of an announce, checked field by field (the slow path of parse_client_message)."""
    if not isinstance(item, dict):
        raise TrackerError(f"offers[{n}]: expected an object")
    raw_id = str_to_id(item.get("offer_id"), f"offers[{n}].offer_id")
    return Offer(raw_id, _sdp(item.get("offer"), "offer", f"offers[{n}].offer"))


def encode_client_message(msg: ClientMessage) -> str:
    d: dict[str, Any]
    if isinstance(msg, Scrape):
        d = {"action": "scrape", "info_hash": [id_to_str(h) for h in msg.info_hashes]}
    elif isinstance(msg, Answer):
        d = {
            "action": "announce",
            "info_hash": id_to_str(msg.info_hash),
            "peer_id": id_to_str(msg.peer_id),
            "to_peer_id": id_to_str(msg.to_peer_id),
            "offer_id": id_to_str(msg.offer_id),
            "answer": {"type": "answer", "sdp": msg.sdp},
        }
    else:
        d = {
            "action": "announce",
            "info_hash": id_to_str(msg.info_hash),
            "peer_id": id_to_str(msg.peer_id),
            "numwant": msg.numwant,
            "uploaded": msg.uploaded,
            "downloaded": msg.downloaded,
            "left": msg.left,
        }
        if msg.event:
            d["event"] = msg.event
        if msg.offers:
            d["offers"] = [{"offer": {"type": "offer", "sdp": o.sdp}, "offer_id": id_to_str(o.offer_id)}
                           for o in msg.offers]
    return json.dumps(d)


# ------------------------------------------------------------------------------- tracker -> client


def parse_tracker_message(data: str | bytes) -> TrackerMessage:
    """Parse what a tracker sends to a WebTorrent client (the client's input)."""
    obj = _load(data)
    reason = _text(obj, "failure reason")
    if reason is not None:
        ih = obj.get("info_hash")
        return Failure(reason, str_to_id(ih, "info_hash") if isinstance(ih, str) and len(ih) == 20 else None)
    action = obj.get("action")
    if action == "scrape":
        files = obj.get("files")
        if not isinstance(files, dict):
            raise TrackerError("scrape: files is not an object")
        out = []
        for key, stats in list(files.items())[:MAX_SCRAPE_HASHES]:
            if not isinstance(stats, dict):
                raise TrackerError("scrape: file stats are not an object")
            out.append((str_to_id(key, "files key"), _int(stats, "complete", 0) or 0,
                        _int(stats, "incomplete", 0) or 0, _int(stats, "downloaded", 0) or 0))
        return ScrapeReply(tuple(out))
    if action != "announce":
        raise TrackerError(f"unknown action {_shown(action)}")
    info_hash = str_to_id(obj.get("info_hash"), "info_hash")
    if "offer" in obj:
        return ForwardedOffer(info_hash, str_to_id(obj.get("peer_id"), "peer_id"),
                              str_to_id(obj.get("offer_id"), "offer_id"), _sdp(obj["offer"], "offer", "offer"))
    if "answer" in obj:
        return RelayedAnswer(info_hash, str_to_id(obj.get("peer_id"), "peer_id"),
                             str_to_id(obj.get("offer_id"), "offer_id"), _sdp(obj["answer"], "answer", "answer"))
    return AnnounceReply(
        info_hash=info_hash,
        interval=_int(obj, "interval"),
        min_interval=_int(obj, "min interval"),
        complete=_int(obj, "complete"),
        incomplete=_int(obj, "incomplete"),
        warning=_text(obj, "warning message"),
    )


def encode_tracker_message(msg: TrackerMessage) -> str:
    return json.dumps(tracker_message_object(msg))


def tracker_message_object(msg: TrackerMessage) -> dict[str, Any]:
    """The JSON object for a tracker message, for a caller that serialises it with its own encoder."""
    d: dict[str, Any]
    if isinstance(msg, ForwardedOffer):  # the most frequent message, first
        return {"action": "announce", "info_hash": msg.info_hash.decode("latin-1"),
                "peer_id": msg.peer_id.decode("latin-1"), "offer_id": msg.offer_id.decode("latin-1"),
                "offer": {"type": "offer", "sdp": msg.sdp}}
    if isinstance(msg, Failure):
        # Every tracker message needs ``action``: WebTorrent treats one without it as a socket error.
        d = {"action": "announce", "failure reason": msg.reason}
        if msg.info_hash is not None:
            d["info_hash"] = id_to_str(msg.info_hash)
    elif isinstance(msg, ScrapeReply):
        d = {"action": "scrape", "files": {id_to_str(h): {"complete": c, "incomplete": i, "downloaded": dl}
                                           for h, c, i, dl in msg.files}}
    elif isinstance(msg, RelayedAnswer):
        d = {"action": "announce", "info_hash": id_to_str(msg.info_hash), "peer_id": id_to_str(msg.peer_id),
             "offer_id": id_to_str(msg.offer_id), "answer": {"type": "answer", "sdp": msg.sdp}}
    else:
        d = {"action": "announce", "info_hash": id_to_str(msg.info_hash)}
        for key, value in (("interval", msg.interval), ("min interval", msg.min_interval),
                           ("complete", msg.complete), ("incomplete", msg.incomplete),
                           ("warning message", msg.warning)):
            if value is not None:
                d[key] = value
    return d
