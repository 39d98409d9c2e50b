"""Durable timers on the delay topic: ``ctx.sleep`` across a worker ``kill -9``, and call
deadlines that fail the call with 408 and cancel the callee."""

from __future__ import annotations

import asyncio
import time

from streams.client import Client
from streams.http.index import InvocationIndex
from streams.kafka.worker import Worker
from streams.settings import Settings
from tests.integration.conftest import WorkerProcesses


async def test_a_sleep_survives_a_worker_kill(
    topics: Settings, client: Client, worker_processes: WorkerProcesses
) -> None:
    first = worker_processes.spawn()
    index = InvocationIndex(topics)
    await asyncio.to_thread(index.start)
    try:
        began = time.monotonic()
        call = asyncio.create_task(client.object("Trip", "nap", "reserve").request(3_000))
        deadline = time.monotonic() + 60
        waiting: list[str] = []
        while not waiting:
            assert time.monotonic() < deadline, worker_processes.logs()
            await asyncio.sleep(0.05)
            rows = index.query(service="Trip", key="nap")
            detail = index.describe(rows[0]["id"]) if rows else None
            waiting = detail["waiting_on"] if detail else []
        assert waiting[0].startswith("sleep (entry 0) due ")
        first.kill()  # kill -9 while the handler sleeps
        worker_processes.spawn()
        assert await asyncio.wait_for(call, 60) == "reserved"
        assert time.monotonic() - began >= 3.0, "the sleep ended early"
        assert await client.object("Trip", "nap", "notes").request() == {"reserved": True}
    finally:
        await asyncio.to_thread(index.close)


async def test_a_call_deadline_fails_with_408_and_cancels_the_callee(
    client: Client, worker: Worker
) -> None:
    began = time.monotonic()
    spec = {"key": "slow-hotel", "hold_ms": 60_000, "wait_ms": 500}
    assert await client.service("Relay", "impatient").request(spec) == "gave up: 408"
    assert time.monotonic() - began < 30
    deadline = time.monotonic() + 30
    while await client.object("Trip", "slow-hotel", "notes").request() != {"compensated": 409}:
        assert time.monotonic() < deadline, "the callee was never cancelled"
        await asyncio.sleep(0.1)
    # Its key is free again.
    assert await client.object("Trip", "slow-hotel", "reserve").request(0) == "reserved"
