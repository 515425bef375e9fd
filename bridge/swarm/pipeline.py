"""How many block requests to keep outstanding at one peer: sized from the measured rate, bounded by reqq."""

from __future__ import annotations

import math

from ..proto.wire import BLOCK_SIZE

#: Seconds of data to keep requested ahead. libtorrent uses 3 s, WebTorrent 1 s; 1.5 s keeps a fast
#: loopback peer busy without queueing far more than one rechoke's worth at a slow one.
REQUEST_QUEUE_TIME = 1.5
#: Outstanding requests before any rate is measured; enough to fill a LAN link during the first second.
MIN_OUTSTANDING = 16
#: Upper bound whatever the rate; libtorrent keeps at most 500 outgoing requests per peer.
MAX_OUTSTANDING = 500
#: The queue length assumed when a peer does not say (BEP 10 ``reqq``); libtorrent's default is 250.
DEFAULT_PEER_REQQ = 250


def pipeline_depth(rate: float, peer_reqq: int = DEFAULT_PEER_REQQ, received: int = 0) -> int:
    """Outstanding requests to keep for a peer delivering ``rate`` bytes/s that accepts ``peer_reqq``.

    Before the first rate sample (``rate`` 0, the first second of a connection) the depth grows by one
    request per block received (``received`` payload bytes so far), doubling every round trip as TCP's
    slow start does: a fast peer is not held to MIN_OUTSTANDING for a whole second."""
    if rate > 0:
        want = MIN_OUTSTANDING + math.ceil(rate * REQUEST_QUEUE_TIME / BLOCK_SIZE)
    else:
        want = MIN_OUTSTANDING + max(received, 0) // BLOCK_SIZE
    return max(1, min(want, MAX_OUTSTANDING, max(peer_reqq, 1)))
