"""Metainfo: .torrent parse/build/validate, info-hash over the bytes as received, file<->piece mapping, magnets."""

from __future__ import annotations

import base64
import hashlib
import math
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bridge.errors import MetainfoError
from bridge.proto import bencode, metainfo
from bridge.proto.metainfo import (
    MAX_PATH_COMPONENT,
    MAX_PATH_DEPTH,
    MAX_PIECE_LENGTH,
    MAX_TOTAL_LENGTH,
    MAX_URL_LENGTH,
    FileEntry,
    InfoDict,
    Magnet,
    build_info,
    build_torrent,
    default_piece_length,
    format_hostport,
    parse_hostport,
    parse_info,
    parse_info_hash,
    parse_magnet,
    parse_torrent,
)

PL = 16 * 1024
HASH = bytes(range(20))


def sha1(data: bytes) -> bytes:
    return hashlib.sha1(data).digest()


def npieces(total: int, piece_length: int = PL) -> int:
    return math.ceil(total / piece_length)


def info_dict(**overrides: Any) -> dict[bytes, Any]:
    """A valid single-file info dict (3 pieces); ``None`` in overrides deletes a key."""
    d: dict[bytes, Any] = {
        b"name": b"file.bin",
        b"piece length": PL,
        b"pieces": bytes(60),
        b"length": 2 * PL + 5,
    }
    for k, v in overrides.items():
        key = k.replace("_", " ").encode()
        if v is None:
            d.pop(key, None)
        else:
            d[key] = v
    return d


def multi(files: list[tuple[list[bytes], int]], piece_length: int = PL, **extra: Any) -> dict[bytes, Any]:
    total = sum(n for _, n in files)
    d: dict[bytes, Any] = {
        b"name": b"folder",
        b"piece length": piece_length,
        b"pieces": bytes(20 * npieces(total, piece_length)),
        b"files": [{b"length": n, b"path": p} for p, n in files],
    }
    d.update({k.encode(): v for k, v in extra.items()})
    return d


_TOP_KEYS = {
    "announce_list": b"announce-list",
    "url_list": b"url-list",
    "created_by": b"created by",
    "creation_date": b"creation date",
}


def torrent_bytes(info: dict[bytes, Any] | bytes, **top: Any) -> bytes:
    """A .torrent with the given outer keys and the info bytes spliced in last, exactly as given."""
    raw = info if isinstance(info, bytes) else bencode.encode(info)
    head = bencode.encode({_TOP_KEYS.get(k, k.encode()): v for k, v in top.items()})
    # info goes last even where a key sorts after it: decoding accepts unsorted keys
    return head[:-1] + b"4:info" + raw + b"e"


# ------------------------------------------------------------------------------------ single-file


def test_parse_single_file() -> None:
    d = info_dict()
    raw = bencode.encode(d)
    mi = parse_torrent(torrent_bytes(raw, announce=b"http://t/announce", comment=b"hi", creation_date=7))
    info = mi.info
    assert info.name == "file.bin"
    assert not info.multi_file
    assert info.total_length == 2 * PL + 5
    assert info.num_pieces == 3
    assert info.piece_size(0) == PL and info.piece_size(2) == 5
    assert info.files == (FileEntry(("file.bin",), 2 * PL + 5, 0),)
    assert info.raw == raw
    assert mi.info_hash == info.info_hash == sha1(raw)
    assert mi.trackers == (("http://t/announce",),)
    assert mi.comment == "hi"
    assert mi.creation_date == 7
    assert not info.private


def test_build_and_parse_round_trip_single() -> None:
    pieces = bytes(range(60))
    info = build_info("movie.mkv", 2 * PL + 1, PL, pieces, private=True)
    assert info.private and info.pieces == pieces and info.piece_hash(1) == pieces[20:40]
    data = build_torrent(
        info,
        trackers=[["udp://a:1", "http://b/"], ["wss://c"]],
        url_list=["http://ws/"],
        comment="c",
        created_by="me",
        creation_date=99,
    )
    mi = parse_torrent(data)
    assert mi.info == info
    assert mi.info_hash == sha1(info.raw)
    assert mi.trackers == (("udp://a:1", "http://b/"), ("wss://c",))
    assert mi.url_list == ("http://ws/",)
    assert (mi.comment, mi.created_by, mi.creation_date) == ("c", "me", 99)
    top = bencode.decode(data)
    assert top[b"announce"] == b"udp://a:1"
    assert list(top) == sorted(top)  # the outer dict is canonical


def test_build_torrent_single_tracker_has_no_announce_list() -> None:
    info = build_info("x", 1, PL, bytes(20))
    top = bencode.decode(build_torrent(info, trackers=[["http://t/"]], creation_date=1))
    assert top[b"announce"] == b"http://t/" and b"announce-list" not in top


def test_build_torrent_default_creation_date_is_now() -> None:
    info = build_info("x", 1, PL, bytes(20))
    assert parse_torrent(build_torrent(info)).creation_date > 1_600_000_000


@pytest.mark.parametrize("text", ["4:infoi0e", "d4:infoi0ee", "x4:infoi0e4:infoi0e"])
def test_build_torrent_survives_marker_text_in_other_fields(text: str) -> None:
    info = build_info("x", 1, PL, bytes(20))
    data = build_torrent(
        info, trackers=[["http://t/" + text]], comment=text, created_by=text, url_list=["http://w/" + text]
    )
    mi = parse_torrent(data)
    assert mi.info == info
    assert mi.comment == text and mi.created_by == text
    assert mi.trackers == (("http://t/" + text,),)
    assert mi.url_list == ("http://w/" + text,)


# ------------------------------------------------------------------------------------- multi-file


def test_parse_multi_file() -> None:
    files = [([b"a.txt"], 10), ([b"sub", b"b.bin"], PL), ([b"empty"], 0), ([b"sub", b"deeper", b"c"], 3)]
    d = multi(files, private=1)
    info = parse_info(bencode.encode(d))
    assert info.multi_file and info.private
    assert info.total_length == 10 + PL + 3
    assert [f.path for f in info.files] == [
        ("folder", "a.txt"),
        ("folder", "sub", "b.bin"),
        ("folder", "empty"),
        ("folder", "sub", "deeper", "c"),
    ]
    assert [f.offset for f in info.files] == [0, 10, 10 + PL, 10 + PL]
    assert info.num_pieces == 2


def test_build_info_multi_round_trip() -> None:
    files = [(("a",), 5), (("d", "b"), PL * 2), (("d", "e", "f"), 1)]
    total = 5 + 2 * PL + 1
    info = build_info("top", files, PL, bytes(20 * npieces(total)))
    again = parse_info(info.raw, expected_hash=info.info_hash)
    assert again == info
    assert [f.path[1:] for f in info.files] == [p for p, _ in files]


def test_parse_info_expected_hash_mismatch() -> None:
    raw = bencode.encode(info_dict())
    with pytest.raises(MetainfoError, match="info"):
        parse_info(raw, expected_hash=bytes(20))
    assert parse_info(raw, expected_hash=sha1(raw)).info_hash == sha1(raw)


def test_utf8_variants_preferred_and_latin1_fallback() -> None:
    d = info_dict(name=b"bad", **{"name.utf-8": b"gut.bin"})
    assert parse_info(bencode.encode(d)).name == "gut.bin"
    d = info_dict(name=b"caf\xe9")  # latin-1 from an old client
    assert parse_info(bencode.encode(d)).name == "café"
    d = multi([([b"x"], 1)])
    d[b"files"][0][b"path.utf-8"] = [b"y"]
    assert parse_info(bencode.encode(d)).files[0].path == ("folder", "y")


def test_private_only_when_exactly_one() -> None:
    assert parse_info(bencode.encode(info_dict(private=1))).private
    assert not parse_info(bencode.encode(info_dict(private=2))).private
    assert not parse_info(bencode.encode(info_dict(private=b"1"))).private


# --------------------------------------------------------------------------------------- info-hash


def test_info_hash_is_over_unsorted_bytes_as_received() -> None:
    # keys deliberately out of order, written by hand: a re-encoding would sort them and change the hash
    raw = b"d6:lengthi20e4:name3:abc6:pieces20:" + HASH + b"12:piece lengthi16384e7:privatei0ee"
    assert bencode.encode(bencode.decode(raw)) != raw
    data = b"d8:announce12:http://t/ann13:creation datei1e4:info" + raw + b"e"
    mi = parse_torrent(data)
    assert mi.info.raw == raw
    assert mi.info_hash == sha1(raw)
    assert mi.info_hash != sha1(bencode.encode(bencode.decode(raw)))
    # build_torrent keeps those exact bytes
    assert parse_torrent(build_torrent(mi.info)).info_hash == sha1(raw)
    assert raw in build_torrent(mi.info)
    # the ut_metadata path agrees
    assert parse_info(raw, expected_hash=sha1(raw)).info_hash == mi.info_hash


def test_info_hash_unaffected_by_outer_keys() -> None:
    raw = bencode.encode(info_dict())
    a = parse_torrent(torrent_bytes(raw, announce=b"http://a/"))
    b = parse_torrent(torrent_bytes(raw, comment=b"other"))
    assert a.info_hash == b.info_hash == sha1(raw)


# -------------------------------------------------------------------------------------- validation


def refuse(d: dict[bytes, Any] | bytes, field: str) -> None:
    raw = d if isinstance(d, bytes) else bencode.encode(d)
    with pytest.raises(MetainfoError) as e:
        parse_info(raw)
    assert field in str(e.value), str(e.value)
    with pytest.raises(MetainfoError) as e:
        parse_torrent(torrent_bytes(raw))
    assert field in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"name": None}, "info.name"),
        ({"name": b".."}, "info.name"),
        ({"name": b"."}, "info.name"),
        ({"name": b""}, "info.name"),
        ({"name": b"a/b"}, "info.name"),
        ({"name": b"/etc"}, "info.name"),
        ({"name": b"a\\b"}, "info.name"),
        ({"name": b"C:\\x"}, "info.name"),
        ({"name": b"C:x"}, "info.name"),
        ({"name": b"a\x00b"}, "info.name"),
        ({"name": b"x" * (MAX_PATH_COMPONENT + 1)}, "info.name"),
        ({"name": 5}, "info.name"),
        ({"name": [b"a"]}, "info.name"),
        ({"piece_length": None}, "info.piece length"),
        ({"piece_length": 0}, "info.piece length"),
        ({"piece_length": -16384}, "info.piece length"),
        ({"piece_length": MAX_PIECE_LENGTH + 1}, "info.piece length"),
        ({"piece_length": b"16384"}, "info.piece length"),
        ({"pieces": None}, "info.pieces"),
        ({"pieces": 5}, "info.pieces"),
        ({"pieces": bytes(59)}, "info.pieces"),
        ({"pieces": bytes(61)}, "info.pieces"),
        ({"pieces": bytes(40)}, "info.pieces"),  # count mismatch: too few
        ({"pieces": bytes(80)}, "info.pieces"),  # count mismatch: too many
        ({"length": -1}, "info.length"),
        ({"length": MAX_TOTAL_LENGTH + 1}, "info.length"),
        ({"length": 2**80}, "info.length"),
        ({"length": b"5"}, "info.length"),
        ({"length": 0, "pieces": b""}, "total length is 0"),
        ({"length": None}, "exactly one of"),
        ({"files": [{b"length": 1, b"path": [b"a"]}]}, "exactly one of"),
    ],
)
def test_single_file_refusals(overrides: dict[str, Any], field: str) -> None:
    refuse(info_dict(**overrides), field)


@pytest.mark.parametrize(
    "parts,field",
    [
        ([b".."], "info.files[0].path"),
        ([b"a", b".."], "info.files[0].path"),
        ([b"."], "info.files[0].path"),
        ([b""], "info.files[0].path"),
        ([b"a", b""], "info.files[0].path"),
        ([], "info.files[0].path"),
        ([b"/etc/passwd"], "info.files[0].path"),
        ([b"/"], "info.files[0].path"),
        ([b"a/b"], "info.files[0].path"),
        ([b"a\\b"], "info.files[0].path"),
        ([b"..\\..\\x"], "info.files[0].path"),
        ([b"C:"], "info.files[0].path"),
        ([b"c:evil"], "info.files[0].path"),
        ([b"a\x00"], "info.files[0].path"),
        ([b"y" * (MAX_PATH_COMPONENT + 1)], "info.files[0].path"),
        ([b"d"] * (MAX_PATH_DEPTH + 1), "info.files[0].path"),
        ([5], "info.files[0].path"),
        (b"a", "info.files[0].path"),
    ],
)
def test_path_refusals(parts: Any, field: str) -> None:
    d = multi([([b"ok"], 1)])
    d[b"files"][0][b"path"] = parts
    refuse(d, field)


def test_path_limits_are_inclusive() -> None:
    ok = multi([([b"d"] * MAX_PATH_DEPTH, 1), ([b"y" * MAX_PATH_COMPONENT], 1)])
    assert parse_info(bencode.encode(ok)).num_pieces == 1


@pytest.mark.parametrize(
    "mutate,field",
    [
        (lambda d: d.__setitem__(b"files", []), "info.files"),
        (lambda d: d.__setitem__(b"files", b"x"), "info.files"),
        (lambda d: d.__setitem__(b"files", {b"a": 1}), "info.files"),
        (lambda d: d[b"files"].__setitem__(1, b"x"), "info.files[1]"),
        (lambda d: d[b"files"][1].pop(b"length"), "info.files[1].length"),
        (lambda d: d[b"files"][1].__setitem__(b"length", -1), "info.files[1].length"),
        (lambda d: d[b"files"][1].__setitem__(b"length", MAX_TOTAL_LENGTH + 1), "info.files[1].length"),
        (lambda d: d[b"files"][1].__setitem__(b"length", b"1"), "info.files[1].length"),
        (lambda d: d[b"files"][1].pop(b"path"), "info.files[1].path"),
        (lambda d: d[b"files"][1].__setitem__(b"path", [b"a"]), "info.files[1].path"),  # duplicate
        (lambda d: d[b"files"][1].__setitem__(b"path", [b"a", b"x"]), "info.files[1].path"),  # a is a file
        (lambda d: d.__setitem__(b"length", 5), "exactly one of"),
    ],
)
def test_multi_file_refusals(mutate: Any, field: str) -> None:
    d = multi([([b"a"], 1), ([b"b"], 1)])
    mutate(d)
    refuse(d, field)


def test_duplicate_paths_refused() -> None:
    refuse(multi([([b"x", b"y"], 1), ([b"z"], 1), ([b"x", b"y"], 1)]), "info.files[2].path")


def test_file_vs_folder_conflict_either_order() -> None:
    # file first, then a file below it
    refuse(multi([([b"a"], 1), ([b"a", b"b"], 1)]), "info.files[1].path")
    # folder first, then a file of the same name
    refuse(multi([([b"a", b"b"], 1), ([b"a"], 1)]), "info.files[1].path")
    # deeper: a/b/c then a/b
    refuse(multi([([b"a", b"b", b"c"], 1), ([b"z"], 1), ([b"a", b"b"], 1)]), "info.files[2].path")


def test_padding_files_may_repeat_but_not_escape() -> None:
    pad = {b"length": 3, b"path": [b".pad", b"3"], b"attr": b"p"}
    d = multi([([b"a"], 1), ([b"b"], 1)])
    d[b"files"] = [d[b"files"][0], pad, dict(pad), d[b"files"][1]]
    d[b"pieces"] = bytes(20)
    info = parse_info(bencode.encode(d))
    assert [f.padding for f in info.files] == [False, True, True, False]
    assert info.total_length == 8
    d[b"files"][1] = {b"length": 3, b"path": [b".."], b"attr": b"p"}
    refuse(d, "info.files[1].path")


def test_total_zero_multi() -> None:
    d = multi([([b"a"], 0), ([b"b"], 0)])
    refuse(d, "total length is 0")


def test_total_over_limit_across_files() -> None:
    half = MAX_TOTAL_LENGTH // 2 + 1
    d = multi([([b"a"], 1), ([b"b"], 1)], piece_length=MAX_PIECE_LENGTH)
    for f in d[b"files"]:
        f[b"length"] = half
    refuse(d, "info.files")


def test_too_many_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metainfo, "MAX_FILES", 3)
    refuse(multi([([b"%d" % i], 1) for i in range(4)]), "info.files")
    assert parse_info(bencode.encode(multi([([b"%d" % i], 1) for i in range(3)]))).num_pieces == 1


def test_too_large_info_and_torrent(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = bencode.encode(info_dict())
    monkeypatch.setattr(metainfo, "MAX_INFO_SIZE", len(raw) - 1)
    with pytest.raises(MetainfoError, match="info"):
        parse_info(raw)
    with pytest.raises(MetainfoError, match="info"):
        parse_torrent(torrent_bytes(raw))
    monkeypatch.setattr(metainfo, "MAX_INFO_SIZE", len(raw))
    data = torrent_bytes(raw)
    assert parse_torrent(data).info.raw == raw
    monkeypatch.setattr(metainfo, "MAX_TORRENT_SIZE", len(data) - 1)
    with pytest.raises(MetainfoError, match="torrent"):
        parse_torrent(data)


def test_real_size_limits_refuse_huge_input() -> None:
    with pytest.raises(MetainfoError, match="info"):
        parse_info(b"x" * (metainfo.MAX_INFO_SIZE + 1))


@pytest.mark.parametrize(
    "data,field",
    [
        (b"", "torrent"),
        (b"le", "torrent"),
        (b"d4:infoi1ee", "info"),
        (b"d8:announce1:xe", "info"),
        (b"d4:infod", "torrent"),
        (b"d4:infodee", "info.name"),
    ],
)
def test_torrent_level_refusals(data: bytes, field: str) -> None:
    with pytest.raises(MetainfoError, match=field.replace(".", r"\.")):
        parse_torrent(data)


def test_ignores_ill_typed_optional_outer_keys() -> None:
    raw = bencode.encode(info_dict())
    data = torrent_bytes(
        raw,
        announce=5,
        announce_list=[b"notatier", [7, b"", b"http://a/"], []],
        url_list=b"http://w/",
        comment=[1],
        created_by=3,
        creation_date=b"x",
    )
    mi = parse_torrent(data)
    assert mi.trackers == (("http://a/",),)
    assert mi.url_list == ("http://w/",)
    assert (mi.comment, mi.created_by, mi.creation_date) == ("", "", None)


def test_announce_list_supersedes_announce_and_dedupes() -> None:
    raw = bencode.encode(info_dict())
    mi = parse_torrent(
        torrent_bytes(
            raw,
            announce=b"http://solo/",
            announce_list=[[b"http://a/", b"http://a/"], [b"http://b/", b"http://a/"]],
        )
    )
    assert mi.trackers == (("http://a/",), ("http://b/",))
    mi = parse_torrent(
        torrent_bytes(raw, announce=b"  http://solo/  ", url_list=[b"http://w/", b"http://w/", b""])
    )
    assert mi.trackers == (("http://solo/",),)
    assert mi.url_list == ("http://w/",)
    long_url = b"http://x/" + b"a" * MAX_URL_LENGTH
    assert parse_torrent(torrent_bytes(raw, announce=long_url)).trackers == ()


# ------------------------------------------------------------------------------- file <-> piece maps


def make_info(lengths: list[int], piece_length: int) -> InfoDict:
    files = [((f"f{i}",), n) for i, n in enumerate(lengths)]
    return build_info("t", files, piece_length, bytes(20 * npieces(sum(lengths), piece_length)))


def test_file_slices_across_boundaries() -> None:
    info = make_info([10, 0, 5, 20], 16)
    assert list(info.file_slices(0, 35)) == [(0, 0, 10), (2, 0, 5), (3, 0, 20)]
    assert list(info.file_slices(8, 4)) == [(0, 8, 2), (2, 0, 2)]
    assert list(info.file_slices(10, 5)) == [(2, 0, 5)]
    assert list(info.file_slices(16, 16)) == [(3, 1, 16)]
    assert list(info.file_slices(34, 1)) == [(3, 19, 1)]
    assert list(info.file_slices(0, 0)) == []
    # past the end: only what exists
    assert list(info.file_slices(30, 100)) == [(3, 15, 5)]


def test_pieces_of_file() -> None:
    info = make_info([10, 0, 5, 20, 1], 16)
    assert info.pieces_of_file(0) == range(0, 1)
    assert info.pieces_of_file(1) == range(0)
    assert info.pieces_of_file(2) == range(0, 1)
    assert info.pieces_of_file(3) == range(0, 3)  # bytes 15..34
    assert info.pieces_of_file(4) == range(2, 3)  # byte 35
    info = make_info([32, 16], 16)
    assert info.pieces_of_file(0) == range(0, 2)
    assert info.pieces_of_file(1) == range(2, 3)


layouts = st.tuples(
    st.lists(st.integers(0, 100), min_size=1, max_size=8).filter(lambda ls: sum(ls) > 0),
    st.sampled_from([1, 3, 16, 64, 1000]),
)


@given(layouts, st.data())
@settings(max_examples=200, deadline=None)
def test_file_slices_property(layout: tuple[list[int], int], data: st.DataObject) -> None:
    lengths, piece_length = layout
    info = make_info(lengths, piece_length)
    total = info.total_length
    offset = data.draw(st.integers(0, total - 1))
    length = data.draw(st.integers(0, total - offset))
    slices = list(info.file_slices(offset, length))
    pos = offset
    last_file = -1
    for fi, in_file, n in slices:
        f = info.files[fi]
        assert fi > last_file  # in order, each file once
        assert n > 0
        assert 0 <= in_file and in_file + n <= f.length  # lies in its file
        assert f.offset + in_file == pos  # contiguous, no gap or overlap
        pos += n
        last_file = fi
    assert pos == offset + length  # covers exactly the range
    # and pieces_of_file agrees with the piece-wise slices
    for i in range(info.num_pieces):
        start = i * piece_length
        for fi, _, _ in info.file_slices(start, info.piece_size(i)):
            assert i in info.pieces_of_file(fi)
    for fi in range(len(info.files)):
        for i in info.pieces_of_file(fi):
            assert any(fj == fi for fj, _, _ in info.file_slices(i * piece_length, info.piece_size(i)))
    assert sum(info.piece_size(i) for i in range(info.num_pieces)) == total


def test_default_piece_length() -> None:
    assert default_piece_length(1) == 16 * 1024
    assert default_piece_length(1500 * 1024 * 1024) == 1024 * 1024
    assert default_piece_length(1 << 45) == 16 * 1024 * 1024
    for total in (1, 10**6, 10**9, 10**12):
        n = default_piece_length(total)
        assert n & (n - 1) == 0 and 16 * 1024 <= n <= 16 * 1024 * 1024


# -------------------------------------------------------------------------------------------- magnets

HEX = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a"


def test_magnet_hex_and_base32() -> None:
    m = parse_magnet(f"magnet:?xt=urn:btih:{HEX}")
    assert m.info_hash == bytes.fromhex(HEX)
    assert parse_magnet(f"magnet:?xt=urn:btih:{HEX.upper()}").info_hash == m.info_hash
    b32 = base64.b32encode(m.info_hash).decode()
    assert len(b32) == 32
    assert parse_magnet(f"magnet:?xt=urn:btih:{b32}").info_hash == m.info_hash
    assert parse_magnet(f"magnet:?xt=urn:btih:{b32.lower()}").info_hash == m.info_hash
    assert parse_magnet(f"MAGNET:?XT=URN:BTIH:{HEX}").info_hash == m.info_hash


def test_magnet_all_fields() -> None:
    uri = (
        f"magnet:?xt=urn:btih:{HEX}&dn=My+Film%20%C3%A9"
        "&tr=udp%3A%2F%2Ft1%3A80&tr=http://t2/announce&tr=udp%3A%2F%2Ft1%3A80"
        "&ws=http%3A%2F%2Fseed%2Ff&xs=http://x/t.torrent"
        "&x.pe=1.2.3.4:6881&x.pe=%5B2001:db8::1%5D:51413&x.pe=host.example:1"
        "&dn=second&unknown=1&xt=urn:btmh:1220abcd"
    )
    m = parse_magnet(uri)
    assert m.info_hash == bytes.fromhex(HEX)
    assert m.name == "My Film é"
    assert m.trackers == ("udp://t1:80", "http://t2/announce")
    assert m.webseeds == ("http://seed/f",)
    assert m.sources == ("http://x/t.torrent",)
    assert m.peers == (("1.2.3.4", 6881), ("2001:db8::1", 51413), ("host.example", 1))


def test_magnet_first_btih_wins_and_numbered_xt() -> None:
    other = "ab" * 20
    m = parse_magnet(f"magnet:?xt.1=urn:btmh:1220ff&xt.2=urn:btih:{HEX}&xt=urn:btih:{other}")
    assert m.info_hash == bytes.fromhex(HEX)


@pytest.mark.parametrize(
    "uri,field",
    [
        ("magnet:?dn=x", "magnet.xt"),
        ("magnet:?xt=urn:btmh:1220" + "ab" * 32, "magnet.xt"),
        ("magnet:", "magnet.xt"),
        ("http://x/?xt=urn:btih:" + HEX, "magnet"),
        ("", "magnet"),
        ("xt=urn:btih:" + HEX, "magnet"),
        ("magnet:?xt=urn:btih:" + HEX[:-1], "info-hash"),
        ("magnet:?xt=urn:btih:" + HEX + "0", "info-hash"),
        ("magnet:?xt=urn:btih:" + "g" * 40, "info-hash"),
        ("magnet:?xt=urn:btih:" + "1" * 32, "info-hash"),  # '1' is not base32
        ("magnet:?xt=urn:btih:" + "A" * 31 + "=", "info-hash"),  # padding gives 19 bytes
        ("magnet:?xt=urn:btih:" + "A" * 28 + "====", "info-hash"),
        ("magnet:?xt=urn:btih:" + "é" * 40, "info-hash"),
        ("magnet:?xt=urn:btih:" + "é" * 32, "info-hash"),
        ("magnet:?xt=urn:btih:", "info-hash"),
        (f"magnet:?xt=urn:btih:{HEX}&x.pe=1.2.3.4", "peer address"),
        (f"magnet:?xt=urn:btih:{HEX}&x.pe=1.2.3.4:0", "peer address"),
        (f"magnet:?xt=urn:btih:{HEX}&x.pe=1.2.3.4:65536", "peer address"),
        (f"magnet:?xt=urn:btih:{HEX}&x.pe=:80", "peer address"),
        (f"magnet:?xt=urn:btih:{HEX}&x.pe=[::1]", "peer address"),
        (f"magnet:?xt=urn:btih:{HEX}&x.pe=h:-1", "peer address"),
        (f"magnet:?xt=urn:btih:{HEX}&x.pe=h:%C2%B2", "peer address"),  # superscript two is "a digit"
        (f"magnet:?xt=urn:btih:{HEX}&x.pe=h:" + "9" * 5000, "peer address"),  # int() digit limit
        ("magnet:?xt=urn:btih:" + HEX + "&tr=x" * (4 * metainfo.MAX_URLS + 1), "magnet"),
        ("magnet:?xt=urn:btih:" + HEX + "&dn=" + "a" * metainfo.MAX_MAGNET_LENGTH, "magnet"),
        ("magnet://[x?xt=urn:btih:" + HEX, "magnet"),  # urlsplit: invalid IPv6 URL
        ("magnet://a]?xt=urn:btih:" + HEX, "magnet"),
    ],
    ids=lambda v: repr(v)[:48],
)
def test_magnet_refusals(uri: str, field: str) -> None:
    with pytest.raises(MetainfoError) as e:
        parse_magnet(uri)
    assert field in str(e.value)


def test_magnet_url_limits() -> None:
    long = "http://x/" + "a" * MAX_URL_LENGTH
    m = parse_magnet(f"magnet:?xt=urn:btih:{HEX}&tr={long}&tr=http://ok/")
    assert m.trackers == ("http://ok/",)
    many = "".join(f"&tr=http://t{i}/" for i in range(metainfo.MAX_URLS + 10))
    assert len(parse_magnet(f"magnet:?xt=urn:btih:{HEX}{many}").trackers) == metainfo.MAX_URLS


def test_hostport() -> None:
    assert parse_hostport("1.2.3.4:80") == ("1.2.3.4", 80)
    assert parse_hostport("[::1]:65535") == ("::1", 65535)
    assert parse_hostport("  h:1 ") == ("h", 1)
    assert format_hostport("::1", 5) == "[::1]:5"
    assert format_hostport("h", 5) == "h:5"


def test_parse_info_hash_direct() -> None:
    assert parse_info_hash(HEX) == bytes.fromhex(HEX)
    with pytest.raises(MetainfoError):
        parse_info_hash("zz" * 20)


hosts = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?", fullmatch=True),
)
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
urls = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40)


@given(
    st.binary(min_size=20, max_size=20),
    text,
    st.lists(urls, max_size=4, unique=True),
    st.lists(urls, max_size=3, unique=True),
    st.lists(urls, max_size=3, unique=True),
    st.lists(st.tuples(hosts, st.integers(1, 65535)), max_size=4),
)
@settings(max_examples=150, deadline=None)
def test_magnet_to_uri_round_trip(
    info_hash: bytes,
    name: str,
    trackers: list[str],
    webseeds: list[str],
    sources: list[str],
    peers: list[tuple[str, int]],
) -> None:
    m = Magnet(info_hash, name, tuple(trackers), tuple(webseeds), tuple(sources), tuple(peers))
    uri = m.to_uri()
    assert uri.startswith("magnet:?xt=urn:btih:" + info_hash.hex())
    assert parse_magnet(uri) == m


def test_metainfo_magnet() -> None:
    info = build_info("a name & more", 1, PL, bytes(20))
    mi = parse_torrent(
        build_torrent(info, trackers=[["http://a/", "udp://b:1"], ["wss://c/"]], url_list=["http://w/"])
    )
    m = parse_magnet(mi.magnet())
    assert m.info_hash == mi.info_hash
    assert m.name == "a name & more"
    assert m.trackers == ("http://a/", "udp://b:1", "wss://c/")
    assert m.webseeds == ("http://w/",)


# ---------------------------------------------------------------------------------------------- fuzz


def parse_or_refuse(data: bytes) -> None:
    try:
        parse_torrent(data)
    except MetainfoError:
        pass
    try:
        parse_info(data)
    except MetainfoError:
        pass


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_only_metainfo_error(data: bytes) -> None:
    parse_or_refuse(data)


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_arbitrary_strings_to_parse_magnet(uri: str) -> None:
    try:
        parse_magnet(uri)
    except MetainfoError:
        pass


magnet_tokens = st.sampled_from(
    [
        "magnet:",
        "?",
        "&",
        "=",
        "xt",
        "urn:btih:",
        HEX,
        HEX[:32].upper(),
        "dn",
        "tr",
        "ws",
        "xs",
        "x.pe",
        "[",
        "]",
        ":",
        "//",
        "%",
        "%zz",
        "%C2%B2",
        "1.2.3.4",
        "::1",
        "80",
        "65536",
        "²",
        "é",
        "=",
        "#",
        ";",
        " ",
        "\x00",
    ]
)


@given(st.lists(magnet_tokens, max_size=30).map("".join))
@settings(max_examples=400, deadline=None)
def test_magnet_token_soup(uri: str) -> None:
    for u in (uri, "magnet:?" + uri, f"magnet:?xt=urn:btih:{HEX}&" + uri):
        try:
            parse_magnet(u)
        except MetainfoError:
            pass


def _valid_torrent() -> bytes:
    info = build_info("d", [(("a",), 5), (("b", "c"), PL + 3)], PL, bytes(40))
    return build_torrent(
        info, trackers=[["http://t/"], ["udp://u:1"]], url_list=["http://w/"], comment="c", creation_date=1
    )


VALID = _valid_torrent()


@given(st.data())
@settings(max_examples=400, deadline=None)
def test_mutated_torrents(data: st.DataObject) -> None:
    raw = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if op == "flip":
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            i = data.draw(st.integers(0, len(raw)))
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=3))
        elif len(raw) > 1:
            i = data.draw(st.integers(0, len(raw) - 1))
            del raw[i : i + data.draw(st.integers(1, 3))]
    try:
        mi = parse_torrent(bytes(raw))
    except MetainfoError:
        return
    # whatever parsed is self-consistent
    assert mi.info_hash == sha1(mi.info.raw)
    assert mi.info.num_pieces == npieces(mi.info.total_length, mi.info.piece_length)


@given(st.binary(min_size=0, max_size=40))
@settings(max_examples=100, deadline=None)
def test_unicode_in_components_round_trips(raw_name: bytes) -> None:
    assume(raw_name not in (b"", b".", b".."))
    d = info_dict(name=raw_name)
    try:
        info = parse_info(bencode.encode(d))
    except MetainfoError:
        return
    assert "/" not in info.name and "\\" not in info.name and "\x00" not in info.name
