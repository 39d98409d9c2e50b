"""Taking a partition over: its changelogs read back, and the worker's slot on this host.

A partition's state lives in three compacted changelogs (``<ns>.state``, ``<ns>.invocations``
and ``<ns>.dedup``), partitioned like the ingress topic. A worker that is assigned ingress
partition p reads partition p of each from the start to its end, with a consumer outside
any group, and hands every record to the partition's processor before it applies anything.
"""

from __future__ import annotations

import fcntl
import time
from typing import IO

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streams.engine.partition import PartitionProcessor
from streams.errors import KourierError
from streams.kafka.broker import cache_dir
from streams.kafka.offsets import consume_ready, watermarks
from streams.wire.topics import Topics

#: A restore that takes longer than this fails, and the worker takes the partition over again.
RESTORE_TIMEOUT = 150.0


class RestoreError(KourierError, RuntimeError):
    """A partition's changelogs could not be read back in time (the take-over is retried)."""

    retriable = True


class NoSlot(KourierError, RuntimeError):
    """Every worker slot of this namespace on this host is taken."""


def restore_partition(restorer: Consumer, topics: Topics, processor: PartitionProcessor) -> None:
    """Read the partition's changelogs from the start to their end (blocking)."""
    partition = processor.partition
    sources = {
        topics.state: processor.restore_state,
        topics.invocations: processor.restore_invocation,
        topics.dedup: processor.restore_dedup,
    }
    ends: dict[str, int] = {}
    for topic in sources:
        _, high = watermarks(restorer, TopicPartition(topic, partition))
        ends[topic] = high
    pending = [TopicPartition(t, partition, OFFSET_BEGINNING) for t, end in ends.items() if end]
    if not pending:
        return
    restorer.assign(pending)
    deadline = time.monotonic() + RESTORE_TIMEOUT
    try:
        while True:
            for message in consume_ready(restorer, 1000, 0.1):
                if message.error() is None:
                    key = message.key()
                    assert key is not None
                    sources[message.topic() or ""](key, message.value())
            positions = restorer.position(pending)
            if all(tp.offset >= ends[tp.topic] for tp in positions):
                return
            if time.monotonic() > deadline:
                raise RestoreError(f"restoring partition {partition} took too long")
    finally:
        restorer.unassign()


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
