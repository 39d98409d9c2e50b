"""A record Kafka refuses ends what waits on it at once: a call fails with 413
(``TerminalError``: sent again, it would be refused again) rather than waiting for a
response no worker will write, and a send fails the same way. Kafka refuses here because
the ingress topic's ``max.message.bytes`` is set below the record's size.

A record a worker writes that Kafka refuses for good (a topic's limit lowered while the
worker runs) fails the invocation that wrote it with 413, and the worker goes on."""

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

from handlers import TerminalError
from streams.client import Client
from streams.kafka.worker import Worker
from streams.settings import Settings
from streams.wire.topics import Topics
from tests.integration.helpers import held_watermarks, poll_until

SMALL = 1024  # bytes: the ingress topic's largest record in these tests
BIG = "x" * 4 * SMALL


async def shrink_ingress_records(settings: Settings, name: str = "ingress") -> None:
    """Set the limit of topic ``name`` (a ``Topics`` attribute), and wait until the broker
    (not only the controller) applies it."""
    admin = AdminClient(settings.client_config())
    topic = ConfigResource(ResourceType.TOPIC, getattr(Topics(settings.namespace), name))
    entry = ConfigEntry(
        "max.message.bytes", str(SMALL), incremental_operation=AlterConfigOpType.SET
    )
    change = ConfigResource(topic.restype, topic.name, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([change]).values():
        future.result(30)

    async def limit() -> str:
        configs = admin.describe_configs([topic])[topic].result(30)
        return str(configs["max.message.bytes"].value)

    await poll_until(limit, str(SMALL), 30, f"the broker's max.message.bytes of the {name}")


def ingress_records(settings: Settings) -> int:
    """How many offsets the ingress topic's partitions hold, all together."""
    marks = held_watermarks(settings, Topics(settings.namespace).ingress)
    return sum(high for _, high in marks.values())


async def test_a_call_whose_record_kafka_refuses_fails_at_once(topics: Settings) -> None:
    await shrink_ingress_records(topics)
    async with Client(topics) as client:
        # a small record is taken (no worker runs, so its call waits for its response)
        waiting = asyncio.create_task(client.object("Tally", "small", "add").request(1))

        async def awaited() -> int:
            return client.awaited

        await poll_until(awaited, 1, 30, "the small call waiting for its response")

        async def taken() -> int:
            return await asyncio.to_thread(ingress_records, topics)

        await poll_until(taken, 1, 30, "ingress records taken by Kafka")
        # The broker's refusal, in the delivery report: it was KafkaUnavailable (HTTP 503,
        # "try again"), and again, the same record would be refused every time.
        with pytest.raises(TerminalError, match="did not take the record") as refused:
            await asyncio.wait_for(client.object("Tally", "big", "add").request(BIG), 30)
        assert refused.value.status_code == 413
        assert client.awaited == 1, "the refused call no longer waits; the small one does"
        with pytest.raises(TerminalError, match="did not take the record") as refused:
            await asyncio.wait_for(client.object_send("Tally", "big", "add").send(BIG), 30)
        assert refused.value.status_code == 413
        assert await asyncio.to_thread(ingress_records, topics) == 1, "nothing else written"
        assert not waiting.done(), "the small call still waits for its response"
        waiting.cancel()


@pytest.mark.parametrize(("what", "topic"), [("result", "responses"), ("run", "invocations")])
async def test_a_record_kafka_refuses_for_good_fails_its_invocation_only(
    worker: Worker, client: Client, what: str, topic: str
) -> None:
    """A topic's limit lowered while the worker runs: Kafka refused the transaction that
    held the record, every time the worker replayed its step, and every partition of the
    worker waited behind it. Now the invocation that wrote it fails with 413."""
    small = "x" * 10 if what == "result" else "ran"
    # The worker has started first: it refuses to start on a topic whose limit is that low.
    warm = client.object("Tally", f"warm-{what}", "swell").request({"bytes": 10, "as": what})
    assert await asyncio.wait_for(warm, 60) == small
    await shrink_ingress_records(worker.settings, topic)
    big = client.object("Tally", f"swell-{what}", "swell").request({"bytes": 4 * SMALL, "as": what})
    beside = client.object("Tally", f"beside-{what}", "swell").request({"bytes": 10, "as": what})
    # Both at once, most likely in one step: the small one commits, the large one fails.
    outcomes = await asyncio.wait_for(asyncio.gather(big, beside, return_exceptions=True), 60)
    failure, answer = outcomes
    assert isinstance(failure, TerminalError), failure
    assert failure.status_code == 413
    assert "Kafka refused a record this invocation wrote" in failure.message
    assert answer == small
    # The key is free again, other keys are served, and the worker commits on.
    for key in (f"swell-{what}", f"other-{what}"):
        call = client.object("Tally", key, "swell").request({"bytes": 10, "as": what})
        assert await asyncio.wait_for(call, 60) == small
