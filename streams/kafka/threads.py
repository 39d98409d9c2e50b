"""Blocking work on a thread, awaited to its end even when the awaiting task is cancelled.

``asyncio.to_thread`` returns at once when its task is cancelled, but the thread runs on:
nothing can stop a thread from outside. A worker whose :meth:`run` was cancelled (the event
loop ending, a timeout around it) then went on to close the Kafka clients its threads were
still inside, and librdkafka does not survive a client closed under a call in another
thread. :func:`in_thread` first asks the work to stop (``cancelled``), waits for its thread
to end, and only then lets the cancellation go on.

The thread's result is a plain future, not a task: when ``asyncio.run`` ends, it cancels
every task, and a task standing for the thread would be over at once, the thread not.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

_T = TypeVar("_T")
#: The name of the threads of a worker's synchronous ``ctx.run`` actions.
RUN_THREADS = "kourier-run"
#: The threads of :func:`in_thread` (a worker's Kafka thread, its restores): not the loop's
#: default executor, which handlers' own ``asyncio.to_thread`` calls may fill, and a
#: worker taking partitions over would wait for them.
_THREADS = ThreadPoolExecutor(64, thread_name_prefix="kourier-io")


def _nothing() -> None:
    pass


async def in_thread(work: Callable[[], _T], cancelled: Callable[[], None] = _nothing) -> _T:
    """``work()`` on a thread of Kourier's own (``_THREADS``); if the task awaiting it is
    cancelled, call ``cancelled()`` (which should make ``work`` return soon), wait for
    ``work`` to end (its result or error dropped), however often the task is cancelled
    meanwhile, then raise the cancellation."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    running = loop.run_in_executor(_THREADS, functools.partial(context.run, work))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        cancelled()
        while not running.done():
            try:
                await asyncio.wait({running})
            except asyncio.CancelledError:
                cancelled()  # cancelled again: the thread still has to end first
        if not running.cancelled():
            running.exception()  # retrieved, so that asyncio does not log it as lost
        raise


def actions_left(timeout: float) -> int:
    """Handlers' blocking work (synchronous ``ctx.run`` actions, and in a Kourier command
    their ``asyncio.to_thread`` calls: :class:`Unwaited`) still on its threads once
    ``timeout`` seconds have passed (after a worker's ``run``): the interpreter, which joins
    those threads as it exits, would wait for each to return."""
    deadline = time.monotonic() + timeout
    running = [t for t in threading.enumerate() if t.name.startswith(RUN_THREADS)]
    for thread in running:
        thread.join(max(0.0, deadline - time.monotonic()))
    return sum(thread.is_alive() for thread in running)


class Unwaited(ThreadPoolExecutor):
    """The event loop's default executor in a Kourier command: ``asyncio.run`` ending does
    not wait for its threads (a handler's ``asyncio.to_thread`` call that never returns),
    which :func:`actions_left` counts with the ``ctx.run`` actions."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=False, cancel_futures=cancel_futures)
