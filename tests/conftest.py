"""Shared fixtures: one real Apache Kafka broker per test session, a fresh namespace per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.kafka import broker
from streams.settings import Settings


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a genuine Kafka broker.

    Uses ``KOURIER_BOOTSTRAP_SERVERS`` when set; otherwise starts a broker from
    ``deploy/kafka`` on a free loopback port and stops it by PID when the
    session ends, whether tests passed or not.
    """
    external = os.environ.get("KOURIER_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    data_dir: Path = tmp_path_factory.mktemp("kafka")
    running = broker.start(data_dir, port=0)
    try:
        yield running.bootstrap
    finally:
        broker.stop(data_dir)


@pytest.fixture
def namespace() -> str:
    """A topic prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(kafka_bootstrap: str, namespace: str) -> Settings:
    return Settings(bootstrap_servers=kafka_bootstrap, namespace=namespace, partitions=4)
