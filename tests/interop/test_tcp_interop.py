"""The bridge's command line against real BitTorrent programs over TCP on loopback.

Every torrent here is made by libtorrent or mktorrent, never by the bridge, and every
transferred file is checked by SHA-256 against the source data. The other programs are
libtorrent (in-process), Transmission 3 and aria2, with the npm bittorrent-tracker as the
tracker. See peers.py for how each one is run and confined to 127.0.0.0/8.

Typical durations on an idle 2-core machine: a few seconds per test (about 10-15 s for the
Transmission ones and the rate-limited swarm); every wait is bounded (peers.TRANSFER_TIMEOUT).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from peers import (
    TRANSFER_TIMEOUT,
    TRANSMISSION_TRANSFER_TIMEOUT,
    BridgeProcess,
    Harness,
    Payload,
    TorrentFile,
    copy_tree,
    describe_tree_mismatch,
    read_torrent,
    sha256_file,
    tree_sha256,
    wait_tree,
)

pytestmark = pytest.mark.interop


# --------------------------------------------------------------------------------------------
# Checks shared by the tests


def assert_tree(expected: dict[str, str], root: Path, harness: Harness) -> None:
    actual = tree_sha256(root)
    assert actual == expected, describe_tree_mismatch(expected, actual, root) + "\n" + harness.bridge_logs()


def assert_download_exit(bridge: BridgeProcess, torrent: TorrentFile, timeout: float = TRANSFER_TIMEOUT) -> None:
    """``bridge download`` (without --seed) must exit 0 by itself once the torrent is complete."""
    rc = bridge.wait_exit(timeout)
    assert rc == 0, f"bridge download exited with {rc}\n" + bridge.log_excerpt()
    _, downloaded = bridge.stats()
    assert downloaded >= torrent.total_size, (
        f"bridge reports downloaded={downloaded} for a {torrent.total_size}-byte torrent\n" + bridge.log_excerpt())


def stop_seed(bridge: BridgeProcess) -> tuple[int, int]:
    """SIGINT a seeding bridge; it must exit 0. Returns its (uploaded, downloaded)."""
    rc = bridge.stop_cleanly()
    assert rc == 0, f"bridge exited with {rc} after SIGINT\n" + bridge.log_excerpt()
    return bridge.stats()


# --------------------------------------------------------------------------------------------
# The bridge makes a torrent


def test_libtorrent_seeds_a_bridge_created_torrent(harness: Harness, payload: Payload) -> None:
    """``bridge create`` on the multi-file tree: libtorrent must parse the torrent, agree on the
    info-hash printed in the magnet URI, and verify the source data as complete against its
    piece hashes (pieces straddle file boundaries here)."""
    out = harness.path("created") / "multi.torrent"
    bridge = harness.bridge("create", payload.multi, "-o", out, "--piece-length", str(256 * 1024))
    rc = bridge.wait_exit(60)
    assert rc == 0, f"bridge create exited with {rc}\n" + bridge.log_excerpt()
    magnet = bridge.magnet()

    torrent = read_torrent(out)
    assert torrent.name == payload.multi.name
    assert torrent.num_files == len(payload.multi_sha256)
    assert f"xt=urn:btih:{torrent.info_hash_hex}" in magnet.lower(), (
        f"magnet {magnet} does not carry libtorrent's info-hash {torrent.info_hash_hex}")
    seed = harness.libtorrent(name="lt-seed")
    seed.add_seed(torrent, payload.base)  # fails unless every piece hash matches the data


# --------------------------------------------------------------------------------------------
# The bridge downloads


def test_bridge_downloads_from_libtorrent_seed(harness: Harness, payload: Payload) -> None:
    """libtorrent seeds a 32 MiB multi-file torrent; the bridge dials it with --peer."""
    torrent = harness.torrent(payload.multi)
    seed = harness.libtorrent(name="lt-seed")
    seed_handle = seed.add_seed(torrent, payload.base)

    out = harness.path("bridge-out")
    bridge = harness.bridge_download(torrent, out, peers=[seed.address])
    assert_download_exit(bridge, torrent)

    assert_tree(payload.multi_sha256, out / torrent.name, harness)
    uploaded, _ = seed.totals(seed_handle)
    assert uploaded >= torrent.total_size, f"libtorrent uploaded only {uploaded} bytes\n" + harness.describe()


def test_bridge_downloads_from_libtorrent_via_http_tracker(harness: Harness, payload: Payload) -> None:
    """The bridge finds the libtorrent seed only through the HTTP tracker given by --announce.

    The torrent itself has no announce URL: the seed is told the tracker directly, so the
    bridge can only have learnt the seed's address from its own announce.
    """
    tracker = harness.tracker()
    torrent = harness.torrent(payload.multi)
    seed = harness.libtorrent(name="lt-seed")
    seed.add_seed(torrent, payload.base, trackers=[tracker.http_announce])
    tracker.wait_for_peers(torrent.info_hash, complete=1, context=harness.describe)

    out = harness.path("bridge-out")
    bridge = harness.bridge_download(torrent, out, announce=[tracker.http_announce])
    assert_download_exit(bridge, torrent)

    assert_tree(payload.multi_sha256, out / torrent.name, harness)


def test_bridge_downloads_single_file_via_udp_tracker(harness: Harness, payload: Payload) -> None:
    """A single-file torrent made by mktorrent, announced on bittorrent-tracker's UDP side (BEP 15).

    The udp:// URL is both in the torrent (the libtorrent seed uses it from there) and on the
    bridge's command line.
    """
    tracker = harness.tracker()
    torrent = harness.torrent(payload.single, announce=[tracker.udp_announce], maker="mktorrent")
    seed = harness.libtorrent(name="lt-seed")
    seed.add_seed(torrent, payload.base)
    tracker.wait_for_peers(torrent.info_hash, complete=1, context=harness.describe)

    out = harness.path("bridge-out")
    bridge = harness.bridge_download(torrent, out, announce=[tracker.udp_announce])
    assert_download_exit(bridge, torrent)

    got = out / torrent.name
    assert got.is_file(), f"{got} is missing\n" + harness.bridge_logs()
    assert sha256_file(got) == payload.single_sha256, f"{got} has the wrong content\n" + harness.bridge_logs()


def test_bridge_downloads_from_transmission_seed(harness: Harness, payload: Payload) -> None:
    """Transmission seeds; the bridge dials it with --peer (Transmission never dials loopback)."""
    torrent = harness.torrent(payload.multi)
    transmission = harness.transmission()
    tid = transmission.add(torrent, payload.base)
    transmission.wait_seeding(tid)

    out = harness.path("bridge-out")
    bridge = harness.bridge_download(torrent, out, peers=[transmission.peer_address])
    assert_download_exit(bridge, torrent, TRANSMISSION_TRANSFER_TIMEOUT)

    assert_tree(payload.multi_sha256, out / torrent.name, harness)


def test_bridge_downloads_from_transmission_via_http_tracker(harness: Harness, payload: Payload) -> None:
    """Transmission announces to the HTTP tracker named in the torrent; the bridge, given no
    --peer and no --announce, must use the torrent's own announce URL to find it."""
    tracker = harness.tracker()
    torrent = harness.torrent(payload.multi, announce=[tracker.http_announce])
    transmission = harness.transmission()
    tid = transmission.add(torrent, payload.base)
    transmission.wait_seeding(tid)
    tracker.wait_for_peers(torrent.info_hash, complete=1, context=harness.describe)

    out = harness.path("bridge-out")
    bridge = harness.bridge_download(torrent, out)
    assert_download_exit(bridge, torrent, TRANSMISSION_TRANSFER_TIMEOUT)

    assert_tree(payload.multi_sha256, out / torrent.name, harness)


# --------------------------------------------------------------------------------------------
# The bridge seeds


def test_libtorrent_downloads_from_bridge_seed(harness: Harness, payload: Payload) -> None:
    """The bridge seeds (``seed TORRENT -o DIR --port 0``); libtorrent dials the printed port."""
    torrent = harness.torrent(payload.multi)
    data = harness.path("bridge-data")
    copy_tree(payload.multi, data)
    bridge = harness.bridge_seed(torrent, data)
    host, port = bridge.wait_listening()

    leech = harness.libtorrent(name="lt-leech")
    out = harness.path("lt-out")
    handle = leech.add(torrent, out)
    leech.wait_complete(handle, reconnect=[f"{host}:{port}"], context=harness.bridge_logs)

    assert_tree(payload.multi_sha256, out / torrent.name, harness)
    uploaded, _ = stop_seed(bridge)
    assert uploaded >= torrent.total_size, f"bridge reports uploaded={uploaded}\n" + bridge.log_excerpt()


def test_aria2_downloads_from_bridge_seed_via_tracker(harness: Harness, payload: Payload) -> None:
    """The bridge seeds and announces (--announce); aria2 learns of it only from the tracker."""
    tracker = harness.tracker()
    torrent = harness.torrent(payload.multi, announce=[tracker.http_announce])
    data = harness.path("bridge-data")
    copy_tree(payload.multi, data)
    bridge = harness.bridge_seed(torrent, data, announce=[tracker.http_announce])
    bridge.wait_listening()
    tracker.wait_for_peers(torrent.info_hash, complete=1, context=harness.bridge_logs)

    out = harness.path("aria2-out")
    aria2 = harness.aria2(torrent, out)
    rc = aria2.wait_done(context=harness.bridge_logs)
    assert rc == 0, f"aria2c exited with {rc}\n" + harness.describe()

    assert_tree(payload.multi_sha256, out / torrent.name, harness)
    uploaded, _ = stop_seed(bridge)
    assert uploaded >= torrent.total_size, f"bridge reports uploaded={uploaded}\n" + bridge.log_excerpt()


def test_transmission_downloads_from_bridge_seed(harness: Harness, payload: Payload) -> None:
    """Transmission only accepts connections from loopback peers, so the seeding bridge dials it
    with ``--peer`` once Transmission has the torrent."""
    torrent = harness.torrent(payload.multi)
    transmission = harness.transmission()
    tid = transmission.add(torrent)
    transmission.wait_downloading(tid)

    data = harness.path("bridge-data")
    copy_tree(payload.multi, data)
    bridge = harness.bridge_seed(torrent, data, peers=[transmission.peer_address])
    bridge.wait_listening()
    transmission.wait_complete(tid, TRANSMISSION_TRANSFER_TIMEOUT, context=harness.bridge_logs)

    assert_tree(payload.multi_sha256, transmission.download_dir / torrent.name, harness)
    uploaded, _ = stop_seed(bridge)
    assert uploaded >= torrent.total_size, f"bridge reports uploaded={uploaded}\n" + bridge.log_excerpt()


# --------------------------------------------------------------------------------------------
# A swarm of three


#: Upload cap for the libtorrent seed in the three-party swarm. Uncapped, libtorrent would hand
#: both leechers the whole torrent in well under a second and aria2 might never need a piece
#: from the bridge; at 4 MiB/s the seed needs ~16 s to serve everything twice, so the cheapest
#: source for half of aria2's pieces is the bridge, which makes bridge uploads near certain.
#: (It is a per-torrent limit: libtorrent exempts loopback peers from its session-wide limits.)
SWARM_SEED_UPLOAD_LIMIT = 4 * 1024 * 1024


def test_three_party_swarm_bridge_relays_to_aria2(harness: Harness, payload: Payload) -> None:
    """libtorrent seeds; the bridge (``download --peer SEED --announce TRACKER --seed``) and aria2
    (tracker only) download at the same time. Both must finish with the right data, and the bridge
    must have uploaded something (to aria2: the seed needs nothing)."""
    tracker = harness.tracker()
    torrent = harness.torrent(payload.multi, announce=[tracker.http_announce])
    seed = harness.libtorrent(name="lt-seed")
    seed.add_seed(torrent, payload.base, upload_limit=SWARM_SEED_UPLOAD_LIMIT)
    tracker.wait_for_peers(torrent.info_hash, complete=1, context=harness.describe)

    bridge_out = harness.path("bridge-out")
    bridge = harness.bridge_download(torrent, bridge_out, peers=[seed.address],
                                     announce=[tracker.http_announce], seed=True)
    # Seed + bridge known to the tracker (the bridge may already count as complete).
    tracker.wait_for_peers(torrent.info_hash, total=2, context=harness.bridge_logs)

    aria2_out = harness.path("aria2-out")
    aria2 = harness.aria2(torrent, aria2_out)
    rc = aria2.wait_done(context=harness.bridge_logs)
    assert rc == 0, f"aria2c exited with {rc}\n" + harness.describe()
    assert_tree(payload.multi_sha256, aria2_out / torrent.name, harness)

    wait_tree(bridge_out / torrent.name, payload.multi_sha256, context=harness.bridge_logs, alive=bridge.running)
    assert bridge.running(), f"bridge download --seed exited by itself\n{bridge.log_excerpt()}"
    uploaded, downloaded = stop_seed(bridge)
    assert uploaded > 0, (
        f"bridge uploaded nothing to aria2 (uploaded={uploaded} downloaded={downloaded})\n" + harness.describe())


# --------------------------------------------------------------------------------------------
# The harness itself


def test_harness_reference_peers(harness: Harness, payload: Payload) -> None:
    """Control experiment without the bridge: the same helpers move the same data between the
    reference programs (libtorrent seeds; aria2 leeches through the tracker while libtorrent
    dials a Transmission leecher). If this fails, the bridge tests' failures say nothing about
    the bridge."""
    tracker = harness.tracker()
    torrent = harness.torrent(payload.multi, announce=[tracker.http_announce])
    seed = harness.libtorrent(name="lt-seed")
    seed_handle = seed.add_seed(torrent, payload.base)
    tracker.wait_for_peers(torrent.info_hash, complete=1, context=harness.describe)

    transmission = harness.transmission()
    tid = transmission.add(torrent)
    transmission.wait_downloading(tid)
    seed.connect(seed_handle, transmission.peer_address)

    aria2_out = harness.path("aria2-out")
    aria2 = harness.aria2(torrent, aria2_out)
    rc = aria2.wait_done(context=harness.describe)
    assert rc == 0, f"aria2c exited with {rc}\n" + harness.describe()
    transmission.wait_complete(tid, TRANSMISSION_TRANSFER_TIMEOUT, context=harness.describe)

    assert_tree(payload.multi_sha256, aria2_out / torrent.name, harness)
    assert_tree(payload.multi_sha256, transmission.download_dir / torrent.name, harness)
