"""The cluster tier: a local 3-node Apache Kafka cluster (KRaft, ``kourier broker start
--nodes 3``) for the tests of this folder, stopped by PID when they end, pass or fail."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streams.kafka import broker
from tests.integration.conftest import (  # noqa: F401 - the integration fixtures, on the cluster
    client,
    topics,
    worker_processes,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/cluster" in str(item.path):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[broker.Cluster]:
    """Three KRaft nodes on free loopback ports, for one test module."""
    data_dir = tmp_path_factory.mktemp("cluster")
    running = broker.start_cluster(data_dir, nodes=3, port=0)
    try:
        yield running
    finally:
        broker.stop(data_dir, timeout=20)


@pytest.fixture
def kafka_bootstrap(cluster: broker.Cluster) -> str:
    """Every broker of the cluster: the ``settings`` fixture (and all built on it) use it."""
    return cluster.bootstrap
