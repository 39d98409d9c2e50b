"""Whether a worker has read its ingress partitions to their ends, for the calls it holds
(``streams.engine.local``): the partitions' high watermarks, asked of their leaders, against
the consumer's positions; and the few records a partition is short of its watermark, read
ahead within the step.

A call must not pass a record written before it was made. Every such record is below the
watermark asked after the call was made, or is one of the worker's records uncommitted at
that ask (the worker checks those itself). So where the worker had none, the watermark stays
good for the call however long it waits; records written after the call may go either way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.kafka.offsets import high_watermarks

log = logging.getLogger("kourier.worker")

#: Seconds to wait for the partitions' high watermarks before the held calls go as records,
#: and after a watermark did not come, seconds during which held calls go as records unasked
#: (a broker away would otherwise hold up every step by the wait).
ENDS_TIMEOUT = 1.0
ENDS_PAUSE = 5.0
#: Held calls whose partition has at most this many records the consumer has not read yet
#: get another look within the step: the Kafka thread reads those records for up to
#: ``READ_AHEAD`` seconds, the step applies them, then the calls. A partition whose records
#: did not come in time (another worker's transaction still open) gets no other look for
#: ``READ_AHEAD_PAUSE`` seconds, so it costs at most one wait a second.
READ_AHEAD_RECORDS = 500
READ_AHEAD = 0.005
READ_AHEAD_PAUSE = 1.0


class PartitionEnds:
    """Asks where ``topic``'s partitions end, and reads ahead to there."""

    def __init__(self, admin: AdminClient, topic: str) -> None:
        self._admin = admin
        self._topic = topic
        self._paused_until = 0.0  # see ENDS_PAUSE
        self._missed: dict[int, float] = {}  # partition -> when a read ahead missed (monotonic)
        #: Reads ahead so far, and those that reached their watermarks (statistics).
        self.read_aheads = 0
        self.read_ahead_hits = 0

    async def read_to_end(
        self,
        consumer: Consumer,
        partitions: set[int],
        known: Mapping[int, int],
        committed: Mapping[int, int],
    ) -> tuple[dict[int, int], dict[int, int]]:
        """Of ``partitions``, those whose every record ``consumer`` has read: its position
        is at the high watermark the partition's leader gives now, so every record committed
        so far, and every record of a transaction still open, is behind it; with the
        position (on the loop, while the Kafka thread waits, so the position stands still).
        A partition whose watermark does not come in time is left out, and all of them for
        ``ENDS_PAUSE`` seconds after that. Second, the partitions up to
        ``READ_AHEAD_RECORDS`` short of their watermark, with it. The watermarks in
        ``known``, asked before the records that reached them were read, are not asked
        again. Where the consumer has no position yet, reading starts at the ``committed``
        offset."""
        if not partitions or time.monotonic() < self._paused_until:
            return {}, {}
        missed_since = time.monotonic() - READ_AHEAD_PAUSE
        ends = {p: end for p, end in known.items() if p in partitions}
        unknown = partitions - ends.keys()
        if unknown:
            asked = await high_watermarks(self._admin, self._topic, unknown, ENDS_TIMEOUT)
            if len(asked) < len(unknown):
                log.info("no high watermark for %s/%s; calls go as records for %.0fs",
                         self._topic, sorted(unknown - set(asked)), ENDS_PAUSE)  # fmt: skip
                self._paused_until = time.monotonic() + ENDS_PAUSE
                missed_since = float("-inf")  # nothing kept: the next run would not ask
            ends.update(asked)
        tps = [TopicPartition(self._topic, p) for p in ends]
        ready, behind = {}, {}
        for tp in consumer.position(tps) if tps else []:
            # No position before the first record read since the partition was assigned:
            # reading starts at the offset committed by its previous owner, then.
            valid = tp.error is None and tp.offset >= 0
            at = tp.offset if valid else committed.get(tp.partition)
            end = ends[tp.partition]
            if at is not None and at >= end:
                ready[tp.partition] = at
            elif (
                at is not None
                and end - at <= READ_AHEAD_RECORDS
                and self._missed.get(tp.partition, 0.0) < missed_since
            ):
                behind[tp.partition] = end
        return ready, behind

    def read_ahead(
        self, consumer: Consumer, waiting: Mapping[int, int], rebalances: Callable[[], int]
    ) -> list[Message]:
        """Read for up to ``READ_AHEAD`` seconds, until ``consumer``'s positions reach the
        watermarks in ``waiting``, and return what was read (Kafka thread). The records are
        usually fetched already, or about to be; those of a transaction still open come at
        its commit, and the calls then go as records (``READ_AHEAD_PAUSE``).

        ``rebalances`` counts the rebalance callbacks run so far. Records are read one per
        poll, so that a callback run inside a poll splits what was read before it from what
        was read after: the earlier records are dropped, as a partition assigned again is
        read again from its committed offset, and the reading stops (a revoke sent the
        waiting calls as records; a lost partition dropped them, and their callers replay).
        Polls wait 1 ms at most, so that a position that moves past a commit marker (no
        record) is seen at once."""
        self.read_aheads += 1
        deadline = time.monotonic() + READ_AHEAD
        began = rebalances()
        tps = [TopicPartition(self._topic, p) for p in waiting]
        read: list[Message] = []
        while True:
            message = consumer.poll(min(0.001, max(0.0, deadline - time.monotonic())))
            if rebalances() != began:  # inside this poll; what it returned came after
                return [message] if message is not None else []
            if message is not None:
                read.append(message)
            at = {tp.partition: tp.offset for tp in consumer.position(tps)}
            short = [p for p, end in waiting.items() if at.get(p, -1) < end]
            if not short:
                self.read_ahead_hits += 1
                return read
            now = time.monotonic()
            if now >= deadline:
                self._missed.update((p, now) for p in short)
                return read
