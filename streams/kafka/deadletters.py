"""The dead-letter topic: list what landed there and why, and replay records to ingress.

A dead letter is the original ingress record, key and value unchanged, with ``kourier.*``
headers saying why it was set aside (:class:`~streams.wire.deadletter.DeadLetter`). Replaying
produces the original record to the ingress topic again — after the cause is fixed (a
service deployed, a producer corrected); a record that still fails comes back here.
Every replay of a letter, and of the letters its replays became, names the record first set
aside (``REPLAY_HEADER``): a call that names neither an id nor an idempotency key is then
one invocation however often it is replayed (``streams.engine.replays``).
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Iterable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streams.errors import KourierError
from streams.kafka.offsets import (
    TOPIC_GRACE,
    Refusals,
    consume_ready,
    headers_of,
    required_topics,
    watermarks,
)
from streams.settings import Settings
from streams.wire.deadletter import REPLAY_HEADER, DeadLetter
from streams.wire.partitioning import partition_for
from streams.wire.topics import Topics


class ReadTimeout(KourierError, TimeoutError):
    """The dead-letter topic was not read to its end in time (Kafka slow, or the topic
    large): the same command may succeed later."""

    retriable = True


class ReplayIncomplete(KourierError, RuntimeError):
    """Some replayed records were not acknowledged by Kafka in time: some may have been
    written. Replaying them again makes no second invocation of a call without an id (see
    above); one that names its id runs again if its outcome was not kept."""

    retriable = True


def read(
    settings: Settings,
    *,
    reason: str | None = None,
    timeout: float = 30.0,
    last: int | None = None,
) -> list[DeadLetter]:
    """Every dead letter now on the topic (oldest first), optionally of one ``reason``,
    or the ``last`` of them only (the others are not kept meanwhile); ``MissingTopics``
    when the namespace has no dead-letter topic, ``ReadTimeout`` past ``timeout``."""
    topics = Topics(settings.namespace)
    refusals = Refusals()  # a connection refused (TLS, SASL) raises at once
    config: dict[str, Any] = settings.client_config(
        {
            "group.id": f"{settings.namespace}.dlq.{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            # A segment deleted by retention as it is read puts the position at the oldest
            # letter kept: at the end (librdkafka's default), the rest would go unlisted.
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "log_level": 3,
        }
    )
    consumer = Consumer({**config, "error_cb": refusals})
    letters: deque[DeadLetter] = deque(maxlen=last)
    try:
        required_topics(consumer, [topics.deadletter], min(timeout, TOPIC_GRACE), refusals)
        tp = TopicPartition(topics.deadletter, 0, OFFSET_BEGINNING)
        low, end = watermarks(consumer, tp)
        if low >= end:  # none, or all deleted (retention): no position would pass the end
            return []
        consumer.assign([tp])
        deadline = time.monotonic() + timeout
        while consumer.position([tp])[0].offset < end:
            if time.monotonic() > deadline:
                raise ReadTimeout(f"reading {topics.deadletter} took longer than {timeout:.0f} s")
            for message in consume_ready(consumer, 500, 0.1):
                if message.error() is not None:
                    continue
                pairs = headers_of(message) or []  # a name not UTF-8: its own are lost
                letter = DeadLetter.from_record(
                    message.key(), message.value(), pairs, message.offset()
                )
                if reason is None or letter.reason == reason:
                    letters.append(letter)
    finally:
        consumer.close()
    return list(letters)


def replay(settings: Settings, letters: Iterable[DeadLetter], timeout: float = 30.0) -> int:
    """Produce each letter's original record to the ingress topic; returns how many.
    Truncated letters and letters from the delay topic are refused (``ValueError``), and a
    missing ingress topic (``MissingTopics``), before anything is produced; records Kafka
    did not acknowledge in ``timeout`` raise ``ReplayIncomplete``."""
    chosen = list(letters)
    topics = Topics(settings.namespace)
    cut = [letter.dlq_offset for letter in chosen if letter.truncated is not None]
    if cut:
        raise ValueError(f"dead letters at offsets {cut} keep only the start of their record")
    foreign = [letter.dlq_offset for letter in chosen if letter.topic != topics.ingress]
    if foreign:
        # A delay record set aside names no invocation (or a bad one): nothing can run it.
        raise ValueError(f"dead letters at offsets {foreign} are not from the ingress topic")
    refusals = Refusals()  # a connection refused (TLS, SASL) raises at once
    config: dict[str, Any] = settings.producer_config({"enable.idempotence": True, "log_level": 3})
    producer = Producer({**config, "error_cb": refusals})
    listed = required_topics(producer, [topics.ingress], min(timeout, TOPIC_GRACE), refusals)
    partitions = len(listed[topics.ingress].partitions)
    errors: list[str] = []
    count = 0
    for letter in chosen:
        key = letter.original_key()
        partition = partition_for(key, partitions) if key else 0
        while True:
            try:
                producer.produce(
                    topics.ingress,
                    value=letter.original_value(),
                    key=key,
                    partition=partition,
                    headers=[
                        ("kourier.replayed-from", str(letter.dlq_offset).encode()),
                        (REPLAY_HEADER, letter.first.encode()),
                        *letter.trace_headers(),  # the call joins its first record's trace
                        *letter.original_headers(),
                    ],
                    on_delivery=lambda error, _: errors.append(str(error)) if error else None,
                )
                break
            except BufferError:  # librdkafka's queue is full (100,000 records, or 1 GiB)
                if producer.flush(timeout):  # what is queued gone within the timeout, or
                    raise ReplayIncomplete(  # the command's one line (it was a traceback)
                        f"Kafka did not take the records queued within {timeout:g} s "
                        f"({count} of {len(chosen)} were queued)"
                    ) from None
        count += 1
    remaining = producer.flush(timeout)
    if remaining or errors:
        raise ReplayIncomplete(
            f"{len(errors) + remaining} of {count} records not acknowledged by Kafka "
            f"({'; '.join(errors[:3]) or 'no answer'})"
        )
    return count
