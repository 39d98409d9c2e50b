"""A transaction stuck inside librdkafka while the worker stops: the worker still stops.

(The stuck call is a stand-in that blocks; Kafka is not needed to see what the worker's
threads wait for.)
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streams.engine.outbox import Out
from streams.engine.spill import SpillFailed
from streams.kafka import committer as committer_module
from streams.kafka import worker as worker_module
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
    closed = released = False

    def close(self) -> None:
        self.closed = True

    def release(self) -> None:
        self.released = True


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
        assert processor.released, "owned partitions closed but their cold invocations kept"
        assert not worker.processors, "owned partitions not dropped"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        running.join(10)
        loop.close()


def filled(committer: Committer) -> None:
    """Queue more than :attr:`Committer.MAX_PENDING` records behind the transaction in
    flight, so that the next submit waits for room."""
    many = [SNAPSHOT.out[0]] * (Committer.MAX_PENDING + 1)
    committer.submit(Snapshot(out=many, offsets=[]))


def test_a_full_queue_behind_a_stuck_transaction_lets_the_submitter_go(
    stuck: threading.Event,
) -> None:
    """The Kafka thread that submits waits for room behind the transaction in flight; once
    that transaction has run past ``stuck_after`` it is told so (False, nothing queued),
    instead of waiting for it for good, where no one would ever fence it."""
    committer = committer_stuck_in(stuck)
    filled(committer)
    answers: list[bool] = []
    one = Snapshot(out=list(SNAPSHOT.out), offsets=[])
    thread, errors = in_thread(lambda: answers.append(committer.submit(one, stuck_after=0.5)))
    thread.join(10)
    assert not thread.is_alive(), "submit waits for a stuck transaction for good"
    assert errors == []
    assert answers == [False], "a submit behind a stuck transaction says it was not taken"


def test_large_records_waiting_make_a_submit_wait_too(stuck: threading.Event) -> None:
    """Records are counted, and so are their bytes: a few thousand records near a megabyte
    each, merged into one transaction, took longer to write than the transaction timeout,
    which aborted it, and the restore that followed merged them again."""
    committer = committer_stuck_in(stuck)
    large = Out(TOPICS.state, 0, b"k", b"v" * (16 << 20))  # one object, five times
    committer.submit(Snapshot(out=[large] * 5, offsets=[]))  # 80 MiB in 5 records
    answers: list[bool] = []
    one = Snapshot(out=list(SNAPSHOT.out), offsets=[])
    thread, errors = in_thread(lambda: answers.append(committer.submit(one, stuck_after=0.5)))
    thread.join(10)
    assert errors == []
    assert answers == [False], "a submit behind many bytes did not wait for room"


def test_a_submit_with_no_stuck_limit_waits_for_room(stuck: threading.Event) -> None:
    """Without ``stuck_after`` a full queue is waited out, however long the transaction
    in flight takes."""
    committer = committer_stuck_in(stuck)
    filled(committer)
    answers: list[bool] = []
    one = Snapshot(out=list(SNAPSHOT.out), offsets=[])
    thread, errors = in_thread(lambda: answers.append(committer.submit(one)))
    thread.join(0.5)  # bounded: a submit that does not wait returns at once
    assert errors == []
    assert thread.is_alive(), "submit did not wait for room"
    stuck.set()
    thread.join(10)
    assert not thread.is_alive(), "submit still waits once the transaction is done"
    assert answers == [True]


def test_a_worker_whose_queue_is_full_behind_a_stuck_transaction_fences_it(
    stuck: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last commit (here on the way out, with Kafka away) meets a full queue behind a
    stuck transaction: the worker fences it after the stuck limit, as it does a stuck
    transaction with room to spare, and returns."""
    monkeypatch.setattr(worker_module, "_STUCK", 0.5)
    worker = Worker(Settings(namespace=TOPICS.namespace), [])
    worker._transactions = Unreachable()  # type: ignore[assignment]
    worker._committer = committer = committer_stuck_in(stuck)
    filled(committer)
    worker._stopping = True
    one = Snapshot(out=list(SNAPSHOT.out), offsets=[])
    worker._group_metadata = object()  # read once per generation; no consumer here
    thread, errors = in_thread(lambda: worker._commit(one))
    thread.join(10)
    assert not thread.is_alive(), "the commit waits for room behind a stuck transaction"
    assert errors == []
    assert committer.abandoned, "the stuck transaction was not fenced"


def test_how_long_a_transaction_ran_never_pairs_it_with_the_one_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``busy_for()`` is read on the Kafka thread while the committer starts a transaction.
    Read between the committer's two stores (busy, then when it began), it must not give
    the new transaction the start of the last one: after an idle spell that reads as a
    transaction stuck for minutes, and a healthy one is fenced."""
    inside, go = threading.Event(), threading.Event()
    real = time.monotonic
    held: list[threading.Thread] = []  # this committer's thread, not another test's

    def monotonic() -> float:  # holds the committer while it starts its transaction
        if threading.current_thread() in held and not go.is_set():
            inside.set()
            go.wait(10)
        return real()

    monkeypatch.setattr(committer_module.time, "monotonic", monotonic)
    committer = Committer(lambda snapshot: None)
    held.append(committer._thread)
    try:
        committer.submit(Snapshot(out=list(SNAPSHOT.out), offsets=[]))
        assert inside.wait(10), "the committer did not start the transaction"
        seen: list[float] = []
        thread, errors = in_thread(lambda: seen.append(committer.busy_for()))
        # Bounded: a reader that does not wait for the committer answers at once.
        thread.join(1)
        go.set()
        thread.join(10)
        assert errors == []
        assert len(seen) == 1, "busy_for() did not answer"
        assert seen[0] < 5, f"busy_for() read {seen[0]:.0f}s for a new transaction"
    finally:
        go.set()
        committer.close()


def test_a_dump_shows_the_transaction_in_flight_and_what_waits_behind_it(
    stuck: threading.Event,
) -> None:
    """``Committer.status``, part of a worker's ``kill -USR1`` dump."""
    committer = committer_stuck_in(stuck)
    committer.submit(Snapshot(out=list(SNAPSHOT.out) * 3, offsets=[]))
    status = committer.status()
    assert status["in_flight_records"] == 1
    assert status["queued_records"] == 3
    assert status["busy_for_s"] >= 0
    assert status["failure"] is None
    stuck.set()
    assert committer.flush(60) is None
    assert committer.status()["in_flight_records"] is None
    committer.close()


def test_commits_that_keep_failing_are_restored_after_a_growing_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A record Kafka always refuses (an ACL missing on one topic, a topic's lowered
    max.message.bytes) fails the commit of every replay of it: the worker restored every
    partition again at once, for good. A failure after a commit that succeeded restores at
    once, as before."""
    worker = Worker(Settings(namespace=TOPICS.namespace), [])
    worker._committer = Committer(lambda snapshot: None)
    pauses: list[float] = []
    steps: list[str] = []
    monkeypatch.setattr(
        worker_module,
        "pause_unless",
        lambda stopped, seconds: (pauses.append(seconds), steps.append("pause")),
    )

    def on_loop(dropping: Any) -> list[TopicPartition]:
        dropping.close()
        steps.append("drop")
        return []

    monkeypatch.setattr(worker, "_on_loop", on_loop)
    monkeypatch.setattr(worker, "_recover", lambda settled=False, owned=None: None)
    refused = KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
    try:
        for _ in range(8):
            worker._recover_from(refused, may_pause=True)
        assert pauses == [0, 1, 2, 4, 8, 16, 30, 30]
        # Dropped first: their handlers ran on through the pause, and their effects again
        # after the restore.
        assert steps[:2] == ["drop", "pause"]
        worker._recover_from(refused)  # in a rebalance callback: the group waits for it
        assert pauses[-1] == 0
        worker.stats.commits += 1  # one committed since
        worker._recover_from(refused, may_pause=True)
        assert pauses[-1] == 0
    finally:
        worker._committer.close()


@pytest.mark.parametrize("recovery", ["spill", "lost"])
def test_a_failed_commit_found_by_another_recovery_is_counted(
    monkeypatch: pytest.MonkeyPatch, recovery: str
) -> None:
    """A commit's failure met first by the recovery from a failed spill, or from partitions
    lost, was cleared without being counted: the invocations whose records Kafka refused
    were not held (they failed the replay's commit again), and the pause that commits
    failing again and again call for started over."""
    worker = Worker(Settings(namespace=TOPICS.namespace), [])
    refused = KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))

    def transact(snapshot: Snapshot) -> None:
        raise refused

    worker._committer = Committer(transact)
    monkeypatch.setattr(worker, "_on_loop", lambda work: (work.close(), [])[1])
    monkeypatch.setattr(worker, "_recover", lambda settled=False, owned=None: None)
    try:
        for failed in (1, 2):
            worker._committer.submit(SNAPSHOT)
            if recovery == "spill":
                worker._recover_from_step(SpillFailed("disk full"))
            else:
                worker._on_lost(None, [])  # type: ignore[arg-type]
            assert worker._setbacks.failed_in_a_row == failed
    finally:
        worker._committer.close()


@pytest.mark.parametrize("recovery", ["lost", "spill", "stuck"])
def test_handlers_of_partitions_to_restore_stop_before_the_worker_waits_on_kafka(
    monkeypatch: pytest.MonkeyPatch, recovery: str
) -> None:
    """Partitions lost, a spill failed, or a transaction stuck: the worker waited for what
    it had submitted (up to 20 s), or for new producers to fence the stuck one (as long as
    Kafka took), before it closed the partitions, and their handlers ran on meanwhile, while
    a lost partition's next owner could run the same invocations."""
    worker = Worker(Settings(namespace=TOPICS.namespace), [])
    steps: list[str] = []

    def on_loop(work: Any) -> list[TopicPartition]:
        steps.append(work.__qualname__.rsplit(".", 1)[-1])  # forget, or _drop_all
        work.close()
        return []

    class Settling:
        def settle(self, stopping: Any) -> None:
            steps.append("settle")

    monkeypatch.setattr(worker, "_on_loop", on_loop)
    monkeypatch.setattr(worker, "_finish_commits", lambda: steps.append("flush"))
    worker._transactions = Settling()  # type: ignore[assignment]
    worker._committer = Committer(lambda snapshot: None)
    try:
        if recovery == "lost":
            worker._on_lost(None, [])  # type: ignore[arg-type]
        elif recovery == "spill":
            worker._recover_from_step(SpillFailed("disk full"))
        else:
            worker._replace_stuck_producer()
    finally:
        worker._committer.close()
    waited = "settle" if recovery == "stuck" else "flush"
    assert "_drop_all" in steps, steps  # a lost partition's kept neighbours too
    stopped = [i for i, step in enumerate(steps) if step in ("forget", "_drop_all")]
    assert max(stopped) < steps.index(waited), f"waited on Kafka with handlers running: {steps}"
