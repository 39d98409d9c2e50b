"""Attach and output, over HTTP and the client, in every state."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from handlers import TerminalError
from streams.client import Client
from streams.wire.records import Target
from tests.integration import apps


async def test_attach_and_output_over_http(ingress_url: str, client: Client) -> None:
    gate = apps.GATES.setdefault("att", asyncio.Event())
    started = apps.STARTED.setdefault("att", asyncio.Event())
    async with aiohttp.ClientSession() as http:
        # An idempotent call is retained after it completes; hold it running first.
        async with http.post(
            f"{ingress_url}/Tally/att/hold/send", headers={"idempotency-key": "h1"}
        ) as reply:
            inv_id = (await reply.json())["invocationId"]
        await asyncio.wait_for(started.wait(), 30)
        async with http.get(f"{ingress_url}/restate/output/{inv_id}") as reply:
            assert reply.status == 470
            assert (await reply.json())["message"] == "not ready"
        attach = asyncio.create_task(http.get(f"{ingress_url}/restate/attach/{inv_id}"))
        await asyncio.sleep(0.3)
        assert not attach.done(), "attach waits while the invocation runs"
        gate.set()
        async with await asyncio.wait_for(attach, 30) as reply:
            assert reply.status == 200
            assert await reply.json() == "released"
        for path in (f"/restate/output/{inv_id}", f"/restate/invocation/{inv_id}/attach"):
            async with http.get(f"{ingress_url}{path}") as reply:
                assert reply.status == 200, path
                assert await reply.json() == "released"
        # Not retained (no idempotency key, no completed retention): 404 that says why.
        async with http.post(f"{ingress_url}/Tally/att/add", json=1) as reply:
            plain_id = reply.headers["x-restate-id"]
        async with http.get(f"{ingress_url}/restate/output/{plain_id}") as reply:
            assert reply.status == 404
            assert "not retained" in (await reply.json())["message"]
        async with http.get(f"{ingress_url}/restate/attach/nonsense") as reply:
            assert reply.status == 400


async def test_attach_from_the_client(client: Client, ingress_url: str) -> None:
    target = Target(service="Tally", key="att2", handler="refuse")
    inv_id, _ = await client.call(target, 418, idempotency_key="r")
    with pytest.raises(TerminalError) as failure:
        await client.attach(inv_id)
    assert failure.value.status_code == 418
    with pytest.raises(TerminalError) as missing:
        await client.output("inv_" + "0" * 32)
    assert missing.value.status_code == 404
