"""Delayed sends are scheduled invocations from the moment they are accepted: listed with
their due time, cancellable, killable, attachable and idempotent before they run."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import timedelta

import aiohttp
import pytest

from handlers import TerminalError
from streams.client import Client
from tests.integration.conftest import ROOT
from tests.integration.helpers import invocation_status


async def count(client: Client, key: str) -> int:
    value: int = await client.object("Tally", key, "count").request()
    return value


async def send_later(http: aiohttp.ClientSession, url: str, delay: str, **kw: str) -> str:
    async with http.post(f"{url}/restate/send/Tally/{kw.get('key', 's')}/add?delay={delay}",
                         json=1, headers=kw.get("headers")) as reply:  # fmt: skip
        assert reply.status == 202, await reply.text()
        invocation_id: str = (await reply.json())["invocationId"]
        return invocation_id


async def cli(admin_url: str, *args: str) -> str:
    """``kourier ARGS --admin-url ADMIN`` in a process (off the loop the worker runs on)."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "streams.cli", *args, "--admin-url", admin_url],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


async def test_a_delayed_send_is_listed_cancelled_and_never_runs(
    client: Client, ingress_url: str, admin_url: str
) -> None:
    async with aiohttp.ClientSession() as http:
        # Due in ten minutes, so nothing below races its release; the idempotency key keeps
        # its outcome, so attach answers the same before and after the cancel.
        keyed = {"idempotency-key": "first"}
        first = await send_later(http, ingress_url, "10m", key="s1", headers=keyed)
        detail = await invocation_status(http, admin_url, first, "scheduled")
        assert detail["target"] == "Tally/s1/add"
        assert detail["due_at"], "the due time is shown"
        async with http.get(f"{admin_url}/invocations", params={"status": "scheduled"}) as r:
            assert first in [row["id"] for row in (await r.json())["invocations"]]
        listing = await cli(admin_url, "invocations", "list", "--status", "scheduled")
        assert [row["due_at"] for row in json.loads(listing)["invocations"] if row["id"] == first]
        async with http.get(f"{ingress_url}/restate/output/{first}") as reply:
            assert reply.status == 470, "not run yet"
        attach = asyncio.create_task(http.get(f"{ingress_url}/restate/attach/{first}"))
        async with http.patch(f"{admin_url}/invocations/{first}/cancel") as reply:
            assert reply.status == 200, await reply.text()
            assert (await reply.json())["status"] == "success"
        async with await asyncio.wait_for(attach, 30) as reply:
            assert reply.status == 409, "an attached caller learns it was cancelled"
        detail = await invocation_status(http, admin_url, first, "completed")
        assert detail["outcome"] == {"failure": {"code": 409, "message": "cancelled"}}
        # It holds no lock meanwhile: a later delayed send to the key runs.
        second = await send_later(http, ingress_url, "1s", key="s1")
        async with http.get(f"{ingress_url}/restate/attach/{second}") as reply:
            assert reply.status == 200
            assert await reply.json() == 1, "the cancelled one never ran"


async def test_a_scheduled_invocation_can_be_killed_and_attached_to(
    client: Client, ingress_url: str, admin_url: str
) -> None:
    async with aiohttp.ClientSession() as http:
        keyed = {"idempotency-key": "doomed"}
        doomed = await send_later(http, ingress_url, "10m", key="s2", headers=keyed)
        await invocation_status(http, admin_url, doomed, "scheduled")
        async with http.patch(f"{admin_url}/invocations/{doomed}/kill") as reply:
            assert reply.status == 200
        async with http.get(f"{ingress_url}/restate/output/{doomed}") as reply:
            assert reply.status == 409
            assert (await reply.json())["message"] == "killed"
        kept = await send_later(http, ingress_url, "1s", key="s2")
        async with http.get(f"{ingress_url}/restate/attach/{kept}") as reply:
            assert reply.status == 200, "attach waits until it ran"
            assert await reply.json() == 1


async def test_a_repeated_idempotent_delayed_send_is_previously_accepted(
    client: Client, ingress_url: str, admin_url: str
) -> None:
    async with aiohttp.ClientSession() as http:
        receipts = []
        for _ in range(2):
            async with http.post(
                f"{ingress_url}/Tally/s3/add/send?delay=1s",
                json=1,
                headers={"idempotency-key": "once"},
            ) as reply:
                assert reply.status == 202
                receipts.append(await reply.json())
        assert receipts[0]["status"] == "Accepted"
        first = receipts[0]["invocationId"]
        assert receipts[1] == {"invocationId": first, "status": "PreviouslyAccepted"}
        async with http.get(f"{ingress_url}/restate/attach/{receipts[0]['invocationId']}") as r:
            assert await r.json() == 1
    # The Python client: the same, and a cancel by the receipt's id.
    receipt = await client.object_send("Tally", "s3", "add").send(
        1, delay=timedelta(seconds=1), idempotency_key="once"
    )
    assert receipt.status == "PreviouslyAccepted"
    assert receipt.invocation_id == receipts[0]["invocationId"]
    doomed = await client.object_send("Tally", "s3", "add").send(1, delay=timedelta(minutes=10))
    assert await client.cancel(doomed.invocation_id) == "success"
    kept = await client.object_send("Tally", "s3", "add").send(1, delay=timedelta(seconds=3))
    assert await client.attach(kept.invocation_id) == 2
    with pytest.raises(TerminalError) as caught:
        await client.cancel(doomed.invocation_id)
    assert caught.value.status_code == 404


async def test_a_handler_cancels_its_own_delayed_send(client: Client, ingress_url: str) -> None:
    cancelled = await client.service("Relay", "schedule_then_cancel").request(
        {"key": "s4", "ms": 1500}
    )
    kept = await client.object_send("Tally", "s4", "add").send(1, delay=timedelta(seconds=2))
    assert await client.attach(kept.invocation_id) == 1, "the cancelled send never ran"
    with pytest.raises(TerminalError) as caught:
        await client.output(cancelled)
    assert caught.value.status_code in (404, 409)
