"""Effects larger than Kafka takes: the invocation that made one fails with 413, and the
worker, its other invocations and the key itself go on (a commit that cannot be written
once wedged every partition of the worker)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from confluent_kafka import Producer

from handlers import TerminalError
from streams.client import Client
from streams.kafka import deadletters
from streams.kafka.worker import Worker
from streams.settings import Settings
from streams.wire.deadletter import DeadLetter
from streams.wire.records import Invoke, Target, encode
from tests.kafka_helpers import drain


@pytest.mark.parametrize("what", ["state", "result", "run", "call"])
async def test_an_oversize_effect_fails_its_invocation_only(
    client: Client, worker: Worker, what: str
) -> None:
    with pytest.raises(TerminalError) as failure:
        await asyncio.wait_for(client.object("Tally", f"big-{what}", "hoard").request(what), 60)
    assert failure.value.status_code == 413
    assert "Kourier writes at most" in failure.value.message or "exceed" in failure.value.message
    # The key is free again, other keys are served, and the worker commits on.
    for key in (f"big-{what}", f"small-{what}"):
        assert await asyncio.wait_for(client.object("Tally", key, "add").request(2), 60) == 2


async def test_a_dead_letter_of_a_record_near_the_limit_fits(
    topics: Settings, worker: Worker, client: Client, ingress_url: str
) -> None:
    # Just under librdkafka's 1,000,000-byte record limit: over Kourier's 900 KiB, so it is
    # dead-lettered, and its copy with the reason headers must still fit.
    record = Invoke(target=Target(service="Tally", key="near", handler="add"), argument=1)
    head = encode(record)[:-1] + b',"headers":{"pad":"'
    body = head + b"p" * (999_700 - len(head) - 3) + b'"}}'
    assert len(body) == 999_700  # with the reason headers, a whole copy would not fit
    producer = Producer(topics.producer_config())
    producer.produce(f"{topics.namespace}.ingress", body, b"near")
    assert await asyncio.to_thread(producer.flush, 30) == 0
    (letter,) = await asyncio.to_thread(drain, topics, f"{topics.namespace}.deadletter", expect=1)
    headers = dict(letter.headers() or [])
    assert headers["kourier.reason"] == b"oversize"
    assert int(headers["kourier.truncated"]) == len(body)
    assert len(letter.value() or b"") < len(body)
    parsed = DeadLetter.from_record(letter.key(), letter.value(), letter.headers())
    assert parsed.truncated == len(body)
    with pytest.raises(ValueError, match="keep only the start"):
        deadletters.replay(topics, [parsed])
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{ingress_url}/Tally/near/add", json=3) as reply,
    ):
        assert await reply.json() == 3, "the partition goes on"
