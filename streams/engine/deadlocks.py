"""Deadlock detection: cycles in the wait-for graph of invocations.

Exclusive handlers hold their object key while they run, so request-response calls
between them can wait in a circle — ``A`` (holding key ``a``) calls ``B`` on key ``b``,
which calls back to key ``a`` and queues behind ``A`` — and by the contract such a
circle blocks. The graph has an edge ``X → Y`` when

- ``X`` waits for the outcome of ``Y``: an open call (or attach) in ``X``'s journal; or
- ``X`` is queued on a key that ``Y`` holds (``Y`` is the key's running, suspended,
  backing-off or paused exclusive invocation).

Every strongly connected component with more than one member is a deadlock: nobody in it
can finish before another member does. The admin server runs this over its invocation
index (every partition's changelog), so cycles across partitions and worker processes
are seen; a cycle is stable, so it is always in the changelogs. Kourier reports
deadlocks (``GET /deadlocks``, ``kourier invocations deadlocks``, the ``kourier_deadlocks``
metric, the UI banner) and does not break them itself: cancelling any member unwinds the
rest (its callers get its 409, which they may handle; queued ones behind it then run).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from streams.engine.journal import Entry, InvocationMeta

#: Statuses of an exclusive invocation that holds its key.
HOLDING = frozenset({"running", "suspended", "backing-off", "paused"})


@dataclass(frozen=True)
class Edge:
    waiter: str
    holder: str
    how: Literal["call", "attach", "lock"]


def wait_for_edges(invocations: Iterable[tuple[InvocationMeta, list[Entry]]]) -> list[Edge]:
    """The wait-for graph of the invocations that are not completed."""
    live = [(meta, journal) for meta, journal in invocations if meta.status != "completed"]
    holders: dict[tuple[str, str], str] = {}
    for meta, _ in live:
        if meta.exclusive and meta.target.key is not None and meta.status in HOLDING:
            holders[(meta.target.service, meta.target.key)] = meta.id
    edges: list[Edge] = []
    for meta, journal in live:
        for entry in journal:
            if not entry.done and entry.callee and entry.kind in ("call", "attach"):
                edges.append(
                    Edge(meta.id, entry.callee, "call" if entry.kind == "call" else "attach")
                )
        if meta.status == "pending" and meta.exclusive and meta.target.key is not None:
            holder = holders.get((meta.target.service, meta.target.key))
            if holder is not None and holder != meta.id:
                edges.append(Edge(meta.id, holder, "lock"))
    return edges


def find_cycles(edges: list[Edge]) -> list[list[Edge]]:
    """Each deadlock as the cycle of edges through its members (Tarjan's SCCs)."""
    graph: dict[str, list[Edge]] = {}
    for edge in edges:
        graph.setdefault(edge.waiter, []).append(edge)
        graph.setdefault(edge.holder, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            outgoing = graph[node]
            if child < len(outgoing):
                work.append((node, child + 1))
                nxt = outgoing[child].holder
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return [_cycle_through(component, graph) for component in components]


def _cycle_through(component: set[str], graph: dict[str, list[Edge]]) -> list[Edge]:
    """One cycle inside a strongly connected component, starting at its smallest id."""
    start = min(component)
    path: list[Edge] = []
    seen: dict[str, int] = {}
    node = start
    while node not in seen:
        seen[node] = len(path)
        edge = next(e for e in graph[node] if e.holder in component)
        path.append(edge)
        node = edge.holder
    return path[seen[node] :]


def describe(cycle: list[Edge], metas: dict[str, InvocationMeta]) -> dict[str, Any]:
    members = []
    for edge in cycle:
        meta = metas.get(edge.waiter)
        members.append(
            {
                "id": edge.waiter,
                "target": meta.target.path() if meta else None,
                "status": meta.status if meta else None,
                "waits_for": edge.holder,
                "how": edge.how,
            }
        )
    return {"members": members, "size": len(members)}
