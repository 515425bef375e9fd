"""Magnet links (BEP 9), the extension protocol (BEP 10), PEX (BEP 11) and the fast extension
(BEP 6) between the bridge and real clients, over TCP on loopback.

Torrents are made by libtorrent, never by the bridge; every transferred file is checked by
SHA-256 against the source data. libtorrent runs in-process, each session on its own 127.0.0.N
(``peers_ext.ExtLibtorrentPeer``); Transmission 3 runs as a daemon (it never dials loopback
peers, so the bridge dials it). DHT, LSD, UPnP and NAT-PMP are off everywhere; PEX is on only in
the PEX test.

Typical durations on an idle 2-core machine: a few seconds per test, 10-20 s for the Transmission
one. Every wait is bounded.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from peers import (
    STARTUP_TIMEOUT,
    TRANSFER_TIMEOUT,
    TRANSMISSION_TRANSFER_TIMEOUT,
    BridgeProcess,
    Harness,
    Payload,
    TorrentFile,
    copy_tree,
    describe_tree_mismatch,
    require_libtorrent,
    sha256_file,
    tree_sha256,
)
from peers_ext import (
    ExtLibtorrentPeer,
    Message,
    RawPeer,
    bdecode,
    ext_libtorrent,
    reserved_bits,
    wait_until,
)

pytestmark = pytest.mark.interop

#: Bound for the bridge and a libtorrent leecher to become connected through PEX (the bridge sends
#: its first PEX message about a second after the peer's extended handshake).
PEX_TIMEOUT = 90.0
#: Upload cap of the PEX test's libtorrent seed: the bridge must still be downloading from it
#: (a seed drops a seed) while the second libtorrent joins, so the 9 MiB take ~18 s.
PEX_SEED_UPLOAD_LIMIT = 512 * 1024


# --------------------------------------------------------------------------------------------
# Helpers


def magnet_of(torrent: TorrentFile) -> str:
    """A magnet link with nothing but the v1 info-hash: no name, tracker or peer address."""
    return f"magnet:?xt=urn:btih:{torrent.info_hash_hex}"


def bridge_magnet_download(harness: Harness, magnet: str, out: Path, peers: list[str], *extra: str,
                           verbosity: str = "-v") -> BridgeProcess:
    args: list[str | Path] = [verbosity, "download", magnet, "-o", out, "--host", "127.0.0.1", "--port", "0"]
    for p in peers:
        args += ["--peer", p]
    args += list(extra)
    return harness.bridge(*args)


def bridge_seed(harness: Harness, torrent: TorrentFile, payload_dir: Path, *extra: str,
                verbosity: str = "-v") -> tuple[BridgeProcess, str]:
    """``bridge seed TORRENT -o DIR`` on a private copy of the data; returns it and HOST:PORT."""
    data = harness.path("bridge-data")
    copy_tree(payload_dir, data)
    bridge = harness.bridge(verbosity, "seed", torrent.path, "-o", data, "--host", "127.0.0.1", "--port", "0",
                            *extra, name="bridge-seed")
    host, port = bridge.wait_listening()
    # The magnet line comes once the data is verified: from then on it serves.
    wait_until(lambda: "magnet:?" in bridge.stdout_text() or not bridge.running(), STARTUP_TIMEOUT,
               "the seeding bridge to print its magnet link", context=bridge.log_excerpt)
    assert bridge.running(), "bridge seed exited\n" + bridge.log_excerpt()
    assert f"xt=urn:btih:{torrent.info_hash_hex}" in bridge.magnet().lower(), (
        f"bridge magnet {bridge.magnet()} does not carry {torrent.info_hash_hex}")
    return bridge, f"{host}:{port}"


def assert_tree(expected: dict[str, str], root: Path, harness: Harness) -> None:
    actual = tree_sha256(root)
    assert actual == expected, describe_tree_mismatch(expected, actual, root) + "\n" + harness.bridge_logs()


def assert_download_exit(bridge: BridgeProcess, torrent: TorrentFile, timeout: float = TRANSFER_TIMEOUT) -> None:
    rc = bridge.wait_exit(timeout)
    assert rc == 0, f"bridge download exited with {rc}\n" + bridge.log_excerpt()
    _, downloaded = bridge.stats()
    assert downloaded >= torrent.total_size, (
        f"bridge reports downloaded={downloaded} for a {torrent.total_size}-byte torrent\n" + bridge.log_excerpt())


def assert_saved_torrent(out: Path, torrent: TorrentFile, bridge: BridgeProcess) -> None:
    """--save-torrent wrote OUT/<name>.torrent, whose info dictionary is the magnet's."""
    lt = require_libtorrent()
    saved = out / f"{torrent.name}.torrent"
    assert saved.is_file(), f"--save-torrent wrote no {saved}: {sorted(p.name for p in out.iterdir())}\n" \
        + bridge.log_excerpt()
    ti = lt.torrent_info(str(saved))
    got = ti.info_hashes().v1.to_bytes().hex()
    assert got == torrent.info_hash_hex, (
        f"{saved} has info-hash {got}, the magnet has {torrent.info_hash_hex}\n" + bridge.log_excerpt())
    assert ti.num_files() == torrent.num_files and ti.total_size() == torrent.total_size
    assert "metadata verified" in bridge.stderr_text(), (
        "the bridge did not log 'metadata verified'\n" + bridge.log_excerpt())


def stop_seed(bridge: BridgeProcess) -> tuple[int, int]:
    rc = bridge.stop_cleanly()
    assert rc == 0, f"bridge exited with {rc} after SIGINT\n" + bridge.log_excerpt()
    return bridge.stats()


def describe_peers(peer: ExtLibtorrentPeer, handle: object) -> str:
    rows = []
    for p in peer.peers_of(handle):
        rows.append(f"  {p.ip[0]}:{p.ip[1]} pid={bytes(p.pid.to_bytes())[:8]!r} client={p.client!r} "
                    f"source={p.source} flags={p.flags}")
    return f"{peer.name} ({peer.address}) peers:\n" + ("\n".join(rows) or "  (none)")


# --------------------------------------------------------------------------------------------
# 1, 2: the bridge downloads from a magnet link


def test_bridge_magnet_download_from_libtorrent(harness: Harness, payload: Payload) -> None:
    """``download MAGNET --peer SEED --save-torrent``: the bridge gets nothing but the info-hash,
    fetches and verifies the metadata from libtorrent (BEP 9), downloads the 32 MiB multi-file
    tree, and saves a .torrent whose info-hash is the magnet's."""
    torrent = harness.torrent(payload.multi)
    seed = ext_libtorrent(harness, "lt-seed")
    seed_handle = seed.add_seed(torrent, payload.base)

    out = harness.path("bridge-out")
    bridge = bridge_magnet_download(harness, magnet_of(torrent), out, [seed.address], "--save-torrent")
    assert_download_exit(bridge, torrent)

    assert_tree(payload.multi_sha256, out / torrent.name, harness)
    assert_saved_torrent(out, torrent, bridge)
    seed.pump_alerts()
    uploaded, _ = seed.totals(seed_handle)
    assert uploaded >= torrent.total_size, f"libtorrent uploaded only {uploaded} bytes\n" + harness.describe()


def test_bridge_magnet_download_keeps_the_metadata_connection(harness: Harness, payload: Payload) -> None:
    """"fetches metadata, then downloads on the same connections": with one --peer, the seed must
    see exactly one connection from the bridge. (A second dial to a peer already connected is
    wasted, and libtorrent then closes one of the two as a duplicate peer-id.)"""
    torrent = harness.torrent(payload.single)
    seed = ext_libtorrent(harness, "lt-seed")
    seed.add_seed(torrent, payload.base)

    out = harness.path("bridge-out")
    bridge = bridge_magnet_download(harness, magnet_of(torrent), out, [seed.address])
    assert_download_exit(bridge, torrent)
    assert sha256_file(out / torrent.name) == payload.single_sha256, "wrong content\n" + bridge.log_excerpt()

    seed.pump_alerts()
    incoming = [m for n, m in seed.alerts if n == "incoming_connection_alert"]
    closed = [m for n, m in seed.alerts if n == "peer_disconnected_alert"]
    assert len(incoming) == 1, (
        f"the libtorrent seed accepted {len(incoming)} connections from the bridge, expected 1 (the metadata "
        f"connection, reused for the data):\n  " + "\n  ".join(incoming + closed) + "\n" + bridge.log_excerpt())


def test_bridge_magnet_download_from_transmission(harness: Harness, payload: Payload) -> None:
    """The same against Transmission 3 seeding (it serves the metadata; the bridge dials it)."""
    torrent = harness.torrent(payload.multi)
    transmission = harness.transmission()
    tid = transmission.add(torrent, payload.base)
    transmission.wait_seeding(tid)

    out = harness.path("bridge-out")
    bridge = bridge_magnet_download(harness, magnet_of(torrent), out, [transmission.peer_address],
                                    "--save-torrent")
    assert_download_exit(bridge, torrent, TRANSMISSION_TRANSFER_TIMEOUT)

    assert_tree(payload.multi_sha256, out / torrent.name, harness)
    assert_saved_torrent(out, torrent, bridge)


# --------------------------------------------------------------------------------------------
# 3: the bridge serves the metadata


def test_libtorrent_magnet_download_from_bridge_seed(harness: Harness, payload: Payload) -> None:
    """libtorrent is given only a magnet link (``lt.parse_magnet_uri``) and the bridge seed's
    address: the bridge must serve the metadata (ut_metadata), then the data."""
    torrent = harness.torrent(payload.multi)
    bridge, address = bridge_seed(harness, torrent, payload.multi)

    leech = ext_libtorrent(harness, "lt-leech", peer_log=True)
    out = harness.path("lt-out")
    handle = leech.add_magnet(magnet_of(torrent), out)
    assert not handle.status().has_metadata
    ti = leech.wait_metadata(handle, reconnect=[address], context=harness.bridge_logs)
    assert ti.info_hashes().v1.to_bytes() == torrent.info_hash, "libtorrent accepted metadata of another torrent"
    assert ti.num_files() == torrent.num_files and ti.total_size() == torrent.total_size
    got_metadata = leech.log_lines("<== UT_METADATA", "type: 1 ")
    assert got_metadata, ("libtorrent logged no ut_metadata data message from the bridge\n"
                          + "\n".join(leech.peer_log_lines[-40:]))
    assert leech.count_alerts("metadata_received_alert") == 1, leech.log_excerpt()

    leech.wait_complete(handle, reconnect=[address], context=harness.bridge_logs)
    assert_tree(payload.multi_sha256, out / torrent.name, harness)
    uploaded, _ = stop_seed(bridge)
    assert uploaded >= torrent.total_size, f"bridge reports uploaded={uploaded}\n" + bridge.log_excerpt()


# --------------------------------------------------------------------------------------------
# 4: PEX


def test_pex_through_the_bridge_connects_two_libtorrents(harness: Harness, payload: Payload) -> None:
    """libtorrent A seeds (PEX on); the bridge downloads from A (``--peer A --seed``); libtorrent
    B (PEX on) is told only the bridge's address. B and A can only meet through the bridge's
    ut_pex messages (no tracker, DHT or LSD anywhere): the test waits until one of them has
    completed a BitTorrent handshake with the other.

    Each libtorrent dials from its own 127.0.0.N, so the bridge learns B's real listen address and
    both of them may dial each other at once; libtorrent then drops both connections as a
    duplicate peer-id and waits a minute. So "connected" is read from libtorrent's peer log (a
    handshake with the other's peer id received), not only from a peer list polled later."""
    torrent = harness.torrent(payload.single)
    a = ext_libtorrent(harness, "lt-A", pex=True, peer_log=True)
    a_handle = a.add_seed(torrent, payload.base, upload_limit=PEX_SEED_UPLOAD_LIMIT)

    bridge_out = harness.path("bridge-out")
    bridge = harness.bridge("-vv", "download", torrent.path, "-o", bridge_out, "--host", "127.0.0.1", "--port", "0",
                            "--peer", a.address, "--seed")
    host, port = bridge.wait_listening()
    bridge_address = f"{host}:{port}"

    def a_has_bridge() -> bool:  # nobody else knows A yet
        a.pump_alerts()
        return bool(a.peers_of(a_handle))

    wait_until(a_has_bridge, STARTUP_TIMEOUT, "the bridge to connect to libtorrent A",
               context=lambda: harness.bridge_logs() + "\n" + a.log_excerpt())
    assert bridge.running(), bridge.log_excerpt()

    b = ext_libtorrent(harness, "lt-B", pex=True, peer_log=True)
    assert b.ip != a.ip
    b_handle = b.add(torrent, harness.path("lt-B-out"))
    b.connect(b_handle, bridge_address)

    def met() -> str:
        a.pump_alerts()
        b.pump_alerts()
        for p in b.peers_of(b_handle):
            if (p.ip[0], p.ip[1]) == (a.ip, a.port):
                return f"B is connected to A's listen address {a.address} (peer source flags {p.source})"
        for p in a.peers_of(a_handle):
            if p.ip[0] == b.ip:
                return f"A is connected to B at {p.ip[0]}:{p.ip[1]}"
        seen = b.log_lines(f"peer {a.ip}:", "received peer_id") + a.log_lines(f"peer {b.ip}:", "received peer_id")
        if seen:
            return "handshake between A and B: " + seen[0]
        # B may have tried an encrypted handshake first, which the bridge refuses: redial it
        # (connect_peer is a no-op while connected).
        b.connect(b_handle, bridge_address)
        return ""

    def context() -> str:
        return "\n".join([
            describe_peers(a, a_handle), describe_peers(b, b_handle),
            "B's PEX log lines:", *b.log_lines("PEX"), "A's PEX log lines:", *a.log_lines("PEX"),
            harness.bridge_logs(), a.log_excerpt(), b.log_excerpt()])

    wait_until(met, PEX_TIMEOUT, "libtorrent A and B to connect to each other through the bridge's PEX",
               context=context, interval=0.1)
    # The introduction came from the bridge: B logged a ut_pex message on its connection to it.
    from_bridge = b.log_lines(f"peer {bridge_address} ", "<== PEX")
    assert from_bridge, "B logged no PEX message from the bridge\n" + context()
    # And the bridge told A about B (an incoming peer: its listen port comes from B's BEP 10 "p").
    wait_until(lambda: a.log_lines("<== PEX", "added: 1") or a.log_lines("<== PEX", "added: 2"), 10.0,
               "libtorrent A to get a PEX message adding B from the bridge", context=context)
    assert bridge.running(), "the bridge exited\n" + bridge.log_excerpt()


# --------------------------------------------------------------------------------------------
# 5: the fast extension


def _first_of(messages: list[Message], ids: set[int]) -> Message | None:
    return next((m for m in messages if m.msg_id in ids), None)


def test_fast_extension_with_bridge_seed(harness: Harness, payload: Payload) -> None:
    """BEP 6 with the bridge seeding. On a raw connection that sets reserved[7] & 0x04 the bridge
    sets it too and opens with have-all (no bitfield), answers a request made while choked with
    reject-request, and sends an extended handshake listing ut_metadata, ut_pex and lt_donthave
    with the metadata size. Without the bit it sends a bitfield and no fast messages. Then
    libtorrent downloads from it over a connection where both sides set the bit (libtorrent's own
    log shows the bridge's FAST bit and HAVE_ALL)."""
    lt = require_libtorrent()
    torrent = harness.torrent(payload.multi)
    ti = lt.torrent_info(str(torrent.path))
    num_pieces = ti.num_pieces()
    bridge, address = bridge_seed(harness, torrent, payload.multi, verbosity="-vv")

    # -- a raw peer with the fast extension
    with RawPeer(address) as raw:
        reserved, info_hash, peer_id = raw.handshake(torrent.info_hash, reserved_bits(extensions=True, fast=True))
        assert info_hash == torrent.info_hash
        assert peer_id != b"\0" * 20
        assert reserved[7] & 0x04, f"the bridge's handshake reserved bytes {reserved.hex()} lack the fast bit"
        assert reserved[5] & 0x10, f"the bridge's handshake reserved bytes {reserved.hex()} lack BEP 10"
        opening = [m for m in raw.read_opening() if m.msg_id >= 0]
        names = [m.name for m in opening]
        assert opening, "the bridge sent nothing after the handshake\n" + bridge.log_excerpt()
        state = [m for m in opening if m.msg_id in (4, 5, 14, 15)]
        assert state and state[0].msg_id == 14, (
            f"a complete seed must open with have-all under BEP 6; the bridge sent {names}\n" + bridge.log_excerpt())
        assert len(state) == 1 and state[0].payload == b"", f"bridge opening messages: {names}"
        # BEP 6: have-all comes right after the handshake; only the BEP 10 handshake may precede it.
        before = opening[: opening.index(state[0])]
        assert all(m.msg_id == 20 and m.payload[:1] == b"\0" for m in before), f"bridge opening messages: {names}"
        ext = [m for m in opening if m.msg_id == 20 and m.payload[:1] == b"\0"]
        assert len(ext) == 1, f"expected one extended handshake, got {names}"
        hs = bdecode(ext[0].payload[1:])
        m_dict = {k.decode(): v for k, v in hs[b"m"].items()}
        for name in ("ut_metadata", "ut_pex", "lt_donthave"):
            assert m_dict.get(name), f"extended handshake m={m_dict} lacks {name}"
        info_size = len(ti.info_section())
        assert hs.get(b"metadata_size") == info_size, f"metadata_size {hs.get(b'metadata_size')} != {info_size}"
        assert b"v" in hs and hs.get(b"reqq", 0) > 0, f"extended handshake {hs}"

        # Our side: have-none (legal only with the fast extension), then a request while choked.
        raw.send(15)
        unchoked = any(m.msg_id == 1 for m in opening)
        raw.send(6, struct.pack(">III", 0, 0, 16384))
        reply = None
        for _ in range(50):
            msg = raw.read_message(timeout=5.0)
            if msg is None:
                break
            if msg.msg_id == 1:
                unchoked = True
            if msg.msg_id in (7, 16) and msg.payload[:8] == struct.pack(">II", 0, 0):
                reply = msg
                break
        assert reply is not None, (f"no reply to a request while choked (got {[m.name for m in raw.received]})\n"
                                   + bridge.log_excerpt())
        if not unchoked:
            assert reply.msg_id == 16 and reply.payload == struct.pack(">III", 0, 0, 16384), (
                f"a request while choked must get reject-request under BEP 6, got {reply.name}")

    # -- a raw peer without it: a bitfield and no BEP 6 message
    with RawPeer(address) as raw:
        reserved, info_hash, _ = raw.handshake(torrent.info_hash, reserved_bits(extensions=True, fast=False))
        assert info_hash == torrent.info_hash
        opening = [m for m in raw.read_opening() if m.msg_id >= 0]
        names = [m.name for m in opening]
        fast_msgs = [m.name for m in opening if m.msg_id in (13, 14, 15, 16, 17)]
        assert not fast_msgs, f"the bridge sent {fast_msgs} to a peer without the fast extension ({names})"
        bitfield = _first_of(opening, {5})
        assert bitfield is not None, f"no bitfield for a non-fast peer: {names}\n" + bridge.log_excerpt()
        expected = bytearray(b"\xff" * ((num_pieces + 7) // 8))
        if num_pieces % 8:
            expected[-1] = (0xFF << (8 - num_pieces % 8)) & 0xFF
        assert bitfield.payload == bytes(expected), "the bridge's bitfield is not 'all pieces'"

    # -- a raw peer with the fast bit but without BEP 10: no extended message at all
    with RawPeer(address) as raw:
        raw.handshake(torrent.info_hash, reserved_bits(extensions=False, fast=True))
        opening = [m for m in raw.read_opening() if m.msg_id >= 0]
        names = [m.name for m in opening]
        assert opening and opening[0].msg_id == 14, f"expected have-all first, got {names}"
        assert not any(m.msg_id == 20 for m in opening), (
            f"the bridge sent an extended message to a peer without the BEP 10 bit: {names}")

    # -- libtorrent, fast extension on both sides
    leech = ext_libtorrent(harness, "lt-leech", peer_log=True)
    out = harness.path("lt-out")
    handle = leech.add(torrent, out)
    leech.wait_complete(handle, reconnect=[address], context=harness.bridge_logs)
    assert_tree(payload.multi_sha256, out / torrent.name, harness)

    peer_log = "\n".join(leech.peer_log_lines[-60:])
    ext_lines = leech.log_lines(address, "<== EXTENSIONS")
    assert ext_lines and all("FAST" in line for line in ext_lines), (
        f"libtorrent did not see the fast bit in the bridge's handshake:\n{peer_log}")
    assert leech.log_lines(address, "==> EXTENSIONS"), peer_log
    assert leech.log_lines(address, "<== HAVE_ALL"), f"libtorrent got no HAVE_ALL from the bridge:\n{peer_log}"
    assert not leech.log_lines(address, "<== BITFIELD"), f"the bridge sent libtorrent a bitfield:\n{peer_log}"
    assert leech.log_lines(address, "==> HAVE_NONE"), (
        f"libtorrent did not open with HAVE_NONE, so it did not treat the connection as fast:\n{peer_log}")
    assert leech.log_lines(address, "<== EXTENDED_HANDSHAKE"), peer_log
    uploaded, _ = stop_seed(bridge)
    assert uploaded >= torrent.total_size, f"bridge reports uploaded={uploaded}\n" + bridge.log_excerpt()
