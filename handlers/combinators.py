"""Durable combinators over calls, timers and promises, replayed deterministically."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any

from handlers.context import DurableFuture
from handlers.exceptions import TerminalError


class Combinable(ABC):
    """Implemented by the runtime's futures so that ``select`` and ``gather`` can journal
    which future completed first and replay that choice."""

    @abstractmethod
    async def _kourier_select(self, futures: dict[str, DurableFuture[Any]]) -> tuple[str, Any]: ...


async def select(**futures: DurableFuture[Any]) -> tuple[str, Any]:
    """Wait for the first of ``futures`` to complete: ``(name, result)``.

    The choice is journaled, so a replay takes the same branch.
    """
    if not futures:
        raise ValueError("select needs at least one future")
    for name, future in futures.items():
        if not isinstance(future, Combinable):
            # Not durable (asyncio.sleep, a task): a suspension would drop it, and the
            # select would wait for good on the others; a replay could not take its branch.
            for other in futures.values():
                if inspect.iscoroutine(other):
                    other.close()  # never to be awaited: no "never awaited" warning
            raise TerminalError(
                f"select takes futures from a Kourier context (a call, ctx.sleep, ctx.run, a "
                f"promise); {name!r} is a {type(future).__name__}",
                500,
            )
    first = next(iter(futures.values()))
    assert isinstance(first, Combinable)  # as every one is
    return await first._kourier_select(futures)


async def gather(*futures: DurableFuture[Any]) -> list[Any]:
    """Wait for all ``futures``, in order; their results in that order. A failure is
    raised when it is reached: once every future before it has completed (a ``ctx.run``
    action starts at its await, so one after another; use ``select`` to race them)."""
    return [await future for future in futures]
