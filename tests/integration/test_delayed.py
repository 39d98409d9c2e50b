"""Delayed sends through the delay topic: never early, not serialized per key, durable."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiohttp
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from streams.client import Client
from streams.engine import buckets, delay
from streams.kafka import trim
from streams.kafka.admin import admin_client
from streams.kafka.delay_reader import DelayReader
from streams.kafka.worker import Worker
from streams.settings import Settings
from streams.wire import ids
from streams.wire.records import Delayed, Invoke, Target, encode
from streams.wire.topics import Topics
from tests.integration import apps
from tests.integration.conftest import WorkerProcesses, in_process_worker
from tests.integration.helpers import delay_watermarks, poll_until

T = TypeVar("T")


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


async def sends_run_within_a_second(
    client: Client, key: str, delays: list[float], waiting: Callable[[], Awaitable[None]]
) -> None:
    """Sends ``arrive`` with each delay, awaits ``waiting`` (how the sends wait), then
    checks from the handler's own clock that each ran at or after its due time and less
    than 1 s past it (DESIGN §5). The client fixes a send's due time while the send is
    made: a send is called early or late only if it surely was."""
    slack: dict[int, float] = {}  # how much later than "due" a send's due time may be
    for tag, seconds in enumerate(delays):
        before = time.time()
        spec = {"tag": tag, "due": before + seconds}
        await client.object_send("Tally", key, "arrive").send(
            spec, delay=timedelta(seconds=seconds)
        )
        slack[tag] = time.time() - before
    await waiting()

    async def arrived() -> int:
        rows: list[list[float]] = await client.object("Tally", key, "arrivals").request()
        return len(rows)

    await poll_until(arrived, len(delays), max(delays) + 30, f"the delayed sends to {key}")
    rows = await client.object("Tally", key, "arrivals").request()
    assert sorted(int(tag) for tag, _ in rows) == list(range(len(delays))), "each ran once"
    early = [(int(tag), late) for tag, late in rows if late < 0]
    assert not early, f"ran before their due time (tag, seconds late): {early}"
    late = [(int(tag), late) for tag, late in rows if late - slack[int(tag)] > 1.0]
    assert not late, f"ran more than 1 s after their due time (tag, seconds late): {late}"


async def test_delayed_sends_run_within_a_second_of_their_due_time(
    client: Client, worker: Worker
) -> None:
    assert await asyncio.wait_for(count(client, "on-time"), 60) == 0  # the worker is up
    delays = [3.0 + 0.1 * i for i in range(15)]

    async def held() -> None:
        await poll_until(lambda: _async(pending_and_held(worker)[1]), 15, 10, "held in full")

    await sends_run_within_a_second(client, "on-time", delays, held)


async def test_delayed_sends_read_back_from_the_topic_run_within_a_second_of_their_due_time(
    short_horizon: None, client: Client, worker: Worker
) -> None:
    assert await asyncio.wait_for(count(client, "read-back"), 60) == 0  # the worker is up
    delays = [6.0 + 0.1 * i for i in range(15)]  # past the 3 s horizon

    async def as_offsets() -> None:
        await poll_until(lambda: _async(pending_and_held(worker)), (15, 0), 3, "held as offsets")

    await sends_run_within_a_second(client, "read-back", delays, as_offsets)


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


@pytest.fixture
def short_horizon(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers created after this hold only messages due within 3 s in full; later ones
    wait as offsets and are read back from the delay topic 1 s before they are due."""
    monkeypatch.setattr(delay, "HORIZON", 3.0)
    monkeypatch.setattr(delay, "LEAD", 1.0)


def pending_and_held(worker: Worker) -> tuple[int, int]:
    return (
        sum(d.pending for d in worker.delays.values()),
        sum(d.held for d in worker.delays.values()),
    )


async def test_far_off_delayed_sends_wait_as_offsets_and_are_read_back_in_time(
    short_horizon: None, client: Client, worker: Worker
) -> None:
    keys = [f"far-{i}" for i in range(20)]
    assert await asyncio.wait_for(count(client, keys[0]), 60) == 0  # the worker is up
    sent = time.monotonic()
    dues = {key: 6.0 + 0.1 * i for i, key in enumerate(keys)}
    for key, due in dues.items():
        await client.object_send("Tally", key, "add").send(1, delay=timedelta(seconds=due))
    await poll_until(lambda: _async(pending_and_held(worker)), (20, 0), 3, "held as offsets")
    while time.monotonic() - sent < 5.9:  # nothing runs before its due time
        counts = await asyncio.gather(*(count(client, key) for key in keys))
        assert counts == [0] * len(keys), f"ran early, {time.monotonic() - sent:.2f}s after send"
        await asyncio.sleep(0.2)
    for key in keys:
        await time_until(client, key, 1, 30)
    assert time.monotonic() - sent >= dues[keys[-1]]
    assert pending_and_held(worker) == (0, 0)
    await asyncio.sleep(1)
    assert await asyncio.gather(*(count(client, key) for key in keys)) == [1] * len(keys)


async def test_far_off_pending_sends_move_to_a_new_worker_and_run_once(
    short_horizon: None, client: Client, topics: Settings
) -> None:
    first = Worker(topics, apps.SERVICES, worker_id=f"first-{topics.namespace}")
    running = asyncio.create_task(first.run())
    keys = [f"moved-{i}" for i in range(10)]
    try:
        assert await asyncio.wait_for(count(client, keys[0]), 60) == 0
        sent = time.monotonic()
        for key in keys:
            await client.object_send("Tally", key, "add").send(1, delay=timedelta(seconds=8))
        await poll_until(lambda: _async(pending_and_held(first)), (10, 0), 5, "held as offsets")
    finally:
        first.stop()
        await asyncio.wait_for(running, 60)

    second = Worker(topics, apps.SERVICES, worker_id=f"second-{topics.namespace}")
    running = asyncio.create_task(second.run())
    try:
        await poll_until(lambda: _async(pending_and_held(second)), (10, 0), 20, "re-read")
        for key in keys:
            await time_until(client, key, 1, 30)
        assert time.monotonic() - sent >= 8.0
        await asyncio.sleep(1.5)
        assert await asyncio.gather(*(count(client, key) for key in keys)) == [1] * len(keys)
    finally:
        second.stop()
        await asyncio.wait_for(running, 60)


async def _async(value: T) -> T:
    return value


async def test_the_delay_reader_reads_offsets_back_and_names_those_gone(topics: Settings) -> None:
    topic = Topics(topics.namespace).delay
    producer = Producer(topics.client_config())
    for i in range(3000):
        producer.produce(topic, f"record {i}".encode(), b"k", partition=0)
    producer.flush(30)
    admin = admin_client(topics)
    gone = admin.delete_records([TopicPartition(topic, 0, 100)])
    for future in gone.values():
        future.result(30)
    reader = DelayReader(topics.client_config({"group.id": f"{topics.namespace}.reader"}), topic)
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[tuple[list[buckets.Fetched], list[int]]] = loop.create_future()
    past: asyncio.Future[tuple[list[buckets.Fetched], list[int]]] = loop.create_future()
    try:
        wanted = [50, 120, 121, 2500, 2999]  # 50 was deleted; a gap to seek over
        reader.fetch(0, wanted, lambda found, missing: answer.set_result((found, missing)))
        found, missing = await asyncio.wait_for(answer, 60)
        # Past the partition's end (a log cut short, a topic made again): the consumer
        # starts over at the earliest record, far below. The reader sought back to the
        # offset each time and never answered, holding back every later read-back.
        reader.fetch(0, [2999, 60_000], lambda found, missing: past.set_result((found, missing)))
        past_found, past_missing = await asyncio.wait_for(past, 60)
    finally:
        await asyncio.to_thread(reader.close)
    assert [(offset, value) for offset, _, value in found] == [
        (o, f"record {o}".encode()) for o in (120, 121, 2500, 2999)
    ]
    assert missing == [50]
    assert ([offset for offset, _, _ in past_found], past_missing) == ([2999], [60_000])


async def test_the_delay_reader_reads_urgent_offsets_first_and_stops_at_a_byte_budget(
    topics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = Topics(topics.namespace).delay
    producer = Producer(topics.client_config())
    for i in range(100):
        producer.produce(topic, f"record {i:02}".encode(), b"k", partition=0)
    producer.flush(30)
    reader = DelayReader(topics.client_config({"group.id": f"{topics.namespace}.reader"}), topic)
    reading, go_on = threading.Event(), threading.Event()
    read = reader._read

    def held_read(*args: Any) -> Any:  # the first read waits until the rest are asked
        reading.set()
        go_on.wait(30)
        return read(*args)

    monkeypatch.setattr(reader, "_read", held_read)
    answers: list[tuple[str, list[int], list[int]]] = []
    done = asyncio.Event()

    def deliver(name: str) -> buckets.Deliver:
        def delivered(found: list[buckets.Fetched], missing: list[int]) -> None:
            answers.append((name, [offset for offset, _, _ in found], missing))
            if len(answers) == 4:
                done.set()

        return delivered

    try:
        reader.fetch(0, [0], deliver("first"))
        assert await asyncio.to_thread(reading.wait, 30)
        # 10 bytes a record (key and value): the budget of 25 ends the carry's read at 3.
        reader.fetch(0, [1, 2, 3, 4, 5], deliver("carry 1"), urgent=False, max_bytes=25)
        reader.fetch(0, [6], deliver("carry 2"), urgent=False)
        reader.fetch(0, [50], deliver("due"))
        go_on.set()
        await asyncio.wait_for(done.wait(), 60)
    finally:
        go_on.set()
        await asyncio.to_thread(reader.close)
    assert answers == [
        ("first", [0], []),
        ("due", [50], []),
        ("carry 1", [1, 2, 3], []),
        ("carry 2", [6], []),
    ]


@pytest.fixture
def carry_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers created after this carry pending messages forward once their delay partition
    is 100 records past the oldest, and delete released records every 0.2 s."""
    monkeypatch.setattr(delay, "CARRY_AFTER", 100)
    monkeypatch.setattr(trim, "TRIM_EVERY", 0.2)
    monkeypatch.setattr(trim, "TRIM_LEAST", 1)


async def test_a_far_send_is_carried_forward_past_released_records_which_are_deleted(
    short_horizon: None, carry_soon: None, client: Client, topics: Settings
) -> None:
    first = Worker(topics, apps.SERVICES, worker_id=f"first-{topics.namespace}")
    running = asyncio.create_task(first.run())
    try:
        assert await asyncio.wait_for(count(client, "carried"), 60) == 0
        sent = time.monotonic()
        tally = client.object_send("Tally", "carried", "add")
        await tally.send(1000, delay=timedelta(seconds=30))
        for _ in range(60):  # 60 delayed records and their 60 markers behind the far one
            await tally.send(1, delay=timedelta(seconds=0.2))
        # Both waits end well within the far send's 30 s.
        await time_until(client, "carried", 60, 10)

        async def deleted() -> bool:
            marks = await asyncio.to_thread(delay_watermarks, topics)
            return len(marks) == 1 and next(iter(marks.values()))[0] > 0

        await poll_until(deleted, True, 15, "the released records below the far send deleted")
        assert sum(d.carried for d in first.delays.values()) >= 1
        assert await count(client, "carried") == 60, "the far send ran early"
    finally:
        first.stop()
        await asyncio.wait_for(running, 60)

    # A new owner starts past the deleted records, at the copy, and runs it once.
    second = Worker(topics, apps.SERVICES, worker_id=f"second-{topics.namespace}")
    running = asyncio.create_task(second.run())
    try:
        await time_until(client, "carried", 1060, 60)
        assert time.monotonic() - sent >= 30.0
        await asyncio.sleep(1.5)
        assert await count(client, "carried") == 1060, "the far send ran twice"
    finally:
        second.stop()
        await asyncio.wait_for(running, 60)


async def test_a_delay_partition_committed_past_its_end_is_read_from_its_start(
    topics: Settings, client: Client
) -> None:
    """The delay log deleted and made again (or cut by a leader elected uncleanly) under the
    workers' committed offset: its first record raised out of the worker at every take-over
    (below the processor's offset set), and the messages it held never ran."""
    key = "rewound"
    invocation_id = ids.new_id(key, topics.partitions)
    partition = ids.partition_of(invocation_id, topics.partitions)
    target = Target(service="Tally", key=key, handler="add")
    invoke = Invoke(target=target, argument=1, invocation_id=invocation_id, mode="send")
    due = datetime.now(UTC) + timedelta(seconds=1)
    delay_topic = Topics(topics.namespace).delay
    producer = Producer(topics.client_config({"enable.idempotence": True}))
    producer.produce(delay_topic, encode(Delayed(due=due, invoke=invoke)), key.encode(),
                     partition=partition)  # fmt: skip
    assert producer.flush(30) == 0
    group = Consumer(topics.client_config({"group.id": f"{topics.namespace}.workers"}))
    try:  # as the workers had committed on the log before
        group.commit(offsets=[TopicPartition(delay_topic, partition, 1_000)], asynchronous=False)
    finally:
        group.close()
    async with in_process_worker(topics, apps.SERVICES, "rewound"):
        await time_until(client, key, 1, 60)
