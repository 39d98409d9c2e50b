"""Requests aiohttp refuses before any handler sees them (``streams.http.shared``): a
request line or a header too long, too many headers, not HTTP at all. They are answered in
the JSON every other error has, as DESIGN asks of every 4xx, and the connection closes.
Served on loopback by the runner the ingress and the admin API use; no Kafka."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from streams.http.shared import ADMIN_OPEN, LIVENESS, app_runner, bearer, json_errors


async def hello(request: web.Request) -> web.Response:
    return web.json_response({"hello": True})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    app = web.Application(middlewares=[json_errors])
    app.router.add_get("/hello", hello)
    runner = app_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as it is; the status, headers and body of the answer, read until
    the server closes the connection (it does, after an error; bounded: 10 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return int(status_line.split()[1]), headers, body


REFUSED = {
    "a header over 8,190 bytes": b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: "
    + b"a" * 9000
    + b"\r\n\r\n",
    "129 headers": b"GET /hello HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-%d: 1\r\n" % i for i in range(129))
    + b"\r\n",
    "a request line over 64 KiB": b"GET /" + b"k" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "not HTTP": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", REFUSED.values(), ids=REFUSED.keys())
async def test_a_request_aiohttp_refuses_is_answered_in_json(
    port: int, request_bytes: bytes
) -> None:
    status, headers, body = await exchange(port, request_bytes)
    assert 400 <= status < 500, (status, body)
    assert headers.get("content-type", "").startswith("application/json"), (headers, body)
    answer = json.loads(body)
    assert answer["code"] == status
    assert answer["message"], answer


async def test_a_request_it_takes_is_answered_as_before(port: int) -> None:
    status, _, body = await exchange(
        port, b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert (status, json.loads(body)) == (200, {"hello": True})


@pytest.mark.parametrize(
    ("open_routes", "path", "authorization", "status"),
    [
        (LIVENESS, "/health", None, 200),
        (LIVENESS, "/", None, 401),  # the ingress's 404 would read the catalog from Kafka
        (LIVENESS, "/ui", None, 401),
        (ADMIN_OPEN, "/ui", None, 200),  # the admin port's static page
        (ADMIN_OPEN, "/hello", None, 401),
        (ADMIN_OPEN, "/hello", "Bearer s3cret", 200),
        (ADMIN_OPEN, "/hello", "bearer s3cret", 200),  # the scheme in any case (RFC 7235)
        (ADMIN_OPEN, "/hello", "BEARER  s3cret", 200),
        (ADMIN_OPEN, "/hello", "Bearer wrong", 401),
        (ADMIN_OPEN, "/hello", "Basic s3cret", 401),
        (ADMIN_OPEN, "/hello", "Bearers3cret", 401),
        (ADMIN_OPEN, "/hello", "s3cret", 401),
    ],
)
async def test_the_token_is_asked_for_everywhere_but_the_open_routes(
    open_routes: frozenset[tuple[str, str]], path: str, authorization: str | None, status: int
) -> None:
    """``GET /`` and ``GET /ui`` were open on the ingress as on the admin port: without the
    token, each one's 404 made the ingress read its service catalog from Kafka again."""
    app = web.Application(middlewares=[json_errors, bearer("s3cret", open_routes)])
    for route in ("/hello", "/health", "/", "/ui"):
        app.router.add_get(route, hello)
    runner = app_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        header = b"" if authorization is None else b"Authorization: %s\r\n" % authorization.encode()
        request = b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s\r\n" % (
            path.encode(),
            header,
        )
        answered, _, body = await exchange(port, request)
    finally:
        await runner.cleanup()
    assert answered == status, body
    if status == 401:
        assert json.loads(body)["code"] == 401
