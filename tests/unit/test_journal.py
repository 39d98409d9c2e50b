"""Reading the invocations changelog back, as restores and the admin index do."""

from __future__ import annotations

import json

from streams.engine.journal import Entry, InvocationLog, InvocationMeta, entry_key, meta_key
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
