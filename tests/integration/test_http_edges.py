"""The HTTP ingress at its edges: limits answered 400 in JSON, credentials kept out of
invocation metadata, method-exact open routes, and calls whose client has gone."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import signal
import threading
import zlib
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from streams.client import Client
from streams.kafka.broker import free_port
from streams.kafka.worker import Worker
from streams.settings import Settings
from tests.integration import apps
from tests.integration.conftest import ADMIN_URLS, in_process_worker, served_ingress
from tests.integration.helpers import invocation_status, kourier_process, poll_until
from tests.processes import stop_process


@pytest.mark.parametrize(
    ("path", "headers", "words"),
    [
        (f"Tally/{'k' * 4097}/add", {}, "key"),
        ("Tally/k/add", {"idempotency-key": "i" * 1025}, "idempotency key"),
        ("Tally/k/add/send?delay=99999999999d", {}, "9999"),
        ("Tally/k/add/send?delay=", {}, "invalid delay ''"),  # not a send without a delay
        ("Tally/k/add/send?delay=PT5S%0A", {}, "invalid delay 'PT5S\\n'"),  # "$" took it
        ("Tally/k/add/send?delay=5s%0A", {}, "invalid delay '5s\\n'"),
        ("restate/send/Tally/k/add?delay=P99999999D", {}, "9999"),
    ],
)
async def test_limits_are_400_with_a_json_body(
    ingress_url: str, path: str, headers: dict[str, str], words: str
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{ingress_url}/{path}", json=1, headers=headers) as reply,
    ):
        assert reply.status == 400
        assert reply.content_type == "application/json"
        body = await reply.json()
        assert body["code"] == 400
        assert words in body["message"]


async def test_an_id_with_a_newline_after_it_is_400(ingress_url: str) -> None:
    """A pattern's ``$`` matches before a final newline: such an id passed the ingress's
    check, then failed the record's (pydantic's), and the answer was a 500."""
    inv_id = quote("inv_" + "0" * 32 + "\n", safe="")
    admin_url = ADMIN_URLS[ingress_url]
    async with aiohttp.ClientSession() as http:
        for method, url in [
            ("GET", f"{ingress_url}/restate/attach/{inv_id}"),
            ("GET", f"{ingress_url}/restate/invocation/{inv_id}/output"),
            ("PATCH", f"{admin_url}/invocations/{inv_id}/cancel"),
        ]:
            async with http.request(method, URL(url, encoded=True)) as reply:
                assert reply.status == 400, (url, reply.status, await reply.text())
                assert "not a Kourier invocation id" in (await reply.json())["message"]


async def test_an_empty_idempotency_key_is_400(ingress_url: str) -> None:
    """An empty key is a caller's bug (an unset variable), not a request without one: taken
    for none, the call would run again on every retry the caller believes deduplicated."""
    async with aiohttp.ClientSession() as http:
        headers = {"idempotency-key": ""}
        async with http.post(f"{ingress_url}/Tally/k/add", json=1, headers=headers) as reply:
            assert reply.status == 400, await reply.text()
            assert "empty" in (await reply.json())["message"]
        async with http.get(f"{ingress_url}/restate/invocation/Tally/k/add//output") as reply:
            assert reply.status == 400, await reply.text()
            assert "empty" in (await reply.json())["message"]


async def test_a_body_that_does_not_decompress_is_400_and_one_log_line(
    ingress_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A body that says gzip and is not: a 400 in JSON on both ports, not a 500; and
    whether or not its request was answered from its body (here also a 404), one INFO line
    each, not aiohttp's "Unhandled exception" with a traceback."""
    admin_url = ADMIN_URLS[ingress_url]
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    caplog.set_level(logging.INFO)
    async with aiohttp.ClientSession() as http:
        for url in (f"{ingress_url}/Tally/k/add", f"{admin_url}/invocations/cancel?key=k"):
            async with http.post(url, data=b'{"ids": []}', headers=headers) as reply:
                assert reply.status == 400, (url, await reply.text())
                assert "gzip" in (await reply.json())["message"]
        async with http.post(f"{admin_url}/no/such/route", data=b"xx", headers=headers) as reply:
            assert reply.status == 404, await reply.text()
        # A deflate body that ends early fails in aiohttp's parser: its 400, in JSON too.
        cut = zlib.compress(b'"ada"')[:-3]
        deflated = {**headers, "content-encoding": "deflate"}
        async with http.post(f"{ingress_url}/Tally/k/add", data=cut, headers=deflated) as reply:
            assert reply.status == 400, await reply.text()
            assert (await reply.json())["code"] == 400

        async def unread() -> int:
            return sum("body could not be read" in r.getMessage() for r in caplog.records)

        await poll_until(unread, 4, 10, "an INFO line for each of the four bodies")
        assert [r.getMessage() for r in caplog.records if r.name == "aiohttp.server"] == []
        packed = gzip.compress(b"2")
        async with http.post(f"{ingress_url}/Tally/k/add", data=packed, headers=headers) as reply:
            assert reply.status == 200, await reply.text()


async def test_a_lone_surrogate_is_400_named_as_such(ingress_url: str) -> None:
    """JSON may spell a lone UTF-16 surrogate; no record can carry one. The 400 says so
    (it used to call the value nested too deep)."""
    headers = {"content-type": "application/json"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{ingress_url}/Tally/k/add", data=b'"\\ud800"', headers=headers) as reply,
    ):
        assert reply.status == 400, await reply.text()
        message = (await reply.json())["message"]
        assert "lone UTF-16 surrogate" in message
        assert "nested" not in message


async def test_a_key_of_the_longest_kind_is_taken(ingress_url: str) -> None:
    """4,096 characters of four UTF-8 bytes each: 49,152 bytes in the path, six times
    aiohttp's default request line. The longest key any record may hold is served."""
    key = "\U0001f600" * 4096
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{ingress_url}/Tally/{quote(key)}/add", json=3) as reply:
            assert reply.status == 200, await reply.text()
            assert await reply.json() == 3
        async with http.get(f"{ADMIN_URLS[ingress_url]}/state/Tally/{quote(key)}") as reply:
            assert reply.status == 200, await reply.text()


async def test_a_key_may_hold_a_slash_sent_as_percent_2f(ingress_url: str) -> None:
    """``/Tally/a%2Fb/add`` is key ``a/b``, for a call, the object's state and an attach by
    idempotency key (itself holding a slash): each path segment is decoded on its own.
    The whole path used to be decoded first, so the key split into two segments (a 400)."""
    admin_url = ADMIN_URLS[ingress_url]
    async with aiohttp.ClientSession() as http:
        headers = {"idempotency-key": "order/7"}
        url = URL(f"{ingress_url}/Tally/a%2Fb/add", encoded=True)
        async with http.post(url, json=4, headers=headers) as reply:
            assert reply.status == 200, await reply.text()
            assert await reply.json() == 4
        state = URL(f"{admin_url}/state/Tally/a%2Fb", encoded=True)

        async def current() -> object:
            async with http.get(state) as reply:
                return await reply.json()

        # The admin index reads the state changelog on its own: it may lag the answer.
        await poll_until(current, {"count": 4}, 30, "the state of key a/b in the admin API")
        output = URL(
            f"{ingress_url}/restate/invocation/Tally/a%2Fb/add/order%2F7/output", encoded=True
        )
        async with http.get(output) as reply:
            assert reply.status == 200, await reply.text()
            assert await reply.json() == 4


async def test_a_key_may_hold_braces(ingress_url: str) -> None:
    """aiohttp's pattern for a path part, ``[^{}/]+``, met the key decoded: a workflow with id
    ``{w}`` ran, and its output was a 404 ("unknown service 'restate'", after a catalog
    read), as was the state of object ``{k}`` on the admin port."""
    admin_url = ADMIN_URLS[ingress_url]
    async with aiohttp.ClientSession() as http:
        run = URL(f"{ingress_url}/Signup/%7Bw%7D/run/send", encoded=True)
        async with http.post(run, json="a@example.com") as reply:
            assert reply.status == 202, await reply.text()
        click = URL(f"{ingress_url}/Signup/%7Bw%7D/click", encoded=True)
        async with http.post(click, json="s3") as reply:
            assert reply.status == 200, await reply.text()
        attach = URL(f"{ingress_url}/restate/workflow/Signup/%7Bw%7D/attach", encoded=True)
        async with http.get(attach) as reply:
            assert reply.status == 200, await reply.text()
            assert await reply.json() == "a@example.com verified with s3"
        async with http.post(URL(f"{ingress_url}/Tally/%7Bk%7D/add", encoded=True), json=2) as r:
            assert r.status == 200, await r.text()
        state = URL(f"{admin_url}/state/Tally/%7Bk%7D", encoded=True)

        async def current() -> object:
            async with http.get(state) as reply:
                return await reply.json()

        await poll_until(current, {"count": 2}, 30, "the state of key {k} in the admin API")


async def test_a_path_that_is_not_utf8_once_decoded_is_400(ingress_url: str) -> None:
    """Each segment is percent-decoded on its own; bytes that are not UTF-8 were replaced by
    U+FFFD, so that ``%FF`` and ``%FE`` named one object. An attach by idempotency key with
    an empty object key, handler or service, which no call's path can name, is 400 too
    (an empty handler was a 404)."""
    async with aiohttp.ClientSession() as http:
        for path in ("Tally/%FF/add", "Tally/%C0%AF/add", "restate/send/Tally/a%FEb/add"):
            async with http.post(URL(f"{ingress_url}/{path}", encoded=True), json=1) as reply:
                assert reply.status == 400, (path, await reply.text())
                assert "is not UTF-8" in (await reply.json())["message"], path
        for path in ("restate/invocation/Tally/%FF/add/i/output",
                     "restate/workflow/Signup/%FF/output"):  # fmt: skip
            async with http.get(URL(f"{ingress_url}/{path}", encoded=True)) as reply:
                assert reply.status == 400, (path, await reply.text())
                assert "is not UTF-8" in (await reply.json())["message"], path
        async with http.get(f"{ingress_url}/restate/invocation/Tally//add/i/output") as reply:
            assert reply.status == 400, await reply.text()
            assert "needs a key" in (await reply.json())["message"]
        for path in ("Tally/k//i", "/Tally/add/i", "Relay//i"):  # no handler, no service
            async with http.get(f"{ingress_url}/restate/invocation/{path}/attach") as reply:
                assert reply.status == 400, (path, await reply.text())
                assert "a service and a handler are named" in (await reply.json())["message"]
        # A valid escape still names its key.
        async with http.post(URL(f"{ingress_url}/Tally/caf%C3%A9/add", encoded=True),
                             json=2) as reply:  # fmt: skip
            assert reply.status == 200, await reply.text()
            assert await reply.json() == 2


async def raw_post(url: str, header: bytes) -> tuple[bytes, bytes]:
    """POST /Tally/k/add with ``header`` as sent, bytes that aiohttp's client would not
    send; the answer's head and body."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /Tally/k/add HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + header
            + b"\r\nContent-Length: 1\r\nConnection: close\r\n\r\n1"
        )
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


async def test_a_header_that_is_not_utf8_is_400_named(ingress_url: str) -> None:
    """A header sent in another encoding (here Latin-1) reaches aiohttp as lone surrogates;
    the 400 names the header, not the (fine) JSON argument."""
    head, body = await raw_post(ingress_url, b"X-Note: caf\xe9")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert json.loads(body)["message"] == "header 'x-note' is not UTF-8"


async def test_a_token_that_is_not_utf8_is_401(topics: Settings, worker: Worker) -> None:
    """With a token configured, an Authorization header in another encoding is a wrong
    token (401), not a failure to compare it (a 500)."""
    settings = topics.model_copy(update={"token": "t0ken"})
    async with served_ingress(settings) as (_, url):
        head, body = await raw_post(url, b"Authorization: Bearer t0k\xe9n")
    assert head.startswith(b"HTTP/1.1 401"), head
    assert json.loads(body)["code"] == 401


async def test_credentials_are_never_stored_but_other_headers_pass(
    topics: Settings, worker: Worker, client: Client
) -> None:
    settings = topics.model_copy(update={"denied_headers": ("x-tenant-secret",)})
    secrets = {
        "Authorization": "Basic c2VjcmV0",
        "Cookie": "session=s3cret",
        "Proxy-Authorization": "Basic c2VjcmV0",
        "X-Tenant-Secret": "configured",
    }
    async with served_ingress(settings) as (_, url), aiohttp.ClientSession() as http:
        headers = {**secrets, "X-Request-Source": "test", "idempotency-key": "headers-1"}
        async with http.post(f"{url}/Relay/echo", json="hi", headers=headers) as reply:
            assert reply.status == 200
            inv_id = reply.headers["x-restate-id"]
            seen = (await reply.json())["headers"]
        assert seen == {"x-request-source": "test"}, "the handler sees only what may be kept"
        detail = await invocation_status(http, ADMIN_URLS[url], inv_id, "completed")
        assert detail["headers"] == {"x-request-source": "test"}
    # Records from other producers (here the Python client) are filtered by the worker.
    echoed = await client.service("Relay", "echo").request(
        "hi", headers={"cookie": "session=s3cret", "x-trace": "1"}
    )
    assert echoed["headers"] == {"x-trace": "1"}


async def test_open_routes_are_method_exact(topics: Settings, worker: Worker) -> None:
    settings = topics.model_copy(update={"token": "t0ken"})
    async with served_ingress(settings) as (_, url), aiohttp.ClientSession() as http:
        for base in (url, ADMIN_URLS[url]):
            async with http.get(f"{base}/health") as reply:
                assert reply.status == 200
            for path in ("/health", "/ui", "/"):
                async with http.post(f"{base}{path}", json=1) as reply:
                    assert reply.status == 401, (base, path)
                    assert (await reply.json())["code"] == 401


async def test_a_full_ingress_answers_429_in_json_and_takes_calls_again_once_freed(
    topics: Settings, worker: Worker
) -> None:
    """DESIGN §4: 429 when overloaded, a JSON body as every error."""
    async with (
        served_ingress(topics, max_in_flight=1) as (_, url),
        aiohttp.ClientSession() as http,
    ):
        held = asyncio.create_task(http.post(f"{url}/Tally/full-1/hold"))
        try:
            started = apps.STARTED.setdefault("full-1", asyncio.Event())
            await asyncio.wait_for(started.wait(), 30)
            async with http.post(f"{url}/Relay/echo", json=1) as reply:
                assert reply.status == 429
                assert (await reply.json())["code"] == 429
        finally:
            apps.GATES.setdefault("full-1", asyncio.Event()).set()
        async with await asyncio.wait_for(held, 30) as reply:
            assert reply.status == 200
        async with http.post(f"{url}/Relay/echo", json=2) as reply:
            assert reply.status == 200, "the slot was freed"


async def test_a_client_that_hangs_up_frees_its_slot(
    topics: Settings, worker: Worker, client: Client
) -> None:
    async with served_ingress(topics, max_in_flight=2) as (ingress, url):
        for key in ("gone-1", "gone-2"):
            async with aiohttp.ClientSession() as http:
                call = asyncio.create_task(http.post(f"{url}/Tally/{key}/hold"))
                started = apps.STARTED.setdefault(key, asyncio.Event())
                await asyncio.wait_for(started.wait(), 30)
                call.cancel()  # the client gives up and closes its connection

        async def in_flight() -> int:
            return ingress.in_flight

        await poll_until(in_flight, 0, 30, "calls in flight after their clients left")
        assert ingress.client.awaited == 0, "no response is awaited for a client that left"
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{url}/Relay/echo", json=1) as reply,
        ):
            assert reply.status == 200, "not 429: the slots were freed"
        for key in ("gone-1", "gone-2"):
            apps.GATES.setdefault(key, asyncio.Event()).set()


async def test_a_send_with_no_receipt_in_time_answers_408(topics: Settings) -> None:
    """A send that may meet an earlier one (here an idempotency key) waits for a worker's
    receipt. With no worker on its partition, the ingress answers 408 within the call
    timeout, naming the send, as it does a call, instead of holding the request (and a
    slot) until the HTTP client gives up."""
    async with in_process_worker(topics, apps.SERVICES, f"gone-{topics.namespace}"):
        pass  # announces the services, then stops: no worker reads the sends
    settings = topics.model_copy(update={"call_timeout": timedelta(seconds=1)})
    async with served_ingress(settings) as (ingress, url), aiohttp.ClientSession() as http:
        keyed = {"idempotency-key": "unanswered"}
        post = http.post(f"{url}/Tally/k/add/send", json=1, headers=keyed)
        async with await asyncio.wait_for(post, 30) as reply:
            assert reply.status == 408, await reply.text()
            body = await reply.json()
            inv_id = reply.headers["x-restate-id"]
        assert body["code"] == 408
        assert inv_id in body["message"]
        assert ingress.in_flight == 0, "the send's slot is freed"


async def test_a_call_waiting_when_the_ingress_shuts_down_answers_504(topics: Settings) -> None:
    """Closing the ingress's client ends the calls that wait with 504, not 503: their
    records are on Kafka, and the invocations may run."""
    async with in_process_worker(topics, apps.SERVICES, f"gone-{topics.namespace}"):
        pass  # announces the services, then stops: no worker answers the call
    async with served_ingress(topics) as (ingress, url), aiohttp.ClientSession() as http:
        call = asyncio.create_task(http.post(f"{url}/Tally/k/add", json=1))

        async def awaited() -> int:
            return ingress.client.awaited

        await poll_until(awaited, 1, 30, "the call waiting for its outcome")
        await ingress.client.close()
        async with await asyncio.wait_for(call, 30) as reply:
            assert reply.status == 504, await reply.text()
            message = (await reply.json())["message"]
            inv_id = reply.headers.get("x-restate-id")
        assert "may go on" in message
        assert inv_id is not None, "a call's own id is what one attaches to"
        assert f"/restate/attach/{inv_id}" in message


async def test_a_call_waiting_when_kourier_ingress_is_stopped_answers_504_with_its_id(
    topics: Settings, tmp_path: Path
) -> None:
    """``kourier ingress`` stopped its HTTP servers before its client: a call waiting for
    its outcome held the stop for aiohttp's 60 s, then had its connection cut, with no
    status and no ``x-restate-id``; a caller without an idempotency key could then neither
    attach to the invocation nor retry it safely. An attach that waits is answered 504
    with the id it waited for, too."""
    async with in_process_worker(topics, apps.SERVICES, f"gone-{topics.namespace}"):
        pass  # announces the services, then stops: no worker answers the call
    port, admin = free_port(), free_port()
    log = tmp_path / "ingress.log"
    ingress = kourier_process(topics, "ingress", "--port", str(port), "--admin-port", str(admin),
                              log=log)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def in_flight() -> str | None:
                try:
                    async with http.get(f"{url}/metrics") as reply:
                        text = await reply.text()
                    found = re.search(r"\nkourier_ingress_in_flight (\S+)\n", text)
                    return None if found is None else found[1]
                except aiohttp.ClientError:
                    return None  # not up yet

            async def waiting() -> bool:
                return await in_flight() == "2.0"

            await poll_until(in_flight, "0.0", 60, f"the ingress up ({log.read_text()[-300:]})")
            call = asyncio.create_task(http.post(f"{url}/Tally/k/add", json=1))
            attach = asyncio.create_task(http.get(f"{url}/restate/workflow/Signup/w/attach"))
            await poll_until(waiting, True, 60, "the call and the attach waiting")
            ingress.send_signal(signal.SIGTERM)
            async with await asyncio.wait_for(call, 30) as reply:
                assert reply.status == 504, await reply.text()
                message = (await reply.json())["message"]
                inv_id = reply.headers.get("x-restate-id")
            assert inv_id is not None, "a call's own id is what one attaches to"
            assert f"/restate/attach/{inv_id}" in message
            async with await asyncio.wait_for(attach, 30) as reply:
                assert reply.status == 504, await reply.text()
                assert reply.headers.get("x-restate-id", "").startswith("inv_"), reply.headers
        assert await asyncio.to_thread(ingress.wait, 30) == 0, log.read_text()[-500:]
    finally:
        stop_process(ingress)


async def test_an_admin_read_that_waits_for_the_index_holds_up_no_call(
    topics: Settings, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The admin index holds its lock while it applies a batch of changelog records (up
    to 1,000; longer at a catch-up). An admin read waiting for that lock ran on the event
    loop that also serves the calls, and held them all up."""
    async with served_ingress(topics) as (ingress, url), aiohttp.ClientSession() as http:
        index = ingress.index
        holding, done, released = threading.Event(), threading.Event(), threading.Event()

        def hold() -> None:  # stands for the index applying a long batch
            with index._lock:
                holding.set()
                done.wait(20)
                released.set()

        entered = threading.Event()
        query = index.query

        def noted(**filters: Any) -> list[dict[str, Any]]:
            entered.set()
            return query(**filters)

        monkeypatch.setattr(index, "query", noted)
        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        try:
            assert await asyncio.to_thread(holding.wait, 10)
            listing = asyncio.create_task(http.get(f"{ADMIN_URLS[url]}/invocations"))
            assert await asyncio.to_thread(entered.wait, 10), "the admin read never began"
            async with http.post(f"{url}/Relay/echo", json="through") as reply:
                assert reply.status == 200
            assert not released.is_set(), "the call waited for the index's lock"
        finally:
            done.set()
            holder.join(30)
        async with await asyncio.wait_for(listing, 30) as reply:
            assert reply.status == 200


async def test_a_call_past_the_timeout_answers_408_and_goes_on(
    topics: Settings, worker: Worker
) -> None:
    """A call, and an attach to it, each wait at most the call timeout (an attach waited
    for good, and was not counted in flight); the invocation goes on."""
    settings = topics.model_copy(update={"call_timeout": timedelta(seconds=1)})
    async with served_ingress(settings) as (ingress, url), aiohttp.ClientSession() as http:
        # An idempotency key keeps the outcome after completion, so attach finds it later.
        keyed = {"idempotency-key": "slow-1"}
        async with http.post(f"{url}/Tally/slow/hold", headers=keyed) as reply:
            assert reply.status == 408
            body = await reply.json()
            inv_id = reply.headers["x-restate-id"]
        assert body["code"] == 408
        assert inv_id in body["message"]
        await invocation_status(http, ADMIN_URLS[url], inv_id, "running")
        attaching = asyncio.create_task(http.get(f"{url}/restate/attach/{inv_id}"))

        async def in_flight() -> int:
            return ingress.in_flight

        await poll_until(in_flight, 1, 30, "the attach counted in flight while it waits")
        async with await asyncio.wait_for(attaching, 30) as reply:
            assert reply.status == 408, await reply.text()
            assert "attach again" in (await reply.json())["message"]
            assert reply.headers["x-restate-id"] == inv_id
        assert ingress.in_flight == 0, "the attach's slot is freed"
        apps.GATES.setdefault("slow", asyncio.Event()).set()
        async with http.get(f"{url}/restate/attach/{inv_id}") as reply:
            assert reply.status == 200
            assert await reply.json() == "released"
