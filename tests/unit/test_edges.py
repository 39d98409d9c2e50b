"""The partition processor at its edges: ids scheduled twice, replays after a refused
argument, cancels that meet a lost select branch, effects that outlive a timer, promise
waiters of finished runs, and changelog order when an id is forgotten and made again."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from handlers import (
    Context,
    ObjectContext,
    ObjectSharedContext,
    Service,
    TerminalError,
    VirtualObject,
    Workflow,
    WorkflowContext,
    WorkflowSharedContext,
    select,
)
from streams.engine import context as context_module
from streams.engine.context import MAX_STATE_RECORD
from streams.engine.journal import meta_key
from streams.engine.outbox import Out
from streams.engine.values import due_after
from streams.wire import ids
from streams.wire.records import (
    LAST_DUE,
    MAX_VALUE_BYTES,
    Caller,
    Cancel,
    Completion,
    Delayed,
    Failure,
    Invoke,
    Kill,
    Purge,
    Start,
    Target,
)
from tests.unit.harness import TOPICS, Harness, settle, until

helper = Service("Helper")


@helper.handler()
async def one(ctx: Context) -> int:
    return 1


edge = VirtualObject("Edge", inactivity_timeout=timedelta(milliseconds=20))
GATE: dict[str, asyncio.Event] = {}


steady = VirtualObject("Steady", inactivity_timeout=timedelta(milliseconds=300))
STARTS = {"two_waits": 0}


@steady.handler()
async def two_waits(ctx: ObjectContext) -> str:
    """Two waits in a row, each shorter than the inactivity timeout, together longer."""
    STARTS["two_waits"] += 1
    await ctx.sleep(timedelta(milliseconds=200))
    await ctx.sleep(timedelta(milliseconds=200))
    return "done"


@edge.handler()
async def put(ctx: ObjectContext, n: int) -> int:
    value: int = (await ctx.get("n") or 0) + n
    ctx.set("n", value)
    return value


@edge.handler()
async def refused_then_call(ctx: ObjectContext) -> list[object]:
    """An argument that is not JSON is refused at the call site; the handler goes on."""
    try:
        await ctx.service(one).request(object())
    except TerminalError as error:
        refused = error.status_code
    answer: int = await ctx.service(one).request()
    return [refused, answer]


@edge.handler()
async def too_late(ctx: ObjectContext) -> int:
    try:
        ctx.object_send(put, "x").send(1, delay=timedelta(days=4_000_000))
    except TerminalError as error:
        return error.status_code
    return 0


@edge.handler()
async def lose_then_sleep(ctx: ObjectContext) -> str:
    """A call loses a select, the handler works a while, then sleeps (and compensates)."""
    await select(reply=ctx.service(one).request(), timeout=ctx.sleep(timedelta(0)))
    await ctx.run("work", GATE.setdefault(ctx.key, asyncio.Event()).wait)
    try:
        await ctx.sleep(timedelta(hours=1))
    except TerminalError as error:
        ctx.set("compensated", error.status_code)
        raise
    return "slept"


@edge.handler()
async def conflict_then_sleep(ctx: ObjectContext) -> str:
    """A call made, awaited after some work, failing with a 409 of the callee's own, which
    the handler takes as a business outcome; then a sleep (which compensates)."""
    call = ctx.service(one).request()
    await ctx.run("work", GATE.setdefault(ctx.key, asyncio.Event()).wait)
    try:
        await call
    except TerminalError as error:
        ctx.set("conflict", error.message)
    try:
        await ctx.sleep(timedelta(hours=1))
    except TerminalError as error:
        ctx.set("compensated", error.status_code)
        raise
    return "slept"


@edge.handler()
async def cancelled_child_then_sleep(ctx: ObjectContext) -> str:
    """A call whose callee was cancelled (by someone else, before this one's cancel): the
    handler takes its 409 and goes on to a long sleep (which compensates)."""
    try:
        await ctx.service(one).request()
    except TerminalError as error:
        ctx.set("child", error.message)
    try:
        await ctx.sleep(timedelta(hours=1))
    except TerminalError as error:
        ctx.set("compensated", error.status_code)
        raise
    return "slept"


@edge.handler()
async def effect_or_timeout(ctx: ObjectContext) -> str:
    """An effect that outlives the service's inactivity timeout, raced with a timer."""

    async def slow() -> str:
        await GATE.setdefault(ctx.key, asyncio.Event()).wait()
        return "done"

    name, _ = await select(effect=ctx.run("slow", slow), timeout=ctx.sleep(timedelta(hours=1)))
    return name


flow = Workflow("Flow")


@flow.main()
async def run(ctx: WorkflowContext, wait: str) -> str:
    if wait == "promise":
        try:
            value: str = await ctx.promise("p").value()
        except TerminalError as error:
            ctx.set("aborted", error.status_code)
            raise
        return value
    await ctx.sleep(timedelta(hours=1))
    return "slept an hour"


@flow.handler()
async def resolve(ctx: WorkflowSharedContext, value: str) -> None:
    await ctx.promise("p").resolve(value)


resolved_once: list[str] = []


@flow.handler()
async def resolve_wide(ctx: WorkflowSharedContext, size: int) -> str:
    """Resolves a promise whose escaped record key makes it too large (413), goes on, and
    fails once after that: replayed."""
    try:
        await ctx.promise(ctx.key).resolve("x" * size)
    except TerminalError as error:
        refused = error.status_code
    return await go_on_and_fail_once(ctx, refused, resolved_once)


def harness() -> Harness:
    return Harness([helper, edge, flow])


def later(hours: int) -> datetime:
    return datetime.now(UTC) + timedelta(hours=hours)


async def test_a_start_left_by_a_cancelled_schedule_does_not_run_the_next_one() -> None:
    h = harness()
    target = Target(service="Edge", key="s", handler="put")
    inv_id = ids.idempotent_id("Edge", "s", "put", "k")
    h.send(Invoke(target=target, argument=1, mode="send", idempotency_key="k", due=later(1)))
    first_seq = h.offset - 1
    h.send(Cancel(invocation_id=inv_id))
    h.send(Purge(invocation_id=inv_id))
    await settle()
    assert inv_id not in h.processor.invocations
    h.send(Invoke(target=target, argument=5, mode="send", idempotency_key="k", due=later(2)))
    second_seq = h.offset - 1
    h.send(Start(invocation_id=inv_id, seq=first_seq))  # the cancelled one's, due first
    await settle()
    assert h.processor.invocations[inv_id].meta.status == "scheduled"
    h.send(Start(invocation_id=inv_id, seq=second_seq))
    await until(lambda: h.processor.store.state.get(("Edge", "s")) == {"n": 5})


async def test_a_refused_argument_leaves_the_journal_as_a_replay_sees_it() -> None:
    h = harness()
    inv_id = h.call(Target(service="Edge", key="r", handler="refused_then_call"),
                    request_id="r")  # fmt: skip
    await settle()
    (call,) = h.invokes()
    inv = h.processor.invocations[inv_id]
    assert [e.kind for e in inv.journal] == ["call"], "the refused call journaled nothing"
    restored = h.hand_over()  # replays: the refused call is refused again, at the same place
    await settle()
    assert h.invokes() == [], "the replay sent nothing again"
    h.send(Completion(caller=Caller(invocation_id=inv_id, entry=0),
                      invocation_id=call["invocation_id"], value=1))  # fmt: skip
    await until(lambda: "r" in h.responses())
    assert h.responses()["r"].value == [400, 1]
    assert inv_id not in restored.invocations


async def test_a_delay_past_the_year_9999_is_a_400_at_the_call_site() -> None:
    h = harness()
    h.call(Target(service="Edge", key="t", handler="too_late"), request_id="t")
    await until(lambda: "t" in h.responses())
    assert h.responses()["t"].value == 400
    assert h.invokes() == []


@pytest.mark.parametrize("after", [1e-4, 0.5])
def test_a_due_time_past_the_last_allowed_is_a_400(after: float) -> None:
    with pytest.raises(TerminalError) as refused:
        due_after(timedelta(0), "a delay", now=LAST_DUE.timestamp() + after)
    assert refused.value.status_code == 400


@pytest.mark.parametrize("before", [0.0, 1e-6, 1e-5, 0.5, 1.0, 3600.0])
def test_a_due_time_allowed_is_one_a_record_carries(before: float) -> None:
    """``LAST_DUE`` was a microsecond short of a whole second: as a float, a due time in
    its last microseconds rounded up past it, passed the checks, then failed the record's
    validation (the ingress's 500; from a Kafka-ingress record, an invocation left
    scheduled for good, its ``Delayed`` never written)."""
    due = due_after(timedelta(0), "a delay", now=LAST_DUE.timestamp() - before)
    when = datetime.fromtimestamp(due, UTC)
    assert when <= LAST_DUE
    Delayed(due=when, start=Start(invocation_id=ids.new_id("k", 4), seq=0))  # (validates)
    for late in (LAST_DUE, LAST_DUE - timedelta(microseconds=1)):  # as a record may carry
        Delayed(due=datetime.fromtimestamp(late.timestamp(), UTC), start=Start(
            invocation_id=ids.new_id("k", 4), seq=0))  # fmt: skip


async def test_a_cancel_is_not_used_up_by_a_call_that_lost_a_select() -> None:
    h = harness()
    inv_id = h.call(Target(service="Edge", key="c", handler="lose_then_sleep"), request_id="c")
    await until(lambda: any(e.kind == "run" for e in h.processor.invocations[inv_id].journal))
    (call,) = h.invokes()
    h.send(Cancel(invocation_id=inv_id))  # the handler is in its ctx.run: nothing to fail yet
    # The losing call's callee answers the cancel that went to it with 409.
    h.send(Completion(caller=Caller(invocation_id=inv_id, entry=0),
                      invocation_id=call["invocation_id"],
                      failure=Failure(code=409, message="cancelled")))  # fmt: skip
    await settle()
    GATE["c"].set()
    await until(lambda: "c" in h.responses())
    assert h.responses()["c"].failure.code == 409, "the sleep after the work met the cancel"
    assert h.processor.store.state[("Edge", "c")] == {"compensated": 409}


@pytest.mark.parametrize("callee_done", ["before the cancel", "after the cancel"])
async def test_a_callees_own_409_does_not_use_up_the_callers_cancel(callee_done: str) -> None:
    """Any 409 of a call counted as the caller's cancel coming back through it: a callee's
    own ("conflict": a business rule, a workflow that already ran), failing the call before
    the caller was cancelled and awaited after, or arriving while the cancel sent to the
    callee was on its way. The cancel was used up; the handler took the conflict as such,
    went on, and its sleep waited the hour. Now only a 409 "cancelled" delivers it."""
    h = harness()
    key = callee_done[:6]
    inv_id = h.call(Target(service="Edge", key=key, handler="conflict_then_sleep"), request_id=key)
    await until(lambda: any(e.kind == "run" for e in h.processor.invocations[inv_id].journal))
    (call,) = h.invokes()
    conflict = Completion(caller=Caller(invocation_id=inv_id, entry=0),
                          invocation_id=call["invocation_id"],
                          failure=Failure(code=409, message="conflict"))  # fmt: skip
    if callee_done == "before the cancel":
        h.send(conflict)
        await settle()
        h.send(Cancel(invocation_id=inv_id))  # the handler is in its ctx.run
        await settle()
        GATE[key].set()
    else:
        GATE[key].set()
        await until(lambda: 0 in h.processor.invocations[inv_id].waiting)
        h.send(Cancel(invocation_id=inv_id))  # goes on to the callee, which ends first
        assert [r["invocation_id"] for r in h.records("cancel")] == [call["invocation_id"]]
        h.send(conflict)
    await until(lambda: key in h.responses(), 2.0)  # else: the sleep met no cancel
    failure = h.responses()[key].failure
    assert failure is not None
    assert (failure.code, failure.message) == (409, "cancelled")
    assert h.processor.store.state[("Edge", key)] == {"conflict": "conflict", "compensated": 409}


async def test_a_second_cancel_while_one_is_pending_is_the_same_cancel() -> None:
    """The calls open at the first cancel carry it back; a second cancel before it was
    delivered forgot them: the handler met its call's 409 cancelled, and then the same
    cancel again at its next wait."""
    h = harness()
    inv_id = h.call(Target(service="Edge", key="t", handler="conflict_then_sleep"), request_id="t")
    await until(lambda: any(e.kind == "run" for e in h.processor.invocations[inv_id].journal))
    (call,) = h.invokes()
    h.send(Cancel(invocation_id=inv_id))  # goes on to the callee; the handler is in its run
    h.send(Completion(caller=Caller(invocation_id=inv_id, entry=0),
                      invocation_id=call["invocation_id"],
                      failure=Failure(code=409, message="cancelled")))  # fmt: skip
    h.send(Cancel(invocation_id=inv_id))  # again, before the handler met the first
    GATE["t"].set()
    await until(lambda: h.processor.store.state.get(("Edge", "t"), {}).get("conflict"))
    await until(lambda: any(e.kind == "sleep" for e in h.processor.invocations[inv_id].journal))
    await settle()
    assert "t" not in h.responses(), "the handler met the same cancel twice"
    assert h.processor.store.state[("Edge", "t")] == {"conflict": "cancelled"}


async def test_a_second_cancel_after_a_restore_is_still_the_same_cancel() -> None:
    """A cancel asked for twice, with the partition moved to a new owner in between: the
    restore keeps that a cancel was asked for, not which calls were open at it. The
    callee's 409 "cancelled" is that cancel coming back, once: the handler takes it at its
    call, and its sleep after that is not cancelled a second time."""
    h = harness()
    key = "moved"
    target = Target(service="Edge", key=key, handler="cancelled_child_then_sleep")
    inv_id = h.call(target, request_id=key)
    await until(lambda: len(h.invokes()) == 1)
    (call,) = h.invokes()
    h.send(Cancel(invocation_id=inv_id))  # goes on to the callee; the handler awaits it
    await settle()
    restored = h.hand_over()
    assert restored.invocations[inv_id].meta.cancel_requested
    # Before its replay reaches the call: the call's 409 is then met by the replay, which
    # must take it for the cancel coming back though the restore knows no open calls.
    h.send(Cancel(invocation_id=inv_id))  # again, on the new owner: on to the callee again
    assert [r["invocation_id"] for r in h.records("cancel")] == [call["invocation_id"]]
    h.send(Completion(caller=Caller(invocation_id=inv_id, entry=0),
                      invocation_id=call["invocation_id"],
                      failure=Failure(code=409, message="cancelled")))  # fmt: skip
    assert 0 not in restored.invocations[inv_id].waiting

    def sleeps_or_ends() -> bool:
        if key in h.responses():
            return True
        return any(e.kind == "sleep" for e in restored.invocations[inv_id].journal)

    await until(sleeps_or_ends)
    await settle()
    assert key not in h.responses(), "the handler met the same cancel twice"
    assert restored.store.state[("Edge", key)] == {"child": "cancelled"}
    assert not restored.invocations[inv_id].meta.cancel_requested


async def test_a_replay_does_not_use_a_cancel_up_at_a_call_cancelled_before_it() -> None:
    """A handler met its callee's 409 "cancelled" (the callee was cancelled on its own), went
    on and suspended in a sleep. Its own cancel then runs it again, and the replay met that
    old 409 first: it took it for the cancel coming back through the call and used the
    cancel up, so the sleep it replayed into waited the hour."""
    h = harness()
    inv_id = h.call(Target(service="Edge", key="r", handler="cancelled_child_then_sleep"),
                    request_id="r")  # fmt: skip
    await until(lambda: len(h.invokes()) == 1)
    (call,) = h.invokes()
    h.send(Completion(caller=Caller(invocation_id=inv_id, entry=0),
                      invocation_id=call["invocation_id"],
                      failure=Failure(code=409, message="cancelled")))  # fmt: skip
    await until(lambda: h.processor.invocations[inv_id].meta.status == "suspended")
    h.send(Cancel(invocation_id=inv_id))
    await until(lambda: "r" in h.responses(), 2.0)  # else: the replayed sleep met no cancel
    failure = h.responses()["r"].failure
    assert failure is not None
    assert (failure.code, failure.message) == (409, "cancelled")
    assert h.processor.store.state[("Edge", "r")] == {"child": "cancelled", "compensated": 409}


async def test_an_effect_in_flight_keeps_its_invocation_from_suspending() -> None:
    h = harness()
    h.call(Target(service="Edge", key="e", handler="effect_or_timeout"), request_id="e")
    await asyncio.sleep(0.1)  # five inactivity timeouts pass while the effect runs
    GATE.setdefault("e", asyncio.Event()).set()
    await until(lambda: "e" in h.responses())
    assert h.responses()["e"].value == "effect"


async def test_finished_runs_leave_no_promise_waiters_behind() -> None:
    h = harness()
    run_id = ids.workflow_run_id("Flow", "f")
    target = Target(service="Flow", key="f", handler="run")
    for end in (Cancel, Kill):
        h.call(target, "promise", request_id=end.__name__)
        await until(lambda: bool(h.processor.promises.waiters))
        h.send(end(invocation_id=run_id))
        await until(lambda e=end.__name__: e in h.responses())
        assert h.processor.promises.waiters == {}, end.__name__
        h.send(Purge(invocation_id=run_id))
    # A new run with the same id sleeps at the entry where the old one waited: resolving
    # the old promise must not end its sleep.
    h.call(target, "sleep", request_id="sleeper")
    await until(lambda: run_id in h.processor.invocations)
    h.call(Target(service="Flow", key="f", handler="resolve"), "late", request_id="resolve")
    await until(lambda: "resolve" in h.responses())
    await settle()
    assert "sleeper" not in h.responses()


async def test_an_id_forgotten_and_made_again_keeps_its_new_changelog_records() -> None:
    h = harness()
    target = Target(service="Edge", key="p", handler="put")
    inv_id = ids.idempotent_id("Edge", "p", "put", "again")
    h.send(Invoke(target=target, argument=1, mode="send", idempotency_key="again"))
    await until(lambda: h.processor.invocations[inv_id].meta.status == "completed")
    h.processor.flush()
    h.send(Purge(invocation_id=inv_id))
    h.send(Invoke(target=target, argument=2, mode="send", idempotency_key="again",
                  due=later(1)))  # fmt: skip
    metas = [o for o in h.processor.flush() if o.topic == TOPICS.invocations
             and o.key == meta_key(inv_id)]  # fmt: skip
    assert [o.value is None for o in metas] == [True, False], "tombstone, then the new meta"


async def test_invocation_changelog_keys_kourier_did_not_write_are_passed_over() -> None:
    """``j/x``, a position that is no number, a key that is not UTF-8: each raised out of
    the restore, which ended every worker that took the partition over, one after another."""
    h = harness()
    entry = b'{"kind": "set", "name": "n", "done": true}'
    strange = [Out(TOPICS.invocations, 0, key, entry) for key in
               (b"j/x", b"j/" + ids.new_id("s", 1).encode() + b"/one", b"j/\xff\xfe/1",
                b"\xff\xfe", b"j//3", b"j/inv/\xd9\xa3", b"j/inv/" + b"9" * 5000)]  # fmt: skip
    h.hand_over(earlier=strange)
    h.call(Target(service="Edge", key="s", handler="put"), 1, request_id="after")
    await until(lambda: "after" in h.responses())
    assert h.responses()["after"].value == 1


async def test_a_retained_outcome_keeps_its_meta_not_its_journal() -> None:
    h = harness()
    target = Target(service="Edge", key="m", handler="put")
    inv_id = ids.idempotent_id("Edge", "m", "put", "kept")
    h.send(Invoke(target=target, argument=1, mode="send", idempotency_key="kept"))
    await until(lambda: h.processor.invocations[inv_id].meta.status == "completed")
    inv = h.processor.invocations[inv_id]
    assert len(inv.journal) == 2, "get and set, until they are written"
    restored = h.hand_over()  # flushes the changelog, then restores a new owner from it
    assert inv.journal == [], "written: the old owner dropped it"
    assert restored.invocations[inv_id].journal == []
    assert restored.invocations[inv_id].meta.status == "completed"
    h.send(Purge(invocation_id=inv_id))
    gone = [o for o in restored.flush() if o.topic == TOPICS.invocations]
    assert [o.value for o in gone] == [None, None, None], "tombstones for meta and entries"


@edge.handler()
async def keep(ctx: ObjectContext, value: object) -> str:
    ctx.set("v", value)
    return "kept"


@edge.handler()
async def shout(ctx: ObjectContext, kind: str) -> str:
    if kind == "terminal":
        raise TerminalError("e" * 2_000_000, 418)
    raise RuntimeError("r" * 2_000_000)


@helper.handler()
async def large(ctx: Context, size: int) -> str:
    return "x" * size


async def test_values_are_measured_as_they_are_written() -> None:
    h = harness()
    for key, value in (("cjk", "漢" * 300_000), ("list", [0] * 400_000)):
        h.call(Target(service="Edge", key=key, handler="keep"), value, request_id=key)
        await until(lambda k=key: k in h.responses())
        assert h.responses()[key].value == "kept"
        (record,) = [o for o in h.processor.flush() if o.topic == TOPICS.state]
        assert record.value is not None
        assert len(record.value) <= MAX_VALUE_BYTES, "written as compact UTF-8, as measured"


@edge.handler()
async def keep_as(ctx: ObjectContext, spec: dict[str, Any]) -> str:
    ctx.set(spec["name"], "x" * spec["size"])
    return "kept"


async def test_a_state_record_whose_escaped_key_makes_it_too_large_is_a_413() -> None:
    """A state record's key is escaped JSON: an object key and a name of 4,096 characters
    past the basic plane are 98 KB of it. With a value near the largest, the record was
    past what a broker takes, and the worker's every commit was refused."""
    h = harness()
    wide = "\U0001f600" * 4096
    big = MAX_VALUE_BYTES - 2  # MAX_VALUE_BYTES of JSON, quotes included
    h.call(Target(service="Edge", key=wide, handler="keep_as"), {"name": wide, "size": big},
           request_id="wide")  # fmt: skip
    await until(lambda: "wide" in h.responses())
    failure = h.responses()["wide"].failure
    assert failure is not None, "taken, and its state record too large to write"
    assert failure.code == 413
    assert "its record's key" in failure.message
    assert not [o for o in h.processor.flush() if o.topic == TOPICS.state]
    h.call(Target(service="Edge", key=wide, handler="keep_as"), {"name": "v", "size": big},
           request_id="narrow")  # fmt: skip
    await until(lambda: "narrow" in h.responses())
    assert h.responses()["narrow"].value == "kept", "a key that fits refused too"
    (record,) = [o for o in h.processor.flush() if o.topic == TOPICS.state]
    assert record.value is not None
    assert len(record.key) + len(record.value) <= MAX_STATE_RECORD


failed_once: list[str] = []


@edge.handler()
async def keep_then_fail_once(ctx: ObjectContext, spec: dict[str, Any]) -> str:
    ctx.set(spec["name"], "x" * spec["size"])
    if ctx.key not in failed_once:
        failed_once.append(ctx.key)
        raise RuntimeError("the first attempt fails after its set")
    return "kept"


async def test_a_state_write_replayed_is_not_measured_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ``set`` journaled before the record limit was lowered (an upgrade) replays: it was
    written. Measured again, the replay raised 413 where the first attempt went on."""
    h = harness()
    wide = "\U0001f600" * 4096
    monkeypatch.setattr(context_module, "MAX_STATE_RECORD", 10 * MAX_STATE_RECORD)
    h.call(Target(service="Edge", key=wide, handler="keep_then_fail_once"),
           {"name": wide, "size": MAX_VALUE_BYTES - 2}, request_id="replayed")  # fmt: skip
    await until(lambda: wide in failed_once)
    monkeypatch.setattr(context_module, "MAX_STATE_RECORD", MAX_STATE_RECORD)
    await until(lambda: "replayed" in h.responses())
    assert h.responses()["replayed"].value == "kept"


listed_once: list[str] = []


@edge.handler()
async def list_too_many(ctx: ObjectContext, count: int) -> str:
    """Lists too many keys (413), goes on, and fails once after that: replayed."""
    for n in range(count):
        ctx.set(f"{n:04d}" + "k" * 4_000, n)
    try:
        await ctx.state_keys()
    except TerminalError as error:
        refused = error.status_code
    return await go_on_and_fail_once(ctx, refused, listed_once)


async def go_on_and_fail_once(ctx: ObjectSharedContext, refused: int, once: list[str]) -> str:
    """What the handlers below do after a refusal they caught: a step, then a failure the
    first time (so that the next attempt replays the refusal)."""
    after: str = await ctx.run("after", lambda: "ran")
    if ctx.key not in once:
        once.append(ctx.key)
        raise RuntimeError("the first attempt fails after the refusal")
    return f"refused {refused}, then {after}"


async def test_a_state_keys_refused_as_too_large_is_refused_again_on_a_replay() -> None:
    """``state_keys`` claimed its journal index, then raised 413 and journaled nothing: the
    handler's next operation, caught up, claimed the index after the one its entry went to
    (a ``ctx.run`` failed with IndexError), and a replay met that entry where it asked for
    the keys (a divergence, 500)."""
    h = harness()
    h.call(Target(service="Edge", key="many", handler="list_too_many"), 300, request_id="keys")
    await until(lambda: "keys" in h.responses())
    answer = h.responses()["keys"]
    assert answer.failure is None, answer.failure
    assert answer.value == "refused 413, then ran"
    assert listed_once == ["many"], "not replayed"


wide_once: list[str] = []


@edge.handler()
async def keep_wide_then_go_on(ctx: ObjectContext, size: int) -> str:
    """A state write whose escaped key makes its record too large (413), caught; then a
    step, and a failure once after it: replayed."""
    try:
        ctx.set(ctx.key, "x" * size)
    except TerminalError as error:
        refused = error.status_code
    return await go_on_and_fail_once(ctx, refused, wide_once)


@pytest.mark.parametrize(
    ("service", "handler", "once"),
    [("Edge", "keep_wide_then_go_on", wide_once), ("Flow", "resolve_wide", resolved_once)],
    ids=["a state write", "a promise"],
)
async def test_a_record_refused_for_its_key_is_refused_again_on_a_replay(
    service: str, handler: str, once: list[str]
) -> None:
    """The key's 413 is looked for in a new step only (a write replayed was written): it
    journaled nothing, and on a replay the write found the next step's entry (a
    divergence, 500)."""
    h = harness()
    wide = "\U0001f600" * 4096
    h.call(Target(service=service, key=wide, handler=handler), MAX_VALUE_BYTES - 2,
           request_id="wide")  # fmt: skip
    await until(lambda: "wide" in h.responses())
    answer = h.responses()["wide"]
    assert answer.failure is None, answer.failure
    assert answer.value == "refused 413, then ran"
    assert once == [wide], "not replayed"


@edge.handler()
async def huge_number(ctx: ObjectContext, where: str) -> Any:
    """An integer of 5,001 digits, past what Python writes as text or reads back."""
    if where == "state":
        try:
            ctx.set("n", 10**5000)
        except TerminalError as error:
            return error.status_code
    return 10**5000


@pytest.mark.parametrize("where", ["state", "result"])
async def test_an_integer_too_long_to_write_is_a_400_not_retried(where: str) -> None:
    """Measuring it raised Python's ValueError (its digit limit): retried on every attempt
    until the invocation paused, with its key held."""
    h = harness()
    h.call(Target(service="Edge", key=where, handler="huge_number"), where, request_id=where)
    await until(lambda: where in h.responses())
    answer = h.responses()[where]
    if where == "state":
        assert answer.value == 400, answer
    else:
        assert answer.failure is not None
        assert answer.failure.code == 400, answer.failure


async def test_error_texts_are_bounded() -> None:
    h = harness()
    h.call(Target(service="Edge", key="t", handler="shout"), "terminal", request_id="t")
    await until(lambda: "t" in h.responses())
    assert len(h.responses()["t"].failure.message) < 9_000
    inv_id = h.call(Target(service="Edge", key="r", handler="shout"), "retry", request_id="r")
    await until(lambda: h.processor.invocations[inv_id].meta.last_error is not None)
    assert len(h.processor.invocations[inv_id].meta.last_error or "") < 9_000


async def test_a_large_result_nobody_retains_is_not_refused() -> None:
    h = harness()
    h.call(Target(service="Helper", handler="large"), 500_000, request_id="big")
    await until(lambda: "big" in h.responses())
    assert h.responses()["big"].failure is None


async def test_a_result_refused_as_too_large_is_answered_by_its_failure_alone() -> None:
    h = harness()
    h.call(Target(service="Helper", handler="large"), 1_100_000, request_id="huge")
    await until(lambda: "huge" in h.responses())
    failure = h.responses()["huge"].failure
    assert failure is not None
    assert failure.code == 413
    answer = next(o for o in h.out if o.topic == TOPICS.responses)
    assert len(answer.value or b"") < 2_000, "the refused value never travels with its 413"


@edge.handler()
async def calls_large(ctx: ObjectContext, size: int) -> int:
    return len(await ctx.service(large).request(size))


@edge.handler()
async def sends_large(ctx: ObjectContext, spec: dict[str, int]) -> str:
    headers = {f"h{i}": "v" * 1000 for i in range(spec["headers"])}
    delay = timedelta(seconds=spec.get("delay", 0))
    try:
        ctx.object_send(keep, "big").send("x" * spec["size"], headers=headers, delay=delay)
    except TerminalError as error:
        return f"{error.status_code}: {error.message}"
    return "sent"


async def test_a_result_of_the_largest_size_reaches_a_caller_on_another_worker() -> None:
    """Its completion, the value and the record around it, was larger than an ingress record
    may be: the caller's partition dead-lettered it, and the caller waited for good (in one
    worker the completion is handed over without its record, and it worked)."""
    h = Harness([helper, edge], loopback=True)
    h.call(Target(service="Edge", key="c", handler="calls_large"), MAX_VALUE_BYTES - 2,
           request_id="c")  # fmt: skip
    await until(lambda: "c" in h.responses(), 10)
    assert h.responses()["c"].value == MAX_VALUE_BYTES - 2
    assert not [o for o in h.out if o.topic == TOPICS.deadletter]


@pytest.mark.parametrize(("size", "headers", "delay", "said"), [
    (MAX_VALUE_BYTES - 2, 60, 0, "413: the record of send Edge/big/keep would be"),
    (MAX_VALUE_BYTES - 2, 0, 0, "sent"),
    (MAX_VALUE_BYTES - 2, 0, 3600, "sent"),  # measured as a delayed send is written
])  # fmt: skip
async def test_a_send_whose_record_is_too_large_is_a_413_at_the_send(
    size: int, headers: int, delay: int, said: str
) -> None:
    """An argument and headers that each fit made a record that did not: the callee's
    partition dead-lettered it, and nobody heard of the send."""
    h = Harness([helper, edge], loopback=True)
    h.call(Target(service="Edge", key="s", handler="sends_large"),
           {"size": size, "headers": headers, "delay": delay}, request_id="s")  # fmt: skip
    await until(lambda: "s" in h.responses(), 10)
    assert str(h.responses()["s"].value).startswith(said), h.responses()["s"]
    await settle()
    assert not [o for o in h.out if o.topic == TOPICS.deadletter]


async def test_the_inactivity_timeout_counts_from_the_wait_under_way() -> None:
    """The timer of the first wait, firing during the second, suspended the invocation
    though it had waited 100 ms of its 300: a replay per wait in a loop of such waits."""
    h = Harness([steady])
    h.call(Target(service="Steady", key="k", handler="two_waits"), request_id="w")
    await until(lambda: "w" in h.responses(), 10)
    assert h.responses()["w"].value == "done"
    assert STARTS["two_waits"] == 1, "suspended during its second wait, and replayed"
