"""What a running process is doing, on demand: ``kill -USR1 <pid>``.

The signal writes to standard error, in this order:

1. the stack of every thread, at once, by :mod:`faulthandler`, so that it comes even when
   the event loop is blocked;
2. then, from the event loop, the process's own status (a worker's owned partitions,
   offsets, transactions in flight) and the stack of every asyncio task, ending with the
   line :data:`END`.

Nothing in the process changes: it is a look, for an operator or a test that finds a
worker silent.
"""

from __future__ import annotations

import asyncio
import faulthandler
import io
import json
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

#: The last line of a dump.
END = "kourier: end of dump"
#: Frames shown per asyncio task.
_FRAMES = 12


def install(
    loop: asyncio.AbstractEventLoop, status: Callable[[], Mapping[str, Any]] | None = None
) -> None:
    """Dump on SIGUSR1: threads at once, then ``status()`` and the tasks from ``loop``."""
    loop.add_signal_handler(signal.SIGUSR1, _dump, status)
    # After the loop's handler, which it calls in turn (chain): the threads come first.
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True, chain=True)


def uninstall(loop: asyncio.AbstractEventLoop) -> None:
    faulthandler.unregister(signal.SIGUSR1)
    loop.remove_signal_handler(signal.SIGUSR1)


def _dump(status: Callable[[], Mapping[str, Any]] | None) -> None:
    out = io.StringIO()
    if status is not None:
        try:
            described = _json(status())
        except Exception as exc:  # a look must not end the process
            described = f"(no status: {exc!r})"
        out.write(f"kourier: status\n{described}\n")
    tasks = asyncio.all_tasks()
    out.write(f"kourier: {len(tasks)} asyncio tasks\n")
    for task in sorted(tasks, key=lambda t: t.get_name()):
        out.write(f"{task.get_name()}:\n")
        out.writelines(f"  {line}\n" for line in _awaiting(task.get_coro()))
    out.write(f"{END}\n")
    sys.stderr.write(out.getvalue())
    sys.stderr.flush()


def _json(status: Mapping[str, Any]) -> str:
    """``status`` as JSON, a line per key, and a line per entry of a table (a mapping of
    mappings, such as one per partition)."""

    def one(value: Any) -> str:
        return json.dumps(value, sort_keys=True, default=str)

    lines = []
    for name, value in sorted(status.items()):
        if (
            isinstance(value, Mapping)
            and value
            and all(isinstance(row, Mapping) for row in value.values())
        ):
            rows = ",\n".join(f"  {one(str(k))}: {one(row)}" for k, row in value.items())
            lines.append(f" {one(name)}: {{\n{rows}\n }}")
        else:
            lines.append(f" {one(name)}: {one(value)}")
    return "{\n" + ",\n".join(lines) + "\n}"


def _awaiting(awaitable: object) -> list[str]:
    """Where a task waits: its coroutine's frame, then each coroutine it awaits, innermost
    last, then what that one awaits (a future, usually). ``Task.print_stack`` shows only the
    outermost frame of a suspended coroutine."""
    lines: list[str] = []
    while awaitable is not None and len(lines) < _FRAMES:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is None:
            lines.append(f"awaiting {type(awaitable).__name__}")
            break
        code = frame.f_code
        lines.append(f"{code.co_filename}:{frame.f_lineno} in {code.co_name}")
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return lines
