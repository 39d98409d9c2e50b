"""Taking a partition over: its changelogs read back, and the worker's slot on this host.

A partition's state lives in three compacted changelogs (``<ns>.state``, ``<ns>.invocations``
and ``<ns>.dedup``), partitioned like the ingress topic. A worker that is assigned ingress
partition p reads partition p of each from the start to its end, with a consumer outside
any group, and hands every record to the partition's processor before it applies anything.

The end is the high watermark, not the last stable offset. Only partition p's owner writes
these partitions, so a transaction still open on one is the last owner's: one that has
committed while its coordinator is still writing the markers (which it writes on each
partition apart, and on ``__consumer_offsets`` apart from the changelogs, so the committed
offsets may already count it), or a zombie's, which Kafka aborts. Reading to the last
stable offset would stop before such a transaction and restore the state from before it;
the read committed restorer reaches the high watermark only once every transaction below
it has ended, committed or aborted.
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Callable
from typing import IO, Protocol

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.errors import KourierError
from streams.kafka.broker import cache_dir
from streams.kafka.offsets import consume_ready, log_ends, watermarks
from streams.wire.topics import Topics

#: A restore that takes longer than this fails, and the worker takes the partition over again.
RESTORE_TIMEOUT = 150.0
#: Seconds between a waiting restore's reports of the transactions it waits for.
_WAIT_NOTED = 5.0
log = logging.getLogger("kourier.restore")


class RestoreError(KourierError, RuntimeError):
    """A partition's changelogs could not be read back in time (the take-over is retried)."""

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


def restore_partition(
    restorer: Consumer,
    admin: AdminClient,
    topics: Topics,
    processor: Changelogs,
    stopping: Callable[[], bool] = lambda: False,
) -> None:
    """Read the partition's changelogs from the start to their high watermarks (blocking;
    ``restorer`` reads ``read_committed``). Raises :class:`RestoreError` past
    ``RESTORE_TIMEOUT``, or at once when ``stopping()``."""
    partition = processor.partition
    sources = {
        topics.state: processor.restore_state,
        topics.invocations: processor.restore_invocation,
        topics.dedup: processor.restore_dedup,
    }
    tps = [TopicPartition(topic, partition) for topic in sources]
    ends = dict(zip(sources, log_ends(admin, tps, stopping=stopping), strict=True))
    pending = [TopicPartition(t, partition, OFFSET_BEGINNING) for t, end in ends.items() if end]
    if not pending:
        return
    restorer.assign(pending)
    began = time.monotonic()
    noted = began
    try:
        while True:
            for message in consume_ready(restorer, 1000, 0.1):
                if message.error() is None:
                    key = message.key()
                    assert key is not None
                    sources[message.topic() or ""](key, message.value())
            behind = [tp for tp in restorer.position(pending) if tp.offset < ends[tp.topic]]
            if not behind:
                return
            now = time.monotonic()
            if stopping():
                raise RestoreError(f"restoring partition {partition} given up: stopping")
            if now > began + RESTORE_TIMEOUT:
                raise RestoreError(f"restoring partition {partition} took too long")
            if now > noted + _WAIT_NOTED:
                noted = now
                _note_open(restorer, behind, ends)
    finally:
        restorer.unassign()


def _note_open(restorer: Consumer, behind: list[TopicPartition], ends: dict[str, int]) -> None:
    """Log the changelogs whose readers wait at a transaction still open below the end they
    read to (best effort, about a second per changelog at most). A transaction is open there
    when the last stable offset is below that end; the reader waits at it once it has read
    everything before it, or while it has read nothing (a position below 0)."""
    for tp in behind:
        try:
            _, stable = watermarks(restorer, TopicPartition(tp.topic, tp.partition), 1.0)
        except KafkaException:
            continue
        if stable < ends[tp.topic] and (tp.offset >= stable or tp.offset < 0):
            log.warning(
                "restoring %s [%d] waits for a transaction open at offset %d to end",
                tp.topic,
                tp.partition,
                stable,
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
