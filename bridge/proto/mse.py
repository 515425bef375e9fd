"""Message Stream Encryption (MSE/PE), the obfuscated handshake libtorrent, aria2, Transmission and
qBittorrent speak. Sans-IO: bytes in, bytes out, no sockets, no clocks; randomness is passed in.

Outline (A initiates, B responds; S is the Diffie-Hellman secret, SKEY the info-hash):
  1 A->B  Ya, PadA                    2 B->A  Yb, PadB
  3 A->B  HASH('req1',S), HASH('req2',SKEY) xor HASH('req3',S),
          ENCRYPT(VC, crypto_provide, len(PadC), PadC, len(IA)), ENCRYPT(IA)
  4 B->A  ENCRYPT(VC, crypto_select, len(PadD), PadD), then the payload stream
RC4 keys: A sends with SHA1('keyA'+S+SKEY), B with SHA1('keyB'+S+SKEY); 1024 keystream bytes dropped.

After the handshake, either everything stays RC4 (``rc4``) or goes plaintext. The handshake's own RC4
runs here in pure Python (a few hundred bytes); for a RC4 payload, the adapter continues each stream
with a fast cipher after skipping ``keystream_used`` bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import LocalProtocolError, RemoteProtocolError

#: The 768-bit MSE prime and generator.
P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF"
    "9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A63A36210000000000090563",
    16,
)
G = 2
KEY_BYTES = 96
#: Padding is at most 512 bytes (spec); we send less.
MAX_PAD = 512
VC = bytes(8)
CRYPTO_PLAINTEXT = 0x01
CRYPTO_RC4 = 0x02
#: Most bytes a peer may send before the handshake must have synchronised: Y, the largest pad, the
#: hashes and the fixed fields, plus the largest initial payload a BitTorrent handshake needs.
MAX_HANDSHAKE_BYTES = KEY_BYTES + MAX_PAD + 40 + 14 + MAX_PAD + 2 + 1024
#: Largest initial payload (IA) accepted. It carries the 68-byte BitTorrent handshake and maybe a bit more.
MAX_IA = 1024
RC4_DROP = 1024


class Rc4:
    """RC4 in pure Python, for the short handshake only."""

    __slots__ = ("s", "i", "j", "used", "key")

    def __init__(self, key: bytes) -> None:
        self.key = key
        s = list(range(256))
        j = 0
        for i in range(256):
            j = (j + s[i] + key[i % len(key)]) & 0xFF
            s[i], s[j] = s[j], s[i]
        self.s, self.i, self.j = s, 0, 0
        self.used = 0
        self.crypt(bytes(RC4_DROP))
        self.used = 0

    def crypt(self, data: bytes) -> bytes:
        s, i, j = self.s, self.i, self.j
        out = bytearray(len(data))
        for n, byte in enumerate(data):
            i = (i + 1) & 0xFF
            j = (j + s[i]) & 0xFF
            s[i], s[j] = s[j], s[i]
            out[n] = byte ^ s[(s[i] + s[j]) & 0xFF]
        self.i, self.j = i, j
        self.used += len(data)
        return bytes(out)


def _sha1(*parts: bytes) -> bytes:
    return hashlib.sha1(b"".join(parts)).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def req2_key(info_hash: bytes) -> bytes:
    """HASH('req2', SKEY): how a responder recognises which torrent an initiator wants."""
    return _sha1(b"req2", info_hash)


@dataclass(frozen=True, slots=True)
class MseResult:
    """What the finished handshake yields."""

    #: the torrent (SKEY)
    info_hash: bytes
    #: True when the payload stays RC4-encrypted
    rc4: bool
    #: key for what we send and for what we receive
    send_key: bytes
    recv_key: bytes
    #: keystream bytes (after the 1024 dropped) already used on each side by the handshake
    send_used: int
    recv_used: int
    #: payload bytes received after the handshake, already decrypted (for the initiator: the start of
    #: the peer's BitTorrent stream; for the responder: the initial payload IA plus anything after it)
    payload: bytes


class _Base:
    def __init__(self, rand: Callable[[int], bytes], pad: int) -> None:
        self._rand = rand
        self._x = int.from_bytes(rand(20), "big")
        self._buf = bytearray()
        self._out = bytearray()
        self._pad = min(pad, MAX_PAD)
        self.result: MseResult | None = None
        self._out += pow(G, self._x, P).to_bytes(KEY_BYTES, "big") + rand(self._pad)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def _secret(self, y: bytes) -> bytes:
        yi = int.from_bytes(y, "big")
        if not 1 < yi < P - 1:
            raise RemoteProtocolError("MSE: invalid public key")
        return pow(yi, self._x, P).to_bytes(KEY_BYTES, "big")

    def _feed(self, data: bytes) -> None:
        if self.result is not None:
            raise LocalProtocolError("MSE handshake already finished: later bytes belong to the payload stream")
        self._buf += data
        if len(self._buf) > MAX_HANDSHAKE_BYTES + MAX_IA:
            raise RemoteProtocolError("MSE: handshake did not synchronise")


class MseInitiator(_Base):
    """Side A. ``ia`` is the initial payload (our BitTorrent handshake), sent encrypted in step 3."""

    def __init__(self, info_hash: bytes, ia: bytes, rand: Callable[[int], bytes], *, allow_plaintext: bool = True,
                 pad: int = 64) -> None:
        super().__init__(rand, pad)
        self.info_hash = info_hash
        self._ia = ia
        self._provide = CRYPTO_RC4 | (CRYPTO_PLAINTEXT if allow_plaintext else 0)
        self._state = "yb"
        self._pad_d = 0
        self._select = 0
        self._enc: Rc4 | None = None
        self._dec: Rc4 | None = None
        self._vc_enc = b""

    def receive_data(self, data: bytes) -> None:
        self._feed(data)
        if self._state == "yb" and len(self._buf) >= KEY_BYTES:
            s = self._secret(bytes(self._buf[:KEY_BYTES]))
            del self._buf[:KEY_BYTES]
            skey = self.info_hash
            self._enc = Rc4(_sha1(b"keyA", s, skey))
            self._dec = Rc4(_sha1(b"keyB", s, skey))
            # What B's encrypted VC will look like, to find the end of PadB.
            self._vc_enc = Rc4(_sha1(b"keyB", s, skey)).crypt(VC)
            pad_c = b""
            self._out += _sha1(b"req1", s) + _xor(req2_key(skey), _sha1(b"req3", s))
            self._out += self._enc.crypt(VC + self._provide.to_bytes(4, "big") + len(pad_c).to_bytes(2, "big") + pad_c
                                         + len(self._ia).to_bytes(2, "big") + self._ia)
            self._state = "vc"
        if self._state == "vc":
            at = self._buf.find(self._vc_enc)
            if at < 0:
                if len(self._buf) > MAX_PAD + len(self._vc_enc):
                    raise RemoteProtocolError("MSE: no verification constant from the responder")
                return
            assert self._dec is not None
            del self._buf[:at]
            self._state = "select"
        if self._state == "select":
            if len(self._buf) < 8 + 4 + 2:
                return
            assert self._dec is not None and self._enc is not None
            head = self._dec.crypt(bytes(self._buf[:14]))
            select = int.from_bytes(head[8:12], "big")
            pad_len = int.from_bytes(head[12:14], "big")
            if pad_len > MAX_PAD:
                raise RemoteProtocolError("MSE: padding too long")
            if select not in (CRYPTO_PLAINTEXT, CRYPTO_RC4) or not select & self._provide:
                raise RemoteProtocolError(f"MSE: responder selected unsupported crypto {select}")
            self._pad_d = pad_len
            self._select = select
            del self._buf[:14]
            self._state = "pad_d"
        if self._state == "pad_d":
            if len(self._buf) < self._pad_d:
                return
            assert self._dec is not None and self._enc is not None
            self._dec.crypt(bytes(self._buf[: self._pad_d]))
            del self._buf[: self._pad_d]
            rc4 = self._select == CRYPTO_RC4
            rest = bytes(self._buf)
            self._buf.clear()
            payload = self._dec.crypt(rest) if rc4 else rest
            self.result = MseResult(self.info_hash, rc4, _key_for(self._enc), _key_for(self._dec),
                                    self._enc.used, self._dec.used, payload)
            self._state = "done"


class MseResponder(_Base):
    """Side B. ``lookup`` maps HASH('req2', SKEY) to an info-hash we serve, or None."""

    def __init__(self, lookup: Callable[[bytes], bytes | None], rand: Callable[[int], bytes], *,
                 allow_plaintext: bool = True, prefer_plaintext: bool = True, pad: int = 64) -> None:
        super().__init__(rand, pad)
        self._lookup = lookup
        self._allow_plain = allow_plaintext
        self._prefer_plain = prefer_plaintext
        self._state = "ya"
        self._s = b""
        self._req1 = b""
        self._pad_c = 0
        self._ia_len = 0
        self._select = 0
        self.info_hash = b""
        self._enc = self._dec = Rc4(b"\x00")  # replaced once the torrent is known

    def receive_data(self, data: bytes) -> None:
        self._feed(data)
        if self._state == "ya" and len(self._buf) >= KEY_BYTES:
            self._s = self._secret(bytes(self._buf[:KEY_BYTES]))
            del self._buf[:KEY_BYTES]
            self._req1 = _sha1(b"req1", self._s)
            self._state = "req1"
        if self._state == "req1":
            at = self._buf.find(self._req1)
            if at < 0:
                if len(self._buf) > MAX_PAD + 20:
                    raise RemoteProtocolError("MSE: no synchronisation hash from the initiator")
                return
            del self._buf[: at + 20]
            self._state = "skey"
        if self._state == "skey":
            if len(self._buf) < 20 + 14:
                return
            req2 = _xor(bytes(self._buf[:20]), _sha1(b"req3", self._s))
            info_hash = self._lookup(req2)
            if info_hash is None:
                raise RemoteProtocolError("MSE: unknown torrent")
            self.info_hash = info_hash
            self._dec = Rc4(_sha1(b"keyA", self._s, info_hash))
            self._enc = Rc4(_sha1(b"keyB", self._s, info_hash))
            head = self._dec.crypt(bytes(self._buf[20:34]))
            del self._buf[:34]
            if head[:8] != VC:
                raise RemoteProtocolError("MSE: bad verification constant")
            provide = int.from_bytes(head[8:12], "big")
            self._pad_c = int.from_bytes(head[12:14], "big")
            if self._pad_c > MAX_PAD:
                raise RemoteProtocolError("MSE: padding too long")
            plain_ok = bool(provide & CRYPTO_PLAINTEXT) and self._allow_plain
            if plain_ok and (self._prefer_plain or not provide & CRYPTO_RC4):
                self._select = CRYPTO_PLAINTEXT
            elif provide & CRYPTO_RC4:
                self._select = CRYPTO_RC4
            else:
                raise RemoteProtocolError("MSE: no common crypto method")
            self._state = "pad_c"
        if self._state == "pad_c":
            if len(self._buf) < self._pad_c + 2:
                return
            head = self._dec.crypt(bytes(self._buf[: self._pad_c + 2]))
            self._ia_len = int.from_bytes(head[-2:], "big")
            if self._ia_len > MAX_IA:
                raise RemoteProtocolError("MSE: initial payload too long")
            del self._buf[: self._pad_c + 2]
            self._state = "ia"
        if self._state == "ia":
            if len(self._buf) < self._ia_len:
                return
            ia = self._dec.crypt(bytes(self._buf[: self._ia_len]))
            del self._buf[: self._ia_len]
            rest = bytes(self._buf)
            self._buf.clear()
            rc4 = self._select == CRYPTO_RC4
            payload = ia + (self._dec.crypt(rest) if rc4 else rest)
            pad_d = b""
            self._out += self._enc.crypt(VC + self._select.to_bytes(4, "big") + len(pad_d).to_bytes(2, "big") + pad_d)
            self.result = MseResult(self.info_hash, rc4, _key_for(self._enc), _key_for(self._dec),
                                    self._enc.used, self._dec.used, payload)
            self._state = "done"


def _key_for(rc4: Rc4) -> bytes:
    return rc4.key
