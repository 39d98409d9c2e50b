"""A clean hand-over (the worker stopping, or a rebalance) lets the ``ctx.run`` actions
running on its partitions end and commits their results, and starts no new one: the next
owner runs none of them again. (Before, the close cancelled them mid-action, and the next
owner ran them again.)"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.client import Client
from streams.kafka.worker import Worker
from streams.settings import Settings
from streams.wire.topics import Topics
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


def unread(settings: Settings, every: bool = False) -> dict[int, tuple[int, int]]:
    """Ingress partitions whose records go past the workers' committed offset (``every``:
    all of them): (committed, end). Only the test's client writes there, without
    transactions (no markers)."""
    topic = Topics(settings.namespace).ingress
    consumer = Consumer(settings.client_config({"group.id": f"{settings.namespace}.workers"}))
    try:
        wanted = [TopicPartition(topic, p) for p in range(settings.partitions)]
        committed = {tp.partition: max(tp.offset, 0) for tp in consumer.committed(wanted, 10)}
        ends = {tp.partition: consumer.get_watermark_offsets(tp, 10)[1] for tp in wanted}
        return {p: (committed[p], end) for p, end in ends.items() if every or committed[p] != end}
    finally:
        consumer.close()


async def test_sends_that_wrote_nothing_are_not_run_again_by_the_next_owner(
    topics: Settings, client: Client
) -> None:
    """A send to a handler that only returns leaves nothing to commit but its offset: the
    worker committed offsets only along with records, so a clean stop left these for the
    next owner, which ran every one of them again."""
    marks = [f"{topics.namespace}-{n}" for n in range(20)]
    tick = client.service_send("Relay", "tick")

    async def ticked() -> bool:
        return all(mark in apps.TICKS for mark in marks)

    async with in_process_worker(topics, apps.SERVICES, f"first-{topics.namespace}"):
        for mark in marks:
            await tick.send(mark)
        await poll_until(ticked, True, 60, "the sends to run")
    assert await asyncio.to_thread(unread, topics) == {}, "a clean stop left records unread"
    ends = {p: end for p, (_, end) in (await asyncio.to_thread(unread, topics, True)).items()}
    async with in_process_worker(topics, apps.SERVICES, f"second-{topics.namespace}") as second:

        async def read_to_the_ends() -> bool:  # every record handed to its partition
            return all(second._ownership.offsets.get(p, 0) >= end for p, end in ends.items())

        await poll_until(read_to_the_ends, True, 60, "the second worker to read to the ends")
        began = time.monotonic()

        async def stepped_twice() -> bool:  # ... and a step begun after one that ran them
            return second._pacing.stepped_at > began

        await poll_until(stepped_twice, True, 60, "a step after the records")
        began = second._pacing.stepped_at
        await poll_until(stepped_twice, True, 60, "a second step after the records")
    again = {mark: apps.TICKS[mark] for mark in marks if apps.TICKS[mark] != 1}
    assert again == {}, "run again by the next owner"


def _kafka_threads(worker: Worker) -> list[str]:
    """The threads now inside ``worker``'s ``_kafka_thread``."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    return [
        names.get(ident, str(ident))
        for ident, frame in sys._current_frames().items()
        if any(
            f.f_code.co_name == "_kafka_thread" and f.f_locals.get("self") is worker
            for f, _ in traceback.walk_stack(frame)
        )
    ]


async def test_a_cancelled_run_ends_its_kafka_thread_before_it_ends(topics: Settings) -> None:
    """A worker's ``run()`` cancelled (the event loop ending, a timeout around it) used to
    return at once while its Kafka thread ran on, then drop the Kafka clients that thread
    was still using. Now the cancellation stops the worker and waits for the thread
    (streams/kafka/threads.py; the loop's own ending in tests/unit/test_threads.py)."""
    worker = Worker(topics, apps.SERVICES, worker_id=f"cancelled-{topics.namespace}")
    task = asyncio.create_task(worker.run())
    try:

        async def owns() -> bool:
            return bool(worker.processors)

        await poll_until(owns, True, 60, "the worker's partitions assigned")
        assert _kafka_threads(worker), "the Kafka thread runs"
    finally:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=60)
    assert task in done, "run() did not end within 60s of its cancellation"
    assert task.cancelled()
    assert _kafka_threads(worker) == [], "the Kafka thread outlived run()"
    assert not worker.processors, "every partition handed over"
