"""Reading the invocations changelog back, as restores and the admin index do."""

from __future__ import annotations

import json

from streams.engine.journal import Entry, InvocationLog, InvocationMeta, entry_key, meta_key
from streams.engine.values import writable
from streams.wire.records import Target


def test_entries_before_their_meta_and_tombstones_leave_nothing() -> None:
    log = InvocationLog()
    meta = InvocationMeta(id="a", target=Target(service="S", handler="h"), exclusive=False,
                          journal_length=2)  # fmt: skip
    # Compaction may leave an entry before its (rewritten) meta.
    log.apply(entry_key("a", 1), Entry(kind="get", name="y").to_json())
    log.apply(meta_key("a"), meta.to_json())
    log.apply(entry_key("a", 0), Entry(kind="get", name="x").to_json())
    assert [entry.name for entry in log.journal("a")] == ["x", "y"]
    # An invocation forgotten: meta tombstone, then its entries' tombstones.
    log.apply(meta_key("a"), None)
    log.apply(entry_key("a", 0), None)
    log.apply(entry_key("a", 1), None)
    assert (log.metas, log.entries) == ({}, {})


def test_a_meta_that_could_not_be_written_again_is_left_out() -> None:
    """A meta read through the salvage path (a caller named by a malformed id) is kept only
    if it can be written back: one nested deeper than the serializer goes would otherwise
    fail every later commit of its partition."""
    deep: object = 1
    for _ in range(400):
        deep = [deep]
    inv_id = "inv_0123456789abcdef0123456789abcdef"
    row = {"id": inv_id, "target": {"service": "S", "handler": "h"}, "exclusive": False,
           "caller": {"invocation_id": "not-an-id", "entry": 0}}  # fmt: skip
    log = InvocationLog()
    log.apply(meta_key(inv_id), json.dumps({**row, "argument": [1]}).encode())
    assert log.metas[inv_id].caller is None
    assert log.metas[inv_id].argument == [1]
    log.apply(meta_key(inv_id), None)
    log.apply(meta_key(inv_id), json.dumps({**row, "argument": deep}).encode())
    assert inv_id not in log.metas


def test_an_entry_nested_deeper_than_the_json_parser_goes_is_read_back() -> None:
    """``values.writable`` lets a handler's value through up to the serializer's 255 levels
    of nesting, pydantic's JSON parser reads 200: an entry in between was written to the
    changelog, then left out of the journal a restore rebuilt, and the invocation paused."""
    deep: object = "bottom"
    for _ in range(230):
        deep = [deep]
    value = writable(deep, "the result")
    log = InvocationLog()
    log.apply(entry_key("a", 0), Entry(kind="run", value=value, done=True).to_json())
    assert log.entries["a"][0].value == deep
    assert log.apply(entry_key("a", 1), b'{"kind": "run", "value": [1}') is None, "not JSON"
    # Deeper than the serializer could have written, or than Python's parser goes: left out.
    for depth in (400, 5_000):
        nested = b'{"kind": "run", "value": ' + b"[" * depth + b"]" * depth + b"}"
        assert log.apply(entry_key("a", 2), nested) is None
    assert sorted(log.entries["a"]) == [0]


def test_the_active_invocations_are_those_that_can_wait_or_hold_a_key() -> None:
    """The admin's deadlock search runs every second over what may wait: it looked at every
    invocation the changelog held, a million delayed sends among them."""
    log = InvocationLog()
    target = Target(service="S", key="k", handler="h")
    for inv_id, status in [("a", "running"), ("b", "scheduled"), ("c", "completed"),
                           ("d", "pending"), ("e", "suspended")]:  # fmt: skip
        meta = InvocationMeta(id=inv_id, target=target, exclusive=True, status=status)
        log.apply(meta_key(inv_id), meta.to_json())
    assert log.active == {"a", "d", "e"}
    done = InvocationMeta(id="a", target=target, exclusive=True, status="completed")
    log.apply(meta_key("a"), done.to_json())
    log.apply(meta_key("d"), None)
    assert log.active == {"e"}


def test_a_meta_whose_attachers_are_not_a_list_is_left_out() -> None:
    """Read through the salvage path, ``attachers`` of another type raised a TypeError that
    ended the reader: the admin index's thread, and a worker's restore of the partition."""
    inv_id = "inv_0123456789abcdef0123456789abcdef"
    row = {"id": inv_id, "target": {"service": "S", "handler": "h"}, "exclusive": False,
           "caller": {"invocation_id": "not-an-id", "entry": 0}, "attachers": 5}  # fmt: skip
    log = InvocationLog()
    log.apply(meta_key(inv_id), json.dumps(row).encode())
    assert inv_id not in log.metas


def test_a_meta_giving_a_huge_journal_length_is_numbered_by_what_is_held() -> None:
    """The journal was numbered by counting to the meta's ``journal_length``: one another
    producer wrote with ``10**12`` held the admin index's lock (its deadlock search runs
    every second over every active invocation) for good. The entries past the length are
    left out, as before; the order is the entries' own, whatever order they came in."""
    import threading

    log = InvocationLog()
    target = Target(service="S", handler="h")
    meta = InvocationMeta(id="a", target=target, exclusive=False, journal_length=10**12)
    log.apply(meta_key("a"), meta.to_json())
    for index, name in [(3, "d"), (0, "a")]:
        log.apply(entry_key("a", index), Entry(kind="get", name=name).to_json())
    numbered: list[list[tuple[int, str | None]]] = []
    counting = threading.Thread(
        target=lambda: numbered.append([(i, e.name) for i, e in log.numbered(meta)]), daemon=True
    )
    counting.start()
    counting.join(10)
    assert numbered == [[(0, "a"), (3, "d")]], "still counting to the meta's length after 10 s"
    short = InvocationMeta(id="a", target=target, exclusive=False, journal_length=2)
    assert [(i, e.name) for i, e in log.numbered(short)] == [(0, "a")]
