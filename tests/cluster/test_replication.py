"""Kourier on a 3-node cluster: replicated topics, and sends that wait while writes cannot
reach two in-sync replicas (broker loss under load: ``test_broker_loss.py``).

Every broker here is a genuine Apache Kafka node of one KRaft cluster on loopback.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable

import aiohttp
import pytest
from confluent_kafka.admin import AdminClient

from streams.client import Client
from streams.kafka import broker
from streams.kafka.admin import TopicError, TopicsDescription, create_topics, describe_topics
from streams.settings import Settings
from tests.integration.conftest import ROOT, WorkerProcesses, served_ingress
from tests.integration.helpers import poll_until

# Up to 10 minutes: the first test of a module may start the 3-broker cluster (fixture
# set-up counts against the limit), and one restarts brokers.
pytestmark = pytest.mark.timeout(600)

KEYS = [f"c{i}" for i in range(8)]


def kourier(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def once_every_topic_exists(describe: Callable[[], TopicsDescription]) -> TopicsDescription:
    """``describe()`` once it lists every topic of the namespace. A new topic reaches each
    broker's metadata when that broker replays the controller's record, so a client that
    asks another broker than the one that confirmed the creation may not see it yet."""
    deadline = time.monotonic() + 30
    while True:
        described = describe()
        if all(row["exists"] for row in described["topics"]):
            return described
        missing = [row["topic"] for row in described["topics"] if not row["exists"]]
        assert time.monotonic() < deadline, f"after 30 s the cluster still lacks {missing}"
        time.sleep(0.2)


def test_topics_have_three_replicas_and_two_in_sync(settings: Settings) -> None:
    states = create_topics(settings)
    assert {state.replication_factor for state in states} == {3}
    described = once_every_topic_exists(lambda: describe_topics(settings))
    assert described["brokers"] == 3
    assert described["warnings"] == []
    for row in described["topics"]:
        assert (row["replication_factor"], row["min.insync.replicas"]) == (3, 2), row
        assert row["min_isr"] == 3, row


def test_describe_warns_about_one_replica_on_a_cluster(settings: Settings) -> None:
    single = settings.model_copy(update={"replication_factor": 1})
    create_topics(single)
    runs: list[subprocess.CompletedProcess[str]] = []

    def describe() -> TopicsDescription:
        runs.append(kourier("topics", "describe", "--bootstrap-servers", settings.bootstrap_servers,
                            "--namespace", settings.namespace))  # fmt: skip
        assert runs[-1].returncode == 0, runs[-1].stderr
        described: TopicsDescription = json.loads(runs[-1].stdout)
        return described

    described = once_every_topic_exists(describe)
    assert {row["replication_factor"] for row in described["topics"]} == {1}
    assert "one replica on a 3-broker cluster" in runs[-1].stderr


def test_topics_are_not_made_with_fewer_replicas_while_a_broker_is_away(
    cluster: broker.Cluster, settings: Settings
) -> None:
    """The metadata lists the brokers that are up: topics made while one of three was away
    (a restart, pods starting together) got two replicas for good, and with
    ``min.insync.replicas`` 2 the next broker's loss stopped their writes. The cluster's
    ``default.replication.factor`` (3 here) says how many there are to be."""
    admin = AdminClient(settings.client_config())
    broker.kill(cluster.nodes[2].data_dir)
    try:
        deadline = time.monotonic() + 60
        while len(admin.list_topics(timeout=10).brokers) > 2:  # fenced once it misses 3 s
            assert time.monotonic() < deadline, "the cluster still lists a killed broker"
            time.sleep(0.2)
        with pytest.raises(TopicError, match=r"default\.replication\.factor is 3: start the"):
            create_topics(settings)
        assert not any(
            topic.startswith(f"{settings.namespace}.")
            for topic in admin.list_topics(timeout=10).topics
        ), "a topic was made with fewer replicas"
    finally:
        broker.start_cluster(cluster.data_dir, 3, 0)
    assert {state.replication_factor for state in create_topics(settings)} == {3}


async def test_sends_while_two_brokers_are_down_wait_for_their_outcome(
    cluster: broker.Cluster,
    topics: Settings,
    worker_processes: WorkerProcesses,
    client: Client,
) -> None:
    """With two of three brokers gone no write can reach its two in-sync replicas: a send
    must wait for its outcome (202 once written), not answer 503 while it may yet be."""
    worker_processes.spawn()
    await client.catalog()
    assert await asyncio.wait_for(client.object("Tally", "quorum", "add").request(0), 60) == 0
    async with served_ingress(topics) as (_, url), aiohttp.ClientSession() as http:
        down = cluster.nodes[1:]
        for node in down:
            broker.kill(node.data_dir)
        sends = [
            asyncio.create_task(http.post(f"{url}/Tally/quorum/add/send", json=1)) for _ in range(5)
        ]
        # Longer than any delivery timeout the client had: nothing may be answered 503.
        done, _ = await asyncio.wait(sends, timeout=20)
        early = [task.result().status for task in done]
        assert 503 not in early, f"answered {early} while the records may yet be written"
        await asyncio.to_thread(broker.start_cluster, cluster.data_dir, 3, 0)
        replies = await asyncio.wait_for(asyncio.gather(*sends), 120)
        assert [reply.status for reply in replies] == [202] * 5

    async def count() -> int:
        value: int = await asyncio.wait_for(client.object("Tally", "quorum", "count").request(), 60)
        return value

    # One-way sends are applied after their 202: the count gets there, and stays there.
    await poll_until(count, 5, 120, "every accepted send applied")
    assert await count() == 5, "and applied once"
