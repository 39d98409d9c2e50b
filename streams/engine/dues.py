"""Due times by key, and the earliest of them.

A partition's started invocations that wait out the rest of their lead
(``PartitionProcessor._enqueue_when_due``) are kept here, so that the worker's Kafka thread
can read the earliest (:attr:`DueTimes.earliest`, a float written whole) and step as it
passes. Setting and dropping take O(log n): a heap whose stale entries are dropped as
they reach its top.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable


class DueTimes:
    """Keys with a due time each; :attr:`earliest` is the soonest, None when there is none."""

    def __init__(self) -> None:
        self._due: dict[Hashable, float] = {}
        self._order: list[tuple[float, int, Hashable]] = []  # (due, tie-breaker, key)
        self._pushed = 0
        self.earliest: float | None = None

    def __len__(self) -> int:
        return len(self._due)

    def set(self, key: Hashable, due: float) -> None:
        if self._due.get(key) != due:
            self._due[key] = due
            self._pushed += 1
            heapq.heappush(self._order, (due, self._pushed, key))
        self._settle()

    def drop(self, key: Hashable) -> None:
        if self._due.pop(key, None) is not None:
            self._settle()

    def _settle(self) -> None:
        order = self._order
        while order and self._due.get(order[0][2]) != order[0][0]:
            heapq.heappop(order)  # dropped, or set to another time since
        self.earliest = order[0][0] if order else None
