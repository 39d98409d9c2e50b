"""The invocations of one partition, and what changed in them since the last commit.

An invocation lives in the ``<ns>.invocations`` changelog as its meta (``m/<id>``) and its
journal entries (``j/<id>/<index>``). The table keeps every invocation the partition knows
by id — running, waiting, scheduled, or completed and retained — and marks the changed ones;
:meth:`InvocationTable.changelog` writes those (a meta rewritten, new or completed entries)
and the tombstones of forgotten ones. Retained outcomes expire in order of their deadline.
"""

from __future__ import annotations

import heapq
import time

from streams.engine.invocation import Invocation
from streams.engine.journal import Entry, InvocationLog, InvocationMeta, entry_key, meta_key
from streams.engine.outbox import Out
from streams.wire.topics import Topics


class InvocationTable(dict[str, Invocation]):
    """Invocations by id, with the changes the next commit writes."""

    def __init__(self, topics: Topics, partition: int) -> None:
        super().__init__()
        self.topics = topics
        self.partition = partition
        self._changed: set[str] = set()
        self._tombstones: list[tuple[str, int]] = []  # (id, journal entries written)
        self._expiries: list[tuple[float, str]] = []  # (expires_at, id) of retained outcomes
        self._restored = InvocationLog()  # the changelog read back, until taken

    # -- restore ---------------------------------------------------------------------

    def restore(self, key: bytes, value: bytes | None) -> None:
        """One record of the ``<ns>.invocations`` changelog."""
        self._restored.apply(key, value)

    def take_restored(self) -> list[tuple[InvocationMeta, list[Entry]]]:
        """Every restored invocation in arrival order, with its journal (none for a
        completed one: a retained outcome is its meta alone); the log is then let go."""
        restored, self._restored = self._restored, InvocationLog()
        metas = sorted(restored.metas.values(), key=lambda m: m.seq)
        return [(m, [] if m.status == "completed" else restored.journal(m.id)) for m in metas]

    # -- changes ---------------------------------------------------------------------

    def add(self, inv: Invocation) -> None:
        self[inv.meta.id] = inv
        self._changed.add(inv.meta.id)

    def touch(self, inv: Invocation) -> None:
        """``inv`` changed: write it at the next changelog (which stamps ``modified_at``)."""
        self._changed.add(inv.meta.id)

    def retain(self, inv: Invocation) -> None:
        """Keep a completed ``inv`` until its ``expires_at``."""
        assert inv.meta.expires_at is not None
        heapq.heappush(self._expiries, (inv.meta.expires_at, inv.meta.id))

    def expired(self, now: float) -> list[Invocation]:
        """Retained outcomes whose time has passed (still retained, still completed)."""
        due: list[Invocation] = []
        while self._expiries and self._expiries[0][0] <= now:
            _, inv_id = heapq.heappop(self._expiries)
            inv = self.get(inv_id)
            expires = inv.meta.expires_at if inv is not None else None
            if inv is not None and inv.meta.status == "completed" and expires and expires <= now:
                due.append(inv)
        return due

    def forget(self, inv: Invocation) -> None:
        """Drop ``inv``; what the changelog holds of it is tombstoned at the next commit."""
        self.pop(inv.meta.id, None)
        self._changed.discard(inv.meta.id)
        if inv.persisted:
            self._tombstones.append((inv.meta.id, inv.persisted_entries))

    def changelog(self) -> list[Out]:
        """The changelog records of every change since the last call."""
        out: list[Out] = []
        topic, partition = self.topics.invocations, self.partition
        # Tombstones first: an id forgotten and created again since the last flush (a purge,
        # then the same workflow id or idempotency key) keeps its new records.
        for inv_id, entries in self._tombstones:
            out.append(Out(topic, partition, meta_key(inv_id), None))
            out.extend(Out(topic, partition, entry_key(inv_id, i), None) for i in range(entries))
        self._tombstones.clear()
        now = time.time()
        for inv_id in self._changed:
            inv = self.get(inv_id)
            if inv is None:
                continue
            inv.meta.modified_at = now
            meta = inv.meta.to_json()
            out.append(Out(topic, partition, meta_key(inv_id), meta))
            for index in sorted(inv.dirty_entries):
                entry = inv.journal[index].to_json()
                out.append(Out(topic, partition, entry_key(inv_id, index), entry))
            inv.dirty_entries.clear()
            inv.persisted = True
            inv.persisted_entries = max(inv.persisted_entries, len(inv.journal))
            if inv.meta.status == "completed":
                inv.journal = []  # written; a retained outcome is its meta alone
        self._changed.clear()
        return out
