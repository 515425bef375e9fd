"""The error types of the bridge.

Every parser of outside input raises a subclass of :class:`BridgeError` and nothing else, so callers can
convert protocol failures into a closed peer, a tracker warning or a one-line CLI error at one boundary.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base class of every error the bridge raises on purpose."""


class ProtocolError(BridgeError):
    """A protocol was broken, by us or by the remote side."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol forbids (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """The remote side sent something the protocol forbids; close only that peer."""


class BencodeError(RemoteProtocolError):
    """Malformed or over-limit bencoded data."""


class MetainfoError(BridgeError):
    """A .torrent file, info dictionary or magnet URI is invalid. The message names the field."""


class TrackerError(BridgeError):
    """A tracker answered with an error or garbage. Always a warning, never fatal."""


class StorageError(BridgeError):
    """The data on disk cannot be read or written (permissions, disk full, unsafe path)."""
