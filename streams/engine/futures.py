"""The futures a handler's context hands out: what ``await`` on a call, a timer, a promise or
a ``ctx.run`` waits for, and what ``handlers.select`` races.

Every future reads its journal entry: a replay finds the outcome recorded and returns it
without waiting. The context (``streams.engine.context``) makes them; this module needs
of it only what :class:`Journaled` names.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Protocol, TypeVar

from handlers.combinators import Combinable
from handlers.context import CallFuture, DurableFuture, SendHandle
from handlers.exceptions import TerminalError
from handlers.serde import Serde
from streams.engine.invocation import Invocation
from streams.engine.runs import ended

T = TypeVar("T")


class Journaled(Protocol):
    """The context a future belongs to."""

    invocation: Invocation

    def check_current(self) -> None:
        """Raises when the attempt the context served has ended."""

    def failed_for_now(self, error: Exception) -> bool:
        """A ``ctx.run``'s error that is retried reached the handler; whether one had."""

    async def select(self, futures: dict[str, DurableFuture[Any]]) -> tuple[str, Any]:
        """The first of ``futures`` to complete, journaled."""


class RunFailed(BaseException):
    """What the context raises once a ``ctx.run``'s error that is retried has reached the
    handler (``InvocationContext.failed``) and the handler goes on to another operation: the
    error is not journaled, so a replay, whose action may succeed, would not meet it. A
    ``BaseException``, which an ``except Exception`` retry loop does not catch: the attempt
    fails and is retried."""

    def __init__(self, error: Exception) -> None:
        super().__init__(f"ctx.run failed, and is retried: {error!r}")


async def awaited(future: DurableFuture[T]) -> T:
    return await future


def can_win(task: asyncio.Task[Any]) -> bool:
    """Whether a branch of a select that is done may be journaled its winner (which also
    marks its exception as seen)."""
    return not task.cancelled() and isinstance(task.exception(), TerminalError | None)


class Selectable(Combinable):
    """Futures of one context can be raced with ``handlers.select``."""

    _ctx: Journaled

    async def _kourier_select(self, futures: dict[str, DurableFuture[Any]]) -> tuple[str, Any]:
        return await self._ctx.select(futures)


class EntryFuture(Selectable, CallFuture[Any]):
    """Awaits journal entry ``index`` of an invocation: its value as journaled, or loaded
    by ``serde`` when the handler gave a type (a value that does not fit it is a
    :class:`TerminalError` 500 named ``what``, on every attempt)."""

    def __init__(
        self, ctx: Journaled, index: int, serde: Serde | None = None, what: str = ""
    ) -> None:
        self._ctx = ctx
        self._index = index
        self._serde = serde
        self._what = what

    def __await__(self) -> Generator[Any, None, Any]:
        waited = self._ctx.invocation.wait_for(self._index)
        return (waited if self._serde is None else self._loaded(waited)).__await__()

    async def _loaded(self, waited: Coroutine[Any, Any, Any]) -> Any:
        assert self._serde is not None
        value = await waited
        return None if value is None else self._serde.load(value, self._what, status_code=500)

    async def invocation_id(self) -> str:
        callee = self._ctx.invocation.journal[self._index].callee
        assert callee is not None
        return callee


class RunFuture(Selectable, DurableFuture[T]):
    """A ``ctx.run``. Its action starts at the first await, as a task of its own (kept in
    ``Invocation.runs``), and runs once: every later await, in this attempt or the next,
    and a ``select`` that it lost, wait for the same outcome. A cancel of an awaiter (a
    timeout of the handler's, a task group) stops the wait, not the action: only the
    invocation's close and its outcome stop it (:meth:`Invocation.stop_runs`)."""

    def __init__(
        self, ctx: Journaled, index: int, make: Callable[[], Coroutine[Any, Any, T]]
    ) -> None:
        self._ctx = ctx
        self._index = index
        self._make = make
        self._task: asyncio.Task[T] | None = None

    def task(self) -> asyncio.Task[T]:
        if self._task is None or self._task.cancelled():
            runs, index = self._ctx.invocation.runs, self._index
            task = runs.get(index)
            if task is None or task.cancelled():
                # Code left over from an attempt that ended, or after the outcome, starts
                # no action (as it makes no other journal entry).
                self._ctx.check_current()
                task = asyncio.ensure_future(self._make())
                runs[index] = task
                task.add_done_callback(lambda done: ended(runs, index, done))
            self._task = task
        return self._task

    def __await__(self) -> Generator[Any, None, T]:
        try:
            return (yield from asyncio.shield(self.task()).__await__())
        except TerminalError:
            raise
        except Exception as error:  # retried: not journaled, so no operation may follow it
            if self._ctx.failed_for_now(error):  # awaited again after that, in a loop say
                raise RunFailed(error) from error
            raise


class SentHandle(SendHandle):
    def __init__(self, callee: str) -> None:
        self._callee = callee

    async def invocation_id(self) -> str:
        return self._callee
