"""The delay processor as pure logic: a delay partition simulated as a list, a fake clock,
a fake read-back; never early, never twice, the commit offset, the horizon."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.engine import buckets as buckets_module
from streams.engine import delay, holding
from streams.engine.buckets import Buckets, Deliver, Fetched
from streams.engine.delay import DelayProcessor
from streams.engine.delay_records import LogRewound
from streams.engine.holding import Holding
from streams.engine.offset_set import OffsetSet
from streams.engine.outbox import Out
from streams.wire import ids
from streams.wire.deadletter import DeadLetter
from streams.wire.records import (
    START_LEAD,
    Caller,
    Completion,
    Delayed,
    Fired,
    Invoke,
    Start,
    Target,
    decode_delay,
    decode_ingress,
    encode,
)
from streams.wire.topics import Topics

TOPICS = Topics("unit")
PARTITIONS = 4
T0 = 1_800_000_000.0  # the fake clock's start


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Log:
    """One delay partition: offset = index."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes | None]] = []

    def append(self, key: bytes | None, value: bytes | None) -> int:
        self.records.append((key, value))
        return len(self.records) - 1

    def delayed(self, due: float, key: str = "k") -> int:
        invoke = Invoke(
            target=Target(service="S", key=key, handler="h"),
            argument=due,
            invocation_id=ids.new_id(key, PARTITIONS),
            mode="send",
        )
        record = Delayed(due=datetime.fromtimestamp(due, UTC), invoke=invoke)
        return self.append(key.encode(), encode(record))

    def released_long_ago(self, count: int) -> None:
        """``count`` markers of messages released before anything here was read: they
        lengthen the partition and change no pending message."""
        marker = encode(Fired(offset=10**9))
        for _ in range(count):
            self.append(b"k", marker)

    @property
    def end(self) -> int:
        return len(self.records)


class Fetcher:
    """Read-back requests, answered when the test says so (a byte budget as the reader
    keeps it: it stops once what it found holds that many bytes)."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.requests: list[tuple[list[int], Deliver, int | None]] = []
        self.asked: list[list[int]] = []  # every request, answered or not
        self.urgent: list[bool] = []  # whether each was urgent

    def fetch(
        self,
        partition: int,
        offsets: Sequence[int],
        deliver: Deliver,
        urgent: bool = True,
        max_bytes: int | None = None,
        wanted: Callable[[], bool] | None = None,
    ) -> None:
        assert list(offsets) == sorted(offsets)
        self.requests.append((list(offsets), deliver, max_bytes))
        self.asked.append(list(offsets))
        self.urgent.append(urgent)

    def serve(self, gone: Sequence[int] = ()) -> list[int]:
        """Answer every request; the offsets asked for."""
        asked: list[int] = []
        while self.requests:
            asked += self.serve_one(gone)
        return asked

    def serve_one(self, gone: Sequence[int] = ()) -> list[int]:
        """Answer the oldest request; the offsets it asked for."""
        offsets, deliver, max_bytes = self.requests.pop(0)
        found: list[Fetched] = []
        missing: list[int] = []
        held = 0
        for offset in offsets:
            if max_bytes is not None and held >= max_bytes:
                break
            if offset in gone:
                missing.append(offset)
                continue
            key, value = self.log.records[offset]
            found.append((offset, key, value))
            held += len(key or b"") + len(value or b"")
        deliver(found, missing)
        return offsets


class Rig:
    """A processor reading ``log`` from ``start``, its emitted records, a fake clock."""

    def __init__(
        self,
        log: Log,
        clock: Clock,
        start: int = 0,
        holding: Holding | None = None,
        **options: float,
    ) -> None:
        self.log = log
        self.clock = clock
        self.out: list[Out] = []
        self.fetcher = Fetcher(log)
        self.processor = DelayProcessor(
            partition=0,
            partitions=PARTITIONS,
            topics=TOPICS,
            start_offset=start,
            caught_up_at=log.end,
            emit=self.out.append,
            wake=lambda: None,
            fetcher=self.fetcher,
            holding=holding,
            clock=clock,
            **options,
        )
        self.read = start
        self.released: dict[int, float] = {}  # offset -> clock when released
        self.carried: dict[int, int] = {}  # old offset -> the offset of its copy
        self.committed = start  # the delay partition's committed offset
        self.emitted: list[Out] = []  # to ingress and dead-letter topics, as committed

    def feed(self) -> None:
        """Read the log to its end, as the worker's consumer would."""
        while self.read < self.log.end:
            key, value = self.log.records[self.read]
            self.processor.on_message(key, value, self.read)
            self.read += 1

    def commit(self) -> None:
        """The worker's transaction: released records leave, markers and copies carried
        forward join the log."""
        copy = None  # the offset of a copy just appended: the next marker is its original's
        for out in self.out:
            if out.topic == TOPICS.delay:
                record = decode_delay(out.value)
                offset = self.log.append(out.key, out.value)
                if isinstance(record, Delayed):
                    copy = offset
                    continue
                assert record.offset not in self.released, f"{record.offset} released twice"
                assert record.offset not in self.carried, f"{record.offset} carried twice"
                if copy is not None:
                    self.carried[record.offset] = copy
                else:
                    self.released[record.offset] = self.clock.now
            else:
                assert out.topic in (TOPICS.ingress, TOPICS.deadletter), out.topic
                self.emitted.append(out)
            copy = None
        self.out.clear()
        if self.processor.caught_up:
            self.committed = self.processor.commit_offset()

    def tick(self, to: float | None = None) -> None:
        if to is not None:
            self.clock.now = to
        self.processor.tick()
        self.commit()


def due_of(log: Log, offset: int) -> float:
    record = decode_delay(log.records[offset][1])
    assert isinstance(record, Delayed)
    return record.due.timestamp()


# -- the offset set ---------------------------------------------------------------------


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40_000)), max_size=300))
def test_offset_set_matches_a_python_set(operations: list[tuple[bool, int]]) -> None:
    members = OffsetSet(100)
    model: set[int] = set()
    top = 100
    for add, step in operations:
        if add:
            top += step % 9000  # offsets are added in order, as read
            members.add(top)
            model.add(top)
        elif model:
            victim = sorted(model)[step % len(model)]
            assert members.discard(victim)
            model.discard(victim)
        assert len(members) == len(model)
        assert members.lowest() == (min(model) if model else None)
        limit = 100 + step
        assert list(members.below(limit)) == sorted(o for o in model if o < limit)
    assert all(o in members for o in model)
    assert not members.discard(99)


def test_an_empty_offset_set_starts_its_bitmap_at_the_first_offset_added() -> None:
    """A delay partition with no committed offset is read from 0; when its records start at
    offset 10^9 (the ones before were deleted), the set allocated a bit for every offset
    in between: 125 MB for each such partition."""
    members = OffsetSet(0)
    members.add(10**9)
    members.add(10**9 + 20)
    assert len(members._bits) <= 8
    assert list(members.below(2 * 10**9)) == [10**9, 10**9 + 20]
    assert members.lowest() == 10**9
    assert 5 not in members
    assert not members.discard(5)
    assert members.discard(10**9)
    assert members.discard(10**9 + 20)
    members.add(3 * 10**9)  # empty again: it starts there again
    assert len(members._bits) <= 8
    assert members.lowest() == 3 * 10**9


def test_offset_set_trims_its_front_and_keeps_accepting_later_offsets() -> None:
    members = OffsetSet(0)
    for offset in range(0, 200_000, 3):
        members.add(offset)
    for offset in range(0, 200_000, 3):
        members.discard(offset)
        if offset % 30_000 == 0:
            assert members.lowest() == offset + 3
    assert members.lowest() is None
    members.add(200_001)
    assert members.lowest() == 200_001
    with pytest.raises(ValueError, match="below"):
        members.add(10)


# -- releasing ----------------------------------------------------------------------------


async def test_a_near_message_is_held_and_released_at_its_due_time_not_before() -> None:
    log, clock = Log(), Clock()
    rig = Rig(log, clock)
    offset = log.delayed(T0 + 5)
    rig.feed()
    assert rig.processor.held == 1
    assert rig.processor.next_due == T0 + 5
    rig.tick(T0 + 4.999)
    assert rig.out == []
    assert rig.released == {}
    rig.tick(T0 + 5)
    assert rig.released == {offset: T0 + 5}
    assert rig.processor.pending == 0


async def test_release_emits_the_inner_record_to_its_owner_partition_and_a_marker() -> None:
    log, clock = Log(), Clock()
    rig = Rig(log, clock)
    offset = log.delayed(T0 + 1, key="ada")
    caller = Caller(invocation_id=ids.new_id("bob", PARTITIONS), entry=3)
    fired = Completion(caller=caller, invocation_id=caller.invocation_id, value=None)
    record = Delayed(due=datetime.fromtimestamp(T0 + 1, UTC), completion=fired)
    timer = log.append(b"bob", encode(record))
    rig.feed()
    clock.now = T0 + 2
    rig.processor.tick()
    ingress = [o for o in rig.out if o.topic == TOPICS.ingress]
    markers = [decode_delay(o.value) for o in rig.out if o.topic == TOPICS.delay]
    assert {o.partition for o in ingress} == {
        ids.partition_of(caller.invocation_id, PARTITIONS),
        ids.partition_of(_invocation_id(log, offset), PARTITIONS),
    }
    assert encode(fired) in {o.value for o in ingress}
    assert markers == [Fired(offset=offset), Fired(offset=timer)]


async def test_a_start_leaves_early_by_the_lead_and_a_timer_at_its_due_time() -> None:
    """A scheduled invocation's Start overlaps its release hop with the wait (its partition
    waits out the rest); a sleep's completion wakes a handler, so it never leaves early."""
    log, clock = Log(), Clock()
    rig = Rig(log, clock)
    owner = ids.new_id("ada", PARTITIONS)
    due = datetime.fromtimestamp(T0 + 1, UTC)
    started = log.append(b"ada", encode(Delayed(due=due, start=Start(invocation_id=owner, seq=7))))
    caller = Caller(invocation_id=owner, entry=0)
    fired = Completion(caller=caller, invocation_id=owner, value=None)
    timer = log.append(b"ada", encode(Delayed(due=due, completion=fired)))
    rig.feed()
    rig.tick(T0 + 1 - START_LEAD - 0.001)
    assert rig.released == {}
    rig.tick(T0 + 1 - START_LEAD)
    assert rig.released == {started: T0 + 1 - START_LEAD}
    rig.tick(T0 + 0.999)
    assert timer not in rig.released
    rig.tick(T0 + 1)
    assert rig.released[timer] == T0 + 1


def _invocation_id(log: Log, offset: int) -> str:
    record = decode_delay(log.records[offset][1])
    assert isinstance(record, Delayed)
    owner = record.owner_id()
    assert owner is not None
    return owner


async def test_messages_are_released_in_due_order_and_the_commit_offset_is_the_oldest_pending() -> (
    None
):
    log, clock = Log(), Clock()
    rig = Rig(log, clock, start=0)
    dues = [T0 + 3, T0 + 1, T0 + 2, T0 + 1.5]
    offsets = [log.delayed(d) for d in dues]
    rig.feed()
    assert rig.processor.commit_offset() == 0
    order: list[int] = []
    for now in (T0 + 1, T0 + 1.5, T0 + 2, T0 + 3):
        rig.tick(now)
        order += [o for o in rig.released if o not in order]
        if now == T0 + 1.5:
            assert rig.processor.commit_offset() == 0  # offset 0 (due +3) still pending
    assert order == [offsets[1], offsets[3], offsets[2], offsets[0]]
    rig.feed()  # its own markers
    assert rig.processor.commit_offset() == log.end


async def test_bad_records_are_dead_lettered_once_and_do_not_hold_the_commit_offset() -> None:
    log, clock = Log(), Clock()
    rig = Rig(log, clock)
    log.append(b"x", b"not json")
    no_id = Delayed(
        due=datetime.fromtimestamp(T0, UTC),
        invoke=Invoke(target=Target(service="S", handler="h")),
    )
    log.append(b"y", encode(no_id))
    good = log.delayed(T0 + 1)
    rig.feed()
    rig.tick()
    letters = [DeadLetter.from_record(o.key, o.value, o.headers or [], 0) for o in rig.emitted]
    assert [(o.topic, o.key) for o in rig.emitted] == [
        (TOPICS.deadletter, b"x"),
        (TOPICS.deadletter, b"y"),
    ]
    assert [(letter.reason, letter.topic, letter.offset) for letter in letters] == [
        ("not-json", TOPICS.delay, 0),
        ("bad-schema", TOPICS.delay, 1),
    ]
    assert letters[1].original_value() == log.records[1][1], "the record, byte for byte"
    assert "without an invocation id" in letters[1].detail
    assert rig.processor.pending == 1
    assert rig.committed == good
    # A new owner that reads the partition again from the start sets nothing aside twice.
    again = Rig(log, clock)
    again.feed()
    again.tick(T0 + 2)
    assert [o.topic for o in again.emitted] == [TOPICS.ingress], "only the good one, when due"


async def test_a_record_that_fails_to_be_read_is_dead_lettered_and_the_next_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only a ``RecordError`` was caught: any other error reading one record (a defect of
    Kourier's) left the worker's Kafka thread, and every next owner's, on that record."""
    log, clock = Log(), Clock()
    broken = log.delayed(T0 + 1)
    after = log.delayed(T0 + 2)
    read = delay.decode_delay

    def decode(value: bytes | None) -> object:
        if value == log.records[broken][1]:
            raise KeyError("a defect")
        return read(value)

    monkeypatch.setattr(delay, "decode_delay", decode)
    rig = Rig(log, clock)
    rig.feed()
    rig.tick(T0 + 5)
    (letter,) = [out for out in rig.emitted if out.topic == TOPICS.deadletter]
    assert dict(letter.headers or [])["kourier.reason"] in (b"apply-failed", "apply-failed")
    assert set(rig.released) == {broken, after}
    assert rig.processor.pending == 0


async def test_a_record_read_back_that_fails_is_dead_lettered_and_the_rest_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Reading back far messages caught only ``RecordError``: anything else ended the
    read-back's callback, and the messages after that one stayed pending for good."""
    log, clock = Log(), Clock()
    far = [log.delayed(T0 + 60 + i) for i in range(3)]
    read = delay.decode_delay
    rig = Rig(log, clock)
    rig.feed()

    def decode(value: bytes | None) -> object:
        if value == log.records[far[0]][1]:
            raise KeyError("a defect")
        return read(value)

    monkeypatch.setattr(delay, "decode_delay", decode)
    rig.tick(T0 + 55)
    rig.fetcher.serve()
    rig.tick(T0 + 70)
    (letter,) = [out for out in rig.emitted if out.topic == TOPICS.deadletter]
    assert dict(letter.headers or [])["kourier.reason"] in (b"apply-failed", "apply-failed")
    assert set(rig.released) == set(far)
    assert rig.processor.pending == 0


async def test_a_record_of_a_newer_version_waits_for_a_newer_worker() -> None:
    log, clock = Log(), Clock()
    newer = log.append(b"n", b'{"v": 9, "kind": "delayed"}')
    good = log.delayed(T0 + 1)
    rig = Rig(log, clock)
    rig.feed()
    rig.tick(T0 + 2)
    assert [o.topic for o in rig.emitted] == [TOPICS.ingress], "set aside: nothing"
    assert rig.committed == newer, "the commit offset waits for it"
    assert good > newer


@pytest.mark.parametrize("version", [b"null", b'"1"', b"0", b"-3", b"true", b"1.0", b"2.5"])
async def test_a_record_whose_version_is_no_version_is_dead_lettered(version: bytes) -> None:
    """Any ``v`` but 1 was taken for a newer worker's: held pending for good, never set
    aside, and copied again at every carry."""
    log, clock = Log(), Clock()
    log.append(b"n", b'{"v": ' + version + b', "kind": "delayed"}')
    rig = Rig(log, clock)
    rig.feed()
    rig.tick()
    (letter,) = rig.emitted
    assert letter.topic == TOPICS.deadletter
    assert dict(letter.headers or [])["kourier.reason"] in (b"bad-schema", "bad-schema")
    assert rig.processor.pending == 0


async def test_a_record_that_cannot_be_written_again_is_dead_lettered_not_raised() -> None:
    log, clock = Log(), Clock()
    invoke = Invoke(target=Target(service="S", key="k", handler="h"),
                    invocation_id=ids.new_id("k", PARTITIONS), mode="send")  # fmt: skip
    record = Delayed(due=datetime.fromtimestamp(T0, UTC), invoke=invoke)
    lone = encode(record).replace(b'"mode"', b'"argument":"\\ud800","mode"')
    log.append(b"k", lone)
    rig = Rig(log, clock)
    rig.feed()
    rig.tick()
    assert [o.topic for o in rig.emitted] == [TOPICS.deadletter]


# -- the horizon and read-back --------------------------------------------------------------


async def test_a_far_message_is_kept_as_an_offset_and_read_back_before_it_is_due() -> None:
    log, clock = Log(), Clock()
    rig = Rig(log, clock, horizon=30, lead=10)
    far = log.delayed(T0 + 3600)
    near = log.delayed(T0 + 20)
    rig.feed()
    assert rig.processor.pending == 2
    assert rig.processor.held == 1  # only the near one in full
    rig.tick(T0 + 3600 - 10.5)
    assert rig.fetcher.requests == []
    assert rig.released == {near: T0 + 3600 - 10.5}
    rig.tick(T0 + 3600 - 10)
    assert rig.fetcher.serve() == [far]
    assert rig.processor.held == 1
    rig.tick(T0 + 3599.999)
    assert far not in rig.released
    rig.tick(T0 + 3600)
    assert rig.released[far] == T0 + 3600


async def test_a_message_due_inside_the_read_back_window_is_held_at_once() -> None:
    log, clock = Log(), Clock()
    rig = Rig(log, clock, horizon=30, lead=10)
    first = log.delayed(T0 + 100)
    rig.feed()
    rig.tick(T0 + 90)  # the window now reaches T0 + 120
    assert rig.fetcher.serve() == [first]
    later = log.delayed(T0 + 110)  # inside the window already read back: no read-back
    rig.feed()
    assert rig.processor.held == 2
    rig.tick(T0 + 111)
    assert set(rig.released) == {first, later}
    assert rig.fetcher.requests == []


async def test_a_message_marked_fired_is_not_read_back() -> None:
    log, clock = Log(), Clock()
    rig = Rig(log, clock, horizon=30, lead=10)
    a = log.delayed(T0 + 600)
    b = log.delayed(T0 + 601)
    log.append(b"k", encode(Fired(offset=a)))  # released by a previous owner
    rig.feed()
    assert rig.processor.pending == 1
    rig.tick(T0 + 595)
    assert rig.fetcher.serve() == [b]


async def test_a_message_gone_from_the_partition_is_dropped_with_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log, clock = Log(), Clock()
    rig = Rig(log, clock, horizon=30, lead=10)
    gone = log.delayed(T0 + 600)
    kept = log.delayed(T0 + 600)
    rig.feed()
    rig.tick(T0 + 595)
    rig.fetcher.serve(gone=[gone])
    assert "no longer on the partition" in caplog.text
    assert rig.processor.commit_offset() == kept
    rig.tick(T0 + 600)
    assert set(rig.released) == {kept}


async def test_a_crowded_second_is_read_back_in_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delay, "FETCH_BATCH", 100)
    log, clock = Log(), Clock()
    rig = Rig(log, clock, horizon=30, lead=10)
    offsets = [log.delayed(T0 + 600.5) for _ in range(250)]
    rig.feed()
    rig.tick(T0 + 595)
    rig.fetcher.serve()
    asked = rig.fetcher.asked
    assert [len(a) for a in asked] == [100, 100, 50]
    assert [o for part in asked for o in part] == offsets
    rig.tick(T0 + 600.5)
    assert len(rig.released) == 250


async def test_a_million_far_messages_cost_no_records_in_memory() -> None:
    log, clock = Log(), Clock()
    rig = Rig(log, clock)
    template = log.records[log.delayed(T0 + 5 * 3600)]
    due = decode_delay(template[1])
    assert isinstance(due, Delayed)
    for i in range(1, 50_000):
        later = due.model_copy(update={"due": datetime.fromtimestamp(T0 + 5 * 3600 + i, UTC)})
        log.append(template[0], encode(later))
    rig.feed()
    assert rig.processor.pending == 50_000
    assert rig.processor.held == 0
    assert rig.processor.next_due is None
    assert rig.fetcher.requests == []


async def test_an_idle_processor_has_one_timer_for_its_next_read_back_and_none_else() -> None:
    log, clock = Log(), Clock()
    rig = Rig(log, clock)
    log.delayed(T0 + 5 * 3600)
    rig.feed()
    processor = rig.processor
    assert processor.next_due is None, "no release timer"
    assert processor.next_read_back == T0 + 5 * 3600 - delay.LEAD


# -- far messages, by due second ------------------------------------------------------------


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(0, 40)),
            st.tuples(st.just("take"), st.integers(0, 45), st.integers(1, 6)),
            st.tuples(st.just("compact"), st.integers(2, 5)),
        ),
        max_size=200,
    )
)
@settings(max_examples=300)
def test_buckets_give_the_earliest_seconds_first(operations: list[tuple[Any, ...]]) -> None:
    """Against a model: every offset comes back once, the earliest due seconds first,
    whichever way it was kept (a bucket, or alone); ``emptied`` passes no second that
    still holds one; a compact keeps what it is told to."""
    original = buckets_module.RECENT
    buckets_module.RECENT = 3  # seconds fall out of the recent ones as they would
    try:
        far = Buckets()
        model: dict[int, int] = {}  # offset -> second
        for offset, operation in enumerate(operations):
            if operation[0] == "add":
                far.add(operation[1], offset)
                model[offset] = operation[1]
            elif operation[0] == "take":
                _, before, most = operation
                taken, emptied = far.take(before, most, lambda o: True)
                due = sorted(second for second in model.values() if second < before)
                assert sorted(model[o] for o in taken) == due[:most]
                for o in taken:
                    del model[o]
                assert all(second >= emptied for second in model.values()), "emptied too far"
            else:
                divisor = operation[1]
                far.compact(lambda o, d=divisor: o % d != 0)
                model = {o: second for o, second in model.items() if o % divisor != 0}
            assert far.size == len(model)
            assert far.earliest == (min(model.values()) if model else None)
    finally:
        buckets_module.RECENT = original


def test_far_messages_each_alone_in_its_second_cost_tens_of_bytes() -> None:
    """Sends with long delays, one a second (a reminder a week on): each due second had a
    bucket of its own, about 190 bytes a message (190 MiB for a million pending)."""
    import tracemalloc

    tracemalloc.start()
    try:
        far = Buckets()
        for i in range(200_000):
            far.add(int(T0) + i, 10**9 + i)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held / 200_000 < 64, f"{held / 200_000:.0f} bytes a message"
    assert far.earliest == int(T0)


# -- carrying far messages forward ---------------------------------------------------------


@pytest.fixture
def carry_after_100(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delay, "CARRY_AFTER", 100)


def far_behind_released(log: Log, clock: Clock) -> tuple[Rig, int]:
    """A rig whose oldest pending message is due in an hour, behind 60 released ones and
    their markers (121 records)."""
    rig = Rig(log, clock, horizon=30, lead=10)
    far = log.delayed(T0 + 3600, key="far")
    for i in range(60):
        log.delayed(T0 + 1 + i / 100)
    rig.feed()
    rig.tick(T0 + 5)
    assert len(rig.released) == 60
    rig.feed()  # the markers
    assert rig.committed == far
    return rig, far


async def test_a_far_message_behind_released_records_is_carried_forward_and_released_once(
    carry_after_100: None,
) -> None:
    log, clock = Log(), Clock()
    rig, far = far_behind_released(log, clock)
    assert rig.fetcher.serve() == [far]
    rig.tick()
    copy = rig.carried[far]
    assert log.records[copy] == log.records[far], "copied byte for byte"
    assert far < rig.committed <= copy, "the committed offset has left the old record behind"
    rig.feed()
    assert rig.processor.pending == 1
    assert rig.processor.commit_offset() == copy
    assert rig.processor.carried == 1

    rig.processor.close()  # a new owner starts at the committed offset, past the original
    second = Rig(log, clock, start=rig.committed, horizon=30, lead=10)
    second.feed()
    second.tick(T0 + 3600 - 10)
    assert second.fetcher.serve() == [copy]
    second.tick(T0 + 3600)
    assert list(second.released) == [copy]
    (invoke,) = [decode_ingress(out.value) for out in second.emitted]
    original = decode_delay(log.records[far][1])
    assert isinstance(original, Delayed)
    assert invoke == original.released()


async def test_a_carry_that_moved_nothing_looks_again_after_its_pause_whatever_the_wall_clock(
    carry_after_100: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next look was due at a wall-clock time: the wall clock stepped back (NTP), the
    loop's timer fired on time, and the look found itself early and asked for no timer
    again, so nothing was carried until the wall clock caught up, the committed offset held
    back all the while."""
    monkeypatch.setattr(delay, "CARRY_RETRY", 0.05)
    log, clock = Log(), Clock()
    rig, far = far_behind_released(log, clock)
    _, deliver, _ = rig.fetcher.requests.pop(0)
    deliver([], [])  # the carry moved nothing (what it asked for was not read back)
    clock.now -= 600  # and the wall clock steps back ten minutes
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not rig.fetcher.requests:
        assert loop.time() < deadline, "no carry asked for again after its pause"
        await asyncio.sleep(0.01)
    assert rig.fetcher.asked[-1] == [far]
    rig.processor.close()


async def test_a_carry_lost_with_its_transaction_leaves_the_original_to_the_next_owner(
    carry_after_100: None,
) -> None:
    log, clock = Log(), Clock()
    rig, far = far_behind_released(log, clock)
    rig.fetcher.serve()
    assert len(rig.out) == 2  # the copy and the marker, not committed
    rig.out.clear()  # the transaction fails
    rig.processor.close()

    second = Rig(log, clock, start=rig.committed, horizon=30, lead=10)
    assert second.committed == far
    second.feed()
    second.fetcher.serve()  # it carries the message forward itself
    second.tick()
    copy = second.carried[far]
    second.feed()
    second.tick(T0 + 3600 - 10)
    second.fetcher.serve()
    second.tick(T0 + 3600)
    assert list(second.released) == [copy]
    assert len(second.emitted) == 1


async def test_a_carry_waits_until_it_would_write_at_most_an_eighth_of_the_span(
    carry_after_100: None,
) -> None:
    log, clock = Log(), Clock()
    rig = Rig(log, clock, horizon=30, lead=10)
    for i in range(7):
        log.delayed(T0 + 3600 + i)
    log.released_long_ago(200)
    asked_at = None
    while asked_at is None and rig.read < log.end:
        key, value = log.records[rig.read]
        rig.processor.on_message(key, value, rig.read)
        rig.read += 1
        if rig.fetcher.asked:
            asked_at = rig.read
    # 7 messages, a copy and a marker each, are 14 records: 1/8 of a span of 112.
    assert asked_at == 2 * 7 * delay.CARRY_SPARSE
    assert rig.fetcher.asked == [list(range(7))]
    assert rig.fetcher.urgent == [False], "a carry's read-back waits behind due read-backs"


async def test_a_carry_moves_what_lies_below_the_end_minus_a_quarter_of_carry_after(
    carry_after_100: None,
) -> None:
    log, clock = Log(), Clock()
    rig = Rig(log, clock, horizon=30, lead=10)
    oldest = log.delayed(T0 + 3600)
    log.released_long_ago(59)
    inside = log.delayed(T0 + 3600)  # offset 60: 40 behind the end when the carry starts
    log.released_long_ago(39)
    within = log.delayed(T0 + 3600)  # offset 100, read after the carry was asked
    rig.feed()
    assert rig.fetcher.asked == [[oldest, inside]]
    assert within not in rig.fetcher.asked[0]


async def test_no_carry_while_the_oldest_pending_message_is_held_in_full(
    carry_after_100: None,
) -> None:
    log, clock = Log(), Clock()
    rig = Rig(log, clock, horizon=30, lead=10)
    soon = log.delayed(T0 + 20)  # held in full: it leaves within the horizon anyway
    far = log.delayed(T0 + 3600)
    log.released_long_ago(200)
    rig.feed()
    assert rig.fetcher.asked == []
    rig.tick(T0 + 20)
    assert list(rig.released) == [soon]
    rig.feed()  # its marker: now the far message is the oldest
    assert rig.fetcher.asked == [[far]]


async def test_a_carry_under_way_does_not_hold_back_a_due_read_back(
    carry_after_100: None,
) -> None:
    log, clock = Log(), Clock()
    rig = Rig(log, clock, horizon=30, lead=10)
    far = log.delayed(T0 + 3600)
    sooner = log.delayed(T0 + 60)
    log.released_long_ago(200)
    rig.feed()
    assert rig.fetcher.asked == [[far, sooner]]  # the carry, not answered yet
    rig.tick(T0 + 50)
    assert rig.fetcher.asked[1:] == [[sooner]], "the read-back of a message soon due"
    assert rig.fetcher.urgent == [False, True]
    rig.fetcher.serve_one()  # the carry: both are copied
    rig.fetcher.serve_one()  # the read-back: its record, already carried, is not held
    rig.tick()
    assert set(rig.carried) == {far, sooner}
    rig.feed()
    rig.tick(T0 + 60)
    rig.fetcher.serve()
    rig.tick(T0 + 60)
    rig.tick(T0 + 3600 - 10)
    rig.fetcher.serve()
    rig.tick(T0 + 3600)
    assert sorted(rig.released) == sorted(rig.carried.values())
    assert len(rig.emitted) == 2


async def test_a_carry_is_cut_to_its_byte_budget_and_its_read_to_its_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(delay, "CARRY_AFTER", 100)
    log, clock = Log(), Clock()
    rig = Rig(log, clock, horizon=30, lead=10)
    far = [log.delayed(T0 + 3600 + i) for i in range(4)]
    far.append(log.delayed(T0 + 3600))  # a fifth, out of the first read's reach
    monkeypatch.setattr(delay, "CARRY_SPAN", far[-1])
    size = sum(len(part or b"") for part in log.records[far[0]])
    monkeypatch.setattr(delay, "CARRY_BYTES", 2 * size)  # two messages a carry
    log.released_long_ago(200)
    rig.feed()
    assert rig.fetcher.asked == [far[:4]]
    rig.fetcher.serve_one()
    rig.commit()
    assert sorted(rig.carried) == far[:2]
    assert rig.fetcher.asked[1] == far[2:], "the next carry reads on from the oldest left"
    rig.feed()
    for _ in range(5):  # the rest, in later carries
        rig.fetcher.serve()
        rig.tick()
        rig.feed()
    assert sorted(rig.carried)[:5] == far
    rig.tick(T0 + 3600 - 10)
    rig.fetcher.serve()
    rig.tick(T0 + 3600 + 10)
    assert len(rig.emitted) == 5


async def test_old_offsets_of_carried_messages_leave_the_buckets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(delay, "CARRY_AFTER", 100)
    monkeypatch.setattr(delay, "FETCH_BATCH", 10)
    log, clock = Log(), Clock()
    rig = Rig(log, clock, horizon=30, lead=10)
    for i in range(10):
        log.delayed(T0 + 3600 + i)
    for _ in range(20):  # each round releases 100 near messages, then carries the ten
        for _ in range(100):
            log.delayed(clock.now + 1)
        rig.feed()
        rig.tick(clock.now + 2)
        rig.feed()
        rig.fetcher.serve()
        rig.tick()
        rig.feed()
        assert rig.processor.pending == 10
    assert rig.processor.carried >= 100
    assert rig.processor._far.size <= 2 * 10 + delay.FETCH_BATCH
    rig.tick(T0 + 3600 + 20 - 10)
    rig.fetcher.serve()
    rig.tick(T0 + 3600 + 20)
    assert len(rig.emitted) == 20 * 100 + 10


# -- restarts and rebalances --------------------------------------------------------------


async def test_a_new_owner_releases_nothing_before_it_has_caught_up_and_nothing_twice() -> None:
    log, clock = Log(), Clock()
    first = Rig(log, clock)
    offsets = [log.delayed(T0 + i) for i in range(1, 6)]
    first.feed()
    first.tick(T0 + 2.5)
    assert set(first.released) == set(offsets[:2])
    start = first.processor.commit_offset()
    assert start == offsets[2]
    first.processor.close()

    clock.now = T0 + 10  # everything is overdue for the new owner
    second = Rig(log, clock, start=start)
    key, value = log.records[start]
    second.processor.on_message(key, value, start)
    second.read = start + 1
    assert not second.processor.caught_up
    second.tick()
    assert second.out == []
    assert second.released == {}
    second.feed()
    assert second.processor.caught_up
    second.tick()
    assert set(second.released) == set(offsets[2:])


async def test_a_new_owner_reading_released_messages_keeps_no_entry_for_them() -> None:
    """A new owner reads messages a marker released later in the log, overdue by then, so
    each is held in full until its marker comes. The heap of due times kept an entry for
    every one of them until the owner caught up: its memory grew with the backlog, not with
    what is pending."""
    log, clock = Log(), Clock()
    released = []
    for i in range(20_000):
        released.append(log.delayed(T0 + i / 1000))
        log.append(b"k", encode(Fired(offset=released[-1])))
    pending = log.delayed(T0 + 1)
    clock.now = T0 + 60
    rig = Rig(log, clock)
    rig.feed()
    assert rig.processor.caught_up
    assert len(rig.processor._near) <= 1024 + 2, "entries of released messages are kept"
    rig.tick()
    assert set(rig.released) == {pending}


async def steps(rigs: list[Rig], done: Callable[[], bool], most: int) -> None:
    """Run the worker's steps until ``done()``: a processor is ticked only when something
    is due (as ``streams.kafka.step`` does), read-backs are answered, and the loop's
    callbacks run; what the processors hold in full never exceeds ``most``."""
    for _ in range(200):
        for rig in rigs:
            due = rig.processor.next_due
            if due is not None and due <= rig.clock.now:
                rig.tick()
            rig.fetcher.serve()
            held = sum(r.processor.held for r in rigs)
            assert held <= most, f"{held} held in full"
        await asyncio.sleep(0)
        if done():
            return
    raise AssertionError("the processors stopped releasing")


async def test_a_new_owner_holds_at_most_max_held_of_a_backlog_of_overdue_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After an outage every message that fell due meanwhile is overdue, so within the
    horizon: a new owner held every one of them in full while it read the backlog, however
    many (a million sends due in minutes, an hour's outage). It holds BACKLOG_HELD; the rest
    wait as offsets and are read back as releases make room, in the order they were read (one
    pass over the partition, whatever their due times), each released once, none early,
    none that a marker further on says was released. Messages not yet due are held at once
    as ever: a backlog holds no short delay back."""
    monkeypatch.setattr(holding, "BACKLOG_HELD", 100)
    monkeypatch.setattr(delay, "FETCH_BATCH", 40)
    log, clock = Log(), Clock()
    overdue = [log.delayed(T0 + (i * 7919 % 1000) / 10) for i in range(1000)]
    clock.now = T0 + 3600
    soon = [log.delayed(clock.now + 5 + i / 100) for i in range(50)]
    marked = overdue[500:520]  # released by an owner whose commit did not reach past them
    for offset in marked:
        log.append(b"k", encode(Fired(offset=offset)))
    rig = Rig(log, clock)
    rig.feed()
    assert rig.processor.caught_up
    assert rig.processor.pending == 1050 - len(marked)
    assert rig.processor.held == 100 + len(soon), f"{rig.processor.held} held in full"
    assert set(soon) <= set(rig.processor._held)
    expected = set(overdue) - set(marked)
    await steps([rig], lambda: len(rig.released) == len(expected), most=100 + len(soon))
    assert set(rig.released) == expected
    asked = rig.fetcher.asked
    assert all(a[-1] < b[0] for a, b in itertools.pairwise(asked)), "read back out of order"
    assert not set(marked) & {o for request in asked for o in request}
    assert rig.processor.pending == len(soon)
    rig.tick(clock.now + 4.9)
    assert set(rig.released) == expected, "released early"
    rig.tick(clock.now + 1)
    assert set(rig.released) == expected | set(soon)
    for offset, at in rig.released.items():
        assert at >= due_of(log, offset)


async def test_max_held_counts_every_delay_partition_and_one_waiting_for_room_is_called(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker owns a delay processor per partition, and each held up to BACKLOG_HELD of an
    outage's backlog: a worker of 8 partitions held 8 times as many. One count covers them
    all. A partition whose overdue messages wait for room has nothing due of its own, so no
    step ticks it: it is called back when another partition's releases make room. Messages
    read once caught up are held at once, due or not: a backlog holds no live one back."""
    monkeypatch.setattr(holding, "BACKLOG_HELD", 100)
    monkeypatch.setattr(delay, "FETCH_BATCH", 30)
    monkeypatch.setattr(delay, "RELEASE_BATCH", 50)
    shared = Holding()
    clock = Clock()
    first, second = Log(), Log()
    backlog = [first.delayed(T0 + i / 10) for i in range(150)]
    waiting = [second.delayed(T0 + i / 10) for i in range(40)]
    clock.now = T0 + 3600
    rigs = [Rig(first, clock, holding=shared), Rig(second, clock, holding=shared)]
    for rig in rigs:
        rig.feed()
    # BACKLOG_HELD, and on each partition the last record read: it has caught up by then.
    assert rigs[0].processor.held == 101
    assert rigs[1].processor.held == 1
    assert shared.count == 102
    due_now = second.delayed(clock.now - 0.001)  # a short timer, due by the time it is read
    soon = second.delayed(clock.now + 2)
    rigs[1].feed()
    assert rigs[1].processor.held == 3, "a live message waits behind another's backlog"

    def all_released() -> bool:
        return len(rigs[0].released) + len(rigs[1].released) == 150 + 40 + 1

    await steps(rigs, all_released, most=102 + 2)
    assert set(rigs[0].released) == set(backlog)
    assert set(rigs[1].released) == {*waiting, due_now}, "overdue messages left waiting"
    rigs[1].tick(clock.now + 2)
    assert soon in rigs[1].released
    assert shared.count == 0
    late = Log()
    late.delayed(clock.now - 5)  # overdue: counted (a live one is held, not counted)
    late.delayed(clock.now + 5)
    rigs.append(Rig(late, clock, holding=shared))
    rigs[-1].feed()
    assert (rigs[-1].processor.held, shared.count) == (2, 1)
    rigs[-1].processor.close()
    assert shared.count == 0, "a closed processor's messages still counted"


async def test_live_messages_held_hold_no_backlog_of_overdue_ones_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Live messages, due within the horizon, counted against BACKLOG_HELD: a worker whose
    partitions release some 1,700 a second held 50,000 of them steadily, and another
    partition's overdue backlog was not read back while that lasted, late by as long."""
    monkeypatch.setattr(holding, "BACKLOG_HELD", 100)
    monkeypatch.setattr(delay, "FETCH_BATCH", 40)
    shared, clock = Holding(), Clock()
    busy, behind = Log(), Log()
    clock.now = T0 + 3600
    live = [busy.delayed(clock.now + 20 + i / 100) for i in range(150)]
    rigs = [Rig(busy, clock, holding=shared)]
    rigs[0].feed()
    assert (rigs[0].processor.held, shared.count) == (len(live), 0), "live messages counted"
    backlog = [behind.delayed(T0 + i / 10) for i in range(300)]  # an outage's, overdue
    rigs.append(Rig(behind, clock, holding=shared))
    rigs[1].feed()
    await steps(rigs, lambda: len(rigs[1].released) == len(backlog), most=len(live) + 100 + 1)
    assert set(rigs[1].released) == set(backlog)
    assert (rigs[0].processor.held, shared.count) == (len(live), 0)


async def test_a_backlog_read_back_after_the_clock_stepped_back_is_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read back from ``_overdue`` after a step back of the clock, a backlog's messages were
    not due yet, so held uncounted: each read-back made room for the next, and the whole
    backlog was held in full, none released until the clock caught up."""
    monkeypatch.setattr(holding, "BACKLOG_HELD", 100)
    monkeypatch.setattr(delay, "FETCH_BATCH", 40)
    log, clock = Log(), Clock()
    [log.delayed(T0 + i / 10) for i in range(300)]  # an outage's backlog
    clock.now = T0 + 3600
    rig = Rig(log, clock)
    rig.feed()
    assert rig.processor.held == 101  # BACKLOG_HELD, and the last record read
    rig.tick()  # releases them: the next are read back, as room allows
    await asyncio.sleep(0)
    assert rig.fetcher.requests, "no read-back of the backlog asked for"
    clock.now = T0 - 3600  # stepped back two hours, the read-back under way: none is due
    for _ in range(20):
        rig.fetcher.serve()
        rig.processor.tick()
        await asyncio.sleep(0)
    assert rig.processor.held <= 100, f"{rig.processor.held} of the backlog held in full"


async def test_partitions_woken_by_one_release_share_the_room_it_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each partition whose overdue messages waited for room saw the same room when one
    release made some, and read back FETCH_BATCH: a worker of 8 such partitions held
    BACKLOG_HELD and 8 batches more (690,000 with 32 partitions). Room is taken as a
    read-back is asked for."""
    monkeypatch.setattr(holding, "BACKLOG_HELD", 100)
    monkeypatch.setattr(delay, "FETCH_BATCH", 40)
    shared, clock = Holding(), Clock()
    logs = [Log() for _ in range(8)]
    backlogs = [[log.delayed(T0 + i / 10) for i in range(200)] for log in logs]
    clock.now = T0 + 3600
    rigs = [Rig(log, clock, holding=shared) for log in logs]
    for rig in rigs:
        rig.feed()
    # BACKLOG_HELD of the first, and on each partition the last record read (caught up).
    assert shared.count == 100 + 8

    def all_released() -> bool:
        return sum(len(rig.released) for rig in rigs) == 8 * 200

    await steps(rigs, all_released, most=100 + 8)
    for rig, backlog in zip(rigs, backlogs, strict=True):
        assert set(rig.released) == set(backlog)
    assert shared.count == 0


async def test_far_messages_overdue_when_read_back_take_their_room_in_holding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Far messages wait as offsets in buckets. When their time came while they could not be
    read back (a broker away, a catch-up that took minutes), every bucket is overdue at
    once, and each partition read them back FETCH_BATCH at a time up to MAX_HELD, whatever
    the worker held: 200,000 a partition against BACKLOG_HELD for them all. An overdue
    read-back takes its room in Holding, as the backlog's other overdue messages do;
    buckets not yet due are read back as ever."""
    monkeypatch.setattr(holding, "BACKLOG_HELD", 100)
    monkeypatch.setattr(delay, "FETCH_BATCH", 40)
    shared, clock = Holding(), Clock()
    logs = [Log() for _ in range(3)]
    far = [[log.delayed(T0 + 100 + i / 10) for i in range(200)] for log in logs]
    rigs = [Rig(log, clock, holding=shared) for log in logs]
    for rig in rigs:
        rig.feed()
        assert rig.processor.caught_up
    assert shared.count == 0, "held in full, not as offsets"
    clock.now = T0 + 3600
    for rig in rigs:
        rig.tick()
    live = logs[0].delayed(clock.now + 0.5)  # a short delay, sent during the drain
    rigs[0].feed()
    assert live in rigs[0].processor._held, "a live message waited behind the backlog"

    def all_released() -> bool:
        return sum(len(rig.released) for rig in rigs) == 3 * 200

    await steps(rigs, all_released, most=100 + 1)
    for rig, messages in zip(rigs, far, strict=True):
        assert set(rig.released) == set(messages)
    rigs[0].tick(clock.now + 0.5)
    assert live in rigs[0].released
    for rig, log in zip(rigs, logs, strict=True):
        assert all(at >= due_of(log, offset) for offset, at in rig.released.items())
    assert shared.count == 0
    soon = logs[0].delayed(clock.now + 60)  # not yet due: read back without asking for room
    rigs[0].feed()
    for _ in range(100):
        shared.add(1)
    rigs[0].tick(clock.now + 55)
    assert rigs[0].fetcher.serve() == [soon], "a bucket not yet due waited for room"
    assert soon in rigs[0].processor._held


async def test_a_backlog_of_due_messages_goes_a_batch_per_step_not_all_on_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loop's timer released RELEASE_BATCH, re-armed at once and released the next, so
    a backlog went out between two steps of the worker, all of it waiting in the outbox for
    the committer (a million overdue messages after an outage: hundreds of MiB). One batch
    goes on the loop; the next on the worker's next step (``tick``), and so on."""
    monkeypatch.setattr(delay, "RELEASE_BATCH", 10)
    log, clock = Log(), Clock()
    overdue = [log.delayed(T0 + i / 100) for i in range(35)]
    clock.now = T0 + 60
    rig = Rig(log, clock)
    rig.feed()
    for _ in range(20):  # the loop's timers run, as between two steps
        await asyncio.sleep(0)
    assert len(rig.out) == 2 * 10, f"{len(rig.out) // 2} released on the loop"
    assert rig.processor.next_due is not None
    assert rig.processor.next_due <= clock.now
    rig.commit()
    for step in range(1, 4):
        rig.tick()
        await asyncio.sleep(0)
        assert len(rig.released) == min(35, 10 * (step + 1))
    assert set(rig.released) == set(overdue)
    later = log.delayed(clock.now + 0.05)
    rig.feed()
    assert rig.processor.next_due == pytest.approx(due_of(log, later))
    rig.processor.close()


async def test_timers_fire_on_the_event_loop_with_the_real_clock() -> None:
    log = Log()
    out: list[Out] = []
    processor = DelayProcessor(
        partition=0,
        partitions=PARTITIONS,
        topics=TOPICS,
        start_offset=0,
        caught_up_at=0,
        emit=out.append,
        wake=lambda: None,
        fetcher=Fetcher(log),
    )
    due = time.time() + 0.05
    offset = log.delayed(due)
    processor.on_message(*log.records[offset], offset)
    await asyncio.sleep(0.02)
    assert out == []
    for _ in range(1000):
        if out:
            break
        await asyncio.sleep(0.001)
    assert time.time() >= due
    assert len(out) == 2
    processor.close()


# -- never early, never twice, whatever the order ----------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    dues=st.lists(st.floats(0, 300), min_size=1, max_size=60),
    steps=st.lists(st.floats(0.01, 40), min_size=1, max_size=30),
    restart_at=st.integers(-1, 30),
    serve_late=st.booleans(),
    seed=st.integers(0, 1000),
    carry=st.sampled_from(
        [
            None,
            (6, 1, 2000, 10**6, 1 << 30),
            (12, 4, 2000, 10**6, 1 << 30),
            (6, 1, 1, 3, 1 << 30),
            (6, 1, 2, 10, 400),
            (8, 2, 3, 10**6, 1),
        ]
    ),
    abort=st.booleans(),
    max_held=st.sampled_from([None, 1, 3]),
)
def test_never_early_never_twice_all_eventually(
    dues: list[float],
    steps: list[float],
    restart_at: int,
    serve_late: bool,
    seed: int,
    carry: tuple[int, int, int, int, int] | None,
    abort: bool,
    max_held: int | None,
) -> None:
    """``carry``: (CARRY_AFTER, CARRY_SPARSE, CARRY_BATCH, CARRY_SPAN, CARRY_BYTES), so
    that messages are carried forward often, some carries cut short; ``abort``: the
    transaction in flight at the restart fails, losing what it held; ``max_held``: so few
    messages are held in full that the rest wait as offsets, overdue or not."""
    names = ("CARRY_AFTER", "CARRY_SPARSE", "CARRY_BATCH", "CARRY_SPAN", "CARRY_BYTES")
    names += ("MAX_HELD",)
    saved = [getattr(delay, name) for name in names]
    saved_backlog = holding.BACKLOG_HELD
    values = [*(carry or saved[:5]), max_held or saved[5]]
    for name, value in zip(names, values, strict=True):
        setattr(delay, name, value)
    holding.BACKLOG_HELD = max_held or saved_backlog
    try:
        asyncio.run(_scenario(dues, steps, restart_at, serve_late, seed, abort))
    finally:
        for name, value in zip(names, saved, strict=True):
            setattr(delay, name, value)
        holding.BACKLOG_HELD = saved_backlog


async def _scenario(
    dues: list[float], steps: list[float], restart_at: int, serve_late: bool, seed: int, abort: bool
) -> None:
    shuffle = random.Random(seed)
    log, clock = Log(), Clock()
    rig = Rig(log, clock, horizon=30, lead=10)
    waiting = list(dues)
    released: dict[int, float] = {}
    emitted: list[Out] = []
    for index, step in enumerate(steps):
        for _ in range(shuffle.randint(0, 3)):  # new messages arrive as time passes
            if waiting:
                log.delayed(clock.now + waiting.pop())
        rig.feed()
        clock.now += step
        rig.tick()
        if not serve_late or index % 2:
            rig.fetcher.serve()
            rig.tick()
        rig.feed()
        if index == restart_at:  # a new owner takes over from the committed offset
            if abort:  # releases and copies made since the last commit never reach Kafka
                rig.fetcher.serve()
                rig.processor.tick()
                rig.out.clear()
            released.update(rig.released)
            emitted += rig.emitted
            rig.processor.close()
            rig = Rig(log, clock, start=rig.committed, horizon=30, lead=10)
    clock.now += 400  # past every due time
    # Copies carried forward are read, then released; overdue messages go as the room
    # BACKLOG_HELD leaves allows (one a round, with max_held=1).
    for _ in range(10 + 2 * len(dues)):
        rig.feed()
        rig.tick()
        rig.fetcher.serve()
        rig.tick()
    released.update(rig.released)
    emitted += rig.emitted
    delayed = [o for o in range(log.end) if isinstance(decode_delay(log.records[o][1]), Delayed)]
    for offset, at in released.items():
        assert at >= due_of(log, offset), f"{offset} released early"
    markers = [decode_delay(v) for _, v in log.records]
    fired = [m.offset for m in markers if isinstance(m, Fired)]
    assert sorted(fired) == sorted(set(fired)), "a message released twice"
    assert set(fired) == set(delayed)
    assert rig.processor.pending == 0
    # Each message reached the ingress topic once, however often it was carried forward.
    messages = {log.records[o][1] for o in delayed}
    invokes = [out.value for out in emitted]
    assert len(invokes) == len(set(invokes)) == len(messages)


async def test_after_reading_many_records_freed_heap_memory_goes_back_to_the_os(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trims: list[bool] = []
    monkeypatch.setattr(delay, "TRIM_AFTER", 10)
    monkeypatch.setattr(delay, "REPORT_EVERY", 0.01)
    real_trim = delay.trim_heap
    assert isinstance(real_trim(), bool)

    def trim() -> bool:
        trims.append(True)
        return True

    monkeypatch.setattr(delay, "trim_heap", trim)
    log, clock = Log(), Clock()
    rig = Rig(log, clock)
    for i in range(25):
        log.delayed(T0 + 3600 + i)
    rig.feed()
    for _ in range(100):
        if trims:
            break
        await asyncio.sleep(0.01)
    assert trims == [True]


async def test_a_record_below_the_start_offset_says_the_log_was_made_again() -> None:
    """The delay topic made again under a worker: its consumer resets to the log's start,
    and each record there raised a ValueError out of on_message (below the offset set's
    base), which ended the worker. ``LogRewound`` has the worker restore its partitions
    (the take-over then reads the log from its start)."""
    log, clock = Log(), Clock()
    log.delayed(T0 + 1)
    rig = Rig(log, clock, start=2)
    key, value = log.records[0]
    with pytest.raises(LogRewound, match="delay 0@0, below 2"):
        rig.processor.on_message(key, value, 0)
    assert rig.processor.pending == 0


async def test_after_the_clock_steps_back_far_messages_wait_as_offsets() -> None:
    """The horizon only grew: after a step back of an hour, every message read that was due
    within the hour and 30 s was held in full (memory, and the worker's holding count that
    holds a backlog back) until the clock caught up with where it had been."""
    log, clock = Log(), Clock()
    rig = Rig(log, clock)
    rig.feed()
    back = T0 - 3600  # the clock stepped back an hour
    clock.now = back
    far = log.delayed(back + 600)  # due in ten minutes, now
    near = log.delayed(back + 5)
    rig.feed()
    assert rig.processor.held == 1, "a message due in ten minutes is held in full"
    rig.tick(back + 6)
    assert set(rig.released) == {near}
    rig.tick(back + 595)  # within the read-back lead of the far one
    assert rig.fetcher.serve() == [far]
    rig.tick(back + 600)
    assert set(rig.released) == {near, far}
