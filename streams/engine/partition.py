"""Everything one ingress partition owns: its invocations, object state and key locks.

A :class:`PartitionProcessor` is pure logic: it takes ingress records and changelog records
in, and hands out :class:`Out` records (calls, responses, completions, changelog writes) to
whoever commits them. The worker wraps it in Kafka transactions; unit tests drive it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, MutableMapping
from concurrent.futures import Executor
from datetime import timedelta

from pydantic import JsonValue

from streams.engine import routing
from streams.engine.attempts import Attempts
from streams.engine.control import Controls
from streams.engine.invocation import Invocation, lock_key
from streams.engine.invocations import SWEEP_AGAIN, InvocationTable
from streams.engine.journal import EntryKind, InvocationMeta, Promise, is_cancel
from streams.engine.locks import KeyLocks
from streams.engine.outbox import Headers, Out, Outbox
from streams.engine.outcomes import Outcomes
from streams.engine.promises import Promises
from streams.engine.registry import Registry
from streams.engine.replays import as_replay, replay_place
from streams.engine.spill import Spill, SpillFailed
from streams.engine.starts import Starts
from streams.engine.store import ObjectKey, PartitionStore
from streams.engine.waiters import Waiters
from streams.wire import ids
from streams.wire.deadletter import MAX_MOVED_BYTES, headers_bytes
from streams.wire.headers import DENIED_HEADERS, allowed_headers
from streams.wire.records import (
    MAX_INGRESS_BYTES,
    AttachRequest,
    Caller,
    Cancel,
    Completion,
    Failure,
    Invoke,
    RecordError,
    Response,
    Start,
    Target,
    decode_ingress,
)
from streams.wire.topics import Topics

log = logging.getLogger("kourier.partition")


class PartitionProcessor:
    """The invocations, state and locks of ingress partition ``partition``. ``inactivity``,
    when given, replaces every service's inactivity timeout (the test harness's zero
    suspends a handler at each wait, so that every resumption replays its journal)."""

    def __init__(
        self,
        *,
        partition: int,
        partitions: int,
        topics: Topics,
        registry: Registry,
        emit: Callable[[Out], None],
        wake: Callable[[], None],
        deliver_locally: Callable[[int, Completion, Out], None] | None = None,
        call_locally: Callable[[int, Invoke, Out, str | None], bool] | None = None,
        denied_headers: frozenset[str] = DENIED_HEADERS,
        run_executor: Executor | None = None,
        clock: Callable[[], float] = time.time,
        refused: MutableMapping[str, tuple[Failure, float]] | None = None,
        inactivity: timedelta | None = None,
    ) -> None:
        self.partition = partition
        self.partitions = partitions
        self.topics = topics
        self.registry = registry
        self.outbox = Outbox(topics, partition, partitions, emit, deliver_locally, call_locally)
        self._wake = wake
        self.denied_headers = denied_headers
        self.run_executor = run_executor  # threads for synchronous ctx.run actions
        self._clock = clock  # wall-clock seconds (the test harness moves its own)
        self._headers: Headers | None = None  # of the record being applied, for its letter
        self.spill = Spill()  # the cold invocations and idempotency keys, on disk
        self.invocations = InvocationTable(
            topics, partition, self._thaw, self.spill,
            in_line=lambda inv_id, seq: self.locks.lined(inv_id, seq), lines_up=self._lines_up,
        )  # fmt: skip
        self.store = PartitionStore(topics, partition, self.spill)
        self.locks = KeyLocks()
        self.promises = Promises(self.store, self.invocations, wake)
        self.waiters = Waiters(
            self.invocations, self.outbox, registry, touch=self.touch,
            named_by_key=lambda target, key: self.store.idempotent(target, key)[1], clock=clock,
        )  # fmt: skip
        self.outcomes = Outcomes(
            self.invocations, self.store, self.locks, self.outbox, self.promises,
            run=lambda inv: self.attempts.run(inv), touch=self.touch, wake=wake, clock=clock,
        )  # fmt: skip
        complete = self.outcomes.complete
        self.attempts = Attempts(self.invocations, complete=complete, touch=self.touch,
                                 closed=lambda: self.closed, retry_of=registry.retry_of,
                                 refused=refused, inactivity=inactivity)  # fmt: skip
        self.controls = Controls(
            self.invocations, self.outbox, self.attempts,
            complete=complete, forget=self.outcomes.forget, touch=self.touch, clock=clock,
        )  # fmt: skip
        self.closed = False
        self.handing_over = False  # see hand_over()
        self.restored = 0  # changelog records read back, tombstones too
        self.starts = Starts(
            self.invocations, self.outbox, enqueue=self._enqueue, touch=self.touch,
            wake=wake, closed=lambda: self.closed, clock=clock,
        )  # fmt: skip

    # -- restore ---------------------------------------------------------------------

    def restore_state(self, key: bytes, value: bytes | None) -> None:
        self.restored += 1
        self.store.restore_state(key, value)

    def restore_dedup(self, key: bytes, value: bytes | None) -> None:
        self.restored += 1
        self.store.restore_dedup(key, value)

    def restore_invocation(self, key: bytes, value: bytes | None) -> None:
        self.restored += 1
        self.invocations.restore(key, value)

    def _thaw(self, meta: InvocationMeta, persisted_entries: int) -> Invocation:
        """A cold invocation (scheduled, waiting in its key's line, or a retained outcome)
        as an object again: its meta, as written, and no journal (``invocations``)."""
        try:
            handler = self.registry.resolve(meta.target)
        except LookupError:
            handler = None  # a scheduled one runs where it is hosted (see Starts.apply)
        inv = Invocation(meta, [], handler, self)
        inv.persisted = True
        inv.persisted_entries = persisted_entries
        return inv

    def _lines_up(self, meta: InvocationMeta) -> ObjectKey | None:
        """The key a restored pending invocation waits for when the partition starts: it
        is exclusive on an object hosted here, and due (:meth:`start`); else None."""
        lock = lock_key(meta)
        if lock is not None and self.starts.due_in(meta) <= 0:
            with contextlib.suppress(LookupError):  # raised: not hosted here
                self.registry.resolve(meta.target)
                return lock
        return None

    def start(self) -> None:
        """After restore: rebuild locks and queues, resume what was in flight. (Retained
        outcomes, and scheduled and queued invocations without a journal, were kept cold as
        they were read: ``InvocationTable.restore``.)"""
        held: set[str] = set()  # started a little early: queued when due (below)
        lined = self.invocations.take_lined()  # (seq, key, id): queued in order, below
        for meta, journal in self.invocations.take_restored():
            if len(journal) != meta.journal_length:
                log.error("invocation %s: journal incomplete in the changelog", meta.id)
                meta.status, meta.last_error = "paused", "journal incomplete in the changelog"
            try:
                handler = self.registry.resolve(meta.target)
            except LookupError as exc:
                handler = None
                if meta.status == "pending":  # queued, not started: as Starts.apply leaves it
                    meta.last_error = f"not deployed here: {exc}"
                elif meta.status != "scheduled":  # see Starts.apply
                    meta.status, meta.last_error = "paused", f"not deployed here: {exc}"
            inv = Invocation(meta, journal, handler, self)
            inv.persisted = True
            inv.persisted_entries = meta.journal_length
            self.invocations.restored(inv)
            lock = inv.lock_key
            if handler is None and meta.status == "pending":
                pass  # nothing here runs it: out of its key's line, for a worker that hosts it
            elif meta.status == "pending" and self.starts.due_in(meta) > 0:
                held.add(meta.id)
            elif meta.status == "pending" and lock is not None:
                lined.append((meta.seq, lock, meta.id))
            elif meta.status != "scheduled" and lock is not None:
                self.locks.hold(lock, meta.id)
        for seq, lock, inv_id in sorted(lined, key=lambda line: line[0]):
            self.locks.queue(lock, inv_id, seq)
        for inv in self.invocations.live():
            status = inv.meta.status
            if status in ("running", "suspended"):
                self.attempts.run(inv)
            elif status == "backing-off":
                self.attempts.schedule_retry(inv, max(0.0, (inv.meta.retry_at or 0) - time.time()))
            elif inv.meta.id in held:  # after the restore, by the clock then
                enqueue = self.starts.enqueue_when_due
                asyncio.get_running_loop().call_soon(enqueue, inv, inv.meta.seq)
            elif status == "pending" and inv.lock_key is None and inv.handler_def is not None:
                self.attempts.run(inv)
        for lock in self.locks.unheld():
            self.outcomes.unlock_next(lock)
        for inv in self.invocations.live():
            if inv.meta.target.key is not None:
                for index, entry in enumerate(inv.journal):
                    if entry.kind == "promise_get" and not entry.done and entry.name is not None:
                        self.promises.wait(inv, index, entry.name)
        self._sweep()

    def _sweep(self) -> None:
        """Forget completed invocations whose retention has passed (their idempotency keys
        and outcomes with them), then look again in a second, or soon when some are left."""
        if self.closed:
            return
        later = asyncio.get_running_loop().call_later(1.0, self._sweep)  # also after a failure
        if self.invocations.sweep(self._clock(), self.outcomes.forget):
            later.cancel()
            asyncio.get_running_loop().call_later(SWEEP_AGAIN, self._sweep)

    # -- ingress records -----------------------------------------------------------

    def on_message(
        self,
        key: bytes | None,
        value: bytes | None,
        offset: int,
        trace: str | None = None,
        origin: str | None = None,
        replayed: str | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Apply one ingress record; malformed ones go to the dead-letter topic. ``trace``: its
        headers' trace context (:mod:`streams.tracing`); ``origin``: the caller that sent a
        cancel or kill on; ``replayed``: where the dead letter it replays was first read;
        ``headers``: all of them, which its dead letter keeps."""
        self._headers = headers  # for its dead letter (_set_aside, within this call)
        if replayed is not None:
            replayed = replay_place(self.topics.ingress, replayed)
        answered = None  # what whoever waits was told: an oversize call that decodes, 413
        try:
            if value is not None and len(value) > MAX_INGRESS_BYTES:
                answered = self.outbox.oversize(value)
                raise RecordError(
                    "oversize", f"{len(value)} bytes; the limit is {MAX_INGRESS_BYTES}"
                )
            record = decode_ingress(value)
        except RecordError as error:
            if answered is None:
                answered = self.outbox.undecoded(error, value)
            self._set_aside(error, key, value, offset, replayed, answered, trace)
            return
        if replayed is not None and isinstance(record, Invoke):
            record = as_replay(record, replayed, self.registry)  # its key may route it
        try:
            owner = routing.owner(record, self.partitions, self.partition)
        except RecordError as error:  # whoever waits hears why it will not run
            answered = self.outbox.refused(record, Failure(code=400, message=error.detail))
            self._set_aside(error, key, value, offset, replayed, answered, trace)
            return
        if owner != self.partition:  # a producer that partitioned otherwise (kcat's default)
            size = len(key or b"") + len(value or b"") + headers_bytes(self._headers)
            if size <= MAX_MOVED_BYTES:  # moved; larger, it would fail every commit
                self.outbox.forward(owner, key, value, trace, origin, replayed, self._headers)
            else:
                big = RecordError("oversize", f"{size} bytes with key and headers, to move")
                told = self.outbox.refused(record, Failure(code=413, message=big.detail))
                self._set_aside(big, key, value, offset, replayed, told, trace)
            return
        try:
            self._apply(record, key, value, offset, trace, origin, replayed)
        except SpillFailed:
            raise  # the partition's spill failed (streams.engine.spill), not the record
        except Exception as error:  # one record never stops the partition
            log.exception("%s/%d@%d not applied", self.topics.ingress, self.partition, offset)
            failed = RecordError("apply-failed", f"{type(error).__name__}: {error}")
            if not isinstance(record, Invoke) or record.invocation_id not in self.invocations:
                # Nobody else will answer: whoever waits hears, not waits for good.
                why = Failure(code=500, message=f"not applied: {failed}")
                answered = self.outbox.refused(record, why)
            self._set_aside(failed, key, value, offset, replayed, answered, trace)
        self._wake()

    def _apply(
        self,
        record: routing.IngressRecord,
        key: bytes | None,
        value: bytes | None,
        offset: int,
        trace: str | None,
        origin: str | None = None,
        replayed: str | None = None,
    ) -> None:
        if isinstance(record, Invoke):
            self._apply_invoke(record, key, value, offset, trace, replayed)
        elif isinstance(record, Completion):
            self._apply_completion(record)
        elif isinstance(record, AttachRequest):
            self.waiters.apply(record)
        elif isinstance(record, Start):
            self.starts.apply(record, offset)
        else:
            self.controls.apply(record, origin)

    def _set_aside(self, error: RecordError, key: bytes | None, value: bytes | None, offset: int,
                   replayed: str | None = None, answered: int | None = None,
                   trace: str | None = None) -> None:  # fmt: skip
        self.outbox.dead_letter(error, key, value, offset, replayed, answered, trace, self._headers)
        self._wake()

    def _apply_invoke(
        self,
        record: Invoke,
        key: bytes | None,
        value: bytes | None,
        offset: int,
        trace: str | None = None,
        replayed: str | None = None,
    ) -> None:
        try:
            handler = self.registry.resolve(record.target)
        except LookupError as exc:
            # Set aside (DESIGN §6) to replay once deployed; whoever waits is answered 404.
            answered = self.outbox.unrouted(record, Failure(code=404, message=str(exc)))
            error = RecordError("unknown-target", str(exc))
            self._set_aside(error, key, value, offset, replayed, answered, trace)
            return
        target = record.target
        scope = None
        workflow = handler.service.kind == "workflow"
        run_id = ids.workflow_run_id(target.service, target.key or "") if workflow else ""
        if workflow and self.invocations.outlived(run_id, self._clock()):
            # A run past its retention is gone before the sweep comes, for a call to a
            # shared handler too: its state and promises with it.
            self.outcomes.forget(self.invocations[run_id])
        if handler.kind == "workflow":
            inv_id = run_id
        elif record.idempotency_key is not None:
            scope, inv_id = self.store.idempotent(target, record.idempotency_key)
        elif record.invocation_id is not None:
            inv_id = record.invocation_id
        elif target.key is not None:
            inv_id = ids.keyed_id(target.key, self._seed(offset))
        else:
            inv_id = ids.id_on_partition(self.partition, self.partitions, self._seed(offset))
        existing = self.invocations.get(inv_id)
        if existing is not None and existing.meta.outlived(self._clock()):
            self.outcomes.forget(existing)  # its key and id are free again: a new call
        elif existing is not None and existing.meta.target != target:  # an id given again
            taken = f"invocation {inv_id} is one of {existing.meta.target.path()}"
            log.warning("%s/%d@%d refused: %s", self.topics.ingress, self.partition, offset, taken)
            self.outbox.unrouted(record, Failure(code=409, message=taken))
            return
        elif existing is not None:
            self.waiters.duplicate(existing, record)
            return
        now = self._clock()  # the clock that decides when a started one is due (Starts)
        reply_to = record.request_id if record.mode == "call" else None  # (may be "")
        meta = InvocationMeta(
            id=inv_id,
            target=target,
            exclusive=handler.exclusive,
            argument=record.argument,
            headers=allowed_headers(record.headers, self.denied_headers),
            mode=record.mode,
            idempotency_key=record.idempotency_key,
            request_ids=[] if reply_to is None else [reply_to],
            caller=record.caller,
            seq=offset,
            created_at=now,
            modified_at=now,
            trace=trace,
        )
        if record.mode == "send" and record.request_id is not None:
            self.outbox.response(
                Response(request_id=record.request_id, invocation_id=inv_id, status="accepted")
            )
        if scope is not None:
            self.store.remember(scope, inv_id)
        inv = Invocation(meta, [], handler, self)
        self.invocations.add(inv)
        self._wake()
        if record.due is None or record.due.timestamp() <= now:
            self._enqueue(inv)
        elif not self.attempts.fail_refused(inv):  # its meta: the record Kafka refused?
            self.starts.schedule(inv, record.due.timestamp())

    def now(self) -> float:
        """The partition's clock, in epoch seconds, which due times count from: the wall
        clock in a worker (``streams.testing`` moves its own)."""
        return self._clock()

    def _seed(self, offset: int) -> str:
        """What the id of a record without one derives from: its place in the topic, so
        that a replay assigns the same id."""
        return f"{self.topics.ingress}/{self.partition}/{offset}"

    def invoke_locally(self, record: Invoke, out: Out, trace: str | None, seq: int) -> bool:
        """Apply a call or send that a handler of this process made to this partition, as
        if its record (``out``) had arrived as the partition's next record, at offset
        ``seq`` (``streams.engine.local``): only when it runs at once, so that nothing
        queued for its key is passed, and only when its record would be applied. False when
        the record must travel instead (nothing was applied)."""
        if self.closed or out.value is None or len(out.value) > MAX_INGRESS_BYTES:
            return False
        try:
            if routing.owner(record, self.partitions, self.partition) != self.partition:
                return False
            self.registry.resolve(record.target)
        except (RecordError, LookupError):
            return False  # the record says why, to the caller and the dead-letter topic
        key = record.target.key
        if key is not None:
            obj = ObjectKey(record.target.service, key)
            if self.locks.holder(obj) is not None or obj in self.locks.inboxes:
                return False
        try:  # nothing above changes anything, so a record can still take its place
            self._apply_invoke(record, out.key, out.value, seq, trace)
        except Exception:  # the record, when it comes, is applied (or set aside) as usual
            log.exception("%s/%d: a call to %s could not be applied here", self.topics.ingress,
                          self.partition, record.invocation_id)  # fmt: skip
            return False
        return True

    def release_due(self, now: float) -> None:
        """Queue the started invocations due by ``now`` (:meth:`Starts.release_due`)."""
        self.starts.release_due(now)

    @property
    def next_due(self) -> float | None:
        """When the next started invocation falls due: the worker's Kafka thread polls no
        longer than that, and steps then (``streams.kafka.pacing``)."""
        return self.starts.next_due

    def _enqueue(self, inv: Invocation) -> None:
        """Run ``inv`` now, or queue it behind the exclusive call that holds its key (unless
        held to fail for a record Kafka refused, ``Attempts.fail_refused``)."""
        lock = inv.lock_key
        if lock is None or self.locks.take_or_queue(lock, inv.meta.id, inv.meta.seq):
            self.attempts.run(inv)
        elif not self.attempts.fail_refused(inv):  # written as it waits, then kept cold
            self.invocations.touch(inv)  # (streams.engine.invocations), and so on a replay

    def on_completion(self, record: Completion) -> bool:
        """A completion given by a partition of the same process, ahead of its record
        (``streams.engine.local``), which is then left out or, when it comes, a no-op.
        Whether it completed a journal entry (which the next flush writes)."""
        if self.closed:
            return False
        try:
            applied = self._apply_completion(record)
        except Exception:  # the record, when it comes, is applied (or set aside) as usual
            caller = record.caller.invocation_id
            log.exception("%s/%d: a completion for %s could not be applied here",
                          self.topics.ingress, self.partition, caller)  # fmt: skip
            applied = False
        self._wake()
        return applied

    def _apply_completion(self, record: Completion) -> bool:
        """Complete the caller's journal entry; False when there is none left to complete."""
        inv = self.invocations.get(record.caller.invocation_id)
        if inv is None or inv.meta.status == "completed":
            return False
        index = record.caller.entry
        if index >= len(inv.journal) or not inv.journal[index].answered_by(record.invocation_id):
            log.warning("completion for %s entry %d matches no call", inv.meta.id, index)
            return False
        entry = inv.journal[index]
        if entry.done:
            return False
        failure = record.failure
        if entry.kind == "call" and failure is not None:
            if failure.code == 408 and entry.due is not None and entry.callee is not None:
                # The deadline passed: the callee is cancelled if this caller started it, or
                # else only this entry's wait on it ends.
                origin = f"{inv.meta.id}/{index}"
                self.outbox.control(Cancel(invocation_id=entry.callee), origin=origin)
            if is_cancel(failure) and inv.meta.cancel_requested and index in inv.waiting:
                # The cancel reaches the handler through the call it awaits. A call nobody
                # awaits now (a select lost it) leaves the cancel for the next wait, and so
                # does a callee's own 409 (a conflict): the handler meets it, then the cancel.
                inv.cancel_delivered()
        inv.complete_entry(index, value=record.value, failure=failure)
        return True

    # -- outputs -------------------------------------------------------------------

    def handler_invoke(self, caller: Invocation, record: Invoke, trace: str | None) -> None:
        self.outbox.invoke(record, trace, caller.meta.id)

    def handler_callee_id(
        self, caller: Invocation, index: int, target: Target, idempotency_key: str | None
    ) -> str:
        """The id of the invocation that journal entry ``index`` of ``caller`` calls or sends
        to: a workflow's run has one id per workflow id, an idempotent call the one its key
        names; others derive from the caller's run (same on a replay, not in a later run)."""
        if target.key is not None and self.registry.is_workflow_run(target):
            return ids.workflow_run_id(target.service, target.key)
        if idempotency_key is not None:
            return ids.idempotent_id(target.service, target.key, target.handler, idempotency_key)
        return ids.child_id(caller.meta.run, index, target.key, self.partitions)

    def handler_attach(self, inv: Invocation, index: int, invocation_id: str) -> None:
        """``ctx.attach_invocation``: the outcome comes back as a completion of ``index``."""
        record = AttachRequest(
            request_id=f"{inv.meta.id}/{index}",
            invocation_id=invocation_id,
            caller=Caller(invocation_id=inv.meta.id, entry=index),
        )
        self.outbox.attach(record)

    def handler_cancel(self, invocation_id: str) -> None:
        """``ctx.cancel_invocation``."""
        self.outbox.control(Cancel(invocation_id=invocation_id))

    def handler_timer(
        self, inv: Invocation, index: int, due: float, completion: Completion
    ) -> None:
        """A durable timer: ``completion`` reaches entry ``index`` of ``inv`` at ``due``,
        through the delay topic (a sleep ending, or a call's deadline)."""
        self.outbox.timer(inv.meta.id, due, completion)

    # -- workflow promises ------------------------------------------------------------

    def handler_promise(self, target: Target, name: str) -> Promise | None:
        return self.promises.get(ObjectKey.of(target), name)

    def handler_await_promise(self, inv: Invocation, index: int, name: str) -> None:
        self.promises.wait(inv, index, name)

    def handler_complete_promise(self, target: Target, name: str, promise: Promise) -> bool:
        return self.promises.complete(ObjectKey.of(target), name, promise)

    # -- state ----------------------------------------------------------------------

    def handler_state(self, target: Target) -> dict[str, JsonValue]:
        return self.store.state_of(ObjectKey.of(target))

    def handler_write_state(
        self, target: Target, kind: EntryKind, name: str | None, value: JsonValue
    ) -> None:
        self.store.write_state(ObjectKey.of(target), kind, name, value)
        self._wake()

    # -- commit --------------------------------------------------------------------------

    @property
    def started(self) -> int:
        """Attempts begun, so the worker can tell when a step settles."""
        return self.attempts.started

    def waiting(self, inv: Invocation) -> None:
        self.attempts.waiting(inv)

    def resume(self, inv: Invocation) -> None:
        self.attempts.resume(inv)

    def touch(self, inv: Invocation) -> None:
        """``inv`` changed: write it at the next flush (which stamps ``modified_at``)."""
        self.invocations.touch(inv)
        self._wake()

    def flush(self) -> list[Out]:
        """The changelog records for everything changed since the last flush."""
        out = self.store.changelog() + self.invocations.changelog()
        self.spill.commit()
        return out

    async def hand_over(self, within: float) -> None:
        """Before a clean close (the partition revoked, or the worker stopping): start no
        new ``ctx.run`` action, and give those running up to ``within`` seconds to end, so
        that their results are journaled in the last snapshot instead of performed again by
        the next owner. An action still running then is abandoned by the close, as on a
        crash: its task is cancelled (a synchronous action's thread runs on, its result
        dropped), and the next owner runs it again (at least once)."""
        if self.closed:
            return  # handed over already (a stopping worker's revoke comes after its close)
        self.handing_over = True
        running = [action for inv in self.invocations.live() for action in inv.actions]
        if not running:
            return
        log.info("partition %d: waiting up to %gs for %d ctx.run actions", self.partition,
                 within, len(running))  # fmt: skip
        await asyncio.wait(running, timeout=within)

    def close(self) -> None:
        """Stop every task: the partition is revoked, or the worker stops."""
        self.closed = True
        self.starts.clear()
        for inv in self.invocations.live():
            inv.close()

    def release(self) -> None:
        """Let go of what the partition holds on disk (:mod:`streams.engine.spill`): it is
        no longer owned, and its last changes were taken (:meth:`flush`) or are dropped."""
        self.spill.close()
