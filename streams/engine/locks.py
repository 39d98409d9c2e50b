"""Exclusive handlers hold their object's key while they run; later calls wait in line.

A virtual object runs one exclusive invocation per key at a time: the one holding the key,
and an inbox of invocation ids queued behind it in arrival order. Shared handlers take no
lock. Neither is written anywhere: both are rebuilt from the invocations' statuses when a
partition is restored.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from streams.engine.store import ObjectKey


class KeyLocks:
    """Who holds each object key, and who waits for it."""

    def __init__(self) -> None:
        self.holders: dict[ObjectKey, str] = {}
        self.inboxes: dict[ObjectKey, deque[str]] = {}

    def holder(self, obj: ObjectKey) -> str | None:
        return self.holders.get(obj)

    def take_or_queue(self, obj: ObjectKey, invocation_id: str) -> bool:
        """Take the key (True) or queue behind its holder (False)."""
        if obj in self.holders:
            self.inboxes.setdefault(obj, deque()).append(invocation_id)
            return False
        self.holders[obj] = invocation_id
        return True

    def hold(self, obj: ObjectKey, invocation_id: str) -> None:
        """Restore: ``invocation_id`` was running with the key."""
        self.holders[obj] = invocation_id

    def queue(self, obj: ObjectKey, invocation_id: str) -> None:
        """Restore: ``invocation_id`` was waiting for the key."""
        self.inboxes.setdefault(obj, deque()).append(invocation_id)

    def release(self, obj: ObjectKey, invocation_id: str) -> bool:
        """``invocation_id`` is done with the key; False when it did not hold it."""
        if self.holders.get(obj) != invocation_id:
            return False
        del self.holders[obj]
        return True

    def hand_on(self, obj: ObjectKey, ready: Callable[[str], bool]) -> str | None:
        """Give a free key to the first queued invocation ``ready`` accepts (skipping those
        no longer waiting); its id, or None when nobody waits."""
        queue = self.inboxes.get(obj)
        chosen = None
        while queue:
            candidate = queue.popleft()
            if ready(candidate):
                self.holders[obj] = chosen = candidate
                break
        if queue is not None and not queue:
            del self.inboxes[obj]
        return chosen

    def unheld(self) -> list[ObjectKey]:
        """Keys with a queue but no holder (after a restore)."""
        return [obj for obj in self.inboxes if obj not in self.holders]

    def waiting(self) -> int:
        """Invocations queued behind a held key."""
        return sum(len(queue) for queue in list(self.inboxes.values()))
