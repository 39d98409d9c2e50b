"""The README's examples: a greeter service, a counter object, a chain of calls, a booking
that compensates when cancelled, and a workflow.

Run them with ``kourier dev examples.quickstart``.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

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
)

greeter = Service("Greeter")


@greeter.handler()
async def greet(ctx: Context, name: str) -> str:
    if not name:
        raise TerminalError("name must not be empty", status_code=400)
    return f"Hello {name}"


counter = VirtualObject("Counter")


@counter.handler()
async def add(ctx: ObjectContext, n: int) -> int:
    value: int = (await ctx.get("count") or 0) + n
    ctx.set("count", value)
    return value


@counter.handler(kind="shared")
async def get(ctx: ObjectSharedContext) -> int:
    value: int = await ctx.get("count") or 0
    return value


@counter.handler()
async def reset(ctx: ObjectContext) -> None:
    ctx.clear_all()


class Transfer(BaseModel):
    source: str
    target: str
    amount: int


bank = Service("Bank")


@bank.handler()
async def transfer(ctx: Context, move: Transfer) -> dict[str, int]:
    """A chain of calls: take from one counter, count the transfer, give to the other."""
    left = await ctx.object(add, move.source).request(-move.amount)
    ctx.object_send(add, "audit").send(1)  # one-way: counts transfers
    right = await ctx.object(add, move.target).request(move.amount)
    return {move.source: left, move.target: right}


booking = VirtualObject("Booking")


@booking.handler()
async def hold(ctx: ObjectContext, seconds: float) -> str:
    """Hold a seat for a while (a durable timer), then confirm; release it if cancelled."""
    ctx.set("status", "held")
    try:
        await ctx.sleep(timedelta(seconds=seconds))
    except TerminalError:
        ctx.set("status", "released")  # compensation: runs when the hold is cancelled
        raise
    ctx.set("status", "confirmed")
    return "confirmed"


@booking.handler(kind="shared")
async def status(ctx: ObjectSharedContext) -> str | None:
    value: str | None = await ctx.get("status")
    return value


signup = Workflow("Signup")


@signup.main()
async def run(ctx: WorkflowContext, email: str) -> bool:
    ctx.set("email", email)
    secret = await ctx.promise("email-link").value()
    return bool(secret == "ok")


@signup.handler()
async def click(ctx: WorkflowSharedContext, secret: str) -> None:
    await ctx.promise("email-link").resolve(secret)


SERVICES = [greeter, counter, bank, booking, signup]
