"""uTP (BEP 29) between the bridge and qBittorrent-nox 4.5 (libtorrent 2.0 inside), TCP off on both sides.

qBittorrent runs with ``Session\\BTProtocol=UTP`` on its own 127.0.0.N (see qbittorrent.py) and the
bridge with ``--no-tcp``. Every file is checked by SHA-256; the bridge's log must show a uTP
connection and qBittorrent's peer list must have shown the peer as uTP while the data moved.

The first test checks the harness itself against libtorrent (uTP only), so a failure there is not
the bridge's. The last one checks that the bridge dials a uTP peer again after it was turned away once.

Typical durations on a 2-core machine: 3-7 s per transfer test (34 MB in 1.3-4.5 s), about 40 s for
the redial test (the bridge redials ``--peer`` addresses every 30 s); every wait is bounded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from peers import (
    STOP_TIMEOUT,
    TRANSFER_TIMEOUT,
    BridgeProcess,
    Harness,
    Payload,
    TorrentFile,
    copy_tree,
    describe_tree_mismatch,
    fail,
    tree_sha256,
)
from qbittorrent import QBittorrent, is_utp, start_qbittorrent
from test_utp_interop import UTP_ONLY

pytestmark = pytest.mark.interop



def bridge_utp(harness: Harness, command: str, torrent: TorrentFile, data: Path, peers: Sequence[str] = (),
               name: str = "bridge") -> BridgeProcess:
    """``bridge -vv COMMAND TORRENT -o DATA --no-tcp`` on 127.0.0.1. ``-v`` is a global option that goes
    before the command, so ``Harness.bridge_download(extra=[..., "-v"])`` cannot pass it (argparse
    rejects it). ``-vv`` (debug) also logs failed dials; the logs stay small."""
    args: list[str | Path] = ["-vv", command, torrent.path, "-o", data, "--host", "127.0.0.1", "--port", "0",
                              "--no-tcp"]
    for p in peers:
        args += ["--peer", p]
    return harness.bridge(*args, name=name)


def lines_about(bridge: BridgeProcess, address: str) -> str:
    """The bridge's log lines that name ``address`` (its progress lines crowd them out of the tail)."""
    lines = [line for line in bridge.stderr_text().splitlines() if address in line]
    return f"bridge log lines about {address}:\n" + ("\n".join(lines[-30:]) or "(none)") + "\n"


def assert_tree(expected: dict[str, str], root: Path, harness: Harness) -> None:
    actual = tree_sha256(root)
    assert actual == expected, describe_tree_mismatch(expected, actual, root) + "\n" + harness.describe()


def assert_seen_utp(qb: QBittorrent, host: str, port: int | None, harness: Harness) -> None:
    """qBittorrent listed a peer at ``host`` (and ``port``, if given) with a uTP connection, and only uTP."""
    seen = {addr: kinds for addr, kinds in qb.seen_connections.items()
            if addr.rpartition(":")[0] == host and (port is None or addr == f"{host}:{port}")}
    assert seen, (f"qBittorrent never listed a peer from {host}:{port or '*'}; it saw {qb.seen_connections}\n"
                  + harness.describe())
    kinds = set().union(*seen.values())
    assert all(is_utp(k) for k in kinds), (
        f"qBittorrent listed {host} with connection types {kinds}, not only uTP\n" + harness.describe())


def test_utp_only_qbittorrent_downloads_from_a_utp_only_libtorrent_seed(harness: Harness, payload: Payload) -> None:
    """The harness against a reference: qBittorrent dials a uTP-only libtorrent seed."""
    torrent = harness.torrent(payload.multi)
    seed = harness.libtorrent(name="lt-utp-seed", settings=UTP_ONLY)
    seed.add_seed(torrent, payload.base)
    qb = start_qbittorrent(harness, protocol="UTP")
    out = harness.path("qb-out")
    started = time.monotonic()
    h = qb.add(torrent, out)
    qb.wait_complete(h, reconnect=[seed.address], context=seed.log_excerpt)
    elapsed = time.monotonic() - started
    assert_tree(payload.multi_sha256, out / torrent.name, harness)
    assert_seen_utp(qb, "127.0.0.1", seed.port, harness)
    print(f"qBittorrent <- libtorrent over uTP: {torrent.total_size} bytes in {elapsed:.1f} s")


def test_bridge_downloads_from_a_utp_only_qbittorrent_seed(harness: Harness, payload: Payload) -> None:
    torrent = harness.torrent(payload.multi)
    qb = start_qbittorrent(harness, protocol="UTP")
    h = qb.add(torrent, payload.base)
    qb.wait_seeding(h)
    out = harness.path("bridge-out")
    started = time.monotonic()
    bridge = bridge_utp(harness, "download", torrent, out, peers=[qb.peer_address])
    # Watch qBittorrent's peer list while the bridge downloads; one bound for the whole download.
    deadline = started + TRANSFER_TIMEOUT
    while bridge.running() and time.monotonic() < deadline:
        qb.peers(h)
        time.sleep(0.1)
    if bridge.running():
        fail(f"the bridge did not finish downloading from qBittorrent within {TRANSFER_TIMEOUT:.0f} s; "
             f"qBittorrent's peers:\n{qb.describe_peers(h)}\n" + lines_about(bridge, qb.peer_address)
             + harness.describe())
    rc = bridge.wait_exit(STOP_TIMEOUT)
    elapsed = time.monotonic() - started
    assert rc == 0, f"bridge download exited with {rc}\n" + harness.describe()
    assert_tree(payload.multi_sha256, out / torrent.name, harness)
    _, downloaded = bridge.stats()
    assert downloaded >= torrent.total_size, harness.describe()
    assert "connected (utp" in bridge.stderr_text(), harness.describe()
    assert_seen_utp(qb, "127.0.0.1", None, harness)
    print(f"bridge <- qBittorrent over uTP: {torrent.total_size} bytes in {elapsed:.1f} s")


@pytest.mark.parametrize("encryption", [2, 0], ids=["plaintext", "mse-preferred"])
def test_utp_only_qbittorrent_downloads_from_the_bridge(harness: Harness, payload: Payload, encryption: int) -> None:
    """qBittorrent dials the bridge (torrents/addPeers). With ``encryption=0`` (qBittorrent's default,
    "prefer") it opens with an MSE handshake, which the bridge (``--encryption allow``) must take."""
    torrent = harness.torrent(payload.multi)
    data = harness.path("bridge-data")
    copy_tree(payload.multi, data)
    bridge = bridge_utp(harness, "seed", torrent, data, name="bridge-seed")
    host, port = bridge.wait_listening()
    qb = start_qbittorrent(harness, protocol="UTP", encryption=encryption)
    out = harness.path("qb-out")
    started = time.monotonic()
    h = qb.add(torrent, out)
    qb.wait_complete(h, reconnect=[f"{host}:{port}"], context=harness.bridge_logs)
    elapsed = time.monotonic() - started
    assert_tree(payload.multi_sha256, out / torrent.name, harness)
    assert_seen_utp(qb, host, port, harness)
    rc = bridge.stop_cleanly()
    assert rc == 0, harness.describe()
    uploaded, _ = bridge.stats()
    assert uploaded >= torrent.total_size, harness.describe()
    assert "connected (utp" in bridge.stderr_text(), harness.describe()
    print(f"qBittorrent <- bridge over uTP: {torrent.total_size} bytes in {elapsed:.1f} s")


def test_bridge_redials_a_utp_peer_that_turned_it_away(harness: Harness, payload: Payload) -> None:
    """A uTP peer that refused the bridge once must be dialled over uTP again later.

    qBittorrent (like any libtorrent) answers a uTP SYN with ST_FIN while it has no active torrent,
    e.g. while it restarts or checks its data. The bridge (``--no-tcp``) dials it before the torrent
    is added, gets turned away, and must connect on one of its later redials (it redials ``--peer``
    addresses every 30 s or so) once qBittorrent seeds. Bounded at 90 s after qBittorrent seeds.
    """
    torrent = harness.torrent(payload.multi)
    qb = start_qbittorrent(harness, protocol="UTP")
    out = harness.path("bridge-out")
    bridge = bridge_utp(harness, "download", torrent, out, peers=[qb.peer_address])
    refused = f"cannot open {qb.peer_address}"
    deadline = time.monotonic() + 30.0
    while refused not in bridge.stderr_text():
        if not bridge.running() or time.monotonic() > deadline:
            fail(f"the bridge logged no failed dial of {qb.peer_address} (qBittorrent has no torrent yet)\n"
                 + harness.describe())
        time.sleep(0.1)
    h = qb.add(torrent, payload.base)
    qb.wait_seeding(h)
    deadline = time.monotonic() + 90.0
    while bridge.running() and time.monotonic() < deadline:
        qb.peers(h)
        time.sleep(0.2)
    if bridge.running():
        fail(f"the bridge never dialled qBittorrent again over uTP within 90 s of it seeding "
             f"(it was refused once before the torrent was added); qBittorrent's peers:\n{qb.describe_peers(h)}\n"
             + lines_about(bridge, qb.peer_address) + harness.describe())
    rc = bridge.wait_exit(STOP_TIMEOUT)
    assert rc == 0, f"bridge download exited with {rc}\n" + harness.describe()
    assert_tree(payload.multi_sha256, out / torrent.name, harness)
    assert "connected (utp" in bridge.stderr_text(), harness.describe()
