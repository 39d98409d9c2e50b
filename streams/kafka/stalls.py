"""Partitions that ``read_committed`` readers cannot pass: a transaction that stays open.

A ``read_committed`` reader stops at a partition's *last stable offset* (LSO), the first
offset of the oldest transaction still open there, until that transaction's marker lands.
Kafka aborts a transaction that its producer leaves open past ``transaction.timeout.ms``:
10 s for Kourier's workers, 60 s by librdkafka's and Java's defaults, at most the broker's
``transaction.max.timeout.ms`` (15 minutes by default). A transaction whose marker never
reaches a partition is a *hanging transaction*, and the partition's readers stop there for
good. Kafka 4.4 can leave one when a partition's only replica stops with a controlled
shutdown while a transaction commits (KAFKA-20734, README "Limits").

A consumer shows nothing of it: it just gets no records. So a worker asks, every few
seconds, the LSO and the high watermark of every partition it owns (ingress, delay and the
three changelogs, read back when a partition moves), and a client those of its response
partition and the service catalog: two ``ListOffsets`` requests per broker. A partition
whose LSO stays below its high watermark without moving for ``stall_after`` (2 minutes by
default, past the 60 s timeout most producers use) is reported: a warning in the log, again
each minute while it lasts, a line when it moves again or changes owner, and
``kourier_partition_stalled_seconds``. So is a partition whose leader has not answered for
as long. README "Hanging transactions" says how to find and end such a transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from confluent_kafka import IsolationLevel, TopicPartition
from confluent_kafka.admin import AdminClient

from streams.kafka.offsets import latest_offsets, look_again
from streams.metrics import STALLED

log = logging.getLogger("kourier.stalls")

#: Seconds between two looks at a worker's partitions: less when ``stall_after`` is short,
#: never less than ``MIN_EVERY``.
CHECK_EVERY = 10.0
MIN_EVERY = 0.25
#: Seconds between two warnings about the same partition.
REPORT_EVERY = 60.0
#: Seconds to wait for the partitions' leaders to answer a look.
ASK_WITHIN = 5.0

#: ``(topic, partition)``.
Partition = tuple[str, int]

#: How many watches of this process report each partition's gauge (two clients may read
#: one response partition): the series goes when the last of them lets go.
_holders: dict[Partition, int] = {}


@dataclass(slots=True)
class _Held:
    stable: int  # the LSO seen
    high: int  # the high watermark seen last
    since: float  # when the LSO was first seen there with records above it
    reported: float | None = None  # when the last warning went out


@dataclass(slots=True)
class _Silent:
    since: float  # when the partition first did not answer
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
    """Which of the partitions a process reads (``owned``) have LSOs that stay below their
    high watermarks, and for how long; and which have not answered."""

    def __init__(self, after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.after = after
        self._clock = clock
        self._held: dict[Partition, _Held] = {}
        self._silent: dict[Partition, _Silent] = {}
        self._gauged: set[Partition] = set()

    @property
    def every(self) -> float:
        """Seconds between two looks: a stall is seen within a quarter of ``after``."""
        return max(MIN_EVERY, min(CHECK_EVERY, self.after / 4))

    def update(
        self, owned: Collection[Partition], ends: dict[Partition, tuple[int, int]]
    ) -> tuple[list[Stall], list[Stall]]:
        """Take one look: ``ends`` maps the ``owned`` partitions that answered to (LSO, high
        watermark). The stalls to warn about now, and those that ended (the LSO moved)."""
        now = self._clock()
        warn: list[Stall] = []
        ended: list[Stall] = []
        for tp in owned:
            found = ends.get(tp)
            held = self._held.get(tp)
            if found is None:  # no answer: still waiting there, as far as anyone knows
                if held is not None:
                    self._gauge(tp, now - held.since)
                continue
            stable, high = found
            if held is not None and held.stable == stable and stable < high:
                held.high = high
                seconds = now - held.since
                self._gauge(tp, seconds)
                if seconds >= self.after and _due(held.reported, now):
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

    def silent(self, owned: Collection[Partition], answered: Collection[Partition]) -> list[Stall]:
        """Note which ``owned`` partitions did not answer; those silent for ``after`` or
        more, to warn about now (``stable`` and ``high`` -1: not known)."""
        now = self._clock()
        warn: list[Stall] = []
        for tp in [tp for tp in self._silent if tp not in owned]:  # not asked: it may have
            del self._silent[tp]  # answered since, so a silence starts again
        for tp in owned:
            if tp in answered:
                self._silent.pop(tp, None)
                continue
            silence = self._silent.setdefault(tp, _Silent(now))
            if now - silence.since >= self.after and _due(silence.reported, now):
                silence.reported = now
                warn.append(Stall(*tp, -1, -1, now - silence.since))
        return warn

    def _gauge(self, tp: Partition, seconds: float) -> None:
        STALLED.labels(tp[0], str(tp[1])).set(seconds)
        if tp not in self._gauged:
            self._gauged.add(tp)
            _holders[tp] = _holders.get(tp, 0) + 1

    def keep_only(self, owned: Collection[Partition]) -> list[Stall]:
        """Forget the partitions no longer owned, and their gauges (so that two workers
        never report one partition); the reported stalls among them."""
        now = self._clock()
        gone: list[Stall] = []
        for tp in [tp for tp in self._held if tp not in owned]:
            held = self._held.pop(tp)
            if held.reported is not None:
                gone.append(Stall(*tp, held.stable, held.high, now - held.since))
        for tp in [tp for tp in self._silent if tp not in owned]:
            del self._silent[tp]
        for tp in [tp for tp in self._gauged if tp not in owned]:
            self._gauged.discard(tp)
            _holders[tp] -= 1
            if not _holders[tp]:  # no other watch of this process reports it
                del _holders[tp]
                with contextlib.suppress(KeyError):
                    STALLED.remove(tp[0], str(tp[1]))
        return gone


def _due(reported: float | None, now: float) -> bool:
    return reported is None or now - reported >= REPORT_EVERY


def forget(stalls: StallWatch, owned: Collection[Partition]) -> None:
    """Forget every partition but ``owned`` (the others were given up), and say how long
    the readers of those reported had waited."""
    for stall in stalls.keep_only(owned):
        log.info(
            "%s/%d: no longer read here; its readers had waited at offset %d for %.0f s",
            stall.topic, stall.partition, stall.stable, stall.seconds,
        )  # fmt: skip


async def watch(
    admin: AdminClient, stalls: StallWatch, owned: Callable[[], list[Partition]]
) -> None:
    """Look at the partitions ``owned()`` names every ``stalls.every`` seconds and report
    those whose readers have stopped for ``stalls.after`` seconds or more; runs until
    cancelled, and then forgets every partition's gauge.

    The topics of partitions that did not answer have their metadata looked at again, on a
    thread of its own and one look at a time, so that the watch never waits for it: after
    an election the admin client asks with the leader epochs it last saw, and the new
    leaders refuse those (``FENCED_LEADER_EPOCH``) until it looks again."""
    looking: threading.Thread | None = None
    try:
        while True:
            await asyncio.sleep(stalls.every)
            try:
                silent = await _look(admin, stalls, owned)
            except Exception:  # a defect here must not end the watch, nor the worker
                log.exception("could not look at the partitions' ends")
                continue
            if silent and (looking is None or not looking.is_alive()):
                topics = sorted({topic for topic, _ in silent})
                looking = threading.Thread(
                    target=look_again,
                    args=(admin, topics, ASK_WITHIN),
                    name="kourier-stall-look",
                    daemon=True,
                )
                try:
                    looking.start()
                except RuntimeError as error:  # no thread to be had: looked at next time
                    log.warning("could not look at %s's metadata again: %s", topics, error)
                    looking = None
    finally:
        forget(stalls, ())


async def _look(
    admin: AdminClient, stalls: StallWatch, owned: Callable[[], list[Partition]]
) -> list[Partition]:
    """One look; the partitions that did not answer."""
    tps = [TopicPartition(topic, p) for topic, p in owned()]
    stable, high = await asyncio.gather(
        latest_offsets(admin, tps, IsolationLevel.READ_COMMITTED, ASK_WITHIN),
        latest_offsets(admin, tps, IsolationLevel.READ_UNCOMMITTED, ASK_WITHIN),
    )
    # A rebalance may have run meanwhile. Partitions given up are forgotten by whoever gave
    # them up (forget); one missing here only for a moment (a worker restoring what it
    # keeps) is left as it was.
    mine = set(owned())
    ends = {tp: (stable[tp], high[tp]) for tp in mine if tp in stable and tp in high}
    for stall in stalls.silent(mine, ends):
        log.warning(
            "%s/%d: its leader has not answered a request for its offsets for %.0f s",
            stall.topic, stall.partition, stall.seconds,
        )  # fmt: skip
    warn, ended = stalls.update(mine, ends)
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
    return [tp for tp in mine if tp not in ends]
