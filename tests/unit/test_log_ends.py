"""``log_ends``: the high watermarks a take-over reads to, asked again through what a
restarting cluster answers (the calls it makes, with a stand-in admin client; what the
broker answers is tested on the real one, in tests/integration/test_restore.py and the
cluster tier)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import pytest
from confluent_kafka import (
    OFFSET_INVALID,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from streams.kafka.offsets import answered_offsets, latest_offsets, log_ends
from tests.unit.offset_answers import Reply, answers

A, B = TopicPartition("ns.state", 0), TopicPartition("ns.dedup", 0)


class StandInAdmin:
    """Answers each ``list_offsets`` with the next of ``rounds`` (topic -> offset, error,
    or None for no answer at all), and records metadata looks."""

    def __init__(self, *rounds: Mapping[str, Reply]) -> None:
        self.rounds = list(rounds)
        self.asked: list[list[str]] = []
        self.looked: list[str] = []

    def list_offsets(self, wanted: dict[TopicPartition, Any], **options: Any) -> dict[Any, Any]:
        replies = self.rounds.pop(0)
        self.asked.append(sorted(tp.topic for tp in wanted))
        return answers(wanted, lambda tp: replies[tp.topic])

    def list_topics(self, topic: str, timeout: float) -> None:
        self.looked.append(topic)


def test_an_old_leader_epoch_is_asked_again_after_a_fresh_look_at_the_metadata() -> None:
    """After brokers restart, the admin client's cached leader epochs are older than the
    leaders': Kafka answers FENCED_LEADER_EPOCH until the client looks again."""
    fenced = KafkaError(KafkaError.FENCED_LEADER_EPOCH)
    admin = StandInAdmin({A.topic: 7, B.topic: fenced}, {B.topic: 3})
    assert log_ends(admin, [A, B], timeout=10) == [7, 3]  # type: ignore[arg-type]
    assert admin.asked == [["ns.dedup", "ns.state"], ["ns.dedup"]], "only the failed asked again"
    assert admin.looked == ["ns.dedup"]


def test_a_partition_that_does_not_answer_is_asked_again() -> None:
    admin = StandInAdmin({A.topic: None, B.topic: 2}, {A.topic: 5})
    assert log_ends(admin, [A, B], timeout=10) == [5, 2]  # type: ignore[arg-type]


def test_a_lasting_failure_is_raised_after_the_timeout() -> None:
    away = KafkaError(KafkaError.LEADER_NOT_AVAILABLE)
    admin = StandInAdmin(*[{A.topic: away}] * 1000)
    with pytest.raises(KafkaException) as raised:
        log_ends(admin, [A], timeout=0.5)  # type: ignore[arg-type]
    assert raised.value.args[0].code() == KafkaError.LEADER_NOT_AVAILABLE


def test_an_error_that_will_not_pass_is_raised_at_once() -> None:
    denied = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    admin = StandInAdmin({A.topic: denied})
    with pytest.raises(KafkaException):
        log_ends(admin, [A], timeout=30)  # type: ignore[arg-type]
    assert len(admin.asked) == 1


class SlowMetadata(StandInAdmin):
    """Metadata looks that get no answer: each takes the whole time it is given."""

    def list_topics(self, topic: str, timeout: float) -> None:
        super().list_topics(topic, timeout)
        time.sleep(timeout)


def test_looks_at_many_topics_share_the_time_that_is_left() -> None:
    """Brokers away: every partition fails and every metadata look waits out its timeout.
    The looks at the three changelogs of a partition must fit in what is left of the
    timeout together, not take it each."""
    away = KafkaError(KafkaError.LEADER_NOT_AVAILABLE)
    topics = [TopicPartition(f"ns.{name}", 0) for name in ("state", "invocations", "dedup")]
    admin = SlowMetadata(*[{tp.topic: away for tp in topics}] * 100)
    began = time.monotonic()
    with pytest.raises(KafkaException):
        log_ends(admin, topics, timeout=1.0)  # type: ignore[arg-type]
    took = time.monotonic() - began
    assert took < 2.0, f"log_ends(timeout=1.0) took {took:.1f}s"
    assert admin.looked, "no fresh look at the metadata"


def test_a_worker_that_stops_is_not_kept_waiting() -> None:
    away = KafkaError(KafkaError.LEADER_NOT_AVAILABLE)
    admin = StandInAdmin(*[{A.topic: away}] * 1000)
    with pytest.raises(KafkaException) as raised:
        log_ends(admin, [A], timeout=30, stopping=lambda: True)  # type: ignore[arg-type]
    assert raised.value.args[0].code() == KafkaError._DESTROY
    assert len(admin.asked) == 1, "asked again after the worker began to stop"


#: What librdkafka answers for the partitions of a broker whose ListOffsets request failed
#: as a whole (timed out, connection lost): OFFSET_INVALID, and no error.
LOST = OFFSET_INVALID


def test_a_partition_whose_brokers_request_failed_is_asked_again() -> None:
    """Its ``OFFSET_INVALID`` was taken for an end: a restore read none of the changelog,
    and a delay partition counted as caught up before its ``Fired`` markers were read."""
    admin = StandInAdmin({A.topic: LOST, B.topic: 2}, {A.topic: 5})
    assert log_ends(admin, [A, B], timeout=10) == [5, 2]  # type: ignore[arg-type]
    assert admin.asked == [["ns.dedup", "ns.state"], ["ns.state"]]
    assert admin.looked == ["ns.state"], "no fresh look at the lost broker's topic"


def test_the_ends_of_a_look_leave_out_the_partitions_whose_brokers_request_failed() -> None:
    admin = StandInAdmin({A.topic: LOST, B.topic: 2}, {A.topic: LOST, B.topic: 2})
    level = IsolationLevel.READ_COMMITTED
    got = answered_offsets(admin, [A, B], level, within=1.0)  # type: ignore[arg-type]
    assert got == {(B.topic, 0): 2}
    got = asyncio.run(latest_offsets(admin, [A, B], level, within=1.0))  # type: ignore[arg-type]
    assert got == {(B.topic, 0): 2}
