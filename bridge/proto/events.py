"""Events of the peer wire protocol (BEP 3, 6, 10). Frozen dataclasses; what ``Wire`` emits and sends."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Handshake:
    """The 68-byte opening message."""

    #: 20-byte info-hash of the torrent the peer wants.
    info_hash: bytes
    #: 20-byte peer id.
    peer_id: bytes
    #: 8 reserved bytes announcing extensions (BEP 10: [5]&0x10, BEP 6: [7]&0x04).
    reserved: bytes = bytes(8)

    @property
    def extension_protocol(self) -> bool:
        return bool(self.reserved[5] & 0x10)

    @property
    def fast_extension(self) -> bool:
        return bool(self.reserved[7] & 0x04)


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """A zero-length message."""


@dataclass(frozen=True, slots=True)
class Choke:
    """The sender will not serve our requests."""


@dataclass(frozen=True, slots=True)
class Unchoke:
    """The sender will serve our requests."""


@dataclass(frozen=True, slots=True)
class Interested:
    """The sender wants pieces we have."""


@dataclass(frozen=True, slots=True)
class NotInterested:
    """The sender wants nothing we have."""


@dataclass(frozen=True, slots=True)
class Have:
    """The sender now has piece ``index``."""

    index: int


@dataclass(frozen=True, slots=True)
class Bitfield:
    """The pieces the sender has, high bit of the first byte is piece 0."""

    bits: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Request:
    """Ask for ``length`` bytes of piece ``index`` from ``begin``."""

    index: int
    begin: int
    length: int


@dataclass(frozen=True, slots=True)
class Piece:
    """A block of data: bytes ``begin`` .. ``begin+len(data)`` of piece ``index``.

    On receipt ``data`` may be a read-only memoryview into the received chunk (zero-copy); treat it as an
    immutable buffer."""

    index: int
    begin: int
    data: bytes | memoryview = field(repr=False)


@dataclass(frozen=True, slots=True)
class Cancel:
    """Withdraw an earlier request."""

    index: int
    begin: int
    length: int


@dataclass(frozen=True, slots=True)
class Port:
    """BEP 5: the sender's DHT port."""

    port: int


@dataclass(frozen=True, slots=True)
class SuggestPiece:
    """BEP 6: the sender suggests downloading piece ``index``."""

    index: int


@dataclass(frozen=True, slots=True)
class HaveAll:
    """BEP 6: the sender has every piece (instead of a bitfield)."""


@dataclass(frozen=True, slots=True)
class HaveNone:
    """BEP 6: the sender has no piece (instead of a bitfield)."""


@dataclass(frozen=True, slots=True)
class RejectRequest:
    """BEP 6: the sender will not serve this request."""

    index: int
    begin: int
    length: int


@dataclass(frozen=True, slots=True)
class AllowedFast:
    """BEP 6: we may request piece ``index`` even while choked."""

    index: int


@dataclass(frozen=True, slots=True)
class Extended:
    """BEP 10: an extension message; ``ext_id`` 0 is the extended handshake."""

    ext_id: int
    payload: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A message with an id we do not know; ignored by the engine."""

    msg_id: int
    length: int


Message = (
    KeepAlive
    | Choke
    | Unchoke
    | Interested
    | NotInterested
    | Have
    | Bitfield
    | Request
    | Piece
    | Cancel
    | Port
    | SuggestPiece
    | HaveAll
    | HaveNone
    | RejectRequest
    | AllowedFast
    | Extended
    | UnknownMessage
)
Event = Handshake | Message
