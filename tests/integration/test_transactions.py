"""Kafka transactions on the project's broker: the mechanism exactly-once rests on.

These drive confluent-kafka and the broker alone, not Kourier's code: they hold the
assumptions Kourier's transactions make, and fail when an upgrade of the broker
(``deploy/kafka/pom.xml``) or of librdkafka (``confluent-kafka``) breaks one. Kourier's own
use of them is tested in ``test_restore.py``, ``test_hand_over.py`` and the chaos tier."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from streams.kafka.admin import admin_client
from streams.settings import Settings
from tests.kafka_helpers import create_topic, drain


def _producer(settings: Settings, transactional_id: str) -> Producer:
    producer = Producer(settings.client_config({"transactional.id": transactional_id}))
    producer.init_transactions(30)
    return producer


def test_read_committed_sees_only_committed_records(settings: Settings) -> None:
    topic = create_topic(settings, "tx", partitions=1)
    producer = _producer(settings, f"tx-{uuid.uuid4()}")

    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, key=b"k", value=f"aborted-{i}".encode())
    producer.flush(10)  # the aborted records reach the log before the abort marker
    producer.abort_transaction(30)

    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, key=b"k", value=f"committed-{i}".encode())
    producer.commit_transaction(30)

    committed = drain(settings, topic, isolation="read_committed", expect=3)
    assert [m.value() for m in committed] == [b"committed-0", b"committed-1", b"committed-2"]

    # The aborted records are really in the log: a read_uncommitted reader sees them.
    everything = drain(settings, topic, isolation="read_uncommitted", expect=6)
    assert sorted(m.value() for m in everything if m.value().startswith(b"aborted")) == [
        b"aborted-0",
        b"aborted-1",
        b"aborted-2",
    ]


def test_offsets_commit_atomically_with_output(settings: Settings) -> None:
    """consume -> produce -> send_offsets_to_transaction: an aborted step is redone, once."""
    source = create_topic(settings, "src", partitions=1)
    sink = create_topic(settings, "sink", partitions=1)
    seed = Producer(settings.client_config())
    for i in range(4):
        seed.produce(source, value=str(i).encode())
    seed.flush(10)

    group = f"g-{uuid.uuid4()}"

    def step(commit: bool) -> list[bytes]:
        consumer = Consumer(
            settings.client_config(
                {
                    "group.id": group,
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                }
            )
        )
        consumer.assign([TopicPartition(source, 0)])
        batch = consumer.consume(num_messages=4, timeout=10)
        assert len(batch) == 4, "the source records did not arrive"
        producer = _producer(settings, f"{group}-p0")
        producer.begin_transaction()
        for message in batch:
            producer.produce(sink, value=b"out-" + message.value())
        producer.send_offsets_to_transaction(
            [TopicPartition(source, 0, batch[-1].offset() + 1)],
            consumer.consumer_group_metadata(),
            30,
        )
        if commit:
            producer.commit_transaction(30)
        else:
            producer.abort_transaction(30)
        consumer.close()
        return [m.value() for m in batch]

    assert step(commit=False) == [b"0", b"1", b"2", b"3"]
    # The aborted step committed no offsets, so the next one reads the same input again.
    assert step(commit=True) == [b"0", b"1", b"2", b"3"]
    out = drain(settings, sink, isolation="read_committed", expect=4)
    assert [m.value() for m in out] == [b"out-0", b"out-1", b"out-2", b"out-3"]
    admin = admin_client(settings)
    committed = admin.list_consumer_group_offsets([_group_request(group, source)])[group].result()
    assert committed.topic_partitions[0].offset == 4


def _group_request(group: str, topic: str) -> object:
    from confluent_kafka import ConsumerGroupTopicPartitions

    return ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0)])


def test_a_new_producer_fences_the_old_one(settings: Settings) -> None:
    """Two producers with one transactional.id: the older (a zombie) can no longer commit."""
    topic = create_topic(settings, "fence", partitions=1)
    tid = f"fence-{uuid.uuid4()}"
    zombie = _producer(settings, tid)
    zombie.begin_transaction()
    zombie.produce(topic, value=b"from-zombie")
    zombie.flush(10)

    successor = _producer(settings, tid)  # aborts the zombie's open transaction
    successor.begin_transaction()
    successor.produce(topic, value=b"from-successor")
    successor.commit_transaction(30)

    with pytest.raises(KafkaException) as failure:
        zombie.commit_transaction(10)
    error: KafkaError = failure.value.args[0]
    assert error.fatal() or error.txn_requires_abort(), error
    seen = drain(settings, topic, isolation="read_committed", expect=1)
    assert [m.value() for m in seen] == [b"from-successor"]
