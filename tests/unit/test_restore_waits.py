"""How a restore waits: what it reports (a transaction open below the end it reads to, and
nothing while it merely has records left to read), and when it gives up (when it has read
nothing for ``RESTORE_TIMEOUT``). With stand-ins for the admin client and the restorer; the
waiting itself is tested on a real broker in tests/integration/test_restore.py."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from confluent_kafka import IsolationLevel, KafkaError, KafkaException, TopicPartition

from streams.kafka import restore
from streams.kafka.restore import RestoreError, _note_open, restore_partitions
from streams.wire.topics import Topics
from tests.threads import in_thread
from tests.unit.offset_answers import answers

TOPICS = Topics("ns")
STATE = TOPICS.state


class Admin:
    """Answers ``list_offsets`` with ``stable``, asked read committed: the last stable
    offset; ``None`` leaves the request unanswered."""

    def __init__(self, stable: int | None) -> None:
        self.stable = stable

    def list_offsets(self, wanted: dict[TopicPartition, Any], **options: Any) -> dict[Any, Any]:
        assert options["isolation_level"] == IsolationLevel.READ_COMMITTED
        return answers(wanted, lambda tp: self.stable)


def notes(
    caplog: pytest.LogCaptureFixture, stable: int | None, position: int, end: int
) -> list[str]:
    caplog.clear()
    behind = [TopicPartition(STATE, 0, position)]
    with caplog.at_level(logging.WARNING, logger="kourier.restore"):
        _note_open(Admin(stable), behind, {(STATE, 0): end})  # type: ignore[arg-type]
    return [record.getMessage() for record in caplog.records]


def test_a_reader_held_at_an_open_transaction_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert notes(caplog, stable=40, position=40, end=50) == [
        "restoring ns.state [0] waits for a transaction open at offset 40 to end"
    ]
    assert notes(caplog, stable=0, position=-1001, end=50), "nothing read: held at offset 0"


def test_no_report_when_no_transaction_is_open_below_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A slow reader that has not fetched yet, with every transaction ended: the last
    stable offset is the end, and nothing waits for a transaction."""
    assert notes(caplog, stable=50, position=-1001, end=50) == []
    assert notes(caplog, stable=50, position=20, end=50) == []


def test_no_report_while_records_before_the_open_transaction_are_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert notes(caplog, stable=40, position=10, end=50) == []


def test_a_leader_that_does_not_answer_is_left_out(caplog: pytest.LogCaptureFixture) -> None:
    assert notes(caplog, stable=None, position=40, end=50) == []


class Ends:
    """Answers ``list_offsets`` read uncommitted: ``end`` for the state changelog, 0 for the
    other two (nothing to read there)."""

    def __init__(self, end: int) -> None:
        self.end = end

    def list_offsets(self, wanted: dict[TopicPartition, Any], **options: Any) -> dict[Any, Any]:
        return answers(wanted, lambda tp: self.end if tp.topic == STATE else 0)

    def list_topics(self, topic: str, timeout: float) -> None:
        pass


class Failing:
    """A message that is an error, as a consumer returns while brokers are away."""

    def error(self) -> KafkaError:
        return KafkaError(KafkaError._TRANSPORT)


class Restorer:
    """A restorer whose every poll waits out its timeout, returns ``message`` (or nothing)
    and moves the position ``step`` offsets on, as skipping aborted records does."""

    def __init__(self, message: object | None, step: int) -> None:
        self.message, self.step = message, step
        self.offset = -1001  # none, before the first assignment

    def list_topics(self, topic: str, timeout: float) -> None:
        pass

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.offset = 0

    def unassign(self) -> None:
        pass

    def poll(self, timeout: float) -> object | None:
        time.sleep(timeout)
        self.offset += self.step
        return self.message

    def consume(self, limit: int, timeout: float) -> list[object]:
        return []

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.offset) for tp in partitions]


class Partition0:
    partition = 0

    def restore_state(self, key: bytes, value: bytes | None) -> None:
        raise AssertionError("no record was read")

    restore_invocation = restore_dedup = restore_state


def restoring(restorer: Restorer, end: int) -> list[BaseException]:
    thread, errors = in_thread(
        lambda: restore_partitions(restorer, Ends(end), TOPICS, [Partition0()])  # type: ignore[arg-type]
    )
    thread.join(10)
    assert not thread.is_alive(), "the restore neither ended nor gave up"
    return errors


def test_a_restore_that_gets_only_errors_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Brokers away: every poll returns an error. That is no progress, and the take-over
    must start again rather than wait for ever."""
    monkeypatch.setattr(restore, "RESTORE_TIMEOUT", 0.3)
    errors = restoring(Restorer(Failing(), step=0), end=5)
    assert [type(error) for error in errors] == [RestoreError]


def test_a_restore_whose_position_keeps_moving_does_not_give_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A long run of aborted records: the position moves though no record is returned.
    That is progress: the restore reads on to its end (ten polls, longer than the timeout)."""
    monkeypatch.setattr(restore, "RESTORE_TIMEOUT", 0.3)
    assert restoring(Restorer(None, step=1), end=10) == []


class Record:
    """A changelog record as the restorer returns it."""

    def __init__(self, topic: str, offset: int) -> None:
        self._topic, self.offset_ = topic, offset

    def error(self) -> None:
        return None

    def key(self) -> bytes:
        return f"k{self.offset_}".encode()

    def value(self) -> bytes:
        return b"v"

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0


class Log:
    """The state changelog of partition 0 as a restorer reads it: ``written`` records, of
    which the first ``withheld`` are passed over without being returned (aborted); asked
    for its end, it answers ``ends`` in turn (the last one from then on)."""

    def __init__(self, written: int, ends: list[int], withheld: int = 0) -> None:
        self.written, self.ends, self.withheld = written, ends, withheld
        self.at = -1001  # the restorer's position
        self.assigned: list[list[tuple[str, int, int]]] = []

    def list_offsets(self, wanted: dict[TopicPartition, Any], **options: Any) -> dict[Any, Any]:
        end = self.ends.pop(0) if len(self.ends) > 1 else self.ends[0]
        return answers(wanted, lambda tp: end if tp.topic == STATE else 0)

    def list_topics(self, topic: str, timeout: float) -> None:
        pass

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned.append([(tp.topic, tp.partition, tp.offset) for tp in partitions])

    def unassign(self) -> None:
        pass

    def poll(self, timeout: float) -> object | None:
        start = max(self.at, 0)
        if start < self.withheld:
            self.at = self.withheld
            return None
        if start >= self.written:
            return None
        self.at = start + 1
        return Record(STATE, start)

    def consume(self, limit: int, timeout: float) -> list[object]:
        return []

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.at) for tp in partitions]


class Sink:
    partition = 0

    def __init__(self) -> None:
        self.keys: list[bytes] = []

    def restore_state(self, key: bytes, value: bytes | None) -> None:
        self.keys.append(key)

    def restore_invocation(self, key: bytes, value: bytes | None) -> None:
        raise AssertionError("nothing is read from the invocations changelog")

    restore_dedup = restore_invocation


def restore_from(changelog: Log) -> Sink:
    sink = Sink()
    restore_partitions(changelog, changelog, TOPICS, [sink])  # type: ignore[arg-type]
    return sink


def test_an_end_asked_too_early_is_asked_again_and_read_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first answer said the state changelog was empty (a leader that had not caught
    up, say): the second, once read, says otherwise, and the restore reads every record."""
    changelog = Log(written=3, ends=[0, 3])
    with caplog.at_level(logging.INFO, logger="kourier.restore"):
        sink = restore_from(changelog)
    assert sink.keys == [b"k0", b"k1", b"k2"], "records below the end asked again were not read"
    assert changelog.assigned == [[(STATE, 0, 0)]]
    assert any("ends moved once read" in r.getMessage() for r in caplog.records)


def test_a_partition_read_part_way_goes_on_from_where_it_is() -> None:
    changelog = Log(written=5, ends=[2, 5])
    assert restore_from(changelog).keys == [b"k0", b"k1", b"k2", b"k3", b"k4"]
    assert changelog.assigned == [[(STATE, 0, 0)]], "assigned again, so read again from 0"


def test_ends_that_keep_moving_fail_the_restore() -> None:
    with pytest.raises(RestoreError, match="ends keep moving"):
        restore_from(Log(written=10, ends=[1, 2, 3, 4]))


def test_a_changelog_that_gave_no_record_below_its_end_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="kourier.restore"):
        assert restore_from(Log(written=4, ends=[4], withheld=4)).keys == []
    assert [r.getMessage() for r in caplog.records] == [
        "restoring ns.state [0]: no record read below its end 4 (every one aborted, "
        "or none delivered)"
    ]


class Logs:
    """Two changelogs of partition 0 (state and invocations) as a restorer reads them, each
    with its own position; asked for their ends, they answer ``ends`` in turn."""

    def __init__(self, written: dict[str, int], ends: list[dict[str, int] | KafkaError]) -> None:
        self.written, self.ends = written, ends
        self.at: dict[str, int] = {}
        self.assigned: list[list[tuple[str, int]]] = []
        self.unassigned = 0

    def list_offsets(self, wanted: dict[TopicPartition, Any], **options: Any) -> dict[Any, Any]:
        ends = self.ends.pop(0) if len(self.ends) > 1 else self.ends[0]
        if isinstance(ends, KafkaError):
            return answers(wanted, lambda tp: ends)
        return answers(wanted, lambda tp: ends.get(tp.topic, 0))

    def list_topics(self, topic: str, timeout: float) -> None:
        pass

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned.append([(tp.topic, tp.offset) for tp in partitions])
        self.at = {tp.topic: tp.offset for tp in partitions}

    def unassign(self) -> None:
        self.unassigned += 1
        self.at = {}

    def poll(self, timeout: float) -> object | None:
        for topic, offset in self.at.items():
            if offset < self.written[topic]:
                self.at[topic] = offset + 1
                return Record(topic, offset)
        return None

    def consume(self, limit: int, timeout: float) -> list[object]:
        return []

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.at.get(tp.topic, -1001))
                for tp in partitions]  # fmt: skip


class Both(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.invocations: list[bytes] = []

    def restore_invocation(self, key: bytes, value: bytes | None) -> None:
        self.invocations.append(key)


def test_a_changelog_found_later_is_read_with_the_others_going_on_where_they_are() -> None:
    invocations = TOPICS.invocations
    logs = Logs({STATE: 3, invocations: 2}, [{STATE: 3}, {STATE: 3, invocations: 2}])
    sink = Both()
    restore_partitions(logs, logs, TOPICS, [sink])  # type: ignore[arg-type]
    assert sink.keys == [b"k0", b"k1", b"k2"], "state records read twice or not at all"
    assert sink.invocations == [b"k0", b"k1"]
    assert logs.assigned == [[(STATE, 0)], [(STATE, 3), (invocations, 0)]]
    assert logs.unassigned == 1


def test_a_failed_restore_lets_go_of_its_partitions() -> None:
    logs = Logs({STATE: 3}, [{STATE: 3}, KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)])
    with pytest.raises(KafkaException):
        restore_partitions(logs, logs, TOPICS, [Both()])  # type: ignore[arg-type]
    assert logs.unassigned == 1, "the restorer keeps its partitions assigned"


class Stopping(Log):
    """The state changelog, read to its end 3 by the last restore, whose fetch stops only
    after ``polls`` more positions are asked: librdkafka keeps the old position until then,
    through an assignment, which does not reset it."""

    def __init__(self, polls: int) -> None:
        super().__init__(written=3, ends=[3])
        self.at, self.left = 3, polls

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        if self.left:
            self.left -= 1
            if not self.left:  # stopped now: the position is forgotten
                self.at = -1001
        return super().position(partitions)


def test_a_changelog_whose_last_fetch_has_not_stopped_is_read_once_it_has() -> None:
    """Assigned again before its fetch from the last restore had stopped, the changelog
    showed that restore's end at once: taken for read, it restored nothing."""
    assert restore_from(Stopping(polls=5)).keys == [b"k0", b"k1", b"k2"]


class Restarted(Logs):
    """As librdkafka does: assigned again, a changelog already assigned stops and starts its
    fetch (at the offset given), and has no position until a record comes; at its end,
    none comes."""

    def __init__(self, written: dict[str, int], ends: list[dict[str, int] | KafkaError]) -> None:
        super().__init__(written, ends)
        self.fetching: dict[str, int] = {}  # where each fetch reads next

    def assign(self, partitions: list[TopicPartition]) -> None:
        kept = set(self.at)
        super().assign(partitions)
        self.fetching = dict(self.at)
        for topic in kept:
            self.at[topic] = -1001

    def poll(self, timeout: float) -> object | None:
        for topic, offset in self.fetching.items():
            if offset < self.written[topic]:
                self.fetching[topic] = self.at[topic] = offset + 1
                return Record(topic, offset)
        return None


def test_a_changelog_read_to_its_end_is_not_waited_for_again_when_another_is_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A changelog found later (its end 0 at first) was assigned with those read already:
    their fetches restarted, with no position until a record came, and one read to its end
    got none, so the restore waited for it until ``RESTORE_TIMEOUT`` and failed."""
    monkeypatch.setattr(restore, "RESTORE_TIMEOUT", 1.0)
    invocations = TOPICS.invocations
    logs = Restarted({STATE: 3, invocations: 2}, [{STATE: 3}, {STATE: 3, invocations: 2}])
    sink = Both()
    restore_partitions(logs, logs, TOPICS, [sink])  # type: ignore[arg-type]
    assert sink.keys == [b"k0", b"k1", b"k2"]
    assert sink.invocations == [b"k0", b"k1"]
