"""BEP 10 extension protocol: the extended handshake. Sans-IO.

(ut_metadata and ut_pex build on this registry in a later step.)
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from ..errors import BencodeError, RemoteProtocolError
from . import bencode

#: Largest extended handshake we decode. Real ones are a few hundred bytes.
MAX_HANDSHAKE_SIZE = 64 * 1024
#: Most extensions a peer may list in ``m``.
MAX_EXTENSIONS = 64
#: Clamp for a peer's advertised ``reqq``: at least one request, at most what any client keeps.
MAX_REQQ = 10_000


@dataclass(frozen=True, slots=True)
class ExtendedHandshake:
    """The BEP 10 handshake dictionary."""

    #: Extension name -> message id the sender wants to receive it on (0 disables).
    m: dict[str, int] = field(default_factory=dict)
    #: Client name and version.
    v: str | None = None
    #: The sender's listen port.
    p: int | None = None
    #: How many outstanding requests the sender accepts.
    reqq: int | None = None
    #: BEP 9 metadata size in bytes.
    metadata_size: int | None = None
    #: Our address as the sender sees it (4 or 16 bytes).
    yourip: bytes | None = None
    #: The sender only uploads (it is a seed or a partial seed).
    upload_only: bool = False


def encode_handshake(hs: ExtendedHandshake) -> bytes:
    d: dict[bytes, Any] = {b"m": {k.encode(): v for k, v in hs.m.items()}}
    if hs.v is not None:
        d[b"v"] = hs.v
    if hs.p is not None:
        d[b"p"] = hs.p
    if hs.reqq is not None:
        d[b"reqq"] = hs.reqq
    if hs.metadata_size is not None:
        d[b"metadata_size"] = hs.metadata_size
    if hs.yourip is not None:
        d[b"yourip"] = hs.yourip
    if hs.upload_only:
        d[b"upload_only"] = 1
    return bencode.encode(d)


def _opt_int(d: dict[bytes, Any], key: bytes, lo: int, hi: int) -> int | None:
    v = d.get(key)
    if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi:
        return v
    return None


def _decode_dict(payload: bytes, limit: int, what: str, prefix: bool = False) -> tuple[dict[bytes, Any], int]:
    """Bencoded dict at the start of an extension message (``prefix``: data may follow it)."""
    if len(payload) > limit:
        raise RemoteProtocolError(f"{what} of {len(payload)} bytes is over the limit of {limit}")
    try:
        d, end = bencode.decode_prefix(payload) if prefix else (bencode.decode(payload), len(payload))
    except BencodeError as e:
        raise RemoteProtocolError(f"{what}: {e}") from None
    if not isinstance(d, dict):
        raise RemoteProtocolError(f"{what} is not a dictionary")
    return d, end


def decode_handshake(payload: bytes) -> ExtendedHandshake:
    """Decode leniently (unknown or ill-typed keys are ignored); raise only on undecodable data."""
    d, _ = _decode_dict(payload, MAX_HANDSHAKE_SIZE, "extended handshake")
    m: dict[str, int] = {}
    raw_m = d.get(b"m")
    if isinstance(raw_m, dict):
        for k, v in list(raw_m.items())[:MAX_EXTENSIONS]:
            if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255:
                m[k.decode("utf-8", "replace")] = v
    v = d.get(b"v")
    yourip = d.get(b"yourip")
    reqq = _opt_int(d, b"reqq", 1, 1 << 31)
    return ExtendedHandshake(
        m=m,
        v=v.decode("utf-8", "replace")[:100] if isinstance(v, bytes) else None,
        p=_opt_int(d, b"p", 1, 65535),
        reqq=min(reqq, MAX_REQQ) if reqq is not None else None,
        metadata_size=_opt_int(d, b"metadata_size", 0, 1 << 62),
        yourip=yourip if isinstance(yourip, bytes) and len(yourip) in (4, 16) else None,
        upload_only=d.get(b"upload_only") == 1,
    )


# ------------------------------------------------------------------------------- BEP 9 ut_metadata

#: Metadata is exchanged in pieces of 16 KiB (BEP 9).
METADATA_PIECE_SIZE = 16 * 1024
#: Largest metadata we fetch or accept: WebTorrent refuses more than 10 MB, and so do we.
MAX_METADATA_SIZE = 10 * 1000 * 1000
#: Largest ut_metadata message: one piece plus its small bencoded header.
MAX_METADATA_MESSAGE = METADATA_PIECE_SIZE + 1024

UT_METADATA = "ut_metadata"
UT_PEX = "ut_pex"
LT_DONTHAVE = "lt_donthave"
#: The ids we ask peers to use when they send us each extension (our side of the BEP 10 registry).
OUR_EXTENSION_IDS: dict[str, int] = {UT_METADATA: 1, UT_PEX: 2, LT_DONTHAVE: 3}

METADATA_REQUEST, METADATA_DATA, METADATA_REJECT = 0, 1, 2


@dataclass(frozen=True, slots=True)
class MetadataMessage:
    """A BEP 9 message."""

    #: 0 request, 1 data, 2 reject
    msg_type: int
    #: metadata piece index
    piece: int
    #: total metadata size (data messages only)
    total_size: int | None = None
    #: the piece's bytes (data messages only)
    data: bytes = b""


def encode_metadata(msg: MetadataMessage) -> bytes:
    d: dict[bytes, Any] = {b"msg_type": msg.msg_type, b"piece": msg.piece}
    if msg.msg_type == METADATA_DATA:
        d[b"total_size"] = msg.total_size if msg.total_size is not None else len(msg.data)
        return bencode.encode(d) + msg.data
    return bencode.encode(d)


def metadata_piece_count(size: int) -> int:
    return (size + METADATA_PIECE_SIZE - 1) // METADATA_PIECE_SIZE


def decode_metadata(payload: bytes) -> MetadataMessage:
    d, end = _decode_dict(payload, MAX_METADATA_MESSAGE, "ut_metadata message", prefix=True)
    msg_type = _opt_int(d, b"msg_type", 0, 2)
    piece = _opt_int(d, b"piece", 0, metadata_piece_count(MAX_METADATA_SIZE) - 1)
    if msg_type is None or piece is None:
        raise RemoteProtocolError("ut_metadata: missing or invalid msg_type or piece")
    if msg_type != METADATA_DATA:
        return MetadataMessage(msg_type, piece)
    total = _opt_int(d, b"total_size", 1, MAX_METADATA_SIZE)
    if total is None:
        raise RemoteProtocolError("ut_metadata: data without a valid total_size")
    data = payload[end:]
    expected = min(METADATA_PIECE_SIZE, total - piece * METADATA_PIECE_SIZE)
    if expected <= 0 or len(data) != expected:
        raise RemoteProtocolError(f"ut_metadata: piece {piece} has {len(data)} bytes, expected {max(expected, 0)}")
    return MetadataMessage(msg_type, piece, total, data)


# ------------------------------------------------------------------------------------ BEP 11 ut_pex

#: Most peers a PEX message may add or drop that we take (BEP 11 says senders put at most 50).
MAX_PEX_PEERS = 50
#: Largest ut_pex message we decode: 50 IPv6 entries with flags are about 1 KB; allow generous slack.
MAX_PEX_MESSAGE = 64 * 1024

PEX_ENCRYPTION, PEX_SEED, PEX_UTP, PEX_HOLEPUNCH, PEX_REACHABLE = 0x01, 0x02, 0x04, 0x08, 0x10


@dataclass(frozen=True, slots=True)
class PexMessage:
    """A BEP 11 message: peers added (with flags) and dropped since the last one."""

    added: tuple[tuple[str, int, int], ...] = ()
    dropped: tuple[tuple[str, int], ...] = ()


def _compact(host: str, port: int) -> tuple[bytes, bool] | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return ip.packed + port.to_bytes(2, "big"), ip.version == 6


def encode_pex(msg: PexMessage) -> bytes:
    added4, flags4, added6, flags6, dropped4, dropped6 = bytearray(), bytearray(), bytearray(), bytearray(), bytearray(), bytearray()
    for host, port, flags in msg.added[:MAX_PEX_PEERS]:
        c = _compact(host, port)
        if c is None:
            continue
        if c[1]:
            added6 += c[0]
            flags6.append(flags & 0xFF)
        else:
            added4 += c[0]
            flags4.append(flags & 0xFF)
    for host, port in msg.dropped[:MAX_PEX_PEERS]:
        c = _compact(host, port)
        if c is not None:
            (dropped6 if c[1] else dropped4).extend(c[0])
    d: dict[bytes, Any] = {b"added": bytes(added4), b"added.f": bytes(flags4), b"dropped": bytes(dropped4)}
    if added6 or dropped6:
        d[b"added6"] = bytes(added6)
        d[b"added6.f"] = bytes(flags6)
        d[b"dropped6"] = bytes(dropped6)
    return bencode.encode(d)


def _parse_compact(raw: Any, size: int) -> list[tuple[str, int]]:
    if not isinstance(raw, bytes):
        return []
    out: list[tuple[str, int]] = []
    for at in range(0, len(raw) - len(raw) % size, size):
        if len(out) >= MAX_PEX_PEERS:
            break
        host = str(ipaddress.ip_address(raw[at : at + size - 2]))
        port = int.from_bytes(raw[at + size - 2 : at + size], "big")
        if port:
            out.append((host, port))
    return out


def decode_pex(payload: bytes) -> PexMessage:
    """Decode a ut_pex message. Truncated compact lists lose only their incomplete tail entry; at most
    MAX_PEX_PEERS are taken from each list."""
    d, _ = _decode_dict(payload, MAX_PEX_MESSAGE, "ut_pex message")
    added: list[tuple[str, int, int]] = []
    for key, size in ((b"added", 6), (b"added6", 18)):
        peers = _parse_compact(d.get(key), size)
        flags = d.get(key + b".f")
        fl = flags if isinstance(flags, bytes) else b""
        added += [(h, p, fl[i] if i < len(fl) else 0) for i, (h, p) in enumerate(peers)]
    dropped = _parse_compact(d.get(b"dropped"), 6) + _parse_compact(d.get(b"dropped6"), 18)
    return PexMessage(tuple(added[:MAX_PEX_PEERS]), tuple(dropped[:MAX_PEX_PEERS]))
