"""A transaction stuck inside librdkafka while the worker stops: the worker still stops.

(The stuck call is a stand-in that blocks; Kafka is not needed to see what the worker's
threads wait for.)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.engine.outbox import Out
from streams.kafka.committer import Committer, Snapshot
from streams.kafka.worker import Worker
from streams.settings import Settings
from tests.threads import in_thread
from tests.unit.harness import TOPICS

SNAPSHOT = Snapshot(out=[Out(TOPICS.ingress, 0, b"k", b"v")], offsets=[])


@pytest.fixture
def stuck() -> Iterator[threading.Event]:
    """Set to let the stuck transaction return (at the end of the test)."""
    released = threading.Event()
    yield released
    released.set()


def committer_stuck_in(released: threading.Event) -> Committer:
    """A committer whose transaction in flight does not return until ``released``."""
    entered = threading.Event()

    def transact(snapshot: Snapshot) -> None:
        entered.set()
        released.wait(60)

    committer = Committer(transact)
    committer.submit(Snapshot(out=list(SNAPSHOT.out), offsets=[]))
    assert entered.wait(10), "the committer did not take the snapshot"
    return committer


def test_an_abandoned_committer_closes_without_waiting_for_its_thread(
    stuck: threading.Event,
) -> None:
    committer = committer_stuck_in(stuck)
    committer.abandon()
    committer.submit(Snapshot(out=list(SNAPSHOT.out), offsets=[]))
    assert committer.flush(60) is not None, "a stuck, abandoned transaction is not done"
    thread, errors = in_thread(committer.close)
    thread.join(10)
    assert not thread.is_alive(), "close() waits for a thread stuck in librdkafka"
    assert errors == []


class Unreachable:
    """The worker's transactions while Kafka does not answer."""

    def settle(self, stopping: Any) -> None:
        assert stopping(), "settling is tried again while the worker runs"
        raise KafkaException(KafkaError(KafkaError._TRANSPORT))


def test_a_worker_stopping_with_a_stuck_transaction_commits_nothing_and_returns(
    stuck: threading.Event,
) -> None:
    """The last commit on the way out (and the hand-over's) finds the committer stuck; the
    fence cannot reach Kafka. The worker gives up on what was left instead of waiting for
    the stuck call or raising."""
    worker = Worker(Settings(namespace=TOPICS.namespace), [])
    worker._transactions = Unreachable()  # type: ignore[assignment]
    worker._committer = committer = committer_stuck_in(stuck)
    worker._stopping = True
    worker._replace_stuck_producer()
    assert committer.abandoned
    thread, errors = in_thread(lambda: worker._commit(Snapshot([], [])))
    thread.join(10)
    assert not thread.is_alive(), "the last commit waits for the stuck transaction"
    assert errors == []
    thread, errors = in_thread(worker._committer.close)
    thread.join(10)
    assert not thread.is_alive(), "closing waits for the stuck transaction"


class GoneWhileSettling:
    """Kafka stops answering while the worker waits for its producers to settle, and the
    worker is told to stop meanwhile."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def settle(self, stopping: Any) -> None:
        self.worker._stopping = True
        assert stopping()
        raise KafkaException(KafkaError(KafkaError._TRANSPORT))


class Closable:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_a_stop_while_a_failed_commit_waits_to_settle_ends_the_recovery() -> None:
    """A commit failed and the worker recovers: it waits for its producers' last
    transactions to settle before it restores. The worker stops meanwhile, with Kafka
    away: the recovery ends without restoring and without raising."""
    worker = Worker(Settings(namespace=TOPICS.namespace), [])
    worker._transactions = GoneWhileSettling(worker)  # type: ignore[assignment]
    processor = Closable()
    worker.processors[0] = processor  # type: ignore[assignment]
    loop = asyncio.new_event_loop()
    running = threading.Thread(target=loop.run_forever, daemon=True)
    running.start()
    worker._loop = loop
    try:
        thread, errors = in_thread(worker._recover)
        thread.join(10)
        assert not thread.is_alive(), "the recovery goes on after the worker stopped"
        assert errors == []
        assert processor.closed, "owned partitions not closed"
        assert not worker.processors, "owned partitions not dropped"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        running.join(10)
        loop.close()
