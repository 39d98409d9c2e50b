"""Cancel and kill through the admin API, the client and the CLI, on a real broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import aiohttp
import pytest

from handlers import TerminalError
from streams.client import Client
from tests.integration.conftest import ROOT


async def find_invocation(
    http: aiohttp.ClientSession, admin_url: str, *, service: str, key: str, waiting: str
) -> dict[str, Any]:
    """The invocation of ``service``/``key`` once the admin API shows it waiting on
    ``waiting`` (a journal entry kind such as ``sleep`` or ``call``)."""
    deadline = asyncio.get_running_loop().time() + 30
    seen: Any = None
    while asyncio.get_running_loop().time() < deadline:
        async with http.get(
            f"{admin_url}/invocations", params={"service": service, "key": key}
        ) as r:
            seen = (await r.json())["invocations"]
        for row in seen:
            if row["status"] == "completed":
                continue
            async with http.get(f"{admin_url}/invocations/{row['id']}") as r:
                detail = await r.json()
            if any(
                w.startswith(f"{waiting}(") or w.startswith(waiting) for w in detail["waiting_on"]
            ):
                return dict(detail)
        await asyncio.sleep(0.1)
    raise AssertionError(f"{service}/{key} never waited on {waiting}; last listing {seen}")


async def notes(client: Client, key: str) -> Any:
    return await client.object("Trip", key, "notes").request()


async def test_cancel_propagates_down_the_call_tree_and_both_compensate(
    client: Client, ingress_url: str, admin_url: str
) -> None:
    async with aiohttp.ClientSession() as http:
        call = asyncio.create_task(http.post(f"{ingress_url}/Trip/c1/plan", json=60_000))
        parent = await find_invocation(http, admin_url, service="Trip", key="c1", waiting="call")
        await find_invocation(http, admin_url, service="Trip", key="c1-hotel", waiting="sleep")
        assert parent["target"] == "Trip/c1/plan"
        assert parent["journal"][0]["kind"] == "call"
        async with http.patch(f"{admin_url}/invocations/{parent['id']}/cancel") as reply:
            assert reply.status == 202
            assert (await reply.json())["status"] == "accepted"
        async with await asyncio.wait_for(call, 30) as reply:
            assert reply.status == 409
            assert (await reply.json())["message"] == "cancelled"
        # Leaves first: the hotel compensated, then the trip did.
        assert await notes(client, "c1-hotel") == {"compensated": 409}
        assert await notes(client, "c1") == {"compensated": 409}
        async with http.patch(f"{admin_url}/invocations/{parent['id']}/cancel") as reply:
            assert reply.status == 404, "completed and not retained"
        async with http.patch(f"{admin_url}/invocations/inv_nonsense/cancel") as reply:
            assert reply.status == 400


async def test_kill_stops_the_tree_without_compensation_and_unlocks_the_keys(
    client: Client, ingress_url: str, admin_url: str
) -> None:
    async with aiohttp.ClientSession() as http:
        call = asyncio.create_task(client.object("Trip", "k1", "plan").request(60_000))
        parent = await find_invocation(http, admin_url, service="Trip", key="k1", waiting="call")
        await find_invocation(http, admin_url, service="Trip", key="k1-hotel", waiting="sleep")
        queued = asyncio.create_task(client.object("Trip", "k1-hotel", "reserve").request(0))
        assert await client.kill(parent["id"]) == "success"
        with pytest.raises(TerminalError) as killed:
            await asyncio.wait_for(call, 30)
        assert (killed.value.status_code, killed.value.message) == (409, "killed")
        # The hotel's call was killed too, which unlocked its key for the queued call.
        assert await asyncio.wait_for(queued, 30) == "reserved"
        assert await notes(client, "k1") == {}
        assert await notes(client, "k1-hotel") == {"reserved": True}


async def test_cancel_from_the_cli(client: Client, ingress_url: str, admin_url: str) -> None:
    async with aiohttp.ClientSession() as http:
        call = asyncio.create_task(client.object("Trip", "cli", "reserve").request(60_000))
        waiting = await find_invocation(http, admin_url, service="Trip", key="cli", waiting="sleep")
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def kourier(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streams.cli", *args, "--admin-url", admin_url],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    listed = await asyncio.to_thread(
        kourier, "invocations", "list", "--service", "Trip", "--key", "cli"
    )
    assert listed.returncode == 0, listed.stderr
    assert [row["id"] for row in json.loads(listed.stdout)["invocations"]] == [waiting["id"]]
    described = await asyncio.to_thread(kourier, "invocations", "describe", waiting["id"])
    assert json.loads(described.stdout)["waiting_on"][0].startswith("sleep")
    cancelled = await asyncio.to_thread(kourier, "invocations", "cancel", waiting["id"])
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert json.loads(cancelled.stdout)["status"] == "accepted"
    with pytest.raises(TerminalError) as failure:
        await asyncio.wait_for(call, 30)
    assert failure.value.status_code == 409
    assert await notes(client, "cli") == {"compensated": 409}
    again = await asyncio.to_thread(kourier, "invocations", "cancel", waiting["id"])
    assert again.returncode == 1
    assert json.loads(again.stdout)["code"] == 404
