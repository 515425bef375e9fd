"""Message stream encryption (MSE/PE) against clients that require it: libtorrent, Transmission, aria2."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
from peers import Harness, Payload, copy_tree
from test_tcp_interop import TRANSMISSION_TRANSFER_TIMEOUT, assert_download_exit, assert_tree, stop_seed

pytestmark = pytest.mark.interop

# libtorrent: encryption forced both ways, RC4 for the payload (not just the handshake).
LT_FORCED_RC4 = {"out_enc_policy": 0, "in_enc_policy": 0, "allowed_enc_level": 2, "prefer_rc4": True}


def test_bridge_downloads_from_libtorrent_that_requires_rc4(harness: Harness, payload: Payload) -> None:
    """The bridge dials plaintext first; the seed hangs up; the bridge retries with MSE and gets RC4."""
    torrent = harness.torrent(payload.multi)
    seed = harness.libtorrent(settings=LT_FORCED_RC4, name="lt-seed-rc4")
    seed.add_seed(torrent, payload.base)
    out = harness.path("bridge-out")
    bridge = harness.bridge_download(torrent, out, peers=[seed.address])
    assert_download_exit(bridge, torrent)
    assert_tree(payload.multi_sha256, out / torrent.name, harness)


def test_libtorrent_that_requires_rc4_downloads_from_bridge(harness: Harness, payload: Payload) -> None:
    """libtorrent dials the bridge with MSE; the bridge answers as the responder with an RC4 stream."""
    torrent = harness.torrent(payload.multi)
    data = harness.path("bridge-data")
    copy_tree(payload.multi, data)
    bridge = harness.bridge_seed(torrent, data)
    host, port = bridge.wait_listening()
    leech = harness.libtorrent(settings=LT_FORCED_RC4, name="lt-leech-rc4")
    out = harness.path("lt-out")
    handle = leech.add(torrent, out)
    leech.connect(handle, f"{host}:{port}")
    leech.wait_complete(handle, reconnect=[f"{host}:{port}"])
    assert_tree(payload.multi_sha256, out / torrent.name, harness)
    uploaded, _ = stop_seed(bridge)
    assert uploaded >= torrent.total_size


def test_bridge_with_encryption_required_downloads_from_transmission(harness: Harness, payload: Payload) -> None:
    """Transmission set to require encryption; the bridge with --encryption require dials it."""
    torrent = harness.torrent(payload.multi)
    transmission = harness.transmission(encryption=2)
    tid = transmission.add(torrent, payload.base)
    transmission.wait_seeding(tid)
    out = harness.path("bridge-out")
    bridge = harness.bridge_download(torrent, out, peers=[transmission.peer_address], extra=["--encryption", "require"])
    assert_download_exit(bridge, torrent, TRANSMISSION_TRANSFER_TIMEOUT)
    assert_tree(payload.multi_sha256, out / torrent.name, harness)


def test_aria2_requiring_crypto_downloads_from_bridge(harness: Harness, payload: Payload) -> None:
    tracker = harness.tracker()
    torrent = harness.torrent(payload.multi, announce=[tracker.http_announce])
    data = harness.path("bridge-data")
    copy_tree(payload.multi, data)
    bridge = harness.bridge_seed(torrent, data, announce=[tracker.http_announce])
    bridge.wait_listening()
    tracker.wait_for_peers(torrent.info_hash, complete=1, context=harness.bridge_logs)
    out = harness.path("aria2-out")
    aria2 = harness.aria2(torrent, out, extra_args=["--bt-require-crypto=true", "--bt-min-crypto-level=arc4"])
    rc = aria2.wait_done(context=harness.bridge_logs)
    assert rc == 0, f"aria2c exited with {rc}\n" + harness.describe()
    assert_tree(payload.multi_sha256, out / torrent.name, harness)


def test_bridge_downloads_magnet_found_through_http_tracker(harness: Harness, payload: Payload) -> None:
    """Only a magnet with a tracker (tr=): the bridge announces (left unknown), learns the libtorrent seed
    from the tracker, fetches the metadata from it and downloads. (Here because this file already has the
    MSE default in play: libtorrent dials and accepts both.)"""
    tracker = harness.tracker()
    torrent = harness.torrent(payload.multi, announce=[tracker.http_announce])
    seed = harness.libtorrent(name="lt-seed")
    seed.add_seed(torrent, payload.base, trackers=[tracker.http_announce])
    tracker.wait_for_peers(torrent.info_hash, complete=1, context=harness.describe)
    magnet = f"magnet:?xt=urn:btih:{torrent.info_hash_hex}&tr={quote(tracker.http_announce, safe='')}"
    out = harness.path("bridge-out")
    bridge = harness.bridge_download(Path(magnet), out)
    assert_download_exit(bridge, torrent)
    assert_tree(payload.multi_sha256, out / torrent.name, harness)
