"""The chaos tier reuses the integration fixtures (broker, topics, worker processes)."""

from tests.integration.conftest import (  # noqa: F401
    client,
    topics,
    worker_processes,
)
