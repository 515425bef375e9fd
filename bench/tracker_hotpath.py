#!/usr/bin/env python3
"""Microbenchmark of the embedded tracker's per-announce work, without sockets: what one WebSocket announce
costs in parsing, in the swarm registry, and in encoding what it forwards. A companion to tracker_load.py,
which measures the whole tracker against bittorrent-tracker; this one shows where a change moves the time.

200 peers in one swarm, announces with 5 offers of 600-byte fake SDP (tracker_load.py's load). Prints
microseconds per call, best of --repeat rounds.

    python bench/tracker_hotpath.py
    python bench/tracker_hotpath.py --peers 1000 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import timeit

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH_DIR))
sys.path.insert(0, BENCH_DIR)

import orjson  # noqa: E402
from _common import ws_announce  # noqa: E402

from bridge.proto.websocket import OP_TEXT, ServerFrameParser  # noqa: E402
from bridge.proto.wstracker import parse_client_message, tracker_message_object  # noqa: E402
from bridge.tracker.server import apply_mask  # noqa: E402
from bridge.tracker.state import SwarmRegistry  # noqa: E402


def masked_frame(payload: bytes) -> bytes:
    key = b"\x11\x22\x33\x44"
    n = len(payload)
    head = bytes((0x80 | OP_TEXT, 0x80 | 126)) + n.to_bytes(2, "big") if n < 65536 else b""
    return head + key + apply_mask(payload, key)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", type=int, default=200)
    p.add_argument("--offers", type=int, default=5)
    p.add_argument("--sdp-bytes", type=int, default=600)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--number", type=int, default=20000, help="calls per round")
    args = p.parse_args()

    ih = "i" * 20
    msgs = [ws_announce(ih, f"-WW0000-{n:012d}", [f"{n:08d}{i:012d}" for i in range(args.offers)],
                        args.sdp_bytes, n).encode() for n in range(args.peers)]
    registry = SwarmRegistry(interval=120, rng=random.Random(1))
    sockets = [object() for _ in range(args.peers)]
    parsed = [parse_client_message(m, orjson.loads) for m in msgs]
    for sock, msg in zip(sockets, parsed, strict=True):
        registry.announce_ws(sock, msg, 0.0)
    out = registry.announce_ws(sockets[7], parsed[7], 1.0)
    forwarded = out[1][1]
    frame = masked_frame(msgs[7])
    parser = ServerFrameParser(64 * 1024, apply_mask)

    cases = [
        ("WebSocket frame (unmask)", lambda: parser.feed(frame)),
        ("orjson.loads", lambda: orjson.loads(msgs[7])),
        ("parse_client_message", lambda: parse_client_message(msgs[7], orjson.loads)),
        ("SwarmRegistry.announce_ws", lambda: registry.announce_ws(sockets[7], parsed[7], 1.0)),
        ("forwarded offer to JSON", lambda: orjson.dumps(tracker_message_object(forwarded))),
    ]
    print(f"{args.peers} peers, {args.offers} offers of {args.sdp_bytes} B per announce "
          f"({len(msgs[7])} B of JSON); us per call, best of {args.repeat}")
    for name, fn in cases:
        best = min(timeit.repeat(fn, number=args.number, repeat=args.repeat)) / args.number
        print(f"  {name:28s} {best * 1e6:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
