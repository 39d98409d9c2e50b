"""Fixtures of the unit tests (no broker)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from streams.kafka.worker import Worker
from streams.settings import Settings
from tests.unit.harness import TOPICS


@pytest.fixture
def worker() -> Iterator[Worker]:
    """A worker that owns nothing, with an event loop on a thread of its own."""
    running = Worker(Settings(namespace=TOPICS.namespace), [])
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    running._loop = loop
    try:
        yield running
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
