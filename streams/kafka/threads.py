"""Blocking work on a thread, awaited to its end even when the awaiting task is cancelled.

``asyncio.to_thread`` returns at once when its task is cancelled, but the thread runs on:
nothing can stop a thread from outside. A worker whose :meth:`run` was cancelled (the event
loop ending, a timeout around it) then went on to close the Kafka clients its threads were
still inside, and librdkafka does not survive a client closed under a call in another
thread. :func:`in_thread` first asks the work to stop (``cancelled``), waits for its thread
to end, and only then lets the cancellation go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

_T = TypeVar("_T")


def _nothing() -> None:
    pass


async def in_thread(work: Callable[[], _T], cancelled: Callable[[], None] = _nothing) -> _T:
    """``work()`` on a thread of its own; if the task awaiting it is cancelled, call
    ``cancelled()`` (which should make ``work`` return soon), wait for ``work`` to end
    (its result or error dropped), then raise the cancellation."""
    running = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        cancelled()
        await asyncio.wait({running})
        raise
