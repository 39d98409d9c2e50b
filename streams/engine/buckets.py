"""Far-off delayed messages kept as offsets, by due second (``streams.engine.delay``).

A message due beyond a delay partition's horizon costs its offset, and a little more:

- Seconds that many messages are due in (a burst of sends with one delay) have a bucket:
  8 bytes an offset in an ``array``, and a heap of those seconds gives the earliest.
- A message alone in its second, as most are when sends with long delays come steadily
  (a reminder a week on, every second), is one int in a heap of ``second << 64 | offset``:
  about 48 bytes. A bucket of its own cost about 190 (the array, its dict entry, its key
  and its heap entry): 190 MiB for a million such messages.
- A second met again while it is among the last ``RECENT`` seconds met alone gets a bucket
  from then on; what went into the heap for it stays there. Taking merges both, earliest
  second first.

An offset whose message was released since (through a marker, or carried forward) stays
until it is taken or the buckets are compacted: whoever takes them says which still count.
A ``Fetcher`` reads the messages of the offsets taken back from the delay partition.
"""

from __future__ import annotations

import heapq
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

#: ``(offset, key, value)`` of a record read back from the delay partition.
Fetched = tuple[int, bytes | None, bytes | None]
#: Called on the event loop with the records found and the offsets no longer there.
Deliver = Callable[[list[Fetched], list[int]], None]


class Fetcher(Protocol):
    """Reads records of a delay partition back by offset
    (:class:`streams.kafka.delay_reader.DelayReader`)."""

    def fetch(
        self,
        partition: int,
        offsets: Sequence[int],
        deliver: Deliver,
        urgent: bool = True,
        max_bytes: int | None = None,
        wanted: Callable[[], bool] | None = None,
    ) -> None:
        """Read ``offsets`` (ascending) of ``partition``; call ``deliver`` once, on the
        running event loop, with what was found and which offsets are gone. Urgent reads
        (messages soon due) go before the others (carries). With ``max_bytes``, the read
        may stop once the keys and values found hold that many bytes: the offsets after
        it are then in neither list. A request whose ``wanted()`` is False by the time its
        turn comes (its processor closed) is dropped, and ``deliver`` never called."""


#: Seconds met alone that are remembered, so that one met again gets a bucket.
RECENT = 4096
_SHIFT = 64  # offsets are below 2**63: ``second << 64 | offset`` keeps both, and orders by due


class Buckets:
    """Offsets by due second, taken earliest second first."""

    def __init__(self) -> None:
        self._by_second: dict[int, array[int]] = {}
        self._seconds: list[int] = []  # a heap of the keys of _by_second
        self._alone: list[int] = []  # a heap of second << 64 | offset
        # Seconds last met alone, oldest first (a dict's first key, once deleted, is
        # found again past every slot deleted before it: OrderedDict pops it at once).
        self._recent: OrderedDict[int, None] = OrderedDict()
        self.size = 0  # offsets held, some of them perhaps released since

    @property
    def earliest(self) -> int | None:
        """The earliest due second that holds an offset."""
        bucketed = self._seconds[0] if self._seconds else None
        alone = self._alone[0] >> _SHIFT if self._alone else None
        if bucketed is None or alone is None:
            return alone if bucketed is None else bucketed
        return min(bucketed, alone)

    def add(self, second: int, offset: int) -> None:
        bucket = self._by_second.get(second)
        if bucket is None:
            if second not in self._recent:
                heapq.heappush(self._alone, second << _SHIFT | offset)
                self._recent[second] = None
                if len(self._recent) > RECENT:
                    self._recent.popitem(last=False)
                self.size += 1
                return
            bucket = self._by_second[second] = array("q")
            heapq.heappush(self._seconds, second)
        bucket.append(offset)
        self.size += 1

    def take(self, before: int, most: int, keep: Callable[[int], bool]) -> tuple[list[int], int]:
        """Up to ``most`` offsets that ``keep`` accepts, from the seconds before ``before``,
        earliest first (a crowded second in parts; those it refuses are let go); and the
        second after the last one emptied (0 if none was)."""
        offsets: list[int] = []
        emptied = 0
        mask = (1 << _SHIFT) - 1
        while len(offsets) < most:
            second = self.earliest
            if second is None or second >= before:
                break
            while self._alone and self._alone[0] >> _SHIFT == second and len(offsets) < most:
                offset = heapq.heappop(self._alone) & mask
                self.size -= 1
                if keep(offset):
                    offsets.append(offset)
            bucket = self._by_second.get(second)
            if bucket is not None:
                taken = bucket[: most - len(offsets)]
                del bucket[: len(taken)]
                self.size -= len(taken)
                offsets.extend(o for o in taken if keep(o))
                if not bucket:
                    heapq.heappop(self._seconds)
                    del self._by_second[second]
            if second not in self._by_second and not (
                self._alone and self._alone[0] >> _SHIFT == second
            ):
                emptied = second + 1
        return offsets, emptied

    def compact(self, keep: Callable[[int], bool]) -> None:
        """Keep only the offsets ``keep`` accepts."""
        by_second: dict[int, array[int]] = {}
        for second, bucket in self._by_second.items():
            kept = array("q", (o for o in bucket if keep(o)))
            if kept:
                by_second[second] = kept
        self._by_second = by_second
        self._seconds = list(by_second)
        heapq.heapify(self._seconds)
        mask = (1 << _SHIFT) - 1
        self._alone = [packed for packed in self._alone if keep(packed & mask)]
        heapq.heapify(self._alone)
        self.size = sum(len(bucket) for bucket in by_second.values()) + len(self._alone)
