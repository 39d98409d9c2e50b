"""Durable combinators over calls, timers and promises, replayed deterministically."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from handlers.context import DurableFuture


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
    first = next(iter(futures.values()))
    if not isinstance(first, Combinable):
        raise TypeError("select takes futures from a Kourier context")
    return await first._kourier_select(futures)


async def gather(*futures: DurableFuture[Any]) -> list[Any]:
    """Wait for all ``futures``, in order; their results in that order. A failure is
    raised when it is reached: once every future before it has completed (a ``ctx.run``
    action starts at its await, so one after another; use ``select`` to race them)."""
    return [await future for future in futures]
