"""``streams.kafka.ends.PartitionEnds`` with a given broker and consumer: which partitions
a worker has read to their ends, which are a few records short, and what a read ahead
returns. Against the real broker: tests/integration/test_local_calls.py."""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any, cast

import pytest
from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.kafka import ends
from streams.kafka.ends import PartitionEnds
from streams.kafka.offsets import consume_ready

TOPIC = "unit.ingress"


class Admin:
    """Answers ``list_offsets`` with ``watermarks``; a partition not in it never answers."""

    def __init__(self, watermarks: Mapping[int, int]) -> None:
        self.watermarks = watermarks
        self.asked: list[set[int]] = []

    def list_offsets(
        self, latest: Mapping[TopicPartition, Any], **_: Any
    ) -> dict[Any, Future[Any]]:
        self.asked.append({tp.partition for tp in latest})
        futures: dict[Any, Future[Any]] = {}
        for tp in latest:
            futures[tp] = Future()
            if tp.partition in self.watermarks:
                futures[tp].set_result(SimpleNamespace(offset=self.watermarks[tp.partition]))
        return futures


class Reader:
    """A consumer at ``positions``; each poll returns the next of ``records`` (a partition
    and a key), moves its partition's position past it, and runs ``during`` first."""

    def __init__(self, positions: dict[int, int], records: list[tuple[int, bytes]]) -> None:
        self.positions = positions
        self.records = records
        self.during: dict[int, Any] = {}  # poll number -> what runs inside it

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.positions.get(tp.partition, -1001))
                for tp in tps]  # fmt: skip

    def poll(self, timeout: float) -> Any:
        polls = getattr(self, "polls", 0) + 1
        self.polls = polls
        if polls in self.during:
            self.during[polls]()
        if not self.records:
            return None
        partition, key = self.records.pop(0)
        self.positions[partition] = self.positions.get(partition, 0) + 1
        return SimpleNamespace(partition=lambda: partition, key=lambda: key)


def checker(watermarks: Mapping[int, int]) -> tuple[PartitionEnds, Admin]:
    admin = Admin(watermarks)
    return PartitionEnds(cast(AdminClient, admin), TOPIC), admin


def keys(read: list[Message]) -> list[bytes | None]:
    return [m.key() for m in read]


async def test_ready_and_short_partitions_with_their_watermarks() -> None:
    found, _ = checker({0: 5, 1: 9, 2: 900})
    reader = Reader({0: 5, 1: 7, 2: 0}, [])
    ready, behind = await found.read_to_end(cast(Consumer, reader), {0, 1, 2}, {}, {})
    assert ready == {0: 5}
    assert behind == {1: 9}, "partition 2 is more than READ_AHEAD_RECORDS short"


async def test_a_known_watermark_is_not_asked_again() -> None:
    found, admin = checker({0: 5, 1: 9})
    reader = Reader({0: 3, 1: 9}, [])
    ready, behind = await found.read_to_end(cast(Consumer, reader), {0, 1}, {0: 3}, {})
    assert admin.asked == [{1}]
    assert (ready, behind) == ({0: 3, 1: 9}, {})


async def test_without_a_position_reading_starts_at_the_committed_offset() -> None:
    found, _ = checker({0: 4})
    ready, _ = await found.read_to_end(cast(Consumer, Reader({}, [])), {0}, {}, {0: 4})
    assert ready == {0: 4}


async def test_a_partly_failed_ask_keeps_nothing_and_pauses_the_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ends, "ENDS_TIMEOUT", 0.05)
    found, admin = checker({0: 9})  # partition 1 never answers
    reader = cast(Consumer, Reader({0: 7, 1: 0}, []))
    assert await found.read_to_end(reader, {0, 1}, {}, {}) == ({}, {})
    assert await found.read_to_end(reader, {0}, {}, {}) == ({}, {}), "paused: not asked"
    assert len(admin.asked) == 1


def test_a_read_ahead_reads_until_the_watermarks_are_reached() -> None:
    found, _ = checker({})
    reader = Reader({0: 1, 1: 0}, [(1, b"a"), (0, b"b"), (0, b"c")])
    read = found.read_ahead(cast(Consumer, reader), {0: 2}, lambda: 0)
    assert keys(read) == [b"a", b"b"], "it stops once partition 0 is at 2"
    assert found.read_ahead_hits == 1


async def test_a_read_ahead_that_misses_pauses_that_partition() -> None:
    found, _ = checker({0: 3})
    reader = Reader({0: 1}, [])
    assert found.read_ahead(cast(Consumer, reader), {0: 3}, lambda: 0) == []
    assert found.read_ahead_hits == 0
    consumer = cast(Consumer, reader)
    assert await found.read_to_end(consumer, {0}, {}, {}) == ({}, {}), "no other look now"
    found._missed.clear()
    assert await found.read_to_end(consumer, {0}, {}, {}) == ({}, {0: 3})


def test_a_read_ahead_drops_what_it_read_before_a_rebalance() -> None:
    found, _ = checker({})
    rebalances = [0]
    reader = Reader({0: 0}, [(0, b"stale"), (0, b"fresh"), (0, b"later")])
    reader.during[2] = lambda: rebalances.__setitem__(0, 1)  # inside the second poll
    read = found.read_ahead(cast(Consumer, reader), {0: 9}, lambda: rebalances[0])
    assert keys(read) == [b"fresh"], "read after the callback, in the same poll"
    assert found.read_ahead_hits == 0


class Batches(Reader):
    """A :class:`Reader` whose ``consume`` takes the rest of ``records`` at once, running
    ``inside`` first, as librdkafka serves a rebalance callback inside that call."""

    inside: Any = None

    def consume(self, limit: int, timeout: float) -> list[Any]:
        if self.inside is not None:
            self.inside()
        taken = []
        while self.records and len(taken) < limit:
            taken.append(self.poll(0))
        return taken


@pytest.mark.parametrize("rebalanced", [False, True])
def test_a_record_read_before_a_rebalance_in_the_second_read_is_dropped(
    rebalanced: bool,
) -> None:
    """The worker's read is a poll, then a consume of what is fetched. A revoke and an
    assign served in the consume restore the partition at its committed offset, which the
    first record was not committed past: it was applied, and read again and applied again."""
    rebalances = [0]
    reader = Batches({0: 0}, [(0, b"stale"), (0, b"fresh")])
    if rebalanced:
        reader.inside = lambda: rebalances.__setitem__(0, rebalances[0] + 2)
    read = consume_ready(cast(Consumer, reader), 10, 0.1, lambda: rebalances[0])
    assert keys(read) == ([b"fresh"] if rebalanced else [b"stale", b"fresh"])
