"""webtorrent-bridge: one BitTorrent peer in the classic (TCP/uTP) and the WebTorrent (WebRTC) swarms."""

__version__ = "0.1.0"
