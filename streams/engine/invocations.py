"""The invocations of one partition, and what changed in them since the last commit.

An invocation lives in the ``<ns>.invocations`` changelog as its meta (``m/<id>``) and its
journal entries (``j/<id>/<index>``). The table keeps every invocation the partition knows
by id — running, waiting, scheduled, or completed and retained — and marks the changed ones;
:meth:`InvocationTable.changelog` writes those (a meta rewritten, new or completed entries)
and the tombstones of forgotten ones. Retained outcomes expire by their deadline.

Cold invocations. Most of what a partition holds may be invocations that do nothing: a
delayed send not yet due (``scheduled``), a call waiting in its key's line behind the
exclusive call that holds the key (``pending``, for as long as that one runs, sleeps or
waits), and a retained outcome (``completed``, kept for its idempotency key or workflow
id). Once written, such an invocation is kept *cold*: as the meta bytes the changelog
holds, not as objects, and on disk, in the partition's
:class:`~streams.engine.spill.ColdStore`, not in memory; a queued one's place in line is
its id in :class:`~streams.engine.locks.KeyLocks`. Looking one up
(``InvocationTable.get``) *thaws* it into an :class:`Invocation` again, through the
partition's ``thaw``. A thawed invocation that nothing changed is let go at the next
changelog (its bytes are still right); one that changed is written, and kept cold again
with its new bytes if it is still idle. So nothing holds a thawed invocation past a commit
unless it runs. One written scheduled or completed while not yet idle (a killed invocation
whose ``ctx.run`` action is still unwinding) is kept cold at the first changelog after it
is.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Mapping

from streams.engine.invocation import Invocation
from streams.engine.journal import (
    Entry,
    InvocationLog,
    InvocationMeta,
    entry_key,
    entry_of,
    meta_key,
)
from streams.engine.outbox import Out
from streams.engine.spill import ColdStore, Spill
from streams.engine.store import ObjectKey
from streams.wire.topics import Topics

#: Builds the invocation of a meta read back, with how many journal entries the changelog
#: holds of it (the partition's ``thaw``).
Thaw = Callable[[InvocationMeta, int], Invocation]
#: Cold retained outcomes read back at most per sweep: see ``expired``.
EXPIRED_AT_ONCE = 10_000
#: Seconds a sweep forgets for at most, on the event loop; what is left waits for the
#: next, ``SWEEP_AGAIN`` later (a backlog drains in slices, with the partition's work between).
SWEEP_SECONDS = 0.05
SWEEP_AGAIN = 0.1
#: Statuses of invocations that do nothing until something arrives for them.
COLD = frozenset({"scheduled", "completed"})


def _expires(meta: InvocationMeta) -> float | None:
    """When a cold invocation's retention ends: a retained outcome's deadline."""
    return meta.expires_at if meta.status == "completed" else None


class InvocationTable(Mapping[str, Invocation]):
    """Invocations by id, live or cold, with the changes the next commit writes.

    As a mapping it holds every invocation: looking one up thaws it if it was cold.
    :meth:`live` gives the invocations held as objects, without thawing any."""

    def __init__(
        self,
        topics: Topics,
        partition: int,
        thaw: Thaw,
        spill: Spill | None = None,
        *,
        in_line: Callable[[str, int], bool] = lambda inv_id, seq: False,
        lines_up: Callable[[InvocationMeta], ObjectKey | None] = lambda meta: None,
    ) -> None:
        self.topics = topics
        self.partition = partition
        self._thaw = thaw
        self._in_line = in_line  # whether (id, seq) waits in its key's line (KeyLocks.lined)
        #: The key a restored ``pending`` meta would wait for in line when the partition
        #: starts (hosted here, exclusive, due), else None.
        self._lines_up = lines_up
        #: Restored pending invocations kept cold: id -> (the key they wait for, seq).
        self._lined: dict[str, tuple[ObjectKey, int]] = {}
        self._live: dict[str, Invocation] = {}
        #: Cold invocations: id -> (meta as written, journal entries written), and when a
        #: retained outcome's retention ends.
        self._cold = ColdStore(spill or Spill())
        self._thawed: set[str] = set()  # cold ones also live now, until the next changelog
        #: Written scheduled or completed, but not idle yet (a killed one's ``ctx.run``
        #: action still unwinding): id -> the meta written, kept cold once idle.
        self._settling: dict[str, bytes] = {}
        self._changed: set[str] = set()
        self._tombstones: list[tuple[str, int]] = []  # (id, journal entries written)
        #: Retained outcomes not kept cold yet (held live until written and idle): id ->
        #: when their retention ends. The cold ones' deadlines are in the spill.
        self._deadlines: dict[str, float] = {}
        self._restored = InvocationLog()  # the changelog read back, until taken

    # -- lookups ---------------------------------------------------------------------

    def __getitem__(self, inv_id: str) -> Invocation:
        inv = self._live.get(inv_id)
        if inv is not None:
            return inv
        cold = self._cold.get(inv_id)
        if cold is None:
            raise KeyError(inv_id)  # not known here
        inv = self._thaw(InvocationMeta.from_json(cold[0]), cold[1])
        self._live[inv_id] = inv
        self._thawed.add(inv_id)
        return inv

    def __contains__(self, inv_id: object) -> bool:
        return inv_id in self._live or (isinstance(inv_id, str) and inv_id in self._cold)

    def __iter__(self) -> Iterator[str]:
        cold = [inv_id for inv_id in self._cold.ids() if inv_id not in self._live]
        return itertools.chain(list(self._live), cold)

    def __len__(self) -> int:
        return len(self._live) + len(self._cold) - len(self._thawed)

    def outlived(self, inv_id: str, now: float) -> bool:
        """Whether ``inv_id`` is a retained outcome past its time (``InvocationMeta.outlived``),
        asked of one kept cold without reading it back."""
        inv = self._live.get(inv_id)
        return inv.meta.outlived(now) if inv is not None else self._cold.expired(inv_id, now)

    def live(self) -> list[Invocation]:
        """The invocations held as objects (every one that runs or waits), none thawed."""
        return list(self._live.values())

    @property
    def cold(self) -> int:
        """How many invocations are held as their meta alone."""
        return len(self._cold) - len(self._thawed)

    # -- restore ---------------------------------------------------------------------

    def restore(self, key: bytes, value: bytes | None) -> None:
        """One record of the ``<ns>.invocations`` changelog (before the partition starts).

        A meta that leaves its invocation idle (scheduled or pending in its key's line with
        no journal, or completed) is kept cold at once, as the bytes read, with its
        retention's expiry: a restore of a million of them never holds a million metas as
        objects, nor their journals (which the changelog writes after a completed meta).
        The pending ones' places in line are kept for :meth:`take_lined`. A later record of
        the same id (rewritten, or a tombstone) takes it out again; an unreadable one
        leaves it."""
        entry_at = entry_of(key)
        if entry_at is not None and entry_at[0] in self._cold:
            return  # an idle invocation's entry: its meta counts its entries, for tombstones
        applied = self._restored.apply(key, value)
        if applied is None or applied.index is not None:
            return  # not an invocation's, or one of its journal entries
        inv_id = applied.invocation_id
        meta = self._restored.metas.get(inv_id)
        if value is not None and meta is None:
            return  # unreadable (logged): what was read of it before stands
        self._cold.discard(inv_id)
        self._lined.pop(inv_id, None)
        if meta is None:
            return
        if meta.journal_length and meta.status != "completed":
            return  # it has a journal: restored as an object (start() checks the journal)
        lock = self._lines_up(meta) if meta.status == "pending" else None
        if meta.status not in COLD and lock is None:
            return
        if lock is not None:
            self._lined[inv_id] = (lock, meta.seq)
        del self._restored.metas[inv_id]
        self._restored.entries.pop(inv_id, None)  # read before its meta
        assert value is not None
        written = meta.to_json() if inv_id in self._restored.repaired else value
        self._cold.put(inv_id, written, meta.journal_length, _expires(meta))

    def take_lined(self) -> list[tuple[int, ObjectKey, str]]:
        """The restored pending invocations kept cold (:meth:`restore`), each as its
        ``seq``, the key it waits for, and its id."""
        lined, self._lined = self._lined, {}
        return [(seq, lock, inv_id) for inv_id, (lock, seq) in lined.items()]

    def take_restored(self) -> list[tuple[InvocationMeta, list[Entry]]]:
        """Every restored invocation not kept cold (:meth:`restore`), in arrival order, with
        its journal; the log is then let go."""
        restored, self._restored = self._restored, InvocationLog()
        metas = sorted(restored.metas.values(), key=lambda m: m.seq)
        return [(m, restored.journal(m.id)) for m in metas]

    def restored(self, inv: Invocation) -> None:
        """Hold ``inv``, one of :meth:`take_restored`, as read back from the changelog:
        nothing to write. (The idle ones were kept cold as they were read.)"""
        self._live[inv.meta.id] = inv

    # -- changes ---------------------------------------------------------------------

    def add(self, inv: Invocation) -> None:
        """A new invocation, whose id the caller looked up and found nowhere."""
        self._live[inv.meta.id] = inv
        self._changed.add(inv.meta.id)

    def touch(self, inv: Invocation) -> None:
        """``inv`` changed: write it at the next changelog (which stamps ``modified_at``)."""
        self._changed.add(inv.meta.id)

    def retain(self, inv: Invocation) -> None:
        """Keep a completed ``inv`` until its ``expires_at`` (its deadline goes to the
        spill with it once it is kept cold)."""
        assert inv.meta.expires_at is not None
        self._deadlines[inv.meta.id] = inv.meta.expires_at

    def expired(self, now: float, limit: int = EXPIRED_AT_ONCE) -> Iterator[Invocation]:
        """Retained outcomes whose time has passed (still retained, still completed): the
        live ones, and up to ``limit`` cold ones, the soonest first, so that outcomes piled
        up past their time (a partition that was down for longer than their retention)
        are thawed a bounded batch at a time. Each cold one is read back as it is yielded,
        so a caller that forgets each holds one at a time (with its argument, which may be
        900 KiB), and may stop early."""
        live = [inv_id for inv_id, expires in self._deadlines.items() if expires <= now]
        for inv_id in live + self._cold.due(now, limit):  # an id is in one or the other
            inv = self.get(inv_id)
            expires = inv.meta.expires_at if inv is not None else None
            if inv is not None and inv.meta.status == "completed" and expires and expires <= now:
                yield inv

    def sweep(self, now: float, forget: Callable[[Invocation], None]) -> bool:
        """``forget`` each retained outcome past its time (:meth:`expired`), one read back
        at a time, for at most ``SWEEP_SECONDS``: it runs on the event loop. Whether it
        stopped for the time (some may be left)."""
        began = time.monotonic()
        for inv in self.expired(now):
            forget(inv)
            if time.monotonic() - began > SWEEP_SECONDS:  # the rest at the next sweep
                return True
        return False

    def forget(self, inv: Invocation) -> None:
        """Drop ``inv``; what the changelog holds of it is tombstoned at the next commit."""
        inv_id = inv.meta.id
        self._live.pop(inv_id, None)
        self._deadlines.pop(inv_id, None)
        self._cold.discard(inv_id)
        self._thawed.discard(inv_id)
        self._settling.pop(inv_id, None)
        self._changed.discard(inv_id)
        if inv.persisted:
            self._tombstones.append((inv_id, inv.persisted_entries))

    def changelog(self) -> list[Out]:
        """The changelog records of every change since the last call; then the idle
        invocations written are kept cold, and those thawed but unchanged let go."""
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
            inv = self._live.get(inv_id)
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
            was_cold = inv_id in self._thawed  # held cold as well as live until now
            self._thawed.discard(inv_id)
            self._settling.pop(inv_id, None)
            if self._idle(inv):
                self._keep_cold(inv, meta)
            else:
                if was_cold:
                    self._cold.discard(inv_id)
                expires = _expires(inv.meta)
                if expires is not None:
                    self._deadlines[inv_id] = expires  # not in the spill now
                if inv.meta.status in COLD:
                    self._settling[inv_id] = meta
        for inv_id, meta in list(self._settling.items()):
            if inv_id in self._changed:
                continue  # written just now
            inv = self._live[inv_id]
            if inv.meta.status not in COLD:
                del self._settling[inv_id]  # changed, and written once touched
            elif self._idle(inv):
                self._keep_cold(inv, meta)
                del self._settling[inv_id]
        self._changed.clear()
        for inv_id in self._thawed:  # unchanged: the bytes kept are still its meta
            del self._live[inv_id]
        self._thawed.clear()
        return out

    def _idle(self, inv: Invocation) -> bool:
        """Whether ``inv`` may be kept as its meta alone: scheduled, completed or waiting in
        its key's line, with no task, no action, no journal to keep (a completed one's is
        let go once written)."""
        status = inv.meta.status
        return (
            (status in COLD or (status == "pending" and self._in_line(inv.meta.id, inv.meta.seq)))
            and inv.task is None
            and not inv.actions
            and not inv.journal
            and not inv.dirty_entries
        )

    def _keep_cold(self, inv: Invocation, meta: bytes) -> None:
        """Hold ``inv``, written as ``meta``, cold: in the spill with its deadline, no
        longer as an object."""
        inv_id = inv.meta.id
        self._cold.put(inv_id, meta, inv.persisted_entries, _expires(inv.meta))
        self._deadlines.pop(inv_id, None)
        del self._live[inv_id]
