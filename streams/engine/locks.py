"""Exclusive handlers hold their object's key while they run; later calls wait in line.

A virtual object runs one exclusive invocation per key at a time: the one holding the key,
and an inbox of invocations queued behind it in arrival order. Shared handlers take no
lock. Neither is written anywhere: both are rebuilt from the invocations' statuses when a
partition is restored.

An inbox names each invocation by its id and its ``seq`` (its arrival in the partition): an
invocation that leaves the line without taking the key (cancelled while queued) stays in it
until the key passes it by, and an invocation made again with the same id (its own id, an
idempotency key) after the first was forgotten has another ``seq``, so the key goes to it at
its own place in the line, not at the old one's.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable

from streams.engine.store import ObjectKey


class KeyLocks:
    """Who holds each object key, and who waits for it."""

    def __init__(self) -> None:
        self.holders: dict[ObjectKey, str] = {}
        self.inboxes: dict[ObjectKey, deque[tuple[str, int]]] = {}  # (id, seq)
        self._lined: Counter[tuple[str, int]] = Counter()  # the (id, seq) in the lines

    def holder(self, obj: ObjectKey) -> str | None:
        return self.holders.get(obj)

    def take_or_queue(self, obj: ObjectKey, invocation_id: str, seq: int) -> bool:
        """Take the key (True) or queue behind its holder (False)."""
        if obj in self.holders:
            self.queue(obj, invocation_id, seq)
            return False
        self.holders[obj] = invocation_id
        return True

    def hold(self, obj: ObjectKey, invocation_id: str) -> None:
        """Restore: ``invocation_id`` was running with the key."""
        self.holders[obj] = invocation_id

    def queue(self, obj: ObjectKey, invocation_id: str, seq: int) -> None:
        """``invocation_id`` waits for the key (behind its holder, or, in a restore,
        behind whoever held it), in the line's order of arrival: its offset, ``seq``. A
        started invocation comes late, once due, with its ``Start``'s offset: behind it,
        calls that arrived meanwhile went ahead, and a restore, which lines up by offset,
        put them back behind it."""
        line = self.inboxes.setdefault(obj, deque())
        place = len(line)
        while place and line[place - 1][1] > seq:
            place -= 1
        line.insert(place, (invocation_id, seq))
        self._lined[invocation_id, seq] += 1

    def release(self, obj: ObjectKey, invocation_id: str) -> bool:
        """``invocation_id`` is done with the key; False when it did not hold it."""
        if self.holders.get(obj) != invocation_id:
            return False
        del self.holders[obj]
        return True

    def hand_on(self, obj: ObjectKey, ready: Callable[[str, int], bool]) -> str | None:
        """Give a free key to the first queued invocation ``ready(id, seq)`` accepts
        (skipping those no longer waiting); its id, or None when nobody waits."""
        queue = self.inboxes.get(obj)
        chosen = None
        while queue:
            candidate, seq = queue.popleft()
            self._lined[candidate, seq] -= 1
            if not self._lined[candidate, seq]:
                del self._lined[candidate, seq]
            if ready(candidate, seq):
                self.holders[obj] = chosen = candidate
                break
        if queue is not None and not queue:
            del self.inboxes[obj]
        return chosen

    def queued(self, obj: ObjectKey) -> list[str]:
        """The ids in ``obj``'s line, in order (some perhaps no longer waiting)."""
        return [invocation_id for invocation_id, _ in self.inboxes.get(obj, ())]

    def lined(self, invocation_id: str, seq: int) -> bool:
        """Whether ``invocation_id``, arrived as ``seq``, is in a key's line (perhaps no
        longer waiting). The seq tells an id made again apart from the one queued before."""
        return (invocation_id, seq) in self._lined

    def unheld(self) -> list[ObjectKey]:
        """Keys with a queue but no holder (after a restore)."""
        return [obj for obj in self.inboxes if obj not in self.holders]

    def waiting(self) -> int:
        """Invocations queued behind a held key."""
        return sum(len(queue) for queue in list(self.inboxes.values()))
