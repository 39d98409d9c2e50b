"""Calls, sends, per-key order, shared handlers and state, through the real broker."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from handlers import TerminalError
from streams.client import Client
from streams.kafka.worker import Worker
from tests.integration import apps
from tests.integration.helpers import poll_until

JSON = {"content-type": "application/json"}


async def test_one_way_sends_over_http_are_each_applied_once(ingress_url: str) -> None:
    keys = [f"k{i}" for i in range(20)]
    async with aiohttp.ClientSession() as http:

        async def send(key: str) -> None:
            async with http.post(f"{ingress_url}/Tally/{key}/add/send", json=1) as reply:
                assert reply.status == 202, await reply.text()
                body = await reply.json()
                assert body["status"] == "Accepted"
                assert body["invocationId"].startswith("inv_")

        await asyncio.gather(*(send(key) for key in keys for _ in range(25)))

        async def counts() -> dict[str, int]:
            result = {}
            for key in keys:
                async with http.post(f"{ingress_url}/Tally/{key}/count") as reply:
                    result[key] = await reply.json()
            return result

        await poll_until(counts, {key: 25 for key in keys}, 60, "counts after 20 x 25 sends")


async def test_a_handlers_sends_to_one_key_arrive_in_order(client: Client, worker: Worker) -> None:
    sent = await client.service("Relay", "fan_out").request({"key": "ordered", "count": 40})
    assert sent == 40

    async def items() -> list[int]:
        value: list[int] = await client.object("Tally", "ordered", "items").request()
        return value

    await poll_until(items, list(range(40)), 60, "items appended by 40 sends")


async def test_calls_and_sends_to_one_key_apply_in_issue_order(
    client: Client, worker: Worker
) -> None:
    assert await client.service("Relay", "mixed").request("mix") == [0, 1, 2, 3]


async def test_a_shared_handler_answers_while_an_exclusive_one_holds_the_key(
    client: Client, worker: Worker
) -> None:
    gate = apps.GATES.setdefault("busy", asyncio.Event())
    started = apps.STARTED.setdefault("busy", asyncio.Event())
    holding = asyncio.create_task(client.object("Tally", "busy", "hold").request())
    await asyncio.wait_for(started.wait(), 30)
    # Queued behind the holder: must not run until the gate opens.
    queued = asyncio.create_task(client.object("Tally", "busy", "add").request(5))
    assert await asyncio.wait_for(client.object("Tally", "busy", "count").request(), 10) == 0
    await asyncio.sleep(0.5)
    assert not queued.done(), "an exclusive call ran while another held the key"
    gate.set()
    assert await asyncio.wait_for(holding, 30) == "released"
    assert await asyncio.wait_for(queued, 30) == 5


async def test_request_response_chains_return_values_and_keep_error_codes(
    client: Client, worker: Worker
) -> None:
    assert await client.service("Relay", "sum_of").request(["a", "b", "a"]) == 1 + 1 + 2
    assert await client.service("Relay", "passes_on").request(418) == (
        "caught 418: refused with 418"
    )
    with pytest.raises(TerminalError) as failure:
        await client.service("Relay", "passes_on").request(422)
    assert failure.value.status_code == 422
    assert failure.value.message == "refused with 422"


async def test_http_calls_return_results_errors_and_the_invocation_id(ingress_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        # The ingress takes a body as deep as a record can carry; echo's result, one level
        # deeper, must fit in one too.
        for depth, status in ((253, 200), (254, 400)):
            deep = b"[" * depth + b"]" * depth
            async with http.post(f"{ingress_url}/Relay/echo", data=deep, headers=JSON) as reply:
                assert reply.status == status, await reply.text()
                answer = await reply.json()
            if status == 200:
                assert answer["value"] == json.loads(deep)
            else:
                assert "the result of Relay/echo is not JSON" in answer["message"]
        async with http.post(f"{ingress_url}/restate/call/Tally/h/add", json=2) as reply:
            assert reply.status == 200
            assert await reply.json() == 2
            assert reply.headers["x-restate-id"].startswith("inv_")
        async with http.post(f"{ingress_url}/Tally/h/add", json=3) as reply:
            assert await reply.json() == 5
        async with http.post(f"{ingress_url}/restate/send/Tally/h/add", json=1) as reply:
            assert reply.status == 202
        async with http.post(
            f"{ingress_url}/Relay/echo", json=[1], headers={"x-tenant": "blue"}
        ) as reply:
            echoed = await reply.json()
            assert echoed["value"] == [1]
            assert echoed["headers"]["x-tenant"] == "blue"
        async with http.post(f"{ingress_url}/Relay/passes_on", json=409) as reply:
            assert reply.status == 409
            assert await reply.json() == {"code": 409, "message": "refused with 409"}
            assert reply.headers["x-restate-id"].startswith("inv_")


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "says"),
    [
        ("/Nope/handler", b"1", JSON, 404, "unknown service"),
        ("/Tally/k/nope", b"1", JSON, 404, "no handler"),
        ("/restate/call/Nope/x", b"1", JSON, 404, "unknown service"),
        ("/Tally/add", b"1", JSON, 400, "bad path"),
        # An object's send with no key: it read as key "add", handler "send", a 404.
        ("/Tally/add/send", b"1", JSON, 400, "use /Object/key/handler/send"),
        ("/Relay/echo", b"{not json", JSON, 400, "not valid JSON"),
        ("/Relay/echo", b"1", {"content-type": "text/plain"}, 415, "not JSON"),
        # A type a web page may POST without a preflight: it called the handler.
        ("/Relay/echo", b"1", {"content-type": "text/plain;json"}, 415, "not JSON"),
        # A request a browser says another site sent (a form, a no-cors fetch).
        ("/Relay/echo", b"1", {**JSON, "sec-fetch-site": "cross-site"}, 403, "another origin"),
        ("/Relay/echo", b"", {"origin": "http://evil.example"}, 403, "another origin"),
        ("/Relay/echo", b"[" * 255 + b"]" * 255, JSON, 400, "deeper than a record"),
        ("/Relay/echo", b"[" * 254 + b"1" + b"]" * 254, JSON, 400, "deeper than a record"),
        ("/Relay/echo", b'{"a":' * 254 + b"1" + b"}" * 254, JSON, 400, "deeper than a record"),
        ("/Relay/echo", b"[" * 5_000 + b"]" * 5_000, JSON, 400, "deeper than a record"),
        # Parsed by Python, past the depth pydantic checks a record's value to: it was a 500.
        ("/Relay/echo", b"[" * 300 + b"]" * 300, JSON, 400, "deeper than a record"),
        ("/Relay/echo", b'{"a":' * 900 + b"1" + b"}" * 900, JSON, 400, "deeper than a record"),
        ("/Relay/echo/send", b"[" * 300 + b"]" * 300, JSON, 400, "deeper than a record"),
        # Past Python's 4,300 digits a plain ValueError: it was a 500.
        ("/Relay/echo", b"7" * 5_000, JSON, 400, "not valid JSON"),
        # What Python's parser takes beyond JSON; a record wrote each back as null.
        ("/Relay/echo", b"[1, NaN]", JSON, 400, "NaN is not JSON"),
        ("/Relay/echo", b"-Infinity", JSON, 400, "-Infinity is not JSON"),
        ("/Relay/echo", b"[1e400]", JSON, 400, "past a float's range"),
        ("/Relay/echo/send?delay=1s", b"[" * 254 + b"1" + b"]" * 254, JSON, 400, "deeper than a"),
        ("/Relay/echo", b"[" + b"1," * 600_000 + b"1]", JSON, 413, "larger than"),
        # Under the body limit, but written back as JSON each 1e9 is 1000000000.0: a record
        # over 1 MB, which the Kafka client refused with an error that became a 500.
        ("/Relay/echo", b"[" + b"1e9," * 180_000 + b"1]", JSON, 413, "larger than"),
        ("/Relay/echo", b"[" + b"1e9," * 72_000 + b"1]", JSON, 413, "larger than"),
        ("/Tally/k/add", b'"not a number"', JSON, 400, "invalid input"),
        ("/Tally/k/add?delay=5s", b"1", JSON, 400, "only allowed on sends"),
        ("/Tally/k/add/send?delay=soon", b"1", JSON, 400, "invalid delay"),
    ],
)
async def test_bad_http_requests_get_json_errors(
    ingress_url: str, path: str, body: bytes, headers: dict[str, str], status: int, says: str
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{ingress_url}{path}", data=body, headers=headers) as reply,
    ):
        assert reply.status == status, await reply.text()
        error = await reply.json()
        assert error["code"] == status
        assert says in error["message"]


@pytest.mark.parametrize(
    ("method", "path", "status", "says"),
    [
        ("GET", "/Tally/k/add", 405, "Method Not Allowed"),  # a call is a POST
        ("PUT", "/Tally/k/add", 405, "Method Not Allowed"),
        ("GET", "/nope", 404, "unknown service 'nope'"),  # these three were 405s too
        ("GET", "/restate/attach/", 404, "unknown service 'restate'"),
        ("DELETE", "/Tally/k/nope", 404, "no handler 'nope'"),
    ],
)
async def test_a_request_that_is_no_call_or_attach_says_why(
    ingress_url: str, method: str, path: str, status: int, says: str
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"{ingress_url}{path}") as reply,
    ):
        assert reply.status == status, await reply.text()
        assert says in (await reply.json())["message"]
        if status == 405:
            assert reply.headers["allow"] == "POST"
