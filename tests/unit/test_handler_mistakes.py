"""Mistakes in handler code meet the handler, not the engine: each fails the invocation
(or its attempt) where it was made, and never leaves a key locked by a dead task, crashes
the worker or loses a send. Driven with the engine's harness, no Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from datetime import timedelta

import pytest

from handlers import (
    Context,
    ObjectContext,
    RetryPolicy,
    Service,
    TerminalError,
    VirtualObject,
    Workflow,
    WorkflowContext,
    select,
)
from streams.wire import ids
from streams.wire.records import Cancel, Target
from tests.unit.harness import Harness, until

ONCE = RetryPolicy(initial=timedelta(milliseconds=1), max_attempts=2)
objects = VirtualObject("Mistakes", retry=ONCE)
services = Service("Sender", retry=ONCE)
ran = {"action": 0, "send": 0, "moved": 0}


class Outcome(BaseException):
    """A library's own ``BaseException`` (gevent's ``Timeout``, a test framework's)."""


@objects.handler()
async def wrapped(ctx: ObjectContext) -> str:
    try:
        int("x")
    except ValueError as error:
        raise TerminalError(error, 400) from None  # type: ignore[arg-type]  # not a str
    return "never"


@objects.handler()
async def wrapped_in_run(ctx: ObjectContext) -> str:
    def action() -> str:
        ran["action"] += 1
        raise TerminalError({"why": "no stock"}, 409)  # type: ignore[arg-type]

    try:
        return await ctx.run("reserve", action)
    except TerminalError as error:
        return f"handled: {error.message}"


@objects.handler()
async def odd_name(ctx: ObjectContext) -> str:
    ctx.set(uuid.UUID(int=1), 1)  # type: ignore[arg-type]
    return "set"


@objects.handler()
async def moved(ctx: ObjectContext) -> str:
    ran["moved"] += 1
    raise TerminalError("moved to k2", 302)


@objects.handler()
async def none_name(ctx: ObjectContext, kind: str) -> str:
    """``None`` for a name: it journaled, and ``set`` wrote nothing, ``get`` read nothing."""
    if kind == "set":
        ctx.set(None, 1)  # type: ignore[arg-type]
    elif kind == "clear":
        ctx.clear(None)  # type: ignore[arg-type]
    elif kind == "get":
        await ctx.get(None)  # type: ignore[arg-type]
    else:
        await ctx.run(None, lambda: 1)  # type: ignore[arg-type]
    return kind


@objects.handler()
async def surrogate_name(ctx: ObjectContext, kind: str) -> str:
    """A name with a lone surrogate (``os.fsdecode`` of a bad byte makes one)."""
    name = "bad\udc80name"
    if kind == "set":
        ctx.set(name, 1)
    elif kind == "run":
        await ctx.run(name, lambda: 1)
    else:
        await ctx.get(name)
    await ctx.sleep(timedelta(hours=1))  # its journal is written while it waits
    return kind


@objects.handler()
async def oversized(ctx: ObjectContext, kind: str) -> str:
    """A name longer than a record's key may be, or keys that together are too large."""
    if kind == "name":
        ctx.set("n" * 5000, 1)
    else:
        for i in range(1000):
            ctx.set(f"{i:04d}" + "k" * 996, i)
        await ctx.state_keys()
    return kind


@objects.handler()
async def waits_for_itself(ctx: ObjectContext) -> str:
    try:
        await ctx.attach_invocation(ctx.invocation_id)
    except TerminalError as error:
        return f"refused {error.status_code}"
    return "attached"


@objects.handler()
async def sleeps_below_zero(ctx: ObjectContext) -> str:
    await ctx.sleep(timedelta(days=-1_000_000))
    ctx.object_send("Mistakes", "later", "put").send(1, delay=timedelta.min)
    return "slept"


@objects.handler()
async def times_out_below_zero(ctx: ObjectContext) -> str:
    try:
        await ctx.object("Mistakes", "other", "put").request(1, timeout=timedelta(days=-(10**6)))
    except TerminalError as error:
        return f"timed out {error.status_code}"
    return "answered"


LATE: list[str] = []


@objects.handler()
async def leaves_a_task(ctx: ObjectContext) -> str:
    """Starts a task that goes on using the context after the handler has returned."""

    async def later() -> None:
        await asyncio.sleep(0.01)
        try:
            ctx.set("late", 1)
        except Exception as error:  # the test reads what it was
            LATE.append(type(error).__name__)
        else:
            LATE.append("written")

    TASKS.add(asyncio.get_running_loop().create_task(later()))
    return "returned"


TASKS: set[asyncio.Task[None]] = set()
STRAYED = {"attempts": 0}


@objects.handler()
async def strays_then_loses_a_select(ctx: ObjectContext) -> str:
    """Its first attempt leaves a task awaiting a sleep and fails; the next races that
    sleep against a short one, loses it, and waits in another sleep, where a cancel lands."""
    long = ctx.sleep(timedelta(hours=1))
    STRAYED["attempts"] += 1
    if STRAYED["attempts"] == 1:

        async def stray() -> None:
            await long

        TASKS.add(asyncio.get_running_loop().create_task(stray()))
        await asyncio.sleep(0)
        raise RuntimeError("the first attempt fails")
    await select(long=long, short=ctx.sleep(timedelta(milliseconds=1)))
    try:
        await ctx.sleep(timedelta(hours=1))
    except TerminalError as error:
        ctx.set("cancelled", error.status_code)
        raise
    return "slept"


@objects.handler()
async def selects_among_many(ctx: ObjectContext) -> str:
    """A select whose branch names are 4,800 characters together: its entry is small."""
    branches = {f"branch_{i:04d}": ctx.sleep(timedelta(milliseconds=1)) for i in range(400)}
    name, _ = await select(**branches)
    return "won" if name.startswith("branch_") else name


@objects.handler()
async def awaits_twice(ctx: ObjectContext, lose_one: bool) -> list[str]:
    """Two tasks of the handler await one sleep; with ``lose_one``, a third that awaits it
    too is cancelled first (as a select that lost its branch is)."""
    nap = ctx.sleep(timedelta(milliseconds=10))

    async def wait() -> str:
        await nap
        return "woke"

    if lose_one:
        lost = asyncio.ensure_future(wait())
        await asyncio.sleep(0)
        lost.cancel()
    return list(await asyncio.gather(wait(), wait()))


selfish = Workflow("Selfish")
nameless = Workflow("Nameless", retry=ONCE)


@nameless.main()
async def resolve_nameless(ctx: WorkflowContext) -> str:
    await ctx.promise(None).resolve(1)  # type: ignore[arg-type]
    return "resolved"


@selfish.main()
async def run_again(ctx: WorkflowContext) -> str:
    try:
        await ctx.workflow("Selfish", ctx.key, "run").request()
    except TerminalError as error:
        return f"refused {error.status_code}"
    return "ran"


@objects.handler()
async def base_exception(ctx: ObjectContext) -> str:
    raise Outcome("a library's outcome")


@objects.handler()
async def exits_itself(ctx: ObjectContext) -> str:
    sys.exit(2)


@objects.handler()
async def exits(ctx: ObjectContext) -> str:
    return await ctx.run("leave", lambda: sys.exit(3))  # type: ignore[no-any-return]


@objects.handler()
async def exits_async(ctx: ObjectContext) -> str:
    async def leave() -> str:
        sys.exit(5)

    return await ctx.run("leave", leave)


@objects.handler()
async def put(ctx: ObjectContext, n: int) -> int:
    return n


@services.handler()
async def sends_with_an_empty_key(ctx: Context) -> str:
    ran["send"] += 1
    ctx.service_send("Sender", "echo").send(1, idempotency_key="")
    return "sent"


@services.handler()
async def calls_with_a_long_key(ctx: Context) -> int:
    return await ctx.service("Sender", "echo").request(1, idempotency_key="k" * 2000)


@services.handler()
async def calls_with_a_surrogate_key(ctx: Context) -> int:
    return await ctx.service("Sender", "echo").request(1, idempotency_key="k\udc80")


@services.handler()
async def echo(ctx: Context, x: int) -> int:
    return x


@objects.handler()
async def surrogate_error(ctx: ObjectContext, kind: str) -> str:
    """An error whose text holds a lone surrogate: a terminal one a ``ctx.run`` action
    raises (journaled in its entry), or any other (kept as the attempt's last error)."""

    def fails() -> None:
        raise TerminalError("no file bad\udc80name", 404)

    if kind == "terminal":
        with contextlib.suppress(TerminalError):
            await ctx.run("open", fails)
        await ctx.sleep(timedelta(hours=1))  # its journal is written while it waits
    raise RuntimeError("no file bad\udc80name")


def mistake(handler: str) -> Target:
    return Target(service="Mistakes", key="k", handler=handler)


async def test_a_terminal_error_whose_message_is_no_string_fails_with_its_text() -> None:
    """Its ``Failure`` refused the message: raised inside the ``except`` that caught the
    terminal error, it left the invocation running with a dead task and the key locked."""
    harness = Harness([objects])
    harness.call(mistake("wrapped"), request_id="wrapped")
    harness.call(mistake("wrapped_in_run"), request_id="in-run")
    harness.call(mistake("put"), 5, request_id="next")
    await until(lambda: {"wrapped", "in-run", "next"} <= set(harness.responses()))
    answers = harness.responses()
    failure = answers["wrapped"].failure
    assert failure is not None
    assert (failure.code, failure.message) == (
        400, "invalid literal for int() with base 10: 'x'"
    )  # fmt: skip
    assert answers["in-run"].value == "handled: {'why': 'no stock'}"
    assert ran["action"] == 1, "a terminal error in ctx.run was retried"
    assert answers["next"].value == 5, "the key stayed locked"


async def test_a_state_name_that_is_no_string_fails_the_attempt_not_the_worker() -> None:
    """``ctx.set(uuid, 1)`` journaled and answered, then the changelog record could not be
    written: the snapshot raised, which ended the worker, and the next owner likewise."""
    harness = Harness([objects])
    inv_id = harness.call(mistake("odd_name"), request_id="odd")
    await until(lambda: harness.processor.invocations[inv_id].meta.status == "paused")
    assert "name of a set must be a string, not UUID" in (
        harness.processor.invocations[inv_id].meta.last_error or ""
    )
    harness.processor.flush()  # raised TypeError
    assert "odd" not in harness.responses()


async def test_a_terminal_error_with_a_code_no_failure_has_fails_as_500_not_retried() -> None:
    """``TerminalError("moved", 302)`` raised ValueError: an error like any other, retried
    until the invocation was paused with its key held."""
    harness = Harness([objects])
    harness.call(mistake("moved"), request_id="moved")
    await until(lambda: "moved" in harness.responses())
    failure = harness.responses()["moved"].failure
    assert failure is not None
    assert (failure.code, failure.message) == (
        500, "moved to k2 (status_code 302 is not 400-599: sent as 500)"
    )  # fmt: skip
    assert ran["moved"] == 1


@pytest.mark.parametrize("kind", ["set", "clear", "get", "run"])
async def test_none_for_a_name_fails_the_attempt_with_its_reason(kind: str) -> None:
    """``ctx.set(None, 1)`` answered as if written, and nothing was: a name is a string."""
    harness = Harness([objects])
    inv_id = harness.call(mistake("none_name"), kind, request_id=kind)
    await until(lambda: harness.processor.invocations[inv_id].meta.status == "paused")
    meta = harness.processor.invocations[inv_id].meta
    assert f"name of a {kind} must be a string, not NoneType" in (meta.last_error or "")
    assert kind not in harness.responses()


async def test_none_for_a_promise_name_fails_the_attempt_with_its_reason() -> None:
    """A promise named ``None`` resolved, and was lost when its workflow was restored."""
    harness = Harness([nameless])
    harness.call(Target(service="Nameless", key="w", handler="run"), request_id="w")
    inv_id = ids.workflow_run_id("Nameless", "w")
    await until(lambda: harness.processor.invocations[inv_id].meta.status == "paused")
    meta = harness.processor.invocations[inv_id].meta
    assert "name of a promise_resolve must be a string, not NoneType" in (meta.last_error or "")


@pytest.mark.parametrize("kind", ["set", "run", "get"])
async def test_a_name_with_a_lone_surrogate_fails_the_attempt_not_the_worker(kind: str) -> None:
    """The name was checked to be a string only: it journaled, and its journal entry could
    not be written (no JSON writer encodes a lone surrogate), so the snapshot raised, which
    ended the worker, and every next owner of the partition the same way."""
    harness = Harness([objects])
    inv_id = harness.call(mistake("surrogate_name"), kind, request_id=kind)

    def settled() -> bool:  # failed, or gone on to its sleep with the name journaled
        inv = harness.processor.invocations[inv_id]
        return inv.meta.status == "paused" or any(e.kind == "sleep" for e in inv.journal)

    await until(settled)
    harness.processor.flush()  # raised PydanticSerializationError
    meta = harness.processor.invocations[inv_id].meta
    assert meta.status == "paused"
    assert "lone UTF-16 surrogate" in (meta.last_error or "")


async def test_a_handlers_idempotency_key_with_a_lone_surrogate_is_its_400() -> None:
    """It was journaled, then its record could not be encoded: the call waited for good."""
    harness = Harness([services], loopback=True)
    target = Target(service="Sender", handler="calls_with_a_surrogate_key")
    harness.call(target, request_id="call")
    await until(lambda: "call" in harness.responses())
    failure = harness.responses()["call"].failure
    assert failure is not None
    assert failure.code == 400
    assert "lone UTF-16 surrogate" in failure.message


@pytest.mark.parametrize("kind", ["terminal", "other"])
async def test_an_error_whose_text_holds_a_lone_surrogate_is_written_escaped(kind: str) -> None:
    """Kept as it was, in a journal entry's failure or in the meta's last error, it could
    not be written: the snapshot raised, which ended the worker, and every next owner."""
    harness = Harness([objects])
    inv_id = harness.call(mistake("surrogate_error"), kind, request_id=kind)

    def written() -> bool:
        inv = harness.processor.invocations[inv_id]
        return inv.meta.status == "paused" or any(e.kind == "sleep" for e in inv.journal)

    await until(written)
    harness.processor.flush()  # raised PydanticSerializationError
    inv = harness.processor.invocations[inv_id]
    if kind == "terminal":
        failure = inv.journal[0].failure
        assert failure is not None
        assert failure.message == "no file bad\\udc80name"
    else:
        assert "no file bad\\udc80name" in (inv.meta.last_error or "")


@pytest.mark.parametrize(("kind", "code"), [("name", 400), ("keys", 413)])
async def test_a_name_or_keys_too_large_for_a_record_fail_the_invocation(
    kind: str, code: int
) -> None:
    """A name of any length was journaled, and a state record's key is the name: one over
    the broker's limit failed every commit of the worker, and again after its restart."""
    harness = Harness([objects])
    harness.call(mistake("oversized"), kind, request_id=kind)
    await until(lambda: kind in harness.responses())
    failure = harness.responses()[kind].failure
    assert failure is not None
    assert failure.code == code
    assert all(len(out.value or b"") < 1_000_000 for out in harness.processor.flush())


async def test_an_invocation_that_would_wait_for_itself_is_refused() -> None:
    """Attaching to itself, or a workflow's run calling its own run, waited for good with
    its key locked (no deadlock is reported for a cycle of one)."""
    harness = Harness([objects, selfish], loopback=True)
    harness.call(mistake("waits_for_itself"), request_id="attach")
    harness.call(Target(service="Selfish", key="w", handler="run"), request_id="run")
    await until(lambda: {"attach", "run"} <= set(harness.responses()))
    assert harness.responses()["attach"].value == "refused 400"
    assert harness.responses()["run"].value == "refused 400"


async def test_a_delay_below_zero_counts_as_none() -> None:
    """A sleep or delayed send far in the past was journaled, then its due time could not
    be written: the sleep waited for good on every retry, and the send was lost."""
    harness = Harness([objects], loopback=True)
    harness.call(mistake("sleeps_below_zero"), request_id="below")
    await until(lambda: "below" in harness.responses())
    assert harness.responses()["below"].value == "slept"
    await until(lambda: any(i["target"]["key"] == "later" for i in harness.invokes()))


async def test_a_context_used_after_its_attempt_ended_refuses() -> None:
    """A task the handler started went on writing through the context after the handler
    returned: the write took effect after the key was let go, beside the next call."""
    harness = Harness([objects])
    harness.call(mistake("leaves_a_task"), request_id="left")
    await until(lambda: "left" in harness.responses())
    await until(lambda: bool(LATE))
    assert LATE == ["InvocationClosed"]
    assert "late" not in harness.processor.store.state.get(("Mistakes", "k"), {})


@pytest.mark.parametrize("lose_one", [False, True])
async def test_two_tasks_awaiting_one_entry_both_wake(lose_one: bool) -> None:
    """The second await replaced the first's waiter: the first never woke, the handler hung
    with its key locked, and with no waiter left it never suspended either."""
    harness = Harness([objects])
    harness.call(mistake("awaits_twice"), lose_one, request_id="twice")
    await until(lambda: "twice" in harness.responses())
    assert harness.responses()["twice"].value == ["woke", "woke"]


async def test_a_task_of_an_earlier_attempt_leaves_a_lost_branch_behind_it() -> None:
    """Awaits were counted per entry: a task of a failed attempt still awaiting entry 0
    kept that count up, so the branch the next attempt lost stayed among its waits, and
    an operator's cancel was spent on it while the handler waited elsewhere for good."""
    harness = Harness([objects])
    inv_id = harness.call(mistake("strays_then_loses_a_select"), request_id="stray")
    inv = harness.processor.invocations[inv_id]

    def in_the_last_sleep() -> bool:  # after the select: entries 0 and 1 are its branches
        last = len(inv.journal) - 1
        return (
            STRAYED["attempts"] == 2
            and inv.journal[last].kind == "sleep"
            and last > 1
            and (last in inv.waiting)
        )

    await until(in_the_last_sleep)
    harness.send(Cancel(invocation_id=inv_id))
    await until(lambda: "stray" in harness.responses())
    failure = harness.responses()["stray"].failure
    assert failure is not None
    assert (failure.code, failure.message) == (409, "cancelled")


async def test_a_select_among_many_branches_is_no_name_too_long() -> None:
    harness = Harness([objects])
    harness.call(mistake("selects_among_many"), request_id="many")
    await until(lambda: "many" in harness.responses())
    assert harness.responses()["many"].value == "won"


async def test_a_call_timeout_below_zero_counts_as_none() -> None:
    """Its deadline's timer could not be written: the attempt failed, and its replay found
    the deadline journaled, made no timer, and the call waited with no deadline at all."""
    harness = Harness([objects])  # nobody answers the call: only its deadline can
    harness.call(mistake("times_out_below_zero"), request_id="timeout")
    await until(lambda: "timeout" in harness.responses())
    assert harness.responses()["timeout"].value == "timed out 408"


@pytest.mark.parametrize("handler", ["base_exception", "exits_itself", "exits", "exits_async"])
async def test_a_base_exception_of_a_handler_fails_its_attempt(handler: str) -> None:
    """Caught only as ``Exception``, it left the invocation running with no task (a
    library's), or ended the event loop (``SystemExit`` from an action's ``sys.exit``)."""
    harness = Harness([objects])
    inv_id = harness.call(mistake(handler), request_id=handler)
    await until(lambda: harness.processor.invocations[inv_id].meta.status == "paused")
    meta = harness.processor.invocations[inv_id].meta
    assert meta.attempt == 2
    expected = {"base_exception": "Outcome: a library's outcome", "exits_itself": "SystemExit: 2",
                "exits": "RuntimeError: the action raised SystemExit(3)",
                "exits_async": "RuntimeError: the action raised SystemExit(5)"}  # fmt: skip
    assert expected[handler] in (meta.last_error or "")


@objects.handler()
async def exits_in_a_select(ctx: ObjectContext) -> str:
    leaving = ctx.run("leave", lambda: sys.exit(4))
    waiting = ctx.sleep(timedelta(hours=1))
    await select(leaving=leaving, waiting=waiting)
    return "never"


async def test_an_action_that_exits_inside_a_select_fails_its_attempt_too() -> None:
    """``select`` awaits each branch in a task of its own, which asyncio lets a
    ``SystemExit`` out of, ending the event loop: the action's is turned into an error."""
    harness = Harness([objects])
    inv_id = harness.call(mistake("exits_in_a_select"), request_id="select")
    await until(lambda: harness.processor.invocations[inv_id].meta.status == "paused")
    meta = harness.processor.invocations[inv_id].meta
    assert "the action raised SystemExit(4)" in (meta.last_error or "")


async def test_a_handlers_idempotency_key_no_record_can_carry_is_its_400() -> None:
    """Journaled before the record was refused: a send was answered as sent and never
    made, and a call waited for good, its key locked."""
    harness = Harness([services], loopback=True)
    harness.call(Target(service="Sender", handler="sends_with_an_empty_key"), request_id="send")
    harness.call(Target(service="Sender", handler="calls_with_a_long_key"), request_id="call")
    await until(lambda: {"send", "call"} <= set(harness.responses()))
    answers = harness.responses()
    sent, called = answers["send"].failure, answers["call"].failure
    assert sent is not None
    assert called is not None
    assert (sent.code, called.code) == (400, 400)
    assert "idempotency key is empty" in sent.message
    assert "idempotency key of 2000 characters" in called.message
    assert ran["send"] == 1
    assert not [i for i in harness.invokes() if i["target"]["handler"] == "echo"]


def test_backing_off_forever_stays_at_the_longest_interval() -> None:
    """Past attempt 1,000 or so the growth was past a float's range and the back-off
    raised ``OverflowError``; past 52 with the defaults, past a timedelta's."""
    forever = RetryPolicy(max_attempts=None)
    assert forever.delay(52) == forever.delay(5_000) == timedelta(seconds=60)
    steep = RetryPolicy(factor=1000.0, max_interval=timedelta(milliseconds=2))
    assert steep.delay(400) == timedelta(milliseconds=2)
    assert forever.delay(1) == timedelta(milliseconds=50)


class Unprintable(Exception):
    """An error whose ``__str__`` raises (one that reads a response it never got)."""

    response = None

    def __str__(self) -> str:
        return f"{self.response.status}"  # type: ignore[attr-defined]


class Unreadable(TerminalError):
    """A ``TerminalError`` that set neither its message nor its status code."""

    def __init__(self) -> None:
        Exception.__init__(self, "no fields")


@objects.handler()
async def unprintable(ctx: ObjectContext) -> str:
    raise Unprintable


@objects.handler()
async def unreadable_terminal(ctx: ObjectContext) -> str:
    raise Unreadable


@objects.handler()
async def unreadable_in_run(ctx: ObjectContext) -> str:
    def action() -> str:
        raise Unreadable

    return await ctx.run("read", action)


async def test_an_error_that_cannot_be_described_still_ends_its_attempt() -> None:
    """Describing it raised inside the ``except`` that caught it: the attempt's task ended
    with the invocation running, nothing to retry or cancel it, and the key held for good."""
    harness = Harness([objects])
    failing = harness.call(mistake("unprintable"), request_id="unprintable")
    harness.call(mistake("unreadable_terminal"), request_id="terminal")
    harness.call(mistake("unreadable_in_run"), request_id="in-run")
    await until(lambda: harness.processor.invocations[failing].meta.status == "paused")
    meta = harness.processor.invocations[failing].meta
    assert meta.last_error == "Unprintable: (its message could not be read)"
    harness.send(Cancel(invocation_id=failing, request_id="cancel"))  # frees the key
    await until(lambda: {"terminal", "in-run"} <= set(harness.responses()))
    for request_id in ("terminal", "in-run"):  # a ctx.run action's was retried until paused
        failure = harness.responses()[request_id].failure
        assert failure is not None, request_id
        assert failure.code == 500, request_id
        assert "an unreadable TerminalError: Unreadable" in failure.message, request_id


ALWAYS = RetryPolicy(initial=timedelta(hours=1), max_attempts=None)
stubborn = VirtualObject("Stubborn", retry=ALWAYS)


@stubborn.handler()
async def fails_at_once(ctx: ObjectContext) -> None:
    raise RuntimeError("fails before any context operation")


@stubborn.handler()
async def counts(ctx: ObjectContext) -> int:
    return 1


async def test_a_cancel_of_an_invocation_backing_off_ends_it_at_once() -> None:
    """The cancel waited for the next attempt (a minute here), which failed before any
    context operation, where a cancel is met: it never took effect, and retrying for
    ever, the invocation held its key for good."""
    harness = Harness([stubborn])
    target = Target(service="Stubborn", key="k", handler="fails_at_once")
    inv_id = harness.call(target, request_id="stubborn")
    harness.call(Target(service="Stubborn", key="k", handler="counts"), request_id="next")
    table = harness.processor.invocations
    await until(lambda: table[inv_id].meta.status == "backing-off")
    harness.send(Cancel(invocation_id=inv_id, request_id="cancel"))
    await until(lambda: {"stubborn", "next"} <= set(harness.responses()), seconds=5.0)
    failure = harness.responses()["stubborn"].failure
    assert failure is not None
    assert failure.code == 409
    assert harness.responses()["next"].value == 1, "the key stayed held"


COMPENSATED: list[str] = []
CHARGING: dict[str, asyncio.Event] = {}


@stubborn.handler()
async def charges(ctx: ObjectContext) -> None:
    async def charge() -> None:
        CHARGING["started"].set()
        await CHARGING["fail"].wait()
        raise ConnectionError("the payment service went away")

    try:
        await ctx.run("charge", charge)
    except TerminalError:
        COMPENSATED.append(ctx.key)
        raise


async def test_a_cancel_that_comes_during_an_attempt_reaches_the_next_which_compensates() -> None:
    """A cancel that came while an action ran, which then failed, ended the invocation at
    once (409) without the handler seeing it: its compensation never ran."""
    CHARGING.update(started=asyncio.Event(), fail=asyncio.Event())
    harness = Harness([stubborn])
    inv_id = harness.call(Target(service="Stubborn", key="pay", handler="charges"), request_id="r")
    await asyncio.wait_for(CHARGING["started"].wait(), 5)
    harness.send(Cancel(invocation_id=inv_id, request_id="cancel"))
    await until(lambda: "cancel" in harness.responses())
    CHARGING["fail"].set()
    await until(lambda: "r" in harness.responses(), seconds=5.0)
    failure = harness.responses()["r"].failure
    assert failure is not None
    assert failure.code == 409
    assert COMPENSATED == ["pay"], "the handler never saw the cancel"
