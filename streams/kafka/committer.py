"""The committer thread: Kafka transactions run while the worker consumes the next batch.

A transaction commit takes several milliseconds of waiting on the broker. The Kafka thread
hands each snapshot (outgoing records, changelog writes, offsets, the group metadata they
were consumed under) to this thread and goes back to consuming; snapshots that arrive while
a transaction is in flight are merged and committed together as the next one. Order is
kept: a snapshot is never committed before one taken earlier.

A failed transaction poisons what was taken after it (those snapshots built on state the
failed one did not commit): the committer drops them and reports the failure, and the
Kafka thread restores its partitions from Kafka (:meth:`Worker._recover`) before it
submits anything new.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import TopicPartition

from streams.engine.outbox import Out


@dataclass
class Snapshot:
    """What one transaction commits."""

    out: list[Out]
    offsets: list[TopicPartition]
    metadata: Any = field(default=None, repr=False)  # the consumer's group metadata
    #: Bytes of the records' keys and values (back-pressure, :meth:`Committer.submit`).
    size: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.size = sum(len(o.key or b"") + len(o.value or b"") for o in self.out)

    def merge(self, later: Snapshot) -> None:
        """Add ``later``'s records after this one's; its offsets and metadata win."""
        self.out.extend(later.out)
        self.size += later.size
        latest = {(tp.topic, tp.partition): tp for tp in self.offsets}
        latest.update({(tp.topic, tp.partition): tp for tp in later.offsets})
        self.offsets = list(latest.values())
        if later.metadata is not None:
            self.metadata = later.metadata


@dataclass
class CommitStats:
    """Totals over a worker's transactions (its debug log, every 200 commits)."""

    commits: int = 0
    seconds: float = 0.0
    records: int = 0
    partitions: int = 0

    def add(self, snapshot: Snapshot, seconds: float) -> None:
        self.commits += 1
        self.seconds += seconds
        self.records += len(snapshot.out)
        self.partitions += len({(out.topic, out.partition) for out in snapshot.out})

    def describe(self, phases: Mapping[str, float], offsets_first: int) -> str:
        """Averages per transaction, and of its ``phases`` (seconds in total by step of
        ``Transactions.commit``), for the worker's debug log. ``tests/bench/hops.py`` parses
        this line: change both together."""
        n = max(1, self.commits)
        records, offsets, commit = (1000 * phases[s] / n for s in ("records", "offsets", "commit"))
        return (
            f"commits {self.commits}, {1000 * self.seconds / n:.1f} ms each, "
            f"{self.records / n:.1f} records in {self.partitions / n:.1f} partitions each "
            f"(records {records:.1f}, offsets {offsets:.1f}, commit {commit:.1f} ms; "
            f"offsets first in {offsets_first})"
        )


class Committer:
    """One thread that runs ``transact(snapshot)`` for what the Kafka thread submits.

    A snapshot with records is always worth a transaction; one of offsets alone (records
    consumed that wrote nothing: a send to a handler that only returns) is worth one when
    its offsets moved since the last submitted, once ``OFFSETS_EVERY`` seconds have passed
    since then, or at once at a hand-over (:meth:`worth`). Left out, those records were
    read and run again by the next owner, or after a restart, from the last commit that
    carried records, however far back that was.
    """

    #: Records waiting beyond this make :meth:`submit` wait for the commit in flight.
    MAX_PENDING = 20_000
    #: ... and bytes: large records, merged by the thousand, would make a transaction that
    #: takes longer to write than the transaction timeout (10 s) allows.
    MAX_PENDING_BYTES = 32 << 20
    #: Seconds between transactions of offsets alone (at most a second's records without
    #: effects are read again after a crash).
    OFFSETS_EVERY = 1.0

    def __init__(self, transact: Callable[[Snapshot], None]) -> None:
        self._transact = transact
        self._pending: Snapshot | None = None
        self._current: Snapshot | None = None  # in the transaction in flight
        self._busy = False
        self._busy_since = 0.0
        self._failure: Exception | None = None
        self._closing = False
        self.abandoned = False
        self._changed = threading.Condition()
        self._offsets: dict[tuple[str, int], int] = {}  # the last submitted, by partition
        self._offsets_at = 0.0  # when they were submitted
        self._thread = threading.Thread(target=self._run, name="kourier-committer", daemon=True)
        self._thread.start()

    @property
    def failure(self) -> Exception | None:
        """The error of a failed transaction, until :meth:`clear`."""
        return self._failure

    @property
    def idle(self) -> bool:
        return not self._busy and self._pending is None

    def writing_to(self, topic: str) -> set[tuple[int, bytes | None]]:
        """The partitions and keys of ``topic`` that records not committed yet go to:
        queued, or in the transaction in flight (any thread)."""
        with self._changed:
            snapshots = [s for s in (self._current, self._pending) if s is not None]
            return {(o.partition, o.key) for s in snapshots for o in s.out if o.topic == topic}

    def worth(self, snapshot: Snapshot, now: bool = False) -> bool:
        """Whether ``snapshot`` is worth a transaction (see the class); ``now`` at a
        hand-over, whose next owner would read again what its offsets passed."""
        if snapshot.out:
            return True
        with self._changed:
            due = now or time.monotonic() - self._offsets_at >= self.OFFSETS_EVERY
            sent = self._offsets
            return due and any(
                sent.get((o.topic, o.partition)) != o.offset for o in snapshot.offsets
            )

    def submit(self, snapshot: Snapshot, stuck_after: float | None = None) -> bool:
        """Queue ``snapshot`` (merged with what already waits); dropped after a failure.

        With more than :attr:`MAX_PENDING` records or :attr:`MAX_PENDING_BYTES` waiting,
        wait for the transaction in flight; False, with nothing queued, once it has run for
        ``stuck_after`` seconds (when given): it is stuck, and the caller fences it."""
        if not snapshot.out and not snapshot.offsets:
            return True
        with self._changed:
            while (
                self._pending is not None
                and (
                    len(self._pending.out) > self.MAX_PENDING
                    or self._pending.size > self.MAX_PENDING_BYTES
                )
                and self._failure is None
                and not self.abandoned
            ):
                if not self._busy or stuck_after is None:  # taken soon, or wait it out
                    self._changed.wait()
                    continue
                left = stuck_after - self.busy_for()
                if left <= 0:
                    return False
                self._changed.wait(left)
            if self._failure is not None or self.abandoned:
                return True
            if self._pending is None:
                self._pending = snapshot
            else:
                self._pending.merge(snapshot)
            self._offsets.update({(o.topic, o.partition): o.offset for o in snapshot.offsets})
            self._offsets_at = time.monotonic()
            self._changed.notify_all()
            return True

    def flush(self, stuck_after: float) -> Exception | None:
        """Wait until everything submitted is committed (or failed); return the failure,
        or a :class:`TimeoutError` once one transaction has run for ``stuck_after`` seconds,
        or what waits has waited that long with none running (at once when the committer
        was abandoned: its transaction is stuck). The wait as a whole may be longer: the
        transaction in flight, then the one merged behind it, each within the limit."""
        with self._changed:
            if self.abandoned and self._busy:
                return TimeoutError(f"a transaction abandoned after {self.busy_for():.0f}s")
            idle_since: float | None = None  # what waits, with no transaction running
            while (self._pending is not None or self._busy) and self._failure is None:
                now = time.monotonic()
                if self._busy:
                    idle_since, began = None, self._busy_since
                else:
                    idle_since = began = now if idle_since is None else idle_since
                left = began + stuck_after - now
                if left <= 0:
                    return TimeoutError(f"a transaction has run for {self.busy_for():.0f}s")
                self._changed.wait(left)
            return self._failure

    def status(self) -> dict[str, Any]:
        """The transaction in flight and what waits for it, for a dump (any thread)."""
        with self._changed:
            return {
                "busy_for_s": round(self.busy_for(), 3),
                "in_flight_records": None if self._current is None else len(self._current.out),
                "queued_records": None if self._pending is None else len(self._pending.out),
                "failure": None if self._failure is None else repr(self._failure),
                "abandoned": self.abandoned,
            }

    def busy_for(self) -> float:
        """How long the transaction in flight has been running (0 when idle; any thread)."""
        with self._changed:  # both fields of one transaction, never a start of the last one
            return time.monotonic() - self._busy_since if self._busy else 0.0

    def abandon(self) -> None:
        """Give up on a thread stuck in a transaction: it exits when (if ever) the call
        returns, and commits nothing more, nor takes anything; :meth:`close` does not wait
        for it. The worker fences its producer next."""
        with self._changed:
            self._closing = True
            self.abandoned = True
            self._pending = None
            self._changed.notify_all()

    def clear(self) -> None:
        """After recovery: forget the failure and anything still queued."""
        with self._changed:
            self._failure = None
            self._pending = None
            self._offsets = {}  # what is committed is read again
            self._changed.notify_all()

    def close(self) -> None:
        """Commit what was submitted, then end the thread (one abandoned is left to itself)."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
            if self.abandoned:
                return
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                while self._pending is None and not self._closing:
                    self._changed.wait()
                if self._pending is None:
                    return
                snapshot, self._pending = self._pending, None
                self._current = snapshot
                self._busy = True
                self._busy_since = time.monotonic()
                self._changed.notify_all()
            try:
                self._transact(snapshot)
            except Exception as exc:
                with self._changed:
                    self._failure = exc
                    self._pending = None
            finally:
                with self._changed:
                    self._current = None
                    self._busy = False
                    self._changed.notify_all()
