"""A worker's step: what the event loop does with one poll's records, and the snapshot
that the next transaction commits.

The worker's Kafka thread polls and hands each batch to :meth:`Stepper.step`, which runs on
the event loop while the Kafka thread waits for it (streams/kafka/worker.py):

1. the records go to their partitions' processors (ingress) or delay processors (delay);
2. delayed messages that fell due while the Kafka thread waited are released, and so are
   the invocations whose ``Start`` came early and that are due now;
3. the handlers started take their first steps, until no new one starts (:meth:`_settle`);
4. calls to partitions of this worker that were held (``streams.engine.local``) run here
   where nothing can be ahead of them, or go as records;
5. :meth:`Stepper.snapshot` takes every outgoing record, changelog write and consumed
   offset: one transaction's worth.

A step may end without a snapshot instead, when held calls wait for a few records the
consumer has still to read: the Kafka thread reads those and runs the step again.

Between steps, handlers keep running on the loop: what they emit collects in the outbox,
and :meth:`Stepper.wake` tells the Kafka thread that there is something to commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from confluent_kafka import Message, TopicPartition

from streams.engine.delay_records import LogRewound
from streams.engine.local import LocalCalls, LocalCompletions
from streams.engine.outbox import Out, origin_of, replay_of
from streams.kafka.committer import Committer, Snapshot
from streams.kafka.offsets import headers_of
from streams.kafka.ownership import Ownership
from streams.tracing import from_headers
from streams.wire.topics import Topics

log = logging.getLogger("kourier.worker")

#: Loop rounds a step goes on after a completion delivered locally (its caller wakes, then
#: finishes), and the round after which such deliveries no longer extend a step.
_AFTER_DELIVERY = 3
_DELIVERY_ROUNDS = 16
#: Rounds of held calls in one run of a step (``_run_held``): a callee run here may call on.
_LOCAL_ROUNDS = 4

#: Asks which of some ingress partitions (given the watermarks already known for some)
#: the consumer has read to their ends, and which are a few records short, with their
#: watermarks (``Worker._read_to_end``).
ReadToEnd = Callable[[set[int], dict[int, int]], Awaitable[tuple[dict[int, int], dict[int, int]]]]


class Stepper:
    """Runs the worker's steps on the event loop, and keeps what they emit until a
    snapshot takes it."""

    def __init__(
        self,
        topics: Topics,
        ownership: Ownership,
        committer: Callable[[], Committer],
        read_to_end: ReadToEnd,
    ) -> None:
        self.topics = topics
        self.processors = ownership.processors
        self.delays = ownership.delays
        self._offsets = ownership.offsets
        self._ownership = ownership
        self._committer = committer  # the worker's committer now (it may be replaced)
        self._read_to_end = read_to_end
        self.outbox: list[Out] = []
        #: Effects to commit since the last snapshot (any thread reads it).
        self.dirty = False
        #: Completions given straight to a caller's processor in this worker.
        self.local = LocalCompletions(self.processors)
        #: Calls to partitions of this worker, run here when nothing can be ahead of them.
        self.calls = LocalCalls(self.processors, topics.ingress)
        #: Partitions with calls kept for another look -> the high watermark the consumer
        #: must reach first (streams.kafka.ends).
        self.waiting: dict[int, int] = {}

    # -- what processors call -------------------------------------------------------

    def wake(self) -> None:
        """Something is left to commit (a handler went on between steps)."""
        self.dirty = True

    def emit(self, out: Out) -> None:
        """An outgoing record, unless a call held for its partition must go first."""
        if not self.calls.behind(out):
            self.outbox.append(out)

    # -- steps ----------------------------------------------------------------------

    async def step(
        self,
        batch: list[Message],
        positions: dict[int, int] | None = None,
        closing: bool = False,
        keep: bool = True,
    ) -> Snapshot | None:
        """Apply ``batch`` (records without errors), let the handlers it started take
        their first steps, snapshot; None instead when held calls wait for a few records
        the consumer has still to read: the Kafka thread reads them and runs the step
        again. A run that may not ``keep`` always snapshots. ``positions`` are the
        consumer's positions on delay partitions still catching up."""
        self._dispatch(batch)
        for partition, position in (positions or {}).items():
            if partition in self.delays:
                self.delays[partition].advance(position)
        now = time.time()
        for delay in self.delays.values():
            if delay.next_wake is not None and delay.next_wake <= now:
                delay.tick()  # due while the Kafka thread waited: into this snapshot
        for processor in self.processors.values():
            if processor.next_due is not None and processor.next_due <= now:
                processor.release_due(now)  # started invocations now due: the same
        await self._settle()
        await self._run_held(closing, keep)
        if self.waiting:
            return None
        if closing:
            await self._ownership.hand_over_all()
        return self.snapshot()

    def snapshot(self) -> Snapshot:
        """Everything to commit now: outputs, changelog writes, consumed offsets."""
        self.dirty = False
        # Nothing is held past a snapshot (a revoke's can come between the runs of a step
        # that kept calls: they go as records then).
        self.waiting = {}
        self.calls.release(self.calls.take(), {}, (), self.outbox.append)
        # Completion records whose callers have applied them go no further: the flushes
        # below write the callers' journals with the outcomes in them.
        out = self.local.needed(self.outbox)
        self.outbox = []
        for processor in self.processors.values():
            out.extend(processor.flush())
        offsets = [
            TopicPartition(self.topics.ingress, partition, offset)
            for partition, offset in self._offsets.items()
        ]
        offsets += [
            TopicPartition(self.topics.delay, partition, delay.commit_offset())
            for partition, delay in self.delays.items()
            if delay.caught_up
        ]
        return Snapshot(out, offsets)

    async def close(self, partitions: list[TopicPartition]) -> Snapshot:
        """Hand ``partitions`` over, and take what is left to commit."""
        await self._ownership.hand_over(partitions)
        return self.snapshot()

    def drop(self) -> None:
        """Let go of everything emitted and held, as recovery does before it restores."""
        self.outbox = []
        self.local.forget()
        self.calls.forget()
        self.waiting = {}

    # -- inside a step --------------------------------------------------------------

    def _dispatch(self, batch: list[Message]) -> None:
        for message in batch:
            partition = message.partition()
            offset = message.offset()
            assert partition is not None
            assert offset is not None
            if message.topic() == self.topics.delay:
                delay = self.delays.get(partition)
                try:
                    if delay is not None:
                        delay.on_message(message.key(), message.value(), offset)
                except LogRewound:  # the worker restores, and reads this log from its start
                    self._ownership.rewind.add(partition)
                    raise
                continue
            processor = self.processors.get(partition)
            if processor is None:
                continue
            headers = headers_of(message)
            if headers is None:  # a name that is not UTF-8: none are read
                log.warning("the record at %s[%d]@%d has a header whose name is not UTF-8: it"
                            " is taken without its headers (trace context, origin)",
                            message.topic(), partition, offset)  # fmt: skip
            trace, origin = from_headers(headers), origin_of(headers)
            processor.on_message(message.key(), message.value(), offset, trace, origin,
                                 replay_of(headers), headers)  # fmt: skip
            self._offsets[partition] = offset + 1

    async def _settle(self, rounds: int = 256) -> None:
        """Let handlers run until no new ones start: an exclusive call that completes at
        once unlocks its key and starts the next queued one, and so on. Queued calls that
        run within the step never reach the changelog as queued.

        A completion delivered locally (``streams.engine.local``) keeps the step going for
        ``_AFTER_DELIVERY`` more rounds, the time its caller takes to wake and finish, so
        that the caller answers in the same transaction as its callee. Deliveries extend a
        step only up to ``_DELIVERY_ROUNDS``: under load, callees of earlier steps keep
        completing and would otherwise hold the Kafka thread. A caller that needs more
        rounds (one waiting in ``select``) answers in the next transaction."""
        delivered = self.local.delivered
        last_delivery: int | None = None
        started = sum(p.started for p in self.processors.values())
        for n in range(rounds):
            await asyncio.sleep(0)
            if self.local.delivered != delivered:
                delivered, last_delivery = self.local.delivered, n
            before, started = started, sum(p.started for p in self.processors.values())
            if started != before:
                continue
            if last_delivery is None or n - last_delivery >= _AFTER_DELIVERY:
                return
            if n >= _DELIVERY_ROUNDS:
                return

    async def _run_held(self, closing: bool = False, keep_short: bool = True) -> None:
        """Run the calls held for partitions of this worker (``streams.engine.local``)
        where nothing can be ahead of them, and let what they start settle; a callee may
        call on, for up to ``_LOCAL_ROUNDS`` rounds. What cannot run here is emitted as
        records, in order, and the snapshot that follows emits what is still held.

        Calls to a partition with only a few records still unread are kept instead, with
        the partition's high watermark in ``waiting``, and the step ends without a
        snapshot (not where this worker has records of its own uncommitted). Its next run
        reads those records first, then decides the kept calls against that same
        watermark; a partition with a call made since is asked again. Nothing is kept
        unless ``keep_short``."""
        known, self.waiting = self.waiting, {}
        for _ in range(_LOCAL_ROUNDS):
            if closing or not self.calls.held:
                break
            batch = self.calls.take()
            unsent = self._unsent()  # before asking, so nothing falls between the two
            known = {p: end for p, end in known.items() if p not in self.calls.called_since}
            try:
                ready, behind = await self._read_to_end(LocalCalls.calling(batch), known)
            except Exception:  # whatever it was, the batch goes as records, not nowhere
                log.exception("asking for the ends of partitions %s failed", sorted(batch))
                ready, behind = {}, {}
            known = {}
            # Not where this worker has records of its own uncommitted: one in the
            # transaction in flight holds the consumer back until it commits, and one that
            # commits while the calls wait may lie past the watermark, yet is ahead of them.
            writing = {p for p, _ in unsent}
            keep = {p: end for p, end in behind.items() if keep_short and p not in writing}
            self.waiting.update(keep)
            if self.calls.release(batch, ready, unsent, self.outbox.append, keep):
                await self._settle()
            if self.waiting:
                break

    def _unsent(self) -> set[tuple[int, bytes | None]]:
        """Ingress partitions and keys of this worker's records still to be committed: no
        call to one of those keys may pass them. A completion that its caller has applied
        is left out of the snapshot, so it does not count."""
        ingress = self.topics.ingress
        waiting = {(out.partition, out.key) for out in self.outbox
                   if out.topic == ingress and not self.local.applied(out)}  # fmt: skip
        return waiting | self._committer().writing_to(ingress)
