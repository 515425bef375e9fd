"""Fuzz the add-torrent body validation of the JSON API (bridge/server/api.py, POST /api/v1/torrents) through
aiohttp's test server, with a stub daemon whose ``add`` only records its arguments.

A body is either refused with 400 and a JSON error, or handed to ``daemon.add`` with well-typed arguments;
never a 500 (an exception escaping the handler)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import traceback
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from fuzz_support import DEADLINE, SUPPRESS, check, mutated
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.daemon import ApiError
from bridge.server.api import add_api_routes

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=DEADLINE, suppress_health_check=SUPPRESS)
# aiohttp warns about each malformed Content-Disposition it reads; that is the input here.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:aiohttp.multipart")


class StubDaemon:
    def __init__(self) -> None:
        self.options = SimpleNamespace(api_token=None)
        self.entries: dict[str, Any] = {}
        self.calls: list[dict[str, Any]] = []

    async def add(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        return kwargs

    def torrent_json(self, entry: Any, detail: bool = False) -> dict[str, Any]:
        return {"infohash": "0" * 40}

    def get(self, info_hash: str) -> Any:
        raise ApiError(404, "no such torrent")


class _Catch(logging.Handler):
    """Keeps the exception aiohttp logs when a handler fails (the cause of a 500)."""

    def __init__(self) -> None:
        super().__init__()
        self.exc: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.exc = record.exc_info[1]


class Api:
    def __init__(self) -> None:
        self.catch = _Catch()
        server_log = logging.getLogger("aiohttp.server")
        server_log.addHandler(self.catch)
        server_log.propagate = False  # a 500's traceback is reported by the assertion, not the log
        self.loop = asyncio.new_event_loop()
        self.daemon = StubDaemon()
        app = web.Application()
        add_api_routes(app, self.daemon)  # type: ignore[arg-type]
        self.client = TestClient(TestServer(app, loop=self.loop), loop=self.loop)
        self.loop.run_until_complete(self.client.start_server())

    def post(self, body: bytes, content_type: str) -> tuple[int, bytes]:
        self.catch.exc = None

        async def go() -> tuple[int, bytes]:
            async with self.client.post("/api/v1/torrents", data=body,
                                        headers={"Content-Type": content_type}) as r:
                return r.status, await r.read()
        return self.loop.run_until_complete(go())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()
        logging.getLogger("aiohttp.server").removeHandler(self.catch)
        logging.getLogger("aiohttp.server").propagate = True


@pytest.fixture(scope="module")
def api() -> Iterator[Api]:
    a = Api()
    yield a
    a.close()


def _post(api: Api, body: bytes, content_type: str) -> None:
    before = len(api.daemon.calls)
    status, reply = check(api.post, body, content_type, allowed=())  # type: ignore[misc]
    assert status in (201, 400), (status, reply[:300], "".join(traceback.format_exception(api.catch.exc))
                                  if api.catch.exc else None)
    if status == 400:
        assert isinstance(json.loads(reply)["error"], str)
        assert len(api.daemon.calls) == before
        return
    (call,) = api.daemon.calls[before:]
    for key in ("magnet", "url", "path"):
        assert call[key] is None or isinstance(call[key], str)
    assert call["torrent"] is None or isinstance(call["torrent"], bytes)
    assert isinstance(call["peers"], list) and all(isinstance(p, str) for p in call["peers"])
    assert isinstance(call["paused"], bool)


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
                    st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode()),
                    st.sampled_from(["magnet:?xt=urn:btih:" + "a" * 40, "1.2.3.4:80", "=", "QQ=="]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=10)
keys = st.sampled_from(["magnet", "torrent", "url", "path", "peers", "paused", "other"])
json_bodies = st.dictionaries(keys, json_values, max_size=5).map(lambda d: json.dumps(d).encode())
BOUNDARY = "fuzzboundary"
multipart_bodies = st.lists(st.tuples(st.sampled_from(["torrent", "peers", "paused", "x"]), st.binary(max_size=40)),
                            max_size=3).map(lambda parts: b"".join(
                                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{n}"\r\n\r\n'.encode() + v
                                + b"\r\n" for n, v in parts) + f"--{BOUNDARY}--\r\n".encode())
content_types = st.sampled_from(["application/json", "text/plain", f"multipart/form-data; boundary={BOUNDARY}",
                                 "multipart/form-data", "application/octet-stream", "application/json; charset=bogus",
                                 "application/json; charset=utf-16", "application/json; charset=latin-1"])


@FUZZ
@given(st.binary(max_size=512), content_types)
def test_fuzz_api_add_bytes(api: Api, body: bytes, content_type: str) -> None:
    _post(api, body, content_type)


@FUZZ
@given(st.one_of(json_bodies, mutated(json_bodies)))
def test_fuzz_api_add_json(api: Api, body: bytes) -> None:
    _post(api, body, "application/json")


@FUZZ
@given(st.one_of(multipart_bodies, mutated(multipart_bodies)))
def test_fuzz_api_add_multipart(api: Api, body: bytes) -> None:
    _post(api, body, f"multipart/form-data; boundary={BOUNDARY}")

