"""Topic administration: create Kourier's topics idempotently and describe them."""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._metadata import TopicMetadata
from confluent_kafka.cimpl import NewTopic

from streams.settings import Settings
from streams.topics import Topics, TopicSpec


class TopicError(RuntimeError):
    """A topic exists with a shape Kourier cannot use, or could not be created."""

    retriable = False


@dataclass(frozen=True)
class TopicState:
    spec: TopicSpec
    created: bool
    partitions: int


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(settings.client_config(log_level=4))


def create_topics(settings: Settings, timeout: float = 30.0) -> list[TopicState]:
    """Create every topic of the namespace that does not exist yet.

    Existing topics are left alone, but one whose partition count differs from
    the co-partitioned layout is an error: keys would land on other partitions.
    """
    admin = admin_client(settings)
    specs = Topics(settings.namespace).specs(settings.partitions)
    existing = admin.list_topics(timeout=timeout).topics
    missing = [spec for spec in specs if spec.name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, s.partitions, 1, config=s.config) for s in missing],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise TopicError(f"could not create {name}: {exc.args[0].str()}") from None
    metadata = _wait_for_metadata(admin, specs, timeout)
    states = []
    for spec in specs:
        have = len(metadata[spec.name].partitions) if spec.name in metadata else 0
        if have != spec.partitions:
            raise TopicError(
                f"topic {spec.name} has {have} partitions, Kourier expects {spec.partitions}: "
                "co-partitioned topics must share one partition count (set --partitions)"
            )
        states.append(TopicState(spec=spec, created=spec in missing, partitions=have))
    return states


def _wait_for_metadata(
    admin: AdminClient, specs: list[TopicSpec], timeout: float
) -> dict[str, TopicMetadata]:
    """Topic metadata once every partition of every spec has a leader (new topics take a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        metadata = admin.list_topics(timeout=timeout).topics
        ready = all(
            spec.name in metadata
            and len(metadata[spec.name].partitions) > 0
            and all(p.leader >= 0 for p in metadata[spec.name].partitions.values())
            for spec in specs
        )
        if ready or time.monotonic() > deadline:
            return metadata
        time.sleep(0.1)


def describe_topics(settings: Settings, timeout: float = 30.0) -> list[dict[str, object]]:
    """Each topic of the namespace: whether it exists, partitions, cleanup policy."""
    admin = admin_client(settings)
    specs = Topics(settings.namespace).specs(settings.partitions)
    metadata = admin.list_topics(timeout=timeout).topics
    present = [s.name for s in specs if s.name in metadata]
    policies: dict[str, str] = {}
    if present:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in present]
        for resource, future in admin.describe_configs(resources).items():
            entry = future.result().get("cleanup.policy")
            policies[resource.name] = entry.value if entry is not None else "?"
    return [
        {
            "topic": spec.name,
            "exists": spec.name in metadata,
            "partitions": len(metadata[spec.name].partitions) if spec.name in metadata else 0,
            "cleanup.policy": policies.get(spec.name),
            "purpose": spec.purpose,
        }
        for spec in specs
    ]
