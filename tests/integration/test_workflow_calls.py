"""Handlers calling into workflows: request-response, deadlines, sends, attach and cancel."""

from __future__ import annotations

import asyncio

import aiohttp

from streams.client import Client
from streams.wire import ids
from tests.integration.helpers import invocation_status


async def test_a_handler_calls_a_workflow_run_and_gets_its_result(
    client: Client, ingress_url: str, admin_url: str
) -> None:
    run_id = ids.workflow_run_id("Signup", "wc1")
    async with aiohttp.ClientSession() as http:
        call = asyncio.create_task(
            client.service("Relay", "start_signup").request({"id": "wc1", "email": "a@x"})
        )
        detail = await invocation_status(http, admin_url, run_id, "running")
        assert detail["target"] == "Signup/wc1/run"
        assert detail["caller"], "the run knows the handler that called it"
        async with http.post(f"{ingress_url}/Signup/wc1/click", json="k3y") as reply:
            assert reply.status == 200
        assert await asyncio.wait_for(call, 30) == "a@x verified with k3y"
        # A second call for the same workflow id meets the first: 409, as over HTTP.
        again = client.service("Relay", "start_signup").request({"id": "wc1", "email": "b@x"})
        assert await asyncio.wait_for(again, 30) == "failed 409"


async def test_a_deadline_on_a_workflow_call_cancels_the_run(
    client: Client, ingress_url: str, admin_url: str
) -> None:
    spec = {"id": "wc2", "email": "c@x", "timeout_ms": 500}
    result = client.service("Relay", "start_signup").request(spec)
    assert await asyncio.wait_for(result, 30) == "failed 408"
    # The cancel reached the run under its own id: it compensated and completed with 409.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{ingress_url}/restate/workflow/Signup/wc2/attach") as reply:
            assert reply.status == 409
        async with http.post(f"{ingress_url}/Signup/wc2/progress") as reply:
            assert (await reply.json())["status"] == "aborted 409"


async def test_a_send_to_a_workflow_gives_the_run_id_to_attach_and_cancel(
    client: Client, ingress_url: str, admin_url: str
) -> None:
    send = client.service("Relay", "send_signup").request({"id": "wc3", "email": "d@x"})
    run_id = await asyncio.wait_for(send, 30)
    assert run_id == ids.workflow_run_id("Signup", "wc3")
    async with aiohttp.ClientSession() as http:
        await invocation_status(http, admin_url, run_id, "running")
        attach = asyncio.create_task(http.get(f"{ingress_url}/restate/attach/{run_id}"))
        async with http.patch(f"{admin_url}/invocations/{run_id}/cancel") as reply:
            assert reply.status == 202, await reply.text()
        async with await asyncio.wait_for(attach, 30) as reply:
            assert reply.status == 409
            assert (await reply.json())["message"] == "cancelled"
        async with http.post(f"{ingress_url}/Signup/wc3/progress") as reply:
            assert (await reply.json())["status"] == "aborted 409"
