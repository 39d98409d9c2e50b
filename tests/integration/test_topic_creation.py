"""`kourier worker` and `kourier ingress` create missing topics, unless told not to; a
client or worker started while its topics are being created waits for them; an ingress or
an admin index whose start fails, or is cancelled, closes the Kafka clients it opened."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    ResourceType,
)

from streams.client import Client
from streams.errors import ServeError
from streams.http import index as index_module
from streams.http.index import InvocationIndex
from streams.http.ingress import Ingress, serve
from streams.kafka.admin import create_topics, describe_topics
from streams.kafka.broker import free_port
from streams.kafka.startup import WorkerError
from streams.kafka.worker import Worker
from streams.settings import Settings
from streams.wire.topics import Topics
from tests.integration import apps
from tests.integration.helpers import kourier_process as kourier
from tests.integration.helpers import poll_until
from tests.processes import stop_process
from tests.threads import in_thread


def shapes(settings: Settings) -> list[tuple[str, bool, int]]:
    """Each topic of the namespace: (name, exists, partitions)."""
    rows = describe_topics(settings)["topics"]
    return [(str(r["topic"]), bool(r["exists"]), int(str(r["partitions"]))) for r in rows]


async def test_a_worker_creates_missing_topics_with_the_given_partitions(
    settings: Settings, tmp_path: Path
) -> None:
    assert not any(exists for _, exists, _ in await asyncio.to_thread(shapes, settings))
    log = tmp_path / "worker.log"
    worker = kourier(settings, "worker", "tests.integration.apps", "--partitions", "3", log=log)
    try:
        three = settings.model_copy(update={"partitions": 3})
        expected = [(spec.name, True, spec.partitions)
                    for spec in Topics(settings.namespace).specs(3)]  # fmt: skip

        async def current() -> list[tuple[str, bool, int]]:
            return await asyncio.to_thread(shapes, three)

        await poll_until(current, expected, 60, "topics created by the worker")
        async with Client(three) as client:
            add = client.object("Tally", "created", "add")
            assert await asyncio.wait_for(add.request(2), 60) == 2
        assert "created" in log.read_text()
    finally:
        stop_process(worker)


def test_topics_another_process_created_meanwhile_are_not_said_to_be_created(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers starting together both read that the topics were missing, and both
    said they had created them: the one Kafka answered TOPIC_ALREADY_EXISTS had not."""
    assert all(state.created for state in create_topics(settings))
    from streams.kafka import admin

    real = admin.cluster_metadata

    def before_the_other_created_them(*args: Any, **kwargs: Any) -> Any:
        metadata = real(*args, **kwargs)
        metadata.topics = {}  # as read by a worker just before another created the topics
        return metadata

    monkeypatch.setattr(admin, "cluster_metadata", before_the_other_created_them)
    again = create_topics(settings)
    assert [state.spec.name for state in again] == [
        spec.name for spec in Topics(settings.namespace).specs(settings.partitions)
    ]
    assert not any(state.created for state in again)


async def test_an_ingress_creates_missing_topics_and_serves(
    settings: Settings, tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    log = tmp_path / "ingress.log"
    args = ("ingress", "--port", str(port), "--admin-port", str(admin))
    ingress = kourier(settings, *args, log=log)
    try:

        async def healthy() -> bool:
            try:
                url = f"http://127.0.0.1:{port}/health"
                async with aiohttp.ClientSession() as http, http.get(url) as reply:
                    return reply.status == 200
            except aiohttp.ClientError:
                return False

        await poll_until(healthy, True, 60, f"ingress health ({log.read_text()[-500:]})")
        assert all(exists for _, exists, _ in await asyncio.to_thread(shapes, settings))
    finally:
        stop_process(ingress)


async def test_an_ingress_on_port_0_says_the_ports_it_listens_on(
    settings: Settings, tmp_path: Path
) -> None:
    """``--port 0`` takes a free port; the URL printed is that port's, not ``:0``."""
    log = tmp_path / "ingress.log"
    ingress = kourier(settings, "ingress", "--port", "0", "--admin-port", "0", log=log)
    try:
        said = re.compile(r"ingress on http://127\.0\.0\.1:(\d+), admin on http://[\d.]+:(\d+)")

        async def listening() -> bool:
            return said.search(log.read_text()) is not None

        await poll_until(listening, True, 60, f"the ports said ({log.read_text()[-500:]})")
        found = said.search(log.read_text())
        assert found is not None
        port, admin = int(found[1]), int(found[2])
        assert 0 not in (port, admin)
        assert f"http://127.0.0.1:{port}\n" in log.read_text(), "the URL printed"
        for url in (f"http://127.0.0.1:{port}/health", f"http://127.0.0.1:{admin}/health"):
            async with aiohttp.ClientSession() as http, http.get(url) as reply:
                assert reply.status == 200, url
    finally:
        stop_process(ingress)


async def test_the_admin_api_listens_where_admin_host_says(topics: Settings) -> None:
    """``--admin-host`` binds the admin API apart from the ingress, so that ``--host 0.0.0.0``
    need not put it on the public network: here an address that is not this machine's
    (TEST-NET-1, so nothing is sent), which fails for the admin API alone."""
    admin_port = free_port()
    said = rf"cannot listen on 192\.0\.2\.1:{admin_port}:"
    with pytest.raises(ServeError, match=said):  # the admin's port, on the admin's host
        await serve(topics, host="127.0.0.1", port=0, admin_port=admin_port, admin_host="192.0.2.1")


async def test_a_worker_told_other_partitions_than_its_topics_have_says_which_it_uses(
    topics: Settings, tmp_path: Path
) -> None:
    """The topics' partition count wins over --partitions; the worker used to say nothing
    of the flag it ignored."""
    log = tmp_path / "worker.log"
    worker = kourier(topics, "worker", "tests.integration.apps", "--partitions", "3", log=log)
    try:
        told = (f"--partitions 3 is ignored: the namespace's topics keep (or are created with)"
                f" the {topics.partitions} partitions")  # fmt: skip
        assigned = f"ingress {list(range(topics.partitions))}"

        async def said() -> bool:
            text = log.read_text()
            return told in text and assigned in text

        await poll_until(said, True, 60, f"the warning, then all {topics.partitions} partitions "
                         f"assigned ({log.read_text()[-500:]})")  # fmt: skip
    finally:
        stop_process(worker)


async def test_dev_on_a_namespace_with_other_partitions_uses_them(
    topics: Settings, tmp_path: Path
) -> None:
    """``kourier dev`` against a cluster whose namespace exists with another partition count
    than --partitions: it refused (exit 2) where ``worker`` and ``ingress`` use the count
    the topics have, with a warning."""
    log = tmp_path / "dev.log"
    asked = str(topics.partitions + 1)
    dev = kourier(topics, "dev", "tests.integration.apps", "--partitions", asked, "--port", "0",
                  "--admin-port", "0", log=log)  # fmt: skip
    try:
        told = f"--partitions {asked} is ignored"

        async def serving() -> bool:
            assert dev.poll() is None, f"kourier dev ended: {log.read_text()[-2000:]}"
            text = log.read_text()
            return told in text and "kourier dev: Kafka" in text

        await poll_until(serving, True, 60, f"dev serving ({log.read_text()[-500:]})")
    finally:
        stop_process(dev)


async def test_with_no_create_topics_both_refuse_with_a_clear_error(
    settings: Settings, tmp_path: Path
) -> None:
    commands = {
        "worker": ("worker", "tests.integration.apps", "--no-create-topics"),
        "ingress": ("ingress", "--port", str(free_port()), "--admin-port", str(free_port()),
                    "--no-create-topics"),
    }  # fmt: skip
    for name, args in commands.items():
        log = tmp_path / f"{name}.log"
        process = kourier(settings, *args, log=log)
        try:
            code = await asyncio.to_thread(process.wait, 90)
        finally:
            stop_process(process)
        output = log.read_text()
        assert code == 2, f"{name} exited {code}: {output[-2000:]}"
        assert "kourier topics create" in output, output[-2000:]
        assert "Traceback" not in output, output[-2000:]
    assert not any(exists for _, exists, _ in await asyncio.to_thread(shapes, settings))


async def test_a_worker_refuses_topics_whose_partition_counts_differ(settings: Settings) -> None:
    """Partitions added to the ingress topic alone: the worker took the ingress count, then
    wrote state, timers and responses to partitions the other topics do not have (each
    commit refused, every one after it too), and found keys where they were not."""
    await asyncio.to_thread(create_topics, settings)
    admin = AdminClient(settings.client_config({}))
    ingress = Topics(settings.namespace).ingress
    grown = admin.create_partitions([NewPartitions(ingress, settings.partitions + 2)])
    await asyncio.to_thread(grown[ingress].result, 30)

    async def listed() -> int:
        metadata = await asyncio.to_thread(admin.list_topics, ingress, 10)
        return len(metadata.topics[ingress].partitions)

    await poll_until(listed, settings.partitions + 2, 30, "the partitions added, listed")
    worker = Worker(settings, apps.SERVICES, worker_id=f"grown-{settings.namespace}")
    with pytest.raises(WorkerError, match=r"partitions and .*ingress \d+: co-partitioned"):
        await asyncio.wait_for(worker.run(), 60)


async def test_a_worker_refuses_a_topic_that_takes_records_smaller_than_it_writes(
    settings: Settings,
) -> None:
    """A topic whose max.message.bytes is below what Kourier writes: a state value Kourier
    took (it checks against its own limit) was refused by the broker in the commit, which
    failed every commit of the worker, and again after each restore."""
    await asyncio.to_thread(create_topics, settings)
    admin = AdminClient(settings.client_config({}))
    state = ConfigResource(ResourceType.TOPIC, Topics(settings.namespace).state)
    lowered = ConfigEntry(
        "max.message.bytes", "500000", incremental_operation=AlterConfigOpType.SET
    )
    change = ConfigResource(state.restype, state.name, incremental_configs=[lowered])
    for future in admin.incremental_alter_configs([change]).values():
        await asyncio.to_thread(future.result, 30)

    async def limit() -> str:
        configs = await asyncio.to_thread(admin.describe_configs([state])[state].result, 30)
        return str(configs["max.message.bytes"].value)

    await poll_until(limit, "500000", 30, "the state topic's max.message.bytes lowered")
    worker = Worker(settings, apps.SERVICES, worker_id=f"small-{settings.namespace}")
    with pytest.raises(WorkerError, match=r"\.state takes records of at most 500000 bytes"):
        await asyncio.wait_for(worker.run(), 60)
    described = await asyncio.to_thread(describe_topics, settings)
    assert [w for w in described["warnings"] if "max.message.bytes" in w] == [
        f"{state.name} takes records of at most 500000 bytes (max.message.bytes), below the "
        "1000000 Kourier writes: workers refuse to start"
    ]


async def test_a_worker_refuses_topics_that_delete_records_it_needs(settings: Settings) -> None:
    """Topics an operator made (``--no-create-topics``) with Kafka's defaults were taken as
    long as their partition counts held: a state changelog deleted after 7 days restored
    nothing, a delay topic lost every delayed send due later than that."""
    await asyncio.to_thread(create_topics, settings)
    admin = AdminClient(settings.client_config({}))
    names = Topics(settings.namespace)
    changes = {
        names.state: ConfigEntry(
            "cleanup.policy", "delete", incremental_operation=AlterConfigOpType.SET
        ),
        names.delay: ConfigEntry(
            "retention.ms", "604800000", incremental_operation=AlterConfigOpType.SET
        ),
    }
    altered = [
        ConfigResource(ResourceType.TOPIC, name, incremental_configs=[entry])
        for name, entry in changes.items()
    ]
    for future in admin.incremental_alter_configs(altered).values():
        await asyncio.to_thread(future.result, 30)

    async def warned() -> list[str]:
        described = await asyncio.to_thread(describe_topics, settings)
        return sorted({w.split(" ")[0] for w in described["warnings"] if " it holds " in w})

    await poll_until(warned, sorted([names.delay, names.state]), 30, "warnings")
    worker = Worker(settings, apps.SERVICES, worker_id=f"lossy-{settings.namespace}")
    with pytest.raises(WorkerError, match=r"(cleanup\.policy=delete|retention\.ms=604800000)"):
        await asyncio.wait_for(worker.run(), 60)
    # `kourier topics create` (and a worker's start, unless --no-create-topics) mends them.
    states = await asyncio.to_thread(create_topics, settings)
    assert sorted(s.spec.name for s in states if s.mended) == sorted([names.delay, names.state])
    await poll_until(warned, [], 30, "the warnings gone once mended")


async def said_it_waits(starting: asyncio.Task[None], caplog: pytest.LogCaptureFixture) -> None:
    """Until ``starting`` logs that its topics are not ready yet; its error if it ends first."""

    async def waiting() -> bool:
        if starting.done():
            starting.result()
            raise AssertionError("started without its topics")
        return any("are not ready yet" in r.getMessage() for r in caplog.records)

    await poll_until(waiting, True, 30, "a log line saying the topics are not ready yet")


async def test_a_client_started_before_its_topics_are_listed_waits_for_them(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """On a cluster, the broker a client asks may list a topic a moment after the
    controller created it; a client started in that moment waits (it raised MissingTopics)."""
    caplog.set_level(logging.INFO, logger="kourier.topics")
    client = Client(settings)
    starting = asyncio.create_task(client.start())
    try:
        await said_it_waits(starting, caplog)
        await asyncio.to_thread(create_topics, settings)
        await asyncio.wait([starting], timeout=60)  # the start gives up within 40 s
        assert starting.done(), "the client did not start within 60 s"
        starting.result()
        assert client.partitions == settings.partitions
    finally:
        await asyncio.wait([starting], timeout=60)  # not cancelled: its thread would go on
        if starting.done() and starting.exception() is None:
            await client.close()


async def test_a_worker_started_before_its_topics_are_listed_waits_for_them(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kourier.topics")
    worker = Worker(settings, apps.SERVICES, worker_id=f"early-{settings.namespace}")
    running = asyncio.create_task(worker.run())
    try:
        await said_it_waits(running, caplog)
        await asyncio.to_thread(create_topics, settings)
        async with Client(settings) as client:

            async def announced() -> bool:
                assert not running.done(), "the worker stopped"
                return set(client.services) >= {s.name for s in apps.SERVICES}

            await poll_until(announced, True, 60, "the worker's services announced")
    finally:
        worker.stop()
        await asyncio.wait_for(running, 60)


async def test_an_ingress_that_fails_to_start_closes_its_client(
    topics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the client started (here the admin index's) closes the client: no
    caller closes an ingress whose start failed, and its Kafka handles would live on."""
    ingress = Ingress(topics)

    def broken() -> None:
        raise RuntimeError("the index cannot start")

    monkeypatch.setattr(ingress.index, "start", broken)
    with pytest.raises(RuntimeError, match="the index cannot start"):
        await ingress.start()
    assert not ingress.client.running, "the client was left running"


def test_an_index_that_fails_to_start_closes_its_consumer(
    topics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the index made its consumer (here reading where the changelogs
    end) closes that consumer: only a started index's close would."""
    index = InvocationIndex(topics)

    def broken(*_: object) -> tuple[int, int]:
        raise RuntimeError("no ends")

    monkeypatch.setattr(index_module, "watermarks", broken)
    with pytest.raises(RuntimeError, match="no ends"):
        index.start()
    with pytest.raises(RuntimeError, match="closed"):
        index._consumer.assignment()


async def test_an_ingress_whose_start_is_cancelled_leaves_no_index_running(
    topics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel does not stop the thread that starts the admin index: it runs on after the
    ingress's start has given up. The index it starts must not be left following the
    changelogs with no one to close it."""
    ingress = Ingress(topics)
    entered, gate = threading.Event(), threading.Event()
    ends = index_module.watermarks

    def held(*args: Any) -> tuple[int, int]:
        entered.set()
        gate.wait(30)
        return ends(*args)

    monkeypatch.setattr(index_module, "watermarks", held)
    starting = asyncio.create_task(ingress.start())
    assert await asyncio.to_thread(entered.wait, 30), "the index never began to start"
    starting.cancel()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(starting, 30)
    follower = ingress.index._thread
    assert follower is None or not follower.is_alive(), "the admin index was left running"
    assert not ingress.client.running, "the client was left running"


def test_an_index_closed_while_it_starts_stops_at_its_next_step(
    topics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start reads where each changelog partition ends, one request each, which on a
    sick cluster can take a while. A close meanwhile (a cancelled ingress start) waits
    for the request under way, not for the whole start."""
    index = InvocationIndex(topics)
    entered, gate = threading.Event(), threading.Event()
    ends = index_module.watermarks
    asked: list[object] = []

    def held(*args: Any) -> tuple[int, int]:
        asked.append(args[1])
        entered.set()
        gate.wait(30)
        return ends(*args)

    monkeypatch.setattr(index_module, "watermarks", held)
    starting, start_errors = in_thread(index.start)
    assert entered.wait(30), "the index never began to read where its changelogs end"
    closing, close_errors = in_thread(index.close)
    deadline = time.monotonic() + 30
    while not index._closed:  # the close has begun
        assert time.monotonic() < deadline, "the close never began"
        time.sleep(0.001)
    # The close waits for the start; the start gives up once the request under way answers.
    gate.set()
    starting.join(30)
    closing.join(30)
    assert not starting.is_alive(), "the start goes on"
    assert not closing.is_alive(), "the close waits for good"
    assert start_errors == close_errors == []
    assert len(asked) == 1, f"the closed index went on reading ends: {len(asked)} requests"
    assert index._thread is None, "the closed index follows the changelogs"
