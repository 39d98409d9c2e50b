"""A worker's partitions through a rebalance (``streams.kafka.ownership.Ownership``): an
assignment is restored in one go, the stall watch looks at its changelogs meanwhile, none
of it runs before all is restored; a hand-over closes what it names and keeps the rest.
The restore is a stand-in; reading changelogs from Kafka is in
tests/integration/test_restore.py."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streams.engine.delay import DelayProcessor
from streams.engine.partition import PartitionProcessor
from streams.engine.registry import Registry
from streams.kafka.ownership import Ownership, by_topic, offsets_lost
from streams.kafka.restore import RestoreError
from streams.kafka.stalls import StallWatch
from tests.unit.harness import TOPICS
from tests.unit.test_delay import Log

ASSIGNED = [
    TopicPartition(TOPICS.ingress, 0, 12),
    TopicPartition(TOPICS.ingress, 1, -1001),
    TopicPartition(TOPICS.delay, 1, 7),
]
CHANGELOGS = (TOPICS.state, TOPICS.invocations, TOPICS.dedup)


class Fetcher:
    def fetch(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("nothing is read back in these tests")


def ownership() -> Ownership:
    def new_processor(partition: int) -> PartitionProcessor:
        return PartitionProcessor(
            partition=partition,
            partitions=2,
            topics=TOPICS,
            registry=Registry([]),
            emit=lambda out: None,
            wake=lambda: None,
        )

    def new_delay(partition: int, start: int, caught_up_at: int) -> DelayProcessor:
        return DelayProcessor(
            partition=partition,
            partitions=2,
            topics=TOPICS,
            start_offset=start,
            caught_up_at=caught_up_at,
            emit=lambda out: None,
            wake=lambda: None,
            fetcher=Fetcher(),
        )

    return Ownership(TOPICS, StallWatch(120.0), new_processor, new_delay)


async def take_over(
    owner: Ownership, committed: list[TopicPartition], ends: dict[int, int], restore: Any
) -> None:
    """A take-over as the worker runs it, with no member check between the halves."""
    await owner.restore(committed, ends, restore)
    await owner.start(committed)


async def test_an_assignment_is_restored_in_one_go_then_started() -> None:
    restores: list[list[int]] = []
    owner = ownership()

    def restore(processors: list[PartitionProcessor]) -> None:
        assert owner.processors == {}, "a partition runs before the assignment is restored"
        assert sorted(owner.owned()) == sorted(
            [(TOPICS.delay, 1)] + [(topic, p) for topic in CHANGELOGS for p in (0, 1)]
        ), "the stall watch does not see the changelogs being restored"
        restores.append([processor.partition for processor in processors])

    await take_over(owner, ASSIGNED, {1: 9}, restore)
    try:
        assert restores == [[0, 1]], "not restored together"
        assert sorted(owner.processors) == [0, 1]
        assert owner.offsets == {0: 12}, "a partition with no committed offset has none"
        assert list(owner.delays) == [1]
        assert not owner.delays[1].caught_up, "releases before reading to the end it was given"
        assert owner.restoring == []
    finally:
        owner.close_all()


class Watermarks:
    """A consumer's answer for each partition's low and high watermarks."""

    def __init__(self, marks: dict[int, tuple[int, int]]) -> None:
        self.marks = marks

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        return self.marks[tp.partition]


async def test_a_partition_with_changelog_records_but_no_committed_offset_is_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The group's offsets gone (no worker for longer than offsets.retention.minutes): the
    partition rereads its ingress from the start, with nothing said. Not said for one with
    nothing on its ingress (it took only calls its own worker made), nor for a new one."""

    def restore(processors: list[PartitionProcessor]) -> None:
        for processor in processors:  # both were run before: 0 committed its offset, 1 not
            processor.restore_dedup(b'["S", null, "h", "k"]', None)

    owner = ownership()
    await take_over(owner, ASSIGNED, {}, restore)
    try:
        for low, high, said in ((0, 40, [1]), (5, 5, [])):
            caplog.clear()
            marks = cast(Consumer, Watermarks({1: (low, high)}))
            assert offsets_lost(marks, TOPICS, "unit.workers", ASSIGNED, owner.processors) == said
            errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
            assert len(errors) == len(said), errors
            assert all("its 40 records from offset 0 are read again" in e for e in errors)
    finally:
        owner.close_all()
    fresh = ownership()  # a new namespace: nothing restored, nothing asked
    await take_over(fresh, ASSIGNED, {}, lambda processors: None)
    try:
        nothing = cast(Consumer, Watermarks({}))
        assert offsets_lost(nothing, TOPICS, "unit.workers", ASSIGNED, fresh.processors) == []
    finally:
        fresh.close_all()


async def test_a_failed_restore_leaves_nothing_of_the_assignment_running() -> None:
    given: list[PartitionProcessor] = []

    def restore(processors: list[PartitionProcessor]) -> None:
        given.extend(processors)
        raise RestoreError("restoring partitions 0, 1: nothing read for 150s")

    owner = ownership()
    with pytest.raises(RestoreError):
        await take_over(owner, ASSIGNED[:2], {}, restore)
    assert owner.processors == {}, "a partition runs that was not restored"
    assert owner.owned() == [], "the stall watch still looks at what was given up"
    assert [p.spill.db for p in given] == [None, None], "what was read back stays on disk"


async def test_what_a_restore_read_back_starts_only_when_asked_and_forget_drops_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker asks whether it is still a member of its group between :meth:`restore`
    and :meth:`start`: restored, nothing runs yet, and a take-over given up there lets go
    of what was read back (the worker's ``forget``)."""
    started: list[int] = []
    monkeypatch.setattr(PartitionProcessor, "start", lambda self: started.append(self.partition))
    given: list[PartitionProcessor] = []
    owner = ownership()
    await owner.restore(ASSIGNED[:2], {}, given.extend)
    assert started == []
    assert owner.processors == {}, "a partition is owned before it starts"
    await owner.forget(ASSIGNED[:2], close=True)
    assert all(p.closed for p in given)
    assert [p.spill.db for p in given] == [None, None], "what was read back stays on disk"
    await owner.start(ASSIGNED[:2])
    assert started == [], "what was given up started all the same"
    await owner.restore(ASSIGNED[:2], {}, lambda processors: None)
    await owner.start(ASSIGNED[:2])
    assert started == [0, 1]
    assert sorted(owner.processors) == [0, 1]
    owner.close_all()


async def test_a_hand_over_closes_what_it_names_and_forget_lets_go_of_it() -> None:
    owner = ownership()
    await take_over(owner, ASSIGNED, {}, lambda processors: None)
    try:
        given_up = [TopicPartition(TOPICS.ingress, 0), TopicPartition(TOPICS.delay, 1)]
        await owner.hand_over(given_up)
        given, kept = owner.processors[0], owner.processors[1]
        assert given.closed, "a partition handed over still runs"
        assert not kept.closed, "a partition kept was closed"
        assert owner.delays[1].closed, "a delay partition handed over still runs"
        assert given.spill.db is not None, "let go of on disk before its last changes are taken"
        await owner.forget(given_up)
        assert given.spill.db is None, "a partition given up keeps its spill"
        assert sorted(owner.owned()) == [(topic, 1) for topic in (TOPICS.dedup, TOPICS.ingress,
                                          TOPICS.invocations, TOPICS.state)]  # fmt: skip
        assert owner.offsets == {}, "the offset of a partition given up would be committed"
        assert owner.drop_all() == [TopicPartition(TOPICS.ingress, 1)]
        assert kept.spill.db is None, "a partition dropped keeps its spill"
        assert owner.processors == {}
        assert owner.delays == {}
    finally:
        owner.close_all()


def test_partitions_are_named_by_topic_for_the_log() -> None:
    assert by_topic(ASSIGNED) == "delay [1], ingress [0, 1]"
    assert by_topic([]) == "nothing"


async def test_a_delay_partition_whose_log_ends_before_its_committed_offset_is_read_whole(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its log deleted and made again (committed offset 7, end 3): every record it holds
    is a delayed message nobody read. The first raised out of the processor, below the
    offset set's base, and ended the worker at every take-over."""
    owner = ownership()
    took: list[list[int]] = []
    owner.took = took.append
    taken = owner.rewound(ASSIGNED, {1: 3})
    assert offsets(taken) == [
        (TOPICS.ingress, 0, 12),
        (TOPICS.ingress, 1, -1001),
        (TOPICS.delay, 1, OFFSET_BEGINNING),  # the consumer is put there, the processor at 0
    ]
    assert offsets(owner.rewound(ASSIGNED, {1: 7})) == offsets(ASSIGNED), "it ends at it"
    owner.rewind.add(1)  # its processor met a record below its start: the log made again
    assert offsets(owner.rewound(ASSIGNED, {1: 9}))[2] == (TOPICS.delay, 1, OFFSET_BEGINNING)
    await take_over(owner, taken, {1: 3}, lambda processors: None)
    assert owner.rewind == set(), "read from its start again at the next take-over"
    assert took == [[1]], "the trimmer kept what it committed on the old log"
    try:
        delay = owner.delays[1]
        assert delay.commit_offset() == 0
        log = Log()
        log.delayed(time.time() + 3600)
        key, value = log.records[0]
        delay.on_message(key, value, 0)
        assert delay.pending == 1, "a delayed message of the new log was not taken"
        assert delay.commit_offset() == 0
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert any("log ends at 3, its committed offset is 7" in e for e in errors), errors
    finally:
        owner.close_all()


async def test_a_delay_partition_let_go_is_no_longer_to_be_read_from_its_start() -> None:
    """A rewind outlived the partition's hand-over: when it came back, maybe days later,
    its whole retained log was read again and said to have been made again."""
    owner = ownership()
    owner.rewind.update({1, 0})
    await owner.forget([TopicPartition(TOPICS.delay, 1), TopicPartition(TOPICS.ingress, 0)])
    assert owner.rewind == {0}, "only the delay partition let go"


def offsets(partitions: list[TopicPartition]) -> list[tuple[str, int, int]]:
    """What TopicPartition's == leaves out (it compares topics and partitions only)."""
    return [(tp.topic, tp.partition, tp.offset) for tp in partitions]
