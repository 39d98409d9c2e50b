"""A handler's edges on a real broker: a cancel after a ``select``, an argument that is not
JSON, and a synchronous ``ctx.run`` that blocks its thread."""

from __future__ import annotations

import asyncio
import threading

import aiohttp
import pytest

from handlers import TerminalError
from streams.client import Client
from tests.integration import apps
from tests.integration.helpers import invocation_status, poll_until


async def _third_wait(http: aiohttp.ClientSession, admin_url: str, obj: str, key: str) -> str:
    """The id of ``obj/key/race`` once it waits in the sleep after its select."""

    async def journal_length() -> int:
        async with http.get(f"{admin_url}/invocations", params={"service": obj, "key": key}) as r:
            rows = [row for row in (await r.json())["invocations"] if row["status"] != "completed"]
        if not rows:
            return 0
        found[0] = rows[0]["id"]
        async with http.get(f"{admin_url}/invocations/{found[0]}") as r:
            return len((await r.json())["journal"])

    found = [""]
    await poll_until(journal_length, 4, 30, f"{obj}/{key}/race waiting after its select")
    return found[0]


@pytest.mark.parametrize(("obj", "status"), [("Trip", "running"), ("Sleepy", "suspended")])
async def test_a_cancel_after_a_select_reaches_the_real_wait(
    client: Client, ingress_url: str, admin_url: str, obj: str, status: str
) -> None:
    key = f"race-{status}"
    async with aiohttp.ClientSession() as http:
        call = asyncio.create_task(client.object(obj, key, "race").request(120_000))
        inv_id = await _third_wait(http, admin_url, obj, key)
        detail = await invocation_status(http, admin_url, inv_id, status)
        # fast sleep (done), slow sleep (lost the race, still open), select, the wait
        assert [e["kind"] for e in detail["journal"]] == ["sleep", "sleep", "select", "sleep"]
        async with http.patch(f"{admin_url}/invocations/{inv_id}/cancel") as reply:
            assert reply.status == 202
        with pytest.raises(TerminalError) as failure:
            await asyncio.wait_for(call, 30)
        assert failure.value.status_code == 409
    notes = "notes" if obj == "Trip" else "sleepy_notes"
    assert await client.object(obj, key, notes).request() == {"compensated": 409}


@pytest.mark.parametrize("kind", ["call", "send"])
async def test_an_argument_that_is_not_json_fails_at_the_call_site(
    client: Client, ingress_url: str, kind: str
) -> None:
    result = await asyncio.wait_for(client.service("Relay", "unsendable").request(kind), 30)
    assert result["caught"].startswith(f"400: the argument of {kind} Relay/echo is not JSON")
    assert result["after"] == "after", "nothing was journaled for the failed call or send"
    # The Python client refuses such an argument before anything reaches Kafka.
    with pytest.raises(TerminalError) as caught:
        await client.service("Relay", "echo").request(object())
    assert caught.value.status_code == 400


async def test_a_blocking_run_does_not_stall_other_handlers(
    client: Client, ingress_url: str
) -> None:
    tag = "blocker"
    released = apps.RELEASE.setdefault(tag, threading.Event())
    try:
        blocked = asyncio.create_task(client.service("Relay", "blocking_effect").request(tag))
        started = apps.BLOCKING.setdefault(tag, threading.Event())
        assert await asyncio.to_thread(started.wait, 30), "the blocking action never started"
        # The action holds its thread until released; an echo on the same worker answers.
        echoed = await asyncio.wait_for(client.service("Relay", "echo").request("meanwhile"), 30)
        assert echoed["value"] == "meanwhile"
        finished = apps.FINISHED.setdefault(tag, threading.Event())
        assert not finished.is_set(), "the echo had to wait for the blocking action"
    finally:
        released.set()
    assert await asyncio.wait_for(blocked, 30) == tag
