"""Workflows over HTTP and the client: run once per id, promises, shared handlers, attach."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from handlers import TerminalError
from streams.client import Client
from streams.kafka.worker import Worker
from streams.wire import ids
from streams.wire.records import Target
from tests.integration.helpers import poll_until


async def test_workflow_lifecycle_over_http(ingress_url: str) -> None:
    run_id = ids.workflow_run_id("Signup", "w1")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{ingress_url}/Signup/w1/run/send", json="ada@example.com") as r:
            assert r.status == 202
            assert await r.json() == {"invocationId": run_id, "status": "Accepted"}
        async with http.post(f"{ingress_url}/restate/send/Signup/w1/run", json="x") as r:
            assert r.status == 202
            assert await r.json() == {"invocationId": run_id, "status": "PreviouslyAccepted"}
        async with http.post(f"{ingress_url}/Signup/w1/run", json="x") as r:
            assert r.status == 409
            assert "already been started" in (await r.json())["message"]
        async with http.get(f"{ingress_url}/restate/workflow/Signup/w1/output") as r:
            assert r.status == 470
        async with http.post(f"{ingress_url}/Signup/w1/progress") as r:
            assert await r.json() == {"status": None, "link": None}
        attach = asyncio.create_task(http.get(f"{ingress_url}/restate/workflow/Signup/w1/attach"))
        async with http.post(f"{ingress_url}/Signup/w1/click", json="s3cret") as r:
            assert r.status == 200
        async with await asyncio.wait_for(attach, 30) as r:
            assert r.status == 200
            assert await r.json() == "ada@example.com verified with s3cret"
        # After run: shared handlers still work, state and promise are kept (retention).
        async with http.post(f"{ingress_url}/Signup/w1/progress") as r:
            assert await r.json() == {"status": "verified", "link": "s3cret"}
        async with http.post(f"{ingress_url}/Signup/w1/click", json="again") as r:
            assert r.status == 409, "a promise resolves once"
        async with http.get(f"{ingress_url}/restate/attach/{run_id}") as r:
            assert await r.json() == "ada@example.com verified with s3cret"
        async with http.post(f"{ingress_url}/Signup/w1/run", json="x") as r:
            assert r.status == 409, "run never executes twice for one id"


async def test_cancelling_a_workflow_waiting_on_a_promise(client: Client, ingress_url: str) -> None:
    receipt = await client.workflow_send("Signup", "w2").send("bob@example.com")
    run_id = receipt.invocation_id
    assert run_id == ids.workflow_run_id("Signup", "w2")
    deadline = asyncio.get_running_loop().time() + 30
    while True:  # the run is waiting once its email is in state
        progress = await client.workflow("Signup", "w2", "progress").request()
        with pytest.raises(TerminalError) as not_ready:
            await client.output(run_id)
        assert not_ready.value.status_code == 470
        if progress == {"status": None, "link": None}:
            break
        assert asyncio.get_running_loop().time() < deadline, progress
    status = await client.cancel(run_id)
    assert status in ("accepted", "success")
    with pytest.raises(TerminalError) as failure:
        await client.attach(run_id)
    assert failure.value.status_code == 409
    assert await client.workflow("Signup", "w2", "progress").request() == {
        "status": "aborted 409",
        "link": None,
    }


async def test_attach_by_a_target_that_is_not_a_run_needs_its_idempotency_key(
    client: Client, worker: Worker
) -> None:
    """Only a workflow's run and an idempotency key derive an invocation id from the target.
    Without either, attach had nothing to name and waited on a fresh id (a 404)."""

    async def announced() -> bool:
        return "Signup" in await client.catalog(refresh=True)

    await poll_until(announced, True, 60, "the worker's services known to the client")
    with pytest.raises(ValueError, match="not a workflow's run"):
        await client.output(target=Target(service="Tally", key="k", handler="add"))
    run = Target(service="Signup", key="attach-by-target", handler="run")
    with pytest.raises(TerminalError) as not_yet:
        await client.output(target=run)
    assert not_yet.value.status_code == 404, "no run started for this id: unknown"
    with pytest.raises(TerminalError, match="no worker has announced") as unknown:
        await client.output(target=Target(service="Nope", key="k", handler="run"))
    assert unknown.value.status_code == 404
