"""The delay topic's trimmer (streams/kafka/trim.py), with an admin client stand-in whose
deletions this test answers: what each answer changes, and that an answer still to come
keeps no admin client alive (librdkafka's answering thread would destroy it, and abort)."""

from __future__ import annotations

import logging
import weakref
from concurrent.futures import Future

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streams.kafka import trim

TOPIC = "t.delay"


class Admin:
    """``delete_records`` as confluent-kafka's: a future per partition, answered later."""

    def __init__(self) -> None:
        self.asked: list[dict[TopicPartition, Future[object]]] = []

    def delete_records(
        self, partitions: list[TopicPartition], request_timeout: float
    ) -> dict[TopicPartition, Future[object]]:
        futures: dict[TopicPartition, Future[object]] = {tp: Future() for tp in partitions}
        self.asked.append(futures)
        return futures


def trimmer(admin: Admin) -> trim.DelayTrimmer:
    trimmer = trim.DelayTrimmer(admin, TOPIC)  # type: ignore[arg-type]
    trimmer._every, trimmer._least, trimmer._next = 0.0, 10, 0.0
    return trimmer


def test_a_partition_is_trimmed_once_its_committed_offset_has_moved_far_enough() -> None:
    admin = Admin()
    t = trimmer(admin)
    t.committed([TopicPartition(TOPIC, 0, 5), TopicPartition(TOPIC, 1, 12),
                 TopicPartition("t.ingress", 2, 99)])  # fmt: skip
    t.tick()
    (asked,) = admin.asked
    assert [(tp.partition, tp.offset) for tp in asked] == [(1, 12)], "only past TRIM_LEAST"
    t.tick()
    assert len(admin.asked) == 1, "nothing more while one is in flight"
    for future in asked.values():
        future.set_result(None)
    t.committed([TopicPartition(TOPIC, 1, 20)])
    t.tick()
    assert len(admin.asked) == 1, "8 past the last deletion: not yet"
    t.committed([TopicPartition(TOPIC, 1, 22), TopicPartition(TOPIC, 0, 10)])
    t.tick()
    assert [(tp.partition, tp.offset) for tp in admin.asked[1]] == [(0, 10), (1, 22)]


def test_a_refusal_by_acl_pauses_the_trimming_and_a_grant_later_resumes_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A refusal stopped the trimming until the worker restarted: an ACL granted once the
    warning was read took no effect, and the delay topic went on growing."""
    caplog.set_level(logging.INFO, "kourier.delay")
    now = [1000.0]
    monkeypatch.setattr(trim.time, "monotonic", lambda: now[0])
    admin = Admin()
    t = trimmer(admin)
    t.committed([TopicPartition(TOPIC, 0, 50)])
    t.tick()
    (future,) = admin.asked[0].values()
    future.set_exception(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))
    t.committed([TopicPartition(TOPIC, 0, 500)])
    t.tick()
    assert len(admin.asked) == 1, "asked again at once after a refusal"
    now[0] += trim.REFUSED_PAUSE - 1
    t.tick()
    assert len(admin.asked) == 1, "asked again within the pause"
    now[0] += 1
    t.tick()
    assert len(admin.asked) == 2, "not asked again after the pause"
    (again,) = admin.asked[1].values()
    again.set_exception(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))
    assert caplog.text.count("not allowed to delete released records") == 1, "warned again"
    now[0] += trim.REFUSED_PAUSE
    t.tick()
    (granted,) = admin.asked[2].values()
    granted.set_result(None)
    assert "deleting released records again" in caplog.text
    t.committed([TopicPartition(TOPIC, 0, 600)])
    now[0] += 0.5
    t.tick()
    assert len(admin.asked) == 4, "still paused once allowed"


def test_a_deletion_still_to_be_answered_keeps_no_admin_client_alive() -> None:
    """The worker drops its admin client as it stops; a deletion asked for just before
    holds its callbacks until answered, on librdkafka's own thread. Holding the client
    there would destroy it on that thread when answered, which aborts the process."""
    admin = Admin()
    t = trimmer(admin)
    t.committed([TopicPartition(TOPIC, 0, 50)])
    t.tick()
    (pending,) = admin.asked  # what librdkafka's thread holds until it answers
    gone = weakref.ref(admin)
    del admin, t  # no cycle either: freed at once, on this thread
    assert gone() is None, "the answer to come holds the admin client"
    for future in pending.values():
        future.set_result(None)  # answered after: nothing left to destroy


def test_a_committed_offset_that_moved_back_is_where_deleting_stops() -> None:
    """The delay topic made again (Ownership.rewound reads it from its start): the highest
    offset ever committed was kept, and the new log's records below it, pending, deleted."""
    admin = Admin()
    t = trimmer(admin)
    t.committed([TopicPartition(TOPIC, 0, 500)])
    t.tick()
    for future in admin.asked[0].values():
        future.set_result(None)
    t.committed([TopicPartition(TOPIC, 0, 0)])
    t.committed([TopicPartition(TOPIC, 0, 40)])
    t.tick()
    assert [(tp.partition, tp.offset) for tp in admin.asked[1]] == [(0, 40)]


def test_a_partition_taken_over_or_let_go_is_not_trimmed_below_its_old_offset() -> None:
    """Its next owner's committed offset may be lower (a delay log made again is read from
    its start): until this worker commits for it again it deleted below the old one."""
    admin = Admin()
    t = trimmer(admin)
    t.committed([TopicPartition(TOPIC, 0, 500), TopicPartition(TOPIC, 1, 500)])
    t.forget([0])
    t.tick()
    assert [(tp.partition, tp.offset) for tp in admin.asked[0]] == [(1, 500)]
    t.took([2])
    t.committed([TopicPartition(TOPIC, 2, 40)])
    for future in admin.asked[0].values():
        future.set_result(None)
    t.tick()
    assert [(tp.partition, tp.offset) for tp in admin.asked[1]] == [(2, 40)], "taken: trimmed"


def test_what_commits_for_a_partition_after_it_was_let_go_is_not_trimmed_below() -> None:
    """The hand-over's own snapshot (and any submitted before it) commits after the
    partition was let go, and put its offset back: the worker went on deleting below it on
    a partition another worker owns now, whose log, made again, holds its messages there."""
    admin = Admin()
    t = trimmer(admin)
    t.forget([0])
    t.committed([TopicPartition(TOPIC, 0, 500)])  # the hand-over's snapshot, committed
    t.tick()
    assert admin.asked == [], "a partition let go was trimmed"
    t.took([0])  # back here: its commits count again
    t.committed([TopicPartition(TOPIC, 0, 700)])
    t.tick()
    assert [(tp.partition, tp.offset) for tp in admin.asked[0]] == [(0, 700)]
