"""Deadlocks between exclusive handlers: detected across partitions, shown, and broken by
cancelling any member."""

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


async def deadlocks(http: aiohttp.ClientSession, admin_url: str, count: int) -> list[Any]:
    """``GET /deadlocks`` once it lists ``count`` cycles (bounded wait)."""
    found: list[Any] = []
    deadline = asyncio.get_running_loop().time() + 30
    while asyncio.get_running_loop().time() < deadline:
        async with http.get(f"{admin_url}/deadlocks") as reply:
            found = (await reply.json())["deadlocks"]
        if len(found) == count:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"expected {count} deadlocks, saw {found}")


async def metric(http: aiohttp.ClientSession, admin_url: str, name: str) -> float:
    async with http.get(f"{admin_url}/metrics") as reply:
        text = await reply.text()
    line = next(x for x in text.splitlines() if x.startswith(name + " "))
    return float(line.split()[1])


async def test_deadlocks_are_shown_and_cancelling_a_member_breaks_them(
    client: Client, ingress_url: str, admin_url: str
) -> None:
    # a -> b -> a (two objects), and x -> y -> z -> x (three), on different partitions.
    two = asyncio.create_task(client.object("Loop", "a", "bounce").request(["b", "a"]))
    three = asyncio.create_task(client.object("Loop", "x", "bounce").request(["y", "z", "x"]))
    async with aiohttp.ClientSession() as http:
        found = await deadlocks(http, admin_url, 2)
        by_size = {cycle["size"]: cycle for cycle in found}
        assert set(by_size) == {3, 4}
        assert sorted(m["target"] for m in by_size[3]["members"]) == [
            "Loop/a/bounce", "Loop/a/bounce", "Loop/b/bounce",
        ]  # fmt: skip
        assert {m["how"] for m in by_size[4]["members"]} == {"call", "lock"}
        deadline = asyncio.get_running_loop().time() + 10
        while await metric(http, admin_url, "kourier_deadlocks") != 2:
            assert asyncio.get_running_loop().time() < deadline, "the metric never said 2"
            await asyncio.sleep(0.2)
        listed = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "streams.cli", "invocations", "deadlocks",
             "--admin-url", admin_url],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
            text=True, timeout=60, check=True,
        )  # fmt: skip
        assert len(json.loads(listed.stdout)["deadlocks"]) == 2
        # Cancel the queued member of the two-object cycle: everyone in it unwinds.
        queued = next(m for m in by_size[3]["members"] if m["status"] == "pending")
        async with http.patch(f"{admin_url}/invocations/{queued['id']}/cancel") as reply:
            assert reply.status == 200
        with pytest.raises(TerminalError) as failure:
            await asyncio.wait_for(two, 30)
        assert failure.value.status_code == 409
        # Cancel the head of the three-object cycle: it waits in a call, so the cancel goes
        # down the chain to the leaf and comes back up.
        head = next(m for m in by_size[4]["members"] if m["target"] == "Loop/x/bounce"
                    and m["how"] == "call")  # fmt: skip
        async with http.patch(f"{admin_url}/invocations/{head['id']}/cancel") as reply:
            assert reply.status == 202
        with pytest.raises(TerminalError):
            await asyncio.wait_for(three, 30)
        await deadlocks(http, admin_url, 0)
    # The keys are free again.
    assert await client.object("Loop", "a", "bounce").request(["b"]) == ["a", "b"]
    assert await client.object("Loop", "x", "bounce").request([]) == ["x"]
