"""A worker's take-over of an assignment (``Worker._assign``): its ingress partitions are
restored in one go, the stall watch looks at their changelogs meanwhile, and none of them
runs before all are restored (the restore is a
stand-in; reading changelogs from Kafka is in tests/integration/test_restore.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from streams.kafka import worker as worker_module
from streams.kafka.restore import Changelogs, RestoreError
from streams.kafka.worker import Worker
from streams.settings import Settings
from tests.unit.harness import TOPICS

ASSIGNED = [TopicPartition(TOPICS.ingress, 0, 12), TopicPartition(TOPICS.ingress, 1, -1001)]


def a_worker() -> Worker:
    worker = Worker(Settings(namespace=TOPICS.namespace), [])
    worker._restorer = worker._admin = worker._run_pool = None  # type: ignore[assignment]
    return worker


async def test_an_assignment_is_restored_in_one_go_then_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    restores: list[list[int]] = []
    worker = a_worker()

    def restore(
        restorer: Any, admin: Any, topics: Any, processors: Sequence[Changelogs], stopping: Any
    ) -> None:
        assert worker.processors == {}, "a partition runs before the assignment is restored"
        assert sorted(worker._owned()) == sorted(
            (topic, p) for topic in (TOPICS.state, TOPICS.invocations, TOPICS.dedup) for p in (0, 1)
        ), "the stall watch does not see the changelogs being restored"
        restores.append([processor.partition for processor in processors])

    monkeypatch.setattr(worker_module, "restore_partitions", restore)
    await worker._assign(ASSIGNED, {})
    try:
        assert restores == [[0, 1]], "not restored together"
        assert sorted(worker.processors) == [0, 1]
        assert worker._offsets == {0: 12}, "a partition with no committed offset has none"
    finally:
        worker._close_all()


async def test_a_failed_restore_leaves_nothing_of_the_assignment_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def restore(*args: Any) -> None:
        raise RestoreError("restoring partitions 0, 1: nothing read for 150s")

    monkeypatch.setattr(worker_module, "restore_partitions", restore)
    worker = a_worker()
    with pytest.raises(RestoreError):
        await worker._assign(ASSIGNED, {})
    assert worker.processors == {}, "a partition runs that was not restored"
    assert worker._owned() == [], "the stall watch still looks at what was given up"
