"""Small helpers for tests that talk to the real broker."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Message
from confluent_kafka.cimpl import NewTopic

from streams.kafka.admin import admin_client
from streams.settings import Settings


def create_topic(settings: Settings, suffix: str, partitions: int = 1) -> str:
    """Create ``<namespace>.<suffix>`` and wait until every partition has a leader."""
    name = f"{settings.namespace}.{suffix}"
    admin = admin_client(settings)  # must outlive the future
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)
    deadline = time.monotonic() + 30
    while True:
        found = admin.list_topics(name, timeout=10).topics[name].partitions
        if len(found) == partitions and all(p.leader >= 0 for p in found.values()):
            return name
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: partitions without a leader after 30s: {found}")
        time.sleep(0.05)


def drain(
    settings: Settings,
    topic: str,
    *,
    expect: int,
    isolation: str = "read_committed",
    timeout: float = 20.0,
    settle: float = 0.5,
    count: Callable[[list[Message]], int] = len,
) -> list[Message]:
    """Read ``topic`` from the start until ``expect`` records arrived (as ``count`` counts
    them: by default every record), then ``settle`` seconds more to catch any extra record;
    fail with a clear message if fewer arrive in ``timeout``."""
    consumer = Consumer(
        settings.client_config(
            {
                "group.id": f"drain-{uuid.uuid4()}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": isolation,
            }
        )
    )
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and count(messages) < expect:
            for message in consumer.consume(num_messages=500, timeout=0.5):
                if message.error() is None:
                    messages.append(message)
        if count(messages) < expect:
            raise AssertionError(
                f"{topic}: {count(messages)} of {expect} records within {timeout:.0f}s "
                f"({isolation}; {len(messages)} read)"
            )
        extra_until = time.monotonic() + settle
        while time.monotonic() < extra_until:
            messages.extend(
                m for m in consumer.consume(num_messages=500, timeout=0.1) if m.error() is None
            )
    finally:
        consumer.close()
    return messages


def values(messages: list[Message]) -> list[dict[str, Any]]:
    """The JSON objects that ``messages`` hold."""
    return [json.loads(m.value() or b"") for m in messages]
