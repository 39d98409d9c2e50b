"""Partitions that ``read_committed`` readers cannot pass: a transaction that stays open.

A ``read_committed`` reader stops at a partition's *last stable offset* (LSO), the first
offset of the oldest transaction still open there, until that transaction's marker lands.
Kafka aborts a transaction that its producer leaves open past ``transaction.timeout.ms``:
10 s for Kourier's workers, 60 s by librdkafka's and Java's defaults, at most the broker's
``transaction.max.timeout.ms`` (15 minutes by default). A transaction whose marker never
reaches a partition is a *hanging transaction*, and the partition's readers stop there for
good. Kafka 4.4 can leave one when a partition's only replica stops with a controlled
shutdown while a transaction commits (KAFKA-20734, README "Limits").

The worker's consumer shows nothing of it: it just gets no records. So a worker asks, every
few seconds, the LSO and the high watermark of every partition it owns (ingress, delay and
the three changelogs, read back when a partition moves): two ``ListOffsets`` requests per
broker. A partition whose LSO stays below its high watermark without moving for
``stall_after`` (2 minutes by default, past the 60 s timeout most producers use) is
reported: a warning in the log, again each minute
while it lasts, a line when it moves again, and ``kourier_partition_stalled_seconds``.
README "Hanging transactions" says how to find and end one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from confluent_kafka import IsolationLevel, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from streams.metrics import STALLED

log = logging.getLogger("kourier.stalls")

#: Seconds between two looks at a worker's partitions (less when ``stall_after`` is short).
CHECK_EVERY = 10.0
#: Seconds between two warnings about the same stall.
REPORT_EVERY = 60.0
#: Seconds to wait for the partitions' leaders to answer a look.
ASK_WITHIN = 5.0

#: ``(topic, partition)``.
Partition = tuple[str, int]


@dataclass(slots=True)
class _Held:
    stable: int  # the LSO seen
    high: int  # the high watermark seen last
    since: float  # when the LSO was first seen there with records above it
    reported: float | None = None  # when the last warning went out


@dataclass(frozen=True, slots=True)
class Stall:
    """A partition whose readers have waited at ``stable`` for ``seconds``."""

    topic: str
    partition: int
    stable: int
    high: int
    seconds: float


class StallWatch:
    """Which partitions' LSOs stay below their high watermarks, and for how long."""

    def __init__(self, after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.after = after
        self._clock = clock
        self._held: dict[Partition, _Held] = {}
        self._gauged: set[Partition] = set()

    @property
    def every(self) -> float:
        """Seconds between two looks: a stall is seen within a quarter of ``after``."""
        return min(CHECK_EVERY, self.after / 4)

    def update(self, ends: dict[Partition, tuple[int, int]]) -> tuple[list[Stall], list[Stall]]:
        """Take ``ends`` (partition -> (LSO, high watermark)) of one look; the stalls to
        warn about now, and those that ended (the LSO moved on)."""
        now = self._clock()
        warn: list[Stall] = []
        ended: list[Stall] = []
        for tp, (stable, high) in ends.items():
            held = self._held.get(tp)
            if held is not None and held.stable == stable and stable < high:
                held.high = high
                seconds = now - held.since
                self._gauge(tp, seconds)
                if seconds >= self.after and (
                    held.reported is None or now - held.reported >= REPORT_EVERY
                ):
                    held.reported = now
                    warn.append(Stall(*tp, stable, high, seconds))
                continue
            if held is not None and held.reported is not None:
                ended.append(Stall(*tp, held.stable, held.high, now - held.since))
            if stable < high:
                self._held[tp] = _Held(stable, high, now)
            else:
                self._held.pop(tp, None)
            self._gauge(tp, 0.0)
        return warn, ended

    def _gauge(self, tp: Partition, seconds: float) -> None:
        STALLED.labels(tp[0], str(tp[1])).set(seconds)
        self._gauged.add(tp)

    def keep_only(self, owned: Collection[Partition]) -> None:
        """Forget the partitions no longer owned, and their gauges (so that two workers
        never report one partition)."""
        for tp in [tp for tp in self._held if tp not in owned]:
            del self._held[tp]
        for tp in [tp for tp in self._gauged if tp not in owned]:
            self._gauged.discard(tp)
            with contextlib.suppress(KeyError):
                STALLED.remove(tp[0], str(tp[1]))


async def ends(
    admin: AdminClient, partitions: Iterable[Partition], within: float = ASK_WITHIN
) -> dict[Partition, tuple[int, int]]:
    """``partition -> (LSO, high watermark)``, asked of the partitions' leaders; a partition
    that does not answer both within ``within`` seconds is left out."""
    latest = {TopicPartition(topic, p): OffsetSpec.latest() for topic, p in partitions}
    if not latest:
        return {}
    asks = {
        level: admin.list_offsets(latest, isolation_level=level, request_timeout=within)
        for level in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED)
    }
    waiting = {
        asyncio.wrap_future(future): (level, tp.topic, tp.partition)
        for level, futures in asks.items()
        for tp, future in futures.items()
    }
    done, late = await asyncio.wait(waiting, timeout=within)
    for future in late:
        future.cancel()
    found: dict[tuple[IsolationLevel, str, int], int] = {
        waiting[f]: f.result().offset for f in done if f.exception() is None
    }
    answers: dict[Partition, tuple[int, int]] = {}
    for topic, p in ((tp.topic, tp.partition) for tp in latest):
        stable = found.get((IsolationLevel.READ_COMMITTED, topic, p))
        high = found.get((IsolationLevel.READ_UNCOMMITTED, topic, p))
        if stable is not None and high is not None:
            answers[topic, p] = (stable, high)
    return answers


async def watch(admin: AdminClient, owned: Callable[[], list[Partition]], after: float) -> None:
    """Look at the partitions ``owned()`` names every few seconds and report those whose
    readers have stopped for ``after`` seconds or more; runs until cancelled."""
    stalls = StallWatch(after)
    while True:
        await asyncio.sleep(stalls.every)
        try:
            found = await ends(admin, owned())
        except Exception:  # a look that fails is taken again at the next
            log.debug("could not ask the partitions' ends", exc_info=True)
            found = {}
        mine = set(owned())  # a rebalance may have run meanwhile
        stalls.keep_only(mine)
        warn, ended = stalls.update({tp: e for tp, e in found.items() if tp in mine})
        for stall in warn:
            log.warning(
                "%s/%d: read_committed readers have waited at offset %d for %.0f s, with %d "
                "records above it: a transaction that is still open holds them. Kafka aborts "
                "a transaction after its timeout; one open this long is likely hanging "
                "(README: Hanging transactions)",
                stall.topic, stall.partition, stall.stable, stall.seconds,
                stall.high - stall.stable,
            )  # fmt: skip
        for stall in ended:
            log.info(
                "%s/%d: readers moved on past offset %d after %.0f s",
                stall.topic, stall.partition, stall.stable, stall.seconds,
            )  # fmt: skip
