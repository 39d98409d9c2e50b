"""A clean hand-over (the worker stopping, or a rebalance) lets the ``ctx.run`` actions
running on its partitions end and commits their results, and starts no new one: the next
owner runs none of them again. (Before, the close cancelled them mid-action, and the next
owner ran them again.)"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator

import pytest

from streams.client import Client
from streams.kafka.worker import Worker
from streams.settings import Settings
from tests.integration import apps
from tests.integration.conftest import in_process_worker
from tests.integration.helpers import poll_until


@pytest.fixture
def action_key(topics: Settings) -> Iterator[str]:
    """A key whose ``Tally/act_twice`` first action waits until the test opens its gate."""
    key = f"act-{topics.namespace}"
    apps.ACTION_STARTED[key] = threading.Event()
    gate = apps.ACTION_GATES[key] = threading.Event()
    yield key
    gate.set()  # never leave a thread waiting


def runs(key: str) -> list[int]:
    """How many times each of the key's two actions ran, in this process."""
    return [apps.ACTION_RUNS.get(f"{key}/{name}", 0) for name in ("first", "second")]


async def started(key: str) -> None:
    assert await asyncio.to_thread(apps.ACTION_STARTED[key].wait, 60), "the action did not start"


async def until_handing_over(caplog: pytest.LogCaptureFixture, or_else: Callable[[], bool]) -> None:
    """Until a partition says it waits for its actions, or ``or_else()`` (the old close)."""

    async def seen() -> bool:
        said = any("ctx.run actions" in r.getMessage() for r in caplog.records)
        return said or or_else()

    await poll_until(seen, True, 60, "the hand-over waiting for the action")


async def test_a_stopping_worker_lets_a_running_action_end(
    topics: Settings, client: Client, action_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kourier.partition")
    first = Worker(topics, apps.SERVICES, worker_id=f"first-{topics.namespace}")
    running = asyncio.create_task(first.run())
    call = asyncio.create_task(client.object("Tally", action_key, "act_twice").request())
    try:
        await started(action_key)
        first.stop()
        await until_handing_over(caplog, running.done)
        apps.ACTION_GATES[action_key].set()
        await asyncio.wait_for(running, 60)
        async with in_process_worker(topics, apps.SERVICES, f"second-{topics.namespace}"):
            assert await asyncio.wait_for(call, 60) == [1, 1], "an action ran again"
        assert runs(action_key) == [1, 1]
    finally:
        apps.ACTION_GATES[action_key].set()
        first.stop()
        await asyncio.wait([running, call], timeout=60)
        call.cancel()


async def test_a_rebalance_lets_a_running_action_end(
    topics: Settings, client: Client, action_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kourier.partition")
    caplog.set_level(logging.INFO, logger="kourier.worker")

    def revoked() -> bool:  # what the first worker logs once it has closed the partitions
        return any(r.getMessage().startswith("revoked") for r in caplog.records)

    async with in_process_worker(topics, apps.SERVICES, f"first-{topics.namespace}"):
        call = asyncio.create_task(client.object("Tally", action_key, "act_twice").request())
        try:
            await started(action_key)
            async with in_process_worker(topics, apps.SERVICES, f"second-{topics.namespace}"):
                await until_handing_over(caplog, revoked)
                apps.ACTION_GATES[action_key].set()
                assert await asyncio.wait_for(call, 60) == [1, 1], "an action ran again"
            assert runs(action_key) == [1, 1]
        finally:
            apps.ACTION_GATES[action_key].set()
            await asyncio.wait([call], timeout=60)
            call.cancel()
