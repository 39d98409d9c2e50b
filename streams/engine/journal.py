"""What a partition remembers about its invocations: status and journal; and the keys of
its changelogs.

Stored in the compacted ``<ns>.invocations`` changelog: key ``m/<id>`` holds
an :class:`InvocationMeta`, key ``j/<id>/<index>`` one :class:`Entry`. The
``<ns>.state`` changelog is keyed ``[object, key, name]`` for state and
``[workflow, id, name, "promise"]`` for workflow promises (JSON arrays).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

from pydantic import ConfigDict, JsonValue, SkipValidation, TypeAdapter, ValidationError

from streams.wire.ids import is_id, run_of, workflow_run_id
from streams.wire.records import Caller, Failure, Target

Status = Literal[
    "pending",  # queued behind another exclusive call on its key
    "scheduled",  # delayed
    "running",
    "backing-off",  # failed, waiting to retry
    "suspended",  # waiting on a call, timer or promise, out of memory
    "paused",  # retries exhausted; resumable from the admin API
    "completed",
]

EntryKind = Literal[
    "call",
    "send",
    "get",
    "set",
    "clear",
    "clear_all",
    "state_keys",
    "run",
    "sleep",
    "attach",
    "cancel",
    "promise_get",
    "promise_peek",
    "promise_resolve",
    "promise_reject",
    "select",
]


#: A JSON value the journal holds without checking it again. Every value reaches an entry
#: or a meta either from a decoded record or changelog (JSON by construction, checked where
#: the record is decoded) or from a handler, through ``values.writable`` or ``Serde.dump``;
#: checking it once more here cost 1.4-4 us per model, a few per cent of a small invocation.
#: Nor is it copied: an entry may hold the very object the state holds, and what a handler
#: is given is its own copy (:func:`own_copy`), so nothing changes either in place.
Json = Annotated[JsonValue, SkipValidation]


def own_copy(value: Any) -> Any:
    """A JSON value as a handler is given it: its dicts and lists are its own, so that
    changing them changes neither the object's state nor the journal nor the invocation's
    stored argument, which a replay must find as they were. (Numbers, strings, booleans
    and None are immutable and shared.)"""
    kind = type(value)
    if kind is dict:
        return {name: own_copy(item) for name, item in value.items()}
    if kind is list:
        return [own_copy(item) for item in value]
    return value


# Entries and metas are plain slotted dataclasses, made and changed several times per
# invocation; pydantic reads and writes them only at the changelog (``to_json``,
# ``from_json``) and the admin API (``dump``). A pydantic model cost 7.8 us to make a meta
# and 0.65 us per attribute set, against 2.0 and 0.11 us for the dataclass; the JSON is
# the same.


#: How a changelog record is read: no field it does not know, and a time that is no number
#: (``1e400``, ``"NaN"``, another producer's) unreadable: no date holds it, and SQLite
#: holds NaN as NULL.
_READ = ConfigDict(extra="forbid", allow_inf_nan=False)


@dataclass(slots=True)
class Entry:
    """One context operation of an invocation, and its result once known."""

    __pydantic_config__ = _READ

    kind: EntryKind
    name: str | None = None  # state key, ctx.run name, promise name
    target: Target | None = None  # call / send
    callee: str | None = None  # invocation id of a call, send or attach
    value: Json = None
    failure: Failure | None = None
    done: bool = False
    due: float | None = None  # sleeps, delayed sends, call deadlines: epoch seconds

    def describe(self) -> str:
        if self.kind == "sleep":
            return "sleep"
        what = self.target.path() if self.target else (self.name or self.callee or "")
        return f"{self.kind}({what})" if what else self.kind

    def answered_by(self, invocation_id: str) -> bool:
        """Whether a completion for ``invocation_id`` belongs to this entry. A call into a
        workflow journaled by an older worker, or one that did not host the workflow yet (a
        rolling deploy), went out under a derived id; the workflow's partition ran it as the
        workflow's run, and answers under that id."""
        if self.callee == invocation_id:
            return True
        target = self.target
        return (
            self.kind == "call"
            and target is not None
            and target.key is not None
            and invocation_id == workflow_run_id(target.service, target.key)
        )

    def replace(self, **changes: Any) -> Entry:
        """A copy with ``changes`` (entries are replaced, not changed, once journaled)."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> bytes:
        return _ENTRY.dump_json(self, exclude_none=True)

    @staticmethod
    def from_json(value: bytes | str) -> Entry:
        """An entry read back from the changelog; ``ValidationError`` when it is not one.
        pydantic's JSON parser stops at 200 levels of nesting, its serializer (which wrote
        the entry) at 255: an entry between the two is parsed by the standard library,
        and kept if it can be written again."""
        try:
            return _ENTRY.validate_json(value)
        except ValidationError as error:
            entry = _parsed_deep(_ENTRY, value, error)
            try:
                entry.to_json()
            except (ValueError, RecursionError):
                raise error from None
            return entry

    def dump(self) -> dict[str, Any]:
        """The entry as JSON-ready data, without unset fields (the admin API)."""
        data: dict[str, Any] = _ENTRY.dump_python(self, mode="json", exclude_none=True)
        return data


@dataclass(slots=True)
class InvocationMeta:
    """Everything about an invocation except its journal entries."""

    __pydantic_config__ = _READ

    id: str
    target: Target
    exclusive: bool
    argument: Json = None
    headers: dict[str, str] = field(default_factory=dict)
    mode: Literal["call", "send"] = "call"
    idempotency_key: str | None = None
    request_ids: list[str] = field(default_factory=list)
    caller: Caller | None = None
    attachers: list[Caller] = field(default_factory=list)  # handlers attached to it
    cancel_requested: bool = False  # a cancel not yet delivered at an await point
    status: Status = "pending"
    seq: int = 0  # arrival order within the partition (ingress offset)
    attempt: int = 1
    journal_length: int = 0
    created_at: float = 0.0
    modified_at: float = 0.0
    retry_at: float | None = None
    due: float | None = None  # a scheduled invocation: when it runs (epoch seconds)
    last_error: str | None = None
    value: Json = None  # the outcome, once completed
    failure: Failure | None = None
    expires_at: float | None = None  # completed and retained until then
    trace: str | None = None  # W3C trace context of what started it (streams.tracing)

    def to_json(self, exclude: set[str] | None = None) -> bytes:
        """The meta as the changelog holds it; without the fields ``exclude`` names."""
        return _META.dump_json(self, exclude_none=True, exclude=exclude)

    @property
    def run(self) -> str:
        """This run of the id (``ids.run_of``): the ids it derives are not an earlier run's.
        Fixed once it runs (a scheduled invocation takes its ``Start``'s offset first)."""
        return run_of(self.id, self.seq, self.created_at)

    def outlived(self, now: float) -> bool:
        """A retained outcome whose retention has passed at ``now``: as good as forgotten
        (the partition's sweep forgets it within a second; nothing reads it until then)."""
        return self.status == "completed" and self.expires_at is not None and self.expires_at <= now

    @staticmethod
    def from_json(value: bytes | str) -> InvocationMeta:
        """A meta read back from the changelog (or a spill); ``ValidationError`` when it is
        not one. As for an entry (:meth:`Entry.from_json`), one nested deeper than
        pydantic's parser goes, which its serializer wrote, is parsed by the standard
        library: a cold invocation's argument may be."""
        try:
            return _META.validate_json(value)
        except ValidationError as error:
            return _parsed_deep(_META, value, error)

    @staticmethod
    def from_data(data: Any) -> InvocationMeta:
        """A meta from decoded JSON data; ``ValidationError`` when it is not one."""
        return _META.validate_python(data)


_ENTRY = TypeAdapter(Entry)
_META = TypeAdapter(InvocationMeta)
_T = TypeVar("_T")


def _parsed_deep(adapter: TypeAdapter[_T], value: bytes | str, error: ValidationError) -> _T:
    """``value``, which ``adapter`` refused with ``error``, parsed by the standard library
    when pydantic's parser stopped at its nesting limit (200 levels: its serializer writes
    up to 255); ``error`` otherwise."""
    first = error.errors()[0]
    if first["type"] != "json_invalid" or "recursion limit" not in first["msg"]:
        raise error
    try:
        return adapter.validate_python(json.loads(value))
    except (ValueError, RecursionError):
        raise error from None


log = logging.getLogger("kourier.journal")

CANCELLED = Failure(code=409, message="cancelled")
KILLED = Failure(code=409, message="killed")


def is_cancel(failure: Failure | None) -> bool:
    """Whether ``failure`` is a cancel's: a call's callee that was cancelled (the cancel a
    caller sent it, or one of its own) fails the call with it. A callee's own 409 for
    another reason (a business conflict, a workflow that already ran) is no cancel."""
    return failure is not None and (failure.code, failure.message) == (409, CANCELLED.message)


#: Entries that wait on something other than a call: a cancel fails them directly.
LOCAL_WAITS = frozenset({"sleep", "promise_get", "attach"})


@dataclass(frozen=True, slots=True)
class Promise:
    """A workflow's durable promise once completed: a value, or a rejection.

    Kept in the ``<ns>.state`` changelog under ``[workflow, id, name, "promise"]``.
    """

    value: JsonValue = None
    failure: Failure | None = None


def meta_key(invocation_id: str) -> bytes:
    return f"m/{invocation_id}".encode()


def entry_key(invocation_id: str, index: int) -> bytes:
    return f"j/{invocation_id}/{index}".encode()


def entry_of(key: bytes) -> tuple[str, int] | None:
    """``(invocation_id, index)`` of a journal entry's record key; None for any other key."""
    if not key.startswith(b"j/"):
        return None
    inv_id, _, position = key[2:].decode(errors="replace").rpartition("/")
    if not (inv_id and position.isascii() and position.isdigit() and len(position) < 19):
        return None  # not one Kourier wrote: passed over, as a restore must not fail on it
    return inv_id, int(position)


def state_key(service: str, key: str, name: str, *, promise: bool = False) -> bytes:
    return json.dumps([service, key, name, "promise"] if promise else [service, key, name]).encode()


def parse_state_key(key: bytes) -> tuple[str, str, str, bool]:
    """``(service, key, name, is_promise)`` of a ``<ns>.state`` record key; ``ValueError``
    for one of another shape, which every reader of the changelog passes over."""
    parts = json.loads(key)
    if not (isinstance(parts, list) and len(parts) in (3, 4)
            and all(isinstance(part, str) for part in parts)):  # fmt: skip
        raise ValueError(f"not a state key: {key[:100]!r}")
    return parts[0], parts[1], parts[2], len(parts) == 4


@dataclass(frozen=True, slots=True)
class Applied:
    """What one changelog record was about: an invocation's meta (``index`` None) or one of
    its journal entries, with the entry it wrote (None for a meta or a tombstone)."""

    invocation_id: str
    index: int | None
    entry: Entry | None


class InvocationLog:
    """The ``<ns>.invocations`` changelog read back: metas and journal entries by id.

    Metas and entries are kept apart until asked for, because compaction keeps only the
    newest record of each key, so a meta (rewritten often) may come after its entries.
    """

    def __init__(self) -> None:
        self.metas: dict[str, InvocationMeta] = {}
        self.entries: dict[str, dict[int, Entry]] = {}
        #: Ids whose meta was repaired as it was read (see ``_salvaged``): the record's
        #: bytes are not that meta's JSON.
        self.repaired: set[str] = set()
        #: Ids of the invocations that can wait or hold a key: neither completed nor
        #: scheduled (a deadlock search looks at these alone, not at every one retained).
        self.active: set[str] = set()

    def apply(self, key: bytes, value: bytes | None) -> Applied | None:
        """One changelog record; ``None`` is a tombstone. What it was about, or None for a
        key that is not an invocation's and an entry that cannot be read."""
        try:
            text = key.decode()
        except UnicodeDecodeError:  # not a key Kourier wrote
            return None
        if text.startswith("m/"):
            inv_id = text[2:]
            if value is None:
                self.metas.pop(inv_id, None)
                self.entries.pop(inv_id, None)
                self.repaired.discard(inv_id)
                self.active.discard(inv_id)
            else:
                meta, repaired = _salvaged(value)
                if meta is not None:  # unreadable: what was read of it before stands
                    self.metas[inv_id] = meta
                    if meta.status in ("completed", "scheduled"):
                        self.active.discard(inv_id)
                    else:
                        self.active.add(inv_id)
                    if repaired:
                        self.repaired.add(inv_id)
                    else:
                        self.repaired.discard(inv_id)
            return Applied(inv_id, None, None)
        entry_at = entry_of(key)
        if entry_at is None:
            return None
        inv_id, index = entry_at
        if value is not None:
            try:
                entry = Entry.from_json(value)
            except ValidationError as error:
                log.error("changelog entry %s unreadable, left out: %s", text, error)
                return None
            self.entries.setdefault(inv_id, {})[index] = entry
            return Applied(inv_id, index, entry)
        entries = self.entries.get(inv_id)
        if entries is not None:
            entries.pop(index, None)
            if not entries:
                del self.entries[inv_id]
        return Applied(inv_id, index, None)

    def journal(self, invocation_id: str) -> list[Entry]:
        """The entries of an invocation's journal that the changelog holds, in order."""
        return [entry for _, entry in self.numbered(self.metas[invocation_id])]

    def numbered(self, meta: InvocationMeta) -> list[tuple[int, Entry]]:
        """The entries held of ``meta``'s journal (its meta held here or elsewhere, as the
        admin index holds cold ones) with their indexes, which an entry missing would shift
        in the list :meth:`journal` gives (one unreadable, one not kept)."""
        entries = self.entries.get(meta.id, {})
        # By the entries held, not by the length the meta gives: a meta another producer
        # wrote may give 10**12, and the admin index asks this while it holds its lock.
        held = [(i, entry) for i, entry in entries.items() if i < meta.journal_length]
        return sorted(held, key=lambda numbered: numbered[0])


def _salvaged(value: bytes) -> tuple[InvocationMeta | None, bool]:
    """A meta from the changelog, and whether it was repaired. One written before ids were
    checked may name a caller or an attached handler by a malformed id: those are dropped
    (nobody can be answered under such an id), so the invocation itself still restores.
    Unreadable otherwise: left out (None)."""
    try:
        return InvocationMeta.from_json(value), False
    except ValidationError:
        pass
    try:
        data = json.loads(value)
        caller = data.get("caller")
        if isinstance(caller, dict) and not is_id(str(caller.get("invocation_id"))):
            log.error("invocation %s: caller id %r dropped", data.get("id"), caller)
            data["caller"] = None
        data["attachers"] = [
            a for a in data.get("attachers") or []
            if isinstance(a, dict) and is_id(str(a.get("invocation_id")))
        ]  # fmt: skip
        meta = InvocationMeta.from_data(data)
        meta.to_json()  # what json.loads takes the serializer may not (nesting): left out
        return meta, True
    except (ValueError, ValidationError, AttributeError, TypeError, RecursionError) as error:
        log.error("changelog meta unreadable, left out: %r", error)
        return None, False
