"""Deleting what the delay topic no longer needs.

A delay partition's committed offset is its oldest message still pending
(``streams.engine.delay``): everything below it was released or carried forward, and a
new owner starts reading there. Those records are garbage, and the delay topic keeps
records for good (``retention.ms=-1``), so a worker deletes them itself: every
``TRIM_EVERY`` seconds it asks the brokers to delete the records below each delay offset
it has committed (Kafka's ``DeleteRecords``, as ``kafka-delete-records.sh`` does), for
each partition whose committed offset is ``TRIM_LEAST`` records past the last deletion it
asked for (a restarted worker asks once more for every partition).

A worker forgets what it committed for a delay partition it takes over
(:meth:`DelayTrimmer.took`): the next commit for it says where deleting stops. One it lets
go (:meth:`DelayTrimmer.forget`) is trimmed no more, whatever commits for it after that (a
snapshot taken before the hand-over commits after it). A
committed delay offset moves back only when the topic is deleted and made again under
running workers (the take-over then reads the new log from its start), which the README
says not to do. A refusal for want of the ``DELETE`` permission on the topic pauses the
trimming for ``REFUSED_PAUSE`` (one warning, and a word once a later deletion is allowed):
an ACL granted later takes effect without a restart.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

log = logging.getLogger("kourier.delay")

TRIM_EVERY = 60.0  # seconds between deletions
TRIM_LEAST = 10_000  # records past the last deletion before a partition is trimmed again
REFUSED_PAUSE = 600.0  # seconds before a deletion refused by an ACL is asked for again


class DelayTrimmer:
    """Deletes a delay topic's records below the offsets its worker committed."""

    def __init__(self, admin: AdminClient, topic: str) -> None:
        self._admin = admin
        self._every = TRIM_EVERY
        self._least = TRIM_LEAST
        self._next = time.monotonic() + self._every
        # What the answers change lives apart from the admin client: librdkafka's thread
        # that answers holds the callbacks' references until it has called them, and a
        # client whose last reference goes there is destroyed on its own thread, which
        # librdkafka refuses by aborting the process (a worker that stopped meanwhile).
        self._state = _Trims(topic)

    def committed(self, offsets: Iterable[TopicPartition]) -> None:
        """A transaction with ``offsets`` has committed (the committer's thread)."""
        state = self._state
        with state.lock:
            for tp in offsets:
                if tp.topic == state.topic and tp.offset >= 0 and tp.partition not in state.gone:
                    # The latest, lower too: the partition's log was made again, and its
                    # reading began again below (Ownership.rewound).
                    state.committed[tp.partition] = tp.offset
                    if tp.offset < state.trimmed.get(tp.partition, 0):
                        state.trimmed[tp.partition] = 0

    def took(self, partitions: list[int]) -> None:
        """Delay partitions taken over (the loop): what this worker committed for them
        before is no guide to what may be deleted now (a log made again is read from its
        start, below it), so nothing is until it commits for them again."""
        self._state.restart(partitions, gone=False)

    def forget(self, partitions: list[int]) -> None:
        """Delay partitions let go (the loop): nothing is deleted for them any more. What
        this worker submitted for them before commits after this (the hand-over's own
        snapshot among it), and is not taken for where deleting stops: a log made again
        holds the next owner's messages below it."""
        self._state.restart(partitions, gone=True)

    def tick(self) -> None:
        """Ask for the deletions that are due (the worker's Kafka thread, once a second)."""
        state = self._state
        with state.lock:
            now = time.monotonic()
            if state.in_flight or now < max(self._next, state.paused_until):
                return
            self._next = now + self._every
            wanted = [
                TopicPartition(state.topic, partition, offset)
                for partition, offset in sorted(state.committed.items())
                if offset - state.trimmed.get(partition, 0) >= self._least
            ]
            if not wanted:
                return
            state.in_flight = len(wanted)
        try:
            futures = self._admin.delete_records(wanted, request_timeout=30)
        except (KafkaException, ValueError, TypeError) as exc:
            with state.lock:
                state.in_flight = 0
            log.warning("delay topic: could not ask to delete released records: %s", exc)
            return
        for tp, future in futures.items():
            future.add_done_callback(functools.partial(state.done, tp))


class _Trims:
    """What the deletions asked for and answered have done: the committed offsets, what
    the brokers deleted below, the requests in flight, a refusal."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.lock = threading.Lock()
        self.committed: dict[int, int] = {}  # partition -> delay offset last committed
        self.gone: set[int] = set()  # partitions let go: their commits are not taken
        self.trimmed: dict[int, int] = {}  # partition -> offset the brokers deleted below
        self.in_flight = 0
        self.refused = False  # the last deletion was refused by an ACL (warned once)
        self.paused_until = 0.0  # monotonic: no deletion asked for before

    def restart(self, partitions: list[int], gone: bool) -> None:
        """Forget what was committed and deleted for ``partitions``; ``gone``: let go."""
        with self.lock:
            for partition in partitions:
                self.committed.pop(partition, None)
                self.trimmed.pop(partition, None)
                if gone:
                    self.gone.add(partition)
                else:
                    self.gone.discard(partition)

    def done(self, tp: TopicPartition, future: Future[object]) -> None:
        """A deletion's answer (librdkafka's background thread)."""
        error = future.exception()
        with self.lock:
            self.in_flight -= 1
            if error is None:
                self.trimmed[tp.partition] = max(self.trimmed.get(tp.partition, 0), tp.offset)
                log.debug("delay %d: records below %d deleted", tp.partition, tp.offset)
                if self.refused:
                    log.info("delay topic %s: deleting released records again", self.topic)
                    self.refused = False
                return
            kafka_error = error.args[0] if error.args else None
            refused = isinstance(kafka_error, KafkaError) and kafka_error.code() in (
                KafkaError.TOPIC_AUTHORIZATION_FAILED,
                KafkaError.CLUSTER_AUTHORIZATION_FAILED,
            )
            if refused:
                if not self.refused:
                    log.warning(
                        "delay topic %s: not allowed to delete released records (%s); grant "
                        "this worker DELETE on the topic, or delete below the committed "
                        "offsets by hand (README, Limits); asked again every %gs",
                        self.topic,
                        kafka_error,
                        REFUSED_PAUSE,
                    )
                self.refused = True
                self.paused_until = time.monotonic() + REFUSED_PAUSE
                return
        log.warning("delay %d: deleting below %d failed: %s", tp.partition, tp.offset, error)
