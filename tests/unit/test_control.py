"""Cancel, kill, timeouts, attach from a handler, workflows and promises, purge and resume,
idempotent sends: the partition processor's rules, driven without Kafka."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from handlers import (
    ObjectContext,
    ObjectSharedContext,
    RetryPolicy,
    TerminalError,
    VirtualObject,
    Workflow,
    WorkflowContext,
    WorkflowSharedContext,
    select,
)
from streams.engine.invocation import Invocation
from streams.engine.outbox import origin_of
from streams.engine.store import ObjectKey
from streams.wire import ids
from streams.wire.records import (
    AttachRequest,
    Caller,
    Cancel,
    Completion,
    Invoke,
    Kill,
    Purge,
    Resume,
    Target,
    encode,
)
from tests.unit.harness import TOPICS, Harness, of_kind, settle, until

trail: list[str] = []
flaky_state = {"failing": True, "runs": 0}

saga = VirtualObject("Saga", retry=RetryPolicy(initial=timedelta(milliseconds=1), max_attempts=2))


@saga.handler()
async def book(ctx: ObjectContext, hold_ms: int) -> str:
    try:
        await ctx.sleep(timedelta(milliseconds=hold_ms))
    except TerminalError as error:
        ctx.set("undone", error.status_code)
        trail.append(f"undo {ctx.key} {error.status_code}")
        raise
    return "booked"


@saga.handler()
async def trip(ctx: ObjectContext) -> str:
    try:
        result: str = await ctx.object("Saga", f"{ctx.key}-child", "book").request(60_000)
    except TerminalError as error:
        trail.append(f"compensate {ctx.key} {error.status_code}")
        raise
    return result


@saga.handler()
async def impatient(ctx: ObjectContext, wait_ms: int) -> str:
    call = ctx.object("Saga", f"{ctx.key}-slow", "book")
    try:
        result: str = await call.request(60_000, timeout=timedelta(milliseconds=wait_ms))
    except TerminalError as error:
        return f"gave up {error.status_code}"
    return result


@saga.handler()
async def remind(ctx: ObjectContext, delay_ms: int) -> str:
    later = ctx.object_send("Saga", f"{ctx.key}-later", "book")
    later.send(1, delay=timedelta(milliseconds=delay_ms))
    return "sent"


@saga.handler(kind="shared")
async def watch(ctx: ObjectSharedContext, invocation_id: str) -> Any:
    return await ctx.attach_invocation(invocation_id)


@saga.handler()
async def call_own_key(ctx: ObjectContext) -> str:
    """Calls its own object: the call queues behind this very invocation, which holds the
    key (a deadlock, which a kill breaks)."""
    result: str = await ctx.object("Saga", ctx.key, "mark").request()
    return result


@saga.handler()
async def mark(ctx: ObjectContext) -> str:
    ctx.set("marked", True)
    trail.append(f"marked {ctx.key}")
    return "marked"


@saga.handler()
async def race(ctx: ObjectContext) -> str:
    """A call raced against an hour: cancelled, it compensates."""
    reply = ctx.object("Saga", f"{ctx.key}-booked", "book").request(0)
    try:
        name, value = await select(reply=reply, timeout=ctx.sleep(timedelta(hours=1)))
        await ctx.sleep(timedelta(hours=1))  # and then waits more
    except TerminalError as error:
        trail.append(f"compensate {ctx.key} {error.status_code}")
        raise
    return f"{name}: {value}"


@saga.handler()
async def flaky(ctx: ObjectContext) -> int:
    flaky_state["runs"] += 1
    if flaky_state["failing"]:
        raise RuntimeError("not yet")
    return flaky_state["runs"]


@saga.handler()
async def strand(ctx: ObjectContext) -> str:
    """Calls a child, then fails before awaiting it, every attempt: paused, the call open."""
    ctx.object("Saga", f"{ctx.key}-child", "book").request(60_000)
    raise RuntimeError("fails before it awaits its call")


stubborn = VirtualObject("Stubborn", retry=RetryPolicy(max_attempts=1))
#: What ``charge`` waits for before it fails (made by the ``_reset`` fixture, set by a test).
card_service: dict[str, asyncio.Event] = {}


async def charge() -> None:
    await card_service["down"].wait()
    raise RuntimeError("the card service is down")


@stubborn.handler()
async def reserve(ctx: ObjectContext) -> str:
    """Reserves, then charges, which fails: its only attempt, so it is paused."""
    ctx.set("reserved", True)
    try:
        await ctx.run("charge", charge)
    except TerminalError as error:
        ctx.clear("reserved")
        trail.append(f"release {ctx.key} {error.status_code}")
        raise
    return "charged"


signup = Workflow("Signup", idempotency_retention=timedelta(seconds=1))


@signup.main()
async def run(ctx: WorkflowContext, email: str) -> str:
    ctx.set("email", email)
    try:
        secret = await ctx.promise("link").value()
    except TerminalError as error:
        ctx.set("status", f"aborted {error.status_code}")
        raise
    ctx.set("status", "verified")
    return f"{email}:{secret}"


@signup.handler()
async def click(ctx: WorkflowSharedContext, secret: str) -> None:
    await ctx.promise("link").resolve(secret)


@signup.handler()
async def status(ctx: WorkflowSharedContext) -> dict[str, Any]:
    return {"status": await ctx.get("status"), "link": await ctx.promise("link").peek()}


@saga.handler()
async def join_run(ctx: ObjectContext, email: str) -> str:
    """Calls the run of workflow Signup/<key>, which someone else may have started."""
    try:
        result: str = await ctx.workflow("Signup", ctx.key, "run").request(email)
    except TerminalError as error:
        return f"failed {error.status_code}"
    return result


@pytest.fixture(autouse=True)
def _reset() -> None:
    trail.clear()
    flaky_state.update(failing=True, runs=0)
    card_service["down"] = asyncio.Event()


def harness(loopback: bool = False) -> Harness:
    return Harness([saga, signup, stubborn], loopback=loopback)


def saga_target(key: str, handler: str) -> Target:
    return Target(service="Saga", key=key, handler=handler)


def waiting_in(h: Harness, inv_id: str, kind: str) -> bool:
    inv = h.processor.invocations.get(inv_id)
    return inv is not None and any(e.kind == kind and not e.done for e in inv.journal)


async def test_cancel_reaches_a_sleeping_handler_which_compensates() -> None:
    h = harness()
    inv_id = h.call(saga_target("a", "book"), 60_000, request_id="book")
    await until(lambda: waiting_in(h, inv_id, "sleep"))
    h.send(Cancel(invocation_id=inv_id, request_id="cancel"))
    await until(lambda: "book" in h.responses())
    assert h.responses()["cancel"].status == "accepted"
    failure = h.responses()["book"].failure
    assert failure is not None
    assert (failure.code, failure.message) == (409, "cancelled")
    assert trail == ["undo a 409"]
    assert h.processor.store.state[("Saga", "a")] == {"undone": 409}


def sample(metric: Any, *labels: str) -> float:
    return float(REGISTRY.get_sample_value(metric, dict(zip(LABELS[metric], labels, strict=True)))
                 or 0.0)  # fmt: skip


LABELS = {
    "kourier_invocations_total": ("service", "handler", "outcome"),
    "kourier_retries_total": ("service", "handler"),
    "kourier_paused_total": ("service",),
}


async def test_a_cancel_a_running_handler_met_counts_as_cancelled_and_a_pause_as_no_retry() -> None:
    """A handler that meets a cancel raises its own copy of the cancel's failure: it was
    counted a ``failure``. The attempt that pauses an invocation schedules no retry: it
    was counted as one."""
    h = harness()
    before = {o: sample("kourier_invocations_total", "Saga", "book", o)
              for o in ("cancelled", "failure")}  # fmt: skip
    inv_id = h.call(saga_target("m", "book"), 60_000, request_id="book")
    await until(lambda: waiting_in(h, inv_id, "sleep"))
    h.send(Cancel(invocation_id=inv_id))
    await until(lambda: "book" in h.responses())
    assert (
        sample("kourier_invocations_total", "Saga", "book", "cancelled") == before["cancelled"] + 1
    )
    assert sample("kourier_invocations_total", "Saga", "book", "failure") == before["failure"]

    retried = sample("kourier_retries_total", "Saga", "flaky")
    paused = sample("kourier_paused_total", "Saga")
    flaky_id = h.call(saga_target("m", "flaky"), request_id="flaky")
    await until(lambda: h.processor.invocations[flaky_id].meta.status == "paused")
    assert flaky_state["runs"] == 2, "max_attempts=2"
    assert sample("kourier_retries_total", "Saga", "flaky") == retried + 1, "one retry, not two"
    assert sample("kourier_paused_total", "Saga") == paused + 1


async def test_cancel_travels_down_the_call_tree_leaves_first() -> None:
    h = harness(loopback=True)
    parent = h.call(saga_target("t", "trip"), request_id="trip")
    await until(lambda: any(waiting_in(h, i, "sleep") for i in list(h.processor.invocations)))
    h.send(Cancel(invocation_id=parent))
    await until(lambda: "trip" in h.responses())
    failure = h.responses()["trip"].failure
    assert failure is not None
    assert failure.code == 409
    assert trail == ["undo t-child 409", "compensate t 409"]


async def test_kill_stops_the_tree_without_compensation_and_unlocks_keys() -> None:
    h = harness(loopback=True)
    parent = h.call(saga_target("k", "trip"), request_id="trip")
    await until(lambda: any(waiting_in(h, i, "sleep") for i in list(h.processor.invocations)))
    child = next(i for i in h.processor.invocations if i != parent)
    h.send(Kill(invocation_id=parent, request_id="kill"))
    assert h.responses()["kill"].status == "success"
    failure = h.responses()["trip"].failure
    assert failure is not None
    assert failure.message == "killed"
    await until(lambda: child not in h.processor.invocations)
    assert [r["invocation_id"] for r in h.records("kill")] == [child]
    assert trail == []
    assert h.processor.locks.holders == {}
    h.call(saga_target("k-child", "book"), 0, request_id="after")
    await until(lambda: "after" in h.responses())
    assert h.responses()["after"].value == "booked"


async def test_a_kill_of_a_deadlock_kills_the_call_queued_behind_it_before_it_runs() -> None:
    """The kill of a handler that called its own object sent a kill record to its callee
    and let go of the key: the callee, queued behind that key, was handed it and ran (its
    state written, its effects made) before the record came back, which found it done."""
    h = harness(loopback=True)
    holder = h.call(saga_target("d", "call_own_key"), request_id="holder")
    await until(lambda: len(h.processor.invocations) == 2)
    callee = next(i for i in h.processor.invocations if i != holder)
    assert h.processor.invocations[callee].meta.status == "pending"
    h.send(Kill(invocation_id=holder, request_id="kill"))
    assert h.responses()["kill"].status == "success"
    await settle()
    assert trail == [], "the call queued behind the killed one ran"
    assert ("Saga", "d") not in h.processor.store.state
    assert callee not in h.processor.invocations  # completed (killed), and not retained
    assert h.records("kill") == [], "done with here: no record to come back"
    assert h.processor.locks.holders == {}


async def answer_the_race(h: Harness, key: str) -> str:
    """Start ``race`` on ``key``, and once it waits in its select, answer its call: its id."""
    inv_id = h.call(saga_target(key, "race"), request_id="race")
    await until(lambda: waiting_in(h, inv_id, "sleep"))
    journal = h.processor.invocations[inv_id].journal
    index, call = next((i, e) for i, e in enumerate(journal) if e.kind == "call")
    assert call.callee is not None
    caller = Caller(invocation_id=inv_id, entry=index)
    h.send(Completion(caller=caller, invocation_id=call.callee, value="booked"))
    return inv_id


@pytest.mark.parametrize("turns", range(10))
async def test_a_cancel_that_fails_a_branch_of_a_select_that_loses_still_reaches_the_handler(
    turns: int,
) -> None:
    """A call's outcome, then a cancel ``turns`` loop turns later. Applied before the
    handler woke, the cancel failed the sleep, and counted as delivered; the call won the
    select (named first; or, a few turns on, done first), and the invocation completed as
    if never cancelled, its cancel answered "accepted". Applied just after the select
    returned (4 turns), it failed the lost sleep, still waited on until its task's
    cancellation ran, and the handler slept its next hour. Now it fails with 409,
    compensated, wherever the cancel lands."""
    h = harness()
    inv_id = await answer_the_race(h, "s")
    for _ in range(turns):  # the call's branch ends as the loop turns
        await asyncio.sleep(0)
    h.send(Cancel(invocation_id=inv_id, request_id="cancel"))  # before the handler wakes
    assert h.responses()["cancel"].status == "accepted"
    await until(lambda: "race" in h.responses())
    failure = h.responses()["race"].failure
    assert failure is not None, h.responses()["race"].value
    assert failure.code == 409
    assert trail == ["compensate s 409"]


async def test_a_cancel_that_failed_a_branch_before_a_restore_wins_the_select_replayed() -> None:
    """The partition moved after the call's outcome and the cancel were applied, before the
    handler woke: the replayed select found both branches done and nothing delivered while
    it waited, and the call, named first, won; the cancel was lost."""
    h = harness()
    inv_id = await answer_the_race(h, "m")
    h.send(Cancel(invocation_id=inv_id, request_id="cancel"))
    h.hand_over()  # before the handler wakes
    await until(lambda: "race" in h.responses())
    failure = h.responses()["race"].failure
    assert failure is not None, h.responses()["race"].value
    assert failure.code == 409


async def test_cancelling_the_holder_of_a_key_lets_the_next_call_run() -> None:
    h = harness()
    holder = h.call(saga_target("u", "book"), 60_000, request_id="holder")
    queued = h.call(saga_target("u", "book"), 0, request_id="queued")
    also = h.call(saga_target("u", "book"), 0, request_id="also")
    await until(lambda: waiting_in(h, holder, "sleep"))
    assert h.processor.invocations[queued].meta.status == "pending"
    # A queued invocation is removed at once and answers 409, without running.
    h.send(Cancel(invocation_id=queued, request_id="cancel-queued"))
    assert h.responses()["cancel-queued"].status == "success"
    assert h.responses()["queued"].failure.code == 409
    h.send(Cancel(invocation_id=holder))
    await until(lambda: "also" in h.responses())
    assert h.responses()["also"].value == "booked"
    assert trail == ["undo u 409"], "the queued invocation never ran"
    assert also not in h.processor.invocations


async def test_an_id_made_again_queues_behind_the_calls_queued_before_it() -> None:
    """A queued invocation cancelled and forgotten (no retention) left its id in its key's
    line; the same id made again (its own id, or an idempotency key) was queued at the end
    too, and the key went to it at the old place, ahead of the calls queued in between."""
    h = harness()
    holder = h.call(saga_target("q", "book"), 60_000, request_id="holder")
    first = h.call(saga_target("q", "book"), 0, request_id="first")
    between = h.call(saga_target("q", "book"), 60_000, request_id="between")
    await until(lambda: waiting_in(h, holder, "sleep"))
    h.send(Cancel(invocation_id=first))
    assert first not in h.processor.invocations, "cancelled while queued, and forgotten"
    h.send(Invoke(target=saga_target("q", "book"), argument=0, invocation_id=first,
                  request_id="again"))  # fmt: skip
    assert h.processor.invocations[first].meta.status == "pending"
    h.send(Cancel(invocation_id=holder))
    await until(lambda: waiting_in(h, between, "sleep"))
    assert h.processor.locks.holder(ObjectKey("Saga", "q")) == between
    assert "again" not in h.responses(), "the id made again ran ahead of the call before it"
    assert h.processor.locks.queued(ObjectKey("Saga", "q")) == [first]
    assert h.processor.locks.waiting() == 1


@pytest.mark.parametrize("end", [Cancel, Kill])
async def test_a_caller_that_did_not_start_a_workflow_run_does_not_end_it(
    end: type[Cancel] | type[Kill],
) -> None:
    """A caller's call to a workflow's run names the run's id as its callee, whoever started
    the run. Cancelled or killed while that call was open (or past its deadline), the
    caller sent the cancel or kill on to the run, which ended someone else's run."""
    h = harness()
    run_id = ids.workflow_run_id("Signup", "w1")
    h.call(Target(service="Signup", key="w1", handler="run"), "ada@x", request_id="run")
    await until(lambda: waiting_in(h, run_id, "promise_get"))
    caller = h.call(saga_target("w1", "join_run"), "bob@x", request_id="join")
    await until(lambda: len(h.invokes()) == 1)  # its call to the run, not applied yet
    (call,) = of_kind(h.out, "invoke")
    h.send(end(invocation_id=caller))
    (sent_on,) = of_kind(h.out, end.__name__.lower())
    assert json.loads(sent_on.value or b"{}")["invocation_id"] == run_id
    h.deliver(call)  # the run's partition: the run exists, the caller hears 409
    h.deliver(sent_on)  # then the cancel or kill the caller sent on
    await settle()
    assert h.processor.invocations[run_id].meta.status != "completed", "someone else's run ended"
    h.call(Target(service="Signup", key="w1", handler="click"), "s3cret", request_id="click")
    await until(lambda: "run" in h.responses())
    assert h.responses()["run"].value == "ada@x:s3cret"


async def test_a_caller_that_joined_an_invocation_lets_go_of_it_when_cancelled() -> None:
    """A caller that joined another's invocation by idempotency key and is cancelled ends
    its own wait (409 cancelled), not the invocation the first caller started."""
    h = harness()
    holder = h.call(saga_target("s", "book"), 60_000, request_id="first")
    await until(lambda: waiting_in(h, holder, "sleep"))
    joined = Invoke(target=saga_target("s", "book"), argument=60_000, invocation_id=holder,
                    caller=Caller(invocation_id=ids.new_id("x", 1), entry=3))  # fmt: skip
    h.send(joined)
    assert h.processor.invocations[holder].meta.attachers == [joined.caller]
    h.processor.on_message(None, encode(Cancel(invocation_id=holder)), 99,
                           origin=joined.caller.invocation_id)  # fmt: skip
    assert h.processor.invocations[holder].meta.status != "completed"
    assert h.processor.invocations[holder].meta.attachers == []
    (answer,) = [c for c in h.records("completion") if c["caller"] == joined.caller.model_dump()]
    assert (answer["failure"]["code"], answer["failure"]["message"]) == (409, "cancelled")


async def test_a_clients_cancel_with_an_origin_header_is_answered() -> None:
    """``kourier.origin`` is the worker's own header on the cancels it sends on, which
    carry no request id. A client's cancel with one (copied headers, a mirror) was taken for
    a caller letting go: it did nothing and its sender waited for an answer for ever."""
    h = harness()
    holder = h.call(saga_target("o", "book"), 60_000, request_id="first")
    await until(lambda: waiting_in(h, holder, "sleep"))
    cancel = Cancel(invocation_id=holder, request_id="stop")
    h.processor.on_message(None, encode(cancel), 99, origin=ids.new_id("x", 1))
    await until(lambda: "stop" in h.responses())
    assert h.responses()["stop"].status in ("success", "accepted")
    await until(lambda: "first" in h.responses())
    failure = h.responses()["first"].failure
    assert failure is not None
    assert failure.code == 409


async def test_a_joined_callers_deadline_ends_that_calls_wait_alone() -> None:
    """The cancel a call's deadline sends names its entry: another call of the same caller
    that joined the same invocation (a retry with the same idempotency key) waits on."""
    h = harness()
    holder = h.call(saga_target("d", "book"), 60_000, request_id="first")
    await until(lambda: waiting_in(h, holder, "sleep"))
    other = ids.new_id("x", 1)
    late, retried = Caller(invocation_id=other, entry=3), Caller(invocation_id=other, entry=5)
    for caller in (late, retried):
        h.send(Invoke(target=saga_target("d", "book"), argument=60_000, invocation_id=holder,
                      caller=caller))  # fmt: skip
    h.processor.on_message(None, encode(Cancel(invocation_id=holder)), 99, origin=f"{other}/3")
    assert h.processor.invocations[holder].meta.attachers == [retried]
    assert [c["caller"]["entry"] for c in h.records("completion")] == [3]
    assert h.processor.invocations[holder].meta.status != "completed"


async def test_a_queued_call_not_deployed_after_a_hand_over_does_not_take_the_key() -> None:
    """A new owner that does not host a queued call's handler paused it, and a paused
    exclusive invocation holds its key: the queued call took the key from the one running
    with it, whose end then unlocked nothing, and every call behind waited for good."""
    h = harness()
    holder = h.call(saga_target("p", "book"), 60_000, request_id="holder")
    queued = h.call(saga_target("p", "flaky"), request_id="queued")
    await until(lambda: waiting_in(h, holder, "sleep"))
    lite = VirtualObject("Saga")  # the new owner's Saga: without the queued call's handler
    lite.handlers.update({n: d for n, d in saga.handlers.items() if n != "flaky"})
    h.services = [lite, signup]
    restored = h.hand_over()
    assert restored.locks.holder(ObjectKey("Saga", "p")) == holder
    assert restored.invocations[queued].meta.status == "pending"
    h.send(Cancel(invocation_id=holder))
    h.call(saga_target("p", "book"), 0, request_id="after")
    await until(lambda: "after" in h.responses())
    assert h.responses()["after"].value == "booked"
    assert "queued" not in h.responses(), "run by a worker that does not host its handler"


async def test_cancel_and_kill_answer_404_and_409() -> None:
    h = harness()
    unknown = ids.new_id("x", 1)
    h.send(Cancel(invocation_id=unknown, request_id="unknown"))
    assert h.responses()["unknown"].failure.code == 404
    done = h.call(saga_target("d", "book"), 0, request_id="done")
    await until(lambda: "done" in h.responses())
    assert done not in h.processor.invocations, "not retained: forgotten at once"
    retained = Invoke(target=saga_target("d", "book"), argument=0, idempotency_key="once",
                      request_id="kept")  # fmt: skip
    h.send(retained)
    await until(lambda: "kept" in h.responses())
    kept_id = h.responses()["kept"].invocation_id
    h.send(Kill(invocation_id=kept_id, request_id="late"))
    assert h.responses()["late"].failure.code == 409


async def test_a_call_deadline_fails_the_call_with_408_and_cancels_the_callee() -> None:
    h = harness(loopback=True)
    h.call(saga_target("x", "impatient"), 30, request_id="impatient")
    await until(lambda: "impatient" in h.responses())
    assert h.responses()["impatient"].value == "gave up 408"
    await until(lambda: trail == ["undo x-slow 409"])


async def test_a_handler_attaches_to_another_invocation() -> None:
    h = harness(loopback=True)
    booking = h.call(saga_target("w", "book"), 50, request_id="book")
    h.call(saga_target("watcher", "watch"), booking, request_id="watch")
    await until(lambda: "watch" in h.responses())
    assert h.responses()["watch"].value == "booked"
    assert h.responses()["book"].value == "booked"


async def test_workflow_runs_once_and_promises_connect_its_handlers() -> None:
    h = harness()
    run_target = Target(service="Signup", key="w1", handler="run")
    run_id = ids.workflow_run_id("Signup", "w1")
    h.call(run_target, "a@example.com", request_id="run")
    await until(lambda: waiting_in(h, run_id, "promise_get"))
    # Calling run again: 409. Sending it again: PreviouslyAccepted with the same id.
    h.call(run_target, "b@example.com", request_id="again")
    assert h.responses()["again"].failure.code == 409
    h.send(Invoke(target=run_target, argument="c", mode="send", request_id="resend"))
    assert h.responses()["resend"].status == "previously_accepted"
    assert h.responses()["resend"].invocation_id == run_id
    h.call(Target(service="Signup", key="w1", handler="status"), request_id="during")
    await until(lambda: "during" in h.responses())
    assert h.responses()["during"].value == {"status": None, "link": None}
    h.call(Target(service="Signup", key="w1", handler="click"), "ok", request_id="click")
    await until(lambda: "run" in h.responses())
    assert h.responses()["run"].value == "a@example.com:ok"
    assert h.responses()["run"].invocation_id == run_id
    h.call(Target(service="Signup", key="w1", handler="click"), "again", request_id="click2")
    await until(lambda: "click2" in h.responses())
    assert h.responses()["click2"].failure.code == 409, "a promise completes once"
    # After run: shared handlers still see state and the promise; attach gets the result.
    h.call(Target(service="Signup", key="w1", handler="status"), request_id="after")
    h.send(AttachRequest(request_id="attach", target=run_target))
    # With an idempotency key too (a run called with one ignores it): it was looked up
    # first, found nothing, and the attach was answered 404 while the run was there.
    h.send(AttachRequest(request_id="keyed", target=run_target, idempotency_key="K"))
    await until(lambda: {"after", "attach", "keyed"} <= set(h.responses()))
    assert h.responses()["after"].value == {"status": "verified", "link": "ok"}
    assert h.responses()["attach"].value == "a@example.com:ok"
    assert h.responses()["keyed"].value == "a@example.com:ok"
    changelog = [json.loads(o.key or b"") for o in h.processor.flush() if o.topic == TOPICS.state]
    assert ["Signup", "w1", "link", "promise"] in changelog
    # Past the workflow's retention its run, state and promises are gone.
    await until(lambda: run_id not in h.processor.invocations, seconds=4)
    assert ("Signup", "w1") not in h.processor.store.state
    assert ("Signup", "w1") not in h.processor.store.promises
    h.send(AttachRequest(request_id="gone", target=run_target, wait=False))
    assert h.responses()["gone"].failure.code == 404


async def test_cancel_reaches_a_workflow_waiting_on_a_promise() -> None:
    h = harness()
    run_id = ids.workflow_run_id("Signup", "w2")
    h.call(Target(service="Signup", key="w2", handler="run"), "x", request_id="run")
    await until(lambda: waiting_in(h, run_id, "promise_get"))
    h.send(Cancel(invocation_id=run_id))
    await until(lambda: "run" in h.responses())
    assert h.responses()["run"].failure.code == 409
    assert h.processor.store.state[("Signup", "w2")]["status"] == "aborted 409"


async def test_a_killed_workflow_no_longer_waits_on_its_promise() -> None:
    h = harness()
    run_id = ids.workflow_run_id("Signup", "w3")
    h.call(Target(service="Signup", key="w3", handler="run"), "x", request_id="run")
    await until(lambda: waiting_in(h, run_id, "promise_get"))
    assert h.processor.promises.waiters
    h.send(Kill(invocation_id=run_id))
    await until(lambda: "run" in h.responses())
    assert h.processor.promises.waiters == {}, "the killed run's waiter is dropped"


async def test_a_paused_invocation_resumes_and_a_completed_one_purges() -> None:
    h = harness()
    inv_id = h.call(saga_target("p", "flaky"), request_id="flaky")
    await until(lambda: h.processor.invocations[inv_id].meta.status == "paused")
    assert flaky_state["runs"] == 2
    h.send(Purge(invocation_id=inv_id, request_id="early"))
    assert h.responses()["early"].failure.code == 409
    flaky_state["failing"] = False
    h.send(Resume(invocation_id=inv_id, request_id="resume"))
    assert h.responses()["resume"].status == "success"
    await until(lambda: "flaky" in h.responses())
    assert h.responses()["flaky"].value == 3
    h.send(Resume(invocation_id=inv_id, request_id="again"))
    assert h.responses()["again"].failure.code == 404, "not retained after completion"
    keyed = Invoke(target=saga_target("p", "book"), argument=0, idempotency_key="k",
                   request_id="keyed")  # fmt: skip
    h.send(keyed)
    await until(lambda: "keyed" in h.responses())
    keyed_id = h.responses()["keyed"].invocation_id
    h.send(Purge(invocation_id=keyed_id, request_id="purge"))
    assert h.responses()["purge"].status == "success"
    h.send(AttachRequest(request_id="attach", invocation_id=keyed_id))
    assert h.responses()["attach"].failure.code == 404


def timers_of(h: Harness) -> list[int]:
    """Where in the output the durable timers written so far are."""
    return [i for i, out in enumerate(h.out) if out.topic == TOPICS.delay]


async def test_a_timer_of_an_earlier_run_under_the_same_id_does_not_end_a_new_runs_sleep() -> None:
    """An id comes back: a workflow run again past its retention, an idempotency key used
    again once its outcome was purged. A durable timer of the earlier run, still on the
    delay topic, named only the id and the journal entry, and ended the new run's sleep at
    that entry when it fired: a workflow's "wait a week for the click" timed out early."""
    h = harness()
    first = Invoke(target=saga_target("again", "book"), argument=200, idempotency_key="k",
                   request_id="first")  # fmt: skip
    h.send(first)
    inv_id = ids.idempotent_id("Saga", "again", "book", "k")
    await until(lambda: waiting_in(h, inv_id, "sleep"))
    (old_timer,) = timers_of(h)
    h.send(Kill(invocation_id=inv_id, request_id="kill"))
    await until(lambda: "first" in h.responses())
    h.send(Purge(invocation_id=inv_id, request_id="purge"))
    assert h.responses()["purge"].status == "success"
    h.send(first.model_copy(update={"argument": 60_000, "request_id": "second"}))
    await until(lambda: waiting_in(h, inv_id, "sleep"))
    await until(lambda: old_timer in h.fired)  # the earlier run's timer came back
    await settle()
    assert waiting_in(h, inv_id, "sleep"), "the earlier run's timer ended the new run's sleep"
    assert "second" not in h.responses()


async def test_a_delayed_send_of_an_earlier_run_under_the_same_id_does_not_swallow_a_new_ones() -> (
    None
):
    """A send's callee id is derived from its caller's id and journal entry. A new run under
    an id that came back made its send under the id of the earlier run's, still scheduled:
    taken for a duplicate, the new send was dropped without a word."""
    h = harness(loopback=True)
    first = Invoke(target=saga_target("twice", "remind"), argument=60_000, idempotency_key="k",
                   request_id="first")  # fmt: skip
    h.send(first)
    await until(lambda: "first" in h.responses())
    inv_id = h.responses()["first"].invocation_id
    h.send(Purge(invocation_id=inv_id, request_id="purge"))
    assert h.responses()["purge"].status == "success"
    h.send(first.model_copy(update={"request_id": "second"}))
    await until(lambda: "second" in h.responses())
    assert h.responses()["second"].invocation_id == inv_id
    sends = [i["invocation_id"] for i in h.invokes() if i["target"]["handler"] == "book"]
    assert len(set(sends)) == 2, f"the two runs sent under {sends}"
    scheduled = [i for i in sends if h.processor.invocations[i].meta.status == "scheduled"]
    assert len(set(scheduled)) == 2, "the new run's send was taken for the earlier one's"


async def test_cancelling_a_paused_invocation_cancels_the_calls_it_left_open() -> None:
    """The cancel travels to the calls a paused invocation made and never awaited, whose
    callees would otherwise run on, holding their keys; the invocation, run once more with
    the cancel, fails before it awaits anything, and ends cancelled."""
    h = harness()
    inv_id = h.call(saga_target("s", "strand"), request_id="strand")
    await until(lambda: h.processor.invocations[inv_id].meta.status == "paused")
    child = next(e.callee for e in h.processor.invocations[inv_id].journal if e.kind == "call")
    h.send(Cancel(invocation_id=inv_id, request_id="cancel"))
    assert h.responses()["cancel"].status == "accepted"
    await until(lambda: "strand" in h.responses())
    assert h.responses()["strand"].failure.code == 409
    assert [r["invocation_id"] for r in h.records("cancel")] == [child]


async def test_a_paused_invocation_cancelled_compensates() -> None:
    """A cancel of a paused invocation completed it at once with 409: its handler never met
    the cancel, and what it had done stayed done (here, the reservation), although DESIGN
    §5 gives a started invocation the cancel at its next await, so that it compensates."""
    h = harness()
    card_service["down"].set()
    inv_id = h.call(Target(service="Stubborn", key="k", handler="reserve"), request_id="reserve")
    await until(lambda: h.processor.invocations[inv_id].meta.status == "paused")
    assert h.processor.store.state_of(ObjectKey("Stubborn", "k")) == {"reserved": True}
    h.send(Cancel(invocation_id=inv_id, request_id="cancel"))
    assert h.responses()["cancel"].status == "accepted"
    await until(lambda: "reserve" in h.responses())
    assert h.responses()["reserve"].failure.code == 409
    assert trail == ["release k 409"]
    assert h.processor.store.state_of(ObjectKey("Stubborn", "k")) == {}


async def paused_with_its_journal_incomplete(h: Harness) -> Invocation:
    """``Stubborn/k/reserve``, paused, and then as a restore leaves an invocation whose
    journal misses entries in the changelog."""
    card_service["down"].set()
    inv_id = h.call(Target(service="Stubborn", key="k", handler="reserve"), request_id="reserve")
    await until(lambda: h.processor.invocations[inv_id].meta.status == "paused")
    inv = h.processor.invocations[inv_id]
    inv.meta.journal_length = len(inv.journal) + 1
    return inv


async def test_a_paused_invocation_whose_journal_came_back_incomplete_is_cancelled_at_once() -> (
    None
):
    """A restore pauses an invocation whose journal is missing entries in the changelog:
    run again to meet the cancel, it would replay a journal that is not what it did."""
    h = harness()
    inv_id = (await paused_with_its_journal_incomplete(h)).meta.id
    h.send(Cancel(invocation_id=inv_id, request_id="cancel"))
    assert h.responses()["cancel"].status == "success"
    assert h.responses()["reserve"].failure.code == 409
    assert trail == [], "replayed to compensate"


async def test_a_paused_invocation_whose_journal_came_back_incomplete_does_not_resume() -> None:
    """Resume replayed a journal a restore found entries missing from (which a cancel will
    not replay): its entries shifted, the handler re-ran a step it had taken, and its new
    entries were written over others'."""
    h = harness()
    inv = await paused_with_its_journal_incomplete(h)
    inv_id = inv.meta.id
    card_service["down"].clear()
    h.send(Resume(invocation_id=inv_id, request_id="resume"))
    refused = h.responses()["resume"].failure
    assert refused is not None, h.responses()["resume"]
    assert refused.code == 409
    assert "incomplete" in refused.message
    assert inv.meta.status == "paused"
    h.send(Cancel(invocation_id=inv_id, request_id="cancel"))
    assert h.responses()["cancel"].status == "success", "what to do instead works"


async def test_a_cancel_during_the_last_attempt_reaches_the_handler() -> None:
    """A cancel that came during an invocation's last attempt, which then failed, ended it
    at once with 409, without the handler meeting it."""
    h = harness()
    inv_id = h.call(Target(service="Stubborn", key="k", handler="reserve"), request_id="reserve")
    await until(lambda: waiting_in(h, inv_id, "run"))
    h.send(Cancel(invocation_id=inv_id, request_id="cancel"))
    assert h.responses()["cancel"].status == "accepted"
    card_service["down"].set()  # the action fails: the last attempt with it
    await until(lambda: "reserve" in h.responses())
    assert h.responses()["reserve"].failure.code == 409
    assert trail == ["release k 409"]
    assert h.processor.store.state_of(ObjectKey("Stubborn", "k")) == {}


async def test_idempotent_sends_are_accepted_once_and_recorded_in_the_dedup_table() -> None:
    h = harness()
    send = Invoke(target=saga_target("s", "book"), argument=0, mode="send",
                  idempotency_key="pay-1", request_id="first")  # fmt: skip
    h.send(send)
    h.send(send.model_copy(update={"request_id": "second"}))
    first, second = h.responses()["first"], h.responses()["second"]
    assert (first.status, second.status) == ("accepted", "previously_accepted")
    assert first.invocation_id == second.invocation_id
    rows = {o.key: o.value for o in h.processor.flush() if o.topic == TOPICS.dedup}
    assert rows == {
        json.dumps(["Saga", "s", "book", "pay-1"]).encode(): json.dumps(
            {"invocation_id": first.invocation_id}
        ).encode()
    }


async def test_a_record_forwarded_to_its_partition_keeps_its_origin() -> None:
    """A record produced to the wrong partition is moved to its own: a cancel sent on by a
    caller lost its origin on the way, and acted on a callee that caller had not started."""
    h = harness()
    h.processor = h.make(partitions=2)
    elsewhere = next(i for i in (ids.new_id(f"k{n}", 2) for n in range(100))
                     if ids.partition_of(i, 2) == 1)  # fmt: skip
    caller = ids.new_id("c", 2)
    h.processor.on_message(None, encode(Cancel(invocation_id=elsewhere)), 7, origin=caller)
    (moved,) = h.out
    assert moved.partition == 1
    assert origin_of(moved.headers) == caller


async def test_a_starters_other_call_that_joined_ends_its_own_wait_at_its_deadline() -> None:
    """The caller that started an invocation, and joined it again from another call (the
    same idempotency key): that call's deadline cancelled the invocation, and with it the
    first call, which had time left."""
    h = harness()
    starter = Caller(invocation_id=ids.new_id("s", 1), entry=1)
    callee = ids.new_id("j", 1)
    for caller in (starter, Caller(invocation_id=starter.invocation_id, entry=4)):
        h.send(Invoke(target=saga_target("j", "book"), argument=60_000, invocation_id=callee,
                      caller=caller))  # fmt: skip
    await until(lambda: waiting_in(h, callee, "sleep"))
    origin = f"{starter.invocation_id}/4"
    h.processor.on_message(None, encode(Cancel(invocation_id=callee)), 99, origin=origin)
    await settle()
    assert h.processor.invocations[callee].meta.status != "completed", "the starter's call ended"
    assert h.processor.invocations[callee].meta.attachers == []
    assert [c["caller"]["entry"] for c in h.records("completion")] == [4]
