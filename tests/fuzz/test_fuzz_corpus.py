"""Replay every file in tests/fuzz/corpus against its parser. The file name's prefix names the parser
(``bencode-*.bin``, ``tracker-http-*.txt`` ...; see REPLAY). A crasher found by a harness goes here; while
the bug is open its entry in KNOWN_BUGS makes the replay a strict xfail, so fixing it turns the test red
until the entry is removed.

``api-*`` files hold the Content-Type on the first line and the body after it. ``*.txt`` files are decoded
as UTF-8 with surrogate escapes, as aiohttp's pure-Python HTTP parser decodes a request target."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from fuzz_support import check
from test_fuzz_api import Api

from bridge.errors import BencodeError, MetainfoError, RemoteProtocolError, TrackerError
from bridge.proto import bencode, extension, mse, tracker, utp, wstracker
from bridge.proto.metainfo import parse_hostport, parse_info, parse_info_hash, parse_magnet, parse_torrent
from bridge.proto.wire import Wire
from bridge.server.ranges import RangeNotSatisfiable, parse_range
from bridge.settings import SettingsError, resolve
from bridge.tracker import codec

CORPUS = Path(__file__).parent / "corpus"

#: corpus file name -> (what it raises today, why); each one reported with its traceback when found
KNOWN_BUGS: dict[str, tuple[type[BaseException], str]] = {
    # Empty: the crashers found so far are fixed (tracker query surrogates, API bodies aiohttp cannot
    # read); their files stay in the corpus as regression tests.
}


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _bencode(data: bytes) -> None:
    for fn in (bencode.decode, bencode.decode_prefix, bencode.decode_with_spans):
        check(fn, data, allowed=(BencodeError,))


def _torrent(data: bytes) -> None:
    check(parse_torrent, data, allowed=(MetainfoError,))
    check(parse_info, data, allowed=(MetainfoError,))


def _magnet(data: bytes) -> None:
    for fn in (parse_magnet, parse_hostport, parse_info_hash):
        check(fn, _text(data), allowed=(MetainfoError,))


def _wire(data: bytes) -> None:
    check(Wire().receive_data, data, allowed=(RemoteProtocolError,))


def _extension(data: bytes) -> None:
    for fn in (extension.decode_handshake, extension.decode_metadata, extension.decode_pex):
        check(fn, data, allowed=(RemoteProtocolError,))


def _utp(data: bytes) -> None:
    check(utp.parse_header, data, allowed=())
    check(utp.UtpConnection.accept, data, 0.0, random.Random(0), allowed=(RemoteProtocolError,))
    conn = utp.UtpConnection.connect(0.0, random.Random(0))
    check(conn.receive_datagram, data, 0.1, allowed=())


def _mse(data: bytes) -> None:
    resp = mse.MseResponder(lambda _: None, random.Random(0).randbytes)
    check(resp.receive_data, data, allowed=(RemoteProtocolError,))
    ini = mse.MseInitiator(bytes(20), b"", random.Random(0).randbytes)
    check(ini.receive_data, data, allowed=(RemoteProtocolError,))


def _tracker_client(data: bytes) -> None:
    check(tracker.parse_http_announce_response, data, allowed=(TrackerError,))
    check(tracker.parse_udp_connect_response, data, 0, allowed=(TrackerError,))
    check(tracker.parse_udp_announce_response, data, 0, allowed=(TrackerError,))


def _tracker_http(data: bytes) -> None:
    check(codec.parse_http_announce, _text(data), allowed=(TrackerError,))
    check(codec.parse_http_scrape, _text(data), allowed=(TrackerError,))


def _tracker_udp(data: bytes) -> None:
    check(codec.parse_udp_request, data, allowed=(TrackerError,))


def _wstracker(data: bytes) -> None:
    for d in (data, data.decode("utf-8", "replace")):
        check(wstracker.parse_client_message, d, json.loads, allowed=(TrackerError,))
        check(wstracker.parse_client_message, d, orjson.loads, allowed=(TrackerError,))
        check(wstracker.parse_tracker_message, d, allowed=(TrackerError,))


def _range(data: bytes) -> None:
    for size in (0, 1, 100, 2**63):
        check(parse_range, _text(data), size, allowed=(RangeNotSatisfiable,))


def _settings(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_bytes(data)
    check(resolve, {}, {}, str(path), allowed=(SettingsError,))


def _api(data: bytes) -> None:
    content_type, _, body = data.partition(b"\n")
    api = Api()
    try:
        status, reply = api.post(body, content_type.decode())
        assert status in (201, 400), (status, reply[:200], repr(api.catch.exc))
    finally:
        api.close()


REPLAY: dict[str, Callable[..., None]] = {
    "bencode-": _bencode, "torrent-": _torrent, "magnet-": _magnet, "wire-": _wire, "extension-": _extension,
    "utp-": _utp, "mse-": _mse, "tracker-client-": _tracker_client, "tracker-http-": _tracker_http,
    "tracker-udp-": _tracker_udp, "wstracker-": _wstracker, "range-": _range, "settings-": _settings, "api-": _api,
}


def _params() -> list[object]:
    out = []
    for f in sorted(CORPUS.iterdir()):
        if f.name.startswith(".") or f.name == "README.md":
            continue
        marks = []
        if f.name in KNOWN_BUGS:
            raises, reason = KNOWN_BUGS[f.name]
            marks = [pytest.mark.xfail(strict=True, raises=raises, reason=reason)]
        out.append(pytest.param(f, marks=marks, id=f.name))
    return out


def test_fuzz_corpus_names_are_known() -> None:
    for f in CORPUS.iterdir():
        if not f.name.startswith(".") and f.name != "README.md":
            assert any(f.name.startswith(p) for p in REPLAY), f"{f.name}: no parser prefix ({', '.join(REPLAY)})"
    assert set(KNOWN_BUGS) <= {f.name for f in CORPUS.iterdir()}


@pytest.mark.filterwarnings("ignore::RuntimeWarning:aiohttp.multipart")
@pytest.mark.parametrize("path", _params())
def test_fuzz_corpus_replay(path: Path, tmp_path: Path) -> None:
    # the longest matching prefix wins (tracker-http- over tracker-)
    prefix = max((p for p in REPLAY if path.name.startswith(p)), key=len, default=None)
    assert prefix is not None, f"{path.name}: no parser prefix"
    fn = REPLAY[prefix]
    if prefix == "settings-":
        fn(path.read_bytes(), tmp_path)
    else:
        fn(path.read_bytes())
