"""The partitions a worker owns: their processors, taken over and handed over.

A worker owns ingress partitions, each run by a
:class:`~streams.engine.partition.PartitionProcessor`, and delay partitions, each run by a
:class:`~streams.engine.delay.DelayProcessor`. :class:`Ownership` holds both, with the
ingress offsets consumed so far, and carries them through the group's rebalances:

- **Taken over** (:meth:`Ownership.restore`, then :meth:`Ownership.start`): from the
  committed offsets, the processors are built, the ingress partitions' changelogs are
  restored in one go, and none of them starts before all are restored. A delay partition
  re-reads its pending messages from its committed offset and releases nothing until it
  reaches :func:`delay_ends`.
- **Handed over** (:meth:`Ownership.hand_over`): their handlers get ``HAND_OVER`` seconds to
  finish their ``ctx.run`` actions, so that what they did is committed rather than run
  again by the next owner; then they close.
- **Forgotten** (:meth:`Ownership.forget`, :meth:`Ownership.drop_all`): they leave the
  gauges and the stall watch, so that two workers never report one partition, and let go
  of what they held on disk (:mod:`streams.engine.spill`); so does an assignment whose
  restore or start failed.

The worker's Kafka thread calls these from its rebalance callbacks and from recovery
(streams/kafka/worker.py), on the event loop; only :func:`delay_ends` asks Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.engine.delay import DelayProcessor
from streams.engine.partition import PartitionProcessor
from streams.engine.spill import SpillFailed
from streams.kafka.gauges import forget_gauges
from streams.kafka.offsets import log_ends
from streams.kafka.stalls import Partition, StallWatch, forget
from streams.kafka.threads import in_thread
from streams.wire.topics import Topics

log = logging.getLogger("kourier.worker")

#: Seconds to ask a partition's offsets in, for :func:`offsets_lost`.
_ASK_SECONDS = 10.0

#: Seconds the ``ctx.run`` actions running on a partition get to end when it is handed over
#: cleanly (revoked, or the worker stopping), so that their results are committed rather
#: than the actions run again by the next owner; the group's rebalance waits meanwhile.
HAND_OVER = 5.0

#: Builds the processor of an ingress partition (not started).
NewProcessor = Callable[[int], PartitionProcessor]
#: Builds the processor of a delay partition from its partition, its committed offset and
#: the offset it reads to before it releases anything.
NewDelay = Callable[[int, int, int], DelayProcessor]
#: Restores the changelogs of the processors given, on a thread (``restore_partitions``).
Restore = Callable[[list[PartitionProcessor]], None]


def by_topic(partitions: list[TopicPartition]) -> str:
    """``delay [3], ingress [0, 1]``: partitions by topic, for the log."""
    topics: dict[str, list[int]] = {}
    for tp in partitions:
        topics.setdefault(tp.topic.rsplit(".", 1)[-1], []).append(tp.partition)
    return ", ".join(f"{topic} {sorted(ps)}" for topic, ps in sorted(topics.items())) or "nothing"


def delay_ends(
    admin: AdminClient,
    topics: Topics,
    partitions: list[TopicPartition],
    timeout: float,
    stopping: Callable[[], bool],
) -> dict[int, int]:
    """High watermarks of the delay partitions among ``partitions``, up to which their
    processors read before they release anything (Kafka thread). Not the last stable
    offset: a former owner's last transaction, its markers still being written, may hold
    the ``Fired`` marker of a message that it released (streams/README.md)."""
    delays = [tp for tp in partitions if tp.topic == topics.delay]
    ends = log_ends(admin, delays, timeout, stopping) if delays else []
    return {tp.partition: end for tp, end in zip(delays, ends, strict=True)}


class Ownership:
    """The processors of the partitions a worker owns, and the ingress offsets consumed."""

    def __init__(
        self,
        topics: Topics,
        stalls: StallWatch,
        new_processor: NewProcessor,
        new_delay: NewDelay,
    ) -> None:
        self.topics = topics
        self._stalls = stalls
        self._new_processor = new_processor
        self._new_delay = new_delay
        self.processors: dict[int, PartitionProcessor] = {}
        self.delays: dict[int, DelayProcessor] = {}
        #: Ingress partition -> the offset after the last record handed to its processor.
        self.offsets: dict[int, int] = {}
        #: Ingress partitions whose changelogs are being read back.
        self.restoring: list[int] = []
        self._restored: list[PartitionProcessor] = []  # read back, not started yet
        self._began = 0.0  # when the last restore began
        #: Delay partitions whose log was made again under their processor (``LogRewound``),
        #: to be read from their start when taken over again (:meth:`rewound`).
        self.rewind: set[int] = set()
        #: Told the delay partitions taken over, and those let go (the worker's trimmer
        #: forgets the offsets it committed for them: a new owner's may be lower, see
        #: rewound; and it trims those let go no more).
        self.took: Callable[[list[int]], None] = lambda partitions: None
        self.let_go: Callable[[list[int]], None] = lambda partitions: None

    def rewound(
        self, committed: list[TopicPartition], ends: dict[int, int]
    ) -> list[TopicPartition]:
        """``committed``, with each delay partition whose log ends before its committed
        offset (made again, or cut by a leader elected uncleanly), or whose processor met a
        record below where it began (:attr:`rewind`), to be read from its start
        (``OFFSET_BEGINNING``), so that nothing its log holds is lost; logged as an error."""
        taken = []
        for tp in committed:
            end = ends.get(tp.partition)
            cut = end is not None and end < tp.offset
            if tp.topic == self.topics.delay and (cut or tp.partition in self.rewind):
                log.error(
                    "%s[%d]'s log ends at %s, its committed offset is %d: the log was deleted"
                    " or cut; it is read from its start, and a message it still holds that"
                    " was released before is released again",
                    tp.topic, tp.partition, end, tp.offset,
                )  # fmt: skip
                tp = TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING)
            taken.append(tp)
        return taken

    def owned(self) -> list[Partition]:
        """Every partition owned, of the ingress topic and those co-partitioned with it
        that the worker writes or reads back (loop)."""
        topics = self.topics
        owned = [(topics.delay, p) for p in self.delays]
        for topic in (topics.ingress, topics.state, topics.invocations, topics.dedup):
            owned += [(topic, p) for p in self.processors]
        for topic in (topics.state, topics.invocations, topics.dedup):
            owned += [(topic, p) for p in self.restoring]  # a restore may wait there
        return owned

    async def restore(
        self, committed: list[TopicPartition], ends: dict[int, int], restore: Restore
    ) -> None:
        """Take over partitions at their ``committed`` offsets, up to the start: ingress ones
        restore their changelogs, all together, and start (:meth:`start`) once all are
        restored; delay ones re-read their pending messages before releasing any, up to
        their ``ends`` (:func:`delay_ends`). A restore or a start that fails leaves none of
        the ingress partitions owned; :meth:`forget` drops what was restored, not started.

        The worker asks between the two halves whether it is still a member of its group:
        a restore that outlasted ``max.poll.interval.ms`` has its partitions given to
        another worker, and starting them would resume their handlers (and ``ctx.run``
        actions) beside that worker's. (It asks on the Kafka thread: inside a rebalance
        callback, a call to the consumer from another thread waits for the callback.)"""
        self._began = time.monotonic()
        restoring: list[PartitionProcessor] = []
        try:
            for tp in committed:
                if tp.topic == self.topics.delay:
                    start = max(tp.offset, 0)
                    self.delays[tp.partition] = self._new_delay(
                        tp.partition, start, ends.get(tp.partition, start)
                    )
                    continue
                if tp.offset >= 0:
                    self.offsets[tp.partition] = tp.offset
                restoring.append(self._new_processor(tp.partition))
            self.restoring = [processor.partition for processor in restoring]
            # Cancelled (the worker's loop ending), the restore's thread reads on until it
            # sees the worker stop: waited for, so nothing below lets go under it.
            await in_thread(lambda: restore(restoring))
            self._restored = restoring
        except BaseException:
            _let_go(restoring)
            raise
        finally:
            self.restoring = []

    async def start(self, committed: list[TopicPartition]) -> None:
        """The second half of a take-over: start what :meth:`restore` restored."""
        restored, self._restored = self._restored, []
        try:
            for processor in restored:
                processor.spill.commit()  # what the restore kept cold, before any starts
                self.processors[processor.partition] = processor
            # No await from here on: no handler runs before every partition has started,
            # so one whose start fails leaves nothing the others did.
            for processor in restored:
                processor.start()
        except BaseException:
            for processor in restored:
                if self.processors.get(processor.partition) is processor:
                    del self.processors[processor.partition]
            _let_go(restored)
            raise
        delays = [tp.partition for tp in committed if tp.topic == self.topics.delay]
        self.rewind.difference_update(delays)
        self.took(delays)
        log.info(
            "assigned %s (restored in %.2fs)", by_topic(committed), time.monotonic() - self._began
        )

    async def hand_over(self, partitions: list[TopicPartition]) -> None:
        """Let the handlers of the ingress partitions among ``partitions`` end, up to
        ``HAND_OVER`` seconds, then close those and the delay partitions; what they leave
        to commit stays with the worker's next snapshot."""
        ingress = {tp.partition for tp in partitions if tp.topic == self.topics.ingress}
        handed = [p for n, p in self.processors.items() if n in ingress]
        await asyncio.gather(*(processor.hand_over(HAND_OVER) for processor in handed))
        for tp in partitions:
            if tp.topic == self.topics.delay and tp.partition in self.delays:
                self.delays[tp.partition].close()
            elif tp.topic == self.topics.ingress and tp.partition in self.processors:
                self.processors[tp.partition].close()

    async def hand_over_all(self) -> None:
        """:meth:`hand_over` every partition, as a worker that stops does."""
        await asyncio.gather(*(p.hand_over(HAND_OVER) for p in self.processors.values()))
        self.close_all()

    async def forget(self, partitions: list[TopicPartition], close: bool = False) -> None:
        """Own ``partitions`` no more (closing their processors first if ``close``): drop
        their gauges and stall reports, and release the spills of the closed ones."""
        delays = [tp.partition for tp in partitions if tp.topic == self.topics.delay]
        self.let_go(delays)
        # Its next owner cannot know of a rewind: one that comes back here reads from what
        # is committed (a log made again is found again, by its first record below that).
        self.rewind.difference_update(delays)
        for tp in partitions:
            forget_gauges(tp)
            if tp.topic == self.topics.delay:
                delay = self.delays.pop(tp.partition, None)
                if delay is not None and close:
                    delay.close()
                continue
            processor = self.processors.pop(tp.partition, None)
            if processor is not None and close:
                processor.close()
            if processor is not None and processor.closed:
                processor.release()  # a running one keeps what it holds until it closes
            self.offsets.pop(tp.partition, None)
        forget(self._stalls, self.owned())
        _let_go(self._restored)  # restored, never started (:meth:`restore`)
        self._restored = []

    def spill_failure(self) -> SpillFailed | None:
        """The failure of an owned partition's spill, if one failed (on the Kafka thread
        too: only :meth:`start`, :meth:`forget` and :meth:`drop_all` change
        ``processors``, and the Kafka thread waits for each)."""
        failed = (p.spill.failed for p in list(self.processors.values()) if p.spill.failed)
        return next(failed, None)

    def drop_all(self) -> list[TopicPartition]:
        """Close every processor and let go of it, with the offsets consumed, as recovery
        does before it takes the same partitions over again from what is committed; the
        partitions that were owned. Their gauges and stall reports stay."""
        owned = [TopicPartition(self.topics.ingress, p) for p in self.processors]
        owned += [TopicPartition(self.topics.delay, p) for p in self.delays]
        self.close_all()
        for processor in self.processors.values():
            processor.release()
        self.processors.clear()
        self.delays.clear()
        self.offsets.clear()
        return owned

    def close_all(self) -> None:
        """Close every processor: handlers and timers stop, nothing more is emitted."""
        for processor in self.processors.values():
            processor.close()
        for delay in self.delays.values():
            delay.close()


def _let_go(processors: list[PartitionProcessor]) -> None:
    """Close ``processors``, never owned: what they read back on disk goes."""
    for processor in processors:
        processor.close()
        processor.release()


def offsets_lost(
    consumer: Consumer,
    topics: Topics,
    group: str,
    committed: list[TopicPartition],
    processors: Mapping[int, PartitionProcessor],
) -> list[int]:
    """Log an error for each ingress partition taken over with no committed offset though
    its changelogs held records and it holds records to read again (Kafka thread): the
    workers' ``group`` lost its offsets (no worker for longer than the brokers'
    ``offsets.retention.minutes``, or they were deleted or reset), and the partition is read
    from its earliest record, so calls whose outcomes were not kept run again (README,
    Limits). A partition that only ever took calls its own worker made
    (``streams.engine.local``) has changelog records and nothing on its ingress. The
    partitions said."""
    said = []
    for tp in committed:
        processor = processors.get(tp.partition)
        if tp.topic != topics.ingress or tp.offset >= 0 or not (processor and processor.restored):
            continue
        try:
            low, high = consumer.get_watermark_offsets(tp, _ASK_SECONDS)
        except KafkaException as exc:  # it is only said: the take-over stands
            log.warning("could not ask %s[%d]'s offsets: %s", tp.topic, tp.partition, exc)
            continue
        if low < high:
            log.error(
                "%s[%d] has no committed offset, but its changelogs hold %d records: the"
                " workers' group %s lost its offsets (offsets.retention.minutes passed with"
                " no worker, or they were deleted or reset); its %d records from offset %d"
                " are read again, and calls whose outcomes were not kept run again",
                tp.topic, tp.partition, processor.restored, group, high - low, low,
            )  # fmt: skip
            said.append(tp.partition)
    return said
