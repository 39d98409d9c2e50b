"""A read-only view of every partition's invocations and object state, for the admin API.

The admin server follows the compacted ``<ns>.invocations`` and ``<ns>.state``
changelogs (read_committed, from the beginning, then live). It therefore sees what the
workers have committed: every invocation that is queued, running, suspended, backing off,
paused, or completed and retained. An invocation that starts and completes between two
commits of its worker (a short call with nothing retained) is never written to the
changelog, so it never appears here; its caller has its outcome.

The invocations in flight are held in memory; completed and scheduled ones (most of them,
a day of retained outcomes) and the objects' state are held on disk
(``streams.http.index_spill``).
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from pydantic import JsonValue, ValidationError

from streams.engine.deadlocks import HOLDING, describe, find_cycles, wait_for_edges
from streams.engine.journal import Entry, InvocationLog, InvocationMeta, parse_state_key
from streams.engine.spill import SpillFailed
from streams.http.calltree import MAX_NODES, CallLinks, call_tree, iso, parent_of
from streams.http.index_spill import IndexSpill, choose_among
from streams.kafka.offsets import (
    FETCH_WAIT_MS,
    assign_afresh,
    consume_ready,
    listed_topics,
    watermarks,
)
from streams.kafka.setbacks import pause_unless
from streams.settings import Settings
from streams.wire.headers import DENIED_HEADERS, allowed_headers
from streams.wire.topics import Topics

log = logging.getLogger("kourier.ingress")

#: Completed invocations whose journals the index keeps (on disk, ``IndexSpill``), the latest
#: completed: older ones keep their meta (status, argument, outcome) and links, not their
#: entries, which the changelog holds until the outcome's retention ends (a day of
#: idempotent calls by default).
KEPT_JOURNALS = 10_000
#: Seconds before the index reads the changelogs again after its spill failed, doubling
#: while it keeps failing (a disk that stays full), up to the max.
REBUILD_PAUSE = 1.0
REBUILD_PAUSE_MAX = 60.0
#: Seconds an assignment may take to let go of the positions read before (a rebuild's).
ASSIGN_TIMEOUT = 30.0
#: Journal entries an invocation's detail shows by default, the last ones (a workflow may
#: have taken a hundred thousand steps; the UI asks for its detail every second).
JOURNAL_SHOWN = 1_000


def waiting_on(meta: InvocationMeta, journal: list[tuple[int, Entry]]) -> list[str]:
    """What the invocation awaits: open calls, timers, promises, attaches."""
    if meta.status == "completed":
        return []
    return [
        f"{entry.describe()} (entry {i})" + (f" due {iso(entry.due)}" if entry.due else "")
        for i, entry in journal
        if not entry.done and entry.kind != "select"
    ]


def _due_first(meta: InvocationMeta) -> tuple[bool, float]:
    """Sorts invocations with no due time first, then by due time."""
    return meta.due is not None, meta.due or 0.0


def summary(meta: InvocationMeta, links: CallLinks | None = None) -> dict[str, Any]:
    """An invocation's list row. ``caller`` is whoever called or sent it, when known."""
    row: dict[str, Any] = {
        "id": meta.id,
        "target": meta.target.path(),
        "service": meta.target.service,
        "handler": meta.target.handler,
        "key": meta.target.key,
        "status": meta.status,
        "mode": meta.mode,
        "attempt": meta.attempt,
        "created_at": iso(meta.created_at),
        "modified_at": iso(meta.modified_at),
    }
    if meta.idempotency_key is not None:
        row["idempotency_key"] = meta.idempotency_key
    if meta.last_error is not None:
        row["last_error"] = meta.last_error
    link = parent_of(meta, meta.id, links)
    if link is not None:
        row["caller"] = link.parent
    if meta.due is not None:
        row["due_at"] = iso(meta.due)
    return row


def detail(
    meta: InvocationMeta,
    journal: list[tuple[int, Entry]],
    denied: frozenset[str] = DENIED_HEADERS,
    links: CallLinks | None = None,
    omitted: int = 0,
) -> dict[str, Any]:
    """An invocation's detail; its journal without the first ``omitted`` entries (what it
    waits on is read from all of them)."""
    row = summary(meta, links)
    row["argument"] = meta.argument
    row["headers"] = allowed_headers(meta.headers, denied)
    row["waiting_on"] = waiting_on(meta, journal)
    row["journal"] = [{"index": i, **entry.dump()} for i, entry in journal[omitted:]]
    if meta.status == "completed":
        row["outcome"] = (
            {"failure": meta.failure.model_dump()} if meta.failure else {"value": meta.value}
        )
        row["expires_at"] = iso(meta.expires_at) if meta.expires_at else None
    if meta.retry_at is not None and meta.status == "backing-off":
        row["retry_at"] = iso(meta.retry_at)
    return row


#: Statuses of the invocations the index holds on disk: they neither wait nor hold a key.
COLD = frozenset({"completed", "scheduled"})


class _Metas(Mapping[str, InvocationMeta]):
    """Every meta the index holds, in memory (in flight) or on disk, by id: what a call
    tree looks its nodes up in (those on disk without their argument and value)."""

    def __init__(self, live: dict[str, InvocationMeta], cold: IndexSpill) -> None:
        self._live = live
        self._cold = cold

    def __getitem__(self, inv_id: str) -> InvocationMeta:
        meta = self._live.get(inv_id) or self._cold.node(inv_id)
        if meta is None:
            raise KeyError(inv_id)
        return meta

    def __contains__(self, inv_id: object) -> bool:
        return inv_id in self._live or (isinstance(inv_id, str) and inv_id in self._cold)

    def __iter__(self) -> Iterator[str]:
        raise NotImplementedError("the index's metas are looked up by id, not listed")

    def __len__(self) -> int:
        return len(self._live) + len(self._cold)


class InvocationIndex:
    """Follows the changelogs on a background thread; query it from any thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = Topics(settings.namespace)
        self.log = InvocationLog()  # metas in flight, and the journals kept
        self.links = CallLinks()  # who sent what: a send's callee does not name its sender
        self.cold = IndexSpill()  # completed and scheduled metas, objects' state
        self.metas = _Metas(self.log.metas, self.cold)
        #: Completed invocations whose journals are kept (``KEPT_JOURNALS``): id -> when it
        #: completed, and a heap of those times, with entries of ids no longer kept there.
        self._kept: dict[str, float] = {}
        self._completions: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._version = 0  # changes with every changelog record applied
        self._cycles: tuple[int, list[dict[str, Any]]] = (-1, [])
        self._running = False
        #: What the index holds may be wrong (its spill failed): read again before going on.
        self._stale = False
        self._thread: threading.Thread | None = None
        # start and close run in worker threads (asyncio.to_thread); a start cancelled by
        # its caller runs on, so close waits for it and a start after close does nothing
        self._life = threading.Lock()
        self._closed = False

    def start(self) -> None:
        with self._life:
            if not self._closed:
                self._start()

    def _start(self) -> None:
        self._consumer = Consumer(
            self.settings.client_config(
                {
                    "group.id": f"{self.settings.namespace}.admin.{uuid.uuid4().hex}",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    # A segment compacted away under the read: from the start again, not
                    # from the end (the default), which left the index short, caught up.
                    "auto.offset.reset": "earliest",
                    "fetch.wait.max.ms": FETCH_WAIT_MS,
                    "log_level": 3,
                }
            )
        )
        try:
            self._assign()
        except BaseException:  # no thread to close the consumer later
            self._consumer.close()
            raise
        if self._closed:  # closed while it started: close waits for this, then returns
            self._consumer.close()
            return
        self._running = True
        self._thread = threading.Thread(target=self._follow, name="kourier-index", daemon=True)
        self._thread.start()

    def _assign(self) -> None:
        """Read both changelogs from the start, noting where they end now."""
        followed = (self.topics.invocations, self.topics.state)
        metadata, absent = listed_topics(self._consumer, followed)
        if absent:
            log.warning("the admin index follows no %s: the cluster does not list them", absent)
        assignment = [
            TopicPartition(topic, p, OFFSET_BEGINNING)
            for topic in followed
            if topic in metadata
            for p in metadata[topic].partitions
        ]
        ends = {}
        for tp in assignment:  # one request each: a close meanwhile need not wait for all
            if self._closed:
                return
            low, high = watermarks(self._consumer, tp)
            if high > low:  # one with no record left (all deleted) gives nothing to read
                ends[tp.topic, tp.partition] = high
        self._ends = ends
        # A rebuild assigns again what the consumer read before: a position from then
        # would pass for having read to the ends, and the index for caught up, empty.
        assign_afresh(self._consumer, assignment, ASSIGN_TIMEOUT, lambda: self._closed)

    def close(self) -> None:
        self._closed = True  # first: a start in progress gives up at its next step
        with self._life:
            self._running = False
            if self._thread is not None:
                self._thread.join()
                self._consumer.close()
                self._thread = None
            with self._lock:
                self.cold.close()

    def caught_up(self) -> bool:
        """Whether the changelogs have been read up to where they ended at start, or at the
        last rebuild (none pending)."""
        return not self._ends and not self._stale

    def wait_caught_up(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self.caught_up() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.caught_up()

    def _follow(self) -> None:
        pause = REBUILD_PAUSE
        while self._running:
            try:
                if self._stale:  # until a rebuild succeeds: the views are not to be trusted
                    self._rebuild()
                    self._stale = False
                self._follow_once()
                if not self._ends:
                    pause = REBUILD_PAUSE  # caught up since the last rebuild
            except SpillFailed as failure:  # a full disk: what it holds may be part-written
                self._stale = True  # first: bulk actions answer 503 through the pause
                log.error("%s; the admin index reads the changelogs again in %gs", failure, pause)
                pause_unless(lambda: not self._running, pause)
                pause = min(2 * pause, REBUILD_PAUSE_MAX)
            except Exception:  # Kafka's, or ours: logged, and the views go on being followed
                log.exception("the admin index could not read the changelogs; trying again")
                time.sleep(1.0)

    def _rebuild(self) -> None:
        """Forget what was read and read both changelogs again from their start, into a new
        spill: the index is a cache of them (follow thread). Bulk actions answer 503 until
        it has caught up again, as after a start. Raises what stops it (a spill failing
        again, Kafka not answering): ``_follow`` then pauses and calls it again."""
        with self._lock:
            # First, as it may fail again (then the next pause, and again): the views are
            # then left whole, as read before, not half forgotten over a closed spill.
            cold = IndexSpill()
            self.cold.close()
            self.cold = cold
            self.log = InvocationLog()
            self.links = CallLinks()
            self._kept, self._completions = {}, []
            self._version += 1
            self.metas = _Metas(self.log.metas, self.cold)
        self._assign()

    def _follow_once(self) -> None:
        """Read what the changelogs hold next, and how far that is."""
        messages = consume_ready(self._consumer, 1000, 0.1)
        with self._lock:
            for message in messages:
                if message.error() is None:
                    self._apply(message.topic() or "", message.key(), message.value())
            self.cold.commit()
            self._version += len(messages)
        if self._ends:
            positions = self._consumer.position([TopicPartition(t, p) for t, p in self._ends])
            for tp in positions:
                if tp.offset >= self._ends[(tp.topic, tp.partition)]:
                    del self._ends[(tp.topic, tp.partition)]

    def _apply(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        try:
            if topic == self.topics.state:
                self._apply_state(key, value)
            else:
                self._apply_invocation(key, value)
        except (ValueError, ValidationError, RecursionError) as error:
            # A record this version does not understand (a state key of another shape among
            # them: parse_state_key says so): not the index's to judge. Raised, it ended the
            # thread that follows the changelogs, and the views stood still from then on.
            log.debug("%s record %r passed over: %r", topic, key[:200], error)
        except SpillFailed:
            raise  # not the record's fault: what the spill holds is not to be trusted now
        except Exception:  # a defect of ours in reading one: the rest of the views go on
            log.exception("%s record %r passed over", topic, key[:200])

    def _apply_invocation(self, key: bytes, value: bytes | None) -> None:
        applied = self.log.apply(key, value)
        if applied is None:
            return
        inv_id = applied.invocation_id
        if applied.index is None and value is None:  # the invocation is gone
            self.cold.discard(inv_id)
            self.links.forget(inv_id)
            if self._kept.pop(inv_id, None) is not None:
                self.cold.drop_journal(inv_id)
            return
        if applied.index is not None:
            if applied.entry is not None:
                self.links.record(inv_id, applied.index, applied.entry)
            live = self.log.metas.get(inv_id)
            status = live.status if live is not None else self.cold.status(inv_id)
            if status == "completed":  # read after its meta (compaction): on disk, if kept
                self.log.entries.pop(inv_id, None)
                if inv_id not in self._kept:
                    return
                if value is None:
                    self.cold.drop_entry(inv_id, applied.index)
                else:
                    assert applied.entry is not None
                    self.cold.put_entries(inv_id, [(applied.index, applied.entry.kind, value)])
            return
        meta = self.log.metas.get(inv_id)
        if meta is None:
            return  # unreadable: what was read of it before stands
        if meta.status != "completed" and self._kept.pop(inv_id, None) is not None:
            self.cold.drop_journal(inv_id)  # its id made again: a journal of its own
        if meta.status not in COLD:
            self.cold.discard(inv_id)  # in flight again (a scheduled one started)
            return
        assert value is not None
        self.cold.put(meta, meta.to_json() if inv_id in self.log.repaired else value)
        del self.log.metas[inv_id]
        self.log.repaired.discard(inv_id)
        if meta.status == "completed":  # its journal kept while among the latest completed
            entries = self.log.entries.pop(inv_id, {})
            self._keep(inv_id, meta.modified_at)
            if inv_id in self._kept:
                written = ((i, e.kind, e.to_json()) for i, e in entries.items())
                self.cold.put_entries(inv_id, written)

    def _keep(self, inv_id: str, completed_at: float) -> None:
        """Keep the journal of ``inv_id``, completed at ``completed_at`` and held on disk,
        if it is among the ``KEPT_JOURNALS`` latest completed (the partitions are read in no
        order of time); drop the journal of the earliest otherwise."""
        self._kept[inv_id] = completed_at
        heapq.heappush(self._completions, (completed_at, inv_id))
        while len(self._kept) > KEPT_JOURNALS:
            at, earliest = heapq.heappop(self._completions)
            if self._kept.get(earliest) == at:
                del self._kept[earliest]
                self.cold.drop_journal(earliest)
        if len(self._completions) > 2 * len(self._kept) + 1024:  # mostly ids let go since
            self._completions = [(at, i) for i, at in self._kept.items()]
            heapq.heapify(self._completions)

    def _apply_state(self, key: bytes, value: bytes | None) -> None:
        service, obj, name, is_promise = parse_state_key(key)
        if is_promise:
            return
        if value is not None:
            json.loads(value)  # not JSON: passed over (see _apply), as before it was kept
        self.cold.set_state(service, obj, name, value)

    # -- queries -----------------------------------------------------------------------

    def query(
        self,
        *,
        status: str | None = None,
        service: str | None = None,
        key: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        with self._lock:  # rows built for the ``limit`` kept only (the UI asks every second)
            found = self._matching(status=status, service=service, key=key)
            if status == "scheduled":  # the soonest due first, so the limit keeps those
                found += self.cold.newest(
                    status=status, service=service, key=key, limit=limit, by="due"
                )
                kept = heapq.nsmallest(limit, found, key=_due_first)
            else:
                found += self.cold.newest(status=status, service=service, key=key, limit=limit)
                kept = heapq.nlargest(limit, found, key=lambda m: m.created_at)
            return [summary(meta, self.links) for meta in kept]

    def choose(
        self,
        *,
        status: str | None = None,
        service: str | None = None,
        key: str | None = None,
        among: frozenset[str],
        ids: frozenset[str] | None = None,
        limit: int,
    ) -> tuple[list[tuple[str, str, str]], int, int]:
        """What a bulk action acts on: ``(id, status, target)`` of the newest ``limit``
        invocations the filter matches (and ``ids`` names, when given) whose status is
        ``among`` those the action applies to; how many such; how many others matched.

        ``ids`` are what a dry run listed by the filter's status: one whose status changed
        since (a scheduled send that started) is acted on all the same where the action
        applies, as its control record would be. Filtered by the status again, it was left
        out, uncounted, and the requester told all was done."""
        if ids is not None:
            status = None
        with self._lock:
            live = choose_among(
                (
                    (meta.created_at, meta.id, meta.status, meta.target.path())
                    for meta in self._matching(status=status, service=service, key=key)
                ),
                among,
                ids,
                limit,
            )
            cold = self.cold.choose(
                status=status, service=service, key=key, among=among, ids=ids, limit=limit
            )
        newest = heapq.nlargest(limit, live[0] + cold[0])
        chosen = [(inv_id, inv_status, target) for _, inv_id, inv_status, target in newest]
        return chosen, live[1] + cold[1], live[2] + cold[2]

    def _matching(
        self, *, status: str | None, service: str | None, key: str | None
    ) -> list[InvocationMeta]:
        """The metas in memory (in flight) the filter matches."""
        return [
            meta
            for meta in self.log.metas.values()
            if (status is None or meta.status == status)
            and (service is None or meta.target.service == service)
            and (key is None or meta.target.key == key)
        ]

    def describe(
        self, invocation_id: str, journal_limit: int = JOURNAL_SHOWN
    ) -> dict[str, Any] | None:
        """An invocation's detail, with the last ``journal_limit`` entries of its journal
        (``journal_omitted`` counts those before them)."""
        with self._lock:
            meta = self.log.metas.get(invocation_id) or self.cold.get(invocation_id)
            if meta is None:
                return None
            if invocation_id in self._kept:  # completed (waits on nothing): the last ones read
                held = self.cold.journal_held(invocation_id, meta.journal_length)
                journal = self.cold.journal(invocation_id, meta.journal_length, journal_limit)
                omitted = held - len(journal)
                row = detail(meta, journal, self.settings.header_denylist, self.links)
            else:
                journal = self.log.numbered(meta)
                omitted = max(0, len(journal) - journal_limit)
                row = detail(meta, journal, self.settings.header_denylist, self.links, omitted)
            row["tree"] = call_tree(
                invocation_id, self.metas, self._journal, self.links, count=self._calls_made
            )
            holder = self._holder(meta)
            if holder is not None:  # queued behind it: what it waits on is the key
                row["waiting_on"].append(
                    f"its key, held by {holder.id} ({holder.target.path()}, {holder.status})"
                )
            if meta.status == "completed" and invocation_id not in self._kept:
                row["journal_dropped"] = True  # completed before the latest KEPT_JOURNALS
            if omitted:
                row["journal_omitted"] = omitted
            return row

    def _holder(self, meta: InvocationMeta) -> InvocationMeta | None:
        """The exclusive invocation that holds the key ``meta`` is queued for, if any."""
        target = meta.target
        if meta.status != "pending" or not meta.exclusive or target.key is None:
            return None
        for inv_id in self.log.active:
            other = self.log.metas[inv_id]
            if (
                other.exclusive
                and other.status in HOLDING
                and other.target.key == target.key
                and other.target.service == target.service
                and inv_id != meta.id
            ):
                return other
        return None

    def _journal(self, invocation_id: str) -> list[tuple[int, Entry]]:
        """The entries held of an invocation's journal, with their indexes, for its call
        tree: in memory while it is in flight, its calls and sends on disk once it completed
        (if kept)."""
        meta = self.metas.get(invocation_id)
        if meta is None:
            return []
        if invocation_id in self._kept:  # no more than a tree shows: the count says the rest
            return self.cold.calls(invocation_id, meta.journal_length, MAX_NODES + 1)
        return self.log.numbered(meta)

    def _calls_made(self, invocation_id: str) -> int:
        """How many calls and sends of an invocation's journal the index holds."""
        meta = self.metas.get(invocation_id)
        if meta is None:
            return 0
        if invocation_id in self._kept:
            return self.cold.calls_held(invocation_id, meta.journal_length)
        return sum(1 for _, e in self.log.numbered(meta) if e.kind in ("call", "send") and e.callee)

    def deadlocks(self) -> list[dict[str, Any]]:
        """Wait-for cycles among the indexed invocations (see ``streams/engine/deadlocks.py``).

        Only invocations in flight can wait or hold a key (not a completed or scheduled
        one, which may be most of them), so only theirs are looked at; the answer is kept
        until the changelogs move on. Blocking: call it off the event loop.
        """
        with self._lock:
            version = self._version
            if self._cycles[0] == version:
                return self._cycles[1]
            changelog = self.log
            pairs = [(changelog.metas[i], changelog.journal(i)) for i in changelog.active]
        metas = {meta.id: meta for meta, _ in pairs}
        found = [describe(cycle, metas) for cycle in find_cycles(wait_for_edges(pairs))]
        self._cycles = (version, found)
        return found

    def state_of(self, service: str, key: str) -> dict[str, JsonValue]:
        with self._lock:
            return self.cold.state_of(service, key)
