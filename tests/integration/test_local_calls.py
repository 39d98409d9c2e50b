"""Calls between partitions of one worker, against the real broker: a call runs without its
record only where the worker has read every record of the callee's partition."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.client import Client
from streams.kafka.ends import PartitionEnds
from streams.kafka.offsets import worker_consumer
from streams.kafka.worker import Worker
from streams.settings import Settings
from streams.wire.topics import Topics
from tests.integration import apps
from tests.kafka_helpers import drain


def tally_invokes(messages: list[Message]) -> int:
    """Invoke records among ``messages`` that call the Tally object."""
    found = 0
    for message in messages:
        record = json.loads(message.value() or b"{}")
        if record.get("kind") == "invoke" and record["target"]["service"] == "Tally":
            found += 1
    return found


async def test_a_call_to_a_partition_read_to_its_end_writes_no_record(
    client: Client, worker: Worker, topics: Settings
) -> None:
    keys = ["a", "b", "c"]
    # A call to a partition the worker has read no record from yet (no position, nothing
    # committed) goes as a record; one to a partition it has read may not.
    assert await client.service("Relay", "sum_of").request(keys) == 3
    first = worker._steps.calls.ran
    assert first < 3
    assert await client.service("Relay", "sum_of").request(keys) == 6
    assert worker._steps.calls.ran - first == 3, (
        "each call of the second request ran without a record"
    )
    ingress = Topics(topics.namespace).ingress
    written = drain(topics, ingress, expect=3 - first, count=tally_invokes)
    assert tally_invokes(written) == 3 - first, "the second request's calls wrote no records"


class Probe:
    """A worker that is not running, with the partition-ends checker and a consumer of
    ingress partition 0 of its own, and a plain and a transactional producer."""

    def __init__(self, topics: Settings) -> None:
        self.worker = Worker(topics, apps.SERVICES)
        self.ingress = Topics(topics.namespace).ingress
        self.worker._ends = PartitionEnds(AdminClient(topics.client_config()), self.ingress)
        self.consumer = worker_consumer(topics, f"{topics.namespace}.probe")
        self.consumer.assign([TopicPartition(self.ingress, 0, 0)])
        self.worker._consumer = self.consumer
        self.plain = Producer(topics.producer_config({}))
        transactional = {"transactional.id": f"probe-{uuid.uuid4()}"}
        self.writer = Producer(topics.producer_config(transactional))
        self.writer.init_transactions(30)


def _read(consumer: Consumer, partition: TopicPartition, offset: int, seconds: float = 20) -> None:
    """Poll until the consumer's position on ``partition`` reaches ``offset``."""
    deadline = time.monotonic() + seconds
    while consumer.position([partition])[0].offset < offset:
        assert time.monotonic() < deadline, f"position did not reach {offset} in {seconds}s"
        consumer.poll(0.1)


async def test_a_partition_is_read_to_its_end_only_once_its_records_are_read(
    topics: Settings,
) -> None:
    """``Worker._read_to_end`` with the broker's answers: a record produced and not yet
    read, or one in a transaction still open, keeps the partition from being ready."""
    probe = Probe(topics)
    worker, consumer, ingress = probe.worker, probe.consumer, probe.ingress
    plain, writer = probe.plain, probe.writer
    partition = TopicPartition(ingress, 0)
    try:
        plain.produce(ingress, b"{}", b"k", partition=0)
        plain.flush(10)
        assert await worker._read_to_end({0}, {}) == ({}, {}), "no position, nothing committed"
        worker._offsets[0] = 0  # as if committed by a previous owner: reading starts there
        assert await worker._read_to_end({0}, {}) == ({}, {0: 1}), "a record is left to read"
        await asyncio.to_thread(_read, consumer, partition, 1)
        assert await worker._read_to_end({0}, {}) == ({0: 1}, {})

        writer.begin_transaction()
        writer.produce(ingress, b"{}", b"k", partition=0)
        writer.flush(10)  # written, not committed: no read_committed reader passes it
        assert await worker._read_to_end({0}, {}) == ({}, {0: 2}), "an open transaction's"
        writer.commit_transaction(30)
        await asyncio.to_thread(_read, consumer, partition, 3)  # the record and its marker
        assert await worker._read_to_end({0}, {}) == ({0: 3}, {})
        # A watermark known already is not asked again: one past the end is not reached.
        assert await worker._read_to_end({0}, {0: 4}) == ({}, {0: 4})
    finally:
        consumer.close()


async def test_reading_ahead_reads_the_records_up_to_the_watermark_waited_for(
    topics: Settings,
) -> None:
    """``Worker._read_ahead``: the Kafka thread reads the records ahead of kept calls, and
    gives up on those of a transaction still open once ``READ_AHEAD`` has passed; that
    partition then gets no other look for a while."""
    probe = Probe(topics)
    worker, consumer, ingress = probe.worker, probe.consumer, probe.ingress
    plain, writer = probe.plain, probe.writer
    try:
        for n in range(3):
            plain.produce(ingress, b"{}", f"k{n}".encode(), partition=0)
        plain.flush(10)
        worker._steps.waiting = {0: 3}
        read: list[Message] = []
        deadline = time.monotonic() + 20  # the first fetch after an assign can take a while
        while worker._ends.read_ahead_hits == 0:
            assert time.monotonic() < deadline, "the three records were not read in 20s"
            read += await asyncio.to_thread(worker._read_ahead)
        assert [m.key() for m in read] == [b"k0", b"k1", b"k2"]

        writer.begin_transaction()
        writer.produce(ingress, b"{}", b"open", partition=0)
        writer.flush(10)
        worker._steps.waiting = {0: 4}
        began = time.monotonic()
        assert await asyncio.to_thread(worker._read_ahead) == []
        assert time.monotonic() - began < 0.25, "bounded by READ_AHEAD (5 ms)"
        assert worker._ends.read_ahead_hits == 1
        assert await worker._read_to_end({0}, {}) == ({}, {}), "no other look for now"
        worker._ends._missed.clear()
        assert await worker._read_to_end({0}, {}) == ({}, {0: 4})
        writer.abort_transaction(30)
    finally:
        consumer.close()
