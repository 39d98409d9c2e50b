"""How invocations connect: who called or sent each one, and what each one called or sent.

A call's callee names its caller (``InvocationMeta.caller``), but a one-way send's does not:
the only trace of a send is the sender's journal entry, whose ``callee`` is the id it sent
to. So the admin index keeps :class:`CallLinks`, callee → sender, from the journal entries
it reads, and :func:`call_tree` walks both ways from one invocation: up the chain of callers
to the root, and down through callees, bounded so one fan-out of thousands cannot make
``GET /invocations/{id}`` slow or huge. Pure: no Kafka, no HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from streams.engine.journal import Entry, InvocationMeta

#: Callers shown above an invocation, and levels of callees below it.
MAX_DEPTH = 5
#: Nodes in one tree, callers and callees together.
MAX_NODES = 100

Via = Literal["call", "send"]


@dataclass(frozen=True, slots=True)
class Link:
    """Journal entry ``entry`` of ``parent`` called (or sent to) the linked invocation."""

    parent: str
    entry: int
    via: Via


class CallLinks:
    """Callee id → the :class:`Link` that started it, read from the journals.

    The first link recorded for a callee wins: an idempotent call or a workflow's ``run``
    may be named by later entries of other invocations, but it was started by the first.
    Links go when their parent is forgotten (its meta tombstoned). They outlive a journal
    the index lets go (a completed invocation's, ``KEPT_JOURNALS``): its callees still name
    it as their caller, while its own tree no longer lists them.
    """

    def __init__(self) -> None:
        self._parent_of: dict[str, Link] = {}
        self._children: dict[str, set[str]] = {}

    def record(self, parent: str, index: int, entry: Entry) -> None:
        """A journal entry read from the changelog; only calls and sends link."""
        if entry.kind not in ("call", "send") or not entry.callee or entry.callee == parent:
            return
        if entry.callee not in self._parent_of:
            self._parent_of[entry.callee] = Link(parent, index, entry.kind)
        self._children.setdefault(parent, set()).add(entry.callee)

    def forget(self, parent: str) -> None:
        """``parent`` is gone from the changelog, and its journal with it."""
        for callee in self._children.pop(parent, ()):
            link = self._parent_of.get(callee)
            if link is not None and link.parent == parent:
                del self._parent_of[callee]
        # And its own link: a later invocation with the same id (idempotency ids are
        # derived) must not inherit this one's caller.
        self._parent_of.pop(parent, None)

    def get(self, callee: str) -> Link | None:
        return self._parent_of.get(callee)

    def __len__(self) -> int:
        return len(self._parent_of)


def parent_of(
    meta: InvocationMeta | None, callee: str, links: CallLinks | None = None
) -> Link | None:
    """Who started ``callee``: the caller its meta names (a call), else the journal entry
    that sent to it (a send), else nobody known (an outside client, or a sender no longer
    retained)."""
    if meta is not None and meta.caller is not None:
        return Link(meta.caller.invocation_id, meta.caller.entry, "call")
    return links.get(callee) if links is not None else None


def call_tree(
    invocation_id: str,
    metas: Mapping[str, InvocationMeta],
    journal: Callable[[str], list[tuple[int, Entry]]],
    links: CallLinks,
    *,
    now: float | None = None,
    max_depth: int = MAX_DEPTH,
    max_nodes: int = MAX_NODES,
    count: Callable[[str], int] | None = None,
) -> dict[str, Any]:
    """``{"callers": [...], "callees": [...], "truncated": bool}`` around ``invocation_id``.

    ``callers`` runs from the root of the chain down to the direct caller (at most
    ``max_depth`` of them); each names, in ``via`` and ``entry``, how it invoked the next.
    ``callees`` are the invocation's calls and sends in journal order, each with its own
    ``callees``, ``max_depth`` levels down, breadth first so a wide level is shown before a
    deep one. ``truncated`` says the node budget ran out; a node whose callees lie past the
    depth limit says how many in ``more``. An invocation the index does not hold (a short
    call that completed between two commits, or one no longer retained) is a node with
    ``"indexed": false`` and what its caller's journal entry knows of it.

    ``journal`` need give no more than ``max_nodes`` calls and sends of an invocation when
    ``count`` says how many it made (for ``more``).
    """
    now = time.time() if now is None else now
    budget = max_nodes
    seen = {invocation_id}

    callers: list[dict[str, Any]] = []
    link = parent_of(metas.get(invocation_id), invocation_id, links)
    while link is not None and len(callers) < max_depth and budget > 0:
        if link.parent in seen:
            break  # a workflow calling its own run, say: not a chain
        seen.add(link.parent)
        meta = metas.get(link.parent)
        row = _node(link.parent, meta, None, now) | {"via": link.via, "entry": link.entry}
        callers.append(row)
        budget -= 1
        link = parent_of(meta, link.parent, links)
    callers.reverse()
    truncated = link is not None and link.parent not in seen

    root: dict[str, Any] = {"callees": []}
    level = [(invocation_id, root)]
    for depth in range(max_depth + 1):
        following: list[tuple[str, dict[str, Any]]] = []
        for parent_id, parent_row in level:
            if parent_id not in metas:
                continue
            if depth == max_depth:  # what lies below is counted, not read
                more = len(_edges(journal(parent_id))) if count is None else count(parent_id)
                if more:
                    parent_row["more"] = more
                continue
            edges = _edges(journal(parent_id))
            for index, entry in edges:
                if budget <= 0:
                    truncated = True
                    break
                assert entry.callee is not None
                child = _node(entry.callee, metas.get(entry.callee), entry, now)
                child |= {"via": entry.kind, "entry": index, "callees": []}
                parent_row["callees"].append(child)
                budget -= 1
                if entry.callee not in seen:
                    seen.add(entry.callee)
                    following.append((entry.callee, child))
        level = following
    return {"callers": callers, "callees": root["callees"], "truncated": truncated}


def _edges(journal: list[tuple[int, Entry]]) -> list[tuple[int, Entry]]:
    return [(i, e) for i, e in journal if e.kind in ("call", "send") and e.callee]


def _node(
    inv_id: str, meta: InvocationMeta | None, entry: Entry | None, now: float
) -> dict[str, Any]:
    """One invocation as a tree node: status, target and timing, or what is known of it."""
    if meta is None:
        row: dict[str, Any] = {"id": inv_id, "indexed": False}
        if entry is not None and entry.target is not None:
            row["target"] = entry.target.path()
        # A call's entry is done once its outcome came back; a send's is done at once and
        # says nothing of how the callee fared.
        known = entry is not None and entry.kind == "call" and entry.done
        row["status"] = "completed" if known else "unknown"
        if known and entry is not None and entry.failure is not None:
            row["failure"] = entry.failure.model_dump()
        return row
    row = {
        "id": inv_id,
        "indexed": True,
        "target": meta.target.path(),
        "status": meta.status,
        "created_at": iso(meta.created_at),
        "modified_at": iso(meta.modified_at),
    }
    if meta.status == "completed":
        row["duration_ms"] = round(max(0.0, meta.modified_at - meta.created_at) * 1000)
        if meta.failure is not None:
            row["failure"] = meta.failure.model_dump()
    else:
        row["age_ms"] = round(max(0.0, now - meta.created_at) * 1000)
    if meta.due is not None and meta.status == "scheduled":
        row["due_at"] = iso(meta.due)
    return row


def iso(epoch: float) -> str:
    """ISO-8601 UTC with milliseconds, as every admin API timestamp; a time no date can
    hold (a changelog record another producer wrote) as its number, not an error that
    failed every listing it was in."""
    try:
        day = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))
        return day + f".{int(epoch % 1 * 1000):03d}Z"
    except (OverflowError, OSError, ValueError):
        return repr(epoch)
