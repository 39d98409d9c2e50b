"""One partition's durable tables: object state, workflow promises and the idempotency
(dedup) table.

Each table is restored from its compacted changelog when the partition is assigned, changed
while handlers run (state and promises in memory, the idempotency keys in the partition's
spill, :mod:`streams.engine.spill`), and remembers what changed: :meth:`PartitionStore.changelog`
gives the records for those changes (a tombstone for what was removed), which the worker
commits in the same transaction as everything else of the step.
"""

from __future__ import annotations

import json
import logging
from typing import NamedTuple, TypeVar

from pydantic import JsonValue

from streams.engine.journal import EntryKind, Promise, parse_state_key, state_key
from streams.engine.outbox import Out
from streams.engine.spill import DedupTable, Spill
from streams.wire import ids
from streams.wire.records import Failure, Target, dump_value
from streams.wire.topics import Topics

_V = TypeVar("_V")
log = logging.getLogger("kourier.partition")


class ObjectKey(NamedTuple):
    """A virtual object or workflow instance: its service and its key."""

    service: str
    key: str

    @classmethod
    def of(cls, target: Target) -> ObjectKey:
        assert target.key is not None, f"{target.service} has no key"
        return cls(target.service, target.key)


class PartitionStore:
    """State, promises and idempotency keys of one partition, and what changed in them."""

    def __init__(self, topics: Topics, partition: int, spill: Spill | None = None) -> None:
        self.topics = topics
        self.partition = partition
        self.state: dict[ObjectKey, dict[str, JsonValue]] = {}
        self.promises: dict[ObjectKey, dict[str, Promise]] = {}
        self.dedup = DedupTable(spill or Spill())  # idempotency scope -> invocation id, on disk
        self._changed_state: set[tuple[ObjectKey, str]] = set()
        self._changed_promises: set[tuple[ObjectKey, str]] = set()
        self._changed_dedup: dict[str, str | None] = {}  # scope -> id now, None if dropped

    # -- restore ---------------------------------------------------------------------

    def restore_state(self, key: bytes, value: bytes | None) -> None:
        """One record of the ``<ns>.state`` changelog (state and promises). One that cannot
        be read is logged and left out, as the invocations changelog does: what was read of
        its name before stands. Raised, it would end every worker that takes the partition
        over, one after another, and the partition would never run again."""
        try:
            self._restore_state(key, value)
        except ValueError as error:  # pydantic's ValidationError among them
            log.error("state changelog record %r unreadable, left out: %s", key[:200], error)

    def _restore_state(self, key: bytes, value: bytes | None) -> None:
        service, name_of_key, name, is_promise = parse_state_key(key)
        obj = ObjectKey(service, name_of_key)
        if is_promise:
            if value is None:
                _forget(self.promises, obj, name)
            else:
                data = json.loads(value)
                if not isinstance(data, dict):
                    raise ValueError(f"a promise record holds {type(data).__name__}, no object")
                failure = data.get("failure")
                promise = Promise(
                    data.get("value"), Failure.model_validate(failure) if failure else None
                )
                self.promises.setdefault(obj, {})[name] = promise
        elif value is None:
            _forget(self.state, obj, name)
        else:
            self.state.setdefault(obj, {})[name] = json.loads(value)

    def restore_dedup(self, key: bytes, value: bytes | None) -> None:
        """One record of the ``<ns>.dedup`` changelog; one that cannot be read is logged and
        left out (see :meth:`restore_state`)."""
        try:
            scope = key.decode()
            row = None if value is None else json.loads(value)
        except ValueError as error:  # UnicodeDecodeError and JSONDecodeError among them
            log.error("dedup changelog record %r unreadable, left out: %s", key[:200], error)
            return
        inv_id = row.get("invocation_id") if isinstance(row, dict) else None
        if isinstance(inv_id, str):
            self.dedup.put(scope, inv_id)
        else:
            self.dedup.discard(scope)  # a tombstone (or no id: the scope names none)

    # -- state -----------------------------------------------------------------------

    def state_of(self, obj: ObjectKey) -> dict[str, JsonValue]:
        return self.state.get(obj, {})

    def write_state(
        self, obj: ObjectKey, kind: EntryKind, name: str | None, value: JsonValue
    ) -> None:
        """``set`` or ``clear`` one name, or ``clear_all`` of them."""
        values = self.state.setdefault(obj, {})
        names = list(values) if kind == "clear_all" else [name] if name is not None else []
        for each in names:
            if kind == "set":
                values[each] = value
            else:
                values.pop(each, None)
            self._changed_state.add((obj, each))
        if not values:
            self.state.pop(obj, None)

    # -- promises --------------------------------------------------------------------

    def promise(self, obj: ObjectKey, name: str) -> Promise | None:
        return self.promises.get(obj, {}).get(name)

    def complete_promise(self, obj: ObjectKey, name: str, promise: Promise) -> bool:
        """Keep ``promise`` under ``name``; False when one was already there."""
        held = self.promises.setdefault(obj, {})
        if name in held:
            return False
        held[name] = promise
        self._changed_promises.add((obj, name))
        return True

    def drop_object(self, obj: ObjectKey) -> None:
        """Forget an object's (a workflow's) state and promises."""
        self.write_state(obj, "clear_all", None, None)
        for name in self.promises.pop(obj, {}):
            self._changed_promises.add((obj, name))

    # -- idempotency keys ------------------------------------------------------------

    def deduplicated(self, scope: str) -> str | None:
        """The invocation id an idempotency scope already names, if any."""
        return self.dedup.get(scope)

    def idempotent(self, target: Target, idempotency_key: str) -> tuple[str, str]:
        """The dedup-table scope of a request, and the invocation id it names: the one the
        table holds, else the one the key derives."""
        scope = dedup_scope(target, idempotency_key)
        derived = self.deduplicated(scope) or ids.idempotent_id(
            target.service, target.key, target.handler, idempotency_key
        )
        return scope, derived

    def remember(self, scope: str, invocation_id: str) -> None:
        self.dedup.put(scope, invocation_id)
        self._changed_dedup[scope] = invocation_id

    def forget(self, scope: str) -> None:
        if self.dedup.discard(scope):
            self._changed_dedup[scope] = None

    # -- changelog -------------------------------------------------------------------

    def changelog(self) -> list[Out]:
        """The changelog records of every change since the last call."""
        out: list[Out] = []
        for obj, name in self._changed_state:
            value = self.state.get(obj, {}).get(name, _MISSING)
            row = None if value is _MISSING else dump_value(value)
            out.append(Out(self.topics.state, self.partition, state_key(*obj, name), row))
        self._changed_state.clear()
        for obj, name in self._changed_promises:
            promise = self.promises.get(obj, {}).get(name)
            row = None if promise is None else dump_value(_promise_row(promise))
            key = state_key(*obj, name, promise=True)
            out.append(Out(self.topics.state, self.partition, key, row))
        self._changed_promises.clear()
        for scope, inv_id in self._changed_dedup.items():
            row = None if inv_id is None else json.dumps({"invocation_id": inv_id}).encode()
            out.append(Out(self.topics.dedup, self.partition, scope.encode(), row))
        self._changed_dedup.clear()
        return out


_MISSING = object()


def dedup_scope(target: Target, idempotency_key: str) -> str:
    """The dedup table's key: target + idempotency key."""
    return json.dumps([target.service, target.key, target.handler, idempotency_key])


def _promise_row(promise: Promise) -> JsonValue:
    row: dict[str, JsonValue] = {"value": promise.value}
    if promise.failure is not None:
        row["failure"] = promise.failure.model_dump()
    return row


def _forget(by_object: dict[ObjectKey, dict[str, _V]], obj: ObjectKey, name: str) -> None:
    """A tombstone read back: ``name`` of ``obj`` is gone, and so is ``obj`` once it holds
    nothing (as a write that empties it leaves it); an empty one was kept for good."""
    held = by_object.get(obj)
    if held is not None:
        held.pop(name, None)
        if not held:
            del by_object[obj]
