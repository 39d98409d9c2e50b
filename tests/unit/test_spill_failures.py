"""What a worker does when a partition's spill fails (streams/engine/spill.py): an
assignment whose start fails leaves nothing owned, no step taken after a failure is
committed, a failure during a hand-over ends the worker (and still closes its committer,
readers and producers), and spill failures that keep coming end it instead of being
recovered from again and again. The recovery itself, against Kafka, is in
tests/integration/test_idempotency.py."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from streams.engine.delay_records import LogRewound
from streams.engine.outbox import Out
from streams.engine.partition import PartitionProcessor
from streams.engine.spill import SpillFailed
from streams.kafka import setbacks
from streams.kafka import worker as worker_module
from streams.kafka.committer import Committer, Snapshot
from streams.kafka.offsets import read_on_from
from streams.kafka.startup import WorkerError
from streams.kafka.worker import Worker
from tests.unit.harness import TOPICS
from tests.unit.test_take_over import ownership, take_over


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
        await take_over(owner, assigned, {}, restore)
    assert owner.processors == {}, "a partition is owned whose assignment failed"
    assert [p.closed for p in given] == [True, True], "a started partition still runs"
    assert [p.spill.db for p in given] == [None, None], "what was read back stays on disk"


def test_the_third_spill_failure_in_five_minutes_ends_the_worker(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(setbacks, "time", SimpleNamespace(monotonic=lambda: now[0]))
    failure = SpillFailed("partition spill: OperationalError: database or disk is full")
    worker._count_spill_failure(failure)
    now[0] += setbacks.SPILL_WINDOW + 1  # the first is forgotten by then
    worker._count_spill_failure(failure)
    now[0] += 10
    worker._count_spill_failure(failure)
    now[0] += 10
    with pytest.raises(WorkerError, match=r"database or disk is full \(3 spill failures"):
        worker._count_spill_failure(failure)


class Owned:
    """An owned partition as the worker sees it: its spill, failed or not."""

    def __init__(self, failed: SpillFailed | None = None) -> None:
        self.spill = SimpleNamespace(failed=failed)


def test_a_step_after_a_spill_failed_between_steps_is_not_committed(worker: Worker) -> None:
    """A failure the loop swallowed (the sweep's, a handler task's) is found by its flag."""
    taken = Snapshot([Out("t", 0, b"k", b"v")], [])
    worker._stepped = lambda *args, **kwargs: taken  # type: ignore[method-assign]
    recovered: list[SpillFailed] = []
    worker._recover_from_step = recovered.append  # type: ignore[method-assign]
    worker.processors[0] = Owned()  # type: ignore[assignment]
    assert worker._trusted_step([], {}) is taken
    failure = SpillFailed("partition spill: OperationalError: disk I/O error")
    worker.processors[1] = Owned(failure)  # type: ignore[assignment]
    assert worker._trusted_step([], {}) is None, "a step taken after the failure goes on"
    assert recovered == [failure]


def test_a_spill_failure_while_partitions_are_handed_over_ends_the_worker(worker: Worker) -> None:
    failure = SpillFailed("partition spill: OperationalError: database or disk is full")

    class Steps:
        dropped = False

        async def close(self, partitions: list[TopicPartition]) -> Snapshot:
            raise failure

        def drop(self) -> None:
            self.dropped = True

    steps = Steps()
    worker._steps = steps  # type: ignore[assignment]
    committed: list[Snapshot] = []
    worker._commit = committed.append  # type: ignore[method-assign]
    worker._committer = Committer(committed.append)  # idle: nothing submitted
    with pytest.raises(WorkerError) as raised:
        worker._on_revoke(None, [TopicPartition(TOPICS.ingress, 0)])  # type: ignore[arg-type]
    worker._committer.close()
    assert raised.value.__cause__ is failure
    assert committed == [], "the hand-over committed what followed the failure"
    assert steps.dropped, "what was emitted is kept"


def test_a_hand_over_that_fails_while_a_commit_is_stuck_gives_it_up(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit in flight that Kafka never answers (brokers away) when a hand-over fails:
    the worker ended with it still running, and closing its committer waited for it for
    good (SIGTERM did nothing)."""
    monkeypatch.setattr(worker_module, "_STUCK", 0.2)
    answered = threading.Event()

    def transact(snapshot: Snapshot) -> None:
        answered.wait(30)

    worker._committer = Committer(transact)
    worker._committer.submit(Snapshot([Out("t", 0, b"k", b"v")], []))

    class Steps:
        async def close(self, partitions: list[TopicPartition]) -> Snapshot:
            raise SpillFailed("partition spill: OperationalError: disk I/O error")

        def drop(self) -> None:
            pass

    worker._steps = Steps()  # type: ignore[assignment]
    try:
        with pytest.raises(WorkerError):
            worker._on_revoke(None, [TopicPartition(TOPICS.ingress, 0)])  # type: ignore[arg-type]
        closing = threading.Thread(target=worker._committer.close, daemon=True)
        closing.start()
        closing.join(5)
        assert not closing.is_alive(), "closing the committer waits for the stuck commit"
    finally:
        answered.set()


def test_a_hand_over_behind_a_slow_commit_is_not_taken_for_stuck(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait for a hand-over's commit counted from the call, not from the transaction:
    one in flight and the hand-over's own, each well within ``_STUCK`` but longer together,
    were fenced as stuck, and the hand-over's effects were thrown away."""
    monkeypatch.setattr(worker_module, "_STUCK", 1.0)
    committed: list[Snapshot] = []
    began = threading.Event()

    def transact(snapshot: Snapshot) -> None:
        began.set()
        time.sleep(0.6)  # a leader moving: each commit slow, none stuck
        committed.append(snapshot)

    fenced: list[bool] = []
    worker._replace_stuck_producer = lambda recover=True: fenced.append(recover)  # type: ignore[method-assign]
    worker._metadata = lambda: None  # type: ignore[method-assign]
    worker._committer = Committer(transact)
    try:
        worker._committer.submit(Snapshot([Out("t", 0, b"k", b"in flight")], []))
        assert began.wait(5)
        worker._commit(Snapshot([Out("t", 0, b"k", b"hand-over")], []))
        assert fenced == [], "a slow hand-over was fenced as stuck"
        assert len(committed) == 2
    finally:
        worker._committer.close()


def test_a_hand_over_that_fails_as_the_worker_stops_still_closes_the_rest(
    worker: Worker,
) -> None:
    """``Consumer.close()`` runs the revoke callback and raises what it raised (a spill
    failure during the hand-over). The committer, the readers and the producers were closed
    after it, so they were left open: a committer thread outliving the worker's run."""
    closed: list[str] = []
    failure = WorkerError("partition spill: disk full while partitions were handed over")

    class Closing:
        def __init__(self, name: str, raises: Exception | None = None) -> None:
            self.name, self.raises = name, raises

        def close(self, *timeout: float) -> None:
            closed.append(self.name)
            if self.raises is not None:
                raise self.raises

        def flush(self, timeout: float) -> None:
            closed.append(self.name)

    worker._stopping = True
    worker._trusted_step = lambda *args, **kwargs: None  # type: ignore[method-assign]
    worker._consumer = Closing("consumer", failure)  # type: ignore[assignment]
    worker._restorer = Closing("restorer")  # type: ignore[assignment]
    worker._offset_reader = Closing("offset reader")  # type: ignore[assignment]
    worker._transactions = Closing("producers")  # type: ignore[assignment]
    with pytest.raises(WorkerError) as raised:
        worker._kafka_thread()
    assert raised.value is failure
    assert closed == ["consumer", "restorer", "offset reader", "producers"]
    assert not worker._committer._thread.is_alive(), "the committer's thread outlives the run"


def test_a_delay_log_made_again_under_the_worker_restores_rather_than_ends_it(
    worker: Worker,
) -> None:
    """A delay record below where its processor began (``LogRewound``) left the step and
    ended the Kafka thread; nothing of the step is committed, and the partitions are
    restored (the take-over reads the new log from its start), not counted as a spill's."""
    rewound = LogRewound(3, 0, 700)

    def step(*args: object, **kwargs: object) -> Snapshot:
        raise rewound

    worker._stepped = step  # type: ignore[method-assign]
    recovered: list[object] = []
    worker._recover = lambda **kwargs: recovered.append(kwargs)  # type: ignore[method-assign]
    worker._finish_commits = lambda: None  # type: ignore[method-assign]
    worker._committer = SimpleNamespace(clear=lambda: recovered.append("cleared"))  # type: ignore[assignment]
    assert worker._trusted_step([], {}) is None
    assert recovered == [{"settled": False, "owned": []}, "cleared"]  # dropped first
    assert worker._setbacks._spill_failures == [], "counted as a spill failure"


class DelayRecord:
    """A consumed record of the delay topic, as confluent-kafka's ``Message`` answers."""

    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def topic(self) -> str:
        return TOPICS.delay

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"{}"


def test_a_delay_log_made_again_is_read_from_its_start_at_the_restore(worker: Worker) -> None:
    """The restore that LogRewound starts took the partition over at its committed offset:
    once the new log had grown past it, its records below were skipped."""
    owner = worker._ownership
    owner.delays[3] = worker_module.DelayProcessor(
        partition=3, partitions=8, topics=TOPICS, start_offset=700, caught_up_at=700,
        emit=lambda out: None, wake=lambda: None, fetcher=None,  # type: ignore[arg-type]
    )  # fmt: skip
    with pytest.raises(LogRewound):
        worker._steps._dispatch([DelayRecord(3, 0)])  # type: ignore[list-item]
    assert owner.rewind == {3}
    taken = owner.rewound([TopicPartition(TOPICS.delay, 3, 700)], {3: 900})
    assert [tp.offset for tp in taken] == [OFFSET_BEGINNING]


def test_a_take_over_that_reads_a_delay_log_from_its_start_puts_the_consumer_there(
    worker: Worker,
) -> None:
    """Only the processor began at 0: the consumer, assigned by default at the committed
    offset, read on from there."""
    taken = [
        TopicPartition(TOPICS.ingress, 3, 12),
        TopicPartition(TOPICS.delay, 3, OFFSET_BEGINNING),
    ]
    worker._take_over = lambda partitions: taken  # type: ignore[method-assign]
    assigned: list[list[TopicPartition]] = []
    consumer = SimpleNamespace(assign=assigned.append)
    worker._on_assign(
        consumer, [TopicPartition(TOPICS.ingress, 3), TopicPartition(TOPICS.delay, 3)]
    )  # type: ignore[arg-type]
    assert assigned == [taken]
    worker._take_over = lambda partitions: taken[:1]  # type: ignore[method-assign]
    worker._on_assign(consumer, [TopicPartition(TOPICS.ingress, 3)])  # type: ignore[arg-type]
    assert len(assigned) == 1, "assigned where the default does"


class FetchNotStarted:
    """A group's consumer whose partition 3 of the ingress topic has been assigned, and
    whose own read of its committed offset is still under way: librdkafka refuses a seek
    of a partition whose fetch has not started (``_STATE``)."""

    def __init__(self, assigned: list[TopicPartition], kept: int = 3) -> None:
        self.assigned = assigned
        self.sought: list[TopicPartition] = []
        self.assigns: list[list[TopicPartition]] = []
        self.kept = kept  # asks for positions that still get the old ones, once assigned
        self.stale = 0

    def seek(self, tp: TopicPartition) -> None:
        if (tp.topic, tp.partition) == (TOPICS.ingress, 3):
            raise KafkaException(KafkaError(KafkaError._STATE, "Local: Erroneous state"))
        self.sought.append(tp)

    def assignment(self) -> list[TopicPartition]:
        return self.assigned

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigns.append(partitions)
        self.stale = self.kept  # librdkafka forgets them once the fetches have stopped

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """Where the consumer had read to before the assignment, until its fetches stop."""
        offset = 900 if self.stale else OFFSET_INVALID
        self.stale = max(0, self.stale - 1)
        return [TopicPartition(tp.topic, tp.partition, offset) for tp in partitions]


def test_a_restore_that_cannot_seek_a_partition_assigns_it_at_its_offset(worker: Worker) -> None:
    """A restore (after a failed commit, a spill failure, a stuck producer) in the moment
    after an assignment, before the consumer had read its committed offsets: the seek's
    ``KafkaException`` left the Kafka thread and ended the worker."""
    owned = [TopicPartition(TOPICS.ingress, 3), TopicPartition(TOPICS.delay, 3),
             TopicPartition(TOPICS.ingress, 5)]  # fmt: skip
    taken = [TopicPartition(TOPICS.delay, 3, 40), TopicPartition(TOPICS.ingress, 3, 12),
             TopicPartition(TOPICS.ingress, 5, -1001)]  # fmt: skip
    consumer = FetchNotStarted([*owned, TopicPartition(TOPICS.ingress, 7, 55)])  # as assigned
    worker._consumer = consumer  # type: ignore[assignment]
    worker._take_over = lambda partitions: taken  # type: ignore[method-assign]
    worker._recover(settled=True, owned=owned)
    (assigned,) = consumer.assigns
    assert [(tp.topic, tp.partition, tp.offset) for tp in assigned] == [
        (TOPICS.ingress, 3, 12),
        (TOPICS.delay, 3, 40),
        (TOPICS.ingress, 5, OFFSET_BEGINNING),  # none committed: its start
        (TOPICS.ingress, 7, -1001),  # not taken over here: where the group's offset says
    ]
    # Returned once the positions from before are gone: a delay partition's processor took
    # them for how far it had read, and committed past messages it never released.
    assert consumer.stale == 0, "returned while the consumer still held the old positions"
    assert {tp.offset for tp in consumer.position(assigned)} == {OFFSET_INVALID}


def test_positions_that_outlast_the_assignment_are_a_kafka_timeout() -> None:
    consumer = FetchNotStarted([TopicPartition(TOPICS.ingress, 3)], kept=10**9)
    with pytest.raises(KafkaException) as raised:
        read_on_from(consumer, [TopicPartition(TOPICS.ingress, 3, 12)], timeout=0.2)  # type: ignore[arg-type]
    assert raised.value.args[0].code() == KafkaError._TIMED_OUT
    assert "positions kept after assigning" in raised.value.args[0].str()
