"""uTP (BEP 29) against real libutp peers on loopback, with TCP turned off on both sides.

libtorrent (PyPI wheel) is set to uTP only; qBittorrent-nox (libtorrent 2.0 inside, Debian) runs with
``Session\\BTProtocol=UTP``. The bridge runs with ``--no-tcp``. Every file is checked by SHA-256, and the
bridge's log must show the connection was uTP.
"""

from __future__ import annotations

import pytest
from peers import Harness, Payload, copy_tree, describe_tree_mismatch, tree_sha256

pytestmark = pytest.mark.interop

#: libtorrent with TCP off both ways and uTP on, with socket buffers that do not drop packets.
UTP_ONLY = {
    "enable_outgoing_tcp": False,
    "enable_incoming_tcp": False,
    "enable_outgoing_utp": True,
    "enable_incoming_utp": True,
    "recv_socket_buffer_size": 4 * 1024 * 1024,
    "send_socket_buffer_size": 4 * 1024 * 1024,
}


def assert_tree(expected: dict[str, str], root, harness: Harness) -> None:
    actual = tree_sha256(root)
    assert actual == expected, describe_tree_mismatch(expected, actual, root) + "\n" + harness.bridge_logs()


def test_bridge_downloads_from_a_utp_only_libtorrent_seed(harness: Harness, payload: Payload) -> None:
    torrent = harness.torrent(payload.multi)
    seed = harness.libtorrent(name="lt-utp-seed", settings=UTP_ONLY)
    seed.add_seed(torrent, payload.base)
    out = harness.path("bridge-out")
    bridge = harness.bridge_download(torrent, out, peers=[seed.address], extra=["--no-tcp", "-v"])
    rc = bridge.wait_exit()
    assert rc == 0, f"bridge download exited with {rc}\n" + bridge.log_excerpt()
    assert_tree(payload.multi_sha256, out / torrent.name, harness)
    assert "connected (utp" in bridge.stderr_text(), bridge.log_excerpt()


def test_utp_only_libtorrent_downloads_from_the_bridge(harness: Harness, payload: Payload) -> None:
    torrent = harness.torrent(payload.multi)
    data = harness.path("bridge-data")
    copy_tree(payload.multi, data)
    bridge = harness.bridge_seed(torrent, data, extra=["--no-tcp", "-v"])
    host, port = bridge.wait_listening()
    leech = harness.libtorrent(name="lt-utp-leech", settings=UTP_ONLY)
    out = harness.path("lt-out")
    handle = leech.add(torrent, out)
    leech.wait_complete(handle, reconnect=[f"{host}:{port}"], context=harness.bridge_logs)
    assert_tree(payload.multi_sha256, out / torrent.name, harness)
    rc = bridge.stop_cleanly()
    assert rc == 0, bridge.log_excerpt()
    uploaded, _ = bridge.stats()
    assert uploaded >= torrent.total_size, bridge.log_excerpt()
    assert "connected (utp" in bridge.stderr_text(), bridge.log_excerpt()
