"""The call tree the admin API shows: callers up to the root, callees below, bounded; and
the admin index building it from changelog records, sends included."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, get_args

import pytest
from confluent_kafka import OFFSET_INVALID, TopicPartition

from streams.engine.journal import Entry, InvocationMeta, Status, entry_key, meta_key
from streams.engine.spill import SpillFailed
from streams.http import index as index_module
from streams.http.calltree import CallLinks, call_tree
from streams.http.index import InvocationIndex
from streams.settings import Settings
from streams.wire import ids
from streams.wire.records import Caller, Failure, Target

EVERY = frozenset(get_args(Status))


def an_id(name: str) -> str:
    return ids.keyed_id(name, name)


def meta(
    inv_id: str,
    handler: str,
    status: Status = "suspended",
    *,
    caller: str | None = None,
    entry: int = 0,
    journal_length: int = 0,
) -> InvocationMeta:
    return InvocationMeta(
        id=inv_id, target=Target(service="Svc", handler=handler), exclusive=False,
        status=status, caller=Caller(invocation_id=caller, entry=entry) if caller else None,
        created_at=100.0, modified_at=101.5, journal_length=journal_length,
    )  # fmt: skip


def call(callee: str, handler: str, *, done: bool = False, failure: Failure | None = None) -> Entry:
    target = Target(service="Svc", handler=handler)
    return Entry(kind="call", target=target, callee=callee, done=done, failure=failure)


def send(callee: str, handler: str) -> Entry:
    return Entry(
        kind="send", target=Target(service="Svc", handler=handler), callee=callee, done=True
    )


class Graph:
    """Metas and journals in memory, with the links the index would have read."""

    def __init__(self) -> None:
        self.metas: dict[str, InvocationMeta] = {}
        self.journals: dict[str, list[Entry]] = {}
        self.links = CallLinks()

    def add(self, m: InvocationMeta, *entries: Entry) -> str:
        self.metas[m.id] = m
        self.journals[m.id] = list(entries)
        for index, entry in enumerate(entries):
            self.links.record(m.id, index, entry)
        return m.id

    def tree(self, inv_id: str, **bounds: int) -> dict[str, Any]:
        journal = lambda i: list(enumerate(self.journals.get(i, [])))  # noqa: E731
        return call_tree(inv_id, self.metas, journal, self.links, now=110.0, **bounds)


def test_callers_run_from_the_root_and_callees_nest_below() -> None:
    root, mid, leaf, sent = an_id("root"), an_id("mid"), an_id("leaf"), an_id("sent")
    g = Graph()
    g.add(meta(root, "top"), call(mid, "middle"))
    g.add(meta(mid, "middle", caller=root), send(sent, "later"), call(leaf, "bottom"))
    g.add(meta(leaf, "bottom", caller=mid, entry=1))
    g.add(meta(sent, "later", "completed"))  # a send: its meta names no caller

    tree = g.tree(mid)
    assert [(n["id"], n["via"], n["entry"]) for n in tree["callers"]] == [(root, "call", 0)]
    assert [(n["id"], n["via"], n["entry"]) for n in tree["callees"]] == [
        (sent, "send", 0), (leaf, "call", 1),
    ]  # fmt: skip
    done = tree["callees"][0]
    assert done["status"] == "completed"
    assert done["duration_ms"] == 1500
    assert tree["callees"][1]["age_ms"] == 10_000, "in flight: how long so far"
    assert tree["callees"][1]["target"] == "Svc/bottom"
    assert not tree["truncated"]

    # From the sent invocation, the sender is found through the sender's journal alone.
    up = g.tree(sent)
    assert [n["id"] for n in up["callers"]] == [root, mid]
    assert [n["via"] for n in up["callers"]] == ["call", "send"], "each says how it went on"

    # From the root, two levels of callees.
    down = g.tree(root)
    assert down["callers"] == []
    assert [c["id"] for c in down["callees"][0]["callees"]] == [sent, leaf]


def test_a_callee_the_index_never_held_shows_what_its_entry_knows() -> None:
    parent, quick, failed, fired = an_id("p"), an_id("quick"), an_id("failed"), an_id("fired")
    g = Graph()
    refused = Failure(code=418, message="teapot")
    g.add(
        meta(parent, "p"),
        call(quick, "quick", done=True),
        call(failed, "refuse", done=True, failure=refused),
        send(fired, "fire"),
    )
    nodes = g.tree(parent)["callees"]
    assert [(n["indexed"], n["status"]) for n in nodes] == [
        (False, "completed"), (False, "completed"), (False, "unknown"),
    ]  # fmt: skip
    assert nodes[1]["failure"] == {"code": 418, "message": "teapot"}
    assert nodes[2]["target"] == "Svc/fire"


def test_the_tree_is_bounded_in_depth_and_in_nodes() -> None:
    g = Graph()
    chain = [an_id(f"c{i}") for i in range(10)]
    for i, inv_id in enumerate(chain):
        below = [call(chain[i + 1], f"h{i + 1}")] if i + 1 < len(chain) else []
        g.add(meta(inv_id, f"h{i}", caller=chain[i - 1] if i else None), *below)

    middle = g.tree(chain[7], max_depth=5)
    assert [n["id"] for n in middle["callers"]] == chain[2:7], "the nearest five callers"
    assert middle["truncated"], "the chain goes on above"

    top = g.tree(chain[0], max_depth=3)
    level = top["callees"]
    for depth in range(3):
        assert len(level) == 1
        if depth < 2:
            level = level[0]["callees"]
    assert level[0]["callees"] == []
    assert level[0]["more"] == 1, "says what lies below"

    wide = Graph()
    fan = [an_id(f"f{i}") for i in range(30)]
    hub = wide.add(meta(an_id("hub"), "hub"), *(send(f, "leaf") for f in fan))
    capped = wide.tree(hub, max_nodes=10)
    assert len(capped["callees"]) == 10
    assert capped["truncated"]


def test_a_call_back_into_a_workflow_run_is_not_a_loop() -> None:
    run = ids.workflow_run_id("Signup", "ada")
    g = Graph()
    g.add(meta(run, "run", caller=run), call(run, "run"))
    tree = g.tree(run)
    assert tree["callers"] == []
    assert [n["id"] for n in tree["callees"]] == [run]
    assert tree["callees"][0]["callees"] == [], "an id already shown is not expanded again"


def test_the_first_link_wins_and_goes_with_its_parent() -> None:
    first, second, shared = an_id("first"), an_id("second"), an_id("shared")
    links = CallLinks()
    links.record(first, 2, send(shared, "x"))
    links.record(second, 0, call(shared, "x"))  # an idempotent call to the same one
    link = links.get(shared)
    assert link is not None
    assert (link.parent, link.entry, link.via) == (first, 2, "send")
    links.forget(second)
    assert links.get(shared) is not None, "not second's link to drop"
    links.forget(first)
    assert links.get(shared) is None
    assert len(links) == 0
    links.record(first, 0, Entry(kind="get", name="n"))
    assert len(links) == 0, "only calls and sends link"


def test_the_index_links_sends_from_changelog_records() -> None:
    index = InvocationIndex(Settings(namespace="unit"))
    topic = index.topics.invocations
    sender, sent = an_id("sender"), an_id("sent")
    records = [
        (meta_key(sender), meta(sender, "fan", journal_length=1)),
        (entry_key(sender, 0), send(sent, "later")),
        (meta_key(sent), meta(sent, "later", "scheduled")),
    ]
    for key, value in records:
        index._apply(topic, key, value.to_json())

    described = index.describe(sent)
    assert described is not None
    assert described["caller"] == sender, "a send's sender, though its meta names none"
    assert [n["id"] for n in described["tree"]["callers"]] == [sender]
    assert [row["caller"] for row in index.query(status="scheduled")] == [sender]
    sender_view = index.describe(sender)
    assert sender_view is not None
    assert [n["id"] for n in sender_view["tree"]["callees"]] == [sent]
    assert index.choose(service="Svc", status="scheduled", among=frozenset({"scheduled"}),
                        limit=5) == ([(sent, "scheduled", "Svc/later")], 1, 0)  # fmt: skip

    index._apply(topic, meta_key(sender), None)  # the sender is forgotten
    forgotten = index.describe(sent)
    assert forgotten is not None
    assert "caller" not in forgotten
    assert forgotten["tree"]["callers"] == []


def test_the_index_passes_over_a_state_record_of_another_shape_and_forgets_empty_objects() -> None:
    """A state key of another shape raised out of the index's thread (a ``TypeError`` or an
    ``IndexError``, which it did not catch): the thread ended and the admin views stood
    still. An object whose every name was cleared kept an empty entry for good."""
    index = InvocationIndex(Settings(namespace="unit"))
    topic = index.topics.state
    for key in (b"[]", b'["A", "b"]', b'{"a": 1}', b"5", b'[["x"], "k", "n"]'):
        index._apply(topic, key, b"1")
    index._apply(topic, b'["Tally", "k", "count"]', b"3")
    index._apply(topic, b'["Tally", "k", "other"]', b"not JSON")
    assert index.state_of("Tally", "k") == {"count": 3}
    index._apply(topic, b'["Tally", "k", "count"]', None)
    assert index.state_of("Tally", "k") == {}, "a name cleared is still held"


def test_a_list_builds_rows_for_the_newest_it_keeps_in_the_order_it_did() -> None:
    index = InvocationIndex(Settings(namespace="unit"))
    topic = index.topics.invocations
    made = []
    for n in range(50):
        inv_id = an_id(f"inv-{n}")
        made.append(inv_id)
        record = meta(inv_id, "h")
        record.created_at = 100.0 + n
        index._apply(topic, meta_key(inv_id), record.to_json())
    assert [row["id"] for row in index.query(limit=3)] == made[:-4:-1]
    due = {made[7]: 9.0, made[3]: 5.0, made[20]: 7.0}
    for inv_id, at in due.items():
        record = meta(inv_id, "h", "scheduled")
        record.due = at
        index._apply(topic, meta_key(inv_id), record.to_json())
    soonest = index.query(status="scheduled", limit=2)
    assert [row["id"] for row in soonest] == [made[3], made[20]]


def test_the_index_keeps_the_journals_of_the_latest_completed_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A completed invocation's entries stay in the changelog until its outcome's retention
    ends (a day of idempotent calls): the index held every one of them. It keeps the
    journals of the latest completed, by when they completed; the earlier keep their meta,
    and say so."""
    monkeypatch.setattr(index_module, "KEPT_JOURNALS", 2, raising=False)
    index = InvocationIndex(Settings(namespace="unit"))
    topic = index.topics.invocations
    done = [an_id(f"done-{n}") for n in range(3)]  # completed in this order
    for n in (2, 0, 1):  # read in another: partitions are read in no order of time
        inv_id = done[n]
        got = Entry(kind="get", name="n", done=True)
        index._apply(topic, entry_key(inv_id, 0), got.to_json())
        completed = meta(inv_id, "h", "completed", journal_length=1)
        completed.modified_at = 200.0 + n
        index._apply(topic, meta_key(inv_id), completed.to_json())
    on_disk = {i for i in done if index.cold.journal(i, 1)}
    assert on_disk == set(done[1:])
    oldest = index.describe(done[0])
    assert oldest is not None
    assert (oldest["journal"], oldest.get("journal_dropped")) == ([], True)
    latest = index.describe(done[2])
    assert latest is not None
    assert len(latest["journal"]) == 1
    assert "journal_dropped" not in latest
    # An entry of one completed long ago, read after its meta (compaction), is not kept.
    index._apply(topic, entry_key(done[0], 0), Entry(kind="get", name="n", done=True).to_json())
    assert done[0] not in index.log.entries
    assert index.cold.journal(done[0], 1) == []
    running = an_id("running")  # a journal in flight is kept whatever its length
    index._apply(topic, meta_key(running), meta(running, "h", journal_length=1).to_json())
    index._apply(topic, entry_key(running, 0), Entry(kind="get", name="n").to_json())
    assert running in index.log.entries


def test_the_journals_of_completed_invocations_are_held_on_disk() -> None:
    """The index held the journals of the latest 10,000 completed invocations in memory:
    with large values in them (900 KiB each at most), gigabytes. Only journals in flight
    stay in memory now; the entries of a completed one move to the index's spill with its
    meta, and those read later (compaction) follow them there."""
    index = InvocationIndex(Settings(namespace="unit"))
    topic = index.topics.invocations
    done, running = an_id("done"), an_id("running")
    big = "x" * 100_000
    got = Entry(kind="get", name="n", done=True, value=big)
    for inv_id in (done, running):
        index._apply(topic, meta_key(inv_id), meta(inv_id, "h", journal_length=3).to_json())
        index._apply(topic, entry_key(inv_id, 0), got.to_json())
    callee = an_id("callee")
    index._apply(topic, entry_key(done, 1), call(callee, "c", done=True).to_json())
    completed = meta(done, "h", "completed", journal_length=3)
    index._apply(topic, meta_key(done), completed.to_json())
    index._apply(topic, entry_key(done, 2), got.to_json())  # read after its meta
    assert set(index.log.entries) == {running}, "a completed journal held in memory"
    described = index.describe(done)
    assert described is not None
    assert [e["index"] for e in described["journal"]] == [0, 1, 2]
    assert described["journal"][2]["value"] == big
    assert [(n["id"], n["entry"]) for n in described["tree"]["callees"]] == [(callee, 1)]
    shown = index.describe(done, journal_limit=1)  # the last ones read from disk
    assert shown is not None
    assert ([e["index"] for e in shown["journal"]], shown["journal_omitted"]) == ([2], 2)
    index._apply(topic, entry_key(done, 0), None)  # the changelog lets go of an entry
    assert [i for i, _ in index.cold.journal(done, 3)] == [1, 2]
    index._apply(topic, meta_key(done), None)  # and of the invocation
    assert index.cold.journal(done, 3) == []
    assert [e["index"] for e in index.describe(running)["journal"]] == [0]  # type: ignore[index]
    index.close()


def test_a_journal_with_an_entry_missing_keeps_its_indexes() -> None:
    """An entry the changelog does not hold (unreadable, or not kept) shifted every later
    one: shown as ``#0``, and "waits on ... (entry 0)" named the wrong entry."""
    index = InvocationIndex(Settings(namespace="unit"))
    topic = index.topics.invocations
    waiting, callee = an_id("waiting"), an_id("callee")
    index._apply(topic, meta_key(waiting), meta(waiting, "h", journal_length=2).to_json())
    call = Entry(kind="call", callee=callee, target=Target(service="Svc", handler="c"))
    index._apply(topic, entry_key(waiting, 1), call.to_json())  # entry 0 is not there
    described = index.describe(waiting)
    assert described is not None
    assert [entry["index"] for entry in described["journal"]] == [1]
    assert described["waiting_on"] == [f"{call.describe()} (entry 1)"]
    assert [(n["id"], n["entry"]) for n in described["tree"]["callees"]] == [(callee, 1)]


def test_a_queued_invocation_waits_on_its_keys_holder() -> None:
    """A call queued behind an exclusive one showed nothing under "waits on"."""
    index = InvocationIndex(Settings(namespace="unit"))
    topic = index.topics.invocations
    target = Target(service="Tally", key="k", handler="add")
    holder, queued = an_id("holder"), an_id("queued")
    for inv_id, status in ((holder, "suspended"), (queued, "pending")):
        record = InvocationMeta(id=inv_id, target=target, exclusive=True, status=status)
        index._apply(topic, meta_key(inv_id), record.to_json())
    described = index.describe(queued)
    assert described is not None
    assert described["waiting_on"] == [f"its key, held by {holder} (Tally/k/add, suspended)"]
    held = index.describe(holder)
    assert held is not None
    assert held["waiting_on"] == []


def test_a_long_journal_is_shown_by_its_last_entries() -> None:
    """The detail held the whole journal: tens of megabytes for a workflow of a hundred
    thousand steps, built under the index's lock, and asked for by the UI every second."""
    index = InvocationIndex(Settings(namespace="unit"))
    topic = index.topics.invocations
    long = an_id("long")
    index._apply(topic, meta_key(long), meta(long, "h", journal_length=5).to_json())
    index._apply(topic, entry_key(long, 0), Entry(kind="sleep", due=500.0).to_json())
    for i in range(1, 5):
        got = Entry(kind="get", name=f"n{i}", done=True)
        index._apply(topic, entry_key(long, i), got.to_json())
    shown = index.describe(long, journal_limit=2)
    assert shown is not None
    assert [entry["index"] for entry in shown["journal"]] == [3, 4]
    assert shown["journal_omitted"] == 3
    # What it waits on is read from the whole journal: a timer set early, awaited late.
    assert [text.split(" (")[1] for text in shown["waiting_on"]] == [
        "entry 0) due 1970-01-01T00:08:20.000Z"
    ]
    whole = index.describe(long, journal_limit=10)
    assert whole is not None
    assert len(whole["journal"]) == 5
    assert "journal_omitted" not in whole


def test_the_index_holds_completed_and_scheduled_invocations_on_disk() -> None:
    """A day of retained outcomes (idempotent calls, workflow runs) was held in the ingress
    process as objects, about 2.4 KB each: it grew with the traffic. Those that neither
    wait nor hold a key are on disk now; every view finds them as before."""
    index = InvocationIndex(Settings(namespace="unit"))
    topic = index.topics.invocations
    done, later, running = an_id("done"), an_id("later"), an_id("running")
    for inv_id, status, at in ((done, "completed", 1.0), (later, "scheduled", 2.0),
                               (running, "running", 3.0)):  # fmt: skip
        record = meta(inv_id, "h", status)
        record.created_at = 100.0 + at
        index._apply(topic, meta_key(inv_id), record.to_json())
    assert list(index.log.metas) == [running], "completed or scheduled metas held in memory"
    assert [row["id"] for row in index.query()] == [running, later, done]
    assert [row["id"] for row in index.query(status="completed")] == [done]
    assert [row["id"] for row in index.query(limit=2)] == [running, later]
    assert [m[0] for m in index.choose(service="Svc", among=EVERY, limit=5)[0]] == [
        running, later, done
    ]  # fmt: skip
    described = index.describe(done)
    assert described is not None
    assert described["status"] == "completed"

    started = meta(later, "h", "running")  # the scheduled one falls due and runs
    index._apply(topic, meta_key(later), started.to_json())
    assert set(index.log.metas) == {running, later}
    assert index.query(status="scheduled") == []
    assert [m[0] for m in index.choose(status="running", service="Svc", among=EVERY,
                                       limit=5)[0]] == [running, later]  # fmt: skip

    index._apply(topic, meta_key(done), None)  # its retention ended
    assert index.describe(done) is None
    assert [m[0] for m in index.choose(service="Svc", among=EVERY, limit=5)[0]] == [running, later]
    index.close()


def test_a_failed_spill_makes_the_index_read_the_changelogs_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The index is a cache of the changelogs: once its spill fails (a full disk, which may
    leave a statement part-written), it forgets what it read and reads them again, after a
    pause. Swallowed as a bad record, the failure left metas in neither place, or in
    both."""
    index = InvocationIndex(Settings(namespace="unit"))
    topic = index.topics.invocations
    done, other = an_id("done"), an_id("other")
    index._apply(topic, meta_key(done), meta(done, "h", "completed").to_json())
    full = SpillFailed("admin index spill: OperationalError: database or disk is full")

    def put(*args: Any) -> None:
        raise full

    monkeypatch.setattr(index.cold, "put", put)
    with pytest.raises(SpillFailed):
        index._apply(topic, meta_key(other), meta(other, "h", "completed").to_json())

    outcomes: list[SpillFailed | None] = [full, None]
    assigned: list[int] = []

    def follow_once() -> None:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome
        index._running = False

    monkeypatch.setattr(index, "_follow_once", follow_once)
    monkeypatch.setattr(index, "_assign", lambda: assigned.append(len(index.cold)))
    paused: list[float] = []
    monkeypatch.setattr(index_module, "pause_unless", lambda _, seconds: paused.append(seconds))
    index._running, index._ends = True, {}  # as once started, and caught up
    index._follow()
    assert assigned == [0], "not read again, into an empty spill"
    assert paused == [index_module.REBUILD_PAUSE]
    assert index.describe(done) is None, "what was read before is still held"
    assert index.log.metas == {}
    index.close()


def test_a_rebuild_that_fails_is_tried_again_and_the_index_is_not_caught_up_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rebuild runs after its spill failed; one that failed in turn (Kafka not answering
    its metadata request, the spill failing again) escaped the handler of the first
    failure and ended the thread: the views stood empty for good, and said they were
    caught up. Through the pause and until the rebuild has read to the end, bulk actions
    must answer 503 (``caught_up`` false)."""
    index = InvocationIndex(Settings(namespace="unit"))
    full = SpillFailed("admin index spill: OperationalError: database or disk is full")
    rounds: list[str] = []

    def follow_once() -> None:
        rounds.append("follow")
        if len(rounds) == 1:
            raise full
        index._running = False

    attempts: list[bool] = []

    def assign() -> None:
        attempts.append(index.caught_up())
        if len(attempts) == 1:
            raise RuntimeError("KafkaException: metadata request timed out")
        if len(attempts) == 2:
            raise SpillFailed("admin index spill: OperationalError: disk I/O error")

    paused: list[bool] = []
    monkeypatch.setattr(index, "_follow_once", follow_once)
    monkeypatch.setattr(index, "_assign", assign)
    monkeypatch.setattr(index_module, "pause_unless", lambda *_: paused.append(index.caught_up()))
    monkeypatch.setattr(index_module, "time", SimpleNamespace(sleep=lambda _: None))
    index._running, index._ends = True, {}  # as once started, and caught up
    index._follow()
    assert attempts == [False, False, False], "a rebuild not tried again, or caught up"
    assert paused == [False, False], "caught up through the pause after a failed spill"
    assert rounds == ["follow", "follow"]
    assert index.caught_up()
    index.close()


def test_a_rebuild_whose_new_spill_fails_leaves_the_views_as_they_were(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rebuild forgot the journals, closed the spill, then failed to make the new one
    (the disk still full): the detail kept the old metas over an empty journal, and the
    listing queried the closed spill (a 500), for as long as the disk stayed full."""
    index = InvocationIndex(Settings(namespace="unit"))
    topic = index.topics.invocations
    running, done = an_id("running"), an_id("done")
    index._apply(
        topic, meta_key(running), meta(running, "h", "running", journal_length=1).to_json()
    )
    index._apply(topic, entry_key(running, 0), Entry(kind="get", name="n", done=True).to_json())
    index._apply(topic, meta_key(done), meta(done, "h", "completed").to_json())

    def full() -> None:
        raise SpillFailed("admin index spill: OperationalError: database or disk is full")

    monkeypatch.setattr(index_module, "IndexSpill", full)
    with pytest.raises(SpillFailed):
        index._rebuild()
    row = index.describe(running)
    assert row is not None
    assert [e["kind"] for e in row["journal"]] == ["get"], "the journal was forgotten"
    assert {m[0] for m in index.choose(service="Svc", among=EVERY, limit=5)[0]} == {running, done}
    index.close()


def test_a_cold_meta_nested_deeper_than_pydantic_parses_is_listed() -> None:
    """pydantic's JSON parser stops at 200 levels, its serializer at 255: a retained outcome
    nested between the two went to disk and could not be read back."""
    index = InvocationIndex(Settings(namespace="unit"))
    topic = index.topics.invocations
    deep: Any = 1
    for _ in range(220):
        deep = [deep]
    done = meta(an_id("deep"), "h", "completed")
    done.argument = deep
    index._apply(topic, meta_key(done.id), done.to_json())
    assert [row["id"] for row in index.query()] == [done.id]
    described = index.describe(done.id)
    assert described is not None
    assert described["argument"] == deep
    index.close()


def test_the_index_follows_on_after_an_error_of_its_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any error of a round (Kafka's, or a defect of ours) is logged, and the next round
    follows the changelogs on: raised, it ended the thread, and the views stood still."""
    index = InvocationIndex(Settings(namespace="unit"))
    rounds: list[str] = []

    def follow_once() -> None:
        rounds.append("round")
        if len(rounds) == 1:
            raise RuntimeError("a defect")
        index._running = False

    slept: list[float] = []
    monkeypatch.setattr(index, "_follow_once", follow_once)
    monkeypatch.setattr(index_module, "time", SimpleNamespace(sleep=slept.append))
    index._running, index._ends = True, {}
    index._follow()
    assert (len(rounds), slept) == (2, [1.0])
    index.close()


def test_a_meta_with_a_time_no_date_holds_is_listed_not_a_500() -> None:
    """A changelog record another producer wrote may carry any float: ``time.gmtime``
    raised on it, and every listing that held the row (the newest first: all of them) was
    a 500."""
    index = InvocationIndex(Settings(namespace="unit"))
    topic = index.topics.invocations
    odd, fine = an_id("odd"), an_id("fine")
    for inv_id, at in ((odd, 1e20), (fine, 100.0)):
        record = meta(inv_id, "h", "completed")
        record.created_at = at
        index._apply(topic, meta_key(inv_id), record.to_json())
    rows = index.query()
    assert [(row["id"], row["created_at"]) for row in rows] == [
        (odd, "1e+20"), (fine, "1970-01-01T00:01:40.000Z")
    ]  # fmt: skip
    assert index.describe(odd) is not None
    index.close()


def test_a_listing_reads_back_no_argument_or_outcome_from_disk() -> None:
    """A listing decoded every row's whole meta: a retained outcome's argument and value may
    be 900 KiB each, and the UI lists 200 rows every second, under the index's lock. The
    row is the same; the detail still has all of it."""
    index = InvocationIndex(Settings(namespace="unit"))
    topic = index.topics.invocations
    done = meta(an_id("big"), "h", "completed")
    done.argument, done.value, done.headers = "a" * 100_000, ["v"] * 1000, {"x-tenant": "blue"}
    done.idempotency_key, done.last_error = "k1", "an earlier attempt failed"
    index._apply(topic, meta_key(done.id), done.to_json())
    (listed,) = index.cold.newest(status=None, service=None, key=None, limit=5)
    assert (listed.argument, listed.value, listed.headers) == (None, None, {})
    assert index.query() == [index_module.summary(done, index.links)]
    described = index.describe(done.id)
    assert described is not None
    assert (described["argument"], described["outcome"]) == (done.argument, {"value": done.value})
    index.close()


@pytest.mark.parametrize("written", [b"1e400", b'"NaN"', b'"-Infinity"'])
def test_a_cold_meta_whose_time_is_no_number_is_passed_over(written: bytes) -> None:
    """pydantic reads ``1e400`` as inf and ``"NaN"`` as NaN. Held on disk, the listing's
    copy wrote inf as null, which failed every listing that held the row (a 500); SQLite
    refused the NaN as NULL, a spill failure the index then met at each rebuild, for good."""
    index = InvocationIndex(Settings(namespace="unit"))
    topic = index.topics.invocations
    odd, fine = an_id("odd"), an_id("fine")
    value = meta(odd, "h", "completed").to_json()
    assert b'"created_at":100.0' in value
    index._apply(
        topic, meta_key(odd), value.replace(b'"created_at":100.0', b'"created_at":' + written)
    )
    index._apply(topic, meta_key(fine), meta(fine, "h", "completed").to_json())
    index.cold.commit()
    assert [row["id"] for row in index.query()] == [fine]
    assert index.describe(odd) is None
    # Unreadable, as any meta no reader takes: what was read of the invocation before stands.
    index._apply(topic, meta_key(odd), meta(odd, "h", "running").to_json())
    index._apply(
        topic, meta_key(odd), value.replace(b'"created_at":100.0', b'"created_at":' + written)
    )
    assert [(row["id"], row["status"]) for row in index.query(status="running")] == [
        (odd, "running")
    ]  # fmt: skip
    index.close()


def test_the_tree_of_a_kept_journal_reads_what_it_shows_and_counts_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The call tree read every call and send of a completed journal from disk, to show at
    most 100 of them: a workflow that made 100,000 sends was 100,000 entries parsed under
    the index's lock each second its page was open."""
    index = InvocationIndex(Settings(namespace="unit"))
    topic = index.topics.invocations
    done, made = an_id("sender"), 300
    index._apply(topic, meta_key(done), meta(done, "h", journal_length=made).to_json())
    for n in range(made):
        sent = Entry(kind="send", target=Target(service="Svc", handler="s"),
                     callee=an_id(f"sent-{n}"), done=True)  # fmt: skip
        index._apply(topic, entry_key(done, n), sent.to_json())
    index._apply(topic, meta_key(done), meta(done, "h", "completed", journal_length=made).to_json())
    parsed = [0]
    real = Entry.from_json

    def counted(value: bytes | str) -> Entry:
        parsed[0] += 1
        return real(value)

    monkeypatch.setattr(Entry, "from_json", staticmethod(counted))
    described = index.describe(done, journal_limit=10)
    assert described is not None
    assert len(described["tree"]["callees"]) == 100
    assert described["tree"]["truncated"]
    assert parsed[0] <= 10 + 101, f"{parsed[0]} entries parsed for 10 shown and 100 nodes"
    shallow = call_tree(done, index.metas, index._journal, index.links, max_depth=0,
                        count=index._calls_made)  # fmt: skip
    assert shallow["callees"] == []
    assert index._calls_made(done) == made
    index.close()


def test_the_tree_reads_no_argument_or_value_of_the_nodes_on_disk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each completed callee of a tree was read whole from disk, up to three times, its
    argument and value included (900 KiB each, perhaps), under the index's lock, every
    second its page was open. Its failure is still shown."""
    index = InvocationIndex(Settings(namespace="unit"))
    topic = index.topics.invocations
    parent, fine, failed = an_id("parent"), an_id("fine"), an_id("failed")
    started = meta(parent, "h", "running", journal_length=2)
    index._apply(topic, meta_key(parent), started.to_json())
    for n, callee in enumerate((fine, failed)):
        index._apply(topic, entry_key(parent, n), call(callee, "c").to_json())
    for callee in (fine, failed):
        ended = meta(callee, "c", "completed", caller=parent)
        ended.argument, ended.value = "x" * 100_000, "y" * 100_000
        if callee == failed:
            ended.failure = Failure(code=409, message="sold out")
        index._apply(topic, meta_key(callee), ended.to_json())
    read_whole: list[str] = []
    whole = index.cold.get

    def get(inv_id: str) -> InvocationMeta | None:
        read_whole.append(inv_id)
        return whole(inv_id)

    monkeypatch.setattr(index.cold, "get", get)
    described = index.describe(parent)
    assert described is not None
    nodes = {node["id"]: node for node in described["tree"]["callees"]}
    assert nodes[failed]["failure"] == {"code": 409, "message": "sold out"}
    assert nodes[fine]["status"] == "completed"
    assert "failure" not in nodes[fine]
    assert read_whole == [], "a node of the tree read whole"
    cold = index.describe(fine)  # the detail of one on disk is whole
    assert cold is not None
    assert cold["argument"] == "x" * 100_000
    assert cold["outcome"] == {"value": "y" * 100_000}
    index.close()


def test_a_rebuild_follows_once_the_positions_read_before_are_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rebuild assigns the changelogs again from their start; librdkafka forgets the
    positions read before only once the fetches stop, and until then the index took them
    for having read to the ends: caught up, and empty."""
    index = InvocationIndex(Settings(namespace="unit"))
    topics = (index.topics.invocations, index.topics.state)

    class ReadBefore:
        """A consumer that read both changelogs to offset 50 before it was assigned again."""

        def __init__(self) -> None:
            self.stale = 0

        def assign(self, partitions: list[TopicPartition]) -> None:
            self.stale = 3  # asks that still get the old positions

        def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
            offset = 50 if self.stale else OFFSET_INVALID
            self.stale = max(0, self.stale - 1)
            return [TopicPartition(tp.topic, tp.partition, offset) for tp in partitions]

    listed = {name: SimpleNamespace(partitions={0: None}) for name in topics}
    monkeypatch.setattr(index_module, "listed_topics", lambda consumer, names: (listed, []))
    monkeypatch.setattr(index_module, "watermarks", lambda consumer, tp: (0, 40))
    consumer = ReadBefore()
    index._consumer = consumer  # type: ignore[assignment]
    index._assign()
    assert consumer.stale == 0, "followed while the old positions stood"
    assert not index.caught_up()
    index.close()
