"""Tracker announce codecs, sans-IO: HTTP (BEP 3, 7, 23) and UDP (BEP 15).

Nothing here does I/O or reads a clock. ``bridge.net.tracker_http`` and ``bridge.net.tracker_udp`` move the
bytes; ``bridge.engine.announcer`` decides when and to whom to announce (BEP 12).

Every parser of tracker output raises :class:`~bridge.errors.TrackerError` and nothing else. The same goes
for request builders given an invalid :class:`AnnounceRequest` or URL, so a caller needs one ``except``.
"""

from __future__ import annotations

import ipaddress
import struct
import urllib.parse
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..errors import BencodeError, TrackerError
from .bencode import decode_prefix

__all__ = [
    "AnnounceRequest",
    "AnnounceResponse",
    "TrackerUrl",
    "EVENTS",
    "SUPPORTED_SCHEMES",
    "KNOWN_SCHEMES",
    "parse_tracker_url",
    "build_http_announce_url",
    "parse_http_announce_response",
    "udp_connect_request",
    "parse_udp_connect_response",
    "udp_announce_request",
    "parse_udp_announce_response",
    "udp_response_transaction_id",
]

# ---------------------------------------------------------------------------------------------------------
# Limits on what a tracker (or a .torrent naming a tracker) controls
# ---------------------------------------------------------------------------------------------------------

#: Largest HTTP announce response body accepted. A compact answer for 200 peers is about 1.2 KiB and even a
#: non-compact answer (~60 bytes per peer dict) for 1000 peers stays under 100 KiB; 2 MiB leaves ample room
#: for extension keys while bounding what a hostile tracker can make us buffer and decode.
MAX_HTTP_BODY = 2 * 1024 * 1024
#: Most peers taken from one response (IPv4 and IPv6 together); the rest are ignored. Clients ask for
#: 50-200 (numwant) and trackers cap their answers near that; a swarm is not helped by holding thousands of
#: addresses from one source, and the cap bounds the work a single answer can cause downstream.
MAX_PEERS_PER_RESPONSE = 1000
#: Shortest re-announce interval honoured, in seconds. A tracker asking for less would have every client
#: hammer it; one minute is the floor libtorrent-era clients apply too.
MIN_ANNOUNCE_INTERVAL = 60
#: Longest re-announce interval honoured, in seconds. Peers drop out of tracker lists after roughly twice
#: the interval, so a larger value would only let our entry go stale.
MAX_ANNOUNCE_INTERVAL = 3 * 60 * 60
#: Interval used when the tracker does not send one: BEP 3 trackers typically answer 1800 s.
DEFAULT_ANNOUNCE_INTERVAL = 30 * 60
#: Longest ``failure reason`` / ``warning message`` / UDP error text kept, in characters. These end up in
#: one log line; a tracker must not be able to flood the log.
MAX_MESSAGE_CHARS = 512
#: Longest ``tracker id`` kept, in bytes. It is echoed in every later announce URL; real trackers use a few
#: dozen bytes at most. A longer one is ignored (not echoed) rather than failing the announce.
MAX_TRACKER_ID_BYTES = 256
#: Longest tracker URL accepted, in characters. URLs come from .torrent files and magnets (outside input);
#: real announce URLs are well under 200 characters and common HTTP servers reject request lines over 8 KiB.
MAX_URL_LENGTH = 2048
#: Largest UDP datagram parsed: the largest payload a UDP length field can describe. Anything longer cannot
#: be a real datagram and is rejected before parsing.
MAX_UDP_DATAGRAM = 65535

#: Schemes the HTTP and UDP clients can announce to.
SUPPORTED_SCHEMES = frozenset({"http", "https", "udp"})
#: Schemes recognized as tracker URLs. ``ws``/``wss`` (WebTorrent signalling) are handled elsewhere, so
#: :func:`parse_tracker_url` accepts them and the HTTP/UDP clients report them as unsupported.
KNOWN_SCHEMES = SUPPORTED_SCHEMES | {"ws", "wss"}
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

#: Announce events, as sent in HTTP (``event=``) and their BEP 15 codes. ``""`` is a regular update.
EVENTS: dict[str, int] = {"": 0, "completed": 1, "started": 2, "stopped": 3}

# BEP 15 constants
_UDP_PROTOCOL_ID = 0x41727101980
_ACTION_CONNECT = 0
_ACTION_ANNOUNCE = 1
_ACTION_ERROR = 3
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF

_CONNECT_REQ = struct.Struct(">QII")  # protocol id, action, transaction id
_CONNECT_RESP = struct.Struct(">IIQ")  # action, transaction id, connection id
_ANNOUNCE_REQ = struct.Struct(">QII20s20sQQQIIIiH")  # 98 bytes
_ANNOUNCE_RESP_HEAD = struct.Struct(">IIIII")  # action, transaction id, interval, leechers, seeders
_RESP_HEAD = struct.Struct(">II")  # action, transaction id: common to every UDP response


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnnounceRequest:
    """What we tell a tracker about ourselves. Validated on construction (raises TrackerError)."""

    #: The torrent's 20-byte SHA-1 info-hash.
    info_hash: bytes
    #: Our 20-byte peer id.
    peer_id: bytes
    #: TCP port we accept peers on (0..65535).
    port: int
    #: Payload bytes uploaded since ``started`` (BEP 3), 0..2**64-1.
    uploaded: int
    #: Payload bytes downloaded since ``started``, 0..2**64-1.
    downloaded: int
    #: Bytes still missing, 0..2**64-1 (0 for a seed).
    left: int
    #: ``""`` (regular update), ``"started"``, ``"completed"`` or ``"stopped"``.
    event: str
    #: How many peers we want; -1 lets the tracker choose (BEP 15 default). Omitted from HTTP if negative.
    numwant: int = 50
    #: Random 32-bit key identifying us across IP changes (BEP 7/15); constant for a session.
    key: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.info_hash, bytes) or len(self.info_hash) != 20:
            raise TrackerError("announce request: info_hash must be 20 bytes")
        if not isinstance(self.peer_id, bytes) or len(self.peer_id) != 20:
            raise TrackerError("announce request: peer_id must be 20 bytes")
        _check_int("port", self.port, 0, 0xFFFF)
        _check_int("uploaded", self.uploaded, 0, _U64)
        _check_int("downloaded", self.downloaded, 0, _U64)
        _check_int("left", self.left, 0, _U64)
        if not isinstance(self.event, str) or self.event not in EVENTS:
            raise TrackerError(f"announce request: unknown event {self.event!r}")
        _check_int("numwant", self.numwant, -(2**31), 2**31 - 1)
        _check_int("key", self.key, 0, _U32)


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise TrackerError(f"announce request: {name}={value!r} is not an integer in {lo}..{hi}")


@dataclass(frozen=True, slots=True)
class AnnounceResponse:
    """A tracker's successful answer, already validated and clamped."""

    #: Seconds until the next regular announce, clamped to MIN/MAX_ANNOUNCE_INTERVAL.
    interval: int
    #: Seconds the tracker asks us to wait at least between announces (``min interval``), clamped to
    #: 0..``interval``; None if not sent (UDP never sends it).
    min_interval: int | None
    #: Peers as (host, port): host is an IPv4 dotted quad or an IPv6 address (no brackets), port 1..65535.
    #: IPv4 first, then IPv6; duplicates removed; at most MAX_PEERS_PER_RESPONSE.
    peers: tuple[tuple[str, int], ...]
    #: Number of seeders the tracker knows of, if it said.
    complete: int | None
    #: Number of leechers the tracker knows of, if it said.
    incomplete: int | None
    #: ``warning message``: the announce worked but the tracker wants this shown. Truncated.
    warning: str | None
    #: ``tracker id`` to echo in later announces to the same tracker (HTTP only).
    tracker_id: bytes | None


class TrackerUrl(NamedTuple):
    """A tracker URL split into what the clients need."""

    #: Lower-case scheme, one of KNOWN_SCHEMES.
    scheme: str
    #: Host name or IP address (IPv6 without brackets), lower-case.
    host: str
    #: Port, defaulted from the scheme when absent (a ``udp`` URL must name one).
    port: int
    #: Path plus ``?query`` if any; ``""`` when absent. For udp this is BEP 41 URL data.
    path: str


# ---------------------------------------------------------------------------------------------------------
# URLs
# ---------------------------------------------------------------------------------------------------------


def parse_tracker_url(url: str) -> TrackerUrl:
    """Split and check a tracker URL; raise TrackerError for anything unusable or of an unknown scheme.

    ``ws``/``wss`` are accepted here (recognized); callers check ``scheme in SUPPORTED_SCHEMES``.
    """
    if not isinstance(url, str):
        raise TrackerError("tracker URL is not a string")
    if len(url) > MAX_URL_LENGTH:
        raise TrackerError(f"tracker URL longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise TrackerError(f"tracker URL contains whitespace or control characters: {url[:100]!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname
        port = parts.port
    except ValueError as exc:  # bad IPv6 literal, port out of range, ...
        raise TrackerError(f"invalid tracker URL {url[:100]!r}: {exc}") from None
    if scheme not in KNOWN_SCHEMES:
        raise TrackerError(f"unsupported tracker URL scheme {scheme!r} in {url[:100]!r}")
    if not host:
        raise TrackerError(f"tracker URL has no host: {url[:100]!r}")
    if port is None:
        if scheme not in _DEFAULT_PORTS:
            raise TrackerError(f"{scheme} tracker URL needs a port: {url[:100]!r}")
        port = _DEFAULT_PORTS[scheme]
    if port == 0:
        raise TrackerError(f"tracker URL has port 0: {url[:100]!r}")
    path = parts.path + ("?" + parts.query if parts.query else "")
    return TrackerUrl(scheme, host, port, path)


def _pct(raw: bytes) -> str:
    # quote_from_bytes with safe="" leaves exactly the RFC 3986 unreserved set (ALPHA DIGIT - . _ ~) as is
    # and writes every other byte as %XX with upper-case hex.
    return urllib.parse.quote_from_bytes(raw, safe="")


def build_http_announce_url(base_url: str, req: AnnounceRequest, tracker_id: bytes | None = None) -> str:
    """The GET URL for an HTTP(S) announce: ``base_url`` plus BEP 3 parameters, ``compact=1``.

    An existing query string in ``base_url`` (a passkey, say) is kept and our parameters are appended
    with ``&``; a fragment is dropped.
    """
    parsed = parse_tracker_url(base_url)
    if parsed.scheme not in ("http", "https"):
        raise TrackerError(f"not an HTTP tracker URL: {base_url[:100]!r}")
    base = base_url.split("#", 1)[0]
    params = [
        ("info_hash", _pct(req.info_hash)),
        ("peer_id", _pct(req.peer_id)),
        ("port", str(req.port)),
        ("uploaded", str(req.uploaded)),
        ("downloaded", str(req.downloaded)),
        ("left", str(req.left)),
        ("compact", "1"),
    ]
    if req.event:
        params.append(("event", req.event))
    if req.numwant >= 0:
        params.append(("numwant", str(req.numwant)))
    params.append(("key", f"{req.key:08X}"))
    if tracker_id is not None:
        params.append(("trackerid", _pct(tracker_id)))
    query = "&".join(f"{k}={v}" for k, v in params)
    if "?" not in base:
        sep = "?"
    elif base.endswith(("?", "&")):
        sep = ""
    else:
        sep = "&"
    return base + sep + query


# ---------------------------------------------------------------------------------------------------------
# HTTP responses
# ---------------------------------------------------------------------------------------------------------


def _text(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    # Control characters would let a tracker forge log lines.
    text = "".join(c if c.isprintable() else "?" for c in text[: MAX_MESSAGE_CHARS + 1])
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS] + "..."
    return text


def _clamp_interval(value: int) -> int:
    return max(MIN_ANNOUNCE_INTERVAL, min(MAX_ANNOUNCE_INTERVAL, value))


class _PeerCollector:
    """Collects unique (host, port) pairs up to MAX_PEERS_PER_RESPONSE, dropping port 0."""

    __slots__ = ("peers", "seen")

    def __init__(self) -> None:
        self.peers: list[tuple[str, int]] = []
        self.seen: set[tuple[str, int]] = set()

    @property
    def full(self) -> bool:
        return len(self.peers) >= MAX_PEERS_PER_RESPONSE

    def add(self, host: str, port: int) -> None:
        if port == 0 or self.full:
            return
        peer = (host, port)
        if peer not in self.seen:
            self.seen.add(peer)
            self.peers.append(peer)

    def add_compact(self, data: bytes, ipv6: bool, what: str) -> None:
        stride = 18 if ipv6 else 6
        if len(data) % stride:
            raise TrackerError(f"{what}: {len(data)} bytes is not a multiple of {stride}")
        for off in range(0, len(data), stride):
            if self.full:
                return
            ip_raw = data[off : off + stride - 2]
            port = int.from_bytes(data[off + stride - 2 : off + stride], "big")
            if ipv6:
                addr6 = ipaddress.IPv6Address(ip_raw)
                mapped = addr6.ipv4_mapped
                host = str(mapped) if mapped is not None else str(addr6)
            else:
                host = str(ipaddress.IPv4Address(ip_raw))
            self.add(host, port)


def _ip_literal(raw: bytes) -> str | None:
    """Normalized IP address from a non-compact peer entry, or None (DNS names are not resolved)."""
    try:
        addr = ipaddress.ip_address(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            return None
        mapped = addr.ipv4_mapped
        if mapped is not None:
            return str(mapped)
    return str(addr)


def _optional_count(value: Any) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None


def parse_http_announce_response(body: bytes) -> AnnounceResponse:
    """Parse a bencoded HTTP announce answer (compact or not, plus BEP 7 ``peers6``).

    ``failure reason`` raises TrackerError carrying the tracker's text. Malformed peer lists raise;
    informational fields of the wrong type (complete, warning ...) are ignored.
    """
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TrackerError("tracker response is not bytes")
    body = bytes(body)
    if len(body) > MAX_HTTP_BODY:
        raise TrackerError(f"tracker response larger than {MAX_HTTP_BODY} bytes")
    try:
        value, end = decode_prefix(body)
    except BencodeError as exc:
        raise TrackerError(f"tracker response is not bencoded: {exc}") from None
    if body[end:].strip():
        raise TrackerError(f"tracker response has {len(body) - end} bytes after the bencoded value")
    if not isinstance(value, dict):
        raise TrackerError("tracker response is not a bencoded dict")
    d: dict[bytes, Any] = value

    failure = d.get(b"failure reason")
    if failure is not None:
        text = _text(failure) if isinstance(failure, bytes) else repr(failure)[:MAX_MESSAGE_CHARS]
        raise TrackerError(f"tracker failure: {text}")

    interval_raw = d.get(b"interval")
    interval = _clamp_interval(interval_raw if isinstance(interval_raw, int) else DEFAULT_ANNOUNCE_INTERVAL)
    min_raw = d.get(b"min interval")
    min_interval = max(0, min(interval, min_raw)) if isinstance(min_raw, int) else None

    collector = _PeerCollector()
    peers = d.get(b"peers")
    if isinstance(peers, bytes):
        collector.add_compact(peers, False, "compact peers")
    elif isinstance(peers, list):
        for entry in peers:
            if not isinstance(entry, dict):
                raise TrackerError("non-compact peers: entry is not a dict")
            ip = entry.get(b"ip")
            port = entry.get(b"port")
            if not isinstance(ip, bytes) or not isinstance(port, int):
                raise TrackerError("non-compact peers: entry without ip string and port integer")
            if not 0 <= port <= 0xFFFF:
                raise TrackerError(f"non-compact peers: port {port} out of range")
            host = _ip_literal(ip)
            if host is not None:
                collector.add(host, port)
    elif peers is not None:
        raise TrackerError("peers is neither a string nor a list")
    peers6 = d.get(b"peers6")
    if isinstance(peers6, bytes):
        collector.add_compact(peers6, True, "peers6")
    elif peers6 is not None:
        raise TrackerError("peers6 is not a string")

    warning_raw = d.get(b"warning message")
    warning = _text(warning_raw) if isinstance(warning_raw, bytes) else None
    tid = d.get(b"tracker id")
    tracker_id = tid if isinstance(tid, bytes) and 0 < len(tid) <= MAX_TRACKER_ID_BYTES else None
    return AnnounceResponse(
        interval=interval,
        min_interval=min_interval,
        peers=tuple(collector.peers),
        complete=_optional_count(d.get(b"complete")),
        incomplete=_optional_count(d.get(b"incomplete")),
        warning=warning,
        tracker_id=tracker_id,
    )


# ---------------------------------------------------------------------------------------------------------
# UDP (BEP 15)
# ---------------------------------------------------------------------------------------------------------


def _check_u32(value: int, what: str) -> None:
    if not isinstance(value, int) or not 0 <= value <= _U32:
        raise TrackerError(f"{what} must be an unsigned 32-bit integer")


def udp_connect_request(transaction_id: int) -> bytes:
    """The 16-byte connect request."""
    _check_u32(transaction_id, "transaction id")
    return _CONNECT_REQ.pack(_UDP_PROTOCOL_ID, _ACTION_CONNECT, transaction_id)


def udp_response_transaction_id(data: bytes) -> int | None:
    """The transaction id of a UDP tracker datagram, or None if it is too short to carry one.

    Adapters use it to drop stray datagrams (late answers to earlier requests) without failing.
    """
    if len(data) < _RESP_HEAD.size:
        return None
    return int(_RESP_HEAD.unpack_from(data)[1])


def _check_udp_response(data: bytes, transaction_id: int, action: int, min_size: int) -> None:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TrackerError("UDP tracker response is not bytes")
    if len(data) > MAX_UDP_DATAGRAM:
        raise TrackerError("UDP tracker response larger than a datagram")
    if len(data) < _RESP_HEAD.size:
        raise TrackerError(f"UDP tracker response of {len(data)} bytes is too short")
    got_action, got_tid = _RESP_HEAD.unpack_from(data)
    if got_tid != transaction_id:
        raise TrackerError("UDP tracker response has the wrong transaction id")
    if got_action == _ACTION_ERROR:
        raise TrackerError(f"tracker failure: {_text(bytes(data[8:]))}")
    if got_action != action:
        raise TrackerError(f"UDP tracker response has action {got_action}, expected {action}")
    if len(data) < min_size:
        raise TrackerError(f"UDP tracker response of {len(data)} bytes is too short")


def parse_udp_connect_response(data: bytes, transaction_id: int) -> int:
    """The connection id from a connect response; TrackerError on error action, wrong id or bad size."""
    _check_udp_response(data, transaction_id, _ACTION_CONNECT, _CONNECT_RESP.size)
    return int(_CONNECT_RESP.unpack_from(data)[2])


def udp_announce_request(connection_id: int, transaction_id: int, req: AnnounceRequest) -> bytes:
    """The 98-byte announce request. IP is left 0 (the tracker uses the source address)."""
    if not isinstance(connection_id, int) or not 0 <= connection_id <= _U64:
        raise TrackerError("connection id must be an unsigned 64-bit integer")
    _check_u32(transaction_id, "transaction id")
    return _ANNOUNCE_REQ.pack(
        connection_id,
        _ACTION_ANNOUNCE,
        transaction_id,
        req.info_hash,
        req.peer_id,
        req.downloaded,
        req.left,
        req.uploaded,
        EVENTS[req.event],
        0,
        req.key,
        req.numwant,
        req.port,
    )


def parse_udp_announce_response(data: bytes, transaction_id: int, *, ipv6: bool = False) -> AnnounceResponse:
    """Parse an announce response. ``ipv6`` says the request went over IPv6: peers are then 18 bytes each
    (BEP 15), otherwise 6."""
    _check_udp_response(data, transaction_id, _ACTION_ANNOUNCE, _ANNOUNCE_RESP_HEAD.size)
    _, _, interval, leechers, seeders = _ANNOUNCE_RESP_HEAD.unpack_from(data)
    collector = _PeerCollector()
    collector.add_compact(bytes(data[_ANNOUNCE_RESP_HEAD.size :]), ipv6, "UDP announce peers")
    return AnnounceResponse(
        interval=_clamp_interval(interval),
        min_interval=None,
        peers=tuple(collector.peers),
        complete=seeders,
        incomplete=leechers,
        warning=None,
        tracker_id=None,
    )
