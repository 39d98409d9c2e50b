"""Reads delayed records back by offset for the delay store (the engine's ``Fetcher``)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from streams.engine.buckets import Deliver, Fetched
from streams.kafka.offsets import FETCH_WAIT_MS, consume_ready, watermarks

log = logging.getLogger("kourier.delay")

#: A read-back: the partition, its offsets, the most bytes to hold, whom to tell, and on
#: which loop.
_Request = tuple[
    int, list[int], int | None, Deliver, asyncio.AbstractEventLoop, Callable[[], bool] | None
]


class _Stalled(Exception):
    """A read-back's partition gave no record and no bounds: it waits for its leader."""


class _Slow(_Stalled):
    """A read-back's partition answers but gave no record yet while others wait."""


#: What a read-back put back in the queue delivers for now: nothing.
_PUT_BACK: tuple[list[Fetched], list[int]] = ([], [])


class DelayReader:
    """Reads delayed records back by offset for every delay partition of a worker.

    One ``read_committed`` consumer, outside any group's assignment, used only by the
    reader's own thread: neither the event loop nor the worker's Kafka thread waits for a
    read. Requests run one after another, urgent ones (messages soon due) before the rest
    (carries); each result is delivered on the loop that asked.
    """

    _SEEK_GAP = 2_000  # offsets: read through a smaller gap, seek over a larger one
    _STALL = 5.0  # seconds without a record before checking the partition's bounds
    _YIELD = 1.0  # ... with none read yet while others wait (and the bounds' wait then)
    _BOUNDS = 5.0  # seconds to wait for the bounds, after which the partition counts stalled

    def __init__(self, config: dict[str, Any], topic: str) -> None:
        self._config = {
            **config,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": FETCH_WAIT_MS,
            "queued.max.messages.kbytes": 8192,
        }
        self._topic = topic
        # (rank, sequence, request, whether it went after the others for being slow): stop
        # first, then urgent reads, then the rest, each in the order asked; the sequence
        # keeps requests from ever being compared.
        self._requests: queue.PriorityQueue[tuple[int, int, _Request | None, bool]] = (
            queue.PriorityQueue()
        )
        self._asked = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def fetch(
        self,
        partition: int,
        offsets: Sequence[int],
        deliver: Deliver,
        urgent: bool = True,
        max_bytes: int | None = None,
        wanted: Callable[[], bool] | None = None,
    ) -> None:
        if self._closed:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kourier-delay-reader")
            self._thread.daemon = True
            self._thread.start()
        request = (partition, list(offsets), max_bytes, deliver, asyncio.get_running_loop(), wanted)
        self._requests.put((1 if urgent else 2, next(self._asked), request, False))

    def close(self) -> None:
        """Stop the thread (a read in progress is abandoned) and close the consumer."""
        self._closed = True
        if self._thread is not None:
            self._requests.put((0, next(self._asked), None, False))
            self._thread.join(30)
            self._thread = None

    def _run(self) -> None:
        consumer = self._consumer()
        if consumer is None:
            return
        try:
            while not self._closed:
                rank, _, request, went_after = self._requests.get()
                if request is None:
                    return
                partition, offsets, max_bytes, deliver, loop, wanted = request
                if wanted is not None and not wanted():
                    continue  # its processor closed (the partition revoked) while it waited
                while True:
                    try:
                        # A slow one goes after the others once.
                        polite = not went_after
                        result = self._read(consumer, partition, offsets, max_bytes, rank, polite)
                        break
                    except _Stalled as stalled:
                        went_after = went_after or isinstance(stalled, _Slow)
                        # Its partition gives nothing and no bounds (its leader away): asked
                        # again after the others of its rank, which it held back before.
                        log.warning("delay reader: partition %d stalled (%s); later",
                                    partition, stalled)  # fmt: skip
                        self._requests.put((rank, next(self._asked), request, went_after))
                        result = _PUT_BACK
                        break
                    except Exception:  # a dead reader would strand every far message
                        # Asked again in a second, after the others of its rank (and not at
                        # all once its processor has closed): one partition failing over and
                        # over held back every other partition's read-backs.
                        log.exception("delay reader: partition %d; later", partition)
                        if self._closed:
                            return
                        # A second's pause, a tenth when other read-backs wait for their turn.
                        time.sleep(1.0 if self._requests.empty() else 0.1)
                        self._requests.put((rank, next(self._asked), request, went_after))
                        result = _PUT_BACK
                        break
                if result is None:
                    return
                if result is _PUT_BACK:
                    continue
                try:
                    loop.call_soon_threadsafe(deliver, *result)
                except RuntimeError:  # the loop has closed
                    return
        finally:
            consumer.close()

    def _consumer(self) -> Consumer | None:
        """The reader's consumer, made again after a failure: a thread ended here would
        leave every far message of the worker unread, and say nothing (None once closed)."""
        while not self._closed:
            try:
                return Consumer(self._config)
            except Exception:
                log.exception("delay reader: no consumer; trying again")
                time.sleep(1.0)
        return None

    def _read(
        self,
        consumer: Consumer,
        partition: int,
        offsets: list[int],
        max_bytes: int | None = None,
        rank: int = 1,
        polite: bool = True,
    ) -> tuple[list[Fetched], list[int]] | None:
        """What was found of ``offsets`` and which are gone; with ``max_bytes``, stopping
        once what was found holds that many bytes (``None`` once the reader is closed).
        With no record for ``_YIELD`` seconds while read-backs as urgent (``rank``) wait,
        the bounds are asked for at once, for as long: a partition whose leader is away held
        every other partition's read-backs for its ``_STALL`` and its bounds' timeout, 10 s
        a turn. ``_Stalled`` when the bounds cannot be had; ``_Slow`` when they name no
        offset gone (a slow partition), unless it went after the others once (not
        ``polite``): two slow partitions made way for each other for good."""
        found: list[Fetched] = []
        missing: list[int] = []
        held, budget = 0, math.inf if max_bytes is None else max_bytes
        i = 0
        while i < len(offsets) and held < budget:
            asked = offsets[i]
            consumer.assign([TopicPartition(self._topic, partition, asked)])
            seen = asked - 1
            heard = time.monotonic()
            reset = False
            while i < len(offsets) and held < budget and not reset:
                if self._closed:
                    return None
                batch = consume_ready(consumer, 1000, 0.2)
                for message in batch:
                    offset = message.offset()
                    if message.error() is not None or offset is None:
                        continue
                    if message.partition() != partition:  # another read's, never to count
                        continue  # the offsets below it as gone (librdkafka should drop it)
                    if held >= budget:
                        break
                    if offset < asked:
                        # Started over at the earliest record: ``asked`` is past the end.
                        reset = True
                        break
                    heard = time.monotonic()
                    seen = offset
                    while i < len(offsets) and offsets[i] < offset:
                        missing.append(offsets[i])
                        i += 1
                    if i < len(offsets) and offsets[i] == offset:
                        key, value = message.key(), message.value()
                        found.append((offset, key, value))
                        held += len(key or b"") + len(value or b"")
                        i += 1
                if reset:
                    i = self._skip_gone(consumer, partition, offsets, i, missing)
                elif i < len(offsets) and offsets[i] - seen > self._SEEK_GAP:
                    break
                elif not batch:
                    quiet = time.monotonic() - heard
                    # Nothing read yet and others waiting: the bounds are asked for sooner,
                    # and briefly; without them (no leader) it goes after the others.
                    early = (
                        not found
                        and not missing
                        and quiet > self._YIELD
                        and self._others_wait(rank)
                    )
                    if early or quiet > self._STALL:
                        heard = time.monotonic()
                        wait = self._YIELD if early else self._BOUNDS
                        was = i
                        i = self._skip_gone(consumer, partition, offsets, i, missing, wait)
                        if early and i == was:  # none gone: a slow partition
                            if polite:  # after the others, once
                                consumer.unassign()
                                raise _Slow(f"no record in {self._YIELD:g}s while others wait")
                            continue  # its fetch goes on (assigned again, it would start over)
                        break
        consumer.unassign()
        return found, missing

    def _others_wait(self, rank: int) -> bool:
        """Whether a read-back as urgent as ``rank`` (or the close) waits for its turn."""
        with self._requests.mutex:
            waiting = self._requests.queue
            return bool(waiting) and waiting[0][0] <= rank

    def _skip_gone(
        self,
        consumer: Consumer,
        partition: int,
        offsets: list[int],
        i: int,
        missing: list[int],
        wait: float = _BOUNDS,
    ) -> int:
        """After a stall, or a start over at the earliest record: offsets outside the
        partition's bounds are gone for good. ``_Stalled`` when the bounds cannot be had
        within ``wait`` seconds."""
        try:
            low, high = watermarks(consumer, TopicPartition(self._topic, partition), wait)
        except KafkaException as exc:
            consumer.unassign()
            raise _Stalled(str(exc)) from None
        while i < len(offsets) and (offsets[i] < low or offsets[i] >= high):
            missing.append(offsets[i])
            i += 1
        if i < len(offsets):
            log.warning("delay reader: partition %d slow at offset %d", partition, offsets[i])
        return i
