"""Server-side tracker codecs, sans-IO: HTTP announce/scrape queries and bencoded replies (BEP 3, 7, 23, 48),
BEP 15 UDP datagrams, and verifiable BEP 15 connection ids.

The client side of the same formats lives in :mod:`bridge.proto.tracker`; the WebSocket JSON messages in
:mod:`bridge.proto.wstracker`. Everything here takes untrusted input: parsers return a frozen request or
raise :class:`~bridge.errors.TrackerError`, whose text is fit for a ``failure reason``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import TrackerError
from ..proto import bencode
from ..proto.tracker import MAX_UDP_DATAGRAM
from .state import DEFAULT_NUMWANT, MAX_NUMWANT, AddrReply, PeerAddress

__all__ = [
    "HttpAnnounce",
    "parse_http_announce",
    "parse_http_scrape",
    "encode_http_announce_reply",
    "encode_http_scrape_reply",
    "encode_http_failure",
    "UdpConnect",
    "UdpAnnounce",
    "UdpScrape",
    "UdpRequestError",
    "parse_udp_request",
    "encode_udp_connect",
    "encode_udp_announce",
    "encode_udp_scrape",
    "encode_udp_error",
    "ConnectionIds",
    "normalize_ip",
    "MAX_QUERY_PARAMS",
    "MAX_SCRAPE_HASHES",
    "MAX_UDP_SCRAPE_HASHES",
    "CONNECTION_ID_WINDOW",
]

#: Query parameters read from one HTTP request. An announce has about a dozen (BEP 3 plus key, trackerid,
#: supportcrypto, ...); a scrape one per info-hash. More than this is not a real client.
MAX_QUERY_PARAMS = 128
#: Info-hashes in one HTTP scrape. Clients scrape one torrent at a time or batch a few dozen.
MAX_SCRAPE_HASHES = 64
#: Info-hashes in one UDP scrape: BEP 15 says "up to about 74" (they must fit a small datagram).
MAX_UDP_SCRAPE_HASHES = 74
#: Seconds in one connection-id window. An id is accepted in the window it was issued in and the next,
#: so it lives between one and two windows: BEP 15 clients use an id for one minute and trackers accept it
#: for two.
CONNECTION_ID_WINDOW = 60.0
#: Largest value of a BEP 3 counter (uploaded, downloaded, left): BEP 15 sends them as 64-bit integers.
_MAX_COUNTER = 2**64 - 1
#: Longest decimal integer read from a query (2**64 has 20 digits), so int() never sees a huge string.
_MAX_DIGITS = 20
#: Longest failure or error text sent, in characters.
_MAX_REASON = 200

_HTTP_EVENTS = {"": None, "started": "started", "completed": "completed", "stopped": "stopped",
                # BEP 21: a partial seed that stopped downloading; for the registry it is a regular update.
                "paused": None}


# ---------------------------------------------------------------------------------------------------------
# Addresses
# ---------------------------------------------------------------------------------------------------------


def normalize_ip(ip: str) -> str:
    """The canonical text of an IP address: IPv4-mapped IPv6 becomes IPv4, a zone index is dropped."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _compact(peers: Iterable[PeerAddress]) -> bytes:
    return b"".join(ipaddress.ip_address(p.ip).packed + p.port.to_bytes(2, "big") for p in peers)


# ---------------------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpAnnounce:
    """A BEP 3 announce query. The IP is not taken from the query: the server uses the source address."""

    info_hash: bytes
    peer_id: bytes
    #: The port the client accepts peers on (1..65535; 0 only with ``stopped``).
    port: int
    uploaded: int
    downloaded: int
    #: None when the client did not say (counted as incomplete).
    left: int | None
    #: "started", "completed", "stopped" or None (regular update, or BEP 21 "paused").
    event: str | None
    #: Peers wanted per address family, 0..MAX_NUMWANT.
    numwant: int
    #: BEP 23 compact peers (the default unless ``compact=0``).
    compact: bool
    #: Leave ``peer id`` out of non-compact peers.
    no_peer_id: bool


def _query(raw_query: str) -> dict[str, list[bytes]]:
    """Split a raw query string into name -> values, percent-decoding the values to bytes.

    ``+`` is left as is (it is not a space in a URL query, and clients percent-encode a 0x2B byte).
    """
    out: dict[str, list[bytes]] = {}
    if not raw_query:
        return out
    parts = raw_query.split("&", MAX_QUERY_PARAMS)
    if len(parts) > MAX_QUERY_PARAMS:
        raise TrackerError(f"more than {MAX_QUERY_PARAMS} query parameters")
    try:
        for part in parts:
            if not part:
                continue
            name, _, value = part.partition("=")
            out.setdefault(urllib.parse.unquote(name), []).append(urllib.parse.unquote_to_bytes(value))
    except UnicodeError:
        # A raw (undecodable) byte reaches us as a lone surrogate with aiohttp's pure-Python parser.
        raise TrackerError("the query has characters that are not percent-encoded") from None
    return out


def _id(q: dict[str, list[bytes]], name: str) -> bytes:
    values = q.get(name)
    if not values:
        raise TrackerError(f"missing {name}")
    if len(values[0]) != 20:
        raise TrackerError(f"{name} must be 20 bytes, not {len(values[0])}")
    return values[0]


def _int(q: dict[str, list[bytes]], name: str, default: int | None, lo: int, hi: int) -> int | None:
    values = q.get(name)
    if not values or values[0] == b"":
        return default
    raw = values[0]
    digits = raw[1:] if raw[:1] == b"-" else raw
    if not digits.isdigit() or len(digits) > _MAX_DIGITS or not digits.isascii():
        raise TrackerError(f"{name} is not an integer")
    value = int(raw)
    if not lo <= value <= hi:
        raise TrackerError(f"{name} is out of range")
    return value


def parse_http_announce(raw_query: str) -> HttpAnnounce:
    """Parse the raw (still percent-encoded) query string of ``GET /announce``."""
    q = _query(raw_query)
    info_hash = _id(q, "info_hash")
    peer_id = _id(q, "peer_id")
    event_raw = q.get("event", [b""])[0]
    try:
        event = _HTTP_EVENTS[event_raw.decode("ascii")]
    except (UnicodeDecodeError, KeyError):
        raise TrackerError("unknown event") from None
    port = _int(q, "port", None, 0, 0xFFFF)
    if port is None:
        raise TrackerError("missing port")
    if port == 0 and event != "stopped":
        raise TrackerError("port 0 is not a port peers can connect to")
    numwant = _int(q, "numwant", DEFAULT_NUMWANT, -(2**31), 2**31 - 1)
    assert numwant is not None
    if numwant < 0:
        numwant = DEFAULT_NUMWANT
    compact = q.get("compact", [b"1"])[0] != b"0"
    return HttpAnnounce(
        info_hash=info_hash,
        peer_id=peer_id,
        port=port,
        uploaded=_int(q, "uploaded", 0, 0, _MAX_COUNTER) or 0,
        downloaded=_int(q, "downloaded", 0, 0, _MAX_COUNTER) or 0,
        left=_int(q, "left", None, 0, _MAX_COUNTER),
        event=event,
        numwant=min(numwant, MAX_NUMWANT),
        compact=compact,
        no_peer_id=q.get("no_peer_id", [b"0"])[0] not in (b"0", b""),
    )


def parse_http_scrape(raw_query: str) -> tuple[bytes, ...]:
    """The info-hashes of ``GET /scrape?info_hash=...&info_hash=...`` (at least one, at most
    MAX_SCRAPE_HASHES). A scrape of every swarm is not offered."""
    q = _query(raw_query)
    hashes = q.get("info_hash", [])
    if not hashes:
        raise TrackerError("scrape needs at least one info_hash")
    if len(hashes) > MAX_SCRAPE_HASHES:
        raise TrackerError(f"more than {MAX_SCRAPE_HASHES} info_hash values")
    for h in hashes:
        if len(h) != 20:
            raise TrackerError(f"info_hash must be 20 bytes, not {len(h)}")
    return tuple(dict.fromkeys(hashes))


def encode_http_announce_reply(reply: AddrReply, *, compact: bool = True, no_peer_id: bool = False) -> bytes:
    """The bencoded answer: interval, complete, incomplete, ``peers`` (BEP 23 compact string, or BEP 3
    dicts) and ``peers6`` (BEP 7, compact, present when there are IPv6 peers)."""
    d: dict[bytes, object] = {
        b"interval": reply.interval,
        b"complete": reply.complete,
        b"incomplete": reply.incomplete,
    }
    if compact:
        d[b"peers"] = _compact(reply.peers4)
        if reply.peers6:
            d[b"peers6"] = _compact(reply.peers6)
    else:
        entries = []
        for p in (*reply.peers4, *reply.peers6):
            e: dict[bytes, object] = {b"ip": p.ip.encode("ascii"), b"port": p.port}
            if not no_peer_id:
                e[b"peer id"] = p.peer_id
            entries.append(e)
        d[b"peers"] = entries
    return bencode.encode(d)


def encode_http_scrape_reply(rows: Iterable[tuple[bytes, int, int, int]]) -> bytes:
    """BEP 48: ``files`` keyed by the RAW 20-byte info-hash (not a text re-encoding of it)."""
    files = {ih: {b"complete": c, b"incomplete": i, b"downloaded": dl} for ih, c, i, dl in rows}
    return bencode.encode({b"files": files})


def encode_http_failure(reason: str) -> bytes:
    return bencode.encode({b"failure reason": reason[:_MAX_REASON]})


# ---------------------------------------------------------------------------------------------------------
# UDP (BEP 15)
# ---------------------------------------------------------------------------------------------------------

PROTOCOL_ID = 0x41727101980
ACTION_CONNECT = 0
ACTION_ANNOUNCE = 1
ACTION_SCRAPE = 2
ACTION_ERROR = 3
_UDP_EVENTS = {0: None, 1: "completed", 2: "started", 3: "stopped"}

_HEAD = struct.Struct(">QII")  # connection id (or protocol id), action, transaction id
_ANNOUNCE = struct.Struct(">QII20s20sQQQIIIiH")  # 98 bytes; BEP 41 options may follow and are ignored
_CONNECT_REPLY = struct.Struct(">IIQ")
_ANNOUNCE_REPLY = struct.Struct(">IIIII")
_SCRAPE_ROW = struct.Struct(">III")
_ERROR_HEAD = struct.Struct(">II")


@dataclass(frozen=True, slots=True)
class UdpConnect:
    transaction_id: int


@dataclass(frozen=True, slots=True)
class UdpAnnounce:
    connection_id: int
    transaction_id: int
    info_hash: bytes
    peer_id: bytes
    downloaded: int
    left: int
    uploaded: int
    #: "started", "completed", "stopped" or None.
    event: str | None
    #: Peers wanted, 0..MAX_NUMWANT (-1 in the datagram means the default).
    numwant: int
    port: int
    key: int


@dataclass(frozen=True, slots=True)
class UdpScrape:
    connection_id: int
    transaction_id: int
    info_hashes: tuple[bytes, ...]


UdpRequest = UdpConnect | UdpAnnounce | UdpScrape


class UdpRequestError(TrackerError):
    """A malformed request whose header is readable: an error datagram can answer it (once the caller has
    checked ``connection_id``, so that a forged source address gets nothing back)."""

    def __init__(self, message: str, connection_id: int, transaction_id: int) -> None:
        super().__init__(message)
        self.connection_id = connection_id
        self.transaction_id = transaction_id


def parse_udp_request(data: bytes) -> UdpRequest:
    """Parse one datagram sent to the tracker.

    Raises UdpRequestError when the header is readable but the request is not (answer with an error datagram
    if its connection id is valid), and plain TrackerError (drop silently) when the datagram is not a BEP 15
    request at all.
    """
    if len(data) > MAX_UDP_DATAGRAM:
        raise TrackerError("datagram too large")
    if len(data) < _HEAD.size:
        raise TrackerError(f"datagram of {len(data)} bytes is too short")
    cid, action, tid = _HEAD.unpack_from(data)
    if action == ACTION_CONNECT:
        if cid != PROTOCOL_ID:
            raise TrackerError("connect request without the BEP 15 protocol id")
        return UdpConnect(tid)
    if action == ACTION_ANNOUNCE:
        if len(data) < _ANNOUNCE.size:
            raise UdpRequestError(f"announce of {len(data)} bytes is too short", cid, tid)
        (_, _, _, info_hash, peer_id, downloaded, left, uploaded, event_code, _ip, key, numwant,
         port) = _ANNOUNCE.unpack_from(data)
        event = _UDP_EVENTS.get(event_code, -1)
        if event == -1:
            raise UdpRequestError("unknown event", cid, tid)
        if port == 0 and event != "stopped":
            raise UdpRequestError("port 0 is not a port peers can connect to", cid, tid)
        return UdpAnnounce(
            connection_id=cid,
            transaction_id=tid,
            info_hash=info_hash,
            peer_id=peer_id,
            downloaded=downloaded,
            left=left,
            uploaded=uploaded,
            event=event if isinstance(event, str) else None,
            numwant=DEFAULT_NUMWANT if numwant < 0 else min(numwant, MAX_NUMWANT),
            port=port,
            key=key,
        )
    if action == ACTION_SCRAPE:
        body = data[_HEAD.size:]
        if not body or len(body) % 20:
            raise UdpRequestError("scrape body is not a list of 20-byte info-hashes", cid, tid)
        if len(body) > 20 * MAX_UDP_SCRAPE_HASHES:
            raise UdpRequestError(f"more than {MAX_UDP_SCRAPE_HASHES} info-hashes", cid, tid)
        return UdpScrape(cid, tid, tuple(bytes(body[i:i + 20]) for i in range(0, len(body), 20)))
    raise UdpRequestError(f"unknown action {action}", cid, tid)


def encode_udp_connect(transaction_id: int, connection_id: int) -> bytes:
    return _CONNECT_REPLY.pack(ACTION_CONNECT, transaction_id, connection_id)


def encode_udp_announce(transaction_id: int, reply: AddrReply, *, ipv6: bool) -> bytes:
    """Announce reply: interval, leechers, seeders, then compact peers of the request's family (6 bytes
    each over IPv4, 18 over IPv6)."""
    peers = reply.peers6 if ipv6 else reply.peers4
    return _ANNOUNCE_REPLY.pack(ACTION_ANNOUNCE, transaction_id, reply.interval, _u32(reply.incomplete),
                                _u32(reply.complete)) + _compact(peers)


def encode_udp_scrape(transaction_id: int, rows: Sequence[tuple[bytes, int, int, int]]) -> bytes:
    """Scrape reply: seeders, completed, leechers per info-hash, in request order."""
    return _ERROR_HEAD.pack(ACTION_SCRAPE, transaction_id) + b"".join(
        _SCRAPE_ROW.pack(_u32(c), _u32(dl), _u32(i)) for _, c, i, dl in rows)


def encode_udp_error(transaction_id: int, message: str) -> bytes:
    return _ERROR_HEAD.pack(ACTION_ERROR, transaction_id) + message[:_MAX_REASON].encode("utf-8", "replace")


def _u32(n: int) -> int:
    return max(0, min(n, 0xFFFFFFFF))


class ConnectionIds:
    """BEP 15 connection ids the tracker can check without storing them.

    An id is the first 8 bytes of HMAC-SHA256(secret, window number | client IP), where the window number is
    ``now // window``. An id is accepted in its own window and the next one. It is bound to the IP only, not
    the port: clients may announce from a new socket with a cached id (the bridge's own client does).
    """

    def __init__(self, secret: bytes, window: float = CONNECTION_ID_WINDOW) -> None:
        if len(secret) < 16:
            raise ValueError("connection id secret must be at least 16 bytes")
        if window <= 0:
            raise ValueError("window must be positive")
        self._secret = secret
        self._window = window

    def _mac(self, ip: str, window_no: int) -> int:
        msg = window_no.to_bytes(8, "big", signed=True) + ip.encode("ascii", "replace")
        return int.from_bytes(hmac.new(self._secret, msg, hashlib.sha256).digest()[:8], "big")

    def issue(self, ip: str, now: float) -> int:
        return self._mac(ip, int(now // self._window))

    def valid(self, connection_id: int, ip: str, now: float) -> bool:
        w = int(now // self._window)
        ok = False
        for n in (w, w - 1):
            # Compare both, constant time, so timing does not tell which window matched.
            ok |= hmac.compare_digest(self._mac(ip, n).to_bytes(8, "big"), connection_id.to_bytes(8, "big"))
        return ok
