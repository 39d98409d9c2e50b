"""What a running process is doing, on demand: ``kill -USR1 <pid>``.

The signal writes to standard error, in this order:

1. the stack of every thread (up to 100, newest first), at once, by :mod:`faulthandler`,
   so that it comes even when the event loop is blocked;
2. then, from the event loop: the threads' names, the process's own status (a worker's
   owned partitions, offsets, transaction in flight), and where the asyncio tasks wait
   (tasks waiting at the same place are counted together), ending with the line
   :data:`END`.

Nothing in the process changes: it is a look, for an operator or a test that finds a
worker silent. Before :func:`install` and after :func:`uninstall` the signal is ignored
(:func:`ignore`), so that one sent while a process starts or stops does not end it.

A process that dies of a fatal signal (a crash in native code, librdkafka's or Python's
own) would otherwise end without a line in its log; :func:`on_crash` has it write the
Python stack of every Python thread to standard error first (a fault in one of
librdkafka's own threads shows no stack of its own: the Python threads' show what they
were calling).
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import io
import json
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

#: The last line of a dump.
END = "kourier: end of dump"
#: Frames shown per asyncio task, and task names shown per place they wait at.
_FRAMES = 12
_NAMES = 5


def ignore() -> None:
    """Let SIGUSR1 do nothing (its default ends the process)."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def install(
    loop: asyncio.AbstractEventLoop, status: Callable[[], Mapping[str, Any]] | None = None
) -> None:
    """Dump on SIGUSR1: threads at once, then ``status()`` and the tasks from ``loop``."""
    loop.add_signal_handler(signal.SIGUSR1, _dump, status)
    # After the loop's handler, which it calls in turn (chain): the threads come first. A
    # standard error without a file descriptor (captured) gets the loop's part alone.
    with contextlib.suppress(AttributeError, ValueError, OSError, RuntimeError):
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True, chain=True)


def from_the_start() -> None:
    """A long-running process's first step: SIGUSR1 ignored until :func:`install`, and a
    crash, even one before the event loop starts (topic creation, a restore), written out
    (:func:`on_crash`)."""
    ignore()
    on_crash()


def on_crash() -> None:
    """On SIGSEGV, SIGBUS, SIGABRT, SIGFPE or SIGILL, write the Python stack of every
    Python thread to standard error before the process ends (:mod:`faulthandler`), for as
    long as it runs."""
    with contextlib.suppress(AttributeError, ValueError, OSError, RuntimeError):
        faulthandler.enable(file=sys.stderr, all_threads=True)


def uninstall(loop: asyncio.AbstractEventLoop) -> None:
    faulthandler.unregister(signal.SIGUSR1)
    loop.remove_signal_handler(signal.SIGUSR1)  # which restores the default: to end
    ignore()


def _dump(status: Callable[[], Mapping[str, Any]] | None) -> None:
    out = io.StringIO()
    threads = sorted(threading.enumerate(), key=lambda t: t.ident or 0)
    out.write(f"kourier: {len(threads)} threads\n")
    out.writelines(f"  {thread.ident or 0:#018x} {thread.name}\n" for thread in threads)
    if status is not None:
        try:
            described = _json(status())
        except Exception as exc:  # a look must not end the process
            described = f"(no status: {exc!r})"
        out.write(f"kourier: status\n{described}\n")
    tasks = asyncio.all_tasks()
    places: dict[tuple[str, ...], list[str]] = {}
    for task in tasks:
        places.setdefault(tuple(_awaiting(task.get_coro())), []).append(task.get_name())
    out.write(f"kourier: {len(tasks)} asyncio tasks, waiting at {len(places)} places\n")
    for lines, names in sorted(places.items(), key=lambda item: -len(item[1])):
        shown = ", ".join(sorted(names)[:_NAMES]) + (", ..." if len(names) > _NAMES else "")
        out.write(f"{len(names)} ({shown}):\n")
        out.writelines(f"  {line}\n" for line in lines)
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
