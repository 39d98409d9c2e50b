"""``in_thread`` (streams/kafka/threads.py): a cancelled task waits for its thread to end,
whether the cancellation comes from a caller, twice, or from ``asyncio.run`` ending."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import threading
from collections.abc import Callable
from typing import Any

import pytest

from streams.kafka.threads import Unwaited, in_thread


class Work:
    """Blocks until asked to stop, then takes a little longer to end; says what happened,
    in order, with the awaiting task's own steps."""

    def __init__(self, raises: bool = False) -> None:
        self.stop = threading.Event()
        self.started = threading.Event()
        self.raises = raises
        self.said: list[str] = []

    def __call__(self) -> str:
        self.started.set()
        assert self.stop.wait(30), "never asked to stop"
        self.stop.wait(0.2)  # the last of its work, after the ask (a close, a revoke)
        self.said.append("thread ended")
        if self.raises:
            raise RuntimeError("stopped")
        return "done"

    async def awaited(self, cancelled: Callable[[], None]) -> None:
        try:
            await in_thread(self, cancelled)
        finally:
            self.said.append("in_thread over")


async def started(work: Work) -> None:
    assert await asyncio.to_thread(work.started.wait, 30), "the work did not start"


async def test_a_cancelled_task_waits_for_its_thread() -> None:
    work = Work()
    task = asyncio.create_task(work.awaited(work.stop.set))
    await started(work)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=30)
    assert task in done
    assert task.cancelled()
    assert work.said == ["thread ended", "in_thread over"]


async def test_cancelled_twice_it_still_waits_for_its_thread() -> None:
    work = Work()
    asks: list[int] = []

    def cancelled() -> None:
        asks.append(1)
        if len(asks) == 2:
            work.stop.set()

    task = asyncio.create_task(work.awaited(cancelled))
    await started(work)
    task.cancel()
    await asyncio.sleep(0)  # let the first cancellation reach it
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=30)
    assert task in done
    assert work.said == ["thread ended", "in_thread over"]
    assert len(asks) == 2


def test_asyncio_run_ending_waits_for_the_thread_and_logs_no_lost_error() -> None:
    """``asyncio.run`` cancels every task left when its coroutine returns: the one in
    ``in_thread`` waits for its thread, whose error (the stop's) is not logged as lost."""
    work = Work(raises=True)
    logged: list[dict[str, Any]] = []

    left: list[asyncio.Task[None]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: logged.append(context))
        left.append(asyncio.create_task(work.awaited(work.stop.set)))
        await started(work)  # then return, with the task still waiting for its thread

    asyncio.run(main())
    gc.collect()
    assert work.said == ["thread ended", "in_thread over"]
    assert logged == []


async def test_a_result_and_an_error_come_through() -> None:
    assert await in_thread(lambda: 42) == 42
    with pytest.raises(ZeroDivisionError):
        await in_thread(lambda: 1 / 0)


async def test_it_does_not_wait_for_the_loops_default_threads() -> None:
    """Handlers' own ``asyncio.to_thread`` calls fill the loop's default executor (five
    threads on one core); a worker's restores and Kafka thread queued behind them, and a
    take-over waited for as long as they blocked."""
    loop = asyncio.get_running_loop()
    busy = concurrent.futures.ThreadPoolExecutor(1)
    loop.set_default_executor(busy)
    release = threading.Event()
    blocked = asyncio.ensure_future(asyncio.to_thread(release.wait, 30))
    try:
        assert await asyncio.wait_for(in_thread(lambda: "restored"), 5) == "restored"
    finally:
        release.set()
        await blocked


def test_asyncio_run_ends_without_waiting_for_an_unwaited_default_executor() -> None:
    """A Kourier command's loop: a handler's ``asyncio.to_thread`` call that never returns
    held ``asyncio.run`` at its end for good (its default executor's shutdown waited)."""
    release = threading.Event()

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(Unwaited())
        blocked = asyncio.ensure_future(asyncio.to_thread(release.wait, 30))
        await asyncio.sleep(0.05)
        assert not blocked.done()

    ended = threading.Event()
    runner = threading.Thread(target=lambda: (asyncio.run(main()), ended.set()))
    runner.start()
    try:
        assert ended.wait(10), "asyncio.run waited for the blocked thread"
    finally:
        release.set()
        runner.join(30)
