"""Running handlers: one attempt at a time, retries with back-off, suspension while waiting.

An attempt runs the handler from the start of its journal (replaying what is recorded)
on the event loop. It ends in an outcome (``complete``), in a failure that is retried after
the service's back-off (``backing-off``), or, once the retry policy is spent, ``paused``
until an operator resumes it. An invocation that waits longer than its service's
inactivity timeout is suspended: its task ends, its journal stays, and the completion it
waits for runs it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, MutableMapping
from datetime import timedelta
from typing import Any

from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import JsonValue, ValidationError

from handlers.exceptions import NonDeterminismError, TerminalError
from handlers.retry import RetryPolicy
from handlers.service import HandlerDef
from streams import logs, tracing
from streams.engine.context import InvocationContext
from streams.engine.invocation import Invocation
from streams.engine.journal import CANCELLED, own_copy
from streams.engine.values import described, failure_of, measured
from streams.metrics import ATTEMPT_SECONDS, PAUSED, RETRIES, labelled
from streams.wire.records import MAX_VALUE_BYTES, Failure, shorten, value_size

log = logging.getLogger("kourier.partition")

#: Seconds by which an inactivity timer may fire before its time (the loop's clock).
_SLACK = 0.001
#: Turns of the loop a suspension waits for a handler to take a step (a select's branch
#: that ended wakes it within one or two).
_SETTLE_TURNS = 8

#: What an attempt ends with: the invocation, its value and its failure (None: success);
#: returns the failure written, which replaces an outcome that could not be written.
Complete = Callable[[Invocation, JsonValue, Failure | None], Failure | None]


class Attempts:
    """Runs the handlers of one partition's invocations."""

    def __init__(
        self,
        invocations: Mapping[str, Invocation],
        *,
        complete: Complete,
        touch: Callable[[Invocation], None],
        closed: Callable[[], bool],
        retry_of: Callable[[HandlerDef], RetryPolicy],
        refused: MutableMapping[str, tuple[Failure, float]] | None = None,
        inactivity: timedelta | None = None,
    ) -> None:
        self._invocations = invocations
        #: Every service's inactivity timeout, when given (the test harness suspends a
        #: handler at every wait, so that each resumption replays its journal).
        self._inactivity = inactivity
        self._retry_of = retry_of  # the policy a handler's attempts follow (Registry.retry_of)
        self._complete = complete
        self._touch = touch
        self._closed = closed
        #: Invocations whose records Kafka refused for good, by id: the failure each ends
        #: with at its next attempt (or as it queues), and the ``time.monotonic()`` until
        #: which that holds (shared by the worker's partitions: ``streams.kafka.refused``).
        self.refused: MutableMapping[str, tuple[Failure, float]] = {}
        if refused is not None:  # the worker's, shared (an empty one too)
            self.refused = refused
        self.started = 0  # attempts begun, so the worker can tell when a step settles

    def run(self, inv: Invocation) -> None:
        """Start an attempt of ``inv``'s handler (from its journal's start: a replay)."""
        inv.meta.status = "running"
        inv.closed = False
        inv.began_cancelled = inv.meta.cancel_requested
        inv.stop_retry()  # run before its time (a cancel): no second run
        for future in inv.waiting.values():  # a task of an earlier attempt may await one
            future.cancel()
        inv.waiting.clear()
        self._touch(inv)
        # Its context names the invocation from its first line on (streams/logs.py).
        context = logs.attempt_context(inv.meta.id)
        inv.task = asyncio.get_running_loop().create_task(self._execute(inv), context=context)
        self.started += 1

    async def _execute(self, inv: Invocation) -> None:
        handler = inv.handler
        began = time.perf_counter()
        try:
            await self._attempt(inv)
        finally:
            ATTEMPT_SECONDS.labels(handler.service.name, handler.name).observe(
                time.perf_counter() - began
            )

    async def _attempt(self, inv: Invocation) -> None:
        """One attempt, as one span of the invocation's trace (see streams.tracing)."""
        meta = inv.meta
        with tracing.span(
            inv.handler.path,
            context=tracing.context_of(meta.trace),
            kind=SpanKind.CONSUMER,
            attributes={
                "kourier.invocation_id": meta.id,
                "kourier.attempt": meta.attempt,
                "kourier.target": meta.target.path(),
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            outcome = await self._attempt_in(inv)
            if outcome is not None:
                span.set_status(Status(StatusCode.ERROR, outcome))

    async def _attempt_in(self, inv: Invocation) -> str | None:
        """Run the handler; what went wrong, if anything (None: completed, or closed)."""
        handler = inv.handler
        signature = handler.signature
        ctx = InvocationContext(inv)
        attempt = asyncio.current_task()

        def stopped() -> bool:
            """Kourier stopped this attempt: closed the invocation or the partition, or
            moved on to another attempt (a suspension, then a resume, can start the next
            before this one has seen its cancel)."""
            return inv.closed or self._closed() or inv.task is not attempt

        failure: Failure | None = None
        value: JsonValue = None
        ran = False  # the handler was called: its end is checked against its journal
        try:
            refusal = self._refusal(inv)
            if refusal is not None:  # its last run wrote a record Kafka refused for good
                raise TerminalError(refusal.message, refusal.code)
            argument = inv.meta.argument
            if not signature.takes_input:
                given: tuple[Any, ...] = ()
            elif argument is None and signature.input_default:  # none given (null): a copy
                given = (signature.default_input(),)
            else:
                given = (signature.input.load(own_copy(argument), "input"),)
            ran = True
            result = await handler.fn(ctx, *given)
            try:
                value = signature.output.dump(result)
            except (ValidationError, TypeError, ValueError) as exc:
                message = f"{handler.path} returned a value that is not JSON: {exc}"
                raise TerminalError(message) from None
            value, size = measured(value, f"the result of {handler.path}")
            if inv.retention().total_seconds() > 0:  # kept: written with its argument
                fits_with_argument(size, inv.meta.argument, handler.path)
        except TerminalError as error:
            failure = failure_of(error)
        except NonDeterminismError as error:  # the handler's own, if not the context's
            ctx.diverged = ctx.diverged or error
        except GeneratorExit:  # the coroutine closed: it must not await again
            raise
        except BaseException as error:  # a library's own, or SystemExit from sys.exit():
            # the attempt fails as for any exception. Out of the task, SystemExit ended the
            # worker, which left the invocation running, so every next owner ran it again
            # and ended too. (A worker takes its signals on the event loop, not by raising
            # them into whatever frame runs: only a handler raises these here.) So does an
            # InvocationClosed that is not this attempt's end (a context an earlier attempt
            # gave the handler, kept and used): out of the task, it left the invocation
            # running with no task and its key locked.
            if stopped():
                return None
            if ctx.diverged is not None:  # caught, then another error: failed below
                return self._finish(inv, ctx, None, None)
            error = ctx.failed or error  # caught, then the context's refusal or another
            # Kourier closes an invocation or its partition, or starts another attempt,
            # before it cancels one. Any other cancel (a future the handler awaited, or code
            # that cancelled the attempt's task itself) is a failure like any exception:
            # ended here, the invocation would stay running with no task, and an object's
            # key locked.
            self._back_off(inv, error)
            return described(error)
        if stopped():
            return None
        if ctx.refused and ctx.failed is not None:  # RunFailed swallowed, the operation undone
            self._back_off(inv, ctx.failed)
            return described(ctx.failed)
        if ran:
            ctx.ended()
        return self._finish(inv, ctx, value, failure)

    def _finish(
        self, inv: Invocation, ctx: InvocationContext, value: JsonValue, failure: Failure | None
    ) -> str | None:
        """Complete ``inv`` with its outcome, or with a 500 if its attempt diverged from the
        journal (whatever the handler made of that); what went wrong, if anything."""
        if ctx.diverged is not None:
            log.error("%s: %s", inv.meta.id, ctx.diverged)
            failure = Failure(code=500, message=f"non-deterministic handler: {ctx.diverged}")
        failure = self._complete(inv, value, failure)
        return None if failure is None else f"{failure.code} {failure.message}"

    # -- records Kafka refused -------------------------------------------------------

    def _refusal(self, inv: Invocation) -> Failure | None:
        """The failure held for ``inv`` (taken: it holds once), its argument dropped, since
        it is written with the failure and may be what Kafka refused; None if none holds."""
        held = self.refused.pop(inv.meta.id, None) if self.refused else None
        if held is None or held[1] < time.monotonic():
            return None
        inv.meta.argument = None
        return held[0]

    def fail_refused(self, inv: Invocation) -> bool:
        """Complete ``inv``, queued behind its key, with the failure held for it, if any: its
        meta, written as it queues, may be the record Kafka refused. Whether it was."""
        refusal = self._refusal(inv)
        if refusal is None:
            return False
        inv.close()
        self._complete(inv, None, refusal)
        return True

    # -- suspension ------------------------------------------------------------------

    def waiting(self, inv: Invocation) -> None:
        """``inv`` awaits a call, a timer or a promise: suspend it if it is still waiting
        after its service's inactivity timeout, so that it holds no task meanwhile."""
        loop = asyncio.get_running_loop()
        inv.waited_at = loop.time()
        loop.call_later(self._inactive_for(inv), self._suspend_if_idle, inv, inv.task)

    def _suspend_if_idle(
        self, inv: Invocation, task: asyncio.Task[None] | None, turns: int = 0, steps: int = -1
    ) -> None:
        """Suspend ``inv`` if it still waits, and has for its inactivity timeout, once the
        loop has turned ``_SETTLE_TURNS`` times more without it taking a step. A branch of a
        ``select`` that just ended (a ctx.run's action, a completion applied in this turn)
        wakes its handler a few turns later: suspended now, it was stopped before it took
        that branch, and its replay took the branch first in the order of the names."""
        if self._closed() or inv.task is not task or task is None or task.done():
            return
        if inv.meta.status != "running" or inv.actions or not inv.waits_open():
            return  # busy, or a ctx.run action still runs (its result must be journaled)
        loop = asyncio.get_running_loop()
        if loop.time() < inv.waited_at + self._inactive_for(inv) - _SLACK:
            return  # it began another wait since this timer's: that wait's timer decides
        if steps not in (-1, inv.steps):
            # It took a step, or an entry it does not await completed (a call it fanned
            # out): look again after a whole timeout (a next wait has its own timer too).
            self.waiting(inv)
            return
        if turns < _SETTLE_TURNS:
            loop.call_soon(self._suspend_if_idle, inv, task, turns + 1, inv.steps)
            return
        inv.close()
        inv.task = None
        inv.meta.status = "suspended"
        self._touch(inv)
        log.debug("%s suspended", inv.meta.id)

    def _inactive_for(self, inv: Invocation) -> float:
        """Seconds of waiting after which ``inv`` is suspended."""
        timeout = self._inactivity
        if timeout is None:
            timeout = inv.handler.service.inactivity_timeout
        return timeout.total_seconds()

    def resume(self, inv: Invocation) -> None:
        """Run a suspended invocation again; it replays its journal up to where it waited."""
        if not self._closed() and inv.meta.status == "suspended":
            self.run(inv)

    def _back_off(self, inv: Invocation, error: BaseException) -> None:
        meta = inv.meta
        policy = self._retry_of(inv.handler)
        meta.last_error = shorten(described(error))
        inv.task = None
        # A cancel that this attempt began with and failed before reaching ends it: the next
        # could fail as early, again and again, with the key held. One that came during the
        # attempt goes to the next, at once, so that the handler can compensate: its last
        # attempt's too, as a cancel of a paused invocation runs it once more.
        cancelled = meta.cancel_requested
        if cancelled and inv.began_cancelled:
            inv.close()
            self._complete(inv, None, CANCELLED)
            return
        if policy.exhausted(meta.attempt) and not cancelled:
            labelled(PAUSED, meta.target.service).inc()
            meta.status = "paused"
            log.error("%s paused after %d attempts: %s", meta.id, meta.attempt, meta.last_error)
        else:
            labelled(RETRIES, meta.target.service, meta.target.handler).inc()
            delay = 0.0 if cancelled else policy.delay(meta.attempt).total_seconds()
            meta.attempt += 1
            meta.status = "backing-off"
            meta.retry_at = time.time() + delay
            log.warning(
                "%s attempt %d failed (%s); retry in %.2fs",
                meta.id,
                meta.attempt - 1,
                meta.last_error,
                delay,
            )
            self.schedule_retry(inv, delay)
        self._touch(inv)

    def schedule_retry(self, inv: Invocation, delay: float) -> None:
        """Run ``inv`` again after ``delay`` seconds, unless it moved on meanwhile."""

        def retry() -> None:
            inv.retry_timer = None
            current = self._invocations.get(inv.meta.id)
            if current is inv and inv.meta.status == "backing-off" and not self._closed():
                self.run(inv)

        inv.stop_retry()
        inv.retry_timer = asyncio.get_running_loop().call_later(delay, retry)


def fits_with_argument(size: int, argument: JsonValue, path: str) -> None:
    """A retained outcome (``size`` bytes of JSON) is written with the invocation's
    argument: both in one record."""
    if size > 64 * 1024 and size + value_size(argument) > MAX_VALUE_BYTES:
        raise TerminalError(
            f"the result of {path} ({size} bytes of JSON) and its argument together exceed "
            f"the {MAX_VALUE_BYTES} bytes Kourier writes in one record",
            413,
        )
