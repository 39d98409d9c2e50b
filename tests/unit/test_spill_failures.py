"""What a worker does when a partition's spill fails (streams/engine/spill.py): an
assignment whose start fails leaves nothing owned, and spill failures that keep coming end
the worker instead of being recovered from again and again. The recovery itself, against
Kafka, is in tests/integration/test_idempotency.py."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from confluent_kafka import TopicPartition

from streams.engine.partition import PartitionProcessor
from streams.engine.spill import SpillFailed
from streams.kafka import worker as worker_module
from streams.kafka.worker import Worker, WorkerError
from streams.settings import Settings
from tests.unit.harness import TOPICS
from tests.unit.test_take_over import ownership


async def test_an_assignment_whose_start_fails_leaves_nothing_owned_or_running() -> None:
    given: list[PartitionProcessor] = []

    def restore(processors: list[PartitionProcessor]) -> None:
        given.extend(processors)

        def fails() -> None:
            raise SpillFailed("partition spill: OperationalError: disk I/O error")

        processors[1].start = fails  # type: ignore[method-assign]

    owner = ownership()
    assigned = [TopicPartition(TOPICS.ingress, 0, 0), TopicPartition(TOPICS.ingress, 1, 0)]
    with pytest.raises(SpillFailed):
        await owner.assign(assigned, {}, restore)
    assert owner.processors == {}, "a partition is owned whose assignment failed"
    assert [p.closed for p in given] == [True, True], "a started partition still runs"
    assert [p.spill.db for p in given] == [None, None], "what was read back stays on disk"


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


def test_the_third_spill_failure_in_five_minutes_ends_the_worker(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(worker_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    failure = SpillFailed("partition spill: OperationalError: database or disk is full")
    worker._count_spill_failure(failure)
    now[0] += worker_module._SPILL_WINDOW + 1  # the first is forgotten by then
    worker._count_spill_failure(failure)
    now[0] += 10
    worker._count_spill_failure(failure)
    now[0] += 10
    with pytest.raises(WorkerError, match=r"database or disk is full \(3 spill failures"):
        worker._count_spill_failure(failure)
