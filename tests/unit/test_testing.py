"""``streams.testing.Harness``: users' handlers tested without Kafka, on a clock moved by hand."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
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
from streams.testing import Harness

counter = VirtualObject("Counter")


@counter.handler()
async def add(ctx: ObjectContext, n: int) -> int:
    value: int = (await ctx.get("count") or 0) + n
    ctx.set("count", value)
    return value


@counter.handler(kind="shared")
async def current(ctx: ObjectSharedContext) -> int:
    value: int = await ctx.get("count") or 0
    return value


@counter.handler()
async def add_later(ctx: ObjectContext, hours: int) -> str:
    """Sleeps (a durable timer), adds one, sleeps again, adds one more."""
    await ctx.sleep(timedelta(hours=hours))
    await add(ctx, 1)
    await ctx.sleep(timedelta(hours=hours))
    await add(ctx, 1)
    return "done"


greeter = Service("Greeter")


@greeter.handler()
async def greet(ctx: Context, name: str) -> str:
    visits: int = await ctx.object(add, name).request(1)
    if name == "nobody":
        raise TerminalError("nobody is not welcome", 403)
    return f"hello {name}, visit {visits}"


signup = Workflow("Signup")


@signup.main()
async def run(ctx: WorkflowContext, email: str) -> str:
    secret: str = await ctx.promise("link").value()
    return f"{email} verified with {secret}"


@signup.handler()
async def click(ctx: WorkflowSharedContext, secret: str) -> None:
    await ctx.promise("link").resolve(secret)


SERVICES = [counter, greeter, signup]


async def test_calls_between_handlers_and_state() -> None:
    async with Harness(SERVICES) as h:
        assert await h.call(greet, "ada") == "hello ada, visit 1"
        assert await h.call(greet, "ada") == "hello ada, visit 2"
        assert await h.call(current, key="ada") == 2
        assert h.state("Counter", "ada") == {"count": 2}
        assert await h.call("Counter/current", key="bob") == 0, "by name, too"


tags = VirtualObject("Tags")


@tags.handler()
async def tag(ctx: ObjectContext, name: str) -> None:
    names: dict[str, list[str]] = await ctx.get("names") or {"all": []}
    names["all"].append(name)
    ctx.set("names", names)


async def test_state_is_a_copy_down_to_nested_values() -> None:
    async with Harness([tags]) as h:
        await h.call(tag, "red", key="t")
        seen = h.state("Tags", "t")
        seen["names"]["all"].append("changed by the test")
        assert h.state("Tags", "t") == {"names": {"all": ["red"]}}, "the stored state changed"


async def test_a_terminal_error_reaches_the_caller() -> None:
    async with Harness(SERVICES) as h:
        with pytest.raises(TerminalError) as failure:
            await h.call(greet, "nobody")
        assert (failure.value.status_code, failure.value.message) == (403, "nobody is not welcome")
        assert h.state("Counter", "nobody") == {"count": 1}, "the call before it stands"


async def test_sends_once_per_idempotency_key() -> None:
    async with Harness(SERVICES) as h:
        first = h.send(add, 5, key="k", idempotency_key="order-1")
        again = h.send(add, 5, key="k", idempotency_key="order-1")
        await h.settle()
        assert first == again
        assert h.outcome(first) == 5
        assert h.state("Counter", "k") == {"count": 5}


async def test_an_idempotency_key_is_free_again_once_the_clock_passes_its_retention() -> None:
    """Retention was judged by the wall clock while due times went by the harness's, so no
    ``advance`` could end an idempotency key's retention (24 h by default)."""
    async with Harness(SERVICES) as h:
        first = h.send(add, 5, key="r", idempotency_key="order-2")
        await h.settle()
        await h.advance(timedelta(hours=23))
        assert h.send(add, 5, key="r", idempotency_key="order-2") == first
        await h.advance(timedelta(hours=2))
        h.send(add, 5, key="r", idempotency_key="order-2")
        await h.settle()
        assert h.state("Counter", "r") == {"count": 10}


async def test_a_delayed_send_runs_when_the_clock_is_advanced() -> None:
    async with Harness(SERVICES) as h:
        sent = h.send(add, 1, key="d", delay=timedelta(hours=2))
        await h.advance(timedelta(hours=1))
        assert h.status(sent) == "scheduled"
        assert h.state("Counter", "d") == {}
        await h.advance(timedelta(hours=1))
        assert h.state("Counter", "d") == {"count": 1}


@counter.handler()
async def add_in_an_hour(ctx: ObjectContext, n: int) -> None:
    ctx.object_send(add, ctx.key).send(n, delay=timedelta(hours=1))


async def test_a_delay_shorter_than_the_time_advanced_still_waits() -> None:
    """Due times counted from the wall clock, while the engine compared them with the
    harness's: after an advance of two hours, a send delayed by one ran at once."""
    async with Harness(SERVICES) as h:
        await h.advance(timedelta(hours=2))
        h.send(add, 1, key="late", delay=timedelta(hours=1))
        h.send(add_in_an_hour, 10, key="late")
        await h.settle()
        assert h.state("Counter", "late") == {}, "a delayed send ran before it was due"
        await h.advance(timedelta(minutes=59))
        assert h.state("Counter", "late") == {}
        await h.advance(timedelta(minutes=1))
        assert h.state("Counter", "late") == {"count": 11}


@counter.handler()
async def add_looked_up(ctx: ObjectContext) -> int:
    def look_up() -> int:  # a blocking client's call: it runs on a thread
        time.sleep(0.05)
        return 5

    return await add(ctx, await ctx.run("look up", look_up))


async def test_settle_waits_for_an_action_on_a_thread() -> None:
    """Turns of the event loop alone left a synchronous ``ctx.run`` action running."""
    async with Harness(SERVICES) as h:
        h.send(add_looked_up, key="slow")
        await h.settle()
        assert h.state("Counter", "slow") == {"count": 5}


GATE: dict[str, asyncio.Event] = {}


@counter.handler()
async def add_when_let(ctx: ObjectContext) -> int:
    async def let_in() -> int:  # an async action: it runs on the loop
        await GATE["open"].wait()
        return 2

    return await add(ctx, await ctx.run("let in", let_in))


@counter.handler()
async def add_when_let_by_a_plain_function(ctx: ObjectContext) -> int:
    async def let_in() -> int:
        await GATE["open"].wait()
        return 3

    def start() -> Awaitable[int]:  # a plain function: what it returns is awaited on the loop
        return let_in()

    return await add(ctx, await ctx.run("let in", start))


@pytest.mark.parametrize(
    ("handler", "added"), [(add_when_let, 2), (add_when_let_by_a_plain_function, 3)]
)
async def test_settle_does_not_wait_for_an_async_action_the_test_lets_go(
    handler: Callable[..., Any], added: int
) -> None:
    """An ``async`` action, or what a plain function's action returns to be awaited on the
    loop, may wait for what the test does next."""
    async with Harness(SERVICES) as h:
        GATE["open"] = asyncio.Event()
        h.send(handler, key="gate")
        await h.settle(within=1.0)  # returns: the action waits for the test
        assert h.state("Counter", "gate") == {}
        GATE["open"].set()
        await h.settle()
        assert h.state("Counter", "gate") == {"count": added}


async def test_sleeps_fall_due_one_after_the_other_within_one_advance() -> None:
    async with Harness(SERVICES) as h:
        sleeper = h.send(add_later, 3, key="s")
        await h.settle()
        assert h.status(sleeper) == "suspended", "waits suspended, and resumes by replay"
        await h.advance(timedelta(hours=3))
        assert h.state("Counter", "s") == {"count": 1}
        await h.advance(timedelta(hours=2, minutes=59))
        assert h.state("Counter", "s") == {"count": 1}, "not a minute early"
        await h.advance(timedelta(minutes=1))
        assert h.state("Counter", "s") == {"count": 2}
        again = h.send(add_later, 1, key="t")
        await h.advance(timedelta(hours=2))
        assert h.state("Counter", "t") == {"count": 2}, "both sleeps in one advance"
        assert h.status(again) is None, "completed, and not retained"


async def test_cancel_reaches_a_sleeping_handler() -> None:
    async with Harness(SERVICES) as h:
        sleeper = h.send(add_later, 1, key="c", idempotency_key="keep-it")
        await h.settle()
        h.cancel(sleeper)
        await h.settle()
        with pytest.raises(TerminalError) as failure:
            h.outcome(sleeper)
        assert failure.value.status_code == 409
        assert h.state("Counter", "c") == {}
        assert await h.call(add, 1, key="c") == 1, "the key is free again"


async def test_a_workflow_waits_for_its_promise() -> None:
    async with Harness(SERVICES) as h:
        run_id = h.send(run, "ada@example.com", key="w1")
        await h.settle()
        assert h.status(run_id) == "suspended"
        await h.call(click, "s3cret", key="w1")
        await h.settle()
        assert h.outcome(run_id) == "ada@example.com verified with s3cret"
        with pytest.raises(TerminalError) as again:
            await h.call(run, "ada@example.com", key="w1")
        assert again.value.status_code == 409, "a workflow runs once per id"


async def test_the_readme_example() -> None:
    from examples.quickstart import greet, greeter

    async with Harness([greeter]) as h:
        assert await h.call(greet, "Ada") == "Hello Ada"
        later = h.send(greet, "Bob", delay=timedelta(hours=1))
        assert h.status(later) == "scheduled"
        await h.advance(timedelta(hours=1))  # due now: it has run
        assert h.status(later) is None, "completed (and, without a key, not retained)"


fickle = VirtualObject("Fickle")
FICKLE_RUNS = {"n": 0}


@fickle.handler()
async def takes_another_path(ctx: ObjectContext) -> str:
    """Not deterministic: its first run sleeps, any later one (a replay) runs an action."""
    FICKLE_RUNS["n"] += 1
    if FICKLE_RUNS["n"] == 1:
        await ctx.sleep(timedelta(hours=1))
    else:
        await ctx.run("elsewhere", lambda: None)
    return "done"


@pytest.mark.parametrize("replay_every_wait", [True, False])
async def test_a_handler_that_replays_differently_fails_in_the_harness(
    replay_every_wait: bool,
) -> None:
    """A worker suspends a handler after its inactivity timeout and resumes it by replay,
    where this one fails; the harness kept it in memory, and it passed."""
    FICKLE_RUNS["n"] = 0
    async with Harness([fickle], replay_every_wait=replay_every_wait) as h:
        called = asyncio.ensure_future(h.call(takes_another_path, key="f"))
        await h.settle()
        await h.advance(timedelta(hours=1))
        if not replay_every_wait:  # as on a worker in the first minute of its wait
            assert await called == "done"
            return
        with pytest.raises(TerminalError) as failure:
            await called
        assert failure.value.status_code == 500
        assert "non-deterministic" in failure.value.message


@fickle.handler()
async def stops_short(ctx: ObjectContext, how: str) -> str:
    """Its first run adds one and sleeps; its replay returns (or fails) before either."""
    FICKLE_RUNS["n"] += 1
    if FICKLE_RUNS["n"] > 1:
        if how == "fails":
            raise TerminalError("given up", 409)
        return "short"
    await add(ctx, 1)
    await ctx.sleep(timedelta(hours=1))
    return "long"


@pytest.mark.parametrize("how", ["returns", "fails"])
async def test_a_replay_that_ends_short_of_its_journal_is_non_deterministic(how: str) -> None:
    """A replay that met no mismatched step, only fewer of them, completed with its own
    outcome: the state its first run wrote stayed, under a result that says it never did."""
    FICKLE_RUNS["n"] = 0
    async with Harness([fickle]) as h:
        called = asyncio.ensure_future(h.call(stops_short, how, key="short"))
        await h.settle()
        await h.advance(timedelta(hours=1))
        with pytest.raises(TerminalError) as failure:
            await called
        assert failure.value.status_code == 500
        assert "ended after 0 of the 3 entries of its journal" in failure.value.message


@fickle.handler()
async def many_steps(ctx: ObjectContext) -> None:
    """Forty actions, then a wait: its resumption replays all forty first."""
    for step in range(40):
        await ctx.run(f"step {step}", lambda: None)
    await ctx.sleep(timedelta(hours=1))
    ctx.set("done", True)


async def test_advance_waits_for_a_long_replay_to_end() -> None:
    """``settle`` gave handlers 50 loop turns, fewer than a replay of forty actions takes:
    the test looked at the state before the resumed handler had written it."""
    async with Harness([fickle]) as h:
        h.send(many_steps, key="long")
        await h.settle()
        await h.advance(timedelta(hours=1))
        assert h.state("Fickle", "long") == {"done": True}


async def test_an_action_counts_as_running_until_its_task_has_the_outcome() -> None:
    """The pool's thread hands an action's outcome to the loop in callbacks, and may be held
    up between them (here by a callback of the test's): the count of running actions
    dropped in the first, and ``settle`` that looked then found no action and no handler
    busy (the action's task still waiting), and returned before the handler went on; a
    test then read the state before the handler wrote it."""
    import threading

    from streams.testing import _Threads

    threads = _Threads()
    let_go = threading.Event()

    async def act() -> bool:  # as run_in_executor does, in the action's own task
        ran = threads.submit(let_go.wait, 10)
        ran.add_done_callback(lambda _: time.sleep(0.3))  # the pool's thread held up
        return await asyncio.wrap_future(ran)

    acting = asyncio.create_task(act())
    try:
        await asyncio.sleep(0)
        assert threads.running
        let_go.set()
        async with asyncio.timeout(10):
            while not acting.done():
                assert threads.running, "counted done before the action's task had the outcome"
                await asyncio.sleep(0.005)
        assert acting.result() is True
        assert not threads.running
    finally:
        let_go.set()
        threads.shutdown(wait=True)


quotes = Service("Quotes")


@quotes.handler()
async def quote(ctx: Context) -> str:
    async def fetch() -> str:
        return "42"

    price = ctx.run("fetch", fetch)
    name, value = await select(timeout=ctx.sleep(timedelta(minutes=5)), price=price)
    return f"{name}: {value}"


@quotes.handler()
async def relay(ctx: Context) -> str:
    reply = ctx.service("Quotes", "echo").request("x")
    name, value = await select(timeout=ctx.sleep(timedelta(minutes=5)), reply=reply)
    return f"{name}: {value}"


@quotes.handler()
async def echo(ctx: Context, x: str) -> str:
    return x


@pytest.mark.parametrize(("handler", "answer"), [(quote, "price: 42"), (relay, "reply: x")])
async def test_a_select_whose_branch_ended_takes_it_and_is_not_suspended(
    handler: Callable[..., Awaitable[str]], answer: str
) -> None:
    """With the harness's inactivity of 0, the open sleep's timer suspended the handler in
    the loop turn after the run (or, on the replay, the call) had ended, before the handler
    woke to take that branch: it waited out the sleep, then took the branch named first."""
    async with Harness([quotes]) as h:
        assert await asyncio.wait_for(h.call(handler), 10) == answer
