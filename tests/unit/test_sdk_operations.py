"""The context operations of DESIGN §3 that no other test drives: clearing state, rejecting a
promise, ``gather``, the attempt number, an idempotency key's scope and a completed
retention. Driven with the engine's harness, no Kafka."""

from __future__ import annotations

from datetime import date, timedelta

from pydantic import BaseModel

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
    gather,
)
from streams.wire import ids
from streams.wire.records import AttachRequest, Invoke, Target
from tests.unit.harness import Harness, until

drawer = VirtualObject("Drawer")
booking = Workflow("Booking")
tools = Service("Tools", retry=RetryPolicy(initial=timedelta(milliseconds=1), max_attempts=5))
kept = Service("Kept", completed_retention=timedelta(seconds=30))


@drawer.handler()
async def fill(ctx: ObjectContext, names: list[str]) -> list[str]:
    for name in names:
        ctx.set(name, 1)
    return sorted(await ctx.state_keys())


@drawer.handler()
async def empty(ctx: ObjectContext, name: str | None) -> list[str]:
    if name is None:
        ctx.clear_all()
    else:
        ctx.clear(name)
    return sorted(await ctx.state_keys())


@booking.main()
async def run(ctx: WorkflowContext) -> str:
    try:
        return str(await ctx.promise("approval").value())
    except TerminalError as error:
        return f"rejected {error.status_code}: {error.message}"


@booking.handler()
async def decline(ctx: WorkflowSharedContext, why: str) -> None:
    await ctx.promise("approval").reject(why)


@booking.handler()
async def decline_with(ctx: WorkflowSharedContext, why: int) -> None:
    await ctx.promise("approval").reject(why)  # not text: its str(), as a TerminalError's


@booking.handler()
async def look(ctx: WorkflowSharedContext) -> object:
    return await ctx.promise("approval").peek()


class Approval(BaseModel):
    by: str
    on: date


typed = Workflow("Typed")


@typed.main()
async def approve(ctx: WorkflowContext) -> str:
    approval = await ctx.promise("approval", Approval).value()
    seen = await ctx.promise("approval", Approval).peek()
    assert seen == approval
    try:
        await ctx.promise("count", int).value()
    except TerminalError as error:
        return f"{approval.by} on {approval.on.isoformat()} ({error.status_code}: {error.message})"
    return "a count that is not a number was taken"


@typed.handler()
async def settle(ctx: WorkflowSharedContext, by: str) -> None:
    await ctx.promise("approval", Approval).resolve(Approval(by=by, on=date(2026, 12, 7)))
    await ctx.promise("count").resolve("many")


@tools.handler()
async def both(ctx: Context) -> list[object]:
    return await gather(ctx.run("one", lambda: 1), ctx.run("two", lambda: "two"))


@tools.handler()
async def fails_once(ctx: Context) -> int:
    attempt = ctx.request().attempt
    if attempt == 1:
        raise RuntimeError("the first attempt fails")
    return attempt


@tools.handler()
async def named(ctx: Context) -> str:
    return ctx.invocation_id


@kept.handler()
async def keep(ctx: Context, n: int) -> int:
    return n * 2


async def test_clear_and_clear_all_remove_state() -> None:
    h = Harness([drawer])
    h.call(Target(service="Drawer", key="k", handler="fill"), ["a", "b", "c"], request_id="fill")
    h.call(Target(service="Drawer", key="k", handler="empty"), "a", request_id="one")
    h.call(Target(service="Drawer", key="k", handler="empty"), None, request_id="all")
    await until(lambda: {"fill", "one", "all"} <= set(h.responses()))
    answers = h.responses()
    assert answers["fill"].value == ["a", "b", "c"]
    assert answers["one"].value == ["b", "c"]
    assert answers["all"].value == []
    assert not h.processor.store.state.get(("Drawer", "k"))


async def test_a_rejected_promise_fails_its_waiter_and_peek_raises_it_too() -> None:
    h = Harness([booking])
    h.call(Target(service="Booking", key="b1", handler="run"), request_id="run")
    h.call(Target(service="Booking", key="b1", handler="decline"), "full", request_id="no")
    await until(lambda: {"run", "no"} <= set(h.responses()))
    assert h.responses()["no"].failure is None
    assert h.responses()["run"].value == "rejected 500: full"
    assert h.responses()["run"].invocation_id == ids.workflow_run_id("Booking", "b1")
    h.call(Target(service="Booking", key="b1", handler="look"), request_id="look")
    await until(lambda: "look" in h.responses())
    failure = h.responses()["look"].failure
    assert failure is not None
    assert "full" in failure.message


async def test_a_promise_rejected_with_what_is_not_text_fails_its_waiter_with_its_text() -> None:
    """The failure refused what was not a string, and the rejecting handler was retried."""
    h = Harness([booking])
    h.call(Target(service="Booking", key="b2", handler="run"), request_id="run")
    h.call(Target(service="Booking", key="b2", handler="decline_with"), 404, request_id="no")
    await until(lambda: {"run", "no"} <= set(h.responses()))
    assert h.responses()["no"].failure is None
    assert h.responses()["run"].value == "rejected 500: 404"


async def test_a_promise_given_a_type_is_read_as_that_type() -> None:
    """``ctx.promise(name, Model)`` resolves with a model (journaled as JSON) and reads it
    back as the model, in ``value()`` and ``peek()``; a value that does not fit the type
    is the reader's TerminalError 500."""
    h = Harness([typed])
    h.call(Target(service="Typed", key="t1", handler="run"), request_id="run")
    h.call(Target(service="Typed", key="t1", handler="settle"), "ada", request_id="settle")
    await until(lambda: {"run", "settle"} <= set(h.responses()))
    assert h.responses()["settle"].failure is None
    answer = h.responses()["run"]
    assert answer.failure is None, answer.failure
    assert answer.value.startswith("ada on 2026-12-07 (500: invalid promise 'count': "), (
        answer.value
    )


async def test_gather_returns_the_results_in_order() -> None:
    h = Harness([tools])
    h.call(Target(service="Tools", handler="both"), request_id="both")
    await until(lambda: "both" in h.responses())
    assert h.responses()["both"].value == [1, "two"]


async def test_the_attempt_number_counts_from_one() -> None:
    h = Harness([tools])
    h.call(Target(service="Tools", handler="fails_once"), request_id="twice")
    await until(lambda: "twice" in h.responses())
    assert h.responses()["twice"].value == 2


async def test_an_idempotency_key_is_scoped_by_service_key_and_handler() -> None:
    """DESIGN §5: scope = target (service, key if any, handler) + key. The same key to
    another handler, object key or service is another invocation."""
    h = Harness([drawer, tools])
    targets = {
        "fill-a": Target(service="Drawer", key="a", handler="fill"),
        "fill-b": Target(service="Drawer", key="b", handler="fill"),
        "empty-a": Target(service="Drawer", key="a", handler="empty"),
        "tools": Target(service="Tools", handler="named"),
    }
    for name, target in targets.items():
        argument = None if name == "tools" else (["x"] if name.startswith("fill") else "x")
        for again in ("", "-again"):
            h.send(Invoke(target=target, argument=argument, idempotency_key="order-17",
                          request_id=name + again))  # fmt: skip
    await until(lambda: len(h.responses()) == 8)
    answers = h.responses()
    firsts = {answers[name].invocation_id for name in targets}
    assert len(firsts) == 4, "one key named two targets' invocations as one"
    for name in targets:
        assert answers[name + "-again"].invocation_id == answers[name].invocation_id
        assert answers[name + "-again"].value == answers[name].value
    assert answers["tools"].value == answers["tools"].invocation_id


async def test_a_completed_retention_keeps_an_outcome_to_attach_to() -> None:
    """DESIGN §5: another invocation's outcome is retrievable only if its service sets a
    completed retention."""
    h = Harness([kept, tools])
    kept_id = h.call(Target(service="Kept", handler="keep"), 21, request_id="keep")
    named_id = h.call(Target(service="Tools", handler="named"), request_id="named")
    await until(lambda: {"keep", "named"} <= set(h.responses()))
    h.send(AttachRequest(request_id="attach-kept", invocation_id=kept_id))
    h.send(AttachRequest(request_id="attach-named", invocation_id=named_id))
    await until(lambda: {"attach-kept", "attach-named"} <= set(h.responses()))
    assert h.responses()["attach-kept"].value == 42
    failure = h.responses()["attach-named"].failure
    assert failure is not None
    assert failure.code == 404
    assert "completed_retention" in failure.message
