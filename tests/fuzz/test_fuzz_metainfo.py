"""Fuzz the .torrent and magnet parsers (bridge/proto/metainfo.py): only MetainfoError may escape."""

from __future__ import annotations

import hashlib
import os

from fuzz_support import DEADLINE, SUPPRESS, check, mutated, mutated_text
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import MetainfoError
from bridge.proto import bencode
from bridge.proto.metainfo import (
    Magnet,
    build_info,
    build_torrent,
    parse_hostport,
    parse_info,
    parse_info_hash,
    parse_magnet,
    parse_torrent,
)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=DEADLINE, suppress_health_check=SUPPRESS)
ERR = (MetainfoError,)

names = st.text(st.characters(blacklist_characters="/\\\x00", blacklist_categories=("Cs",)), min_size=1,
                max_size=12).filter(lambda s: s not in (".", "..") and not (len(s) >= 2 and s[1] == ":"))
urls = st.sampled_from(["http://t.example/announce", "udp://1.2.3.4:6969", "wss://t.example", "http://[::1]:80/a"])


@st.composite
def torrents(draw: st.DrawFn) -> bytes:
    piece_length = draw(st.sampled_from([16384, 32768, 1 << 20]))
    if draw(st.booleans()):
        files: int | list[tuple[list[str], int]] = draw(st.integers(1, 5 * piece_length))
        total = files
    else:
        parts = draw(st.lists(st.lists(names, min_size=1, max_size=3), min_size=1, max_size=4, unique_by=tuple))
        # a file may not also be a folder: make every path unique by its first part
        files = [([f"{i}{p[0]}", *p[1:]], draw(st.integers(0, 2 * piece_length))) for i, p in enumerate(parts)]
        total = sum(n for _, n in files) or 1
        if not sum(n for _, n in files):
            files[0] = (files[0][0], 1)
    pieces = b"\x11" * 20 * (-(-total // piece_length))
    info = build_info(draw(names), files, piece_length, pieces, private=draw(st.booleans()))
    return build_torrent(info, trackers=draw(st.lists(st.lists(urls, min_size=1, max_size=2), max_size=2)),
                         url_list=draw(st.lists(urls, max_size=2)), comment=draw(st.text(max_size=20)),
                         creation_date=1)


def _info_of(torrent: bytes) -> bytes:
    return bencode.encode(bencode.decode(torrent)[b"info"])


magnets = st.builds(
    lambda ih, name, tr, peers: Magnet(info_hash=ih, name=name, trackers=tuple(tr), webseeds=(), sources=(),
                                       peers=tuple(peers)).to_uri(),
    st.binary(min_size=20, max_size=20), st.text(max_size=20), st.lists(urls, max_size=3, unique=True),
    st.lists(st.tuples(st.sampled_from(["1.2.3.4", "::1", "host"]), st.integers(1, 65535)), max_size=3),
)


@FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_torrent_bytes(data: bytes) -> None:
    check(parse_torrent, data, allowed=ERR)
    check(parse_info, data, allowed=ERR)


@FUZZ
@given(mutated(torrents()))
def test_fuzz_torrent_mutated(data: bytes) -> None:
    result = check(parse_torrent, data, allowed=ERR)
    if not isinstance(result, BaseException):
        assert result.info.info_hash == hashlib.sha1(result.info.raw).digest()
        assert sum(f.length for f in result.info.files) == result.info.total_length


@FUZZ
@given(mutated(torrents().map(_info_of)), st.booleans())
def test_fuzz_info_mutated(data: bytes, with_hash: bool) -> None:
    check(parse_info, data, hashlib.sha1(data).digest() if with_hash else None, allowed=ERR)


@FUZZ
@given(st.one_of(st.text(max_size=300), st.text(max_size=40).map(lambda s: "magnet:?" + s), mutated_text(magnets)))
def test_fuzz_magnet(uri: str) -> None:
    check(parse_magnet, uri, allowed=ERR)


@FUZZ
@given(st.one_of(st.text(max_size=60), mutated_text(st.sampled_from(["1.2.3.4:80", "[::1]:6881", "h:1"]))))
def test_fuzz_hostport(text: str) -> None:
    result = check(parse_hostport, text, allowed=ERR)
    if not isinstance(result, BaseException):
        assert 0 < result[1] < 65536


@FUZZ
@given(st.one_of(st.text(min_size=30, max_size=42), st.text(max_size=50),
                 mutated_text(st.binary(min_size=20, max_size=20).map(bytes.hex), max_ops=2)))
def test_fuzz_info_hash(text: str) -> None:
    result = check(parse_info_hash, text, allowed=ERR)
    if not isinstance(result, BaseException):
        assert len(result) == 20
