"""Scheduled invocations: a delayed send written down, then started at its due time.

A call whose ``due`` time is later than the partition's clock (the partition decides, as
it applies the call) becomes an invocation at once (listed, cancellable, attachable),
with the status ``scheduled``, and a :class:`Delayed` carrying a :class:`Start` goes on
the delay topic (``streams.engine.delay``). The delay partition releases that ``Start``
``START_LEAD`` before the due time, so that its trip through Kafka overlaps the wait;
:class:`Starts` waits out the rest by this partition's clock (a ``Start`` more than
``MAX_EARLY`` early, which no release sends, runs at once), then queues the invocation
for its key like a new arrival. One whose handler this worker does not host is only
written as ``pending``, for a worker that hosts it. After a restore, the partition holds
again (:meth:`Starts.enqueue_when_due`) those it finds started but not yet due.

While it waits the invocation is *held*, by due time (:class:`DueTimes`). Two things
release it, whichever comes first:
- a step of the worker, which the Kafka thread runs once :attr:`Starts.next_due` has
  passed (``streams.kafka.pacing``), so that the invocation's first effects are in that
  step's snapshot;
- an event-loop timer, the fallback, which leaves alone an invocation a step released.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

from streams.engine.dues import DueTimes
from streams.engine.invocation import Invocation
from streams.engine.invocations import InvocationTable
from streams.engine.journal import InvocationMeta
from streams.engine.outbox import Outbox
from streams.wire.records import Delayed, Start

#: A ``Start`` at most this early by the partition's clock waits for its due time (see
#: :meth:`Starts.due_in`): ``START_LEAD`` plus clock skew between workers.
MAX_EARLY = 1.0


class Starts:
    """One partition's scheduled invocations, from the delayed send to the start."""

    def __init__(
        self,
        invocations: InvocationTable,
        outbox: Outbox,
        *,
        enqueue: Callable[[Invocation], None],
        touch: Callable[[Invocation], None],
        wake: Callable[[], None],
        closed: Callable[[], bool],
        clock: Callable[[], float],
    ) -> None:
        self._invocations = invocations
        self._outbox = outbox
        self._enqueue = enqueue  # run now, or queue behind the key's exclusive call
        self._touch = touch
        self._wake = wake
        self._closed = closed
        self._clock = clock  # wall-clock seconds (the test harness moves its own)
        # Started invocations waiting out the rest of their lead, by id and the offset of
        # their Start: the earliest due is the partition's next_due.
        self._held: DueTimes[tuple[Invocation, int]] = DueTimes()

    def schedule(self, inv: Invocation, due: float) -> None:
        """A delayed send: the invocation exists now (listed, cancellable, attachable) and
        a :class:`Start` on the delay topic runs it at ``due``."""
        inv.meta.status, inv.meta.due = "scheduled", due
        start = Start(invocation_id=inv.meta.id, seq=inv.meta.seq)
        delayed = Delayed(due=datetime.fromtimestamp(due, UTC), start=start)
        self._outbox.delayed(delayed, inv.meta.id)

    def apply(self, record: Start, offset: int) -> None:
        """A scheduled invocation is due: it queues for its key like a new arrival. One
        cancelled or killed meanwhile is completed (or forgotten): nothing runs."""
        inv = self._invocations.get(record.invocation_id)
        if inv is None or inv.meta.status != "scheduled" or inv.meta.seq != record.seq:
            return  # cancelled, killed, or scheduled again since
        inv.meta.status, inv.meta.seq = "pending", offset
        if inv.handler_def is None:  # not hosted here: written as pending, so that a worker
            inv.meta.last_error = "not deployed on this worker"  # that hosts it runs it
            self._touch(inv)
            return
        self._touch(inv)
        # Released a little before its due time, so that the release overlaps the wait
        # (engine/delay.py): it queues for its key when due, not before.
        self.enqueue_when_due(inv, offset)

    def due_in(self, meta: InvocationMeta) -> float:
        """Seconds until a started invocation is due by this partition's clock: a ``Start``
        comes ``START_LEAD`` early, more if the worker that released it has a clock ahead
        of this one. 0 when it is due, and for a ``Start`` more than ``MAX_EARLY`` early,
        which no release sends (one written by hand runs the invocation at once)."""
        early = (meta.due or 0.0) - self._clock()
        return early if 0 < early <= MAX_EARLY else 0.0

    def enqueue_when_due(self, inv: Invocation, seq: int) -> None:
        """Queue a started invocation now if it is due, or else hold it until it is: a step
        after its due time releases it (:meth:`release_due`), or failing that a timer, unless
        it was cancelled, killed or handed over meanwhile."""
        meta = inv.meta
        if meta.status != "pending" or meta.seq != seq or self._closed():
            return
        if self._invocations.get(meta.id) is not inv:
            return
        early = self.due_in(meta)  # the loop's timer and the wall clock may disagree
        if early > 0:
            self._held.set((meta.id, seq), meta.due or 0.0, (inv, seq))
            asyncio.get_running_loop().call_later(early, self._on_timer, inv, seq)
            return
        self._enqueue(inv)
        self._wake()

    def _on_timer(self, inv: Invocation, seq: int) -> None:
        """A held invocation's timer: unless a step released it first."""
        if (inv.meta.id, seq) in self._held:
            self._held.drop((inv.meta.id, seq))
            self.enqueue_when_due(inv, seq)

    def release_due(self, now: float) -> None:
        """Queue the held invocations due by ``now``: a step does, once the Kafka thread has
        seen :attr:`next_due` pass, so that their first effects are in its snapshot."""
        for inv, seq in self._held.pop_due(now):
            self.enqueue_when_due(inv, seq)

    @property
    def next_due(self) -> float | None:
        """When the next held invocation falls due."""
        return self._held.earliest

    def clear(self) -> None:
        """Hold nothing: the partition is closed."""
        self._held.clear()
