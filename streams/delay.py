"""Delayed sends: the delay topic's partitions, their timers, and the release of due messages.

A delayed send is a :class:`~streams.records.Delayed` record on ``<ns>.delay``, on the
partition that owns its target. The worker that owns a delay partition keeps every
pending record of it in a heap ordered by due time, with an event-loop timer for the
earliest. When one is due it emits, in the next transaction, the invocation to the
ingress topic and a :class:`~streams.records.Fired` marker to the same delay partition;
the delay partition's committed offset is the lowest offset still pending. After a
restart or rebalance the new owner reads from that offset and skips what a marker says
was released; it releases nothing until it has read to the partition's end, so nothing is
released twice and nothing early. A waiting message costs a heap entry, no CPU.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable

from streams import ids
from streams.partition import Out
from streams.records import Delayed, Fired, RecordError, decode_delay, encode
from streams.topics import Topics

log = logging.getLogger("kourier.delay")


class DelayProcessor:
    """The pending delayed messages of delay partition ``partition``."""

    def __init__(
        self,
        *,
        partition: int,
        partitions: int,
        topics: Topics,
        start_offset: int,
        caught_up_at: int,
        emit: Callable[[Out], None],
        wake: Callable[[], None],
    ) -> None:
        self.partition = partition
        self.partitions = partitions
        self.topics = topics
        self._caught_up_at = caught_up_at  # release nothing before reading this far
        self._emit = emit
        self._wake = wake
        self._heap: list[tuple[float, int]] = []  # (due, offset)
        self._pending: dict[int, tuple[bytes | None, bytes, str]] = {}  # offset -> key, invoke, id
        self._next_offset = start_offset
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    @property
    def caught_up(self) -> bool:
        return self._next_offset >= self._caught_up_at

    def advance(self, position: int) -> None:
        """The consumer's position (past transaction markers, which carry no record)."""
        if position > self._next_offset:
            self._next_offset = position
            self._arm()

    def on_message(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        self._next_offset = offset + 1
        try:
            record = decode_delay(value)
        except RecordError as error:
            log.warning("delay %d@%d: %s (skipped)", self.partition, offset, error)
            return
        if isinstance(record, Fired):
            if record.offset in self._pending:
                del self._pending[record.offset]
        else:
            self._add(record, key, offset)
        self._arm()

    def _add(self, record: Delayed, key: bytes | None, offset: int) -> None:
        invocation_id = record.invoke.invocation_id
        if invocation_id is None:
            log.warning(
                "delay %d@%d: delayed invoke without an id (skipped)", self.partition, offset
            )
            return
        self._pending[offset] = (key, encode(record.invoke), invocation_id)
        heapq.heappush(self._heap, (record.due.timestamp(), offset))

    def commit_offset(self) -> int:
        """Where a new owner must start reading: the oldest message not yet released."""
        return min(self._pending, default=self._next_offset)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _arm(self) -> None:
        """One timer, for the earliest due message (once caught up)."""
        if self.closed or not self.caught_up:
            return
        while self._heap and self._heap[0][1] not in self._pending:
            heapq.heappop(self._heap)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._heap:
            delay = max(0.0, self._heap[0][0] - time.time())
            self._timer = asyncio.get_running_loop().call_later(delay, self._release)

    def _release(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = time.time()
        released = 0
        while self._heap and self._heap[0][0] <= now:
            _, offset = heapq.heappop(self._heap)
            pending = self._pending.pop(offset, None)
            if pending is None:
                continue
            key, invoke, invocation_id = pending
            owner = ids.partition_of(invocation_id, self.partitions)
            self._emit(Out(self.topics.ingress, owner, key, invoke))
            self._emit(Out(self.topics.delay, self.partition, key, encode(Fired(offset=offset))))
            released += 1
        if released:
            self._wake()
        self._arm()

    def close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
