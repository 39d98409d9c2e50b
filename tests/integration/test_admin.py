"""The admin API: invocations listed and described from the changelog; resume, purge."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from streams.client import Client
from streams.wire.records import Target


async def wait_for_status(
    http: aiohttp.ClientSession, admin_url: str, service: str, status: str
) -> dict[str, object]:
    deadline = asyncio.get_running_loop().time() + 30
    rows: list[dict[str, object]] = []
    while asyncio.get_running_loop().time() < deadline:
        params = {"service": service, "status": status}
        async with http.get(f"{admin_url}/invocations", params=params) as reply:
            rows = (await reply.json())["invocations"]
        if rows:
            return rows[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {service} invocation became {status}")


async def test_a_paused_invocation_is_listed_described_and_resumed(
    client: Client, ingress_url: str, admin_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "fixed"
    call = asyncio.create_task(client.service("Fragile", "needs_file").request(str(marker)))
    async with aiohttp.ClientSession() as http:
        paused = await wait_for_status(http, admin_url, "Fragile", "paused")
        assert "does not exist yet" in str(paused["last_error"])
        assert paused["attempt"] == 2
        async with http.get(f"{admin_url}/invocations/{paused['id']}") as reply:
            detail = await reply.json()
        assert detail["argument"] == str(marker)
        async with http.patch(f"{admin_url}/invocations/{paused['id']}/purge") as reply:
            assert reply.status == 409, "only completed invocations purge"
        assert not call.done(), "a paused invocation is parked, not failed"
        marker.touch()
        async with http.patch(f"{admin_url}/invocations/{paused['id']}/resume") as reply:
            assert reply.status == 200
        assert await asyncio.wait_for(call, 30) == "found"


async def test_retained_outcomes_are_described_and_purged(
    client: Client, ingress_url: str, admin_url: str
) -> None:
    target = Target(service="Tally", key="adm", handler="add")
    inv_id, _ = await client.call(target, 3, idempotency_key="keep")
    async with aiohttp.ClientSession() as http:
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            async with http.get(f"{admin_url}/invocations/{inv_id}") as reply:
                if reply.status == 200:
                    detail = await reply.json()
                    break
            assert asyncio.get_running_loop().time() < deadline, "never indexed"
            await asyncio.sleep(0.1)
        assert detail["status"] == "completed"
        assert detail["outcome"] == {"value": 3}
        assert detail["idempotency_key"] == "keep"
        assert [e["kind"] for e in detail["journal"]] == ["get", "set"]
        while True:
            async with http.get(f"{admin_url}/state/Tally/adm") as reply:
                state = await reply.json()
            if state:
                break
            assert asyncio.get_running_loop().time() < deadline, "state never indexed"
            await asyncio.sleep(0.1)
        assert state == {"count": 3}
        async with http.patch(f"{admin_url}/invocations/{inv_id}/purge") as reply:
            assert reply.status == 200
        async with http.get(f"{ingress_url}/restate/output/{inv_id}") as reply:
            assert reply.status == 404
