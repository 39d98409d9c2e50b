"""``ctx.run`` inside races and replays, state read with a type, and handler definitions the
SDK refuses: each behaves the same on every attempt. Driven with the engine's harness, no
Kafka."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import Any

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
    WorkflowSharedContext,
    select,
)
from streams.engine.invocation import InvocationClosed
from streams.wire.records import Target
from tests.unit.harness import Harness, until

QUICK = RetryPolicy(initial=timedelta(milliseconds=1), max_attempts=3)
races = VirtualObject("Races", retry=QUICK)
plain = Service("Plain", retry=QUICK)
counts: dict[str, int] = {}
seen: list[str] = []
#: Lets the synchronous action of ``lose_then_await`` finish (set by its handler).
release = threading.Event()
#: Lets the action of ``lose_then_fail`` finish (set by its handler's second attempt).
gate = asyncio.Event()


def _count(name: str) -> int:
    counts[name] = counts.get(name, 0) + 1
    return counts[name]


@races.handler()
async def fail_then_hang(ctx: ObjectContext, cancelled: bool) -> list[Any]:
    async def fetch() -> str:
        if _count("fetch") == 1:
            if cancelled:  # a library's own cancel, met by the action
                raise asyncio.CancelledError
            raise ConnectionError("refused, for now")
        try:
            await asyncio.Event().wait()  # the service is down from now on
        finally:
            seen.append("fetch stopped")
        return "never"

    name, value = await select(r=ctx.run("fetch", fetch), t=ctx.sleep(timedelta(milliseconds=30)))
    return [name, value]


@races.handler()
async def lose_then_await(ctx: ObjectContext) -> list[Any]:
    def charge() -> str:
        _count("charge")
        if not release.wait(5):
            raise TimeoutError("the test never let the action finish")
        return "charged"

    charged = ctx.run("charge", charge)
    name, _ = await select(done=charged, t=ctx.sleep(timedelta(milliseconds=10)))
    release.set()  # the action that lost is still running: let it end
    return [name, await charged]


@races.handler()
async def lose_then_fail(ctx: ObjectContext) -> list[Any]:
    async def charge() -> str:
        _count("charge")
        await asyncio.wait_for(gate.wait(), 5)
        return "charged"

    charged = ctx.run("charge", charge)
    name, _ = await select(done=charged, t=ctx.sleep(timedelta(milliseconds=10)))
    if _count("lose_then_fail") == 1:
        raise RuntimeError("retried while the action goes on")
    gate.set()
    return [name, await charged]


sleepy = VirtualObject("Sleepy", inactivity_timeout=timedelta(milliseconds=20))


@sleepy.handler()
async def lose_then_wait_long(ctx: ObjectContext) -> None:
    async def slow() -> str:
        await asyncio.sleep(0.2)
        return "done"

    await select(done=ctx.run("slow", slow), t=ctx.sleep(timedelta(milliseconds=1)))
    await ctx.sleep(timedelta(hours=1))


patient = VirtualObject(
    "PatientRaces", retry=RetryPolicy(initial=timedelta(milliseconds=100), max_attempts=3)
)


@patient.handler()
async def fails_fast_against_a_timer(ctx: ObjectContext) -> list[Any]:
    async def probe() -> str:
        _count("probe")
        raise ConnectionError("the breaker is open")

    return list(await select(r=ctx.run("probe", probe), t=ctx.sleep(timedelta(milliseconds=1))))


@races.handler()
async def times_out_its_wait(ctx: ObjectContext) -> list[Any]:
    async def charge() -> str:
        _count("charge")
        await asyncio.sleep(0.05)
        return "charged"

    charged = ctx.run("charge", charge)
    try:
        await asyncio.wait_for(charged, 0.001)  # the handler's own bound on the wait
    except TimeoutError:
        seen.append("timed out")
    return [await charged]


#: The task a handler left behind, awaiting a run after its handler returned.
left_behind: list[asyncio.Task[Any]] = []


@races.handler()
async def leaves_a_task(ctx: ObjectContext) -> str:
    async def late() -> None:
        _count("late")

    future = ctx.run("late", late)

    async def afterwards() -> None:
        await asyncio.sleep(0.01)
        await future

    left_behind.append(asyncio.get_running_loop().create_task(afterwards()))
    return "returned"


blank = Workflow("Blank")


@blank.main()
async def wait_for_blank(ctx: WorkflowContext) -> str:
    value: str = await ctx.promise("").value()
    return value


@blank.handler()
async def resolve_blank(ctx: WorkflowSharedContext, value: str) -> None:
    await ctx.promise("").resolve(value)


@races.handler()
async def await_twice(ctx: ObjectContext) -> list[str]:
    async def once() -> str:
        _count("once")
        await asyncio.sleep(0.01)
        return "done"

    future = ctx.run("once", once)
    first, second = asyncio.ensure_future(future), asyncio.ensure_future(future)  # two waits
    return [await first, await second]


class Declined(TerminalError):
    """A user's own terminal error."""


@races.handler()
async def catch_a_subclass(ctx: ObjectContext) -> list[str]:
    def charge() -> None:
        raise Declined("card declined", 402)

    try:
        await ctx.run("charge", charge)
    except Declined:
        seen.append("Declined")
    except TerminalError as error:
        seen.append(f"TerminalError {error.status_code} {error.message}")
    if _count("catch_a_subclass") == 1:
        raise RuntimeError("retried: the next attempt replays the run")
    return seen


@races.handler()
async def store_text(ctx: ObjectContext) -> None:
    ctx.set("n", "abc")


@races.handler()
async def read_as_int(ctx: ObjectContext) -> int:
    _count("read_as_int")
    value: int = await ctx.get("n", int)
    return value


defaults = Service("Defaults")  # names no retry policy: the worker's applies
own = Service("Own", retry=RetryPolicy(initial=timedelta(milliseconds=1), max_attempts=3))


@defaults.handler()
async def fails(ctx: Context) -> None:
    _count("defaults")
    raise RuntimeError("again")


@defaults.handler(retry=RetryPolicy(initial=timedelta(milliseconds=1), max_attempts=4))
async def fails_its_own_way(ctx: Context) -> None:
    _count("handler")
    raise RuntimeError("again")


@own.handler()
async def fails_too(ctx: Context) -> None:
    _count("own")
    raise RuntimeError("again")


@plain.handler()
async def reads_state(ctx: Context) -> Any:
    _count("reads_state")
    return await ctx.get("n")  # type: ignore[attr-defined]  # a service's context has none


@races.handler()
async def catch_for_now(ctx: ObjectContext, then: str) -> str:
    """Catches an error of a ctx.run that is retried, and goes on."""

    def fetch() -> str:
        if _count("fetch") == 1:
            raise ConnectionError("refused, for now")
        return "data"

    while True:
        try:
            if then == "select":
                _, found = await select(r=ctx.run("fetch", fetch))
            else:
                found = await ctx.run("fetch", fetch)
            break
        except ConnectionError:
            found = "fallback"
            if then != "loop":  # a retry loop that never yields: it ran the loop for good
                break
    if then == "swallow":  # and whatever the context raises after it
        try:
            ctx.set("found", found)
        except Exception:
            seen.append("swallowed")
    elif then == "gather":  # RunFailed too, as a result: the write it refused never happened

        async def write() -> None:
            ctx.set("found", found)

        (refused,) = await asyncio.gather(write(), return_exceptions=True)
        if refused is not None:
            return "fallback, and a write that was refused"
    elif then == "terminal" and found == "fallback":
        raise TerminalError("no data", 503)
    elif then != "return":
        ctx.set("found", found)
    return str(found)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    counts.clear()
    seen.clear()
    release.clear()
    gate.clear()
    left_behind.clear()


def _target(handler: str, key: str = "k") -> Target:
    return Target(service="Races", key=key, handler=handler)


@pytest.mark.parametrize("cancelled", [False, True])
async def test_a_run_that_fails_for_now_does_not_win_a_select(cancelled: bool) -> None:
    """A retryable failure of a ctx.run (a cancel it met too) used to be journaled as the
    select's winner: every later attempt waited on the run alone, and its timer was out of
    the race for good."""
    h = Harness([races])
    h.call(_target("fail_then_hang"), cancelled, request_id="race")
    await until(lambda: "race" in h.responses())
    assert h.responses()["race"].value == ["t", None]
    assert counts["fetch"] == 2, "the first attempt's run failed, the retry raced again"
    await until(lambda: seen == ["fetch stopped"])  # the outcome stopped the run that lost


@pytest.mark.parametrize("then", ["go on", "swallow", "select", "loop", "gather"])
async def test_no_operation_follows_a_run_that_failed_for_now(then: str) -> None:
    """A ctx.run's error other than TerminalError is not journaled. A handler that caught it
    and went on journaled what it did next after the unfinished run: a replay (after a
    suspension, a hand-over) ran the action again, which may succeed, and met entries the
    other branch had made (a state write it skipped, by name). The next operation now ends
    the attempt, which is retried, and an ``except Exception`` does not keep it going."""
    h = Harness([races])
    h.call(_target("catch_for_now", key=then), then, request_id="caught")
    await until(lambda: "caught" in h.responses())
    assert h.responses()["caught"].value == "data"
    assert counts["fetch"] == 2
    assert h.processor.store.state[("Races", then)] == {"found": "data"}
    assert seen == []


@pytest.mark.parametrize("then", ["return", "terminal"])
async def test_a_run_that_failed_for_now_may_still_end_the_attempt(then: str) -> None:
    """Returning, or raising a TerminalError, right after the error journals nothing after
    the run: the outcome is written with the rest of the attempt, once."""
    h = Harness([races])
    h.call(_target("catch_for_now", key=then), then, request_id="ended")
    await until(lambda: "ended" in h.responses())
    response = h.responses()["ended"]
    if then == "return":
        assert response.value == "fallback"
    else:
        assert response.failure is not None
        assert (response.failure.code, response.failure.message) == (503, "no data")
    assert counts["fetch"] == 1


async def test_a_run_that_lost_a_select_runs_once_and_is_awaited_after() -> None:
    """Awaiting a ctx.run again used to start its action again, while the first (a thread,
    which a lost select cannot stop) still ran: the action ran twice without any crash."""
    h = Harness([races])
    inv_id = h.call(_target("lose_then_await"), request_id="late")
    await until(lambda: "late" in h.responses())
    assert h.responses()["late"].value == ["t", "charged"]
    assert counts["charge"] == 1
    await until(lambda: inv_id not in h.processor.invocations
                or not h.processor.invocations[inv_id].actions)  # fmt: skip


async def test_a_run_still_going_when_its_attempt_failed_is_awaited_by_the_next() -> None:
    """The next attempt made a task of its own for the same journal entry while the first
    attempt's still ran: the action ran twice at once."""
    h = Harness([races])
    h.call(_target("lose_then_fail"), request_id="retried")
    await until(lambda: "retried" in h.responses())
    assert h.responses()["retried"].value == ["t", "charged"]
    assert counts == {"charge": 1, "lose_then_fail": 2}


async def test_a_run_awaited_twice_at_once_runs_once() -> None:
    h = Harness([races])
    h.call(_target("await_twice"), request_id="twice")
    await until(lambda: "twice" in h.responses())
    assert h.responses()["twice"].value == ["done", "done"]
    assert counts["once"] == 1


async def test_a_terminal_error_from_a_run_reaches_the_handler_alike_on_every_attempt() -> None:
    """The first run raised the action's own subclass, a replay a plain TerminalError (the
    journal keeps the code and the message): ``except Declined`` caught it only once."""
    h = Harness([races])
    h.call(_target("catch_a_subclass"), request_id="sub")
    await until(lambda: "sub" in h.responses())
    assert seen == ["TerminalError 402 card declined"] * 2
    assert h.responses()["sub"].value == seen


async def test_state_that_does_not_fit_its_type_hint_fails_the_call_at_once() -> None:
    """A ValidationError was retried: the same stored value failed every attempt until the
    invocation paused, its key held and its caller never answered."""
    h = Harness([races])
    h.call(_target("store_text"), request_id="store")
    h.call(_target("read_as_int"), request_id="read")
    h.call(_target("store_text"), request_id="after")
    await until(lambda: {"read", "after"} <= h.responses().keys())
    failure = h.responses()["read"].failure
    assert failure is not None
    assert failure.code == 500
    assert failure.message.startswith("invalid state 'n': "), failure.message
    assert counts["read_as_int"] == 1, "terminal: not retried"


async def test_a_service_handler_that_reads_state_fails_with_a_clear_error() -> None:
    h = Harness([plain])
    h.call(Target(service="Plain", handler="reads_state"), request_id="svc")
    await until(lambda: "svc" in h.responses())
    failure = h.responses()["svc"].failure
    assert failure is not None
    assert failure.code == 500
    assert "services have no state" in failure.message
    assert counts["reads_state"] == 1


def test_a_workflow_has_one_main_handler() -> None:
    """A second ``main`` shared the first one's invocation id (a workflow's run id names no
    handler), so calling it answered with the first one's outcome."""
    signup = Workflow("TwoMains")

    @signup.main()
    async def run(ctx: WorkflowContext) -> None: ...

    with pytest.raises(ValueError, match="already has its main handler, 'run'"):

        @signup.main("start")
        async def start(ctx: WorkflowContext) -> None: ...


async def test_handlers_that_name_no_retry_policy_follow_the_workers() -> None:
    """The handler's own policy first, then its service's, then the worker's default
    (``KOURIER_RETRY_*``, DESIGN.md §3: per handler and globally)."""
    worker_default = RetryPolicy(initial=timedelta(milliseconds=1), max_attempts=2)
    h = Harness([defaults, own], retry=worker_default)
    ids = {
        name: h.call(Target(service=service, handler=name), request_id=name)
        for service, name in (("Defaults", "fails"), ("Defaults", "fails_its_own_way"),
                              ("Own", "fails_too"))
    }  # fmt: skip
    invocations = h.processor.invocations
    await until(lambda: all(invocations[i].meta.status == "paused" for i in ids.values()))
    assert counts == {"defaults": 2, "handler": 4, "own": 3}


async def test_a_handler_waiting_long_is_suspended_once_a_run_that_lost_ends() -> None:
    """Its suspension was put off while the run went on, and nothing looked again when it
    ended: the invocation kept its task for the whole hour."""
    h = Harness([sleepy])
    inv_id = h.call(Target(service="Sleepy", key="k", handler="lose_then_wait_long"))
    inv = h.processor.invocations
    await until(lambda: inv[inv_id].meta.status == "suspended")
    assert [entry.kind for entry in inv[inv_id].journal] == ["run", "sleep", "select", "sleep"]
    assert inv[inv_id].journal[0].done, "the run that lost was journaled before"


async def test_a_run_that_failed_loses_to_a_branch_done_in_the_same_turn() -> None:
    """On the retry, the timer was done already and the run failed at its first step: both
    were done at once, the run, named first, was taken, and every attempt failed so."""
    h = Harness([patient])
    h.call(Target(service="PatientRaces", key="k", handler="fails_fast_against_a_timer"),
           request_id="breaker")  # fmt: skip
    await until(lambda: "breaker" in h.responses())
    assert h.responses()["breaker"].value == ["t", None]
    assert counts["probe"] == 2


async def test_a_wait_on_a_run_that_times_out_leaves_the_action_running() -> None:
    """The handler's timeout cancelled the action's task itself, and the next await ran the
    action again."""
    h = Harness([races])
    h.call(_target("times_out_its_wait"), request_id="bounded")
    await until(lambda: "bounded" in h.responses())
    assert h.responses()["bounded"].value == ["charged"]
    assert seen == ["timed out"]
    assert counts["charge"] == 1


async def test_a_run_awaited_after_its_handler_returned_does_not_start() -> None:
    """A task the handler left behind started the action after the call was answered."""
    h = Harness([races])
    h.call(_target("leaves_a_task"), request_id="left")
    await until(lambda: "left" in h.responses() and left_behind and left_behind[0].done())
    assert isinstance(left_behind[0].exception(), InvocationClosed)
    assert "late" not in counts


async def test_a_promise_named_by_the_empty_string_is_waited_for_after_a_restore() -> None:
    """A new owner registered the waits of the promises a restored run awaited only for
    names that are true as a bool: a run waiting on ``ctx.promise("")`` waited for good."""
    h = Harness([blank])
    h.call(Target(service="Blank", key="w", handler="run"), request_id="run")
    await until(lambda: bool(h.processor.promises.waiters))
    h.hand_over()
    await until(lambda: bool(h.processor.promises.waiters))
    h.call(Target(service="Blank", key="w", handler="resolve_blank"), "ok", request_id="set")
    await until(lambda: "run" in h.responses())
    assert h.responses()["run"].value == "ok"
