"""What a running process is doing, on demand: ``kill -USR1 <pid>``.

The signal writes to standard error, in this order:

1. the stack of every Python thread (up to 100 frames each, most recent call last), from
   a thread of its own, so that it comes even when the event loop is blocked;
2. then, from the event loop: the process's own status (a worker's owned partitions,
   offsets, transaction in flight), and where the asyncio tasks wait (tasks waiting at the
   same place are counted together), ending with the line :data:`END`.

It is a look, for an operator or a test that finds a worker silent: the process goes on
as before. Before :func:`install` and after :func:`uninstall` the signal is taken and
dropped, so that one sent while a process starts or stops does not end it.

The signal is not handled where it lands. :func:`listen` blocks it in the main thread,
and so in every thread started after (librdkafka's block every signal anyway), and a
thread of its own waits for it (``sigwait``) and reads the other threads' stacks as
Python code, holding the GIL. :mod:`faulthandler` cannot be used for this: its signal
handler reads the frames of threads that go on running, and a thread starting or ending
meanwhile crashes the process (CPython issue 116008; a worker starts threads for
``asyncio.to_thread``). What this costs:
- The stacks need the GIL. A thread that holds it and never lets go (a native call that
  hangs without releasing it) holds the dump back too; ``py-spy dump --pid <pid>``
  reads such a process from outside.
- The stacks are taken one thread after another, within microseconds, not at one
  instant.
- A process started by one of these inherits the block. The brokers that ``kourier dev``
  starts get the default back (:func:`default_mask`); a process a handler starts keeps
  it, so SIGUSR1 does not reach it unless it unblocks the signal itself.

A process that dies of a fatal signal (a crash in native code, librdkafka's or Python's
own) would otherwise end without a line in its log; :func:`on_crash` has it write the
Python stack of every Python thread to standard error first (:mod:`faulthandler`, for
which a best effort is right: the process ends anyway; a fault in one of librdkafka's
own threads shows no stack of its own: the Python threads' show what they were calling).
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
import traceback
from collections.abc import Callable, Iterator, Mapping
from types import FrameType
from typing import Any

#: The last line of a dump.
END = "kourier: end of dump"
#: Frames shown per asyncio task, and task names shown per place they wait at.
_FRAMES = 12
_NAMES = 5
#: Frames shown per thread, the most recent.
_THREAD_FRAMES = 100

Status = Callable[[], Mapping[str, Any]] | None

_lock = threading.Lock()
_listening = False
#: The event loop that writes the second part, and the status it writes.
_target: tuple[asyncio.AbstractEventLoop, Status] | None = None


def listen() -> None:
    """Have SIGUSR1 taken by a thread of its own from now on, and dropped until
    :func:`install`. Called from the main thread, before it starts any other (a thread
    started earlier could take the signal first: that one would then be dropped)."""
    global _listening
    with _lock:
        if _listening:
            return
        signal.signal(signal.SIGUSR1, _dropped)  # for a thread that does not block it
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        threading.Thread(target=_listen, name="kourier-dump", daemon=True).start()
        _listening = True


def install(loop: asyncio.AbstractEventLoop, status: Status = None) -> None:
    """Dump on SIGUSR1: the threads' stacks at once, then ``status()`` and the tasks from
    ``loop``. The first call of this or :func:`listen` is the main thread's (see there)."""
    global _target
    listen()
    with _lock:
        _target = (loop, status)


def from_the_start() -> None:
    """A long-running process's first step: SIGUSR1 dropped until :func:`install`, and a
    crash, even one before the event loop starts (topic creation, a restore), written out
    (:func:`on_crash`)."""
    listen()
    on_crash()


def on_crash() -> None:
    """On SIGSEGV, SIGBUS, SIGABRT, SIGFPE or SIGILL, write the Python stack of every
    Python thread to standard error before the process ends (:mod:`faulthandler`), for as
    long as it runs."""
    with contextlib.suppress(AttributeError, ValueError, OSError, RuntimeError):
        faulthandler.enable(file=sys.stderr, all_threads=True)


@contextlib.contextmanager
def default_mask() -> Iterator[None]:
    """SIGUSR1 not blocked in the calling thread for the time of the block, for a process
    started in it (which inherits the thread's mask) to get the default. A SIGUSR1 that
    lands in this thread meanwhile is dropped, not dumped."""
    before = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def uninstall(loop: asyncio.AbstractEventLoop) -> None:
    """SIGUSR1 dropped again, if ``loop`` was the one installed."""
    global _target
    with _lock:
        if _target is not None and _target[0] is loop:
            _target = None


def _dropped(signum: int, frame: FrameType | None) -> None:
    """What SIGUSR1 does in a thread that does not block it: nothing."""


def _listen() -> None:
    while True:
        signal.sigwait({signal.SIGUSR1})
        with _lock:
            target = _target
        if target is None:
            continue
        loop, status = target
        try:
            sys.stderr.write(_stacks())
            sys.stderr.flush()
        except Exception:  # a look must not end the process
            pass
        with contextlib.suppress(RuntimeError):  # the loop has closed
            loop.call_soon_threadsafe(_dump, status)


def _stacks() -> str:
    """Every Python thread's stack: each thread's frames and their lines first, the source
    lines and the text after, so that the threads go on as little as can be between the
    first stack taken and the last."""
    taken = []
    for ident, frame in sorted(sys._current_frames().items()):
        stack = traceback.StackSummary.extract(
            traceback.walk_stack(frame), limit=_THREAD_FRAMES, lookup_lines=False
        )
        stack.reverse()  # most recent call last
        taken.append((ident, stack))
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    out = io.StringIO()
    out.write(f"kourier: stacks of {len(taken)} threads\n")
    for ident, stack in taken:
        out.write(f"Thread {ident:#018x} {names.get(ident, '?')} (most recent call last):\n")
        out.writelines(stack.format())
    return out.getvalue()


def _dump(status: Status) -> None:
    out = io.StringIO()
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
