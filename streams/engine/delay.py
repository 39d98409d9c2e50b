"""Delayed sends: the delay topic's partitions, their timers, and the release of due messages.

A delayed send (or a durable timer) is a :class:`~streams.wire.records.Delayed` record on
``<ns>.delay``, on the partition that owns its target. The worker that owns a delay
partition knows every pending record of it and keeps one event-loop timer for the
earliest. When one is due it emits, in the next transaction, the released record to the
ingress topic and a :class:`~streams.wire.records.Fired` marker to the same delay partition;
the delay partition's committed offset is the lowest offset still pending. After a
restart or rebalance the new owner reads from that offset and skips what a marker says
was released; it releases nothing until it has read to the partition's end, so nothing is
released twice and nothing early (only once the wall clock has passed its due time). A
waiting message costs memory, no CPU: nothing runs until the earliest timer.

Memory. Only messages due within the *horizon* (30 s) are held in full, in a heap by due
time; a later one is held as its offset alone, in a bucket per due second, with one bit of
an ``OffsetSet`` saying whether it is still pending. Once the earliest bucket comes within
``LEAD`` (10 s), a ``DelayReader`` (``streams.kafka``) reads back every bucket now inside
the horizon on a thread of its own. The invariant: every pending message due before
``_loaded_until`` (a whole second that grows with the clock) is held in full, being read back or
waiting in ``_overdue`` (a backlog), and buckets hold only later ones, so a short delay
never waits for a read-back.

A backlog of overdue messages (read while catching up, or buckets that fell due unread)
waits as offsets in ``_overdue`` while the worker holds ``holding.BACKLOG_HELD`` overdue
messages in full (live ones are not counted), and goes out ``RELEASE_BATCH`` a step. Far
messages that pin the committed offset are carried forward (``_carry``): read back, written
again at the end with a ``Fired`` marker for the old offset, in one transaction. The whole
of it, and what it measured: ``streams/README.md``, "The delay topic" and the sections
after it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from array import array
from collections.abc import Callable

from streams.engine.buckets import Buckets, Fetched, Fetcher
from streams.engine.delay_records import LogRewound, releasable, why_set_aside
from streams.engine.holding import Holding, trim_heap
from streams.engine.offset_set import OffsetSet
from streams.engine.outbox import Out, set_aside
from streams.metrics import CARRIED, DEADLETTERS
from streams.wire.records import Delayed, Fired, RecordError, decode_delay, encode
from streams.wire.topics import Topics

log = logging.getLogger("kourier.delay")

HORIZON = 30.0  # messages due sooner than this are held in full
LEAD = 10.0  # read far messages back once the earliest is due within this
FETCH_BATCH = 20_000  # offsets per read-back
MAX_HELD = 200_000  # no far read-back while a partition holds this many messages in full
RELEASE_BATCH = 5_000  # releases per partition per loop callback or step: transactions stay small
REPORT_EVERY = 10.0  # seconds between log lines of the pending count while it changes
TRIM_AFTER = 100_000  # records read, after which freed heap memory goes back to the OS
CARRY_AFTER = 100_000  # records behind the end before the oldest pending are carried forward
CARRY_SPARSE = 8  # ... while a carry would write (2 per message) at most 1/8 of those records
CARRY_BATCH = 2_000  # messages per carry (one read-back, and their copies in one snapshot)
CARRY_BYTES = 16 << 20  # ... and the read-back stops once it holds this many bytes
CARRY_SPAN = 100_000  # offsets one carry may read through (a read-back blocks other reads)
CARRY_RETRY = 5.0  # seconds before looking again when nothing could be carried


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
        fetcher: Fetcher,
        holding: Holding | None = None,
        horizon: float | None = None,
        lead: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        horizon = HORIZON if horizon is None else horizon
        lead = LEAD if lead is None else lead
        if lead + 1 > horizon:
            raise ValueError("the horizon must exceed the read-back lead by a second or more")
        self.partition = partition
        self.partitions = partitions
        self.topics = topics
        self._caught_up_at = caught_up_at  # release nothing before reading this far
        self._emit = emit
        self._wake = wake
        self._fetcher = fetcher
        # Messages held in full by every delay processor of the worker (this one alone if
        # none is given); a closed processor counts in it no more.
        self._holding = Holding() if holding is None else holding
        self._horizon = horizon
        self._lead = lead
        self._clock = clock
        self._start = self._next_offset = start_offset  # those below were dealt with
        self._pending = OffsetSet(start_offset)  # every offset not yet released
        # Due within the horizon: a heap of (due, offset) and the records themselves.
        self._near: list[tuple[float, int]] = []
        self._held: dict[int, Out] = {}  # offset -> the record to emit when due
        self._overdue_held: set[int] = set()  # those overdue when held (counted in Holding)
        self._far = Buckets()  # due later: their offsets, by due second
        # Overdue, while the worker held BACKLOG_HELD (a backlog): offsets, ascending.
        self._overdue: array[int] = array("q")
        self._reading_overdue = 0  # how many are being read back (counted in Holding now)
        self._loaded_until = math.floor(clock() + horizon)
        self._fetching = False  # a read-back of far messages soon due is under way
        self._carrying = False  # a carry's read-back is under way
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._backlog = False  # the last release stopped at RELEASE_BATCH with more due
        self._refill_timer: asyncio.TimerHandle | None = None
        self._refill_at: float | None = None
        self._report: asyncio.TimerHandle | None = None
        self._reported = -1
        self._read_since_trim = 0
        # No look for messages to carry forward until this timer (the loop's clock, which
        # the wall clock's steps do not move) says to look again.
        self._carry_timer: asyncio.TimerHandle | None = None
        self.carried = 0  # messages carried forward, in all
        self.closed = False

    # -- reading the partition -------------------------------------------------------

    @property
    def caught_up(self) -> bool:
        return self._next_offset >= self._caught_up_at

    def advance(self, position: int) -> None:
        """The consumer's position (past transaction markers, which carry no record)."""
        if position > self._next_offset:
            was = self.caught_up
            self._next_offset = position
            self._on_progress(was)

    def on_message(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        if offset < self._start:  # the consumer reset to the log's start: made again
            raise LogRewound(self.partition, offset, self._start)
        was = self.caught_up
        self._next_offset = offset + 1
        self._read_since_trim += 1
        try:
            record = decode_delay(value)
            if isinstance(record, Fired):
                if self._pending.discard(record.offset):
                    self._unhold(record.offset)
            else:
                self._add(record, offset, releasable(record, key, self.partitions, self.topics))
        except Exception as raised:  # one record never stops the partition
            error = why_set_aside(raised, self.partition, offset)
            self._pending.add(offset)
            if error.reason == "unsupported-version":
                # Written by a newer Kourier (a rolling upgrade): pending, never released
                # here, so the commit offset waits for it and a newer owner releases it.
                log.warning("delay %d@%d: %s (left for a newer worker)", self.partition,
                            offset, error)  # fmt: skip
            else:
                # Released at once, to the dead-letter topic, with a Fired marker like any
                # other: so it is set aside once, however often the partition is read again.
                self._hold(offset, 0.0, self._dead_letter(error, key, value, offset), True)
        self._on_progress(was)

    def _on_progress(self, was_caught_up: bool) -> None:
        if self.caught_up and not was_caught_up:
            log.info(
                "delay %d: caught up at offset %d, %d pending",
                self.partition,
                self._next_offset,
                self.pending,
            )
        self._changed()
        self._arm()

    def _add(self, record: Delayed, offset: int, released: Out) -> None:
        self._pending.add(offset)
        due = record.release_time()
        now = self._clock()
        self._extend_horizon(now)
        second = math.floor(due)
        if second < self._loaded_until:
            if not self.caught_up and due <= now and self._holding.full:
                # A backlog's overdue message while the worker holds BACKLOG_HELD: an offset,
                # read back as releases make room, in the order read.
                self._overdue.append(offset)
                return
            self._hold(offset, due, released, due <= now)
            return
        self._far.add(second, offset)

    def _dead_letter(
        self, error: RecordError, key: bytes | None, value: bytes | None, offset: int
    ) -> Out:
        source = (self.topics.delay, self.partition, offset)
        return set_aside(error, source, key, value, self.topics.deadletter)

    def _hold(self, offset: int, due: float, released: Out, overdue: bool) -> None:
        """Hold ``offset``'s record in full until ``due``. An ``overdue`` one (due when held,
        or read back from ``_overdue`` whatever the clock says since) is a backlog's, counted
        against BACKLOG_HELD; live ones, due within the horizon, are held whatever the
        count, and counted would hold a backlog back."""
        if offset not in self._overdue_held and overdue and not self.closed:
            self._overdue_held.add(offset)
            self._holding.add(1)  # (a closed processor's were dropped from the count)
        self._held[offset] = released
        heapq.heappush(self._near, (due, offset))
        if len(self._near) > 2 * len(self._held) + 1024:
            # Mostly entries of messages a marker released since: a new owner reading a
            # backlog, before it has caught up and _arm pops them. Only the held stay.
            self._near = [entry for entry in self._near if entry[1] in self._held]
            heapq.heapify(self._near)

    def _unhold(self, offset: int) -> Out | None:
        """The record held for ``offset``, no longer held; None if none was."""
        held = self._held.pop(offset, None)
        if offset in self._overdue_held:
            self._overdue_held.discard(offset)
            if not self.closed:
                self._holding.drop(1)
        return held

    # -- what the worker asks -----------------------------------------------------------

    def commit_offset(self) -> int:
        """Where a new owner must start reading: the oldest message not yet released."""
        lowest = self._pending.lowest()
        return self._next_offset if lowest is None else lowest

    @property
    def pending(self) -> int:
        """Messages read and not yet released."""
        return len(self._pending)

    @property
    def held(self) -> int:
        """Messages held in full (due within the horizon, or read back)."""
        return len(self._held)

    @property
    def next_due(self) -> float | None:
        """When the next release is due (wall-clock seconds), once caught up; an attribute
        read, so the worker's Kafka thread may ask."""
        return self._timer_at

    @property
    def next_read_back(self) -> float | None:
        """When the next read-back of far messages is due (wall-clock seconds), if armed."""
        return self._refill_at

    @property
    def next_wake(self) -> float | None:
        """When a step should :meth:`tick` it: the sooner of its next release and read-back,
        held by the Kafka thread against the wall clock (loop timers miss its steps, suspends)."""
        release, read_back = self._timer_at, self._refill_at
        if release is None or read_back is None:
            return read_back if release is None else release
        return min(release, read_back)

    # -- horizon and read-back -------------------------------------------------------------

    def _extend_horizon(self, now: float) -> None:
        """Move the horizon forward when no bucket would fall behind it; back with a clock
        that stepped back, or every message due within the step would be held in full."""
        limit = math.floor(now + self._horizon)
        if limit < self._loaded_until - 1:  # (buckets are at or past it: they stay behind)
            self._loaded_until = limit
            return
        earliest = self._far.earliest
        if limit > self._loaded_until and (earliest is None or earliest >= limit):
            self._loaded_until = limit

    def _refill(self, now: float) -> None:
        """Read back the buckets that came inside the horizon, once the earliest is near."""
        self._defer_overdue(now)
        earliest = self._far.earliest
        if self._fetching or earliest is None or len(self._held) >= MAX_HELD:
            return
        if earliest > now + self._lead:
            return
        limit = math.floor(now + self._horizon)
        # A crowded second is read back in parts; the horizon passes it after the last.
        offsets, emptied = self._far.take(limit, FETCH_BATCH, self._pending.__contains__)
        self._loaded_until = max(self._loaded_until, emptied)
        self._extend_horizon(now)
        if offsets:
            offsets.sort()
            self._fetching = True
            self._fetcher.fetch(self.partition, offsets, self._on_fetched, wanted=self._open)

    def _defer_overdue(self, now: float) -> None:
        """Buckets whose every message fell due unread (a catch-up longer than the horizon,
        read-backs failing while a broker was away) are a backlog: their offsets join
        ``_overdue``, read back as the worker's ``Holding`` has room, and the horizon passes
        them, so that live messages are held at once again."""
        earliest = self._far.earliest
        if earliest is None or earliest >= math.floor(now):
            return
        keep = self._pending.__contains__
        offsets, emptied = self._far.take(math.floor(now), self._far.size, keep)
        self._loaded_until = max(self._loaded_until, emptied)
        self._extend_horizon(now)
        # Ascending, as read-backs ask (one sort, in C: the overdue run is ascending already).
        self._overdue = array("q", sorted(itertools.chain(self._overdue, offsets)))

    def _on_fetched(self, found: list[Fetched], missing: list[int]) -> None:
        """Records read back (on the loop): hold them in full until due."""
        if self.closed:
            return
        self._fetching = False
        self._take(found, missing)

    def _read_overdue(self) -> None:
        """Read back the next overdue messages that waited for room, if there is some."""
        if self._reading_overdue or not self._overdue:
            return
        room = self._holding.room
        if room <= 0:
            self._holding.wait(self._on_room)
            return
        offsets: list[int] = []
        while self._overdue and not offsets:
            batch = min(FETCH_BATCH, room)
            taken = self._overdue[:batch]
            del self._overdue[:batch]
            offsets = [o for o in taken if o in self._pending]
        if offsets:
            # Room taken now: every partition one release woke would see the same room.
            self._reading_overdue = len(offsets)
            self._holding.add(len(offsets))
            self._fetcher.fetch(self.partition, offsets, self._on_overdue, wanted=self._open)

    def _on_overdue(self, found: list[Fetched], missing: list[int]) -> None:
        if self.closed:
            return
        self._holding.drop(self._reading_overdue)  # counted again as each is held
        self._reading_overdue = 0
        self._take(found, missing, backlog=True)

    def _on_room(self) -> None:
        """The worker holds fewer than BACKLOG_HELD again (another partition released some)."""
        if not self.closed:
            self._arm()

    def _take(self, found: list[Fetched], missing: list[int], backlog: bool = False) -> None:
        now = self._clock()
        for offset, key, value in found:
            if offset not in self._pending:
                continue  # released or marked fired meanwhile
            try:
                record = decode_delay(value)
                if not isinstance(record, Delayed):
                    raise RecordError("bad-schema", f"a {record.kind} record read back as delayed")
                released = releasable(record, key, self.partitions, self.topics)
                due = record.release_time()
                self._hold(offset, due, released, backlog or due <= now)
            except Exception as raised:  # it was a valid delayed record when first read
                error = why_set_aside(raised, self.partition, offset)
                log.error("delay %d@%d: %s (dead-lettered)", self.partition, offset, error)
                self._hold(offset, 0.0, self._dead_letter(error, key, value, offset), True)
        self._drop_missing(missing)
        self._changed()
        self._arm()

    def _drop_missing(self, missing: list[int]) -> None:
        for offset in missing:
            if self._pending.discard(offset):
                log.error(
                    "delay %d@%d: pending message no longer on the partition (retention?); "
                    "it cannot be released",
                    self.partition,
                    offset,
                )

    # -- carrying forward -------------------------------------------------------------------

    def _carry(self, now: float) -> None:
        """Read back the oldest messages kept as offsets when they hold the committed offset
        far behind a partition that is mostly released (see the module's docstring)."""
        if self._carrying or self._carry_timer is not None or len(self._held) >= MAX_HELD:
            return
        if self._overdue or self._reading_overdue:
            return  # a backlog is being released: none of it is worth copying
        lowest = self._pending.lowest()
        if lowest is None or lowest in self._held:
            return  # held messages leave within the horizon: carrying past one moves nothing
        span = self._next_offset - lowest
        if span < CARRY_AFTER or 2 * len(self._pending) * CARRY_SPARSE > span:
            return
        # The rest move (those left for a newer worker too: they are copied as they are,
        # never decoded here). One read-back covers at most CARRY_SPAN offsets, so that the
        # read-backs of messages soon due never wait long behind it.
        limit = min(self._next_offset - CARRY_AFTER // 4, lowest + CARRY_SPAN)
        movable = (o for o in self._pending.below(limit) if o not in self._held)
        offsets = list(itertools.islice(movable, CARRY_BATCH))
        self._carrying = True
        self._fetcher.fetch(
            self.partition,
            offsets,
            self._on_carried,
            urgent=False,
            max_bytes=CARRY_BYTES,
            wanted=self._open,
        )

    def _on_carried(self, found: list[Fetched], missing: list[int]) -> None:
        """Write each record read back again at the partition's end, with a marker for its
        old offset; both go in the next transaction, whose delay offset can then pass it.
        Offsets the read-back stopped short of stay where they are, for the next carry."""
        if self.closed:
            return
        self._carrying = False
        carried = 0
        for offset, key, value in found:
            if offset not in self._pending or offset in self._held:
                continue  # released, or read back to be released, meanwhile
            self._pending.discard(offset)
            self._emit(Out(self.topics.delay, self.partition, key, value))
            self._emit(Out(self.topics.delay, self.partition, key, encode(Fired(offset=offset))))
            carried += 1
        self._drop_missing(missing)
        if carried:
            self.carried += carried
            CARRIED.inc(carried)
            log.info(
                "delay %d: %d pending messages carried forward to offset %d or later",
                self.partition,
                carried,
                self._next_offset,
            )
            self._wake()
        elif not missing:  # nothing moved: look again later, not at once
            if self._carry_timer is not None:
                self._carry_timer.cancel()
            self._carry_timer = self._later(CARRY_RETRY, self._on_carry_timer)
        self._compact_far()
        self._changed()
        self._arm()

    def _on_carry_timer(self) -> None:
        self._carry_timer = None
        self._arm()

    def _compact_far(self) -> None:
        """Drop offsets no longer pending from the buckets once they are most of them (a
        carried message's old offset stays in its bucket until then)."""
        live = len(self._pending) - len(self._held) - len(self._overdue)
        if self._far.size > 2 * live + FETCH_BATCH:
            self._far.compact(self._pending.__contains__)

    # -- timers and release ----------------------------------------------------------------

    def _arm(self) -> None:
        """One timer for the earliest message held in full, one for the next read-back
        (once caught up); re-armed only when their time changes."""
        if self.closed or not self.caught_up:
            return
        now = self._clock()
        self._extend_horizon(now)
        self._refill(now)
        self._read_overdue()
        self._carry(now)
        while self._near and self._near[0][1] not in self._held:
            heapq.heappop(self._near)  # released through a marker
        due = self._near[0][0] if self._near else None
        # A backlog of due messages goes a batch per step of the worker (``tick``, as
        # ``next_due`` has passed), not batch after batch on the loop: each step's releases
        # reach the committer, whose back-pressure holds the next step back.
        timed = due is not None and not (self._backlog and due <= now)
        if due != self._timer_at or timed != (self._timer is not None):
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None
            if timed and due is not None:
                self._timer = self._later(due - now, self._on_due)
            self._timer_at = due
        refill_at = None
        earliest = self._far.earliest
        if earliest is not None and not self._fetching and len(self._held) < MAX_HELD:
            refill_at = earliest - self._lead
            if refill_at <= now:  # not possible yet; a release or read-back re-arms
                refill_at = None
        if refill_at != self._refill_at:
            if self._refill_timer is not None:
                self._refill_timer.cancel()
            self._refill_timer = (
                self._later(refill_at - now, self._on_refill) if refill_at is not None else None
            )
            self._refill_at = refill_at

    @staticmethod
    def _later(delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback)

    def _on_due(self) -> None:
        self._timer = None
        self._timer_at = None
        if not self.closed:
            self._release(self._clock())
            self._arm()

    def _on_refill(self) -> None:
        self._refill_timer = None
        self._refill_at = None
        self._arm()

    def _release(self, now: float) -> None:
        """Emit what is due (never before its release time, see ``Delayed.release_time``), at
        most a batch at a time."""
        released = 0
        while self._near and self._near[0][0] <= now and released < RELEASE_BATCH:
            _, offset = heapq.heappop(self._near)
            held = self._unhold(offset)
            if held is None:
                continue
            self._pending.discard(offset)
            self._emit(held)
            if held.topic == self.topics.deadletter:  # counted when set aside, not when read
                reason = dict(held.headers or []).get("kourier.reason")
                text = reason.decode() if isinstance(reason, bytes) else str(reason)
                log.warning("delay %d@%d: dead-lettered (%s)", self.partition, offset, text)
                DEADLETTERS.labels(text).inc()
            fired = encode(Fired(offset=offset))
            self._emit(Out(self.topics.delay, self.partition, held.key, fired))
            released += 1
        self._backlog = released == RELEASE_BATCH
        if released:
            self._wake()
            self._changed()

    def tick(self) -> None:
        """Release what is due now and start a due read-back (the timers call this too)."""
        if not self.closed and self.caught_up:
            self._release(self._clock())
        self._arm()

    # -- reporting ------------------------------------------------------------------------

    def _changed(self) -> None:
        """Log the pending count within REPORT_EVERY of a change; nothing while idle."""
        changed = self.pending != self._reported or self._read_since_trim >= TRIM_AFTER
        if self._report is None and not self.closed and changed:
            self._report = asyncio.get_running_loop().call_later(REPORT_EVERY, self._log_pending)

    def _log_pending(self) -> None:
        self._report = None
        if self._read_since_trim >= TRIM_AFTER:
            self._read_since_trim = 0
            asyncio.get_running_loop().run_in_executor(None, trim_heap)
        if self.pending != self._reported:
            self._reported = self.pending
            log.info(
                "delay %d: %d pending (%d held in full, %d by offset)",
                self.partition,
                self.pending,
                self.held,
                self._far.size,
            )

    def _open(self) -> bool:
        """Whether read-backs asked for are still wanted (any thread)."""
        return not self.closed

    def close(self) -> None:
        was_open = not self.closed
        self.closed = True
        for handle in (self._timer, self._refill_timer, self._report, self._carry_timer):
            if handle is not None:
                handle.cancel()
        self._timer = self._refill_timer = self._report = self._carry_timer = None
        self._timer_at = self._refill_at = None
        if was_open:
            self._holding.forget(self._on_room)
            self._holding.drop(len(self._overdue_held) + self._reading_overdue)
