"""Handlers the benchmark runs."""

from __future__ import annotations

import time

from handlers import Context, ObjectContext, ObjectSharedContext, Service, VirtualObject

meter = VirtualObject("Meter")


@meter.handler()
async def add(ctx: ObjectContext, n: int) -> int:
    value: int = (await ctx.get("count") or 0) + n
    ctx.set("count", value)
    return value


@meter.handler(kind="shared")
async def count(ctx: ObjectSharedContext) -> int:
    value: int = await ctx.get("count") or 0
    return value


echo = Service("Echo")


@echo.handler()
async def echo_value(ctx: Context, value: object) -> object:
    return value


chain = Service("Chain")


@chain.handler()
async def bump(ctx: Context, key: str) -> int:
    result: int = await ctx.object(add, key).request(1)
    return result


lateness = VirtualObject("Lateness")


@lateness.handler()
async def record(ctx: ObjectContext, due: float) -> None:
    """How late a delayed send ran: now minus the due time it carries."""
    values: list[float] = await ctx.get("values") or []
    values.append(time.time() - due)
    ctx.set("values", values)


@lateness.handler(kind="shared")
async def values(ctx: ObjectSharedContext) -> list[float]:
    found: list[float] = await ctx.get("values") or []
    return found


SERVICES = [meter, echo, chain, lateness]
