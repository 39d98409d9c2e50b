"""What the delay processor (``streams.engine.delay``) makes of the records it reads: the
ingress record each releases, why one is set aside, and the error that says the partition's
log was made again under it."""

from __future__ import annotations

import logging

from streams.engine.outbox import Out
from streams.wire import ids
from streams.wire.records import Delayed, RecordError, encode
from streams.wire.topics import Topics

log = logging.getLogger("kourier.delay")


class LogRewound(Exception):
    """A record below where the processor began: the partition's log was made again under
    it. The worker restores its partitions, and the take-over reads this one from its start
    (``streams.kafka.ownership``)."""

    def __init__(self, partition: int, offset: int, start: int) -> None:
        super().__init__(partition, offset, start)
        self.partition = partition

    def __str__(self) -> str:
        partition, offset, start = self.args
        return f"delay {partition}@{offset}, below {start} where reading began: log made again"


def releasable(record: Delayed, key: bytes | None, partitions: int, topics: Topics) -> Out:
    """The ingress record ``record`` releases, on its owner's partition (``RecordError``
    when the record names no owner, or one that is not a Kourier id)."""
    owner_id = record.owner_id()
    if owner_id is None:
        raise RecordError("bad-schema", "a delayed invoke without an invocation id")
    try:
        owner = ids.partition_of(owner_id, partitions)
    except ids.InvalidId as error:
        raise RecordError("bad-schema", str(error)) from None
    try:
        released = encode(record.released())
    except ValueError as error:  # e.g. a lone surrogate, which JSON read but cannot write
        raise RecordError("bad-schema", f"cannot be released: {error}") from None
    return Out(topics.ingress, owner, key, released)


def why_set_aside(raised: Exception, partition: int, offset: int) -> RecordError:
    """Why a record is set aside: its own fault, or else a defect of Kourier's in reading it
    (``apply-failed``, as the ingress says), which one record never stops on. A
    ``MemoryError`` is no fault of the record's: raised, the next owner reads it again."""
    if isinstance(raised, MemoryError):
        raise raised
    if isinstance(raised, RecordError):
        return raised
    log.exception("delay %d@%d could not be read", partition, offset)
    return RecordError("apply-failed", f"{type(raised).__name__}: {raised}")
