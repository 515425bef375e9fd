"""BEP 10 extension protocol: the extended handshake. Sans-IO.

(ut_metadata and ut_pex build on this registry in a later step.)
"""

from __future__ import annotations

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


def decode_handshake(payload: bytes) -> ExtendedHandshake:
    """Decode leniently (unknown or ill-typed keys are ignored); raise only on undecodable data."""
    if len(payload) > MAX_HANDSHAKE_SIZE:
        raise RemoteProtocolError(f"extended handshake of {len(payload)} bytes is over the limit")
    try:
        d = bencode.decode(payload)
    except BencodeError as e:
        raise RemoteProtocolError(f"extended handshake: {e}") from None
    if not isinstance(d, dict):
        raise RemoteProtocolError("extended handshake is not a dictionary")
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
