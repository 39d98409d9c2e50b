"""Bounded waiting for integration tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def poll_until(
    fetch: Callable[[], Awaitable[T]], expected: T, seconds: float, what: str
) -> T:
    """Call ``fetch()`` until it returns ``expected``; fail with the last value seen after
    ``seconds``. For outcomes that arrive eventually by design (one-way sends)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    last: T | None = None
    while loop.time() < deadline:
        last = await fetch()
        if last == expected:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: expected {expected!r}, last saw {last!r} after {seconds}s")
