"""Taking a partition over reads its changelogs, and its delay partition, back to where its
last owner wrote them: past any transaction of that owner still open there."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer

from streams.client import Client
from streams.kafka.admin import admin_client
from streams.kafka.offsets import worker_consumer
from streams.kafka.restore import restore_partitions
from streams.settings import Settings
from streams.wire import ids
from streams.wire.records import Delayed, Fired, Invoke, Target, encode
from streams.wire.topics import Topics
from tests.integration import apps
from tests.integration.conftest import in_process_worker
from tests.integration.helpers import poll_until
from tests.threads import in_thread


class Restored:
    """A partition processor's restore side, recorded."""

    def __init__(self, partition: int = 0) -> None:
        self.partition = partition
        self.state: dict[bytes, bytes | None] = {}
        self.invocations: dict[bytes, bytes | None] = {}
        self.dedup: dict[bytes, bytes | None] = {}

    def restore_state(self, key: bytes, value: bytes | None) -> None:
        self.state[key] = value

    def restore_invocation(self, key: bytes, value: bytes | None) -> None:
        self.invocations[key] = value

    def restore_dedup(self, key: bytes, value: bytes | None) -> None:
        self.dedup[key] = value


@pytest.fixture
def restorer(topics: Settings) -> Iterator[Consumer]:
    consumer = worker_consumer(topics, f"{topics.namespace}.restore", 5)
    try:
        yield consumer
    finally:
        consumer.close()


def _in_transaction(
    settings: Settings, topic: str, records: dict[bytes, bytes], partition: int = 0
) -> Producer:
    """A producer whose open transaction holds ``records`` on ``partition`` of ``topic``."""
    producer = Producer(settings.client_config({"transactional.id": f"t-{uuid.uuid4()}"}))
    producer.init_transactions(30)
    producer.begin_transaction()
    for key, value in records.items():
        producer.produce(topic, key=key, value=value, partition=partition)
    producer.flush(10)  # in the log, below the high watermark, before any marker
    return producer


def _restore_in_thread(
    settings: Settings, restorer: Consumer, *into: Restored
) -> tuple[threading.Thread, list[BaseException]]:
    admin = admin_client(settings)
    return in_thread(lambda: restore_partitions(restorer, admin, Topics(settings.namespace), into))


def test_restore_waits_for_a_transaction_open_on_a_changelog(
    topics: Settings, restorer: Consumer
) -> None:
    """The last owner's commit may still be writing its markers when the next owner takes
    over: the restore must not stop before that transaction (at the last stable offset)."""
    names = Topics(topics.namespace)
    plain = Producer(topics.client_config())
    plain.produce(names.state, key=b"before", value=b"1", partition=0)
    plain.flush(10)
    producer = _in_transaction(topics, names.state, {b"counter": b"7"})
    restored = Restored()
    thread, errors = _restore_in_thread(topics, restorer, restored)
    try:
        thread.join(3)
        assert thread.is_alive(), (
            f"the restore ended while a transaction was open on the changelog: {restored.state}"
        )
    finally:
        producer.commit_transaction(30)
    thread.join(60)
    assert not thread.is_alive(), "the restore did not end once the transaction committed"
    assert errors == []
    assert restored.state == {b"before": b"1", b"counter": b"7"}


def test_restore_passes_an_aborted_transaction(topics: Settings, restorer: Consumer) -> None:
    """Aborted records are below the high watermark too: the restore skips them, reaches
    the end past the abort marker, and keeps what came before."""
    names = Topics(topics.namespace)
    committed = _in_transaction(topics, names.invocations, {b"inv-1": b"running"})
    committed.commit_transaction(30)
    aborted = _in_transaction(topics, names.invocations, {b"inv-1": b"lost", b"inv-2": b"lost"})
    aborted.abort_transaction(30)
    restored = Restored()
    thread, errors = _restore_in_thread(topics, restorer, restored)
    thread.join(60)
    assert not thread.is_alive(), "the restore did not pass the aborted transaction"
    assert errors == []
    assert restored.invocations == {b"inv-1": b"running"}


def test_partitions_restored_together_each_fill_their_own_processor_and_wait_for_any(
    topics: Settings, restorer: Consumer
) -> None:
    """Partitions taken over together are read by one consumer: every record reaches the
    processor of its partition, and the restore waits for a transaction open on any one."""
    names = Topics(topics.namespace)
    plain = Producer(topics.client_config())
    for partition in (0, 1):
        plain.produce(names.state, key=b"k", value=b"p%d" % partition, partition=partition)
        plain.produce(names.dedup, key=b"d", value=b"p%d" % partition, partition=partition)
    plain.flush(10)
    producer = _in_transaction(topics, names.invocations, {b"inv": b"running"}, partition=2)
    restored = [Restored(partition) for partition in (0, 1, 2, 3)]
    thread, errors = _restore_in_thread(topics, restorer, *restored)
    try:
        thread.join(3)
        assert thread.is_alive(), "the restore ended while partition 2's transaction was open"
    finally:
        producer.commit_transaction(30)
    thread.join(60)
    assert not thread.is_alive(), "the restore did not end once the transaction committed"
    assert errors == []
    assert [r.state for r in restored] == [{b"k": b"p0"}, {b"k": b"p1"}, {}, {}]
    assert [r.dedup for r in restored] == [{b"d": b"p0"}, {b"d": b"p1"}, {}, {}]
    assert [r.invocations for r in restored] == [{}, {}, {b"inv": b"running"}, {}]


async def test_a_delay_partition_releases_nothing_a_fired_marker_still_in_a_transaction_covers(
    topics: Settings,
) -> None:
    """A former owner released a delayed message and is still writing the markers of the
    transaction that holds its ``Fired`` marker: the new owner must read that marker before
    it releases anything, or the message runs twice."""
    names = Topics(topics.namespace)
    key = "fired-once"
    invocation_id = ids.new_id(key, topics.partitions)
    partition = ids.partition_of(invocation_id, topics.partitions)
    due = Delayed(
        due=datetime.now(UTC),
        invoke=Invoke(
            target=Target(service="Tally", key=key, handler="add"),
            argument=5,
            invocation_id=invocation_id,
            mode="send",
        ),
    )
    written: list[Message] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        assert error is None, error
        written.append(message)

    plain = Producer(topics.client_config())
    plain.produce(
        names.delay, encode(due), key=key.encode(), partition=partition, on_delivery=delivered
    )
    assert plain.flush(30) == 0
    (message,) = written
    offset = message.offset()
    assert offset is not None
    fired = {key.encode(): encode(Fired(offset=offset))}
    former_owner = _in_transaction(topics, names.delay, fired, partition)
    try:
        async with (
            in_process_worker(topics, apps.SERVICES, f"restore-{topics.namespace}") as worker,
            Client(topics) as client,
        ):

            async def read_or_caught_up() -> bool:
                delay = worker.delays.get(partition)
                return delay is not None and (delay.pending > 0 or delay.caught_up)

            await poll_until(read_or_caught_up, True, 60, "the delayed message read")
            delay = worker.delays[partition]
            assert not delay.caught_up, (
                "the delay partition counted as read while the Fired marker's transaction "
                "was open: the message it marks would be released again"
            )
            former_owner.commit_transaction(30)

            async def caught_up() -> bool:
                return delay.caught_up

            await poll_until(caught_up, True, 60, "the delay partition caught up")
            assert delay.pending == 0
            assert await client.object("Tally", key, "add").request(1) == 1
    finally:
        with contextlib.suppress(KafkaException):  # committed unless the test failed before
            former_owner.abort_transaction(30)
