"""Packet sizes for a data channel's SCTP packets: which to probe, and what a confirmed probe allows.

Pure policy, no I/O: :class:`bridge.net.rtc_sctp.LeanSctpTransport` sends the probes and reads the answers.

WebRTC starts every association at packets of about 1,200 bytes (aiortc: 1,189 bytes of SCTP), which fits
any path that carries IPv6. RFC 8831 section 5 asks for Packetization Layer Path MTU Discovery on top
(RFC 8899 section 6.2.1: a HEARTBEAT padded to the size to test, confirmed by its HEARTBEAT ACK). On an
Ethernet path that allows 1,404 bytes of user data per packet rather than 1,160: 17% fewer packets, each of
which costs both ends a system call, a DTLS record and an SCTP chunk. The candidates are the local route's
MTU (nothing larger is sent, so nothing is fragmented here) and the Ethernet sizes below it; the largest
one the peer acknowledges is used. A probe the path loses leaves the size where it was.

No datagram is ever larger than 2,048 bytes, whatever the route allows: that is the most webrtc's DTLS
transport reads (kMaxDtlsPacketLen, in Chromium, Safari and every other libwebrtc peer), and a larger one
does not just go unanswered, it ends the peer's connection (measured with Chromium on loopback, whose MTU
is 65,536: the data channel never opened).
"""

from __future__ import annotations

import ipaddress
import socket

#: SCTP packet size every association starts at: aiortc's (a DATA chunk of 1,160 bytes fills it).
BASE_PACKET = 1189
#: The SCTP common header, and a DATA chunk's header.
_COMMON_HEADER = 12
_DATA_HEADER = 16
#: The largest plaintext one DTLS record holds (RFC 6347 section 4.1): one SCTP packet is one record.
DTLS_PLAINTEXT_MAX = 16384
#: The MTU of an Ethernet path, whose datagrams (over IPv4 and IPv6) are probed below a larger route MTU.
ETHERNET_MTU = 1500
#: The largest datagram sent (UDP payload bytes): libwebrtc's DTLS transport drops the connection on more.
DATAGRAM_MAX = 2048
#: IP and UDP headers, by address family.
IP_UDP_OVERHEAD: dict[int, int] = {socket.AF_INET: 20 + 8, socket.AF_INET6: 40 + 8}
#: Bytes a DTLS 1.2 record adds to its plaintext, by cipher: the 13-byte record header, then the explicit
#: nonce and tag (AES-GCM), the tag (ChaCha20-Poly1305), or, for anything else, an IV, a MAC of up to 48
#: bytes and up to a block of padding.
DTLS_OVERHEAD_GCM = 13 + 8 + 16
DTLS_OVERHEAD_CHACHA = 13 + 16
DTLS_OVERHEAD_OTHER = 13 + 16 + 48 + 16

#: Probes sent for one search at most, and how often a candidate nobody answered is sent again.
PROBE_ROUNDS = 3
#: Seconds between probe rounds, and before a search for larger packets after a black hole (RFC 8899
#: section 5.1.1 has 600 s for PMTU_RAISE_TIMER).
PROBE_INTERVAL = 1.0
RAISE_INTERVAL = 600.0


def dtls_overhead(cipher_name: str | None) -> int:
    """The most bytes a DTLS record adds to a packet under ``cipher_name`` (OpenSSL's name for it)."""
    name = (cipher_name or "").upper()
    if "GCM" in name:
        return DTLS_OVERHEAD_GCM
    if "CHACHA20" in name:
        return DTLS_OVERHEAD_CHACHA
    return DTLS_OVERHEAD_OTHER


def probe_sizes(route_mtu: int | None, family: int, overhead: int, current: int = BASE_PACKET) -> list[int]:
    """SCTP packet sizes to probe, largest first: each a multiple of 4, above ``current``, and a datagram of
    at most DATAGRAM_MAX bytes and within the route's MTU once DTLS (``overhead``), UDP and IP are added.
    Without a known route MTU (None), only sizes an Ethernet path takes. Empty if nothing larger fits."""
    ip_udp = IP_UDP_OVERHEAD.get(family, IP_UDP_OVERHEAD[socket.AF_INET6])
    mtu = ETHERNET_MTU if route_mtu is None else route_mtu
    largest = min(mtu - ip_udp, DATAGRAM_MAX)
    datagrams = {largest, ETHERNET_MTU - IP_UDP_OVERHEAD[socket.AF_INET6], ETHERNET_MTU - IP_UDP_OVERHEAD[socket.AF_INET]}
    sizes = {(d - overhead) & ~3 for d in datagrams if d <= largest}
    return sorted((s for s in sizes if s > current), reverse=True)


def chunk_payload(packet: int) -> int:
    """User data one DATA chunk carries when it fills an SCTP packet of ``packet`` bytes (a multiple of 4,
    as chunks are padded to one)."""
    return (packet - _COMMON_HEADER - _DATA_HEADER) // 4 * 4


def route_mtu(address: tuple[str, int] | tuple[str, int, int, int]) -> int | None:
    """The MTU the kernel has for the route to ``address`` (Linux's IP_MTU on a connected UDP socket, which
    sends nothing), or None where it cannot say (or ``address`` is a name: no lookup is made)."""
    host = address[0]
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None
    level, option = (socket.IPPROTO_IPV6, 24) if family == socket.AF_INET6 else (socket.IPPROTO_IP, 14)
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)
            mtu = probe.getsockopt(level, option)
    except OSError:
        return None
    return mtu if isinstance(mtu, int) and mtu >= 576 else None


__all__ = ["BASE_PACKET", "DATAGRAM_MAX", "DTLS_PLAINTEXT_MAX", "ETHERNET_MTU",
           "PROBE_INTERVAL", "PROBE_ROUNDS", "RAISE_INTERVAL", "chunk_payload", "dtls_overhead", "probe_sizes",
           "route_mtu"]
