"""Coverage-guided fuzzing of the same parser entry points with atheris (libFuzzer), when it is installed
(``pip install atheris``; not a test dependency). Run one target:

    python tests/fuzz/atheris_harness.py TARGET [libFuzzer options, e.g. -max_total_time=60 corpus_dir]

TARGETs: see TARGETS below (``--list`` prints them). As in the hypothesis harnesses, only the project's own
error types (and each function's documented ones) may escape; anything else is a crash and libFuzzer saves
the input (``-artifact_prefix=``). Known open bugs are tolerated as in the hypothesis harnesses. The API
harness is not here: it needs an HTTP server per input.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

import atheris

with atheris.instrument_imports(include=["bridge"]):
    import orjson

    from bridge.errors import BencodeError, MetainfoError, RemoteProtocolError, TrackerError
    from bridge.proto import bencode, extension, mse, tracker, utp, websocket, wstracker
    from bridge.proto.metainfo import parse_hostport, parse_info, parse_info_hash, parse_magnet, parse_torrent
    from bridge.proto.wire import Wire
    from bridge.server.ranges import RangeNotSatisfiable, parse_range
    from bridge.tracker import codec

CALL_LIMIT = float(os.environ.get("FUZZ_CALL_LIMIT", "1.0"))


def _call(fn, *args, allowed=()):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    try:
        fn(*args)
    except allowed:
        pass
    elapsed = time.perf_counter() - start
    if elapsed > CALL_LIMIT:
        raise AssertionError(f"{fn.__qualname__} took {elapsed:.3f} s")


def bencode_target(data: bytes) -> None:
    for fn in (bencode.decode, bencode.decode_prefix, bencode.decode_with_spans):
        _call(fn, data, allowed=(BencodeError,))


def torrent_target(data: bytes) -> None:
    _call(parse_torrent, data, allowed=(MetainfoError,))
    _call(parse_info, data, allowed=(MetainfoError,))


def magnet_target(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    for fn in (parse_magnet, parse_hostport, parse_info_hash):
        _call(fn, text, allowed=(MetainfoError,))


def wire_target(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    wire = Wire()
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    at = 0
    rng = random.Random(len(stream))
    try:
        while at < len(stream):
            n = rng.randint(1, 200)
            _call(wire.receive_data, stream[at:at + n], allowed=())
            at += n
    except RemoteProtocolError:
        pass


def extension_target(data: bytes) -> None:
    for fn in (extension.decode_handshake, extension.decode_metadata, extension.decode_pex):
        _call(fn, data, allowed=(RemoteProtocolError,))


def utp_target(data: bytes) -> None:
    _call(utp.parse_header, data)
    _call(utp.UtpConnection.accept, data, 0.0, random.Random(0), allowed=(RemoteProtocolError,))
    rng = random.Random(0)
    a = utp.UtpConnection.connect(0.0, rng)
    (syn,) = a.datagrams_to_send(0.0)
    b = utp.UtpConnection.accept(syn, 0.0, rng)
    for d in b.datagrams_to_send(0.01):
        a.receive_datagram(d, 0.01)
    fdp = atheris.FuzzedDataProvider(data)
    now = 0.02
    while fdp.remaining_bytes():
        dgram = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))
        target = a if fdp.ConsumeBool() else b
        if len(dgram) >= 4 and fdp.ConsumeBool():  # address the connection so it gets past the id check
            dgram = dgram[:2] + target.recv_id.to_bytes(2, "big") + dgram[4:]
        now += 0.05
        _call(target.receive_datagram, dgram, now)
        while target.next_event() is not None:
            pass
        _call(target.handle_timer, now)
        _call(target.datagrams_to_send, now)


INFO_HASH = bytes(range(20))


def mse_target(data: bytes) -> None:
    keys = {mse.req2_key(INFO_HASH): INFO_HASH}
    for side in (mse.MseResponder(keys.get, random.Random(0).randbytes),
                 mse.MseInitiator(INFO_HASH, b"x" * 68, random.Random(0).randbytes)):
        try:
            for at in range(0, len(data), 97):
                if side.result is not None:
                    break
                _call(side.receive_data, data[at:at + 97])
        except RemoteProtocolError:
            pass


def tracker_client_target(data: bytes) -> None:
    _call(tracker.parse_http_announce_response, data, allowed=(TrackerError,))
    _call(tracker.parse_udp_connect_response, data, 0, allowed=(TrackerError,))
    _call(tracker.parse_udp_announce_response, data, 0, allowed=(TrackerError,))
    _call(tracker.parse_tracker_url, data.decode("utf-8", "replace"), allowed=(TrackerError,))


def tracker_server_target(data: bytes) -> None:
    _call(codec.parse_udp_request, data, allowed=(TrackerError,))
    text = data.decode("utf-8", "surrogateescape")
    _call(codec.parse_http_announce, text, allowed=(TrackerError,))
    _call(codec.parse_http_scrape, text, allowed=(TrackerError,))


def wstracker_target(data: bytes) -> None:
    for d in (data, data.decode("utf-8", "replace")):
        _call(wstracker.parse_client_message, d, json.loads, allowed=(TrackerError,))
        _call(wstracker.parse_client_message, d, orjson.loads, allowed=(TrackerError,))
        _call(wstracker.parse_tracker_message, d, allowed=(TrackerError,))


def websocket_target(data: bytes) -> None:
    parser = websocket.ServerFrameParser(4096)
    for i in range(0, len(data), 97):  # also cut mid-frame; feeding on after an error must not crash either
        _call(parser.feed, data[i:i + 97], allowed=(websocket.WebSocketError,))


def range_target(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    size = fdp.ConsumeIntInRange(0, 2**63)
    _call(parse_range, fdp.ConsumeUnicodeNoSurrogates(2000), size, allowed=(RangeNotSatisfiable,))


TARGETS = {name[: -len("_target")].replace("_", "-"): fn for name, fn in list(globals().items())
           if name.endswith("_target") and callable(fn)}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        print("targets:", " ".join(TARGETS))
        sys.exit(0 if "--list" in sys.argv else 2)
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
