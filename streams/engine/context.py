"""The runtime's implementation of the ``handlers`` contexts: every operation is a journal entry.

On first execution an operation appends an entry (and emits its effect: a call,
a send, a state write). On replay, after a crash or a retry, the same operation
finds its entry and returns the recorded result instead; an operation that
differs from its entry fails the invocation with :class:`NonDeterminismError`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, NoReturn, TypeVar, cast

from opentelemetry.trace import SpanKind

from handlers.context import (
    Action,
    Callee,
    CallFuture,
    DurableFuture,
    DurablePromise,
    HandlerRef,
    Recipient,
    Request,
    SendHandle,
    WorkflowContext,
)
from handlers.exceptions import NonDeterminismError, TerminalError
from handlers.serde import Serde
from streams import tracing
from streams.engine.futures import EntryFuture, RunFailed, RunFuture, SentHandle, awaited, can_win
from streams.engine.invocation import Invocation, InvocationClosed, outcome
from streams.engine.journal import CANCELLED, Entry, EntryKind, Promise, own_copy, state_key
from streams.engine.outbox import handler_invoke
from streams.engine.registry import target_of
from streams.engine.runs import IN_ACTION, run_entry
from streams.engine.values import (
    checked_headers,
    checked_id,
    checked_idempotency_key,
    checked_record,
    due_after,
    failure_of,
    measured,
    writable,
)
from streams.wire import ids
from streams.wire.records import MAX_VALUE_BYTES, Caller, Completion, Failure, Target

T = TypeVar("T")

#: Characters a state, promise or ``ctx.run`` name may have (as an object's key).
MAX_NAME = 4096
#: The steps a handler names; ``None`` is no name (``select`` and the rest name none).
_NAMED = frozenset(("get", "set", "clear", "run")) | {
    f"promise_{verb}" for verb in ("get", "peek", "resolve", "reject")
}
#: Bytes a state or promise record may hold, its key (service, object key and name, as
#: escaped JSON) and its value together: a broker takes 1,000,000 (``message.max.bytes``),
#: the rest is room around them. A key of many characters past ASCII is escaped six- or
#: twelve-fold: with a value near ``MAX_VALUE_BYTES`` its record was refused at each commit.
MAX_STATE_RECORD = MAX_VALUE_BYTES + 64 * 1024


class _Callee(Callee):
    def __init__(self, ctx: InvocationContext, target: Target) -> None:
        self._ctx = ctx
        self._target = target

    def request(
        self,
        arg: Any = None,
        *,
        timeout: timedelta | None = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> CallFuture[Any]:
        if timeout is not None:  # by the clock its deadline counts from (InvocationContext)
            now = self._ctx.invocation.processor.now()
            due_after(timeout, f"the timeout of a call to {self._target.path()}", now)
        index = self._ctx.outgoing("call", self._target, arg, idempotency_key, headers, None)
        if timeout is not None:
            self._ctx.deadline(index, timeout)
        return EntryFuture(self._ctx, index)


class _Recipient(Recipient):
    def __init__(self, ctx: InvocationContext, target: Target) -> None:
        self._ctx = ctx
        self._target = target

    def send(
        self,
        arg: Any = None,
        *,
        delay: timedelta | None = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> SendHandle:
        index = self._ctx.outgoing("send", self._target, arg, idempotency_key, headers, delay)
        callee = self._ctx.invocation.journal[index].callee
        assert callee is not None
        return SentHandle(callee)


class InvocationContext(WorkflowContext):
    """One implementation for every context type; the handler's annotation limits what it uses."""

    def __init__(self, invocation: Invocation) -> None:
        self.invocation = invocation
        self._cursor = 0
        # The attempt this context serves (made on its task): a task the handler started
        # that goes on using it once the attempt has ended (returned, failed, or replaced
        # by the next attempt) is stopped, instead of writing state after the key was let go.
        self._attempt = asyncio.current_task()
        #: The divergence from the journal this attempt met, if any: the invocation fails
        #: with it even when the handler catches it (an ``except Exception`` that carried
        #: on would check its next operations against the wrong entries).
        self.diverged: NonDeterminismError | None = None
        #: A ``ctx.run``'s error that is retried, once it reached the handler: not journaled,
        #: so the handler may end its attempt on it but not go on to another operation.
        self.failed: Exception | None = None
        self.refused = False  # an operation was refused for it (RunFailed)

    # -- journal -----------------------------------------------------------

    def check_current(self) -> None:
        """``InvocationClosed`` unless this context's attempt is the invocation's, running;
        ``NonDeterminismError`` again once it has diverged from the journal; a terminal 500
        inside a ``ctx.run`` action (``runs.IN_ACTION``), journaled as the action's failure."""
        acting = IN_ACTION.get()
        if acting is not None:
            raise TerminalError(
                f"the context was used inside the action of ctx.run({acting!r}): a replay "
                "skips the action, and would not meet what it did; use the context before or "
                "after ctx.run, and return what the action found",
                500,
            )
        self.invocation.check_open()
        attempt = self._attempt
        if attempt is not None and (attempt.done() or self.invocation.task is not attempt):
            raise InvocationClosed(self.invocation.meta.id)
        if self.diverged is not None:  # caught, and the handler went on: no step, no action
            raise NonDeterminismError(str(self.diverged))
        if self.failed is not None:  # likewise (RunFailed); retried however the handler ends
            self.refused = True
            raise RunFailed(self.failed) from self.failed

    def failed_for_now(self, error: Exception) -> bool:
        told, self.failed = self.failed is not None, self.failed or error
        self.refused = self.refused or told  # awaited again: RunFailed, as for an operation
        return told

    def _step(self, kind: EntryKind, **expected: Any) -> tuple[int, Entry | None]:
        """Claim the next journal index; return the recorded entry when replaying."""
        self.check_current()
        name = expected.get("name")
        if not isinstance(name, str) and (name is not None or kind in _NAMED):
            # A UUID or an int for a state or promise name journals, then fails to be
            # written (or read back): names are strings, as in the changelog's keys. None
            # journaled too, and went nowhere: ``set`` wrote nothing, a promise was lost.
            raise TypeError(f"the name of a {kind} must be a string, not {type(name).__name__}")
        if name is not None and kind != "select" and len(name) > MAX_NAME:
            # Its journal entry, or its state record's key, could grow past what the
            # broker takes: every commit of the worker would fail, and again after it.
            raise TerminalError(
                f"the name of a {kind} is {len(name)} characters; at most {MAX_NAME}", 400
            )
        if name is not None and not name.isascii():
            try:
                name.encode()
            except UnicodeEncodeError:  # journaled, then its entry could not be written
                raise ValueError(f"the name of a {kind} holds a lone UTF-16 surrogate") from None
        index = self._cursor
        self._cursor += 1
        journal = self.invocation.journal
        if index >= len(journal):
            return index, None
        entry = journal[index]
        mismatched = entry.kind != kind or any(
            getattr(entry, name) != value for name, value in expected.items()
        )
        if mismatched:
            wanted = Entry(kind=kind, **expected).describe()
            self.diverged = NonDeterminismError(
                f"journal entry {index} of {self.invocation.meta.id} is {entry.describe()}, "
                f"but the handler now does {wanted}: handlers must repeat the same context "
                "operations in the same order on every run"
            )
            raise self.diverged
        return index, entry

    def ended(self) -> None:
        """The handler returned, or raised a terminal error: an attempt that ended short of
        its journal diverged (a first run took steps this one did not), as one that took
        another step would have."""
        journal, taken = self.invocation.journal, self._cursor
        if self.diverged is None and taken < len(journal):
            self.diverged = NonDeterminismError(
                f"the handler of {self.invocation.meta.id} ended after {taken} of the "
                f"{len(journal)} entries of its journal, the next being "
                f"{journal[taken].describe()}: handlers must repeat the same context "
                "operations in the same order on every run"
            )

    def _new_entry(self, entry: Entry) -> int:
        """Append ``entry``, or, when a cancel is pending, the same operation already failed
        with 409 (it never takes effect): this is where a cancel reaches the handler."""
        if self.invocation.take_cancel():
            entry = entry.replace(done=True, failure=CANCELLED)
        self.invocation.append(entry)
        return len(self.invocation.journal) - 1

    def deadline(self, index: int, timeout: timedelta) -> None:
        """Fail call ``index`` with 408 unless it completes within ``timeout``."""
        entry = self.invocation.journal[index]
        if entry.due is not None or entry.done:
            return  # replay: the timer exists already
        # Below zero counts as none (due_after): far in the past, no record could carry it.
        due = self.invocation.processor.now() + max(timeout.total_seconds(), 0.0)
        self.invocation.set_entry(index, entry.replace(due=due))
        assert entry.callee is not None
        seconds = max(timeout.total_seconds(), 0.0)
        failure = Failure(
            code=408, message=f"call to {entry.describe()} timed out after {seconds}s"
        )
        completion = Completion(
            caller=Caller(invocation_id=self.invocation.meta.id, entry=index),
            invocation_id=entry.callee,
            failure=failure,
        )
        self.invocation.timer(index, due, completion)

    def outgoing(
        self,
        kind: EntryKind,
        target: Target,
        arg: Any,
        idempotency_key: str | None,
        headers: Mapping[str, str] | None,
        delay: timedelta | None,
    ) -> int:
        # Checked before the journal, on every run: an argument that cannot be sent fails
        # here on replay too, so the handler's next operation meets the same entry, and no
        # entry is left behind that a retry would wait on forever.
        argument, size = measured(arg, f"the argument of {kind} {target.path()}")
        idempotency_key = checked_idempotency_key(idempotency_key, f"{kind} {target.path()}")
        sent_headers = checked_headers(headers)
        due = None
        if delay:
            now = self.invocation.processor.now()
            due = due_after(delay, f"the delay of {target.path()}", now)
        inv = self.invocation
        record = functools.partial(  # the record as it is written, given its index and callee
            handler_invoke, inv.meta.id, target=target, argument=argument,
            mode="call" if kind == "call" else "send", idempotency_key=idempotency_key,
            headers=sent_headers, due=due,
        )  # fmt: skip
        measured_as = functools.partial(record, self._cursor, callee=inv.meta.id)  # its own id
        checked_record(size, sent_headers, measured_as, f"{kind} {target.path()}")
        if kind == "call" and inv.callee_id(self._cursor, target, idempotency_key) == inv.meta.id:
            # A workflow's run calling its own run, or a call whose idempotency key names the
            # invocation itself: it would wait for itself.
            raise TerminalError(f"{target.path()} is this invocation: it would wait for good", 400)
        index, entry = self._step(kind, target=target)
        if entry is None:
            callee = self.invocation.callee_id(index, target, idempotency_key)
            entry = Entry(kind=kind, target=target, callee=callee, done=kind == "send", due=due)
            if kind == "call":
                index = self._new_entry(entry)
                if self.invocation.journal[index].done:
                    return index  # cancelled before it was made
            else:
                self.invocation.append(entry)
            with tracing.span(  # named without the key: span names are few (OpenTelemetry)
                f"{kind} {target.service}/{target.handler}",
                kind=SpanKind.PRODUCER,
                attributes={
                    "kourier.callee": callee,
                    "kourier.entry": index,
                    "kourier.target": target.path(),
                },
            ):
                self.invocation.invoke(record(index, callee=callee), tracing.current())
        return index

    # -- identity ------------------------------------------------------------

    @property
    def invocation_id(self) -> str:
        return self.invocation.meta.id

    @property
    def key(self) -> str:
        key = self.invocation.meta.target.key
        if key is None:  # the context type says so; a clear failure, not one retried
            raise TerminalError(f"{self.invocation.handler.path} is a service's handler, and"
                                " services have no key")  # fmt: skip
        return key

    def request(self) -> Request:
        meta = self.invocation.meta
        return Request(id=meta.id, headers=dict(meta.headers), attempt=meta.attempt)

    # -- calls and sends -------------------------------------------------------

    def service(self, service: HandlerRef, handler: str | None = None) -> Callee:
        return _Callee(self, target_of(service, None, handler, "service"))

    def object(self, obj: HandlerRef, key: str, handler: str | None = None) -> Callee:
        return _Callee(self, target_of(obj, key, handler, "object"))

    def workflow(
        self, workflow: HandlerRef, workflow_id: str, handler: str | None = None
    ) -> Callee:
        return _Callee(self, target_of(workflow, workflow_id, handler, "workflow"))

    def service_send(self, service: HandlerRef, handler: str | None = None) -> Recipient:
        return _Recipient(self, target_of(service, None, handler, "service_send"))

    def object_send(self, obj: HandlerRef, key: str, handler: str | None = None) -> Recipient:
        return _Recipient(self, target_of(obj, key, handler, "object_send"))

    def workflow_send(
        self, workflow: HandlerRef, workflow_id: str, handler: str | None = None
    ) -> Recipient:
        return _Recipient(self, target_of(workflow, workflow_id, handler, "workflow_send"))

    def attach_invocation(self, invocation_id: str) -> DurableFuture[Any]:
        checked_id(invocation_id)
        if invocation_id == self.invocation.meta.id:
            raise TerminalError("an invocation cannot attach to itself: it would wait for good",
                                400)  # fmt: skip
        index, entry = self._step("attach", callee=invocation_id)
        if entry is None:
            index = self._new_entry(Entry(kind="attach", callee=invocation_id))
            if not self.invocation.journal[index].done:
                self.invocation.attach(index, invocation_id)
        return EntryFuture(self, index)

    def cancel_invocation(self, invocation_id: str) -> None:
        checked_id(invocation_id)
        _index, entry = self._step("cancel", callee=invocation_id)
        if entry is None:
            self.invocation.append(Entry(kind="cancel", callee=invocation_id, done=True))
            self.invocation.cancel_invocation(invocation_id)

    # -- combinators ------------------------------------------------------------------

    async def select(self, futures: dict[str, DurableFuture[Any]]) -> tuple[str, Any]:
        """The first of ``futures`` to complete; the winner's name is journaled, so a
        replay takes the same branch even if another future completes first this time."""
        index, entry = self._step("select", name=",".join(futures))
        if entry is not None and entry.done:
            winner = str(entry.value)
            return winner, await futures[winner]
        if entry is None:
            self.invocation.append(Entry(kind="select", name=",".join(futures)))
        cancels = self.invocation.cancels
        # A losing ctx.run goes on (its action may be half done); the waits that lose stop.
        tasks: dict[asyncio.Task[Any], str] = {}
        waits: list[asyncio.Task[Any]] = []
        for name, future in futures.items():
            if isinstance(future, RunFuture):
                tasks[future.task()] = name
            else:
                waits.append(asyncio.ensure_future(awaited(future)))
                tasks[waits[-1]] = name
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                if not task.done():
                    task.cancel()
        if stopped := [task for task in waits if task not in done]:  # their waits end first,
            await asyncio.wait(stopped)  # or a cancel could fail a wait no longer awaited
        # A branch that failed for now (a ctx.run's error is retried) or was cancelled
        # cannot win: journaled, the next attempt would wait on it alone, its timer no longer
        # in the race. The first done that can win wins, in the order of the names.
        finished = [task for task in tasks if task in done]
        winnable = [task for task in finished if can_win(task)]
        # A branch the cancel failed wins over one done with it (on a replay too, where both
        # were done before it began); if another wins all the same (done first, the cancel's
        # branch not yet), a cancel delivered while it waited is pending again, for the
        # handler's next await: it counted as delivered.
        cancelled = [task for task in winnable if _cancelled(task)]
        first = (cancelled or winnable or finished)[0]
        winner = tasks[first]
        self.invocation.check_open()
        if self.invocation.cancels != cancels and not cancelled:
            self.invocation.meta.cancel_requested = True
            self.invocation.processor.touch(self.invocation)
        if not winnable:  # raises it; after a ctx.run's error that is retried, nothing more
            if isinstance(error := first.exception(), Exception):  # (none may win: not terminal)
                self.failed_for_now(error)
            first.result()
        self.invocation.complete_entry(index, value=winner)
        return winner, first.result()

    # -- timers and side effects ----------------------------------------------

    def sleep(self, duration: timedelta) -> DurableFuture[None]:
        """A timer on the delay topic: its firing is a completion like a call's outcome."""
        due = due_after(duration, "a sleep", self.invocation.processor.now())
        index, entry = self._step("sleep")
        if entry is None:
            meta = self.invocation.meta
            # Named for this run: a timer of an earlier run under this id, still on the delay
            # topic, answers no entry of this one. (Sleeps journaled by earlier versions of
            # Kourier carry the invocation's own id, and their timers answer them as before.)
            timer = ids.timer_id(meta.run, len(self.invocation.journal))
            index = self._new_entry(Entry(kind="sleep", callee=timer, due=due))
            if not self.invocation.journal[index].done:
                caller = Caller(invocation_id=meta.id, entry=index)
                fired = Completion(caller=caller, invocation_id=timer)
                seconds = duration.total_seconds()  # named without it: span names are few
                attributes = {"kourier.due": due, "kourier.entry": index, "kourier.sleep": seconds}
                with tracing.span("sleep", attributes=attributes):
                    self.invocation.timer(index, due, fired)
        return EntryFuture(self, index)

    def run(self, name: str, action: Action, *, type_hint: Any = None) -> DurableFuture[Any]:
        serde = None if type_hint is None else Serde(type_hint)  # a bad hint: nothing journaled
        index, entry = self._step("run", name=name)
        if entry is None:
            self.invocation.append(Entry(kind="run", name=name))
        return RunFuture(self, index, lambda: run_entry(self.invocation, index, action, serde))

    # -- state -------------------------------------------------------------------

    def _stateful(self) -> None:
        """A service's handler has no state to read or write (its context type says so;
        Python lets it try): a clear terminal failure, not an assertion retried."""
        handler = self.invocation.handler
        if handler.service.kind == "service":
            raise TerminalError(f"{handler.path} is a service's handler, and services have "
                                "no state: use a virtual object or a workflow")  # fmt: skip

    async def get(self, name: str, type_hint: Any = None) -> Any:
        self._stateful()
        _index, entry = self._step("get", name=name)
        if entry is None:
            value = self.invocation.state_get(name)
            self.invocation.append(Entry(kind="get", name=name, value=value, done=True))
        else:
            value = entry.value
        value = own_copy(value)  # the state and the journal keep theirs
        if type_hint is None or value is None:
            return value
        # The stored value does not fit the hint on any attempt: terminal, not retried until
        # the invocation pauses with its key held.
        return Serde(type_hint).load(value, f"state {name!r}", status_code=500)

    async def state_keys(self) -> list[str]:
        self._stateful()
        _index, entry = self._step("state_keys")
        if entry is None:
            keys = self.invocation.state_keys()
            try:
                value = writable(list(keys), "the state's keys")  # 413 past a record's size
            except TerminalError as refused:
                self._refused("state_keys", None, refused)
            self.invocation.append(Entry(kind="state_keys", value=value, done=True))
            return keys
        return list(cast(list[str], outcome(entry)))

    def _refused(self, kind: EntryKind, name: str | None, refusal: TerminalError) -> NoReturn:
        """Journal ``refusal`` as the outcome of the step just taken, and raise it. A
        refusal that depends on more than the handler's own values (the state's keys, a
        limit an upgrade may change) is raised again from the journal on a replay: a handler
        that catches it has its next operation at the next index on every run."""
        entry = Entry(kind=kind, name=name, failure=failure_of(refusal), done=True)
        self.invocation.append(entry)
        raise refusal

    def set(self, name: str, value: Any) -> None:
        self._write("set", name, *self._stored(name, value, f"state {name!r}"))

    def _stored(
        self, name: str, value: Any, what: str, *, promise: bool = False
    ) -> tuple[Any, TerminalError | None]:
        """``value`` as :func:`writable` makes it, and the 413 to journal (:meth:`_refused`)
        when its state record, key and all, would be larger than ``MAX_STATE_RECORD``:
        looked for in a new step only (one replayed was written, or its refusal journaled)."""
        encoded, size = measured(value, what)
        target = self.invocation.meta.target
        obj = target.key or ""
        new = self._cursor >= len(self.invocation.journal)
        # ASCII is escaped sixfold at most, which fits; a name not a string, or too long, is
        # refused with its reason when journaled.
        if new and isinstance(name, str) and len(name) <= MAX_NAME and not (name + obj).isascii():
            key = state_key(target.service, obj, name, promise=promise)
            if size + len(key) > MAX_STATE_RECORD:
                return encoded, TerminalError(
                    f"{what} is {size} bytes of JSON, and its record's key {len(key)} (its"
                    f" object key and name escaped): Kourier writes at most {MAX_STATE_RECORD}"
                    " in one record",
                    413,
                )
        return encoded, None

    def clear(self, name: str) -> None:
        self._write("clear", name, None)

    def clear_all(self) -> None:
        self._write("clear_all", None, None)

    def _write(
        self, kind: EntryKind, name: str | None, value: Any, refusal: TerminalError | None = None
    ) -> None:
        self._stateful()
        if not self.invocation.handler.exclusive:
            raise TerminalError(f"shared handler {self.invocation.handler.path} cannot write state")
        _index, entry = self._step(kind, name=name)
        if entry is None:
            if refusal is not None:
                self._refused(kind, name, refusal)
            self.invocation.append(Entry(kind=kind, name=name, value=value, done=True))
            self.invocation.state_write(kind, name, value)
        elif entry.failure is not None:  # a refusal journaled is raised again
            outcome(entry)

    # -- workflow promises -------------------------------------------------------

    def promise(self, name: str, type_hint: Any = None) -> DurablePromise[Any]:
        if self.invocation.handler.service.kind != "workflow":
            raise TerminalError("durable promises belong to workflows", 400)
        return _Promise(self, name, None if type_hint is None else Serde(type_hint))


def _cancelled(task: asyncio.Task[Any]) -> bool:
    """Whether a branch that may win failed with 409 cancelled."""
    error = task.exception()
    return isinstance(error, TerminalError) and failure_of(error) == CANCELLED


class _Promise(DurablePromise[Any]):
    """A workflow promise, kept by the workflow's partition; every use is journaled. Its
    value is journaled as JSON and loaded as the handler's type, if it gave one, when read."""

    def __init__(self, ctx: InvocationContext, name: str, serde: Serde | None) -> None:
        self._ctx = ctx
        self._name = name
        self._serde = serde

    def value(self) -> DurableFuture[Any]:
        ctx, invocation = self._ctx, self._ctx.invocation
        index, entry = ctx._step("promise_get", name=self._name)
        if entry is None:
            index = ctx._new_entry(Entry(kind="promise_get", name=self._name))
            if not invocation.journal[index].done:
                invocation.await_promise(index, self._name)
        return EntryFuture(ctx, index, self._serde, f"promise {self._name!r}")

    async def peek(self) -> Any:
        invocation = self._ctx.invocation
        _index, entry = self._ctx._step("promise_peek", name=self._name)
        if entry is None:
            promise = invocation.promise(self._name)
            value = None if promise is None else promise.value
            failure = None if promise is None else promise.failure
            entry = Entry(kind="promise_peek", name=self._name, value=value, failure=failure)
            invocation.append(entry.replace(done=True))
        value = outcome(entry)
        if self._serde is None or value is None:
            return value
        return self._serde.load(value, f"promise {self._name!r}", status_code=500)

    async def resolve(self, value: Any) -> None:
        what = f"promise {self._name!r}"
        stored, refusal = self._ctx._stored(self._name, value, what, promise=True)
        await self._complete("promise_resolve", stored, None, refusal)

    async def reject(self, message: str) -> None:
        text = message if isinstance(message, str) else str(message)  # as TerminalError's
        await self._complete("promise_reject", None, Failure(code=500, message=text))

    async def _complete(
        self,
        kind: EntryKind,
        value: Any,
        failure: Failure | None,
        refusal: TerminalError | None = None,
    ) -> None:
        invocation = self._ctx.invocation
        _index, entry = self._ctx._step(kind, name=self._name)
        if entry is None and refusal is not None:
            self._ctx._refused(kind, self._name, refusal)
        if entry is None:
            promise = Promise(value=value, failure=failure)
            done = invocation.complete_promise(self._name, promise)
            problem = None
            if not done:
                problem = Failure(code=409, message=f"promise {self._name!r} is already completed")
            entry = Entry(kind=kind, name=self._name, failure=problem, done=True)
            invocation.append(entry)
        outcome(entry)
