"""WebSocket signalling of the embedded tracker with real `websockets` clients: offer/answer exchange,
scrape, and hostile input (each gets a ``failure reason`` or the connection is dropped, and other clients
keep working)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bridge.tracker import TrackerServer, start_tracker
from bridge.tracker.server import MAX_OUTBOX_BYTES

pytestmark = pytest.mark.timeout(120)

IH = bytes(range(0xEC, 0x100))  # high bytes: escaped as \u00XX by one client, raw UTF-8 by the other
IH_OTHER = b"other-swarm-12345678"
SDP_OFFER = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=offer\r\n"
SDP_ANSWER = "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=answer\r\n"


def s(raw: bytes) -> str:
    return raw.decode("latin-1")


def pid(tag: str) -> bytes:
    return (b"-WW0001-" + tag.encode() + b"\xff" * 20)[:20]


def oid(n: int) -> bytes:
    return b"\x80" + b"%019d" % n


def announce_msg(peer: bytes, ih: bytes = IH, offers: int = 0, left: int | None = 100, event: str | None = None,
                 numwant: int = 50, first_offer: int = 0, sdp: str = SDP_OFFER) -> dict[str, Any]:
    d: dict[str, Any] = {"action": "announce", "info_hash": s(ih), "peer_id": s(peer), "numwant": numwant,
                         "uploaded": 0, "downloaded": 0, "left": left}
    if event:
        d["event"] = event
    if offers:
        d["offers"] = [{"offer": {"type": "offer", "sdp": sdp}, "offer_id": s(oid(first_offer + i))}
                       for i in range(offers)]
    return d


async def open_ws(tracker: TrackerServer) -> ClientConnection:
    return await connect(tracker.ws_url, proxy=None, compression=None, open_timeout=5, close_timeout=2,
                         max_size=2**20)


async def send(ws: ClientConnection, obj: Any, *, raw_utf8: bool = False) -> None:
    await ws.send(json.dumps(obj, ensure_ascii=not raw_utf8))


async def recv(ws: ClientConnection, timeout: float = 5) -> dict[str, Any]:
    msg = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert isinstance(msg, dict) and msg.get("action") in ("announce", "scrape"), msg  # always an action
    return msg


async def silent(ws: ClientConnection, wait: float = 0.3) -> bool:
    try:
        msg = await asyncio.wait_for(ws.recv(), wait)
    except TimeoutError:
        return True
    raise AssertionError(f"unexpected message {msg!r}")


async def closed_by_tracker(ws: ClientConnection, timeout: float = 10) -> int | None:
    """Wait until the tracker has closed ``ws``; its close code (None if the TCP connection just ended)."""
    async with asyncio.timeout(timeout):
        with pytest.raises(ConnectionClosed):
            while True:
                await ws.recv()
    return ws.close_code


async def send_and_expect_drop(ws: ClientConnection, message: Any) -> None:
    """Send ``message``; the tracker must close the connection (1009, or an abrupt end while we are still
    sending) instead of answering."""
    try:
        await asyncio.wait_for(ws.send(message), 30)
    except ConnectionClosed:
        pass
    code = await closed_by_tracker(ws)
    assert code in (1009, 1006, None), code


async def offer_answer_exchange(tracker: TrackerServer, tag: str = "") -> None:
    """Two fresh clients in a swarm of their own: B joins, A announces one offer, B gets it and answers,
    A gets the answer."""
    ih = (b"\xfe exchange " + tag.encode() + b"." * 20)[:20]
    a, b = await open_ws(tracker), await open_ws(tracker)
    try:
        A, B = pid("A" + tag), pid("B" + tag)
        await send(b, announce_msg(B, ih, event="started"), raw_utf8=True)  # like a browser
        reply = await recv(b)
        assert reply["info_hash"] == s(ih) and reply["interval"] == 60
        await send(a, announce_msg(A, ih, offers=1, event="started"))  # \u00XX escapes, like libtorrent
        reply = await recv(a)
        assert reply["info_hash"] == s(ih) and "offer" not in reply
        offer = await recv(b)
        assert offer == {"action": "announce", "info_hash": s(ih), "peer_id": s(A), "offer_id": s(oid(0)),
                         "offer": {"type": "offer", "sdp": SDP_OFFER}}
        await send(b, {"action": "announce", "info_hash": s(ih), "peer_id": s(B), "to_peer_id": s(A),
                       "offer_id": s(oid(0)), "answer": {"type": "answer", "sdp": SDP_ANSWER}}, raw_utf8=True)
        answer = await recv(a)
        assert answer == {"action": "announce", "info_hash": s(ih), "peer_id": s(B), "offer_id": s(oid(0)),
                          "answer": {"type": "answer", "sdp": SDP_ANSWER}}
        assert await silent(b)  # nothing goes back to the answerer
    finally:
        await a.close()
        await b.close()


# ------------------------------------------------------------------------------------------- happy paths


async def test_offer_and_answer_between_two_clients(tracker: TrackerServer) -> None:
    await offer_answer_exchange(tracker)
    stats = tracker.stats()
    assert stats["offers_forwarded"] == 1 and stats["answers_relayed"] == 1
    assert stats["announces"]["ws"] == 2


async def test_counts_scrape_and_close_leaves_swarms(tracker: TrackerServer) -> None:
    a, b = await open_ws(tracker), await open_ws(tracker)
    try:
        await send(a, announce_msg(pid("A"), left=None, event="started"))  # magnet: incomplete
        assert (await recv(a))["incomplete"] == 1
        await send(b, announce_msg(pid("B"), left=0, event="completed"))
        assert {k: v for k, v in (await recv(b)).items() if k in ("complete", "incomplete")} == {
            "complete": 1, "incomplete": 1}
        await send(b, announce_msg(pid("B"), ih=IH_OTHER, left=0))
        await recv(b)
        await send(a, {"action": "scrape", "info_hash": [s(IH), s(IH_OTHER)]})
        assert await recv(a) == {"action": "scrape", "files": {
            s(IH): {"complete": 1, "incomplete": 1, "downloaded": 0},
            s(IH_OTHER): {"complete": 1, "incomplete": 0, "downloaded": 0}}}
        await b.close()
        # B's socket closed: it left both swarms.
        async with asyncio.timeout(5):
            while True:
                await send(a, {"action": "scrape", "info_hash": s(IH)})
                files = (await recv(a))["files"]
                if files[s(IH)]["complete"] == 0:
                    break
                await asyncio.sleep(0.02)
        assert files == {s(IH): {"complete": 0, "incomplete": 1, "downloaded": 0}}
        assert IH_OTHER not in tracker.state.swarms
    finally:
        await a.close()
        await b.close()


async def test_offers_go_to_distinct_other_peers_never_back(tracker: TrackerServer) -> None:
    clients = [await open_ws(tracker) for _ in range(4)]
    try:
        for i, ws in enumerate(clients):
            await send(ws, announce_msg(pid(f"P{i}"), event="started"))
            await recv(ws)
        await send(clients[0], announce_msg(pid("P0"), offers=5))
        assert "offer" not in await recv(clients[0])
        assert await silent(clients[0])  # never its own offers
        got = [await recv(ws) for ws in clients[1:]]  # three peers, five offers: three forwarded, one each
        assert sorted(m["offer_id"] for m in got) == sorted({m["offer_id"] for m in got})
        for ws in clients[1:]:
            assert await silent(ws, 0.1)
    finally:
        for ws in clients:
            await ws.close()


async def test_peer_id_in_use_on_another_connection(tracker: TrackerServer) -> None:
    a, b = await open_ws(tracker), await open_ws(tracker)
    try:
        await send(a, announce_msg(pid("A")))
        await recv(a)
        await send(b, announce_msg(pid("A")))
        reply = await recv(b)
        assert "another connection" in reply["failure reason"] and reply["info_hash"] == s(IH)
    finally:
        await a.close()
        await b.close()


# ------------------------------------------------------------------------------------------- hostile input

GOOD_IH, GOOD_PID = s(IH), s(pid("H"))


def _announce(**over: Any) -> str:
    d: dict[str, Any] = {"action": "announce", "info_hash": GOOD_IH, "peer_id": GOOD_PID, "numwant": 5, "uploaded": 0,
         "downloaded": 0, "left": 0}
    d.update(over)
    return json.dumps({k: v for k, v in d.items() if v is not ...})


def _answer(**over: Any) -> str:
    d: dict[str, Any] = {"action": "announce", "info_hash": GOOD_IH, "peer_id": GOOD_PID, "to_peer_id": s(pid("nobody")),
         "offer_id": s(oid(1)), "answer": {"type": "answer", "sdp": "x"}}
    d.update(over)
    return json.dumps({k: v for k, v in d.items() if v is not ...})


def _offers(*items: Any) -> str:
    return _announce(offers=list(items))


HOSTILE: list[tuple[str, str | bytes]] = [
    ("not json", "garbage{"),
    ("empty", ""),
    ("json array", "[1, 2, 3]"),
    ("json string", '"announce"'),
    ("json null", "null"),
    ("deep nesting", "[" * 30000 + "]" * 30000),
    ("unknown action", json.dumps({"action": "bogus", "info_hash": GOOD_IH})),
    ("action of the wrong type", json.dumps({"action": ["announce"]})),
    ("missing action", json.dumps({"info_hash": GOOD_IH, "peer_id": GOOD_PID})),
    ("missing fields", json.dumps({"action": "announce"})),
    ("missing peer_id", _announce(peer_id=...)),
    ("info_hash a number", _announce(info_hash=123)),
    ("info_hash a list", _announce(info_hash=[GOOD_IH])),
    ("info_hash 19 characters", _announce(info_hash=GOOD_IH[:19])),
    ("info_hash 21 characters", _announce(info_hash=GOOD_IH + "x")),
    ("peer_id 40 hex characters", _announce(peer_id="ab" * 20)),
    ("peer_id above U+00FF", _announce(peer_id="\u0100" * 20)),
    ("numwant negative", _announce(numwant=-1)),
    ("numwant a string", _announce(numwant="5")),
    ("numwant huge", _announce(numwant=10**30)),
    ("left a bool", _announce(left=True)),
    ("left a float", _announce(left=1.5)),
    ("uploaded negative", _announce(uploaded=-5)),
    ("event unknown", _announce(event="exploded")),
    ("event a number", _announce(event=3)),
    ("offers not a list", _announce(offers="offer")),
    ("offer not an object", _offers(1)),
    ("offer_id short", _offers({"offer": {"type": "offer", "sdp": "x"}, "offer_id": "short"})),
    ("offer_id missing", _offers({"offer": {"type": "offer", "sdp": "x"}})),
    ("offer without sdp", _offers({"offer": {"type": "offer"}, "offer_id": s(oid(1))})),
    ("offer sdp a number", _offers({"offer": {"type": "offer", "sdp": 5}, "offer_id": s(oid(1))})),
    ("offer of type answer", _offers({"offer": {"type": "answer", "sdp": "x"}, "offer_id": s(oid(1))})),
    ("offer sdp too long", _offers({"offer": {"type": "offer", "sdp": "x" * 20000}, "offer_id": s(oid(1))})),
    ("answer without to_peer_id", _answer(to_peer_id=...)),
    ("answer to_peer_id wrong length", _answer(to_peer_id="x")),
    ("answer offer_id wrong type", _answer(offer_id=7)),
    ("answer not an object", _answer(answer="sdp")),
    ("answer of type offer", _answer(answer={"type": "offer", "sdp": "x"})),
    ("answer to a peer that is not there", _answer()),
    ("scrape hash wrong length", json.dumps({"action": "scrape", "info_hash": "abc"})),
    ("scrape hash a number", json.dumps({"action": "scrape", "info_hash": [1]})),
    ("scrape too many hashes", json.dumps({"action": "scrape", "info_hash": [GOOD_IH] * 65})),
    ("binary garbage", b"\x00\xff\xfe garbage \x80"),
    ("binary json of the wrong shape", b'{"action": "announce", "info_hash": 5}'),
]


async def test_hostile_messages_get_a_failure_and_others_keep_working(tracker: TrackerServer) -> None:
    hostile = await open_ws(tracker)
    bystander = await open_ws(tracker)
    try:
        await send(bystander, announce_msg(pid("bystander"), event="started"))
        await recv(bystander)
        for name, payload in HOSTILE:
            await hostile.send(payload)
            try:
                reply = await recv(hostile)
            except (TimeoutError, ConnectionClosed) as exc:
                pytest.fail(f"{name}: no failure reply ({exc!r})")
            assert isinstance(reply.get("failure reason"), str) and reply["failure reason"], (name, reply)
            # A failure about a message with a readable info_hash names it, so the client can match it.
            if name in ("answer to a peer that is not there", "offer_id short", "left a bool"):
                assert reply.get("info_hash") == GOOD_IH, (name, reply)
        # The hostile connection itself is still served...
        await send(hostile, {"action": "scrape", "info_hash": GOOD_IH})
        assert (await recv(hostile))["files"][GOOD_IH]["incomplete"] == 1
        # ... a binary frame with a valid message is handled like a text frame ...
        await hostile.send(json.dumps(announce_msg(pid("H"))).encode())
        assert (await recv(hostile))["incomplete"] == 2
        # ... and so are the others; nothing leaked to the bystander.
        assert await silent(bystander, 0.1)
        await offer_answer_exchange(tracker, tag="x")
        assert tracker.stats()["failures"]["ws"] == len(HOSTILE)
    finally:
        await hostile.close()
        await bystander.close()


async def test_oversized_messages_close_only_that_connection(tracker: TrackerServer) -> None:
    bystander = await open_ws(tracker)
    await send(bystander, announce_msg(pid("bystander")))
    await recv(bystander)
    try:
        # 100 MB in one frame: the tracker reads the frame header and closes (1009, message too big).
        big = await open_ws(tracker)
        await send_and_expect_drop(big, "x" * (100 * 1024 * 1024))

        # 100 MB as a fragmented message of 1 MiB frames.
        fragmented = await open_ws(tracker)

        async def fragments() -> AsyncIterator[str]:
            for _ in range(100):
                yield "y" * (1024 * 1024)

        await send_and_expect_drop(fragmented, fragments())

        # 10,000 offers (about 750 KB of JSON): over the message limit, dropped with the connection.
        many = await open_ws(tracker)
        await send_and_expect_drop(many, json.dumps(announce_msg(pid("many"), offers=10_000, sdp="")))

        # Still serving everyone else.
        await send(bystander, {"action": "scrape", "info_hash": s(IH)})
        assert (await recv(bystander))["files"][s(IH)]["incomplete"] == 1
        await offer_answer_exchange(tracker, tag="y")
    finally:
        await bystander.close()


async def test_many_offers_under_the_size_limit_forward_at_most_ten(tracker: TrackerServer) -> None:
    clients = [await open_ws(tracker) for _ in range(15)]
    try:
        for i, ws in enumerate(clients):
            await send(ws, announce_msg(pid(f"P{i}")))
            await recv(ws)
        msg = announce_msg(pid("P0"), offers=700, sdp="")
        assert len(json.dumps(msg)) < 64 * 1024
        await send(clients[0], msg)
        assert "offer" not in await recv(clients[0])
        got = 0
        for ws in clients[1:]:
            try:
                m = await asyncio.wait_for(ws.recv(), 0.3)
            except TimeoutError:
                continue
            assert "offer" in json.loads(m)
            got += 1
        assert got == 10
    finally:
        for ws in clients:
            await ws.close()


async def test_a_client_that_does_not_read_does_not_stall_the_tracker(tracker: TrackerServer) -> None:
    """Offers forwarded to a connection that never reads pile up to MAX_OUTBOX_BYTES and are then dropped;
    the flooder and everyone else are still served."""
    sleeper = await open_ws(tracker)  # the websockets client stops reading once 16 messages are queued
    flooder = await open_ws(tracker)
    try:
        await send(sleeper, announce_msg(pid("sleeper")))
        await recv(sleeper)
        sdp = "s" * 14_000
        sent = 0
        async with asyncio.timeout(60):
            while tracker.stats()["dropped"]["ws"] == 0:
                await send(flooder, announce_msg(pid("flooder"), offers=4, sdp=sdp, first_offer=sent))
                assert "offer" not in await recv(flooder)
                sent += 4
                assert sent * len(sdp) < 100 * MAX_OUTBOX_BYTES
        await offer_answer_exchange(tracker, tag="z")
        assert 0 < tracker.stats()["ws_queued_bytes"] <= MAX_OUTBOX_BYTES
    finally:
        await flooder.close()
        await sleeper.close()
    # Once the sleeper is gone, nothing stays queued for it.
    async with asyncio.timeout(10):
        while tracker.stats()["ws_queued_bytes"] or tracker.stats()["ws_connections"]:
            await asyncio.sleep(0.02)


async def test_websocket_on_the_announce_path_too(tracker: TrackerServer) -> None:
    """ws://host:port/announce (a common way to write a WebSocket tracker URL) reaches the same signalling."""
    ws = await connect(tracker.ws_url + "/announce", proxy=None, compression=None, open_timeout=5)
    try:
        await send(ws, announce_msg(pid("A")))
        assert (await recv(ws))["incomplete"] == 1
    finally:
        await ws.close()


async def test_connections_over_max_connections_get_503() -> None:
    from websockets.exceptions import InvalidStatus

    tracker = await start_tracker("127.0.0.1", 0, interval=60, max_connections=2)
    try:
        a, b = await open_ws(tracker), await open_ws(tracker)
        with pytest.raises(InvalidStatus) as refused:
            await open_ws(tracker)
        assert refused.value.response.status_code == 503
        await a.close()
        async with asyncio.timeout(5):  # a slot is free again once the tracker has seen the close
            while tracker.stats()["ws_connections"] > 1:
                await asyncio.sleep(0.02)
        c = await open_ws(tracker)
        await send(c, announce_msg(pid("C")))
        assert (await recv(c))["incomplete"] == 1
        await b.close()
        await c.close()
    finally:
        await tracker.close()


async def test_closed_connections_are_freed_without_the_cyclic_gc(tracker: TrackerServer) -> None:
    """A connection that ends (the client vanishes, or closes cleanly) is freed by reference counting: no
    connection waits for a full collection, which takes ~0.5 s with 10,000 connections (the soak
    benchmark found aiohttp's WebSocketResponse objects piling up between collections, with the loop
    stalling at each)."""
    import gc

    from bridge.tracker.server import _WsConn

    def alive() -> int:
        return sum(1 for o in gc.get_objects() if isinstance(o, _WsConn))

    async def raw_client(tag: str) -> asyncio.StreamWriter:
        reader, writer = await asyncio.open_connection("127.0.0.1", tracker.port)
        writer.write(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{tracker.port}\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        payload = json.dumps(announce_msg(pid(tag))).encode()
        writer.write(bytes((0x81, 0x80 | 126)) + len(payload).to_bytes(2, "big") + b"\0\0\0\0" + payload)
        await reader.read(2)  # the reply has started: the announce went through
        return writer

    gc.collect()
    gc.disable()
    try:
        before = alive()
        vanishing = [await raw_client(f"V{i}") for i in range(5)]
        clean = [await open_ws(tracker) for _ in range(5)]
        for i, ws in enumerate(clean):
            await send(ws, announce_msg(pid(f"C{i}")))
            await recv(ws)
        assert alive() == before + 10
        for writer in vanishing:
            writer.transport.abort()  # no close frame: the tracker's own close fails
        for ws in clean:
            await ws.close()
        async with asyncio.timeout(10):
            while tracker.stats()["ws_connections"]:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # the transports' connection_lost callbacks
        assert alive() == before
    finally:
        gc.enable()


@pytest.mark.interop
async def test_libtorrent_announces_over_websocket_and_its_offer_is_forwarded(
    tracker: TrackerServer, tmp_path: Any
) -> None:
    """libtorrent 2.1 (a WebTorrent peer too) announces to the embedded tracker's ws URL: it accepts our
    replies, and its offer reaches the other peer with 20-byte ids. (No answer is sent back: a fake SDP
    answer can leave libtorrent's session unable to shut down.)"""
    try:
        import libtorrent as lt
    except ImportError as exc:
        pytest.fail(f"the libtorrent Python bindings cannot be imported ({exc}); run scripts/setup", pytrace=False)
    ws = await open_ws(tracker)
    me = pid("browser")
    await send(ws, announce_msg(me, left=None, event="started"), raw_utf8=True)
    await recv(ws)
    ses = lt.session({
        "listen_interfaces": "127.0.0.1:0", "enable_dht": False, "enable_lsd": False, "enable_upnp": False,
        "enable_natpmp": False, "webtorrent_stun_server": "", "min_announce_interval": 1,
        "stop_tracker_timeout": 1,
        "alert_mask": int(lt.alert_category.error | lt.alert_category.tracker | lt.alert_category.status),
    })
    try:
        atp = lt.add_torrent_params()
        atp.info_hashes = lt.info_hash_t(lt.sha1_hash(IH))
        atp.save_path = str(tmp_path)
        atp.trackers = [tracker.ws_url]
        atp.flags &= ~(lt.torrent_flags.paused | lt.torrent_flags.auto_managed)
        ses.add_torrent(atp)
        replied = False
        offer: dict[str, Any] | None = None
        alerts: list[str] = []
        async with asyncio.timeout(30):
            while not (replied and offer):
                for a in ses.pop_alerts():
                    alerts.append(f"{type(a).__name__}: {a.message()}")
                    if isinstance(a, lt.tracker_reply_alert):
                        replied = True
                    if isinstance(a, lt.tracker_error_alert):
                        pytest.fail(f"libtorrent rejected the tracker: {a.message()}")
                if offer is None:
                    try:
                        offer = await recv(ws, 0.1)
                    except TimeoutError:
                        pass
                else:
                    await asyncio.sleep(0.05)
        assert offer["info_hash"] == s(IH) and "offer" in offer, offer
        lt_peer = offer["peer_id"].encode("latin-1")
        assert len(lt_peer) == 20 and lt_peer.startswith(b"-LT"), offer
        assert len(offer["offer_id"].encode("latin-1")) == 20
        assert offer["offer"]["type"] == "offer" and offer["offer"]["sdp"].startswith("v=0")
        assert tracker.stats()["peers"]["ws"] == 2, alerts
    finally:
        await ws.close()
        # The session's destructor holds the GIL while it closes its WebSocket to the tracker, and the
        # tracker runs on this thread's event loop: stop the tracker first, so that there is nothing left
        # for libtorrent to wait for.
        await tracker.close()
        ses.pause()
        del ses


def test_hostile_names_are_unique() -> None:
    names = [n for n, _ in HOSTILE]
    assert len(names) == len(set(names))


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    yield
