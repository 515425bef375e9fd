"""Free ports on loopback, for programs that cannot bind port 0 themselves (coturn, a container's
published ports, a setting read from a file). The port is free when this returns; a test that races
another process for it fails loudly, never silently."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1", udp_too: bool = False) -> int:
    """A TCP port free on ``host`` right now; with ``udp_too``, free for UDP as well."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((host, 0))
            port = int(t.getsockname()[1])
            if not udp_too:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((host, port))
                except OSError:
                    continue
                return port
    raise AssertionError(f"no port free for both TCP and UDP on {host}")
