"""Opening a peer connection: MSE when needed, then exchange and check the 68-byte handshakes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..config import PeerConfig
from ..errors import RemoteProtocolError
from ..net.crypto import MseTransport
from ..net.tcp import connect_tcp
from ..net.transport import PeerTransport
from ..proto import events as ev
from ..proto.mse import MseInitiator, MseResponder
from ..proto.wire import PROTOCOL_NAME, Wire, make_reserved

#: Order of attempts when dialling, per encryption setting: False = plaintext, True = MSE.
_DIAL_ORDER = {"allow": (False, True), "prefer": (True, False), "require": (True,), "off": (False,)}


@dataclass
class Opened:
    """A connection whose handshakes are done."""

    transport: PeerTransport
    wire: Wire
    handshake: ev.Handshake
    #: messages that arrived with the handshake
    pending: list[ev.Event] = field(default_factory=list)


def our_handshake(info_hash: bytes, peer_id: bytes, cfg: PeerConfig) -> ev.Handshake:
    """The handshake we send: BEP 10 always, BEP 6 when the config offers it."""
    return ev.Handshake(info_hash, peer_id, make_reserved(extensions=True, fast=cfg.fast_extension))


async def read_handshake(
    transport: PeerTransport, wire: Wire, timeout: float, initial: bytes = b""
) -> tuple[ev.Handshake, list[ev.Event]]:
    """Read until the peer's handshake arrives; return it and any messages that came with it."""
    async with asyncio.timeout(timeout):
        data = initial
        while True:
            if data:
                events = wire.receive_data(data)
                if events:
                    first = events[0]
                    assert isinstance(first, ev.Handshake)
                    return first, events[1:]
            data = await transport.read()
            if not data:
                raise RemoteProtocolError("connection closed during the handshake")


async def _run_mse(transport: PeerTransport, mse: MseInitiator | MseResponder, initial: bytes, timeout: float) -> MseTransport:
    async with asyncio.timeout(timeout):
        data = initial
        while True:
            if data:
                mse.receive_data(data)
            out = mse.data_to_send()
            if out:
                await transport.write(out)
            if mse.result is not None:
                return MseTransport(transport, mse.result)
            data = await transport.read()
            if not data:
                raise RemoteProtocolError("connection closed during the encryption handshake")


#: Opens a byte stream to (host, port) within a timeout: TCP by default, or a uTP connection.
Opener = Callable[[str, int, float], Awaitable[PeerTransport]]


async def _open_tcp(host: str, port: int, timeout: float) -> PeerTransport:
    return await connect_tcp(host, port, timeout)


async def dial(host: str, port: int, ours: ev.Handshake, cfg: PeerConfig, opener: Opener = _open_tcp) -> Opened:
    """Connect and exchange handshakes, plaintext or MSE in the order the encryption setting gives,
    retrying the other way once when the peer hangs up on the first (some require encryption)."""
    order = _DIAL_ORDER.get(cfg.encryption, _DIAL_ORDER["allow"])
    failure: RemoteProtocolError | None = None
    for use_mse in order:
        transport = await opener(host, port, cfg.connect_timeout)
        try:
            wire = Wire()
            stream: PeerTransport = transport
            if use_mse:
                mse = MseInitiator(ours.info_hash, wire.send(ours), os.urandom,
                                   allow_plaintext=cfg.encryption != "require")
                stream = await _run_mse(transport, mse, b"", cfg.handshake_timeout)
            else:
                await transport.write(wire.send(ours))
            handshake, pending = await read_handshake(stream, wire, cfg.handshake_timeout)
            if handshake.info_hash != ours.info_hash:
                raise RemoteProtocolError("handshake for another torrent")
            return Opened(stream, wire, handshake, pending)
        except RemoteProtocolError as e:
            transport.close()
            failure = e
        except BaseException:
            transport.close()
            raise
    assert failure is not None
    raise failure


async def accept(
    transport: PeerTransport, cfg: PeerConfig, lookup: Callable[[bytes], bytes | None]
) -> tuple[PeerTransport, Wire, ev.Handshake, list[ev.Event]]:
    """The first bytes of an incoming connection decide: the plaintext handshake, or MSE (``lookup`` maps
    HASH('req2', info-hash) to an info-hash we serve)."""
    async with asyncio.timeout(cfg.handshake_timeout):
        first = await transport.read()
    if not first:
        raise RemoteProtocolError("connection closed before the handshake")
    wire = Wire()
    n = min(len(first), len(PROTOCOL_NAME))
    if first[:n] == PROTOCOL_NAME[:n]:
        if cfg.encryption == "require":
            raise RemoteProtocolError("plaintext connection refused: encryption is required")
        handshake, pending = await read_handshake(transport, wire, cfg.handshake_timeout, first)
        return transport, wire, handshake, pending
    if cfg.encryption == "off":
        raise RemoteProtocolError("not the BitTorrent protocol (encryption is off)")
    mse = MseResponder(lookup, os.urandom, allow_plaintext=cfg.encryption != "require",
                       prefer_plaintext=cfg.encryption == "allow")
    stream = await _run_mse(transport, mse, first, cfg.handshake_timeout)
    handshake, pending = await read_handshake(stream, wire, cfg.handshake_timeout)
    return stream, wire, handshake, pending
