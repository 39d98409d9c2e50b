"""Taking a partition over reads its changelogs back to where their last owner wrote them."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, Producer

from streams.kafka.admin import admin_client
from streams.kafka.offsets import worker_consumer
from streams.kafka.restore import restore_partition
from streams.settings import Settings
from streams.wire.topics import Topics


class Restored:
    """A partition processor's restore side, recorded."""

    partition = 0

    def __init__(self) -> None:
        self.state: dict[bytes, bytes | None] = {}
        self.invocations: dict[bytes, bytes | None] = {}

    def restore_state(self, key: bytes, value: bytes | None) -> None:
        self.state[key] = value

    def restore_invocation(self, key: bytes, value: bytes | None) -> None:
        self.invocations[key] = value

    def restore_dedup(self, key: bytes, value: bytes | None) -> None:
        pass


@pytest.fixture
def restorer(topics: Settings) -> Iterator[Consumer]:
    consumer = worker_consumer(topics, f"{topics.namespace}.restore", 5)
    try:
        yield consumer
    finally:
        consumer.close()


def _in_transaction(settings: Settings, topic: str, records: dict[bytes, bytes]) -> Producer:
    """A producer whose open transaction holds ``records`` on partition 0 of ``topic``."""
    producer = Producer(settings.client_config({"transactional.id": f"t-{uuid.uuid4()}"}))
    producer.init_transactions(30)
    producer.begin_transaction()
    for key, value in records.items():
        producer.produce(topic, key=key, value=value, partition=0)
    producer.flush(10)  # in the log, below the high watermark, before any marker
    return producer


def _restore_in_thread(
    settings: Settings, restorer: Consumer, into: Restored
) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            restore_partition(restorer, admin_client(settings), Topics(settings.namespace), into)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


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
