"""`kourier broker start|status|stop` on a broker of its own, and topic creation."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streams.kafka import broker
from streams.kafka.admin import TopicError, create_topics, describe_topics
from streams.settings import Settings
from streams.wire.partitioning import partition_for
from tests.kafka_helpers import drain


def kourier(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env=env,
    )


def jvm_arguments(data: Path) -> list[bytes]:
    pid = (data / "broker.pid").read_text().strip()
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def test_broker_start_status_stop_and_restart_keeps_data(tmp_path: Path) -> None:
    data = tmp_path / "broker"
    try:
        plain = {k: v for k, v in os.environ.items() if k != "KAFKA_JVM_PERFORMANCE_OPTS"}
        started = kourier("broker", "start", "--port", "0", "--data", str(data), env=plain)
        assert started.returncode == 0, started.stderr
        bootstrap = started.stdout.strip()
        assert bootstrap.startswith("127.0.0.1:")
        arguments = jvm_arguments(data)
        assert all(o.encode() in arguments for o in broker.JVM_PERFORMANCE_OPTS)

        status = kourier("broker", "status", "--data", str(data))
        assert status.returncode == 0
        assert json.loads(status.stdout)["bootstrap"] == bootstrap

        settings = Settings(bootstrap_servers=bootstrap, namespace="restart", partitions=2)
        create_topics(settings)
        producer = Producer(settings.client_config())
        producer.produce("restart.ingress", value=b"kept", partition=0)
        assert producer.flush(10) == 0

        stopped = kourier("broker", "stop", "--data", str(data))
        assert stopped.returncode == 0, stopped.stderr
        assert kourier("broker", "status", "--data", str(data)).returncode == 1

        custom = "-XX:+UseSerialGC -XX:TieredStopAtLevel=1"
        env = {**os.environ, "KAFKA_JVM_PERFORMANCE_OPTS": custom}
        again = kourier("broker", "start", "--data", str(data), env=env)  # no --port: its own
        assert again.returncode == 0, again.stderr
        arguments = jvm_arguments(data)
        assert b"-XX:+UseSerialGC" in arguments
        assert b"-XX:TieredStopAtLevel=1" in arguments
        assert b"-XX:+UseG1GC" not in arguments, "KAFKA_JVM_PERFORMANCE_OPTS replaces the defaults"
        assert again.stdout.strip() == bootstrap, "a data dir keeps its port"
        kept = drain(settings, "restart.ingress", expect=1)
        assert [m.value() for m in kept] == [b"kept"]
    finally:
        broker.stop(data)
    assert broker.status(data) is None


def test_topics_create_is_idempotent_and_compacts_changelogs(settings: Settings) -> None:
    first = create_topics(settings)
    assert all(state.created for state in first)
    second = create_topics(settings)
    assert not any(state.created for state in second)
    described = {row["topic"]: row for row in describe_topics(settings)["topics"]}
    ns = settings.namespace
    assert described[f"{ns}.ingress"]["partitions"] == 4
    assert described[f"{ns}.state"]["cleanup.policy"] == "compact"
    assert described[f"{ns}.dedup"]["cleanup.policy"] == "compact"
    assert described[f"{ns}.ingress"]["cleanup.policy"] == "delete"


def test_topics_create_refuses_a_different_partition_count(settings: Settings) -> None:
    create_topics(settings)
    with pytest.raises(TopicError, match="partitions"):
        create_topics(settings.model_copy(update={"partitions": 6}))


def test_describe_warns_of_a_co_partitioned_topic_with_another_count(
    settings: Settings,
) -> None:
    """A delay topic made apart with another partition count: workers refuse to start, and
    ``describe``, which showed the counts, did not say so."""
    admin = AdminClient(settings.client_config({}))
    delay = f"{settings.namespace}.delay"
    admin.create_topics([NewTopic(delay, 6, 1)])[delay].result(30)
    with pytest.raises(TopicError, match="partitions"):
        create_topics(settings)  # the others are made, with the setting's 4
    warnings = describe_topics(settings)["warnings"]
    assert [w for w in warnings if " partitions " in w] == [
        f"{delay} has 6 partitions and {settings.namespace}.ingress 4: co-partitioned "
        "topics must share one partition count; workers refuse to start"
    ]


def test_kourier_partitioning_matches_the_kafka_client(settings: Settings) -> None:
    """librdkafka's murmur2 partitioner (the Java client's) agrees with partition_for."""
    create_topics(settings)
    topic = f"{settings.namespace}.ingress"
    producer = Producer(settings.client_config(partitioner="murmur2_random"))
    keys = [f"user-{i}" for i in range(64)]
    for key in keys:
        producer.produce(topic, key=key.encode(), value=b"x")
    assert producer.flush(10) == 0
    landed = {m.key(): m.partition() for m in drain(settings, topic, expect=len(keys))}
    assert landed == {key.encode(): partition_for(key, 4) for key in keys}


def test_a_cluster_id_that_starts_with_a_dash_formats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KRaft cluster ids are random base64; one in 64 starts with "-"."""

    class DashFirst:
        bytes = base64.urlsafe_b64decode("-" + "A" * 21 + "==")

    monkeypatch.setattr(broker.uuid, "uuid4", DashFirst)
    running = broker.start(tmp_path / "kafka", port=0)
    try:
        meta = (tmp_path / "kafka" / "kafka-logs" / "meta.properties").read_text()
        assert "cluster.id=-AAA" in meta
    finally:
        broker.stop(tmp_path / "kafka")
    assert running.pid > 0


def test_a_cluster_whose_later_node_port_is_taken_starts_no_node(tmp_path: Path) -> None:
    """Every node's port is looked at before any node starts: the first was formatted and
    launched, then stopped alone, with no quorum to leave (30 s, then SIGKILL)."""
    for _ in range(50):  # a free port whose next one can be held
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first >= 65535:
            continue
        held = socket.socket()
        try:
            held.bind(("127.0.0.1", first + 1))
        except OSError:
            held.close()
            continue
        break
    else:
        pytest.fail("no free port with a free port after it in 50 tries")
    try:
        with held:
            held.listen()
            with pytest.raises(broker.BrokerError, match=f"127.0.0.1:{first + 1} is already in"):
                broker.start_cluster(tmp_path / "cluster", 3, port=first)
        for node in ("node-1", "node-2", "node-3"):
            assert not (tmp_path / "cluster" / node / "kafka-logs" / "meta.properties").exists()
            assert broker.status(tmp_path / "cluster" / node) is None
    finally:  # a node the bug would have started does not outlive the test
        broker.stop(tmp_path / "cluster")
