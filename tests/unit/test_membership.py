"""The worker's warning while its consumer is out of its group (streams/kafka/membership.py),
and how a take-over tries again (``Worker._take_over``): not once the worker is out of the
group, and when a partition's committed offset comes back with an error."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streams.kafka import worker as worker_module
from streams.kafka.membership import Membership
from streams.kafka.offsets import offsets_partition
from streams.kafka.worker import Worker
from tests.unit.harness import TOPICS


class Consumer:
    def __init__(self) -> None:
        self.member: str | None = None

    def memberid(self) -> str | None:
        return self.member


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    found = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    caplog.clear()
    return found


def test_a_consumer_never_taken_in_is_reported_every_so_often(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer = Consumer()
    watch = Membership("shop.workers", after=30.0)
    start = time.monotonic()
    assert not watch.check(consumer, start + 10)
    assert warnings(caplog) == []
    assert not watch.check(consumer, start + 31)
    [said] = warnings(caplog)
    assert said.startswith("not a member of group shop.workers for 31s")
    watch.check(consumer, start + 45)
    assert warnings(caplog) == [], "said again before another 30 s"
    watch.check(consumer, start + 62)
    assert len(warnings(caplog)) == 1


def test_the_wait_counts_from_when_it_was_last_a_member(caplog: pytest.LogCaptureFixture) -> None:
    consumer = Consumer()
    watch = Membership("shop.workers", after=30.0)
    start = time.monotonic()
    consumer.member = "rdkafka-1"
    assert watch.check(consumer, start + 100)
    consumer.member = ""  # out of the group again, rejoining
    watch.check(consumer, start + 120)
    assert warnings(caplog) == []
    watch.check(consumer, start + 131)
    [said] = warnings(caplog)
    assert "for 31s" in said


class OffsetReader:
    """Reads committed offsets for a take-over, and fails as while Kafka is away."""

    def __init__(self, consumer: Consumer, out_after: int | None, stop: Callable[[], None]):
        self.consumer = consumer
        self.stop = stop  # the worker's, called at the tenth try
        self.out_after = out_after  # failures after which the consumer is out of the group
        self.asked = 0

    def committed(self, partitions: list[TopicPartition], timeout: float) -> None:
        self.asked += 1
        if self.asked == self.out_after:
            self.consumer.member = ""  # librdkafka: session expired, or max.poll.interval.ms
        if self.asked == 10:
            self.stop()
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "committed offsets"))


def taking_over(worker: Worker, monkeypatch: pytest.MonkeyPatch, out_after: int | None) -> int:
    """How many times ``worker`` tries to take a partition over while Kafka is away, its
    consumer out of the group after ``out_after`` failed tries; stopped after ten."""
    consumer = Consumer()
    consumer.member = "rdkafka-1"
    reader = OffsetReader(consumer, out_after, worker.stop)
    worker._consumer = consumer  # type: ignore[assignment]
    worker._offset_reader = reader  # type: ignore[assignment]
    offsets = SimpleNamespace(error=None, partitions=dict.fromkeys(range(8)))
    listed = SimpleNamespace(topics={"__consumer_offsets": offsets})
    worker._admin = SimpleNamespace(list_topics=lambda **_: listed)  # type: ignore[assignment]
    monkeypatch.setattr(worker_module, "time", SimpleNamespace(sleep=lambda seconds: None))
    assert worker._take_over([TopicPartition(TOPICS.ingress, 0)]) == []
    return reader.asked


def test_a_take_over_stops_once_the_worker_is_out_of_its_group(
    worker: Worker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Out of the group, the partitions go to others: trying on (the take-over does not
    poll) would never learn that, and restore partitions others write to, for good."""
    assert taking_over(worker, monkeypatch, out_after=3) == 3
    assert any("out of group unit.workers since" in said for said in warnings(caplog))


def test_a_take_over_goes_on_while_the_worker_stays_a_member(
    worker: Worker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert taking_over(worker, monkeypatch, out_after=None) == 10
    # Where the group's offsets live, for an operator to look for a transaction left open.
    partition = offsets_partition("unit.workers", 8)
    said = warnings(caplog)
    assert len(said) == 9, said  # the tenth try meets the stop
    assert all(f"__consumer_offsets/{partition}" in line for line in said), said


class Answer:
    """A committed offset as ``Consumer.committed`` gives it, with a per-partition error."""

    def __init__(self, offset: int, error: KafkaError | None = None) -> None:
        self.topic, self.partition, self.offset, self.error = TOPICS.ingress, 0, offset, error


def test_a_committed_offset_that_comes_back_with_an_error_is_asked_again(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its offset reads -1001, "none committed": taken over with it, the partition would be
    read again from its start, over the state restored from its changelogs."""
    consumer = Consumer()
    consumer.member = "rdkafka-1"
    failed = KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS, "loading")
    answers = [[Answer(-1001, failed)], [Answer(42)]]

    class Reader:
        def committed(self, partitions: list[TopicPartition], timeout: float) -> list[Answer]:
            return answers.pop(0)

    went_on: list[list[int]] = []

    def delay_ends(admin: object, topics: object, committed: list[Answer], *args: object) -> None:
        went_on.append([tp.offset for tp in committed])
        worker.stop()  # and end here: the rest of a take-over needs Kafka
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "delay ends"))

    worker._consumer = consumer  # type: ignore[assignment]
    worker._offset_reader = Reader()  # type: ignore[assignment]
    worker._admin = None  # type: ignore[assignment]  # delay_ends is a stand-in
    monkeypatch.setattr(worker_module, "delay_ends", delay_ends)
    monkeypatch.setattr(worker_module, "time", SimpleNamespace(sleep=lambda seconds: None))
    assert worker._take_over([TopicPartition(TOPICS.ingress, 0)]) == []
    assert went_on == [[42]], "an offset answered with an error was taken"


class Owned:
    """The worker's ownership, as far as a take-over asks it: what it assigned, forgot."""

    def __init__(self) -> None:
        self.rewind: set[int] = set()
        self.restored: list[object] = []
        self.assigned: list[object] = []  # restored, then started
        self.forgotten: list[list[TopicPartition]] = []

    def rewound(self, committed: list[Answer], ends: object) -> list[Answer]:
        return committed

    async def restore(self, committed: object, ends: object, restore: object) -> None:
        self.restored.append(committed)

    async def start(self, committed: object) -> None:
        self.assigned.append(committed)

    async def forget(self, partitions: list[TopicPartition], close: bool) -> None:
        self.forgotten.append(partitions)


def set_to_take_over(
    worker: Worker, consumer: Consumer, monkeypatch: pytest.MonkeyPatch, lost: Callable[..., None]
) -> Owned:
    """``worker`` set to take partitions over with ``consumer``, its committed offset 42 and
    ``lost`` as ``offsets_lost``: its ownership."""

    class Reader:
        def committed(self, partitions: list[TopicPartition], timeout: float) -> list[Answer]:
            return [Answer(42)]

    owned = Owned()
    worker._consumer = consumer  # type: ignore[assignment]
    worker._offset_reader = Reader()  # type: ignore[assignment]
    worker._ownership = owned  # type: ignore[assignment]
    worker._admin = None  # type: ignore[assignment]  # delay_ends is a stand-in
    monkeypatch.setattr(worker_module, "delay_ends", lambda *args: {})
    monkeypatch.setattr(worker_module, "offsets_lost", lost)
    return owned


def test_a_take_over_that_outlasts_the_membership_gives_its_partitions_up(
    worker: Worker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A take-over runs outside any poll: one whose restore outlasted
    ``max.poll.interval.ms`` was out of the group by its end (librdkafka clears the member
    id), and started its partitions all the same; their handlers ran while another worker,
    now their owner, ran them too, until the next poll told this one."""
    consumer = Consumer()
    consumer.member = "rdkafka-1"

    def offsets_lost(consumer_: Consumer, *args: object) -> None:
        consumer.member = ""  # the restore took longer than max.poll.interval.ms

    owned = set_to_take_over(worker, consumer, monkeypatch, offsets_lost)
    partitions = [TopicPartition(TOPICS.ingress, 0)]
    assert worker._take_over(partitions) == []
    assert owned.forgotten == [partitions]
    assert any("out of group unit.workers since" in said for said in warnings(caplog))


@pytest.mark.parametrize("then", ["", "rdkafka-2"])
def test_a_restore_that_outlasts_the_membership_starts_nothing(
    worker: Worker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, then: str
) -> None:
    """Out of the group by the restore's end (its member id cleared, or another one: the
    consumer joined again), the partitions are another worker's: started, their handlers
    (and ``ctx.run`` actions) ran beside that worker's until the take-over's last check."""
    consumer = Consumer()
    consumer.member = "rdkafka-1"
    owned = set_to_take_over(worker, consumer, monkeypatch, lambda *args: None)

    async def restore(committed: object, ends: object, restore: object) -> None:
        consumer.member = then  # max.poll.interval.ms passed while it read

    monkeypatch.setattr(owned, "restore", restore)
    partitions = [TopicPartition(TOPICS.ingress, 0)]
    assert worker._take_over(partitions) == []
    assert owned.assigned == [], "started after the worker left the group"
    assert owned.forgotten == [partitions], "what was restored is kept"
    assert any("out of group unit.workers since" in said for said in warnings(caplog))


def test_a_recovery_out_of_the_group_restores_nothing_and_gives_its_partitions_up(
    worker: Worker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Kafka away long enough for the session to expire: librdkafka cleared the member id
    before the recovery's take-over began, the check after the restore compared "" with
    "", and the partitions, the group's to give to another worker by then, were restored
    and their handlers started beside that worker's, until the next poll told this one."""
    consumer = Consumer()
    consumer.member = ""
    owned = set_to_take_over(worker, consumer, monkeypatch, lambda *args: None)
    assert worker._take_over([TopicPartition(TOPICS.ingress, 0)]) == []
    assert owned.assigned == [], "restored and started while out of the group"
    assert any("out of group unit.workers since" in said for said in warnings(caplog))


def test_a_take_over_tried_again_still_reads_a_rewound_delay_log_from_its_start(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed try forgets the partitions, which lets go of their rewind: the next try
    must still read the delay log made again from its start, not from the offset
    committed on the old one."""
    consumer = Consumer()
    consumer.member = "rdkafka-1"
    tries = [KafkaException(KafkaError(KafkaError._TIMED_OUT, "committed offsets")), None]

    class Reader:
        def committed(self, partitions: list[TopicPartition], timeout: float) -> list[Answer]:
            failure = tries.pop(0)
            if failure is not None:
                raise failure
            return [Answer(700)]

    seen: list[set[int]] = []
    owner = worker._ownership

    def rewound(committed: list[Answer], ends: object) -> list[Answer]:
        seen.append(set(owner.rewind))
        worker.stop()  # and end here: the rest of a take-over needs Kafka
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "delay ends"))

    owner.rewind.add(3)
    worker._consumer = consumer  # type: ignore[assignment]
    worker._offset_reader = Reader()  # type: ignore[assignment]
    offsets = SimpleNamespace(error=None, partitions=dict.fromkeys(range(8)))
    listed = SimpleNamespace(topics={"__consumer_offsets": offsets})
    worker._admin = SimpleNamespace(list_topics=lambda **_: listed)  # type: ignore[assignment]
    monkeypatch.setattr(owner, "rewound", rewound)
    monkeypatch.setattr(worker_module, "delay_ends", lambda *args: {})
    monkeypatch.setattr(worker_module, "time", SimpleNamespace(sleep=lambda seconds: None))
    assert worker._take_over([TopicPartition(TOPICS.delay, 3)]) == []
    assert seen == [{3}], "the second try forgot the rewind"
