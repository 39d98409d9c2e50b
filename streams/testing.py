"""Test your handlers without Kafka: the real engine, in memory, on a clock you move.

    from streams.testing import Harness

    async def test_a_counter() -> None:
        async with Harness([counter]) as h:
            assert await h.call(add, 5, key="a") == 5
            h.send(add, 1, key="a", delay=timedelta(hours=1))
            await h.advance(timedelta(hours=1))  # the delayed send is due: it runs now
            assert h.state("Counter", "a") == {"count": 6}

The harness runs one partition's :class:`~streams.engine.partition.PartitionProcessor` —
the code a worker runs — and plays Kafka's part itself: what the processor writes to the
ingress topic comes straight back to it, responses answer the calls waiting for them, and
what it puts on the delay topic (delayed sends, ``ctx.sleep``, call deadlines) waits on the
harness's clock. That clock runs with the wall clock, and :meth:`Harness.advance` moves it
ahead by hand. Calls between handlers, one-way and delayed sends, idempotency keys, state,
workflows and their promises, cancel and kill all behave as on a worker; what needs a real
broker (crashes, rebalances, exactly-once across processes) is not what this is for.

A worker suspends a handler that has waited its service's inactivity timeout (60 s by
default) and resumes it by replaying its journal, as it does after a crash; a handler that
does not take the same steps on a replay (one that branches on the time, or a random
number, outside ``ctx.run``) then fails. The harness suspends a handler at every wait that
does not end at once, so that each resumption is such a replay and such a handler fails
here first (``Harness(services, replay_every_wait=False)`` keeps the services' timeouts:
a handler waits in memory, ``running``, as it would for its first minute on a worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
import itertools
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Literal, TypeVar

from pydantic import JsonValue

from handlers.exceptions import TerminalError
from handlers.service import HandlerDef, ServiceDefinition, handler_of
from streams.engine.journal import own_copy
from streams.engine.outbox import Out, origin_of, replay_of
from streams.engine.partition import PartitionProcessor
from streams.engine.registry import Registry
from streams.engine.store import ObjectKey
from streams.tracing import from_headers
from streams.wire import ids
from streams.wire.records import (
    Cancel,
    Delayed,
    Fired,
    Invoke,
    Kill,
    Response,
    Target,
    decode_delay,
    decode_response,
    encode,
)
from streams.wire.topics import Topics

_T = TypeVar("_T")

#: A handler, by its decorated function or as ``"Service/handler"``.
HandlerRef = Callable[..., Any] | str


class Harness:
    """Runs ``services`` in memory, as one worker with one partition would."""

    def __init__(
        self, services: Sequence[ServiceDefinition], *, replay_every_wait: bool = True
    ) -> None:
        self.topics = Topics("testing")
        self.registry = Registry(list(services))
        self.dead_letters: list[Out] = []  # records the engine set aside, with their reasons
        self._shift = 0.0  # seconds the clock has been moved ahead by hand
        self._offsets = itertools.count()
        self._queue: list[Out] = []
        self._pumping = False
        self._timers: list[tuple[float, int, bytes]] = []  # (due, order, released record)
        self._order = itertools.count()
        self._waiting: dict[str, asyncio.Future[Response]] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._threads = _Threads()
        self.processor = PartitionProcessor(
            partition=0,
            partitions=1,
            topics=self.topics,
            registry=self.registry,
            emit=self._emit,
            wake=lambda: None,
            clock=self.now,
            run_executor=self._threads,
            inactivity=timedelta(0) if replay_every_wait else None,
        )

    async def __aenter__(self) -> Harness:
        self.processor.start()
        self._ticker = asyncio.get_running_loop().create_task(self._tick())
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        self.processor.close()
        self.processor.release()
        self._threads.shutdown(wait=False, cancel_futures=True)

    # -- what a test does ---------------------------------------------------------------

    async def call(
        self,
        handler: HandlerRef,
        argument: Any = None,
        *,
        key: str | None = None,
        idempotency_key: str | None = None,
        within: float = 10.0,
    ) -> Any:
        """Call ``handler`` and wait for its outcome: its value, or its ``TerminalError``
        (``TimeoutError`` when none came ``within`` seconds)."""
        request_id = uuid.uuid4().hex
        answer = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        self._invoke(handler, argument, key, idempotency_key, request_id=request_id)
        try:
            response = await asyncio.wait_for(answer, within)
        finally:
            self._waiting.pop(request_id, None)
        if response.failure is not None:
            raise TerminalError(response.failure.message, response.failure.code)
        return response.value

    def send(
        self,
        handler: HandlerRef,
        argument: Any = None,
        *,
        key: str | None = None,
        idempotency_key: str | None = None,
        delay: timedelta | None = None,
    ) -> str:
        """A one-way send (due after ``delay`` on the harness's clock); its invocation id."""
        # The engine's due times count from its partition's clock, which is the harness's.
        due = None if delay is None else datetime.fromtimestamp(self.now(), UTC) + delay
        return self._invoke(handler, argument, key, idempotency_key, mode="send", due=due)

    def cancel(self, invocation_id: str) -> None:
        """Cancel an invocation: it meets a 409 at its next await."""
        self._deliver(encode(Cancel(invocation_id=invocation_id)))

    def kill(self, invocation_id: str) -> None:
        """Stop an invocation now, without compensation."""
        self._deliver(encode(Kill(invocation_id=invocation_id)))

    async def advance(self, by: timedelta) -> None:
        """Move the clock ahead: what falls due meanwhile (delayed sends, sleeps, call
        deadlines) runs, in due order; then let the handlers it woke run."""
        await self.settle()
        end = self._shift + by.total_seconds()
        while self._timers and self._timers[0][0] <= time.time() + end:
            # One due time after the other, so that what a timer wakes (a handler that
            # sleeps again) can fall due within the same advance.
            self._shift = max(self._shift, self._timers[0][0] - time.time())
            self._release()
            await self.settle()
        self._shift = end
        self._release()
        await self.settle()

    async def settle(self, rounds: int = 50, within: float = 10.0) -> None:
        """Let every handler that can run now run, until nothing more happens: one that
        replays a long journal, or awaits something other than the context, and a
        synchronous ``ctx.run`` action on its thread, are waited for (at most ``within``
        seconds, then ``TimeoutError``). An ``async`` action is not: it may wait for what
        the test does next."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            for _ in range(rounds):
                await asyncio.sleep(0)
            busy = self._busy()
            if not busy and not self._threads.running:
                return
            if loop.time() > deadline:
                what = f"handlers {busy} still running" if busy else "ctx.run actions running"
                raise TimeoutError(f"{what} after {within:g} s")
            await asyncio.sleep(0.001)  # an action on a thread: no loop turn ends it

    def _busy(self) -> list[str]:
        """The invocations whose handler runs now: neither waiting on the context, nor on
        an ``async`` action (which may wait for the test), nor done."""
        return [
            inv.meta.id
            for inv in self.processor.invocations.live()
            if inv.task is not None
            and not inv.task.done()
            and not inv.actions
            and not inv.waits_open()
        ]

    def now(self) -> float:
        """The harness's clock, in epoch seconds: the wall clock plus what was advanced."""
        return time.time() + self._shift

    # -- what a test looks at -------------------------------------------------------------

    def state(self, service: str, key: str) -> dict[str, JsonValue]:
        """The state of virtual object (or workflow) ``service`` with ``key``: a copy, so a
        test that changes a nested value changes neither the stored state nor the journal."""
        state: dict[str, JsonValue] = own_copy(
            self.processor.store.state_of(ObjectKey(service, key))
        )
        return state

    def status(self, invocation_id: str) -> str | None:
        """``pending``, ``scheduled``, ``running``, ``suspended``, ``backing-off``, ``paused``
        or ``completed``; None once forgotten (or never known)."""
        inv = self.processor.invocations.get(invocation_id)
        return None if inv is None else inv.meta.status

    def outcome(self, invocation_id: str) -> Any:
        """A completed (and retained) invocation's value, or its ``TerminalError``."""
        inv = self.processor.invocations.get(invocation_id)
        if inv is None or inv.meta.status != "completed":
            raise LookupError(f"{invocation_id} has no outcome here")
        if inv.meta.failure is not None:
            raise TerminalError(inv.meta.failure.message, inv.meta.failure.code)
        return own_copy(inv.meta.value)  # the retained outcome stays as it was

    # -- playing Kafka's part ---------------------------------------------------------------

    def _invoke(
        self,
        handler: HandlerRef,
        argument: Any,
        key: str | None,
        idempotency_key: str | None,
        *,
        mode: Literal["call", "send"] = "call",
        request_id: str | None = None,
        due: datetime | None = None,
    ) -> str:
        target = _target(handler, key)
        given: str | None = ids.new_id(target.key, 1)
        if target.key is not None and self.registry.is_workflow_run(target):
            given, invocation_id = None, ids.workflow_run_id(target.service, target.key)
        elif idempotency_key is not None:
            given = None
            invocation_id = ids.idempotent_id(
                target.service, target.key, target.handler, idempotency_key
            )
        else:
            assert given is not None
            invocation_id = given
        record = Invoke(
            target=target,
            argument=argument,
            invocation_id=given,
            mode=mode,
            idempotency_key=idempotency_key,
            request_id=request_id,
            due=due,
        )
        self._deliver(encode(record))
        return invocation_id

    def _deliver(self, value: bytes) -> None:
        self.processor.on_message(None, value, next(self._offsets))

    def _emit(self, out: Out) -> None:
        if out.topic == self.topics.delay:  # held at once: its due time counts from now
            record = decode_delay(out.value)
            if not isinstance(record, Fired):
                self._hold(record)
            return
        self._queue.append(out)
        if not self._pumping:
            self._pumping = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        """Hand every record the processor wrote to whoever reads its topic."""
        self._pumping = False
        while self._queue:
            out = self._queue.pop(0)
            if out.topic == self.topics.ingress:
                trace, origin = from_headers(out.headers), origin_of(out.headers)
                offset, replayed = next(self._offsets), replay_of(out.headers)
                self.processor.on_message(out.key, out.value, offset, trace, origin, replayed)
            elif out.topic == self.topics.responses:
                response = decode_response(out.value)
                waiter = self._waiting.get(response.request_id or "")
                finished = response.status in ("success", "failure")
                if waiter is not None and not waiter.done() and finished:
                    waiter.set_result(response)
            elif out.topic == self.topics.deadletter:
                self.dead_letters.append(out)
        self.processor.flush()  # the changelog has no reader here
        self._release()

    def _hold(self, record: Delayed) -> None:
        """Held until the harness's clock reaches its due time (which the engine counted
        from that clock: its partition's)."""
        released = encode(record.released())
        heapq.heappush(self._timers, (record.due.timestamp(), next(self._order), released))

    def _release(self) -> None:
        now = self.now()
        while self._timers and self._timers[0][0] <= now:
            _, _, value = heapq.heappop(self._timers)
            self._deliver(value)

    async def _tick(self) -> None:
        """Timers fall due with the wall clock too."""
        while True:
            await asyncio.sleep(0.01)
            self._release()


class _Threads(ThreadPoolExecutor):
    """The threads of synchronous ``ctx.run`` actions, and the tasks that wait for them.

    An action counts as running until the task that started it is done: by then its
    outcome is journaled and the handler woken. Its thread's future is done before that,
    and the pool's thread hands the outcome to the loop in callbacks of its own, between
    which it may be held up for as long as the OS likes: no count dropped from that thread
    is sure to come after them. A plain function that returned an awaitable counts while
    on its thread only: what the loop then awaits is an ``async`` action, not waited for."""

    def __init__(self) -> None:
        super().__init__(thread_name_prefix="kourier-harness-run")
        self._started: list[tuple[asyncio.Task[Any] | None, Future[Any]]] = []  # loop's thread

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        future = super().submit(fn, *args, **kwargs)
        self._started.append((asyncio.current_task(), future))  # run_in_executor's caller
        return future

    @property
    def running(self) -> bool:
        """Whether an action has not yet handed its outcome to its task."""
        self._started = [
            (task, future)
            for task, future in self._started
            if not future.done() or (task is not None and not task.done() and not _awaits(future))
        ]
        return bool(self._started)


def _awaits(future: Future[Any]) -> bool:
    """Whether an action's thread returned an awaitable, for its task to await on the loop."""
    return (
        not future.cancelled()
        and future.exception() is None
        and inspect.isawaitable(future.result())
    )


def _target(handler: HandlerRef, key: str | None) -> Target:
    if isinstance(handler, str):
        service, _, name = handler.partition("/")
        return Target(service=service, key=key, handler=name)
    definition: HandlerDef = handler_of(handler)
    return Target(service=definition.service.name, key=key, handler=definition.name)
