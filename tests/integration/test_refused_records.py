"""A record Kafka refuses ends what waits on it at once: a call fails with
``KafkaUnavailable`` (HTTP 503) rather than waiting for a response no worker will write,
and a send fails the same way. Kafka refuses here because the ingress topic's
``max.message.bytes`` is set below the record's size."""

from __future__ import annotations

import asyncio

import pytest
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from streams.client import Client, KafkaUnavailable
from streams.settings import Settings
from streams.wire.topics import Topics

SMALL = 1024  # bytes: the ingress topic's largest record in these tests
BIG = "x" * 4 * SMALL


def shrink_ingress_records(settings: Settings) -> None:
    admin = AdminClient(settings.client_config())
    topic = Topics(settings.namespace).ingress
    entry = ConfigEntry(
        "max.message.bytes", str(SMALL), incremental_operation=AlterConfigOpType.SET
    )
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)


async def test_a_call_whose_record_kafka_refuses_fails_at_once(topics: Settings) -> None:
    shrink_ingress_records(topics)
    async with Client(topics) as client:
        # accepted while the record is small: the topic takes records, no worker answers
        waiting = asyncio.create_task(client.object("Tally", "small", "add").request(1))
        with pytest.raises(KafkaUnavailable, match="did not take the record"):
            await asyncio.wait_for(client.object("Tally", "big", "add").request(BIG), 30)
        assert client.awaited == 1, "only the call whose record Kafka took still waits"
        with pytest.raises(KafkaUnavailable, match="did not take the record"):
            await asyncio.wait_for(client.object_send("Tally", "big", "add").send(BIG), 30)
        assert not waiting.done()
        waiting.cancel()
