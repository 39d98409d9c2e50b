"""Cold invocations (``streams.engine.invocations``): a delayed send not yet due and a
retained outcome are held as their written meta once committed, not as objects; a lookup
thaws one, and whatever then happens to it (a release, a cancel, an idempotent repeat, its
expiry, a restore) behaves as it did for an invocation held as an object."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from handlers import ObjectContext, VirtualObject, Workflow, WorkflowContext, WorkflowSharedContext
from streams.engine import invocations
from streams.engine.invocation import Invocation
from streams.engine.invocations import InvocationTable
from streams.engine.journal import entry_key, meta_key
from streams.engine.outbox import Out
from streams.engine.partition import PartitionProcessor
from streams.engine.store import ObjectKey
from streams.wire import ids
from streams.wire.records import AttachRequest, Cancel, Invoke, Kill, Start, Target
from tests.unit.harness import TOPICS, Harness, settle, until
from tests.unit.test_partition import HeldClock

tally = VirtualObject("Tally")
brief = VirtualObject("Brief", idempotency_retention=timedelta(milliseconds=1))


@tally.handler()
async def add(ctx: ObjectContext, n: int) -> int:
    total: int = (await ctx.get("n") or 0) + n
    ctx.set("n", total)
    return total


@tally.handler()
async def keep(ctx: ObjectContext, value: Any) -> Any:
    return value


@tally.handler()
async def nap(ctx: ObjectContext) -> None:
    await ctx.sleep(timedelta(hours=1))


GATE: dict[str, asyncio.Event] = {}


@brief.handler()
async def hold(ctx: ObjectContext, n: int) -> int:
    async def wait() -> int:
        try:
            await GATE["open"].wait()
        except asyncio.CancelledError:
            await GATE["unwound"].wait()  # the action takes a while to end
            raise
        return n

    return await ctx.run("wait", wait)


@brief.handler()
async def note(ctx: ObjectContext, n: int) -> int:
    await ctx.run("noted", lambda: n)
    return n


def later(h: Harness, key: str) -> tuple[str, int]:
    """A delayed send to Tally/key/add(5), due in an hour: its id and its offset."""
    inv_id = ids.new_id(key, 1)
    due = datetime.now(UTC) + timedelta(hours=1)
    target = Target(service="Tally", key=key, handler="add")
    h.send(Invoke(target=target, argument=5, invocation_id=inv_id, mode="send", due=due))
    return inv_id, h.offset - 1


def idempotent(h: Harness, service: str, handler: str, request_id: str) -> None:
    target = Target(service=service, key="k", handler=handler)
    h.send(Invoke(target=target, argument=3, idempotency_key="once", request_id=request_id))


def written(h: Harness) -> list[tuple[bytes | None, bytes | None]]:
    """The invocations changelog records of one flush: (key, value)."""
    return [(o.key, o.value) for o in h.processor.flush() if o.topic == TOPICS.invocations]


async def test_a_scheduled_invocation_is_cold_once_written_and_runs_when_released() -> None:
    h = Harness([tally])
    inv_id, seq = later(h, "a")
    table = h.processor.invocations
    assert [inv.meta.id for inv in table.live()] == [inv_id], "cold before it is written"
    assert written(h), "the scheduled invocation's meta is not written"
    assert table.live() == [], "held as an object once written"
    assert table.cold == 1
    assert len(table) == 1
    assert inv_id in table
    assert list(table) == [inv_id]

    thawed = table[inv_id]
    assert thawed.meta.status == "scheduled"
    assert thawed.meta.argument == 5
    assert table.get(inv_id) is thawed, "two lookups before a commit give two objects"
    assert written(h) == [], "a lookup alone writes nothing"
    assert table.live() == [], "a thawed invocation that nothing changed is kept"

    h.send(Start(invocation_id=inv_id, seq=seq))
    await until(lambda: inv_id not in table)
    assert h.processor.store.state[("Tally", "a")] == {"n": 5}
    assert (meta_key(inv_id), None) in written(h), "its meta is not tombstoned once it ran"
    assert table.cold == 0


async def test_a_cold_scheduled_invocation_is_cancelled_and_never_runs() -> None:
    h = Harness([tally])
    inv_id, seq = later(h, "b")
    written(h)
    h.send(Cancel(invocation_id=inv_id, request_id="cancel"))
    await settle()
    assert h.responses()["cancel"].failure is None, "the cancel was not accepted"
    assert inv_id not in h.processor.invocations
    h.send(Start(invocation_id=inv_id, seq=seq))
    await settle()
    assert ("Tally", "b") not in h.processor.store.state, "a cancelled send ran"


async def test_a_retained_outcome_is_cold_and_answers_a_repeat() -> None:
    h = Harness([tally])
    idempotent(h, "Tally", "add", "first")
    await until(lambda: "first" in h.responses())
    table = h.processor.invocations
    written(h)
    assert table.live() == [], "a retained outcome is held as an object"
    assert table.cold == 1

    idempotent(h, "Tally", "add", "again")
    await until(lambda: "again" in h.responses())
    assert h.responses()["again"].value == 3, "the repeat is not answered from the outcome"
    assert h.processor.store.state[("Tally", "k")] == {"n": 3}, "the repeat ran again"
    written(h)
    assert table.live() == [], "the outcome is still held as an object after its repeat"
    assert table.cold == 1


async def test_a_cold_outcome_expires_with_its_journal_tombstoned() -> None:
    h = Harness([brief])
    idempotent(h, "Brief", "note", "first")
    await until(lambda: "first" in h.responses())
    inv_id = h.responses()["first"].invocation_id
    records = dict(written(h))
    entries = [key for key in records if key is not None and key.startswith(b"j/")]
    assert entries, "the journal was not written"
    assert h.processor.invocations.cold == 1, "the outcome was not kept cold"
    await until(lambda: inv_id not in h.processor.invocations, seconds=5.0)
    tombstones = {key for key, value in written(h) if value is None}
    assert meta_key(inv_id) in tombstones, "the expired outcome's meta stays"
    assert {entry_key(inv_id, i) for i in range(len(entries))} <= tombstones, (
        "journal entries of the expired outcome stay in the changelog"
    )


async def test_a_restore_keeps_idle_invocations_cold_and_running_ones_live() -> None:
    h = Harness([tally])
    scheduled_id, seq = later(h, "c")
    idempotent(h, "Tally", "add", "kept")
    napping = h.call(Target(service="Tally", key="n", handler="nap"))
    await until(lambda: "kept" in h.responses())
    await until(lambda: bool(h.processor.invocations[napping].waiting))
    restored = h.hand_over()
    table = restored.invocations
    assert [inv.meta.id for inv in table.live()] == [napping], "not only the nap is live"
    assert table.cold == 2, "idle invocations restored as objects"
    assert len(table) == 3
    meta = json.loads(dict(written(h)).get(meta_key(scheduled_id)) or b"{}")
    assert meta == {}, "a restore rewrites what it read back"
    h.send(Start(invocation_id=scheduled_id, seq=seq))
    await until(lambda: scheduled_id not in table)
    assert restored.store.state[("Tally", "c")] == {"n": 5}
    assert table[napping].task is not None, "the nap does not run again after the restore"


async def killed_in_its_action(h: Harness) -> str:
    """An idempotent ``Brief/hold`` killed while its action runs (and keeps running once
    cancelled, until ``GATE["unwound"]`` is set): its id, once the kill is answered."""
    GATE.update(open=asyncio.Event(), unwound=asyncio.Event())
    idempotent(h, "Brief", "hold", "held")
    table = h.processor.invocations
    await until(lambda: any(inv.actions for inv in table.live()))
    inv_id = next(inv.meta.id for inv in table.live())
    h.send(Kill(invocation_id=inv_id, request_id="kill"))
    await until(lambda: "kill" in h.responses())
    return inv_id


async def test_a_killed_invocation_is_kept_cold_once_its_action_has_ended() -> None:
    h = Harness([brief])
    inv_id = await killed_in_its_action(h)
    table = h.processor.invocations
    assert table[inv_id].meta.status == "completed"
    written(h)
    assert table.cold == 0, "cold while its action still runs"
    GATE["unwound"].set()
    await until(lambda: not table[inv_id].actions)
    assert written(h) == [], "nothing changed"
    assert table.live() == [], "a killed outcome stays an object for its whole retention"
    assert table.cold == 1


async def test_a_killed_outcome_whose_action_never_ends_still_expires() -> None:
    """Never idle, so never kept cold: its retention ends all the same."""
    h = Harness([brief])
    inv_id = await killed_in_its_action(h)
    table = h.processor.invocations
    written(h)
    try:
        await until(lambda: inv_id not in table, seconds=5.0)
        assert meta_key(inv_id) in {key for key, value in written(h) if value is None}
        assert table.cold == 0
    finally:
        GATE["unwound"].set()


async def test_a_cold_scheduled_invocation_takes_an_attacher_and_answers_it_when_run() -> None:
    h = Harness([tally])
    inv_id, seq = later(h, "e")
    written(h)
    h.send(AttachRequest(invocation_id=inv_id, request_id="attached"))
    await settle()
    written(h)
    assert h.processor.invocations.cold == 1, "not kept cold with its attacher"
    assert "attached" not in h.responses(), "answered before it ran"
    h.send(Start(invocation_id=inv_id, seq=seq))
    await until(lambda: "attached" in h.responses())
    assert h.responses()["attached"].value == 5


async def test_a_kill_of_a_cold_outcome_is_refused_and_keeps_it() -> None:
    h = Harness([tally])
    idempotent(h, "Tally", "add", "first")
    await until(lambda: "first" in h.responses())
    inv_id = h.responses()["first"].invocation_id
    written(h)
    h.send(Kill(invocation_id=inv_id, request_id="kill"))
    await settle()
    failure = h.responses()["kill"].failure
    assert failure is not None
    assert failure.code == 409
    assert written(h) == [], "a refused kill rewrote the outcome"
    assert h.processor.invocations.cold == 1


def outcome(inv_id: str, **fields: object) -> dict[str, object]:
    """The meta of a retained outcome of Tally/k/add, as the changelog holds it."""
    target = {"service": "Tally", "key": "k", "handler": "add"}
    meta = {"id": inv_id, "target": target, "exclusive": True, "status": "completed",
            "value": 3, "journal_length": 2, "expires_at": 4e9}  # fmt: skip
    return {**meta, **fields}


def read_back(*records: tuple[bytes, dict[str, object] | None]) -> InvocationTable:
    """A table that read ``records`` of the invocations changelog, as a restore hands them."""
    table = InvocationTable(TOPICS, 0, lambda meta, entries: Invocation(meta, [], None, None))
    for key, meta in records:
        table.restore(key, None if meta is None else json.dumps(meta).encode())
    return table


def test_a_restore_keeps_an_idle_meta_as_the_bytes_it_read() -> None:
    inv_id = ids.new_id("k", 1)
    value = json.dumps(outcome(inv_id)).encode()
    table = InvocationTable(TOPICS, 0, lambda meta, entries: Invocation(meta, [], None, None))
    table.restore(meta_key(inv_id), value)
    assert table.take_restored() == [], "the outcome was restored as an object"
    assert table.cold == 1
    assert table._cold.get(inv_id) == (value, 2), "not the bytes read, or not its journal's length"
    assert table[inv_id].meta.value == 3
    assert [inv.meta.id for inv in table.expired(4e9)] == [inv_id], "its retention was lost"


def test_a_later_record_of_a_cold_meta_replaces_it() -> None:
    rewritten, forgotten, scheduled = (ids.new_id("k", n) for n in (1, 2, 3))
    table = read_back(
        (meta_key(rewritten), outcome(rewritten, status="scheduled", journal_length=0)),
        (meta_key(forgotten), outcome(forgotten)),
        (meta_key(scheduled), outcome(scheduled, status="scheduled", journal_length=0)),
        (meta_key(rewritten), outcome(rewritten, status="running", seq=7)),
        (meta_key(forgotten), None),
    )
    assert [meta.id for meta, _ in table.take_restored()] == [rewritten]
    assert rewritten not in table, "a restored object and a cold meta for one id"
    assert forgotten not in table, "a tombstoned meta stays"
    assert table.cold == 1
    assert scheduled in table, "the scheduled one was lost"


def test_a_meta_repaired_as_it_is_read_is_kept_as_its_repaired_json() -> None:
    inv_id = ids.new_id("k", 1)
    broken = outcome(inv_id, caller={"invocation_id": "inv_not-a-real-id", "entry": 0})
    table = read_back((meta_key(inv_id), broken))
    assert table[inv_id].meta.caller is None, "the malformed caller is back"


def test_an_unreadable_meta_after_a_cold_one_leaves_it() -> None:
    inv_id = ids.new_id("k", 1)
    table = read_back((meta_key(inv_id), outcome(inv_id)))
    table.restore(meta_key(inv_id), b"{not json")
    assert inv_id in table, "the outcome read before the unreadable record was lost"
    assert table[inv_id].meta.value == 3


def test_an_outcomes_entries_read_after_its_meta_are_not_kept() -> None:
    inv_id = ids.new_id("k", 1)
    entry = json.dumps({"kind": "get", "name": "n", "value": 1, "done": True}).encode()
    table = InvocationTable(TOPICS, 0, lambda meta, entries: Invocation(meta, [], None, None))
    table.restore(entry_key(inv_id, 0), entry)  # written before the meta
    table.restore(meta_key(inv_id), json.dumps(outcome(inv_id)).encode())
    table.restore(entry_key(inv_id, 1), entry)  # written after it, in the same flush
    assert table._restored.entries == {}, "the outcome's journal is held through the restore"
    held = table._cold.get(inv_id)
    assert held is not None, "the outcome is not kept cold"
    assert held[1] == 2, "its entries, to tombstone, are not counted"


def test_outcomes_past_their_time_are_thawed_a_bounded_batch_at_a_time() -> None:
    first, second = ids.new_id("k", 1), ids.new_id("k", 2)
    table = read_back((meta_key(first), outcome(first)), (meta_key(second), outcome(second)))
    assert len(list(table.expired(4e9, limit=1))) == 1, "more thawed than the limit"
    assert table.cold == 1


def test_a_sweep_holds_one_outcome_read_back_at_a_time_and_stops_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sweep read back every outcome of its batch (up to 10,000, each with an argument
    of up to 900 KiB) before it forgot any, on the event loop, with nothing to bound it."""
    made = [ids.new_id("k", n) for n in range(5)]
    table = read_back(*((meta_key(inv_id), outcome(inv_id)) for inv_id in made))
    held: list[int] = []

    def forget(inv: Invocation) -> None:
        held.append(len(table._thawed))  # read back and not forgotten, this one among them
        table.forget(inv)

    table.sweep(4e9, forget)
    assert held == [1, 1, 1, 1, 1], "outcomes read back before the last was forgotten"
    assert len(table) == 0
    later = [ids.new_id("k", n) for n in range(5, 9)]
    table = read_back(*((meta_key(inv_id), outcome(inv_id)) for inv_id in later))
    clock = iter([0.0, 0.01, invocations.SWEEP_SECONDS + 0.02, 1.0, 1.0, 1.0])
    monkeypatch.setattr(invocations, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    table.sweep(4e9, table.forget)
    assert len(table) == 2, "not stopped once its time was up"


def test_an_outcome_read_twice_expires_once() -> None:
    inv_id = ids.new_id("k", 1)
    table = read_back((meta_key(inv_id), outcome(inv_id)), (meta_key(inv_id), outcome(inv_id)))
    assert [inv.meta.id for inv in table.expired(4e9)] == [inv_id]


async def napping_with_a_line(h: Harness, key: str) -> tuple[str, list[str], list[Out]]:
    """``Tally/key/nap`` holding the key, and ``add`` 1, 2 and 4 queued behind it, all
    written: the nap's id, the queued ids in arrival order, and what was flushed."""
    holder = h.call(Target(service="Tally", key=key, handler="nap"), None, "nap")
    await until(lambda: bool(h.processor.invocations[holder].waiting))
    target = Target(service="Tally", key=key, handler="add")
    queued = [h.call(target, n, f"add{n}") for n in (1, 2, 4)]
    await settle()
    flushed = h.processor.flush()
    assert any(o.topic == TOPICS.invocations for o in flushed), "nothing was written"
    return holder, queued, flushed


async def test_calls_queued_behind_a_held_key_are_cold_and_run_in_order_when_it_passes() -> None:
    """A key held for long (a sleep, an awakeable) while calls keep coming held every
    queued call as an object: memory grew without bound."""
    h = Harness([tally])
    holder, queued, _ = await napping_with_a_line(h, "q")
    table = h.processor.invocations
    assert [inv.meta.id for inv in table.live()] == [holder], "queued calls held as objects"
    assert table.cold == 3
    assert h.processor.locks.queued(ObjectKey("Tally", "q")) == queued
    assert table[queued[1]].meta.status == "pending"
    assert written(h) == [], "a lookup alone writes something"
    assert table.cold == 3, "a queued call looked up stays an object"

    h.send(Cancel(invocation_id=holder, request_id="cancel"))
    await until(lambda: "add4" in h.responses())
    assert [h.responses()[f"add{n}"].value for n in (1, 2, 4)] == [1, 3, 7], "out of order"
    assert h.processor.store.state[("Tally", "q")] == {"n": 7}


async def test_a_restore_keeps_queued_calls_cold_in_their_line() -> None:
    h = Harness([tally])
    holder, queued, flushed = await napping_with_a_line(h, "r")
    # The first call's meta written again, after the others': the changelog's order is no
    # longer the line's.
    h.send(AttachRequest(invocation_id=queued[0], request_id="attach-1", wait=True))
    await settle()
    restored = h.hand_over(flushed)
    table = restored.invocations
    assert [inv.meta.id for inv in table.live()] == [holder], "queued calls restored as objects"
    assert table.cold == 3
    line = restored.locks.queued(ObjectKey("Tally", "r"))
    assert line == queued, "the line is not in arrival order"
    h.send(Cancel(invocation_id=holder, request_id="cancel"))
    await until(lambda: "add4" in h.responses())
    assert [h.responses()[f"add{n}"].value for n in (1, 2, 4)] == [1, 3, 7], "out of order"
    assert h.responses()["attach-1"].value == 1


async def test_a_cold_queued_call_cancelled_or_attached_to_keeps_its_place() -> None:
    h = Harness([tally])
    holder, queued, _ = await napping_with_a_line(h, "s")
    h.send(Cancel(invocation_id=queued[1], request_id="cancel-2"))
    h.send(AttachRequest(invocation_id=queued[2], request_id="attach-4", wait=True))
    await until(lambda: "cancel-2" in h.responses())
    assert h.responses()["add2"].failure.code == 409, "the cancelled call's caller not told"
    written(h)
    table = h.processor.invocations
    assert queued[1] not in table, "a cancelled call without retention is kept"
    assert table.cold == 2, "an attached-to call is cold no more"
    h.send(Cancel(invocation_id=holder, request_id="cancel"))
    await until(lambda: "attach-4" in h.responses())
    assert h.responses()["attach-4"].value == 5, "the attach is not answered"
    assert [h.responses()[f"add{n}"].value for n in (1, 4)] == [1, 5]


def delayed_add(h: Harness, key: str, due: float, inv_id: str | None = None) -> tuple[str, int]:
    """A delayed send to Tally/key/add(8) due at ``due``: its id and its offset."""
    inv_id = inv_id or ids.new_id(key, 1)
    when = datetime.fromtimestamp(due, UTC)
    target = Target(service="Tally", key=key, handler="add")
    h.send(Invoke(target=target, argument=8, invocation_id=inv_id, mode="send", due=when))
    return inv_id, h.offset - 1


async def started_early_behind(h: Harness, clock: HeldClock, inv_id: str, seq: int) -> None:
    """Release ``inv_id``'s Start 0.5 s early (it is written while held), then let it fall
    due: it queues behind the holder of Tally/t."""
    h.send(Start(invocation_id=inv_id, seq=seq))
    await settle()
    assert h.processor.invocations[inv_id].meta.status == "pending"
    written(h)
    assert inv_id in [inv.meta.id for inv in h.processor.invocations.live()], (
        "kept cold while its Start is held: nothing would queue it"
    )
    clock.now += 0.6
    await until(lambda: inv_id in h.processor.locks.queued(ObjectKey("Tally", "t")))


async def test_a_delayed_send_released_onto_a_held_key_is_cold_once_queued() -> None:
    """Written as pending while its Start was held, then queued without a change: it was
    held as an object for as long as the key was."""
    clock = HeldClock()
    h = Harness([tally], clock=clock)
    holder, _, _ = await napping_with_a_line(h, "t")
    inv_id, seq = delayed_add(h, "t", clock.now + 0.5)
    await started_early_behind(h, clock, inv_id, seq)
    written(h)
    assert inv_id not in [inv.meta.id for inv in h.processor.invocations.live()]
    h.send(Cancel(invocation_id=holder, request_id="cancel"))
    await until(lambda: inv_id not in h.processor.invocations)
    assert h.processor.store.state[("Tally", "t")] == {"n": 15}


async def test_an_id_made_again_while_its_old_place_is_in_line_is_not_taken_for_it() -> None:
    """A queued call cancelled (and forgotten) leaves its place in line until the key
    passes it; a delayed send made with the same id, its Start held, is not in line."""
    clock = HeldClock()
    h = Harness([tally], clock=clock)
    holder, queued, _ = await napping_with_a_line(h, "t")
    h.send(Cancel(invocation_id=queued[0], request_id="cancel-1"))
    await until(lambda: queued[0] not in h.processor.invocations)
    _, seq = delayed_add(h, "t", clock.now + 0.5, inv_id=queued[0])
    await started_early_behind(h, clock, queued[0], seq)
    h.send(Cancel(invocation_id=holder, request_id="cancel"))
    await until(lambda: queued[0] not in h.processor.invocations)
    assert h.processor.store.state[("Tally", "t")] == {"n": 14}, "the one made again never ran"


def nested(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


async def test_a_cold_call_nested_deeper_than_pydantic_parses_still_runs() -> None:
    """pydantic's JSON parser stops at 200 levels, its serializer at 255: a queued call
    whose argument is nested between the two was kept cold and could not be thawed when
    the key passed to it."""
    h = Harness([tally])
    holder = h.call(Target(service="Tally", key="deep", handler="nap"), None, "nap")
    await until(lambda: bool(h.processor.invocations[holder].waiting))
    deep = nested(220)
    queued = h.call(Target(service="Tally", key="deep", handler="keep"), deep, "deep")
    h.call(Target(service="Tally", key="deep", handler="add"), 1, "after")
    await settle()
    written(h)
    assert queued not in [inv.meta.id for inv in h.processor.invocations.live()]
    h.send(Cancel(invocation_id=holder, request_id="cancel"))
    await until(lambda: "after" in h.responses() and "deep" in h.responses())
    assert h.responses()["deep"].value == deep


fleeting = VirtualObject("Fleeting", idempotency_retention=timedelta(milliseconds=50))


@fleeting.handler()
async def count(ctx: ObjectContext) -> int:
    total: int = (await ctx.get("n") or 0) + 1
    ctx.set("n", total)
    return total


async def outlived(h: Harness, request_id: str) -> str:
    """An idempotent ``Fleeting/count`` that completed and whose retention has passed:
    its id."""
    target = Target(service="Fleeting", key="k", handler="count")
    h.send(Invoke(target=target, argument=None, idempotency_key="once", request_id=request_id))
    await until(lambda: request_id in h.responses())
    inv_id = h.responses()[request_id].invocation_id
    expires = h.processor.invocations[inv_id].meta.expires_at
    assert expires is not None, "the outcome is not retained"
    await until(lambda: time.time() >= expires, seconds=2.0)
    return inv_id


@pytest.fixture
def no_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    """The partition forgets outcomes past their retention each second: without that
    sweep, what reads one in between is seen alone."""
    monkeypatch.setattr(PartitionProcessor, "_sweep", lambda self: None)


@pytest.mark.usefixtures("no_sweep")
async def test_an_idempotent_repeat_after_the_retention_runs_again() -> None:
    h = Harness([fleeting])
    await outlived(h, "first")
    target = Target(service="Fleeting", key="k", handler="count")
    h.send(Invoke(target=target, argument=None, idempotency_key="once", request_id="again"))
    await until(lambda: "again" in h.responses())
    assert h.responses()["again"].value == 2, "answered from an outcome past its retention"
    assert h.processor.store.state[("Fleeting", "k")] == {"n": 2}


@pytest.mark.usefixtures("no_sweep")
async def test_an_outcome_past_its_retention_is_unknown_to_attach_and_cancel() -> None:
    h = Harness([fleeting])
    inv_id = await outlived(h, "first")
    h.send(AttachRequest(request_id="attach", invocation_id=inv_id, wait=True))
    h.send(Cancel(invocation_id=inv_id, request_id="cancel"))
    await until(lambda: {"attach", "cancel"} <= h.responses().keys())
    for request_id in ("attach", "cancel"):
        failure = h.responses()[request_id].failure
        assert failure is not None, f"{request_id} answered from an outcome past its retention"
        assert failure.code == 404, f"{request_id}: {failure}"


def test_a_sweep_stopped_for_its_time_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """The partition looks again ``SWEEP_AGAIN`` later, not a second: a backlog is forgotten
    in slices with the partition's work between, not at 50 ms a second."""
    made = [ids.new_id("k", n) for n in range(3)]
    table = read_back(*((meta_key(inv_id), outcome(inv_id)) for inv_id in made))
    clock = iter([0.0, invocations.SWEEP_SECONDS + 0.01, 1.0, 1.0])
    monkeypatch.setattr(invocations, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    assert table.sweep(4e9, table.forget) is True
    monkeypatch.setattr(invocations, "time", time)
    assert table.sweep(4e9, table.forget) is False
    assert len(table) == 0


brief_flow = Workflow("BriefFlow", idempotency_retention=timedelta(milliseconds=50))


@brief_flow.main()
async def brief_run(ctx: WorkflowContext, note: str) -> str:
    ctx.set("note", note)
    await ctx.promise("go").resolve(note)
    return note


@brief_flow.handler("look")
async def brief_look(ctx: WorkflowSharedContext) -> list[Any]:
    return [await ctx.get("note"), await ctx.promise("go").peek()]


@brief_flow.handler("signal")
async def brief_signal(ctx: WorkflowSharedContext, value: str) -> None:
    await ctx.promise("go").resolve(value)


@pytest.mark.usefixtures("no_sweep")
@pytest.mark.parametrize("cold", [False, True])
async def test_a_shared_handler_after_the_runs_retention_meets_none_of_it(cold: bool) -> None:
    """Until the sweep came (a second, longer after an outage), a workflow's shared
    handlers still read the state of a run past its retention, and a signal to its promise
    was refused as resolved already (409) or stored only to be dropped with the run; as
    README says, a signal after the run's retention is kept for the next run."""
    h = Harness([brief_flow])
    run = Target(service="BriefFlow", key="w", handler="run")
    h.send(Invoke(target=run, argument="first", request_id="run"))
    await until(lambda: "run" in h.responses())
    run_id = h.responses()["run"].invocation_id
    expires = h.processor.invocations[run_id].meta.expires_at
    assert expires is not None, "the run's outcome is not retained"
    if cold:  # written, as a commit would: kept on disk, its expiry asked there
        h.processor.flush()
        table = h.processor.invocations
        assert not table.outlived(run_id, expires - 1)
        assert table.outlived(run_id, expires)
        assert run_id not in {inv.meta.id for inv in table.live()}, "read back to be asked"
    await until(lambda: time.time() >= expires, seconds=2.0)
    signal = Target(service="BriefFlow", key="w", handler="signal")
    h.send(Invoke(target=signal, argument="second", request_id="signal"))
    await until(lambda: "signal" in h.responses())
    assert h.responses()["signal"].failure is None, h.responses()["signal"].failure
    look = Target(service="BriefFlow", key="w", handler="look")
    h.send(Invoke(target=look, argument=None, request_id="look"))
    await until(lambda: "look" in h.responses())
    assert h.responses()["look"].value == [None, "second"], "the old run's state or promise"
