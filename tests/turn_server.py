"""A real TURN server for the TURN tests: coturn's ``turnserver`` (Debian package coturn) on 127.0.0.1.

It relays on 127.0.0.1 too (``--allow-loopback-peers``), with one long-term-credential user. coturn cannot
bind port 0, so a free port is found first. The tests fail, saying why, when coturn is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from aiortc import RTCConfiguration, RTCIceTransportPolicy
from peers import tail
from ports import free_port

from bridge.net import rtc

USER, PASSWORD, REALM = "bridge", "s3cret", "bridge.test"
#: Bound on coturn starting to answer.
START_TIMEOUT = 15.0


def _binding_request() -> tuple[bytes, bytes]:
    txid = os.urandom(12)
    return struct.pack("!HHL", 0x0001, 0, 0x2112A442) + txid, txid


async def _answers(port: int) -> bool:
    """True when a STUN Binding request to 127.0.0.1:port gets a success response within 0.5 s."""
    request, txid = _binding_request()
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.connect(("127.0.0.1", port))
        s.send(request)
        try:
            async with asyncio.timeout(0.5):
                data = await loop.sock_recv(s, 2048)
        except (TimeoutError, ConnectionRefusedError):
            return False
    return len(data) >= 20 and data[:2] == b"\x01\x01" and data[8:20] == txid


@contextlib.asynccontextmanager
async def coturn(workdir: Path) -> AsyncIterator[int]:
    """coturn running on 127.0.0.1; yields its port. Its log is workdir/turn.log."""
    exe = shutil.which("turnserver")
    if exe is None:
        raise AssertionError("coturn's turnserver is not installed (Debian: apt-get install coturn; "
                             "scripts/setup installs it)")
    port = free_port(udp_too=True)
    log = workdir / "turn.log"
    proc = await asyncio.create_subprocess_exec(
        exe, "-n", "--listening-ip", "127.0.0.1", "--listening-port", str(port), "--relay-ip", "127.0.0.1",
        "--allow-loopback-peers", "--lt-cred-mech", "--user", f"{USER}:{PASSWORD}", "--realm", REALM,
        "--no-tls", "--no-dtls", "--no-cli", "--no-multicast-peers", "--log-file", str(log), "--simple-log",
        "--pidfile", str(workdir / "turn.pid"), "-v",
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while not await _answers(port):
                    if proc.returncode is not None:
                        raise AssertionError(f"turnserver exited ({proc.returncode}): {tail(log)}")
        except TimeoutError:
            raise AssertionError(f"turnserver did not answer within {START_TIMEOUT:g} s: {tail(log)}") from None
        yield port
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


def turn_url(port: int, password: str = PASSWORD) -> str:
    """The server as the bridge's settings take it (--ice-server), credentials in the URL."""
    return f"turn:{USER}:{password}@127.0.0.1:{port}"


@contextlib.contextmanager
def relay_only() -> Iterator[None]:
    """Make the bridge's peer connections relay-only (aiortc's iceTransportPolicy), so that data can only go
    through the TURN server. The bridge has no setting for this; the tests need it to prove the relay."""
    original = rtc.RTCConfiguration
    rtc.RTCConfiguration = functools.partial(RTCConfiguration, iceTransportPolicy=RTCIceTransportPolicy.RELAY)  # type: ignore[misc]
    try:
        yield
    finally:
        rtc.RTCConfiguration = original  # type: ignore[misc]


def selected_pair(transport: rtc.RtcTransport) -> tuple[str, str]:
    """(local, remote) candidate types of the connection's nominated ICE pair (aioice state)."""
    pair = rtc._ice_connection(transport._pc)._nominated[1]
    return pair.local_candidate.type, pair.remote_candidate.type
