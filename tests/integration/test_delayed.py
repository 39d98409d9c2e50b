"""Delayed sends through the delay topic: never early, not serialized per key, durable."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import aiohttp

from streams.client import Client
from streams.worker import Worker
from tests.integration.conftest import WorkerProcesses


async def count(client: Client, key: str) -> int:
    value: int = await client.object("Tally", key, "count").request()
    return value


async def time_until(client: Client, key: str, expected: int, seconds: float) -> float:
    """Seconds from now until ``key`` counts ``expected``; fails after ``seconds``."""
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        if await count(client, key) == expected:
            return time.monotonic() - began
        await asyncio.sleep(0.05)
    raise AssertionError(f"{key} did not reach {expected} within {seconds}s")


async def test_http_delayed_sends_run_after_their_delay_not_one_after_another(
    ingress_url: str, client: Client, worker: Worker
) -> None:
    sent = time.monotonic()
    async with aiohttp.ClientSession() as http:
        for _ in range(5):
            async with http.post(f"{ingress_url}/Tally/later/add/send?delay=2s", json=1) as reply:
                assert reply.status == 202
    assert await count(client, "later") == 0
    await time_until(client, "later", 5, 30)
    elapsed = time.monotonic() - sent
    assert elapsed >= 2.0, f"delivered early: {elapsed:.2f}s"
    assert elapsed < 6.0, f"five 2 s delays on one key took {elapsed:.2f}s: they queued"
    await asyncio.sleep(1)
    assert await count(client, "later") == 5, "each delayed send runs once"


async def test_a_handler_sends_with_a_delay(client: Client, worker: Worker) -> None:
    began = time.monotonic()
    await client.service("Relay", "later").request({"key": "from-handler", "ms": 1500})
    await time_until(client, "from-handler", 1, 30)
    assert time.monotonic() - began >= 1.5


async def test_a_delayed_send_survives_a_worker_kill(
    client: Client, worker_processes: WorkerProcesses
) -> None:
    first = worker_processes.spawn()
    assert await asyncio.wait_for(count(client, "durable-delay"), 60) == 0
    sent = time.monotonic()
    await client.object_send("Tally", "durable-delay", "add").send(1, delay=timedelta(seconds=3))
    first.kill()
    worker_processes.spawn()
    await time_until(client, "durable-delay", 1, 60)
    assert time.monotonic() - sent >= 3.0
    await asyncio.sleep(1.5)
    assert await count(client, "durable-delay") == 1, "released once"
