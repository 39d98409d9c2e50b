"""The client's connection to Kafka where librdkafka refuses a record outright (its own
errors, raised by ``produce``): no Kafka is needed to see how each is told."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.client.connection import Connection, KafkaUnavailable
from streams.settings import Settings
from streams.wire.topics import Topics


class Refusing:
    """A producer whose ``produce`` raises ``error``, as librdkafka's does."""

    def __init__(self, error: KafkaError) -> None:
        self.error = error

    def produce(self, *args: Any, **kwargs: Any) -> None:
        raise KafkaException(self.error)


def started(producer: Refusing) -> Connection:
    connection = Connection(Settings(namespace="unit"), Topics("unit"))
    connection._loop = asyncio.get_running_loop()
    connection._producer = producer  # type: ignore[assignment]
    connection.running = True
    return connection


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), "Kafka did not take the record"),
        (KafkaError(KafkaError._FATAL, fatal=True), "restart the client"),
    ],
)
async def test_a_record_librdkafka_refuses_is_kafka_unavailable(
    error: KafkaError, words: str
) -> None:
    """Not written, so a 503 over HTTP with its reason; it was a KafkaException, which the
    ingress answered with a 500 ("internal error"), and after a fatal error on every call."""
    connection = started(Refusing(error))
    with pytest.raises(KafkaUnavailable, match=words):
        await connection.produce("unit.ingress", b"{}", 0, "k")
