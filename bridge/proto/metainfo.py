"""Metainfo: .torrent files and magnet URIs (BEP 3, 9, 12, 19, 47), parse, build and validate. Sans-IO.

The info-hash is SHA-1 over the bencoded ``info`` bytes exactly as received, never a re-encoding, so a
torrent with unsorted keys keeps the hash every other client computes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import time
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from ..errors import BencodeError, MetainfoError
from . import bencode

#: Largest .torrent file we read. Real ones rarely pass a few MB; libtorrent's default cap is about 30 MB.
MAX_TORRENT_SIZE = 50 * 1024 * 1024
#: Largest info dictionary (also the BEP 9 metadata limit; WebTorrent refuses more than 10 MB).
MAX_INFO_SIZE = 10 * 1000 * 1000
#: Largest piece length. libtorrent creates at most 16 MiB pieces and refuses far larger ones.
MAX_PIECE_LENGTH = 128 * 1024 * 1024
#: Smallest piece length: one 16 KiB block (BEP 3 clients request 16 KiB blocks).
MIN_PIECE_LENGTH = 16 * 1024
#: Largest torrent payload accepted: 1 PiB. Keeps offsets far from overflow in every peer's 64-bit math.
MAX_TOTAL_LENGTH = 1 << 50
#: Most files in one torrent. Large archives have tens of thousands; a million is hostile.
MAX_FILES = 100_000
#: Deepest folder nesting inside a torrent.
MAX_PATH_DEPTH = 32
#: Longest single path component in UTF-8 bytes (the common file-system limit is 255 bytes).
MAX_PATH_COMPONENT = 255
#: Longest magnet URI accepted; trackers and web seeds make real ones a few KB at most.
MAX_MAGNET_LENGTH = 64 * 1024
#: Most tracker, web-seed or peer entries taken from one magnet or torrent.
MAX_URLS = 200
#: Longest URL accepted in a torrent or magnet.
MAX_URL_LENGTH = 4096

_FORBIDDEN_COMPONENTS = {"", ".", ".."}


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a torrent, in torrent order."""

    #: Path parts below the download directory, starting with the torrent name for multi-file torrents.
    path: tuple[str, ...]
    #: Length in bytes.
    length: int
    #: Offset of the file's first byte in the torrent's concatenated payload.
    offset: int
    #: True for a BEP 47 padding file: never written to disk, reads as zeros.
    padding: bool = False


@dataclass(frozen=True, slots=True)
class InfoDict:
    """A validated info dictionary."""

    #: Suggested name of the file (single-file) or folder (multi-file).
    name: str
    #: Bytes per piece; the last piece may be shorter.
    piece_length: int
    #: Concatenated 20-byte SHA-1 piece hashes.
    pieces: bytes
    #: Every file, in torrent order, with offsets.
    files: tuple[FileEntry, ...]
    #: Sum of all file lengths.
    total_length: int
    #: BEP 27 private flag.
    private: bool
    #: True when the info dict has ``files`` (the data lives in a folder named ``name``).
    multi_file: bool
    #: The exact bencoded bytes, as received or built.
    raw: bytes = field(repr=False)
    #: SHA-1 of ``raw``.
    info_hash: bytes = field(repr=False)
    _offsets: tuple[int, ...] = field(repr=False, default=())

    @property
    def num_pieces(self) -> int:
        return len(self.pieces) // 20

    def piece_hash(self, index: int) -> bytes:
        return self.pieces[index * 20 : index * 20 + 20]

    def piece_size(self, index: int) -> int:
        if index == self.num_pieces - 1:
            return self.total_length - index * self.piece_length
        return self.piece_length

    def file_slices(self, offset: int, length: int) -> Iterator[tuple[int, int, int]]:
        """Yield (file index, offset in file, byte count) covering ``length`` bytes from ``offset``."""
        i = bisect_right(self._offsets, offset) - 1
        end = offset + length
        files = self.files
        while offset < end and i < len(files):
            f = files[i]
            if f.length:
                start_in_file = offset - f.offset
                n = min(end, f.offset + f.length) - offset
                if n > 0:
                    yield i, start_in_file, n
                    offset += n
            i += 1

    def pieces_of_file(self, index: int) -> range:
        """The pieces that hold any byte of file ``index`` (empty for an empty file)."""
        f = self.files[index]
        if f.length == 0:
            return range(0)
        return range(f.offset // self.piece_length, (f.offset + f.length - 1) // self.piece_length + 1)


@dataclass(frozen=True, slots=True)
class Metainfo:
    """A validated .torrent file."""

    info: InfoDict
    #: BEP 12 tiers (``announce`` alone becomes one tier of one tracker).
    trackers: tuple[tuple[str, ...], ...] = ()
    #: BEP 19 web seeds (``url-list``).
    url_list: tuple[str, ...] = ()
    comment: str = ""
    created_by: str = ""
    creation_date: int | None = None

    @property
    def info_hash(self) -> bytes:
        return self.info.info_hash

    def magnet(self) -> str:
        return Magnet(
            info_hash=self.info_hash,
            name=self.info.name,
            trackers=tuple(t for tier in self.trackers for t in tier),
            webseeds=self.url_list,
        ).to_uri()


@dataclass(frozen=True, slots=True)
class Magnet:
    """A parsed magnet URI (BEP 9)."""

    #: 20-byte v1 info-hash from ``xt=urn:btih:``.
    info_hash: bytes
    #: ``dn``: display name, may be empty.
    name: str = ""
    #: ``tr``: tracker URLs, in order.
    trackers: tuple[str, ...] = ()
    #: ``ws``: web seed URLs.
    webseeds: tuple[str, ...] = ()
    #: ``xs``: exact sources (URLs of .torrent files).
    sources: tuple[str, ...] = ()
    #: ``x.pe``: peer addresses as (host, port).
    peers: tuple[tuple[str, int], ...] = ()

    def to_uri(self) -> str:
        parts = ["xt=urn:btih:" + self.info_hash.hex()]
        if self.name:
            parts.append("dn=" + quote(self.name, safe=""))
        parts += ["tr=" + quote(t, safe="") for t in self.trackers]
        parts += ["ws=" + quote(w, safe="") for w in self.webseeds]
        parts += ["xs=" + quote(x, safe="") for x in self.sources]
        parts += ["x.pe=" + quote(format_hostport(h, p), safe="") for h, p in self.peers]
        return "magnet:?" + "&".join(parts)


# ----------------------------------------------------------------------------------------- parsing


def _text(value: Any, field_name: str) -> str:
    if not isinstance(value, bytes):
        raise MetainfoError(f"{field_name}: expected a string")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        # Old torrents carry legacy encodings; keep the bytes readable rather than refusing the torrent.
        return value.decode("latin-1")


def _int(value: Any, field_name: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise MetainfoError(f"{field_name}: expected an integer")
    if not lo <= value <= hi:
        raise MetainfoError(f"{field_name}: {value} is outside {lo}..{hi}")
    return value


def _component(value: Any, field_name: str) -> str:
    text = _text(value, field_name)
    if text in _FORBIDDEN_COMPONENTS:
        raise MetainfoError(f"{field_name}: path part {text!r} is not allowed")
    if "\x00" in text:
        raise MetainfoError(f"{field_name}: path part contains a NUL byte")
    if "/" in text or "\\" in text:
        raise MetainfoError(f"{field_name}: path part {text[:60]!r} contains a path separator")
    if len(text.encode("utf-8")) > MAX_PATH_COMPONENT:
        raise MetainfoError(f"{field_name}: path part longer than {MAX_PATH_COMPONENT} bytes")
    if len(text) >= 2 and text[1] == ":" and text[0].isalpha():
        raise MetainfoError(f"{field_name}: path part {text[:60]!r} looks like an absolute path")
    return text


def _pick_utf8(d: dict[bytes, Any], key: bytes) -> Any:
    alt = d.get(key + b".utf-8")
    if isinstance(alt, bytes | list):
        return alt
    return d.get(key)


def parse_info(raw: bytes, expected_hash: bytes | None = None) -> InfoDict:
    """Validate a bencoded info dictionary (from a .torrent or from ut_metadata)."""
    if len(raw) > MAX_INFO_SIZE:
        raise MetainfoError(f"info: {len(raw)} bytes is more than the limit of {MAX_INFO_SIZE}")
    info_hash = hashlib.sha1(raw).digest()
    if expected_hash is not None and info_hash != expected_hash:
        raise MetainfoError("info: SHA-1 does not match the info-hash")
    try:
        d = bencode.decode(raw)
    except BencodeError as e:
        raise MetainfoError(f"info: {e}") from None
    if not isinstance(d, dict):
        raise MetainfoError("info: not a dictionary")
    return _validate_info(d, raw, info_hash)


def _validate_info(d: dict[bytes, Any], raw: bytes, info_hash: bytes) -> InfoDict:
    if b"name" not in d:
        raise MetainfoError("info.name: missing")
    name = _component(_pick_utf8(d, b"name"), "info.name")
    if b"piece length" not in d:
        raise MetainfoError("info.piece length: missing")
    piece_length = _int(d[b"piece length"], "info.piece length", 1, MAX_PIECE_LENGTH)
    pieces = d.get(b"pieces")
    if not isinstance(pieces, bytes):
        raise MetainfoError("info.pieces: missing or not a string")
    if len(pieces) % 20:
        raise MetainfoError(f"info.pieces: length {len(pieces)} is not a multiple of 20")
    private = d.get(b"private", 0) == 1

    has_length, has_files = b"length" in d, b"files" in d
    if has_length == has_files:
        raise MetainfoError("info: needs exactly one of 'length' (single file) or 'files' (multi-file)")
    files: list[FileEntry] = []
    total = 0
    if has_length:
        total = _int(d[b"length"], "info.length", 0, MAX_TOTAL_LENGTH)
        files.append(FileEntry(path=(name,), length=total, offset=0))
    else:
        flist = d[b"files"]
        if not isinstance(flist, list) or not flist:
            raise MetainfoError("info.files: expected a non-empty list")
        if len(flist) > MAX_FILES:
            raise MetainfoError(f"info.files: more than {MAX_FILES} files")
        seen: set[tuple[str, ...]] = set()
        dirs: set[tuple[str, ...]] = set()
        for n, entry in enumerate(flist):
            where = f"info.files[{n}]"
            if not isinstance(entry, dict):
                raise MetainfoError(f"{where}: expected a dictionary")
            length = _int(entry.get(b"length"), f"{where}.length", 0, MAX_TOTAL_LENGTH)
            parts = _pick_utf8(entry, b"path")
            if not isinstance(parts, list) or not parts:
                raise MetainfoError(f"{where}.path: expected a non-empty list")
            if len(parts) > MAX_PATH_DEPTH:
                raise MetainfoError(f"{where}.path: deeper than {MAX_PATH_DEPTH} levels")
            path = (name, *(_component(p, f"{where}.path") for p in parts))
            attr = entry.get(b"attr", b"")
            padding = isinstance(attr, bytes) and b"p" in attr
            if not padding:
                if path in seen or path in dirs:
                    raise MetainfoError(f"{where}.path: {'/'.join(path)!r} appears twice")
                for k in range(1, len(path)):
                    if path[:k] in seen:
                        raise MetainfoError(f"{where}.path: {'/'.join(path[:k])!r} is both a file and a folder")
                    dirs.add(path[:k])
                seen.add(path)
            files.append(FileEntry(path=path, length=length, offset=total, padding=padding))
            total += length
            if total > MAX_TOTAL_LENGTH:
                raise MetainfoError(f"info.files: total length is more than {MAX_TOTAL_LENGTH}")
    if total == 0:
        raise MetainfoError("info: total length is 0")
    expected_pieces = math.ceil(total / piece_length)
    if len(pieces) // 20 != expected_pieces:
        raise MetainfoError(
            f"info.pieces: {len(pieces) // 20} hashes for {total} bytes in pieces of {piece_length} "
            f"(expected {expected_pieces})"
        )
    return InfoDict(
        name=name,
        piece_length=piece_length,
        pieces=pieces,
        files=tuple(files),
        total_length=total,
        private=private,
        multi_file=has_files,
        raw=raw,
        info_hash=info_hash,
        _offsets=tuple(f.offset for f in files),
    )


def _url(value: Any, field_name: str) -> str | None:
    if not isinstance(value, bytes) or not value or len(value) > MAX_URL_LENGTH:
        return None
    text = _text(value, field_name).strip()
    return text or None


def parse_torrent(data: bytes) -> Metainfo:
    """Parse and validate a .torrent file."""
    if len(data) > MAX_TORRENT_SIZE:
        raise MetainfoError(f"torrent: {len(data)} bytes is more than the limit of {MAX_TORRENT_SIZE}")
    try:
        top, spans = bencode.decode_with_spans(data)
    except BencodeError as e:
        raise MetainfoError(f"torrent: {e}") from None
    if not isinstance(top.get(b"info"), dict):
        raise MetainfoError("info: missing or not a dictionary")
    start, end = spans[b"info"]
    raw = data[start:end]
    if len(raw) > MAX_INFO_SIZE:
        raise MetainfoError(f"info: {len(raw)} bytes is more than the limit of {MAX_INFO_SIZE}")
    info = _validate_info(top[b"info"], raw, hashlib.sha1(raw).digest())

    tiers: list[tuple[str, ...]] = []
    seen: set[str] = set()
    alist = top.get(b"announce-list")
    if isinstance(alist, list):
        for tier in alist[:MAX_URLS]:
            if not isinstance(tier, list):
                continue
            urls = []
            for u in tier[:MAX_URLS]:
                url = _url(u, "announce-list")
                if url and url not in seen:
                    seen.add(url)
                    urls.append(url)
            if urls:
                tiers.append(tuple(urls))
    announce = _url(top.get(b"announce"), "announce")
    if announce and announce not in seen:
        # BEP 12: announce-list, when present, supersedes announce; keep announce only if it is absent.
        if not tiers:
            tiers.append((announce,))
    url_list_raw = top.get(b"url-list")
    if isinstance(url_list_raw, bytes):
        url_list_raw = [url_list_raw]
    webseeds: list[str] = []
    if isinstance(url_list_raw, list):
        for u in url_list_raw[:MAX_URLS]:
            url = _url(u, "url-list")
            if url and url not in webseeds:
                webseeds.append(url)
    comment = top.get(b"comment")
    created_by = top.get(b"created by")
    date = top.get(b"creation date")
    return Metainfo(
        info=info,
        trackers=tuple(tiers),
        url_list=tuple(webseeds),
        comment=_text(comment, "comment") if isinstance(comment, bytes) else "",
        created_by=_text(created_by, "created by") if isinstance(created_by, bytes) else "",
        creation_date=date if isinstance(date, int) and not isinstance(date, bool) else None,
    )


# ---------------------------------------------------------------------------------------- building


def default_piece_length(total_length: int) -> int:
    """A power of two giving roughly 1,000-2,000 pieces, between 16 KiB and 16 MiB."""
    target = max(1, total_length // 1500)
    length = MIN_PIECE_LENGTH
    while length < target and length < 16 * 1024 * 1024:
        length *= 2
    return length


def build_info(
    name: str,
    files: Sequence[tuple[Sequence[str], int]] | int,
    piece_length: int,
    pieces: bytes,
    private: bool = False,
) -> InfoDict:
    """Build and validate an info dict. ``files`` is the length of a single file, or (path parts, length) pairs."""
    try:
        d: dict[bytes, Any] = {b"name": name.encode("utf-8"), b"piece length": piece_length, b"pieces": pieces}
        if isinstance(files, int):
            d[b"length"] = files
        else:
            d[b"files"] = [{b"length": n, b"path": [p.encode("utf-8") for p in parts]} for parts, n in files]
    except UnicodeEncodeError as e:
        # e.g. a file name that is not UTF-8 on disk (os.walk hands it over with surrogate escapes)
        raise MetainfoError(f"info: a name is not valid UTF-8 text: {e.object[:60]!r}") from None
    if private:
        d[b"private"] = 1
    raw = bencode.encode(d)
    return parse_info(raw)


def build_torrent(
    info: InfoDict,
    trackers: Sequence[Sequence[str]] = (),
    url_list: Sequence[str] = (),
    comment: str = "",
    created_by: str = "",
    creation_date: int | None = None,
) -> bytes:
    """Bencode a .torrent around an already-built info dict (its bytes are kept exactly)."""
    top: dict[bytes, Any] = {}
    tiers = [list(t) for t in trackers if t]
    if tiers:
        top[b"announce"] = tiers[0][0]
        if len(tiers) > 1 or len(tiers[0]) > 1:
            top[b"announce-list"] = tiers
    if url_list:
        top[b"url-list"] = list(url_list)
    if comment:
        top[b"comment"] = comment
    if created_by:
        top[b"created by"] = created_by
    top[b"creation date"] = int(time.time()) if creation_date is None else creation_date
    # Splice the exact info bytes in between the keys that sort before and after "info", keeping keys sorted
    # (searching the encoding for a placeholder would also match the same bytes inside a comment or URL).
    before = bencode.encode({k: v for k, v in top.items() if k < b"info"})
    after = bencode.encode({k: v for k, v in top.items() if k > b"info"})
    return before[:-1] + b"4:info" + info.raw + after[1:]


# ------------------------------------------------------------------------------------------ magnets


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_hostport(text: str) -> tuple[str, int]:
    """Parse ``host:port`` or ``[v6]:port``; raise MetainfoError otherwise."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep or not host or not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        raise MetainfoError(f"peer address {text[:80]!r}: expected HOST:PORT")
    port = int(port_text)
    if not 0 < port < 65536:
        raise MetainfoError(f"peer address {text[:80]!r}: port out of range")
    return host, port


def parse_info_hash(text: str) -> bytes:
    """A v1 info-hash as 40 hex digits or 32 base32 characters."""
    if len(text) == 40:
        try:
            return binascii.unhexlify(text)
        except (binascii.Error, ValueError):
            pass
    elif len(text) == 32:
        try:
            raw = base64.b32decode(text.upper())
        except (binascii.Error, ValueError):
            pass
        else:
            if len(raw) == 20:  # '=' padding inside the 32 characters decodes to fewer bytes
                return raw
    raise MetainfoError(f"info-hash {text[:60]!r}: expected 40 hex digits or 32 base32 characters")


def parse_magnet(uri: str) -> Magnet:
    if len(uri) > MAX_MAGNET_LENGTH:
        raise MetainfoError(f"magnet: longer than {MAX_MAGNET_LENGTH} characters")
    try:
        split = urlsplit(uri.strip())
    except ValueError as e:
        raise MetainfoError(f"magnet: {e}") from None
    if split.scheme.lower() != "magnet":
        raise MetainfoError("magnet: URI does not start with 'magnet:'")
    info_hash: bytes | None = None
    name = ""
    lists: dict[str, list[str]] = {"tr": [], "ws": [], "xs": []}
    peers: list[tuple[str, int]] = []
    try:
        params = parse_qsl(split.query, keep_blank_values=False, max_num_fields=4 * MAX_URLS)
    except ValueError as e:
        raise MetainfoError(f"magnet: {e}") from None
    for key, value in params:
        key = key.lower()
        if key.startswith("xt") and value.lower().startswith("urn:btih:") and info_hash is None:
            info_hash = parse_info_hash(value[9:])
        elif key == "dn" and not name:
            name = value
        elif key in lists and len(value) <= MAX_URL_LENGTH and value not in lists[key]:
            if len(lists[key]) < MAX_URLS:
                lists[key].append(value)
        elif key == "x.pe" and len(peers) < MAX_URLS:
            peers.append(parse_hostport(value))
    if info_hash is None:
        raise MetainfoError("magnet.xt: no 'urn:btih:' info-hash (v2-only magnets are not supported)")
    return Magnet(
        info_hash=info_hash,
        name=name,
        trackers=tuple(lists["tr"]),
        webseeds=tuple(lists["ws"]),
        sources=tuple(lists["xs"]),
        peers=tuple(peers),
    )
