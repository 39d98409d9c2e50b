"""How many overdue delayed messages the delay processors of one worker hold in full
(``streams.engine.delay``), against one limit for all of them; and giving the memory of
what they read back to the OS."""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable

#: A backlog's overdue messages are held in full only while the worker holds fewer than
#: this overdue ones over all its delay partitions (the rest wait as offsets).
BACKLOG_HELD = 50_000


class Holding:
    """How many messages, overdue when held, the delay processors of one worker hold in
    full, against ``BACKLOG_HELD`` for all of them, so that a worker that owns many delay
    partitions takes no more of an outage's backlog in at once than one that owns one.
    Live messages (due within the horizon) are held whatever the count, and are not in it:
    counted, a steady load of them held a backlog back for as long as it lasted. A
    processor whose overdue messages wait for room asks to be called back when there is
    some."""

    def __init__(self) -> None:
        self.count = 0
        self._waiting: set[Callable[[], None]] = set()

    @property
    def full(self) -> bool:
        return self.count >= BACKLOG_HELD

    @property
    def room(self) -> int:
        """How many more may be held before ``BACKLOG_HELD`` is reached."""
        return BACKLOG_HELD - self.count

    def wait(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the loop, soon) once the count falls below ``BACKLOG_HELD``."""
        self._waiting.add(callback)

    def forget(self, callback: Callable[[], None]) -> None:
        self._waiting.discard(callback)

    def add(self, count: int) -> None:
        self.count += count

    def drop(self, count: int) -> None:
        was_full = self.full
        self.count -= count
        if was_full and not self.full and self._waiting:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # nothing runs without the loop: they wait for the next drop
                return
            waiting, self._waiting = self._waiting, set()
            for callback in waiting:
                loop.call_soon(callback)


def trim_heap() -> bool:
    """Give the C heap's free memory back to the OS (glibc's ``malloc_trim``); whether
    any was. Reading a backlog of a million delay records leaves ~100 MiB of librdkafka
    buffers freed but still resident, which the RSS would otherwise keep showing."""
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False
