"""``ctx.run``: performing an action and journaling its outcome.

Each run is a task of its own, one per journal entry (``Invocation.runs``; the future a
handler awaits is ``streams.engine.futures.RunFuture``). This module is what that task
runs: the action, on the event loop or on a thread of the run pool, then its outcome into
the journal, which every await of the entry and every replay then read.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, cast

from handlers.context import Action
from handlers.exceptions import TerminalError
from handlers.serde import Serde
from streams import tracing
from streams.engine.invocation import Invocation, outcome
from streams.engine.journal import CANCELLED
from streams.engine.values import failure_of, writable

#: The name of the ``ctx.run`` whose action runs in this context (its task, or the thread it
#: runs on), if any: the context refuses to be used there (``InvocationContext``). What an
#: action does with it would be done once, and its journal entries met by no replay, which
#: skips the action: the replay would diverge at the first of them.
IN_ACTION: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "kourier_in_action", default=None
)


async def run_entry(inv: Invocation, index: int, action: Action, serde: Serde | None = None) -> Any:
    """The outcome of run entry ``index`` of ``inv``: journaled already, or once
    ``action`` has run (a pending cancel fails it with 409 instead); loaded by ``serde``
    when the handler gave a type (a result that does not fit is its 500, on every run)."""
    entry = inv.journal[index]
    if not entry.done and inv.take_cancel():
        inv.complete_entry(index, failure=CANCELLED)
        entry = inv.journal[index]
    if not entry.done:
        loop = asyncio.get_running_loop()
        if inv.processor.handing_over:
            # Start no action that the partition's next owner would start again; the
            # close that ends the hand-over cancels this wait.
            await loop.create_future()
        # This task (its own, see RunFuture) ends once the action's outcome is journaled.
        this = asyncio.current_task()
        assert this is not None
        inv.actions.add(this)
        try:
            await _journal_action(inv, index, entry.name, action)
        finally:
            inv.actions.discard(this)
            if not inv.actions and inv.waiting:
                # A suspension put off while it ran (a run that lost a select ends
                # while the handler waits on something else): look again.
                inv.processor.waiting(inv)
        entry = inv.journal[index]
    value = outcome(entry)
    if serde is None:
        return value
    return serde.load(value, f"result of ctx.run({entry.name!r})", status_code=500)


def ended(runs: dict[int, asyncio.Task[Any]], index: int, task: asyncio.Task[Any]) -> None:
    """A run's task is done: no longer running, and its outcome seen (one that lost a
    select may end after the handler stopped waiting for it; what it journaled stays)."""
    if runs.get(index) is task:
        del runs[index]
    if not task.cancelled():
        task.exception()


async def _journal_action(inv: Invocation, index: int, name: str | None, action: Action) -> None:
    """Run the action of journal entry ``index`` and journal its outcome."""
    acting = IN_ACTION.set(name or "")  # this task's own context: the handler's is not changed
    try:
        with tracing.span(f"run {name}", attributes={"kourier.entry": index}):
            result = await _perform(action, inv.run_executor)
    except TerminalError as error:
        refused: TerminalError | None = error
    else:
        refused = None
    finally:  # before the journal is written, which may wake another attempt
        IN_ACTION.reset(acting)
    inv.check_open()
    if refused is not None:
        # Raised from the journal by run_entry, on this run as on a replay: a
        # TerminalError with this code and message, not the subclass the action raised.
        inv.complete_entry(index, failure=failure_of(refused))
        return
    try:
        value = writable(result, f"the result of ctx.run({name!r})")
    except TerminalError as error:  # journaled as the action's outcome: never rerun
        inv.complete_entry(index, failure=failure_of(error))
        return
    inv.complete_entry(index, value=value)


async def _perform(action: Action, executor: Executor | None) -> Any:
    """Run a ``ctx.run`` action: a coroutine function on the event loop, anything else on
    ``executor``'s threads, so that a blocking client library never stalls other handlers
    (what a plain function returns may still be awaitable, and is then awaited on the
    loop). A plain function has no running event loop: code that needs one is ``async``."""
    try:
        if _is_async(action):
            return await cast(Callable[[], Awaitable[Any]], action)()
        context = contextvars.copy_context()
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(executor, context.run, action)
        if inspect.isawaitable(result):
            return await result
        return result
    except (SystemExit, KeyboardInterrupt) as exc:  # the action's own: no signal lands there
        # Out of a task (the run's, see RunFuture), asyncio would end the event loop
        # with it: the worker, and every next owner of the partition after it.
        raise RuntimeError(f"the action raised {exc!r}") from None


def _is_async(action: Callable[..., Any]) -> bool:
    while isinstance(action, functools.partial):
        action = action.func
    call = getattr(action, "__call__", None)  # noqa: B004 - an object with async __call__
    return inspect.iscoroutinefunction(action) or inspect.iscoroutinefunction(call)
