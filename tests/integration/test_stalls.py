"""A partition that an open transaction holds still is reported, ended with Kafka's own
tool as README "Hanging transactions" says, and cleared once it moves."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import weakref
from datetime import timedelta
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, Producer
from prometheus_client import REGISTRY

from streams.client import Client
from streams.settings import Settings
from streams.wire.partitioning import partition_of_key
from tests.integration import apps
from tests.integration.conftest import in_process_worker
from tests.integration.helpers import poll_until
from tests.kafka_helpers import abort, end_transactions_left_hanging, open_transaction_starts


def stalled_seconds(topic: str, partition: int) -> float | None:
    return REGISTRY.get_sample_value(
        "kourier_partition_stalled_seconds", {"topic": topic, "partition": str(partition)}
    )


async def outside_producer(settings: Settings) -> Producer:
    """A transactional producer outside Kourier, ready to leave a transaction open, as a
    hanging transaction would, for as long as the broker allows (15 minutes)."""
    producer = Producer(
        settings.producer_config(
            {"transactional.id": f"{settings.namespace}.stuck", "transaction.timeout.ms": 900_000}
        )
    )
    await asyncio.to_thread(producer.init_transactions, 30)
    return producer


async def test_a_partition_an_open_transaction_holds_is_reported_until_the_transaction_ends(
    topics: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kourier.stalls")
    settings = topics.model_copy(update={"stall_after": timedelta(seconds=1)})
    ingress = f"{settings.namespace}.ingress"
    key = "held"
    held = partition_of_key(key, settings.partitions)
    stuck = await outside_producer(settings)
    behind: asyncio.Task[int] | None = None
    try:
        async with (
            in_process_worker(settings, apps.SERVICES, f"stalls-{settings.namespace}") as worker,
            Client(settings) as client,
        ):
            assert await client.object("Tally", key, "add").request(1) == 1
            stuck.begin_transaction()
            stuck.produce(ingress, b"written in a transaction left open", key=b"x", partition=held)
            assert await asyncio.to_thread(stuck.flush, 30) == 0
            behind = asyncio.create_task(client.object("Tally", key, "add").request(10))

            warning = re.compile(rf"{re.escape(ingress)}/{held}: read_committed readers have "
                                 r"waited at offset (\d+)")  # fmt: skip

            async def reported() -> bool:
                return any(warning.match(r.getMessage()) for r in caplog.records)

            await poll_until(reported, True, 30, f"a warning about {ingress}/{held}")
            offsets = {m[1] for r in caplog.records if (m := warning.match(r.getMessage()))}
            seconds = stalled_seconds(ingress, held)
            assert seconds is not None
            assert seconds >= 1.0
            assert not behind.done(), "a call behind the open transaction ran"
            others = {p: stalled_seconds(ingress, p) for p in worker.processors if p != held}
            assert {v for v in others.values() if v is not None} <= {0.0}, others

            (start_offset,) = offsets
            await abort(settings.bootstrap_servers, ingress, held, int(start_offset))
            assert await asyncio.wait_for(behind, 30) == 11

            async def cleared() -> float | None:
                return stalled_seconds(ingress, held)

            await poll_until(cleared, 0.0, 30, f"the stalled gauge of {ingress}/{held}")
            assert any(f"{ingress}/{held}: readers moved on past offset" in r.getMessage()
                       for r in caplog.records)  # fmt: skip
        # A worker that stops reports none of its partitions any more.
        assert stalled_seconds(ingress, held) is None
    finally:
        if behind is not None:
            behind.cancel()
        with contextlib.suppress(KafkaException):  # when the test failed before the abort
            await asyncio.to_thread(stuck.abort_transaction, 30)


async def test_the_transactions_a_broker_log_says_it_left_without_markers_are_ended(
    topics: Settings, tmp_path: Path
) -> None:
    """The remedy the chaos tier applies when Kafka's defect (README, Limits) leaves a
    transaction hanging: every partition the broker's log names gets its transaction
    aborted, and its readers move on."""
    ingress = f"{topics.namespace}.ingress"
    stuck = await outside_producer(topics)
    try:
        stuck.begin_transaction()
        for partition in (0, 1):
            stuck.produce(ingress, b"left open", key=b"x", partition=partition)
        assert await asyncio.to_thread(stuck.flush, 30) == 0
        log = tmp_path / "server.log"
        log.write_text(
            "[2026-12-06 09:48:52,364] INFO [Transaction Marker Channel Manager 1]: Couldn't "
            f"find leader endpoint for partitions Set({ingress}-0, {ingress}-1) while trying "
            f"to send transaction markers for {topics.namespace}.stuck, these partitions are "
            "likely deleted already and hence can be skipped\n"
        )
        assert await open_transaction_starts(topics.bootstrap_servers, ingress, 0) == [0]
        ended = await end_transactions_left_hanging(topics.bootstrap_servers, log)
        assert ended == [f"{ingress}-0@0 ({topics.namespace}.stuck)",
                         f"{ingress}-1@0 ({topics.namespace}.stuck)"]  # fmt: skip
        for partition in (0, 1):
            assert await open_transaction_starts(topics.bootstrap_servers, ingress, partition) == []
        assert await end_transactions_left_hanging(topics.bootstrap_servers, log) == []
    finally:
        with contextlib.suppress(KafkaException):  # when the test failed before the abort
            await asyncio.to_thread(stuck.abort_transaction, 30)


async def test_a_client_reports_its_response_partition_held_by_an_open_transaction(
    topics: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kourier.stalls")
    settings = topics.model_copy(update={"stall_after": timedelta(seconds=1)})
    stuck = await outside_producer(settings)
    try:
        async with Client(settings) as client:
            (responses, home), _ = client._kafka.read()
            stuck.begin_transaction()
            stuck.produce(responses, b"an answer nobody will read", partition=home)
            assert await asyncio.to_thread(stuck.flush, 30) == 0
            held = f"{responses}/{home}: read_committed readers have waited at offset"

            async def reported() -> bool:
                return any(r.getMessage().startswith(held) for r in caplog.records)

            await poll_until(reported, True, 30, f"a warning about {responses}/{home}")
            await asyncio.to_thread(stuck.abort_transaction, 30)
            moved = f"{responses}/{home}: readers moved on past offset"

            async def cleared() -> bool:
                return any(r.getMessage().startswith(moved) for r in caplog.records)

            await poll_until(cleared, True, 30, f"the end of the stall of {responses}/{home}")
    finally:
        with contextlib.suppress(KafkaException):  # when the test failed before the abort
            await asyncio.to_thread(stuck.abort_transaction, 30)


async def test_a_closed_client_lets_its_watch_s_admin_client_go(topics: Settings) -> None:
    """librdkafka handles live until garbage collected: one kept alive by the finished watch
    would go on talking to the brokers after the client closed."""
    client = Client(topics)
    await client.start()
    admin = weakref.ref(client._kafka._admin)
    await client.close()
    gc.collect()
    assert admin() is None, gc.get_referrers(admin())
