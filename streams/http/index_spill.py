"""The admin index's cold part, on disk: the metas of completed and scheduled invocations,
the journals kept of the latest completed, and every object's state.

What the index follows is what the workers hold: a day of retained outcomes (the default
retention of idempotent calls and workflow runs), delayed sends not yet due, the state of
every object. Held as objects, they grew the ingress process with its traffic, about
2.4 KB a retained call. They live here instead, as the workers' cold invocations live in
their partitions' spills (``streams.engine.spill``): a private temporary SQLite database,
its pages in memory up to :data:`CACHE_KIB`, then in a file SQLite unlinked as it made it.
The invocations in flight (those that can wait or hold a key) stay in memory, with their
journals, where the deadlock search and "waits on" look at them every second.

Used under the index's lock, from its thread and from the threads that answer queries.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import JsonValue

from streams.engine.journal import Entry, InvocationMeta
from streams.engine.spill import Spill
from streams.wire.records import Failure

#: Page cache of the index's database, in KiB.
CACHE_KIB = 8192
#: Ids looked up by one statement (SQLite takes 32,766 parameters since 3.32, 999 before).
_IDS_PER_QUERY = 500
#: The calls and sends of one journal below a length (what a call tree reads).
_CALLS = "WHERE id = ? AND idx < ? AND kind IN ('call', 'send')"

#: What an invocation's list row does not show (``streams.http.index.summary``).
_NOT_LISTED = {"argument", "value", "headers", "failure", "request_ids", "attachers", "trace"}

#: ``(created_at, id, status, target)`` of one invocation, as a bulk action chooses.
Row = tuple[float, str, str, str]
#: What a bulk action acts on, newest first, at most its limit; how many the filter
#: matched that it applies to; how many it matched that it does not apply to.
Chosen = tuple[list[Row], int, int]


def choose_among(
    rows: Iterable[Row], among: frozenset[str], ids: frozenset[str] | None, limit: int
) -> Chosen:
    """Of ``rows`` (those ``ids`` names, when given), the newest ``limit`` whose status is
    ``among`` those the action applies to, how many such, and how many others."""
    considered = [row for row in rows if ids is None or row[1] in ids]
    eligible = [row for row in considered if row[2] in among]
    return heapq.nlargest(limit, eligible), len(eligible), len(considered) - len(eligible)


_SCHEMA = (
    "PRAGMA journal_mode = OFF",
    "PRAGMA synchronous = OFF",
    f"PRAGMA cache_size = -{CACHE_KIB}",
    "CREATE TABLE metas (id TEXT NOT NULL UNIQUE, status TEXT NOT NULL,"
    " service TEXT NOT NULL, key TEXT, target TEXT NOT NULL, created_at REAL NOT NULL,"
    " due REAL, meta BLOB NOT NULL, listed BLOB NOT NULL, failure BLOB)",
    "CREATE INDEX metas_created ON metas (created_at)",
    "CREATE INDEX metas_status ON metas (status, created_at)",
    "CREATE INDEX metas_due ON metas (status, due)",
    "CREATE INDEX metas_object ON metas (service, key)",
    "CREATE TABLE entries (id TEXT NOT NULL, idx INTEGER NOT NULL, kind TEXT NOT NULL,"
    " entry BLOB NOT NULL, UNIQUE (id, idx))",
    "CREATE TABLE state (service TEXT NOT NULL, key TEXT NOT NULL, name TEXT NOT NULL,"
    " value BLOB NOT NULL, UNIQUE (service, key, name))",
)


class IndexSpill:
    """Cold metas by id, filtered and ordered as the admin API lists them; object state by
    object."""

    def __init__(self) -> None:
        self._db = Spill(_SCHEMA, "admin index spill")
        self._any = False  # whether a meta or entry was ever held: lookups skip SQLite till then

    def __len__(self) -> int:
        rows = self._db.query("SELECT COUNT(*) FROM metas") if self._any else []
        return int(rows[0][0]) if rows else 0  # none once closed

    def put(self, meta: InvocationMeta, written: bytes) -> None:
        """Hold ``meta``, written as ``written``, in place of what was held under its id."""
        target = meta.target
        listed = meta.to_json(exclude=_NOT_LISTED)
        failure = None if meta.failure is None else meta.failure.model_dump_json()
        self._db.write(
            "INSERT INTO metas (id, status, service, key, target, created_at, due, meta, listed,"
            " failure) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
            " status = excluded.status, service = excluded.service, key = excluded.key,"
            " target = excluded.target, created_at = excluded.created_at,"
            " due = excluded.due, meta = excluded.meta, listed = excluded.listed,"
            " failure = excluded.failure",
            (meta.id, meta.status, target.service, target.key, target.path(),
             meta.created_at, meta.due, written, listed, failure),
        )  # fmt: skip
        self._any = True

    def discard(self, inv_id: str) -> None:
        if self._any:
            self._db.write("DELETE FROM metas WHERE id = ?", (inv_id,))

    def get(self, inv_id: str) -> InvocationMeta | None:
        if not self._any:
            return None
        rows = self._db.query("SELECT meta FROM metas WHERE id = ?", (inv_id,))
        return InvocationMeta.from_json(rows[0][0]) if rows else None

    def node(self, inv_id: str) -> InvocationMeta | None:
        """The meta held under ``inv_id`` as a call tree shows it: as listed, with its
        failure, but not its argument and value, which may be 900 KiB each, and a tree
        of a hundred nodes is asked for every second while the UI shows it."""
        if not self._any:
            return None
        rows = self._db.query("SELECT listed, failure FROM metas WHERE id = ?", (inv_id,))
        if not rows:
            return None
        meta = InvocationMeta.from_json(rows[0][0])
        if rows[0][1] is not None:
            meta.failure = Failure.model_validate_json(rows[0][1])
        return meta

    def status(self, inv_id: str) -> str | None:
        """The status of the meta held under ``inv_id`` (none decoded), or None."""
        if not self._any:
            return None
        rows = self._db.query("SELECT status FROM metas WHERE id = ?", (inv_id,))
        return str(rows[0][0]) if rows else None

    def __contains__(self, inv_id: str) -> bool:
        return self.status(inv_id) is not None

    def newest(
        self,
        *,
        status: str | None,
        service: str | None,
        key: str | None,
        limit: int,
        by: Literal["created", "due"] = "created",
    ) -> list[InvocationMeta]:
        """Up to ``limit`` metas the filter matches: the newest first, or by ``due``, the
        soonest first (those with no due time before them). Each without what a listing
        does not show (``_NOT_LISTED``): a retained outcome's argument and value may be
        900 KiB, and the UI lists 200 of them every second."""
        if not self._any:
            return []
        where, params = _filter(status, service, key)
        order = "created_at DESC" if by == "created" else "due"  # SQLite: NULLs first
        rows = self._db.query(
            f"SELECT listed FROM metas{where} ORDER BY {order} LIMIT ?", (*params, limit)
        )
        return [InvocationMeta.from_json(row[0]) for row in rows]

    def choose(
        self,
        *,
        status: str | None,
        service: str | None,
        key: str | None,
        among: frozenset[str],
        ids: frozenset[str] | None,
        limit: int,
    ) -> Chosen:
        """What a bulk action acts on (:func:`choose_among`), counted and chosen by SQLite:
        a day of retained outcomes is no list in memory, only the ``limit`` rows kept."""
        if not self._any:
            return [], 0, 0
        where, params = _filter(status, service, key)
        columns = "SELECT created_at, id, status, target FROM metas"
        if ids is not None:  # what a dry run listed: at most that many rows, by id
            rows: list[Row] = []
            wanted = sorted(ids)
            for at in range(0, len(wanted), _IDS_PER_QUERY):
                part = tuple(wanted[at : at + _IDS_PER_QUERY])
                named = f"id IN ({', '.join('?' * len(part))})"
                rows += _rows(self._db.query(f"{columns}{_and(where, named)}", (*params, *part)))
            return choose_among(rows, among, None, limit)
        statuses = tuple(sorted(among))
        applies = _and(where, f"status IN ({', '.join('?' * len(statuses))})")
        considered = self._db.query(f"SELECT COUNT(*) FROM metas{where}", params)
        matched = self._db.query(f"SELECT COUNT(*) FROM metas{applies}", (*params, *statuses))
        kept = self._db.query(
            f"{columns}{applies} ORDER BY created_at DESC, id DESC LIMIT ?",
            (*params, *statuses, limit),
        )
        count, total = (int(matched[0][0]), int(considered[0][0])) if matched else (0, 0)
        return _rows(kept), count, total - count

    # -- journals of completed invocations ---------------------------------------------

    def put_entries(self, inv_id: str, written: Iterable[tuple[int, str, bytes]]) -> None:
        """Hold journal entries of ``inv_id``: ``(index, kind, the entry as JSON)``, each in
        place of what was held at its index."""
        for index, kind, entry in written:
            self._db.write(
                "INSERT INTO entries (id, idx, kind, entry) VALUES (?, ?, ?, ?) ON CONFLICT"
                " (id, idx) DO UPDATE SET kind = excluded.kind, entry = excluded.entry",
                (inv_id, index, kind, entry),
            )
            self._any = True

    def drop_entry(self, inv_id: str, index: int) -> None:
        if self._any:
            self._db.write("DELETE FROM entries WHERE id = ? AND idx = ?", (inv_id, index))

    def drop_journal(self, inv_id: str) -> None:
        if self._any:
            self._db.write("DELETE FROM entries WHERE id = ?", (inv_id,))

    def journal(self, inv_id: str, length: int, last: int = -1) -> list[tuple[int, Entry]]:
        """The entries held of ``inv_id``'s journal below ``length``, with their indexes:
        the ``last`` ones only, when given."""
        if not self._any:
            return []
        rows = self._db.query(
            "SELECT idx, entry FROM (SELECT idx, entry FROM entries WHERE id = ? AND idx < ?"
            " ORDER BY idx DESC LIMIT ?) ORDER BY idx",
            (inv_id, length, last),
        )
        return [(int(index), Entry.from_json(entry)) for index, entry in rows]

    def calls(self, inv_id: str, length: int, first: int) -> list[tuple[int, Entry]]:
        """The first ``first`` calls and sends held of ``inv_id``'s journal below ``length``:
        what a call tree shows (at most 100 nodes) of a workflow that made a hundred
        thousand sends (:meth:`calls_held` counts them)."""
        if not self._any:
            return []
        rows = self._db.query(
            f"SELECT idx, entry FROM entries {_CALLS} ORDER BY idx LIMIT ?", (inv_id, length, first)
        )
        return [(int(index), Entry.from_json(entry)) for index, entry in rows]

    def calls_held(self, inv_id: str, length: int) -> int:
        """How many calls and sends of ``inv_id``'s journal below ``length`` are held."""
        if not self._any:
            return 0
        rows = self._db.query(f"SELECT COUNT(*) FROM entries {_CALLS}", (inv_id, length))
        return int(rows[0][0]) if rows else 0

    def journal_held(self, inv_id: str, length: int) -> int:
        """How many entries of ``inv_id``'s journal below ``length`` are held."""
        if not self._any:
            return 0
        rows = self._db.query(
            "SELECT COUNT(*) FROM entries WHERE id = ? AND idx < ?", (inv_id, length)
        )
        return int(rows[0][0]) if rows else 0

    # -- object state ----------------------------------------------------------------

    def set_state(self, service: str, key: str, name: str, value: bytes | None) -> None:
        """One state record: ``value`` as the changelog holds it (JSON), or a deletion."""
        if value is None:
            self._db.write(
                "DELETE FROM state WHERE service = ? AND key = ? AND name = ?", (service, key, name)
            )
            return
        self._db.write(
            "INSERT INTO state (service, key, name, value) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (service, key, name) DO UPDATE SET value = excluded.value",
            (service, key, name, value),
        )

    def state_of(self, service: str, key: str) -> dict[str, JsonValue]:
        rows = self._db.query(
            "SELECT name, value FROM state WHERE service = ? AND key = ? ORDER BY rowid",
            (service, key),
        )
        return {str(name): json.loads(value) for name, value in rows}

    def commit(self) -> None:
        self._db.commit()

    def close(self) -> None:
        self._db.close()


def _filter(
    status: str | None, service: str | None, key: str | None
) -> tuple[str, tuple[str, ...]]:
    clauses, params = [], []
    for column, value in (("status", status), ("service", service), ("key", key)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


def _rows(found: list[Any]) -> list[Row]:
    """SQLite's ``(created_at, id, status, target)`` rows as :data:`Row`."""
    return [(float(at), str(i), str(status), str(t)) for at, i, status, t in found]


def _and(where: str, clause: str) -> str:
    """``where`` (from :func:`_filter`) narrowed by ``clause``."""
    return f"{where} AND {clause}" if where else f" WHERE {clause}"
