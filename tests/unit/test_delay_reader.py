"""The delay reader's thread without Kafka: what it does when its consumer cannot be made
(streams/kafka/delay_reader.py; its reads against a broker are in
tests/integration/test_delayed.py)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.engine.buckets import Fetched
from streams.kafka import delay_reader
from streams.kafka.delay_reader import DelayReader


class Made:
    """A consumer that reads nothing; the first one asked for fails to be made."""

    made = 0

    def __init__(self, config: dict[str, Any]) -> None:
        Made.made += 1
        if Made.made == 1:
            raise RuntimeError("no thread for the consumer")
        self.closed = False

    def unassign(self) -> None: ...

    def close(self) -> None:
        self.closed = True


async def test_a_consumer_that_fails_to_be_made_is_made_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The thread ended when its consumer failed to be made, and every read-back asked of
    it afterwards waited for good: far messages never released, and nothing said."""
    monkeypatch.setattr(delay_reader, "Consumer", Made)
    reader = DelayReader({}, "ns.delay")
    answer: asyncio.Future[tuple[list[Fetched], list[int]]] = (
        asyncio.get_running_loop().create_future()
    )
    try:
        reader.fetch(0, [], lambda found, missing: answer.set_result((found, missing)))
        assert await asyncio.wait_for(answer, 30) == ([], [])
    finally:
        await asyncio.to_thread(reader.close)
    assert Made.made == 2
    assert any("no consumer; trying again" in r.getMessage() for r in caplog.records)


class Assigned:
    """A consumer that reads nothing and keeps what it was assigned."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.assigned: list[Any] = []

    def assign(self, partitions: list[Any]) -> None:
        self.assigned.append(partitions)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        return []

    def unassign(self) -> None: ...

    def close(self) -> None: ...


async def test_a_read_back_no_longer_wanted_is_dropped_unread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A revoked partition's read-backs were still served, ahead of the live partitions'
    asked after them: one on a partition whose leader is away held them all back."""
    made: list[Assigned] = []

    def consumer(config: dict[str, Any]) -> Assigned:
        made.append(Assigned(config))
        return made[-1]

    monkeypatch.setattr(delay_reader, "Consumer", consumer)
    reader = DelayReader({}, "ns.delay")
    loop = asyncio.get_running_loop()
    served: asyncio.Future[str] = loop.create_future()
    try:
        reader.fetch(3, [7, 8], lambda found, missing: served.set_result("closed one"),
                     wanted=lambda: False)  # fmt: skip
        reader.fetch(1, [], lambda found, missing: served.set_result("live one"))
        assert await asyncio.wait_for(served, 30) == "live one"
    finally:
        await asyncio.to_thread(reader.close)
    assert made[0].assigned == [], "the unwanted read-back was read"


class LeaderAway(Assigned):
    """Partition 3's leader is away: no record, and no bounds, from it."""

    def poll(self, timeout: float = -1) -> None:
        time.sleep(min(timeout, 0.05))

    def get_watermark_offsets(self, partition: Any, timeout: float = -1) -> tuple[int, int]:
        raise KafkaException(KafkaError(KafkaError._INVALID_ARG, "leader away"))


class AssignFails(Assigned):
    """Assigning partition 3 fails, every time; the others read nothing."""

    def assign(self, partitions: list[Any]) -> None:
        if any(tp.partition == 3 for tp in partitions):
            raise KafkaException(KafkaError(KafkaError._STATE, "cannot assign"))
        super().assign(partitions)


@pytest.mark.parametrize("consumer", [LeaderAway, AssignFails], ids=["stalled", "failing"])
async def test_a_read_back_that_cannot_be_served_goes_after_the_others(
    consumer: type[Assigned], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One reader serves every delay partition of a worker, one read-back at a time: one
    on a partition whose leader is away (a stall), or failing with anything else, was
    tried again and again, and every other partition's read-backs waited behind it."""
    monkeypatch.setattr(delay_reader, "Consumer", consumer)
    monkeypatch.setattr(DelayReader, "_STALL", 0.2)
    reader = DelayReader({}, "ns.delay")
    loop = asyncio.get_running_loop()
    served: asyncio.Future[str] = loop.create_future()
    try:
        reader.fetch(3, [7, 8], lambda found, missing: served.set_result("the stuck one"))
        reader.fetch(1, [], lambda found, missing: served.set_result("next one"))
        assert await asyncio.wait_for(served, 30) == "next one"
    finally:
        await asyncio.to_thread(reader.close)


async def test_a_read_back_of_a_partition_without_leader_lets_those_waiting_go_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read-back on a partition whose leader is away held the reader for its ``_STALL``
    and its bounds' timeout (10 s) before going after the others, and the next stalled
    partition then held it as long: a read-back asked ``LEAD`` (10 s) before its messages
    fell due on a healthy partition came late. With nothing read yet, one yields to those
    waiting after ``_YIELD``."""
    monkeypatch.setattr(delay_reader, "Consumer", LeaderAway)
    monkeypatch.setattr(DelayReader, "_STALL", 3600.0)  # the bounds are never asked for
    monkeypatch.setattr(DelayReader, "_YIELD", 0.1, raising=False)
    reader = DelayReader({}, "ns.delay")
    loop = asyncio.get_running_loop()
    served: asyncio.Future[str] = loop.create_future()
    try:
        for partition in (3, 4):
            reader.fetch(partition, [7, 8], lambda found, missing: served.set_result("stalled"))
        reader.fetch(1, [], lambda found, missing: served.set_result("healthy"))
        assert await asyncio.wait_for(served, 30) == "healthy"
    finally:
        await asyncio.to_thread(reader.close)


class GoneAndQuiet(Assigned):
    """A healthy partition, emptied by retention: bounds (0, 5), and no record ever."""

    def poll(self, timeout: float = -1) -> None:
        time.sleep(min(timeout, 0.05))

    def get_watermark_offsets(self, partition: Any, timeout: float = -1) -> tuple[int, int]:
        return 0, 5


async def test_a_quiet_read_back_whose_offsets_are_gone_says_so_while_others_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read-back that reads nothing while others wait asks for the partition's bounds
    early: offsets past them are gone (its processor stops waiting for them), not put
    back again and again, which left its partition's read-backs waiting for good."""
    monkeypatch.setattr(delay_reader, "Consumer", GoneAndQuiet)
    monkeypatch.setattr(DelayReader, "_STALL", 3600.0)
    monkeypatch.setattr(DelayReader, "_YIELD", 0.1)
    reader = DelayReader({}, "ns.delay")
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[list[int]] = loop.create_future()
    try:
        reader.fetch(3, [7, 8], lambda found, missing: gone.set_result(missing))
        for _ in range(3):
            reader.fetch(1, [], lambda found, missing: None)  # others, waiting
        assert await asyncio.wait_for(gone, 30) == [7, 8]
    finally:
        await asyncio.to_thread(reader.close)


class SlowButThere(Assigned):
    """A healthy partition, slow to give its first record: bounds (0, 100), no record yet."""

    def poll(self, timeout: float = -1) -> None:
        time.sleep(min(timeout, 0.05))

    def get_watermark_offsets(self, partition: Any, timeout: float = -1) -> tuple[int, int]:
        return 0, 100


async def test_a_slow_read_back_whose_offsets_are_there_lets_those_waiting_go_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its bounds answered and named nothing gone: the read was started again, and again,
    while every other partition's read-backs waited."""
    monkeypatch.setattr(delay_reader, "Consumer", SlowButThere)
    monkeypatch.setattr(DelayReader, "_STALL", 3600.0)
    monkeypatch.setattr(DelayReader, "_YIELD", 0.1)
    reader = DelayReader({}, "ns.delay")
    loop = asyncio.get_running_loop()
    served: asyncio.Future[str] = loop.create_future()
    try:
        reader.fetch(3, [7, 8], lambda found, missing: served.set_result("slow"))
        reader.fetch(1, [], lambda found, missing: served.set_result("waiting"))
        assert await asyncio.wait_for(served, 30) == "waiting"
    finally:
        await asyncio.to_thread(reader.close)


class SlowToStart(Assigned):
    """Partitions 3 and 4 give their records once assigned for 0.3 s; bounds (0, 100)."""

    def assign(self, partitions: list[Any]) -> None:
        super().assign(partitions)
        self.since = time.monotonic()
        self.sent: set[int] = set()

    def poll(self, timeout: float = -1) -> Any:
        (tp,) = self.assigned[-1]
        if time.monotonic() - self.since < 0.3 or tp.offset in self.sent:
            time.sleep(min(timeout, 0.05))
            return None
        self.sent.add(tp.offset)
        return record(tp.partition, tp.offset)

    def get_watermark_offsets(self, partition: Any, timeout: float = -1) -> tuple[int, int]:
        return 0, 100


async def test_two_slow_read_backs_do_not_make_way_for_each_other_for_good(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each went after the other once its first record took longer than ``_YIELD``, and
    was assigned anew on its next turn, which started its fetch over: neither was read."""
    monkeypatch.setattr(delay_reader, "Consumer", SlowToStart)
    monkeypatch.setattr(DelayReader, "_STALL", 3600.0)
    monkeypatch.setattr(DelayReader, "_YIELD", 0.1)
    reader = DelayReader({}, "ns.delay")
    loop = asyncio.get_running_loop()
    found: dict[int, asyncio.Future[list[int]]] = {p: loop.create_future() for p in (3, 4)}
    try:
        for partition, future in found.items():
            reader.fetch(partition, [7], lambda hit, gone, f=future: f.set_result(
                [offset for offset, _, _ in hit]))  # fmt: skip
        async with asyncio.timeout(30):
            assert [await found[3], await found[4]] == [[7], [7]]
    finally:
        await asyncio.to_thread(reader.close)


class Leftover(Assigned):
    """Before partition 1's record at offset 7, a record of partition 5 at offset 40 (what
    an earlier read left fetched); then nothing."""

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        return []

    def poll(self, timeout: float = -1) -> Any:
        queued = getattr(self, "queued", None)
        if queued is None:
            queued = self.queued = [record(5, 40), record(1, 7)]
        return queued.pop(0) if queued else time.sleep(min(timeout, 0.05))


def record(partition: int, offset: int) -> Any:
    return SimpleNamespace(partition=lambda: partition, offset=lambda: offset,
                           error=lambda: None, key=lambda: b"k", value=lambda: b"v")  # fmt: skip


async def test_a_record_of_another_partition_does_not_count_offsets_as_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Offsets below a record's are gone only if it is of the partition read: one of
    another would have dropped pending messages for good."""
    monkeypatch.setattr(delay_reader, "Consumer", Leftover)
    reader = DelayReader({}, "ns.delay")
    answer: asyncio.Future[tuple[list[Fetched], list[int]]] = (
        asyncio.get_running_loop().create_future()
    )
    try:
        reader.fetch(1, [7], lambda found, missing: answer.set_result((found, missing)))
        assert await asyncio.wait_for(answer, 30) == ([(7, b"k", b"v")], [])
    finally:
        await asyncio.to_thread(reader.close)
