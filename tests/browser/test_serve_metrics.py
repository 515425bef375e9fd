"""`serve --tracker` relays a libtorrent (TCP-only) torrent to WebTorrent in Chromium; /metrics, read with
prometheus-client's own parser, shows the bytes relayed classic -> web and the peers by kind."""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path

import peers
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_serve import Serve
from test_webtorrent_bridge import wt_page  # noqa: F401  (a fixture)


def metrics(s: Serve) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    import urllib.request

    req = urllib.request.Request(s.url + "/metrics", headers={"Authorization": f"Bearer {s.token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_serve_relays_classic_to_web_and_metrics_show_it(tmp_path: Path, wt_page) -> None:  # noqa: F811
    harness = peers.Harness(tmp_path / "harness")
    src = tmp_path / "src" / "relay.bin"
    src.parent.mkdir(parents=True)
    data = bytes(range(256)) * 12000
    src.write_bytes(data)
    try:
        torrent = harness.torrent(src, piece_length=64 * 1024)
        seed = harness.libtorrent(name="lt-tcp-seed")  # TCP only, no ws tracker: browsers cannot reach it
        seed.add_seed(torrent, src.parent)
        s = Serve(tmp_path, "--tracker", "--tracker-port", "0", "--webrtc-host", "127.0.0.1", webrtc=True)
        try:
            status, t = s.call("POST", "/api/v1/torrents", {
                "torrent": base64.b64encode(torrent.path.read_bytes()).decode(), "peers": [seed.address]})
            assert status == 201, t
            s.wait(torrent.info_hash_hex, lambda t: t["state"] == "seeding", "the bridge's download")
            ws = s.call("GET", "/api/v1/stats")[1]["tracker"]
            assert ws and ws.startswith("ws://"), ws
            magnet = f"magnet:?xt=urn:btih:{torrent.info_hash_hex}&dn=relay.bin"
            files = await wt_page.evaluate("([m, a]) => window.download(m, a)", [magnet, [ws]])
            assert files == [{"name": "relay.bin", "sha256": hashlib.sha256(data).hexdigest()}], s.logs()
            deadline = time.monotonic() + 10
            while True:
                m = metrics(s)
                relayed = m[("bridge_relayed_bytes_total", (("direction", "classic_to_web"),))]
                if relayed >= len(data) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert relayed >= len(data), (m, s.logs())
            assert m[("bridge_payload_downloaded_bytes_total", (("kind", "tcp"),))] >= len(data)
            assert m[("bridge_payload_uploaded_bytes_total", (("kind", "webrtc"),))] >= len(data)
            assert m[("bridge_torrents", (("state", "seeding"),))] == 1
            assert ("bridge_tracker_announces_total", (("result", "ok"),)) in m
        finally:
            assert s.stop() == 0, s.logs()
    finally:
        harness.close()


def test_metrics_need_the_token(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    s = Serve(tmp_path)
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(s.url + "/metrics", timeout=10)
        assert e.value.code == 401
        assert ("bridge_hash_failures_total", ()) in metrics(s)
    finally:
        assert s.stop() == 0
