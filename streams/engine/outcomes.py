"""How an invocation ends: its outcome answered, counted, kept or forgotten, its key freed.

:class:`Outcomes` is the partition's one way to complete an invocation, whichever way it
ends: a handler's return or terminal error (``streams.engine.attempts``), a cancel or a
kill (``streams.engine.control``). It answers every request id, the caller and every
attacher in one go (all of the records or none), keeps the outcome for its retention
(``InvocationTable.retain``) or forgets it with its idempotency key, and hands the
object's key on to the next call queued for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pydantic import JsonValue

from streams.engine.invocation import Invocation
from streams.engine.invocations import InvocationTable
from streams.engine.journal import KILLED, InvocationMeta, is_cancel
from streams.engine.locks import KeyLocks
from streams.engine.outbox import Outbox
from streams.engine.promises import Promises
from streams.engine.store import ObjectKey, PartitionStore, dedup_scope
from streams.metrics import INVOCATION_SECONDS, INVOCATIONS
from streams.wire.records import Completion, Failure

log = logging.getLogger("kourier.partition")


class Outcomes:
    """Completes the invocations of one partition, and forgets them: at once when they
    keep no outcome, or when the partition's sweep finds their retention has ended."""

    def __init__(
        self,
        invocations: InvocationTable,
        store: PartitionStore,
        locks: KeyLocks,
        outbox: Outbox,
        promises: Promises,
        *,
        run: Callable[[Invocation], None],
        touch: Callable[[Invocation], None],
        wake: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._invocations = invocations
        self._store = store
        self._locks = locks
        self._outbox = outbox
        self._promises = promises
        self._run = run  # start an attempt of the invocation a freed key goes to
        self._touch = touch
        self._wake = wake
        self._clock = clock  # the partition's, which retention counts by

    def complete(
        self, inv: Invocation, value: JsonValue, failure: Failure | None
    ) -> Failure | None:
        """Complete ``inv`` with its outcome: answer whoever waits, count it, keep or
        forget it, free its key. An outcome whose records cannot be written (none of them
        goes out) is replaced by a 500 failure, so that nobody waits for ever and the calls
        queued on the key run. The failure written (None: success)."""
        meta = inv.meta
        now = self._clock()
        meta.status = "completed"
        meta.modified_at = now
        inv.task = None
        inv.stop_runs()  # a ctx.run that lost a select has no one left to journal it for
        self._promises.forget_waits(inv)
        failure = self._write(meta, value, failure)
        meta.request_ids.clear()  # answered: a retained outcome needs neither
        meta.attachers.clear()
        meta.cancel_requested = False
        target = meta.target
        outcome = "success" if failure is None else "failure"
        if is_cancel(failure):  # by value: a handler that met the cancel raised its own copy
            outcome = "cancelled"
        elif failure == KILLED:
            outcome = "killed"
        INVOCATIONS.labels(target.service, target.handler, outcome).inc()
        INVOCATION_SECONDS.labels(target.service, target.handler).observe(now - meta.created_at)
        retention = inv.retention()
        if retention.total_seconds() > 0:
            meta.expires_at = now + retention.total_seconds()
            self._invocations.retain(inv)
            self._touch(inv)
        else:
            self.forget(inv)
        lock = inv.lock_key
        if lock is not None and self._locks.release(lock, meta.id):
            self.unlock_next(lock)
        return failure

    def forget(self, inv: Invocation) -> None:
        """Drop a completed invocation: its outcome, its idempotency key, and for a
        workflow's run the workflow's state and promises."""
        meta = inv.meta
        if meta.idempotency_key is not None:
            self._store.forget(dedup_scope(meta.target, meta.idempotency_key))
        if inv.is_workflow_run():
            self._store.drop_object(ObjectKey.of(meta.target))
        self._invocations.forget(inv)
        self._wake()

    def unlock_next(self, lock: ObjectKey) -> None:
        """Hand a free key to the first call queued for it that still waits, and run it."""

        def still_pending(inv_id: str, seq: int) -> bool:
            candidate = self._invocations.get(inv_id)
            meta = None if candidate is None else candidate.meta
            # Another seq: the id was forgotten and made again, and queued at its own place.
            return meta is not None and meta.status == "pending" and meta.seq == seq

        chosen = self._locks.hand_on(lock, still_pending)
        if chosen is not None:
            self._run(self._invocations[chosen])

    def _write(
        self, meta: InvocationMeta, value: JsonValue, failure: Failure | None
    ) -> Failure | None:
        """Answer whoever waits, all or none: an outcome whose records cannot all be built
        is replaced by a 500 failure. The failure written (None: success)."""
        if not (meta.request_ids or meta.caller is not None or meta.attachers):
            meta.value, meta.failure = value, failure  # nobody to answer: a one-way send
            return failure
        try:
            with self._outbox.holding() as held:
                self._answer(meta, value, failure)
        except Exception as error:
            log.exception("%s: its outcome could not be written", meta.id)
            failure = Failure(
                code=500,
                message=f"the outcome of {meta.target.path()} could not be written: "
                f"{type(error).__name__}: {error}",
            )
            try:
                with self._outbox.holding() as held:
                    self._answer(meta, None, failure)
            except Exception:  # nobody can be told; the key is freed all the same
                log.exception("%s: not even its failure could be written", meta.id)
                return failure
        for send in held:
            send()
        return failure

    def _answer(self, meta: InvocationMeta, value: JsonValue, failure: Failure | None) -> None:
        """The outcome, to every request id, the caller and every attacher."""
        meta.value, meta.failure = value, failure
        for request_id in meta.request_ids:
            self._outbox.outcome(request_id, meta)
        for caller in [meta.caller, *meta.attachers] if meta.caller else meta.attachers:
            self._outbox.completion(Completion(
                caller=caller, invocation_id=meta.id, value=value, failure=failure
            ))  # fmt: skip
