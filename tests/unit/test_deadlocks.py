"""The wait-for graph and its cycles, from invocation metas and journals."""

from __future__ import annotations

from streams.engine.deadlocks import find_cycles, wait_for_edges
from streams.engine.journal import Entry, InvocationMeta, Status
from streams.wire import ids
from streams.wire.records import Target


def meta(name: str, key: str, status: Status, exclusive: bool = True) -> InvocationMeta:
    return InvocationMeta(
        id=name, target=Target(service="Obj", key=key, handler="h"), exclusive=exclusive,
        status=status,
    )  # fmt: skip


def call(callee: str, done: bool = False) -> Entry:
    return Entry(kind="call", callee=callee, done=done)


def members(cycles: list[list[object]]) -> list[set[str]]:
    return [{edge.waiter for edge in cycle} for cycle in cycles]  # type: ignore[attr-defined]


def test_a_call_back_to_a_held_key_is_a_cycle() -> None:
    # A holds a and calls B on b; B calls a again: C queues behind A.
    graph = [
        (meta("A", "a", "suspended"), [call("B")]),
        (meta("B", "b", "suspended"), [call("C")]),
        (meta("C", "a", "pending"), []),
    ]
    edges = wait_for_edges(graph)
    assert {(e.waiter, e.holder, e.how) for e in edges} == {
        ("A", "B", "call"), ("B", "C", "call"), ("C", "A", "lock"),
    }  # fmt: skip
    (cycle,) = find_cycles(edges)
    assert [edge.waiter for edge in cycle] == ["A", "B", "C"]


def test_three_objects_and_two_separate_cycles() -> None:
    graph = [
        (meta("X1", "x", "running"), [call("Y1")]),
        (meta("Y1", "y", "running"), [call("Z1")]),
        (meta("Z1", "z", "running"), [call("X2")]),
        (meta("X2", "x", "pending"), []),
        (meta("P", "p", "backing-off"), [call("Q")]),
        (meta("Q", "q", "suspended"), [call("P2")]),
        (meta("P2", "p", "pending"), []),
    ]
    assert sorted(map(sorted, members(find_cycles(wait_for_edges(graph))))) == [  # type: ignore[arg-type]
        ["P", "P2", "Q"],
        ["X1", "X2", "Y1", "Z1"],
    ]


def test_waiting_without_a_cycle_is_not_a_deadlock() -> None:
    graph = [
        (meta("A", "a", "running"), [call("B")]),
        (meta("B", "b", "running"), [call("S", done=True), call("T")]),
        (meta("A2", "a", "pending"), []),  # queued behind A, but A does not wait on it
        (meta("done", "c", "completed"), [call("A")]),  # completed: waits on nothing
        (meta("shared", "a", "running", exclusive=False), [call("A")]),
    ]
    assert find_cycles(wait_for_edges(graph)) == []


def test_ids_are_opaque_to_the_graph() -> None:
    a, b = ids.new_id("a", 4), ids.new_id("b", 4)
    graph = [(meta(a, "a", "suspended"), [call(b)]), (meta(b, "b", "paused"), [call(a)])]
    (cycle,) = find_cycles(wait_for_edges(graph))
    assert {edge.waiter for edge in cycle} == {a, b}
