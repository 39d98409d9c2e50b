"""Reading the invocations changelog back, as restores and the admin index do."""

from __future__ import annotations

from streams.engine.journal import Entry, InvocationLog, InvocationMeta, entry_key, meta_key
from streams.wire.records import Target


def test_entries_before_their_meta_and_tombstones_leave_nothing() -> None:
    log = InvocationLog()
    meta = InvocationMeta(id="a", target=Target(service="S", handler="h"), exclusive=False,
                          journal_length=2)  # fmt: skip
    # Compaction may leave an entry before its (rewritten) meta.
    log.apply(entry_key("a", 1), Entry(kind="get", name="y").model_dump_json().encode())
    log.apply(meta_key("a"), meta.model_dump_json().encode())
    log.apply(entry_key("a", 0), Entry(kind="get", name="x").model_dump_json().encode())
    assert [entry.name for entry in log.journal("a")] == ["x", "y"]
    # An invocation forgotten: meta tombstone, then its entries' tombstones.
    log.apply(meta_key("a"), None)
    log.apply(entry_key("a", 0), None)
    log.apply(entry_key("a", 1), None)
    assert (log.metas, log.entries) == ({}, {})
