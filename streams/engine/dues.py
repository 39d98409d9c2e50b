"""Things due at a time, by key: the earliest time, and those due by now.

A partition's started invocations that wait out the rest of their lead
(``Starts.enqueue_when_due``) are kept here. The worker's Kafka thread reads
the earliest due time (:attr:`DueTimes.earliest`, a float written whole) to step as it
passes, and the step takes what is due (:meth:`DueTimes.pop_due`). Each change costs
O(log n), amortised: a heap whose stale entries are dropped as they reach its top.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Generic, TypeVar

_V = TypeVar("_V")


class DueTimes(Generic[_V]):
    """Values by key, each due at a time; :attr:`earliest` is the soonest time, None when
    nothing is held."""

    def __init__(self) -> None:
        self._held: dict[Hashable, tuple[float, _V]] = {}
        self._order: list[tuple[float, int, Hashable]] = []  # (due, tie-breaker, key)
        self._pushed = 0
        self.earliest: float | None = None

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._held

    def set(self, key: Hashable, due: float, value: _V) -> None:
        """Hold ``value`` under ``key`` until ``due``, in place of what the key held."""
        held = self._held.get(key)
        self._held[key] = (due, value)
        if held is None or held[0] != due:
            self._pushed += 1  # keys need not be comparable: ties go by insertion
            heapq.heappush(self._order, (due, self._pushed, key))
        self._settle()

    def drop(self, key: Hashable) -> None:
        if self._held.pop(key, None) is not None:
            self._settle()

    def pop_due(self, now: float) -> list[_V]:
        """The values due at or before ``now``, soonest first, held no more."""
        due: list[_V] = []
        while self.earliest is not None and self.earliest <= now:
            key = heapq.heappop(self._order)[2]
            due.append(self._held.pop(key)[1])
            self._settle()
        return due

    def clear(self) -> None:
        self._held.clear()
        self._order.clear()
        self.earliest = None

    def _settle(self) -> None:
        order = self._order
        while order and self._stale(order[0]):
            heapq.heappop(order)  # dropped, or held until another time since
        self.earliest = order[0][0] if order else None

    def _stale(self, entry: tuple[float, int, Hashable]) -> bool:
        held = self._held.get(entry[2])
        return held is None or held[0] != entry[0]
