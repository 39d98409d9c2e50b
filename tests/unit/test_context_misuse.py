"""A handler's misuse of its context that fails the same way on every attempt ends the
invocation at once with a clear failure, instead of being retried until it pauses with
its key held; and a result a handler asks for by type comes back as that type. Driven
with the engine's harness, no Kafka."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from pydantic import BaseModel

from handlers import Context, ObjectContext, RetryPolicy, Service, VirtualObject, select
from streams.engine.journal import Entry
from streams.engine.store import ObjectKey
from streams.wire.records import Target
from tests.unit.harness import Harness, settle, until

#: Retried enough that a retryable failure would show as attempts, not as an answer.
PATIENT = RetryPolicy(initial=timedelta(milliseconds=1), max_attempts=5)
things = VirtualObject("Things", retry=PATIENT)
plain = Service("Plain", retry=PATIENT)
attempts: dict[str, int] = {}


class Stock(BaseModel):
    item: str
    count: int


@things.handler()
async def swallows(ctx: ObjectContext) -> str:
    """Catches whatever its first operation raises, and goes on."""
    with contextlib.suppress(Exception):  # the mistake under test
        await ctx.sleep(timedelta(hours=1))
    return "carried on"


LATE = {"runs": 0}


@things.handler()
async def runs_after_divergence(ctx: ObjectContext) -> str:
    """Makes a run, diverges (on a replay) at its sleep, catches that, then awaits the run."""
    late = ctx.run("late", lambda: LATE.__setitem__("runs", LATE["runs"] + 1))
    with contextlib.suppress(Exception):
        await ctx.sleep(timedelta(hours=1))
    with contextlib.suppress(Exception):
        await late
    return "carried on"


@things.handler()
async def calls_badly(ctx: ObjectContext, how: str) -> str:
    attempts[how] = attempts.get(how, 0) + 1
    if how == "long key":
        await ctx.object("Things", "k" * 5000, "swallows").request(None)
    elif how == "bad name":
        await ctx.service("not a name", "h").request(None)
    elif how == "sleep in seconds":
        await ctx.sleep(5)
    elif how == "delay in seconds":
        ctx.object_send(swallows, "k").send(None, delay=5)
    elif how == "timeout in seconds":
        await ctx.object(swallows, "k").request(None, timeout=5.0)
    elif how == "object as service":
        await ctx.service(swallows).request(None)
    elif how == "service as object":
        ctx.object_send(wants_key, "k").send(None)
    else:
        await ctx.service("Plain", None).request(None)
    return "called"


@plain.handler()
async def wants_key(ctx: Context) -> str:
    attempts["key"] = attempts.get("key", 0) + 1
    return ctx.key  # type: ignore[attr-defined, no-any-return]  # a service has none


@things.handler()
async def runs_typed(ctx: ObjectContext, hint: str) -> list[str]:
    untyped = await ctx.run("untyped", lambda: Stock(item="tea", count=2))
    if hint == "fits":
        typed: object = await ctx.run("typed", lambda: Stock(item="tea", count=2), type_hint=Stock)
    else:
        typed = await ctx.run("typed", lambda: {"item": "tea"}, type_hint=Stock)
    return [type(untyped).__name__, type(typed).__name__]


KEPT: list[ObjectContext] = []


@things.handler()
async def uses_a_kept_context(ctx: ObjectContext) -> str:
    """Fails its first attempt, then uses that attempt's context in the second."""
    KEPT.append(ctx)
    if len(KEPT) == 1:
        raise RuntimeError("transient")
    if len(KEPT) == 2:
        await KEPT[0].get("n")  # the mistake under test: another attempt's context
    return "done"


@things.handler()
async def writes_inside_an_action(ctx: ObjectContext, how: str) -> str:
    """Uses its context inside a ctx.run action, on the loop or on a thread."""
    attempts[f"inside {how}"] = attempts.get(f"inside {how}", 0) + 1

    async def on_the_loop() -> str:
        ctx.set("charged", True)
        return "charged"

    def on_a_thread() -> str:
        ctx.set("charged", True)
        return "charged"

    charged = await ctx.run("charge", on_the_loop if how == "async" else on_a_thread)
    ctx.set("status", charged)
    return str(charged)


@things.handler()
async def selects_a_plain_awaitable(ctx: ObjectContext) -> str:
    attempts["select"] = attempts.get("select", 0) + 1
    name, _ = await select(nap=ctx.sleep(timedelta(hours=1)), t=asyncio.sleep(0.01))
    return name


@things.handler()
async def waits_with_a_number(ctx: ObjectContext, n: int) -> int:
    await ctx.sleep(timedelta(hours=1))
    return n


def thing(handler: str) -> Target:
    return Target(service="Things", key="k", handler=handler)


async def test_a_divergence_the_handler_catches_still_fails_the_invocation() -> None:
    """The handler caught ``NonDeterminismError`` with ``except Exception`` and completed,
    its later operations checked against the wrong journal entries."""
    harness = Harness([things])
    inv_id = harness.call(thing("swallows"), request_id="w")
    await until(lambda: bool(harness.processor.invocations[inv_id].journal))
    inv = harness.processor.invocations[inv_id]
    # The journal recorded something else at entry 0: the replay diverges there.
    inv.journal[0] = Entry(kind="run", name="other", done=True, value=1)
    inv.close()
    harness.processor.attempts.run(inv)
    await until(lambda: "w" in harness.responses())
    failure = harness.responses()["w"].failure
    assert failure is not None, "the handler's own outcome was taken"
    assert failure.code == 500
    assert "non-deterministic handler: journal entry 0" in failure.message


async def test_an_action_awaited_after_a_caught_divergence_does_not_run() -> None:
    LATE["runs"] = 0
    harness = Harness([things])
    inv_id = harness.call(thing("runs_after_divergence"), request_id="late")
    await until(lambda: len(harness.processor.invocations[inv_id].journal) == 2)
    inv = harness.processor.invocations[inv_id]
    inv.journal[1] = Entry(kind="run", name="other", done=True, value=1)  # not the sleep
    inv.close()
    harness.processor.attempts.run(inv)
    await until(lambda: "late" in harness.responses())
    failure = harness.responses()["late"].failure
    assert failure is not None
    assert failure.code == 500
    assert LATE["runs"] == 0, "the action ran after the divergence"


async def test_an_attempt_that_uses_an_earlier_attempt_s_context_is_retried() -> None:
    """``InvocationClosed`` from the earlier context left the attempt's task as it is: the
    invocation stayed running with no task, and its key locked, until the partition moved."""
    KEPT.clear()
    harness = Harness([things])
    harness.call(thing("uses_a_kept_context"), request_id="kept")
    harness.call(thing("runs_typed"), "fits", request_id="after")  # queued behind it
    await until(lambda: {"kept", "after"} <= set(harness.responses()))
    assert harness.responses()["kept"].value == "done"
    assert len(KEPT) == 3, "not retried after the earlier context's error"


async def test_the_context_used_inside_a_run_action_is_a_terminal_failure() -> None:
    """It was taken: the write happened once and was journaled after the run's entry, and a
    replay (which skips the action) diverged there, failing the invocation with a 500 that
    named no mistake, after the fact."""
    harness = Harness([things])
    for how in ("async", "sync"):
        harness.call(thing("writes_inside_an_action"), how, request_id=how)
    await until(lambda: {"async", "sync"} <= set(harness.responses()))
    for how in ("async", "sync"):
        failure = harness.responses()[how].failure
        assert failure is not None, f"{how}: taken"
        assert failure.code == 500
        assert "inside the action of ctx.run('charge')" in failure.message, failure
        assert attempts[f"inside {how}"] == 1, f"{how}: retried"
    state = harness.processor.store.state_of(ObjectKey("Things", "k"))
    assert state == {}, "a write inside an action was kept"


async def test_a_call_target_no_record_can_carry_is_its_400_on_the_first_attempt() -> None:
    harness = Harness([things, plain])
    hows = {
        "long key": "key",
        "bad name": "service",
        "no handler": "name",
        "object as service": "use ctx.object()",
        "service as object": "use ctx.service_send()",
        # Retried as the AttributeError they raised, until the invocation paused.
        "sleep in seconds": "a sleep must be a datetime.timedelta, not int",
        "delay in seconds": "the delay of Things/k/swallows must be a datetime.timedelta",
        "timeout in seconds": "must be a datetime.timedelta, not float",
    }
    for how in hows:
        harness.call(thing("calls_badly"), how, request_id=how)
    await until(lambda: set(hows) <= set(harness.responses()))
    # A handler of another kind made a record that reached no handler (a dead letter) or
    # was refused at its callee, long after the call was taken.
    for how, said in hows.items():
        failure = harness.responses()[how].failure
        assert failure is not None, how
        assert (failure.code, said in failure.message) == (400, True), failure
        assert attempts[how] == 1, f"{how}: retried"


async def test_a_select_of_what_is_not_durable_is_a_terminal_failure() -> None:
    """A branch other than the first was awaited as it was: an ``asyncio.sleep`` won in
    memory, but a suspension drops it, and the select then waited on its other branches
    for good (a replay could not take its branch either)."""
    harness = Harness([things])
    harness.call(thing("selects_a_plain_awaitable"), request_id="select")
    await until(lambda: "select" in harness.responses())
    failure = harness.responses()["select"].failure
    assert failure is not None, harness.responses()["select"]
    assert failure.code == 500
    assert "'t' is a coroutine" in failure.message
    assert attempts["select"] == 1, "retried"


async def test_an_input_refused_before_a_replay_is_its_400_not_a_divergence() -> None:
    """The handler was never called, and its journal counted as not replayed to its end:
    a 500 "non-deterministic" for an input its (upgraded) model refuses."""
    harness = Harness([things])
    inv_id = harness.call(thing("waits_with_a_number"), 1, request_id="n")
    await until(lambda: bool(harness.processor.invocations[inv_id].journal))
    inv = harness.processor.invocations[inv_id]
    inv.meta.argument = "one"  # as a new model of the input would refuse the old one
    inv.close()
    harness.processor.attempts.run(inv)
    await until(lambda: "n" in harness.responses())
    failure = harness.responses()["n"].failure
    assert failure is not None
    assert failure.code == 400, failure


async def test_the_key_of_a_service_is_a_terminal_failure() -> None:
    harness = Harness([plain])
    harness.call(Target(service="Plain", handler="wants_key"), request_id="key")
    await until(lambda: "key" in harness.responses())
    failure = harness.responses()["key"].failure
    assert failure is not None
    assert (failure.code, "services have no key" in failure.message) == (500, True)
    assert attempts["key"] == 1, "retried"


async def test_a_run_result_comes_back_as_json_or_as_the_type_it_was_asked_for() -> None:
    harness = Harness([things])
    harness.call(thing("runs_typed"), "fits", request_id="fits")
    await until(lambda: "fits" in harness.responses())
    assert harness.responses()["fits"].value == ["dict", "Stock"]

    harness.call(thing("runs_typed"), "misfits", request_id="misfits")
    await until(lambda: "misfits" in harness.responses())
    failure = harness.responses()["misfits"].failure
    assert failure is not None
    assert failure.code == 500
    assert "result of ctx.run('typed')" in failure.message
    await settle()
