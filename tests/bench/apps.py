"""Handlers the benchmark runs."""

from __future__ import annotations

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


SERVICES = [meter, echo, chain]
