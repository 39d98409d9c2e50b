"""Taking a partition over: its changelogs read back, and the worker's slot on this host.

A partition's state lives in three compacted changelogs (``<ns>.state``, ``<ns>.invocations``
and ``<ns>.dedup``), partitioned like the ingress topic. A worker that is assigned ingress
partition p reads partition p of each from the start to its end, with a consumer outside
any group, and hands every record to the partition's processor before it applies anything.
The partitions of one assignment are read together, by one consumer.

The end is the high watermark, not the last stable offset. Only partition p's owner writes
these partitions, so a transaction still open on one is the last owner's: one that has
committed while its coordinator is still writing the markers (which it writes on each
partition apart, and on ``__consumer_offsets`` apart from the changelogs, so the committed
offsets may already count it), or a zombie's, which Kafka aborts. Reading to the last
stable offset would stop before such a transaction and restore the state from before it;
the read committed restorer reaches the high watermark only once every transaction below
it has ended, committed or aborted.

Once it has read to the ends, a restore looks at the changelogs' metadata again, asks the
ends again, and reads on where one has moved (up to ``CONFIRM`` times; a former owner's
commit markers landing meanwhile move them too). Ends are asked of the partitions'
leaders while brokers may be coming and going; a second answer that agrees with what was
read is what the restore trusts. Each restore logs the records read and the end of every
changelog, and warns when a changelog below a non-zero end gave no record at all (every
record aborted, or none delivered).
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import IO, Protocol

from confluent_kafka import Consumer, IsolationLevel, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.errors import KourierError
from streams.kafka.broker import cache_dir
from streams.kafka.offsets import (
    answered_offsets,
    consume_ready,
    log_ends,
    look_again,
    positions_kept,
)
from streams.wire.topics import Topics

#: A restore that reads nothing for this long fails, and the worker takes its partitions over
#: again (a transaction that stays open on a changelog holds it so).
RESTORE_TIMEOUT = 150.0
#: Seconds between a waiting restore's reports of the transactions it waits for.
_WAIT_NOTED = 5.0
#: Seconds a report may wait for the last stable offsets it reports.
_NOTE_WITHIN = 1.0
#: Seconds the changelogs' metadata may take to look up before a restore (best effort).
_LOOK_WITHIN = 5.0
#: Times a restore asks the ends again after reading to them before it trusts what it read.
CONFIRM = 3
log = logging.getLogger("kourier.restore")


class RestoreError(KourierError, RuntimeError):
    """Partitions' changelogs could not be read back (the take-over is retried)."""

    retriable = True


class NoSlot(KourierError, RuntimeError):
    """Every worker slot of this namespace on this host is taken."""


class Changelogs(Protocol):
    """What a restore hands the records of a partition's changelogs to."""

    @property
    def partition(self) -> int: ...

    def restore_state(self, key: bytes, value: bytes | None) -> None: ...

    def restore_invocation(self, key: bytes, value: bytes | None) -> None: ...

    def restore_dedup(self, key: bytes, value: bytes | None) -> None: ...


def restore_partitions(
    restorer: Consumer,
    admin: AdminClient,
    topics: Topics,
    processors: Sequence[Changelogs],
    stopping: Callable[[], bool] = lambda: False,
) -> None:
    """Read the changelogs of every partition of ``processors`` from the start to their high
    watermarks, all at once (blocking; ``restorer`` reads ``read_committed``): one offset
    query for them all, and one assignment, so that the fetches of a whole take-over run
    together rather than one partition after another; then one more query, which must
    find the same ends (see the module's docstring). Raises :class:`RestoreError` when
    nothing has been read for ``RESTORE_TIMEOUT`` seconds, once ``stopping()``, or when the
    ends keep moving; :class:`KafkaException` when the ends cannot be asked
    (``log_ends``)."""
    sinks: dict[tuple[str, int], Callable[[bytes, bytes | None], None]] = {}
    for processor in processors:
        sinks[(topics.state, processor.partition)] = processor.restore_state
        sinks[(topics.invocations, processor.partition)] = processor.restore_invocation
        sinks[(topics.dedup, processor.partition)] = processor.restore_dedup
    if not sinks:
        return
    tps = [TopicPartition(topic, partition) for topic, partition in sinks]
    ends = dict(zip(sinks, log_ends(admin, tps, stopping=stopping), strict=True))
    named = ", ".join(str(processor.partition) for processor in processors)
    # Let go by the last restore: assigned again before its fetches stop, a changelog the
    # restorer read then showed that restore's end at once, and was taken for read to its
    # end with nothing read (an assignment does not reset a position). Slow while the
    # partition's leader is away.
    if held := positions_kept(restorer, tps, RESTORE_TIMEOUT, stopping):
        raise RestoreError(f"restoring partitions {named}: positions kept ({held})")
    read: Counter[tuple[str, int]] = Counter()
    at: dict[tuple[str, int], int] = {}  # the changelogs assigned, and where each is read to
    try:
        for attempt in range(CONFIRM):
            new = [key for key, end in ends.items() if end and key not in at]
            if new:
                # Looked up first, the changelogs' leaders are known when they are assigned.
                # A restorer that does not know them (a new worker's, or one idle past
                # metadata.max.age.ms) waits for librdkafka's once-a-second scan for topics
                # without leaders: up to a second.
                look_again(restorer, sorted({topic for topic, _ in new}), _LOOK_WITHIN)
                # From offset 0, not OFFSET_BEGINNING: a new consumer asked for the beginning
                # of a partition whose leader it does not know yet asks again only after
                # 500 ms. Compaction keeps a log's start at 0; were it moved,
                # auto.offset.reset=earliest applies. Those read already go on from where
                # they were read to: assigned again, they lose their positions (librdkafka
                # stops and starts their fetches), and one at its end gets no record that
                # would give it one again, so only those still behind are waited for.
                at.update(dict.fromkeys(new, 0))
                restorer.assign([TopicPartition(t, p, offset) for (t, p), offset in at.items()])
            behind = [TopicPartition(t, p, offset) for (t, p), offset in at.items()
                      if offset < ends[(t, p)]]  # fmt: skip
            if behind:
                for tp in _read_to_ends(restorer, admin, sinks, ends, behind, read, named,
                                        stopping):  # fmt: skip
                    at[(tp.topic, tp.partition)] = tp.offset
            # Asked of the leaders a fresh look names: the first answers may have come from
            # one that has since been replaced.
            look_again(admin, sorted({topic for topic, _ in sinks}), _LOOK_WITHIN)
            again = dict(zip(sinks, log_ends(admin, tps, stopping=stopping), strict=True))
            moved = {key: end for key, end in again.items() if end > ends[key]}
            if not moved:
                break
            what = ", ".join(f"{t} [{p}] {ends[(t, p)]} -> {end}" for (t, p), end in moved.items())
            if attempt == CONFIRM - 1:
                raise RestoreError(f"restoring partitions {named}: ends keep moving ({what})")
            # Routine when a former owner's commit markers land meanwhile.
            log.info("restoring partitions %s: ends moved once read (%s); reading on",
                     named, what)  # fmt: skip
            ends.update(moved)
    finally:
        if at:
            restorer.unassign()
    _report(named, ends, read)


def _read_to_ends(
    restorer: Consumer,
    admin: AdminClient,
    sinks: dict[tuple[str, int], Callable[[bytes, bytes | None], None]],
    ends: dict[tuple[str, int], int],
    assigned: list[TopicPartition],
    read: Counter[tuple[str, int]],
    named: str,
    stopping: Callable[[], bool],
) -> list[TopicPartition]:
    """Hand every record of the ``assigned`` changelogs to its sink until each position has
    reached its end, counting them in ``read``; the positions then. Raises
    :class:`RestoreError` when nothing has been read for ``RESTORE_TIMEOUT`` seconds, or
    once ``stopping()``."""
    pending = [TopicPartition(tp.topic, tp.partition) for tp in assigned]
    read_at = noted = time.monotonic()
    last: list[int] = []  # the positions after the previous poll
    while True:
        got = False
        for message in consume_ready(restorer, 1000, 0.1):
            error = message.error()
            if error is None:
                key = message.key()
                assert key is not None
                where = (message.topic() or "", message.partition() or 0)
                sinks[where](key, message.value())
                read[where] += 1
                got = True
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("restoring partitions %s: %s", named, error)
        positions = restorer.position(pending)
        behind = [tp for tp in positions if tp.offset < ends[(tp.topic, tp.partition)]]
        if not behind:
            return positions
        now = time.monotonic()
        # Progress is a record read or a position moved (past aborted records, say); an
        # error, as while brokers are away, is none.
        if got or [tp.offset for tp in positions] != last:
            read_at = now
            last = [tp.offset for tp in positions]
        if stopping():
            raise RestoreError(f"restoring partitions {named} given up: stopping")
        if now > read_at + RESTORE_TIMEOUT:
            raise RestoreError(
                f"restoring partitions {named}: nothing read for {RESTORE_TIMEOUT:.0f}s"
            )
        if now > noted + _WAIT_NOTED:
            noted = now
            _note_open(admin, behind, ends)


def _report(named: str, ends: dict[tuple[str, int], int], read: Counter[tuple[str, int]]) -> None:
    """Log what a restore read, per changelog: records handed on, and the end read to
    (``state 0:12/40``); warn of a changelog that gave no record below a non-zero end:
    every record there aborted, or none delivered."""
    by_topic: dict[str, list[str]] = {}
    for (topic, partition), end in sorted(ends.items()):
        by_topic.setdefault(topic.rsplit(".", 1)[-1], []).append(
            f"{partition}:{read[(topic, partition)]}/{end}"
        )
    read_to = "; ".join(f"{topic} {' '.join(parts)}" for topic, parts in by_topic.items())
    log.info("restored partitions %s, records read/end: %s", named, read_to)
    for (topic, partition), end in sorted(ends.items()):
        if end and not read[(topic, partition)]:
            log.warning(
                "restoring %s [%d]: no record read below its end %d (every one aborted, "
                "or none delivered)", topic, partition, end,
            )  # fmt: skip


def _note_open(
    admin: AdminClient, behind: list[TopicPartition], ends: dict[tuple[str, int], int]
) -> None:
    """Log the changelogs whose readers wait at a transaction still open below the end they
    read to (best effort: one request per broker for them all, and what has not answered
    within ``_NOTE_WITHIN`` seconds is left out). A transaction is open there when the last
    stable offset is below that end; the reader waits at it once it has read everything
    before it, or while it has read nothing (a position below 0)."""
    stable = answered_offsets(admin, behind, IsolationLevel.READ_COMMITTED, _NOTE_WITHIN)
    for tp in behind:
        key = (tp.topic, tp.partition)
        if (
            key in stable
            and stable[key] < ends[key]
            and (tp.offset >= stable[key] or tp.offset < 0)
        ):
            log.warning(
                "restoring %s [%d] waits for a transaction open at offset %d to end",
                tp.topic,
                tp.partition,
                stable[key],
            )


def claim_slot(namespace: str) -> tuple[int, IO[str]]:
    """A per-host slot number, held by a file lock for the life of the process.

    A worker restarted after ``kill -9`` gets its old slot back, hence its old
    transactional id, which aborts the dead process's open transaction at once
    instead of after ``transaction.timeout.ms``.
    """
    folder = cache_dir() / "slots"
    folder.mkdir(parents=True, exist_ok=True)
    for slot in range(4096):
        handle = (folder / f"{namespace}-{slot}.lock").open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return slot, handle
    raise NoSlot("no free worker slot on this host")
