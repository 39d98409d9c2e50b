"""Consumer helpers: topic and offset queries that ride out a broker's transient answers (a
new topic not listed yet or its leader not ready, a broker restarting), and low-latency
batch reads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import operator
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec
from confluent_kafka.admin._metadata import ClusterMetadata, TopicMetadata

from streams.errors import KourierError
from streams.settings import Settings

# Answers that pass by themselves: leadership moving or not yet settled, a broker restarting.
_TRANSIENT = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
    KafkaError._ALL_BROKERS_DOWN,
    # Asked with a leader epoch from before an election, or of a leader not ready yet.
    KafkaError.FENCED_LEADER_EPOCH,
    KafkaError.UNKNOWN_LEADER_EPOCH,
    KafkaError.OFFSET_NOT_AVAILABLE,
    KafkaError.REPLICA_NOT_AVAILABLE,
    # Local metadata not known yet, as right after the broker restarted.
    KafkaError._UNKNOWN_PARTITION,
    KafkaError._UNKNOWN_TOPIC,
}


log = logging.getLogger("kourier.topics")

_TRY = 3.0  # seconds per offset query before the metadata is refreshed

#: How long the broker may hold a fetch with nothing to return. Kafka answers a waiting
#: fetch as soon as records arrive (for ``read_committed``, as soon as their transaction
#: commits), so a long wait costs no latency; a short one makes every idle consumer send
#: hundreds of empty fetches a second, which the broker pays for in CPU.
FETCH_WAIT_MS = 500


def transient(error: KafkaError) -> bool:
    return bool(error.retriable()) or error.code() in _TRANSIENT


#: Kafka's refusals of a principal its ACLs do not allow (README, Security; `kourier acls`).
REFUSED = (
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
)


def look_again(client: Consumer | AdminClient, topics: Iterable[str], within: float) -> None:
    """Refresh the client's metadata of ``topics``, best effort, taking at most about
    ``within`` seconds for all of them. A client keeps what its last look found: after a
    broker restart a partition may stay unknown until its next periodic refresh (minutes),
    and a leader answers a request carrying a leader epoch from before an election with
    ``FENCED_LEADER_EPOCH``, until the client looks again."""
    deadline = time.monotonic() + within
    for topic in topics:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        with contextlib.suppress(KafkaException):
            client.list_topics(topic, timeout=max(0.1, left))


#: librdkafka's errors for a connection that the same settings will never make: a TLS
#: handshake that failed (a certificate not trusted) and a SASL login the broker refused
#: (README, Security). librdkafka gives the same codes to a few passing failures, which
#: name the transport (a connection lost during the SASL handshake: "Broker transport
#: failure"; "SSL transport error"); those are not refusals.
CONNECTION_REFUSED = (KafkaError._SSL, KafkaError._AUTHENTICATION)

_errors = logging.getLogger("kourier.kafka")


#: What librdkafka's passing failures with those codes say.
_PASSING = ("Broker transport failure", "SSL transport error")


class Refusals:
    """A client's ``error_cb``: keeps the last connection the brokers refused
    (``CONNECTION_REFUSED``). Every error goes to the debug log. librdkafka logs a line of
    its own for each connection that fails, not for "N/N brokers are down", which only the
    callback gets. librdkafka calls it from the client's ``poll``."""

    def __init__(self) -> None:
        self.last: KafkaError | None = None

    def __call__(self, error: KafkaError) -> None:
        said = error.str()
        _errors.debug("Kafka: %s", said)
        if error.code() in CONNECTION_REFUSED and not any(p in said for p in _PASSING):
            self.last = error


def cluster_metadata(
    client: Consumer | Producer | AdminClient, timeout: float, refusals: Refusals | None = None
) -> ClusterMetadata:
    """``client.list_topics``, waiting up to ``timeout`` seconds. With ``refusals`` (the
    client's ``error_cb``), while no broker can be used at all (``_TRANSPORT``) it asks in
    tries of a second, after each of which it serves the client's callbacks (``poll(0)``:
    so only for a client with nothing assigned yet, whose poll returns no record); a
    connection the brokers refused then raises at once, with their reason, rather than as
    a timeout once ``timeout`` has passed. A broker that took the request but is slow to
    answer gets the rest of ``timeout`` in one wait, as without ``refusals``."""
    if refusals is None:
        return client.list_topics(timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            return client.list_topics(timeout=max(0.1, min(1.0, left)))
        except KafkaException as exc:
            client.poll(0)
            if refusals.last is not None:
                raise KafkaException(refusals.last) from None
            error = exc.args[0]
            if not transient(error) or time.monotonic() >= deadline:
                raise
            if error.code() != KafkaError._TRANSPORT:  # a broker has the request: wait for it
                return client.list_topics(timeout=max(0.1, deadline - time.monotonic()))


#: How long a topic that is not listed is asked for again before it counts as missing.
TOPIC_GRACE = 10.0


def listed_topics(
    client: Consumer | Producer | AdminClient,
    names: Sequence[str],
    grace: float = TOPIC_GRACE,
    refusals: Refusals | None = None,
) -> tuple[dict[str, TopicMetadata], list[str]]:
    """The cluster's topic metadata, and which of ``names`` it does not list (or lists with
    an error, as a topic whose leaders are not elected yet). On a cluster, the broker asked
    may learn of a topic a moment after the controller said it was created, so an absent
    topic is asked for again, for up to ``grace`` seconds, before it is returned as absent;
    an error that does not pass by itself (not authorised) is returned at once. With the
    client's ``refusals`` (a client with nothing assigned yet), a connection refused raises
    at once (:func:`cluster_metadata`)."""
    deadline = time.monotonic() + grace
    logged = False
    while True:
        metadata: dict[str, TopicMetadata] = cluster_metadata(client, 30.0, refusals).topics
        errors = {n: metadata[n].error for n in names if n in metadata}
        absent = [n for n in names if n not in errors or errors[n] is not None]
        final = any(e is not None and not transient(e) for e in errors.values())
        if not absent or final or time.monotonic() >= deadline:
            return metadata, absent
        if not logged:
            log.info("topics %s are not ready yet; asking again for %gs", absent, grace)
            logged = True
        time.sleep(0.2)


class MissingTopics(KourierError, RuntimeError):
    """The namespace's topics do not exist (``kourier topics create`` makes them)."""


def required_topics(
    client: Consumer | Producer | AdminClient,
    names: Sequence[str],
    grace: float = TOPIC_GRACE,
    refusals: Refusals | None = None,
) -> dict[str, TopicMetadata]:
    """The cluster's topic metadata once it lists every one of ``names`` (``listed_topics``,
    with ``refusals`` as there); ``MissingTopics`` when it does not within ``grace``, naming
    the first absent one, preferring one listed with an error, which says more than one
    not listed at all."""
    metadata, absent = listed_topics(client, names, grace, refusals)
    if absent:
        first = next((name for name in absent if name in metadata), absent[0])
        raise MissingTopics(absent_topic(metadata, first))
    return metadata


def absent_topic(metadata: dict[str, TopicMetadata], name: str) -> str:
    """Why ``name`` counts as absent, with the advice that fits, for an error message."""
    listed = metadata.get(name)
    if listed is None or listed.error is None:
        # A broker leaves out of its answer the topics a principal may not describe.
        return (
            f"topic {name} is missing: run `kourier topics create` (with Kafka ACLs, a "
            "topic this principal may not describe looks missing: `kourier acls`)"
        )
    return f"topic {name} is not usable: {listed.error.str()}"


def watermarks(consumer: Consumer, tp: TopicPartition, timeout: float = 30.0) -> tuple[int, int]:
    """``(low, high)`` of ``tp``; with ``isolation.level=read_committed`` the high mark is the
    last stable offset. Retriable errors are retried until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        # Short tries: a partition whose leader just died answers only once the client
        # has asked for fresh metadata, which happens between tries.
        left = max(0.1, min(_TRY, deadline - time.monotonic()))
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=left)
            return int(low), int(high)
        except KafkaException as exc:
            if not transient(exc.args[0]) or time.monotonic() > deadline:
                raise
            look_again(consumer, [tp.topic], min(_TRY, deadline - time.monotonic()))
            time.sleep(0.1)


def log_ends(
    admin: AdminClient,
    partitions: list[TopicPartition],
    timeout: float = 30.0,
    stopping: Callable[[], bool] = lambda: False,
) -> list[int]:
    """The high watermarks of ``partitions``, in order: past every record written to them,
    committed, aborted or in a transaction still open (blocking). Partitions that answer
    nothing, or something transient, are asked again until ``timeout``, after a fresh look
    at their topics' metadata: the admin client keeps leaders and their epochs from its last
    look, and after brokers restart its requests carry an old epoch until it looks again.
    Raises :class:`KafkaException` past ``timeout``, and before asking again when
    ``stopping()``."""
    deadline = time.monotonic() + timeout
    ends: dict[tuple[str, int], int] = {}
    while True:
        left = max(0.1, min(_TRY, deadline - time.monotonic()))
        asked = [tp for tp in partitions if (tp.topic, tp.partition) not in ends]
        futures = _ask_latest(admin, asked, IsolationLevel.READ_UNCOMMITTED, left)
        failed: dict[str, KafkaError] = {}
        for tp, future in futures.items():
            error = future.exception() if future.done() else None
            end = _answered(future)
            if end is not None:
                ends[(tp.topic, tp.partition)] = end
            elif error is None:
                failed[tp.topic] = KafkaError(KafkaError._TIMED_OUT, "no answer")
            elif isinstance(error, KafkaException) and not transient(error.args[0]):
                raise error
            else:
                failed[tp.topic] = (
                    error.args[0]
                    if isinstance(error, KafkaException)
                    else KafkaError(KafkaError._FAIL, repr(error))
                )
        if not failed:
            return [ends[(tp.topic, tp.partition)] for tp in partitions]
        if time.monotonic() > deadline:
            raise KafkaException(next(iter(failed.values())))
        if stopping():
            raise KafkaException(KafkaError(KafkaError._DESTROY, "stopping"))
        look_again(admin, failed, min(_TRY, deadline - time.monotonic()))
        time.sleep(0.1)


async def high_watermarks(
    admin: AdminClient, topic: str, partitions: Iterable[int], within: float
) -> dict[int, int]:
    """The high watermarks (``read_uncommitted`` ends: past every record written,
    committed or not) of ``partitions`` of ``topic``, asked of their leaders in one request
    per broker; a partition that does not answer ``within`` seconds is left out."""
    tps = [TopicPartition(topic, p) for p in partitions]
    ends = await latest_offsets(admin, tps, IsolationLevel.READ_UNCOMMITTED, within)
    return {p: offset for (_, p), offset in ends.items()}


def _ask_latest(
    admin: AdminClient, partitions: Iterable[TopicPartition], level: IsolationLevel, within: float
) -> dict[TopicPartition, concurrent.futures.Future[Any]]:
    """Ask the ends of ``partitions`` at ``level``, one request per broker, and wait up to
    ``within`` seconds for the answers (blocking); the futures, answered or not."""
    futures = admin.list_offsets(
        {TopicPartition(tp.topic, tp.partition): OffsetSpec.latest() for tp in partitions},
        isolation_level=level,
        request_timeout=within,
    )
    concurrent.futures.wait(futures.values(), timeout=within)
    return futures


def answered_offsets(
    admin: AdminClient, partitions: Iterable[TopicPartition], level: IsolationLevel, within: float
) -> dict[tuple[str, int], int]:
    """:func:`latest_offsets`, blocking, for a thread that is not the event loop: the
    partitions that failed or did not answer ``within`` seconds are left out."""
    try:
        futures = _ask_latest(admin, partitions, level, within)
    except KafkaException:
        return {}
    answered = {tp: _answered(future) for tp, future in futures.items()}
    return {(tp.topic, tp.partition): end for tp, end in answered.items() if end is not None}


def _answered(future: concurrent.futures.Future[Any] | asyncio.Future[Any]) -> int | None:
    """The end a ``list_offsets`` future gave, or None when it failed or has not answered.
    A request to a broker that failed as a whole (it timed out, its connection was lost)
    answers its partitions with ``OFFSET_INVALID`` and no error: librdkafka's ListOffsets
    fans out one request per leader and merges no error of one (``rdkafka_admin.c``). Taken
    for an end, that offset made a restore read nothing and a delay partition caught up."""
    if not future.done() or future.exception() is not None:
        return None
    end: int = future.result().offset
    return end if end >= 0 else None


async def latest_offsets(
    admin: AdminClient, partitions: Iterable[TopicPartition], level: IsolationLevel, within: float
) -> dict[tuple[str, int], int]:
    """``(topic, partition) -> end`` of ``partitions``: the high watermark when ``level`` is
    ``READ_UNCOMMITTED``, the last stable offset (the first offset of the oldest transaction
    still open there, or the high watermark) when ``READ_COMMITTED``. Asked of the leaders
    in one request per broker; a partition that does not answer ``within`` seconds is left
    out."""
    latest = {tp: OffsetSpec.latest() for tp in partitions}
    if not latest:
        return {}
    futures = admin.list_offsets(latest, isolation_level=level, request_timeout=within)
    waiting = {asyncio.wrap_future(future): tp for tp, future in futures.items()}
    try:
        done, _ = await asyncio.wait(waiting, timeout=within)  # one deadline for all
    finally:
        for future in waiting:
            future.cancel()  # those that did not answer in time (or all, when cancelled)
    answered = {tp: _answered(f) for f, tp in waiting.items() if f in done}  # (not cancelled)
    return {(tp.topic, tp.partition): end for tp, end in answered.items() if end is not None}


def consume_ready(
    consumer: Consumer,
    limit: int,
    timeout: float,
    rebalances: Callable[[], int] | None = None,
) -> list[Message]:
    """Wait up to ``timeout`` for one record, then take whatever else is already fetched.

    ``Consumer.consume(n, timeout)`` waits for all ``n`` records or the whole timeout,
    which would add the timeout to the latency of every lone record.

    ``rebalances`` counts a group consumer's rebalance callbacks: one run inside the second
    read drops the first record, read before it (librdkafka drops those of the second read
    that were), as its partition, if assigned again, is read again from its committed
    offset.
    """
    first = consumer.poll(timeout)
    if first is None:
        return []
    began = 0 if rebalances is None else rebalances()
    rest = consumer.consume(limit - 1, 0)
    if rebalances is not None and rebalances() != began:
        return list(rest)
    return [first, *rest]


#: ``Message.headers``, called through the interpreter's generic call path.
_HEADERS = operator.methodcaller("headers")


def headers_of(message: Message) -> list[tuple[str, str | bytes | None]] | None:
    """A record's headers (none: empty), or None when one's name is not UTF-8, as Kafka's
    header keys are (another client wrote it).

    confluent-kafka then returns a list holding a NULL name with the decoding error left
    set; the generic call path turns that into ``SystemError`` here. Called as
    ``message.headers()``, once Python 3.11 has specialized the call (after a few records)
    it returns that list: the error surfaced at some later call, and printing the list
    crashed the process."""
    try:
        headers = _HEADERS(message) or []
    except (SystemError, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    return list(headers.items()) if isinstance(headers, dict) else headers


def records_of(batch: list[Message]) -> tuple[list[Message], list[KafkaError]]:
    """The records of ``batch``, and its errors other than a partition's end."""
    records, errors = [], []
    for message in batch:
        error = message.error()
        if error is None:
            records.append(message)
        elif error.code() != KafkaError._PARTITION_EOF:
            errors.append(error)
    return records, errors


def worker_consumer(settings: Settings, group: str, fetch_wait_ms: int = FETCH_WAIT_MS) -> Consumer:
    """A ``read_committed`` consumer as the worker uses them: in ``group`` (the workers'
    group, or one of its own for restores), committing nothing by itself."""
    return Consumer(
        settings.client_config(
            {
                "log_level": 4,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                # Range assigns partition p of the ingress and the delay topic to one worker,
                # and spreads both evenly (cooperative-sticky balances their sum instead).
                "partition.assignment.strategy": "range",
                "fetch.wait.max.ms": fetch_wait_ms,
                # The broker's minimum, so that a dead worker's partitions move on quickly.
                "session.timeout.ms": 6_000,
                "heartbeat.interval.ms": 1_000,
                # A join waits for the subscribed topics' metadata; if that request fails (its
                # broker went down), librdkafka's source leaves the join waiting until the
                # periodic refresh (rd_kafka_cgrp_join, join-state wait-metadata): 5 min by
                # default, 10 s here, at one metadata request per 10 s per consumer.
                "topic.metadata.refresh.interval.ms": 10_000,
            }
        )
    )


#: Where a group's committed offsets live.
OFFSETS_TOPIC = "__consumer_offsets"


def read_on_from(
    consumer: Consumer, taken: Sequence[TopicPartition], timeout: float = 30.0
) -> None:
    """Put the group's ``consumer`` at the offsets of partitions ``taken`` over (a
    partition's start where none is committed). A partition whose fetch has not started
    (its assignment's own read of the committed offset still under way) cannot be sought:
    librdkafka answers ``_STATE``. The assignment is then made again, at those offsets,
    rather than the ``KafkaException`` end the worker (an eager group's consumer may be
    assigned at any time).

    A seek forgets the partition's position before it returns; an assignment does not:
    librdkafka forgets it once the partition's fetch has stopped, on another thread, and
    until then ``position()`` gives the one from before. A delay partition's processor took
    that for how far it had read, and committed it: the messages between its committed
    offset and there were never released. So the assignment returns once no partition
    holds a position, and raises ``KafkaException`` (``_TIMED_OUT``) after ``timeout``."""
    at = {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
          for tp in taken}  # fmt: skip
    for (topic, partition), offset in at.items():
        try:
            consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException as exc:
            log.warning("cannot seek %s [%d] (%s): assigning again at the offsets read",
                        topic, partition, exc)  # fmt: skip
            break
    else:
        return
    # The others (none taken over here) where the group's committed offsets say: what
    # assignment() gives is the offset of the last assign, perhaps an explicit one.
    assigned = [
        TopicPartition(tp.topic, tp.partition, at.get((tp.topic, tp.partition), OFFSET_INVALID))
        for tp in consumer.assignment()
    ]
    assign_afresh(consumer, assigned, timeout)


def assign_afresh(
    consumer: Consumer,
    partitions: list[TopicPartition],
    timeout: float,
    stopping: Callable[[], bool] = lambda: False,
) -> None:
    """``consumer.assign(partitions)``, returning once it holds no position from before
    for them (:func:`positions_kept`); ``KafkaException`` (``_TIMED_OUT``) if it still
    does after ``timeout`` seconds, unless ``stopping()``."""
    consumer.assign(partitions)
    held = positions_kept(consumer, partitions, timeout, stopping)
    if held and not stopping():
        raise KafkaException(
            KafkaError(KafkaError._TIMED_OUT, f"positions kept after assigning ({held})")
        )


def positions_kept(
    consumer: Consumer,
    partitions: Sequence[TopicPartition],
    timeout: float,
    stopping: Callable[[], bool] = lambda: False,
) -> str:
    """Wait until ``consumer`` holds no position for ``partitions``, just assigned or let
    go, which it may have read before: librdkafka forgets a position only once the fetch
    has stopped, on another thread, and until then ``position()`` gives the one from
    before, which would pass for how far a new assignment has read. The positions still
    held after ``timeout`` seconds, or once ``stopping()``, named (``t [0] at 12``); ""
    once none is. Nothing may poll the consumer meanwhile."""
    deadline = time.monotonic() + timeout
    while held := [tp for tp in consumer.position(list(partitions)) if tp.offset >= 0]:
        if stopping() or time.monotonic() > deadline:
            return ", ".join(f"{tp.topic} [{tp.partition}] at {tp.offset}" for tp in held)
        time.sleep(0.01)  # librdkafka's threads stop the fetches; nothing to poll for
    return ""


def offsets_partition(group: str, partitions: int) -> int:
    """The partition of ``__consumer_offsets`` that holds ``group``'s committed offsets, as
    Kafka picks it: ``abs(group.hashCode()) % partitions``, with Java's ``String.hashCode``
    (over UTF-16 code units) and Kafka's ``Utils.abs``."""
    units = group.encode("utf-16-be")
    code = 0
    for i in range(0, len(units), 2):
        code = (31 * code + int.from_bytes(units[i : i + 2], "big")) & 0xFFFFFFFF
    signed = code - (1 << 32) if code >= 1 << 31 else code
    return (0 if signed == -(1 << 31) else abs(signed)) % partitions


def unread_offsets(admin: AdminClient, group: str, error: Exception) -> str:
    """What to add when ``group``'s committed offsets could not be read in time (``error``
    a timeout): a transaction left open on the partition that holds them keeps them
    unstable, and Kafka answers no read of them until it ends. Nothing for any other error,
    or when the cluster does not say how many partitions the offsets topic has."""
    if not isinstance(error, KafkaException) or error.args[0].code() != KafkaError._TIMED_OUT:
        return ""
    try:
        topic = admin.list_topics(topic=OFFSETS_TOPIC, timeout=5).topics.get(OFFSETS_TOPIC)
    except KafkaException:
        return ""
    if topic is None or topic.error is not None or not topic.partitions:
        return ""
    partition = offsets_partition(group, len(topic.partitions))
    return (
        f"; if this lasts, a transaction may hang on {OFFSETS_TOPIC}/{partition}, where "
        f"group {group} commits (README, Hanging transactions)"
    )
