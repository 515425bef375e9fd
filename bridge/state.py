"""What `serve` remembers across restarts and crashes, as files a person can read.

``STATE_DIR/torrents/<infohash>.json`` is one torrent's record (how it was added, paused or not, file
priorities); ``<infohash>.torrent`` next to it is its metainfo once known; ``STATE_DIR/resume/<infohash>.json``
is its resume data (verified pieces, and the size and mtime of each file when they were recorded). Every
file is written atomically (a temporary file, fsync, rename), so a crash leaves the old version or the new
one, never half of one.

Resume data is trusted only when every file still has the recorded size and mtime (the fast check). A
piece is recorded only after it was written, and any later write changes the mtime, so after a crash in
the middle of writing the fast check fails and the data is hashed again: no piece is ever claimed verified
that is not.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import BridgeError
from .proto.metainfo import InfoDict
from .swarm.bitfield import Bitfield

log = logging.getLogger(__name__)

__all__ = ["TorrentRecord", "StateStore", "file_stamps"]

#: Largest state file read back (a record with 10,000 file priorities is well under this).
MAX_STATE_FILE = 16 * 1024 * 1024


@dataclass
class TorrentRecord:
    info_hash: str
    name: str = ""
    #: how it was added: a magnet URI (kept until the metainfo is known), or "torrent"/"url"/"path"
    source: str = "torrent"
    magnet: str | None = None
    #: where its data lives (the download directory; the torrent's files are under it)
    save_path: str = ""
    paused: bool = False
    #: per-file priorities (0 skips a file), empty when all are normal
    priorities: list[int] = field(default_factory=list)
    added_at: float = 0.0
    #: peers the user asked to dial ("host:port")
    peers: list[str] = field(default_factory=list)
    seed: bool = True


def _check_types(record: TorrentRecord) -> None:
    """A record edited by hand (or damaged) must not crash the daemon later: check every field's type."""
    r = record
    ok = (all(isinstance(v, str) for v in (r.info_hash, r.name, r.source, r.save_path))
          and (r.magnet is None or isinstance(r.magnet, str))
          and isinstance(r.paused, bool) and isinstance(r.seed, bool)
          and isinstance(r.added_at, int | float) and not isinstance(r.added_at, bool)
          and isinstance(r.priorities, list)
          and all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 7 for p in r.priorities)
          and isinstance(r.peers, list) and all(isinstance(p, str) for p in r.peers))
    if not ok:
        raise TypeError("a field has the wrong type")


def file_stamps(info: InfoDict, save_path: str) -> list[list[int]]:
    """[size, mtime_ns] per file (-1, -1 when missing): what the fast check compares."""
    out = []
    for f in info.files:
        path = os.path.join(save_path, *f.path)
        try:
            st = os.lstat(path)  # a symlink is never followed (storage refuses to use one anyway)
            out.append([st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([-1, -1])
    return out


#: Prefix of the temporary files of _write_atomic (one left behind means a crash in the middle of a save).
TMP_PREFIX = ".tmp-"


def _write_atomic(path: str, data: bytes) -> None:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _read_json(path: str) -> Any:
    with open(path, "rb") as f:
        data = f.read(MAX_STATE_FILE + 1)
    if len(data) > MAX_STATE_FILE:
        raise ValueError("state file too large")
    return json.loads(data)


class StateStore:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.torrents_dir = os.path.join(self.root, "torrents")
        self.resume_dir = os.path.join(self.root, "resume")
        os.makedirs(self.torrents_dir, exist_ok=True)
        os.makedirs(self.resume_dir, exist_ok=True)
        for folder in (self.torrents_dir, self.resume_dir):
            for name in os.listdir(folder):
                if name.startswith(TMP_PREFIX):  # a save cut short by a crash; the old file is intact
                    try:
                        os.unlink(os.path.join(folder, name))
                    except OSError:
                        pass

    # ----------------------------------------------------------------------------- records
    def save_record(self, record: TorrentRecord) -> None:
        _write_atomic(os.path.join(self.torrents_dir, f"{record.info_hash}.json"),
                      json.dumps(asdict(record), indent=2, sort_keys=True).encode())

    def save_metainfo(self, info_hash: str, raw: bytes) -> None:
        _write_atomic(os.path.join(self.torrents_dir, f"{info_hash}.torrent"), raw)

    def metainfo(self, info_hash: str) -> bytes | None:
        path = os.path.join(self.torrents_dir, f"{info_hash}.torrent")
        try:
            with open(path, "rb") as f:
                return f.read(MAX_STATE_FILE)
        except OSError:
            return None

    def records(self) -> list[TorrentRecord]:
        """Every record that reads back; a damaged one is logged and skipped (its files stay)."""
        out = []
        for name in sorted(os.listdir(self.torrents_dir)):
            if not name.endswith(".json"):
                continue
            try:
                raw = _read_json(os.path.join(self.torrents_dir, name))
                if not isinstance(raw, dict):
                    raise ValueError("not a JSON object")
                known = {k: v for k, v in raw.items() if k in TorrentRecord.__dataclass_fields__}
                record = TorrentRecord(**known)
                _check_types(record)
                if len(record.info_hash) != 40 or name != f"{record.info_hash}.json":
                    raise ValueError("info_hash does not match the file name")
                bytes.fromhex(record.info_hash)
                out.append(record)
            except (OSError, ValueError, TypeError) as e:
                log.warning("state: ignoring %s: %s", name, e)
        return out

    def remove(self, info_hash: str) -> None:
        for path in (os.path.join(self.torrents_dir, f"{info_hash}.json"),
                     os.path.join(self.torrents_dir, f"{info_hash}.torrent"),
                     os.path.join(self.resume_dir, f"{info_hash}.json")):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------------------------ resume
    def save_resume(self, info: InfoDict, save_path: str, have: Bitfield) -> None:
        """Record the verified pieces with the files' current sizes and mtimes (call it in a thread)."""
        doc = {"info_hash": info.info_hash.hex(), "pieces": have.to_bytes().hex(),
               "num_pieces": info.num_pieces, "files": file_stamps(info, save_path)}
        _write_atomic(os.path.join(self.resume_dir, f"{info.info_hash.hex()}.json"), json.dumps(doc).encode())

    def load_resume(self, info: InfoDict, save_path: str) -> Bitfield | None:
        """The recorded pieces if the fast check passes (every file's size and mtime as recorded)."""
        path = os.path.join(self.resume_dir, f"{info.info_hash.hex()}.json")
        try:
            doc = _read_json(path)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            if doc.get("info_hash") != info.info_hash.hex() or doc.get("num_pieces") != info.num_pieces:
                return None
            if doc.get("files") != file_stamps(info, save_path):
                log.info("[%s] files changed since the resume data was saved: checking them", info.name[:24])
                return None
            return Bitfield.from_bytes(bytes.fromhex(doc["pieces"]), info.num_pieces)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError, BridgeError) as e:  # BridgeError: a bad bitfield
            log.warning("[%s] resume data unusable (%s): checking the files", info.name[:24], e)
            return None
