"""Settings, one frozen dataclass per concern. The CLI builds these; nothing else reads flags."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PeerConfig:
    """How a torrent treats its peers."""

    #: Connected peers per torrent.
    max_peers: int = 50
    #: Outgoing connection attempts in flight per torrent.
    max_half_open: int = 8
    #: Seconds to wait for a TCP connection to a peer.
    connect_timeout: float = 10.0
    #: Seconds to wait for the peer's handshake (libtorrent uses 10).
    handshake_timeout: float = 10.0
    #: Seconds of silence after which a peer is dropped (BEP 3 practice: 2 minutes).
    inactivity_timeout: float = 120.0
    #: Seconds of our own silence after which we send a keep-alive.
    keepalive_interval: float = 60.0
    #: Seconds without a block while requests are outstanding before they are re-requested elsewhere.
    snub_timeout: float = 30.0
    #: Offer the BEP 6 fast extension.
    fast_extension: bool = True
    #: Message stream encryption (MSE/PE): "allow" (dial plaintext, retry with MSE; accept both),
    #: "prefer" (dial MSE first), "require" (MSE only, RC4 payload), or "off" (plaintext only).
    encryption: str = "allow"
    #: Regular upload slots (plus one optimistic).
    upload_slots: int = 4
    #: Hash failures after which a peer's address is banned from the torrent.
    max_hash_failures: int = 2


@dataclass(frozen=True)
class SessionConfig:
    """The process-wide peer side."""

    #: Listen address for incoming peers.
    host: str = "0.0.0.0"
    #: Listen port; 0 picks a free one.
    port: int = 6881
    #: Per-torrent peer settings.
    peer: PeerConfig = field(default_factory=PeerConfig)
    #: Send announces to trackers.
    trackers_enabled: bool = True
    #: Speak uTP (BEP 29) on the listen port's UDP side: accept it, and try it first when dialling.
    utp: bool = True
    #: Speak TCP: listen on it, and dial it (after uTP, when both are on).
    tcp: bool = True
    #: Join the WebTorrent swarm (WebRTC peers found through ws:// and wss:// trackers).
    webrtc: bool = True
    #: STUN/TURN server URLs for WebRTC (``turn:user:pass@host:port`` for TURN). None by default: on a
    #: host behind NAT, add a STUN server so browsers elsewhere can reach the bridge.
    ice_servers: tuple[str, ...] = ()
    #: Local addresses WebRTC gathers candidates on; empty means every interface except loopback
    #: (a loopback-only host or test must name 127.0.0.1).
    webrtc_hosts: tuple[str, ...] = ()
    #: Upload limit in bytes per second for the whole session, all torrents and peer kinds together
    #: (TCP, uTP and WebRTC payload); 0 means unlimited.
    upload_rate_limit: int = 0
    #: Download limit in bytes per second for the whole session, like ``upload_rate_limit``; 0 means
    #: unlimited.
    download_rate_limit: int = 0
    #: The longest wait, in seconds, before a tracker that failed is tried again: an HTTP or UDP announce
    #: round that no tracker answered, or a WebSocket tracker that dropped us or could not be reached. The
    #: first retry comes 10-20 s after the failure, and the wait doubles with each one up to this.
    tracker_retry_max: float = 600.0

    def __post_init__(self) -> None:
        if not self.tracker_retry_max >= 10:
            raise ValueError("tracker_retry_max must be at least 10 seconds")
