"""One invocation in a worker's memory: its status, its journal and the task running it."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from datetime import timedelta
from typing import Any, Protocol

from pydantic import JsonValue

from handlers.exceptions import TerminalError
from handlers.service import DEFAULT_IDEMPOTENCY_RETENTION, HandlerDef
from streams.engine.journal import (
    CANCELLED,
    LOCAL_WAITS,
    Entry,
    EntryKind,
    InvocationMeta,
    Promise,
    is_cancel,
    own_copy,
)
from streams.engine.store import ObjectKey
from streams.errors import KourierError
from streams.wire import ids
from streams.wire.records import Completion, Failure, Invoke, Target


class InvocationClosed(KourierError):
    """The invocation's partition moved away or the invocation was stopped; its task must end."""


def outcome(entry: Entry) -> Any:
    """A completed entry's value, or its failure raised as the handler sees it."""
    if entry.failure is not None:
        raise TerminalError(entry.failure.message, entry.failure.code)
    return own_copy(entry.value)


def lock_key(meta: InvocationMeta) -> ObjectKey | None:
    """The object key an invocation holds while it runs, or waits for in line: its
    object's, when its handler is exclusive; None otherwise."""
    if meta.exclusive and meta.target.key is not None:
        return ObjectKey(meta.target.service, meta.target.key)
    return None


class Partition(Protocol):
    """What an invocation asks of the partition that runs it (``PartitionProcessor``)."""

    closed: bool
    handing_over: bool
    partitions: int
    run_executor: Executor | None

    def now(self) -> float: ...
    def touch(self, inv: Invocation) -> None: ...
    def waiting(self, inv: Invocation) -> None: ...
    def resume(self, inv: Invocation) -> None: ...
    def handler_state(self, target: Target) -> dict[str, JsonValue]: ...
    def handler_write_state(
        self, target: Target, kind: EntryKind, name: str | None, value: JsonValue
    ) -> None: ...
    def handler_callee_id(
        self, caller: Invocation, index: int, target: Target, idempotency_key: str | None
    ) -> str: ...
    def handler_invoke(self, caller: Invocation, record: Invoke, trace: str | None) -> None: ...
    def handler_attach(self, inv: Invocation, index: int, invocation_id: str) -> None: ...
    def handler_cancel(self, invocation_id: str) -> None: ...
    def handler_timer(
        self, inv: Invocation, index: int, due: float, completion: Completion
    ) -> None: ...
    def handler_await_promise(self, inv: Invocation, index: int, name: str) -> None: ...
    def handler_promise(self, target: Target, name: str) -> Promise | None: ...
    def handler_complete_promise(self, target: Target, name: str, promise: Promise) -> bool: ...


class Invocation:
    """Meta and journal of one invocation, and the link between its context and its partition.

    Changes are marked dirty and written to the changelog at the next commit;
    an invocation that starts and ends between two commits never writes its
    journal at all, only its effects.
    """

    __slots__ = (
        "actions",
        "awaiting",
        "began_cancelled",
        "cancel_calls",
        "cancels",
        "closed",
        "dirty_entries",
        "handler_def",
        "journal",
        "lock_key",
        "meta",
        "persisted",
        "persisted_entries",
        "processor",
        "retry_timer",
        "runs",
        "steps",
        "task",
        "waited_at",
        "waiting",
    )

    def __init__(
        self,
        meta: InvocationMeta,
        journal: list[Entry],
        handler: HandlerDef | None,
        processor: Partition,
    ) -> None:
        self.meta = meta
        self.journal = journal
        self.handler_def = handler
        self.processor = processor
        self.task: asyncio.Task[None] | None = None
        self.waiting: dict[int, asyncio.Future[Entry]] = {}
        #: Tasks of the handler awaiting each entry's future (several may await one).
        self.awaiting: dict[asyncio.Future[Entry], int] = {}
        self.dirty_entries: set[int] = set()
        self.persisted_entries = len(journal)  # entries already in the changelog
        self.persisted = bool(journal) or meta.status != "pending"
        self.closed = False
        #: The calls open when the pending cancel was asked for: it comes back through them
        #: (their callees answer it with 409 cancelled). None when not known: restored since.
        self.cancel_calls: frozenset[int] | None = None
        #: Whether the current attempt began with a cancel pending (``Attempts._back_off``),
        #: and the timer of its next attempt while it backs off.
        self.began_cancelled = False
        #: Cancels delivered to a wait of the handler (``select`` looks whether one was).
        self.cancels = 0
        self.retry_timer: asyncio.TimerHandle | None = None
        #: The task of each ctx.run begun and not ended, by journal index: every await of
        #: it, in this attempt or the next, waits for that one; a close or the outcome
        #: stops those left (:meth:`stop_runs`).
        self.runs: dict[int, asyncio.Task[Any]] = {}
        #: Those whose action runs now, each done once its outcome is journaled: no
        #: suspension until they end, and a hand-over waits for them.
        self.actions: set[asyncio.Task[Any]] = set()
        #: When (the loop's clock) the attempt last began to wait: its inactivity is
        #: counted from there (``Attempts.waiting``).
        self.waited_at = 0.0
        #: Entries journaled or completed: a suspension looks whether it moved (``Attempts``).
        self.steps = 0
        #: The object key this invocation holds exclusively while it runs (its target and
        #: whether it is exclusive never change).
        self.lock_key = lock_key(meta)

    @property
    def handler(self) -> HandlerDef:
        assert self.handler_def is not None
        return self.handler_def

    @property
    def partitions(self) -> int:
        return self.processor.partitions

    def waits_open(self) -> bool:
        """Whether the handler waits on the context now: a call, a timer, a promise or an
        attach it awaits has not completed."""
        return any(not future.done() for future in self.waiting.values())

    # -- used by the context ---------------------------------------------------

    def check_open(self) -> None:
        if self.closed or self.processor.closed:
            raise InvocationClosed(self.meta.id)

    def append(self, entry: Entry) -> None:
        self.check_open()
        self.journal.append(entry)
        self.steps += 1
        self.dirty_entries.add(len(self.journal) - 1)
        self.meta.journal_length = len(self.journal)
        self.processor.touch(self)

    def complete_entry(
        self, index: int, *, value: JsonValue = None, failure: Failure | None = None
    ) -> None:
        """Record the result of entry ``index`` and wake whoever awaits it."""
        old = self.journal[index]
        if old.done:
            return
        entry = old.replace(value=value, failure=failure, done=True)
        self.journal[index] = entry
        self.steps += 1
        self.dirty_entries.add(index)
        self.processor.touch(self)
        waiter = self.waiting.pop(index, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(entry)
        if self.meta.status == "suspended":
            self.processor.resume(self)

    def take_cancel(self) -> bool:
        """Consume a pending cancel: the operation asking delivers it to the handler."""
        if not self.meta.cancel_requested:
            return False
        self.cancel_delivered()
        self.processor.touch(self)
        return True

    def cancel_delivered(self) -> None:
        """The pending cancel reached the handler: one asked for after it is a new one,
        which the attempt did not begin with (``Attempts._back_off``)."""
        self.meta.cancel_requested = False
        self.began_cancelled = False
        self.cancels += 1

    def cancelled_through(self, index: int) -> bool:
        """Whether call ``index``'s 409 cancelled is the pending cancel coming back: the call
        was open when it was asked for. A call cancelled before (its callee cancelled on its
        own), met again by a replay, is not; after a restore, which does not know, any is."""
        return self.cancel_calls is None or index in self.cancel_calls

    async def wait_for(self, index: int) -> Any:
        entry = self.journal[index]
        if not entry.done and entry.kind in LOCAL_WAITS and self.take_cancel():
            self.complete_entry(index, failure=CANCELLED)
            entry = self.journal[index]
        if not entry.done:
            self.check_open()
            future = self.waiting.get(index)
            if future is None or future.done():
                future = asyncio.get_running_loop().create_future()
                self.waiting[index] = future
                self.processor.waiting(self)
            # Two tasks of the handler may await one entry: each waits for the same result,
            # and one cancelled (a select that lost its branch) leaves the other waiting.
            self.awaiting[future] = self.awaiting.get(future, 0) + 1
            try:
                entry = await asyncio.shield(future)
            finally:
                left = self.awaiting.pop(future) - 1
                if left:
                    self.awaiting[future] = left
                elif self.waiting.get(index) is future:
                    # Nobody awaits it any more: the handler no longer waits on the entry.
                    del self.waiting[index]
                    future.cancel()
            self.check_open()
        if entry.kind == "call" and is_cancel(entry.failure) and self.cancelled_through(index):
            self.take_cancel()  # the handler now meets the 409 its cancel caused
        return outcome(entry)

    def state_get(self, name: str) -> JsonValue:
        return self.processor.handler_state(self.meta.target).get(name)

    def state_keys(self) -> list[str]:
        return sorted(self.processor.handler_state(self.meta.target))

    def state_write(self, kind: EntryKind, name: str | None, value: JsonValue) -> None:
        self.processor.handler_write_state(self.meta.target, kind, name, value)

    def set_entry(self, index: int, entry: Entry) -> None:
        """Rewrite entry ``index`` (a call's deadline added); written at the next commit."""
        self.check_open()
        self.journal[index] = entry
        self.dirty_entries.add(index)
        self.processor.touch(self)

    @property
    def run_executor(self) -> Executor | None:
        """Threads for synchronous ``ctx.run`` actions (None: the loop's default)."""
        return self.processor.run_executor

    def callee_id(self, index: int, target: Target, idempotency_key: str | None) -> str:
        return self.processor.handler_callee_id(self, index, target, idempotency_key)

    def invoke(self, record: Invoke, trace: str | None) -> None:
        """Send the call or one-way send the handler journaled, as ``record``
        (``outbox.handler_invoke``; ``trace``: the span that made it, the parent of the
        callee's attempts)."""
        self.processor.handler_invoke(self, record, trace)

    def attach(self, index: int, invocation_id: str) -> None:
        self.processor.handler_attach(self, index, invocation_id)

    def cancel_invocation(self, invocation_id: str) -> None:
        self.processor.handler_cancel(invocation_id)

    def timer(self, index: int, due: float, completion: Completion) -> None:
        """A durable timer: ``completion`` reaches entry ``index`` at ``due``."""
        self.processor.handler_timer(self, index, due, completion)

    def await_promise(self, index: int, name: str) -> None:
        """Complete entry ``index`` once the workflow's promise ``name`` completes."""
        self.processor.handler_await_promise(self, index, name)

    def promise(self, name: str) -> Promise | None:
        return self.processor.handler_promise(self.meta.target, name)

    def complete_promise(self, name: str, promise: Promise) -> bool:
        return self.processor.handler_complete_promise(self.meta.target, name, promise)

    def is_workflow_run(self) -> bool:
        """Whether this is a workflow's run: by its handler, or (a handler not hosted here)
        by its id, which only a run has."""
        if self.handler_def is not None:
            return self.handler_def.kind == "workflow"
        target = self.meta.target
        return target.key is not None and self.meta.id == ids.workflow_run_id(
            target.service, target.key
        )

    def retention(self) -> timedelta:
        """How long the outcome is kept: the service's completed retention, or for an
        idempotent invocation or a workflow's run the idempotency retention, if longer. An
        invocation of a handler this worker does not host (restored, then cancelled or
        killed) keeps its outcome for the default idempotency retention when it has a key."""
        handler = self.handler_def
        if handler is None:
            kept = self.meta.idempotency_key is not None or self.is_workflow_run()
            return DEFAULT_IDEMPOTENCY_RETENTION if kept else timedelta(0)
        service = handler.service
        retention = service.completed_retention
        if self.meta.idempotency_key is not None or handler.kind == "workflow":
            retention = max(retention, service.idempotency_retention)
        return retention

    # -- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        """Stop the task (partition revoked, or the invocation is done with)."""
        self.closed = True
        for future in self.waiting.values():
            if not future.done():
                future.cancel()
        self.waiting.clear()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.stop_retry()  # the timer would hold the invocation until it fired
        self.stop_runs()

    def stop_retry(self) -> None:
        """Cancel the timer of the next attempt, if one is set."""
        if self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None

    def stop_runs(self) -> None:
        """Cancel the ctx.run tasks still going (one that lost a select runs on after its
        handler's await; a synchronous action's thread cannot be stopped, its result is
        dropped)."""
        for run in list(self.runs.values()):
            run.cancel()
