"""What a partition holds on disk: its cold invocations and its idempotency keys.

A partition may hold millions of things that do nothing: retained outcomes, kept for their
idempotency key or workflow id until their retention ends (24 h by default), the
idempotency keys that name them, and delayed sends not yet due. They live in a
:class:`Spill`, a private SQLite database of the partition's own:

- :class:`ColdStore` keeps each idle invocation as the meta bytes its changelog holds, with
  how many journal entries the changelog holds of it (to tombstone them) and, for an
  outcome, when its retention ends;
- :class:`DedupTable` maps an idempotency scope to the invocation id it names.

The database's pages stay in memory up to :data:`CACHE_KIB` and spill to a temporary file
past that. SQLite unlinks that file as it creates it, so nothing is left behind once the
partition is let go or the process ends, however it ends.

A spill is a cache of the ``<ns>.invocations`` and ``<ns>.dedup`` changelogs, not a second
copy of the truth: a new owner builds its own from the changelogs, and a worker never
reopens one. So the database is written without a journal and without syncing.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from typing import Any

from streams.errors import KourierError

log = logging.getLogger("kourier.spill")

#: Page cache of one partition's spill, in KiB: what it may hold in memory before it
#: writes to its temporary file.
CACHE_KIB = 2048

#: Rows in insertion order (rowid tables), found by a unique index on the key: ids and
#: scopes are random, and an insert then lands in the small pages of the index rather
#: than among the metas. Half the time per insert and per miss of a table keyed by id
#: (measured with 100,000 metas of 450 bytes and this cache: 5.2 against 10.6 µs, and
#: 2.0 against 4.1 µs).
_SCHEMA = (
    "PRAGMA journal_mode = OFF",
    "PRAGMA synchronous = OFF",
    f"PRAGMA cache_size = -{CACHE_KIB}",
    "CREATE TABLE cold (id TEXT NOT NULL UNIQUE, meta BLOB NOT NULL,"
    " entries INTEGER NOT NULL, expires REAL)",
    "CREATE INDEX cold_expires ON cold (expires) WHERE expires IS NOT NULL",
    "CREATE TABLE dedup (scope TEXT NOT NULL UNIQUE, id TEXT NOT NULL)",
)


class SpillFailed(KourierError):
    """A partition's spill could not be read or written (a full disk, an I/O error). What
    the partition did since its last commit cannot be trusted: the worker restores its
    partitions from Kafka (streams/kafka/worker.py)."""


class Spill:
    """One partition's private database. Used from one thread at a time: the restore's,
    then the event loop's. Once closed, its tables hold nothing: lookups miss and writes
    are dropped (the partition is gone).

    Writes go into one SQLite transaction until :meth:`commit`: the partition commits once
    per flush, and ``Ownership.start`` once a restore is read, before any partition
    starts. A few dozen rows' pages are then written to the file once, not once per row
    (10.7 against 13.6 µs per idempotent send's two lookups and two inserts, measured in
    batches of 40).

    An error of SQLite's raises :class:`SpillFailed` and is kept in :attr:`failed`: with no
    journal, a statement that failed may have left part of its change behind."""

    def __init__(self, schema: tuple[str, ...] = _SCHEMA, what: str = "partition spill") -> None:
        self.failed: SpillFailed | None = None
        self._what = what  # named in its errors
        try:
            # "": a private temporary database, deleted when the connection closes.
            self.db: sqlite3.Connection | None = sqlite3.connect(
                "", isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as error:
            raise self._failure(error) from error
        for statement in schema:
            self.query(statement)

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        """The rows ``sql`` gives, every one read before this returns (SQLite may fail as
        it reads them, not only as the statement starts); none once closed."""
        db = self.db
        if db is None:
            return []
        try:
            return db.execute(sql, params).fetchall()
        except sqlite3.Error as error:
            raise self._failure(error) from error

    def write(self, sql: str, params: tuple[object, ...]) -> int:
        """``sql`` executed in the open transaction (begun if none is): the rows it
        changed (0 once closed)."""
        db = self.db
        if db is None:
            return 0
        try:
            if not db.in_transaction:
                db.execute("BEGIN")
            return db.execute(sql, params).rowcount
        except sqlite3.Error as error:
            raise self._failure(error) from error

    def commit(self) -> None:
        """End the transaction the writes since the last commit are in, if any."""
        if self.db is not None and self.db.in_transaction:
            self.query("COMMIT")

    def _failure(self, error: sqlite3.Error) -> SpillFailed:
        """``error`` as the :class:`SpillFailed` it is, kept in :attr:`failed`."""
        self.failed = SpillFailed(f"{self._what}: {type(error).__name__}: {error}")
        return self.failed

    def close(self) -> None:
        """Let go of everything held; the database's file goes with it."""
        if self.db is not None:
            self.db.close()
            self.db = None


class SpillUnavailable(KourierError):
    """SQLite can write no temporary file, so a partition's spill would fail once it
    outgrows its cache."""


def probe() -> None:
    """Write past a spill's cache once, so that a worker whose temporary directory SQLite
    cannot write fails at its start, with the reason, rather than at the first partition
    that grows (:class:`SpillUnavailable`). SQLite takes the first of ``SQLITE_TMPDIR``,
    ``TMPDIR``, ``/var/tmp``, ``/usr/tmp``, ``/tmp`` and the working directory that it may
    write."""
    spill: Spill | None = None
    try:
        spill = Spill()
        spill.query("PRAGMA cache_size = -64")  # KiB: the rows below do not fit
        for n in range(512):
            spill.write("INSERT INTO dedup VALUES (?, ?)", (f"probe-{n}", "x" * 1024))
        spill.commit()
    except SpillFailed as error:
        raise SpillUnavailable(
            f"cannot write a temporary file for the spills ({error.__cause__}): "
            "make TMPDIR (or SQLITE_TMPDIR) a writable directory on disk (README, Limits)"
        ) from None
    finally:
        if spill is not None:
            spill.close()
    store = temp_store()
    if store >= 2:
        log.warning(
            "this Python's SQLite keeps temporary databases in memory (built with "
            "SQLITE_TEMP_STORE=%d): the spills (a worker's partitions', the admin index's) "
            "hold what they keep in memory, not on disk (README, Limits)",
            store,
        )


def temp_store() -> int:
    """The ``SQLITE_TEMP_STORE`` this Python's SQLite was built with (1 by default): with
    2 or 3 a private temporary database, which a spill is, stays in memory whatever its
    size. Only a ``PRAGMA temp_store`` set before a database is opened would change that
    for 2, and a connection's own database is opened before any pragma can run."""
    found = [option[len("TEMP_STORE=") :] for option in compile_options()
             if option.startswith("TEMP_STORE=")]  # fmt: skip
    return int(found[0]) if found and found[0].isdigit() else 1


def compile_options() -> list[str]:
    """The options this Python's SQLite was built with (``PRAGMA compile_options``)."""
    db = sqlite3.connect(":memory:")
    try:
        return [str(row[0]) for row in db.execute("PRAGMA compile_options")]
    finally:
        db.close()


class _Counted:
    """A table of the spill and the count of its rows, kept where rows come and go
    (:meth:`_put`, :meth:`_drop`): lookups skip SQLite while the table holds none."""

    def __init__(self, spill: Spill) -> None:
        self._spill = spill
        self._count = 0

    def __len__(self) -> int:
        return self._count if self._spill.db is not None else 0

    def _put(self, insert: str, update: str, key: str, values: tuple[object, ...]) -> None:
        """The row ``(key, *values)`` inserted (``insert`` ignores a key held), or else
        ``values`` set in place by ``update`` (which takes the key last)."""
        if self._spill.write(insert, (key, *values)):
            self._count += 1
        else:
            self._spill.write(update, (*values, key))

    def _drop(self, delete: str, key: str) -> int:
        """The row of ``key`` deleted by ``delete``, if held: how many were."""
        if not self._count:
            return 0
        dropped = self._spill.write(delete, (key,))
        self._count -= dropped
        return dropped


class ColdStore(_Counted):
    """Idle invocations' metas by id, with their entry counts and retention deadlines."""

    def __contains__(self, inv_id: str) -> bool:
        return bool(self._count and self._spill.query("SELECT 1 FROM cold WHERE id = ?", (inv_id,)))

    def get(self, inv_id: str) -> tuple[bytes, int] | None:
        """The meta written of ``inv_id`` and its journal entries written, if held."""
        if not self._count:
            return None
        rows = self._spill.query("SELECT meta, entries FROM cold WHERE id = ?", (inv_id,))
        return (rows[0][0], rows[0][1]) if rows else None

    def put(self, inv_id: str, meta: bytes, entries: int, expires: float | None) -> None:
        """Hold ``inv_id`` as ``meta``, replacing what was held of it."""
        insert = "INSERT OR IGNORE INTO cold VALUES (?, ?, ?, ?)"
        update = "UPDATE cold SET meta = ?, entries = ?, expires = ? WHERE id = ?"
        self._put(insert, update, inv_id, (meta, entries, expires))

    def discard(self, inv_id: str) -> None:
        """Hold ``inv_id`` no more, if it was held."""
        self._drop("DELETE FROM cold WHERE id = ?", inv_id)

    def ids(self) -> Iterator[str]:
        """Every id held (read at once: the store may change while they are used)."""
        return iter([row[0] for row in self._spill.query("SELECT id FROM cold")])

    def expired(self, inv_id: str, now: float) -> bool:
        """Whether ``inv_id`` is held with a retention that ended at or before ``now``."""
        query = "SELECT 1 FROM cold WHERE id = ? AND expires <= ?"
        return bool(self._count and self._spill.query(query, (inv_id, now)))

    def due(self, now: float, limit: int) -> list[str]:
        """The ids whose retention ends at or before ``now``, soonest first, at most
        ``limit`` of them."""
        if not self._count:
            return []
        query = "SELECT id FROM cold WHERE expires <= ? ORDER BY expires LIMIT ?"
        return [row[0] for row in self._spill.query(query, (now, limit))]


class DedupTable(_Counted):
    """Idempotency scopes and the invocation ids they name."""

    def get(self, scope: str) -> str | None:
        if not self._count:
            return None
        rows = self._spill.query("SELECT id FROM dedup WHERE scope = ?", (scope,))
        return str(rows[0][0]) if rows else None

    def put(self, scope: str, inv_id: str) -> None:
        insert = "INSERT OR IGNORE INTO dedup VALUES (?, ?)"
        self._put(insert, "UPDATE dedup SET id = ? WHERE scope = ?", scope, (inv_id,))

    def discard(self, scope: str) -> bool:
        """Drop ``scope``; whether it was held."""
        return bool(self._drop("DELETE FROM dedup WHERE scope = ?", scope))
