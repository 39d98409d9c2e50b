"""The worker process: consumes the ingress topic, runs handlers, commits effects exactly once.

One consumer in the group ``<ns>.workers`` and two transactional producers, taken in turn, per
process (``streams.kafka.transactions``). Every commit is one Kafka transaction: the outgoing
records, the changelog writes of every owned partition and the consumed offsets (with the group
metadata, KIP-447), so a worker that lost its partitions (a zombie) can no longer commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from handlers.service import ServiceDefinition
from streams.engine.delay import DelayProcessor
from streams.engine.delay_records import LogRewound
from streams.engine.holding import Holding
from streams.engine.partition import PartitionProcessor
from streams.engine.registry import Registry
from streams.engine.spill import SpillFailed
from streams.kafka.committer import CommitStats, Committer, Snapshot
from streams.kafka.delay_reader import DelayReader
from streams.kafka.ends import PartitionEnds
from streams.kafka.gauges import describe, observe
from streams.kafka.membership import Membership, still_member
from streams.kafka.offsets import (
    FETCH_WAIT_MS,
    REFUSED,
    consume_ready,
    read_on_from,
    records_of,
    unread_offsets,
    worker_consumer,
)
from streams.kafka.ownership import Ownership, by_topic, delay_ends, offsets_lost
from streams.kafka.pacing import Pacing
from streams.kafka.restore import RestoreError, restore_partitions
from streams.kafka.setbacks import SPILL_WINDOW, Setbacks, pause_unless
from streams.kafka.stalls import StallWatch, watch
from streams.kafka.startup import Identity, WorkerError, ingress_partitions, manifest
from streams.kafka.step import Stepper
from streams.kafka.threads import RUN_THREADS, in_thread
from streams.kafka.transactions import Transactions, transactional_producer
from streams.kafka.trim import DelayTrimmer
from streams.settings import Settings
from streams.wire.topics import Topics

log = logging.getLogger("kourier.worker")
_TIMEOUT = 30.0
#: A transaction running longer than this is stuck: librdkafka's send_offsets_to_transaction
#: can block past its timeout when the group coordinator went away (confluentinc/librdkafka
#: #5456). The worker fences that producer with a new one, which is safe at any time: its
#: ``init_transactions`` completes a transaction that reached its commit and aborts one that
#: had not, before the restore. Shorter than ``_TIMEOUT``: a hung call is cut short by it.
_STUCK = 20.0
#: Reads ahead in one step at most (``streams.kafka.ends``), each run's calls reading on.
_READ_AHEAD_RUNS = 3
_T = TypeVar("_T")


class Worker:
    """Hosts ``services`` and processes the ingress partitions the group gives it."""

    def __init__(
        self,
        settings: Settings,
        services: Sequence[ServiceDefinition],
        *,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.registry = Registry(services, settings.retry_policy)
        self.topics = Topics(settings.namespace)
        self._group = f"{settings.namespace}.workers"  # the consumer group workers share
        self._identity = Identity(settings.namespace, worker_id)
        # Owned partitions whose readers wait at a transaction that stays open.
        self._stalls = StallWatch(settings.stall_after.total_seconds())
        self._ownership = Ownership(self.topics, self._stalls, self._new_processor, self._new_delay)
        self.processors = self._ownership.processors  # the same dicts, never replaced
        self.delays = self._ownership.delays
        self._offsets = self._ownership.offsets
        self._delay_reader: DelayReader | None = None
        self._holding = Holding()  # delayed messages held in full, over every delay partition
        # The steps on the event loop, and what they emit (streams/kafka/step.py).
        read_to_end = lambda partitions, known: self._read_to_end(partitions, known)  # noqa: E731
        self._steps = Stepper(self.topics, self._ownership, lambda: self._committer, read_to_end)
        self._group_metadata: Any = None  # of the current generation, see _metadata()
        self._observed_at = 0.0
        # When the Kafka thread steps, and how long it polls (streams/kafka/pacing.py).
        self._pacing = Pacing(self.delays, self.processors, lambda: self._steps.dirty)
        self._rebalances = 0  # rebalance callbacks run so far (see _read_ahead)
        self._setbacks = Setbacks(self.topics)  # spill and commit failures, refused records
        self._stopping = False
        self.partitions = 0
        self.stats = CommitStats()

    # -- set-up -------------------------------------------------------------------

    def _client(self, extra: dict[str, Any]) -> dict[str, Any]:
        return self.settings.client_config({"log_level": 4, **extra})

    def _new_producer(self, turn: int) -> Producer:
        return transactional_producer(self.settings, self._identity.transactional_id(turn))

    def _new_consumer(self, group: str | None = None, wait_ms: int = FETCH_WAIT_MS) -> Consumer:
        return worker_consumer(self.settings, group or self._group, wait_ms)

    def _new_transactions(self) -> Transactions:
        return Transactions(self._new_producer, stopping=self._stopped, refused=REFUSED)

    def _publish_manifest(self) -> None:
        """Announce the services this worker hosts (the catalog clients read): its first
        transaction, tried again while Kafka does not take it (:meth:`Transactions.announce`);
        a refusal by ACL, or the worker stopping, ends the worker."""
        out = manifest(self.registry, self.topics, self._identity.worker_id)
        self._transactions.announce(out, self._stopped, REFUSED)

    # -- the loop -------------------------------------------------------------------
    #
    # Three threads share the work. The event loop runs handlers, the partition
    # processors and the steps (streams/kafka/step.py); it touches a Kafka client only in
    # a step's ``_read_to_end`` (the admin client, and the consumer's positions while the
    # Kafka thread waits for that step, never inside a rebalance), and in the stall
    # watch's looks (the admin client). The Kafka thread alone polls the consumer:
    # consume, hand the records to the loop, take a snapshot of pending effects, pass it
    # to the committer thread, which alone uses the transactional producers
    # (streams/kafka/committer.py). Rebalance callbacks run inside the consumer's polls
    # (consume_ready, and the read ahead between the runs of a step) on the Kafka thread,
    # and wait for the committer first, so a commit never overlaps a rebalance
    # (librdkafka blocks consumer calls from other threads during one).

    async def run(self) -> None:
        """Run until :meth:`stop`; in-flight invocations resume elsewhere by replay."""
        self._loop = asyncio.get_running_loop()
        # Synchronous ctx.run actions get threads of their own, so that however many block,
        # the worker's own threads (Kafka, restores) never queue behind them.
        self._run_pool = ThreadPoolExecutor(
            self.settings.run_threads, thread_name_prefix=RUN_THREADS
        )
        self._steps.dirty = False
        # Each blocking part on a thread that a cancelled run() stops and waits for
        # (streams/kafka/threads.py): none outlives it, using what its end closes.
        self.partitions = await in_thread(
            lambda: ingress_partitions(self.settings, self.topics), self.stop
        )
        self._transactions = await in_thread(self._new_transactions, self.stop)
        await in_thread(self._publish_manifest, self.stop)
        # Restores read to a partition's end and stop: short fetch waits end them sooner.
        self._restorer = self._new_consumer(f"{self.settings.namespace}.restore", 5)
        # Reads the group's committed offsets. It never subscribes, so never joins the group;
        # the subscribed consumer cannot answer that from inside its rebalance callback.
        self._offset_reader = self._new_consumer()
        self._consumer = self._new_consumer()
        self._admin = admin = AdminClient(self._client({}))
        self._ends = PartitionEnds(admin, self.topics.ingress)
        self._trimmer = DelayTrimmer(admin, self.topics.delay)
        self._ownership.took, self._ownership.let_go = self._trimmer.took, self._trimmer.forget
        self._consumer.subscribe(
            [self.topics.ingress, self.topics.delay],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._membership = Membership(self._group)
        log.info("worker %s hosts %s", self._identity.worker_id, ", ".join(self.registry.services))
        log.info("settings: %s", self.settings.redacted())
        stalls = asyncio.create_task(watch(admin, self._stalls, self._ownership.owned))
        try:
            await in_thread(self._kafka_thread, self.stop)
        finally:
            self._stopping = True
            stalls.cancel()
            await asyncio.gather(stalls, return_exceptions=True)  # it logs its own errors
            self._ownership.close_all()
            if self._delay_reader is not None:
                await asyncio.to_thread(self._delay_reader.close)
                self._delay_reader = None
            self._run_pool.shutdown(wait=False, cancel_futures=True)
            # librdkafka handles live until garbage collected: drop ours now.
            del self._transactions, self._consumer, self._restorer, self._offset_reader
            del self._ends, self._trimmer, self._admin

    def stop(self) -> None:
        self._stopping = True

    def status(self) -> dict[str, Any]:
        """What this worker is doing, for a dump (``kill -USR1``, streams/cli/dump.py; on
        the loop): its partitions, the consumed offsets, the transaction in flight."""
        committer: Committer | None = getattr(self, "_committer", None)
        stepped = self._pacing.stepped_at
        return {
            "worker": self._identity.worker_id,
            "stopping": self._stopping,
            "rebalances": self._rebalances,
            "commits": self.stats.commits,
            "effects_to_commit": self._steps.dirty,
            "since_last_step_s": round(time.monotonic() - stepped, 3) if stepped else None,
            "restoring": self._ownership.restoring,
            "reading_ahead_to": self._steps.waiting,
            "consumed_offsets": dict(self._offsets),
            "committer": None if committer is None else committer.status(),
            **describe(self.processors, self.delays),
        }

    def _kafka_thread(self) -> None:
        self._committer = Committer(self._transact_counted)
        try:
            while not self._stopping:
                if self._committer.failure is not None:
                    self._recover_from(self._committer.failure, may_pause=True)
                if self._committer.busy_for() > _STUCK:
                    self._replace_stuck_producer()
                wait = self._pacing.poll_timeout(self._committer.idle)
                batch = consume_ready(self._consumer, 1000, wait, lambda: self._rebalances)
                positions = self._delay_positions()
                if self._pacing.needs_step(batch, positions):
                    snapshot = self._trusted_step(batch, positions)
                    if snapshot is not None and self._committer.worth(snapshot):
                        snapshot.metadata = self._metadata()
                        if not self._committer.submit(snapshot, _STUCK):
                            self._replace_stuck_producer()  # and restore: drops the snapshot
                if time.monotonic() >= self._observed_at + 1.0:
                    self._observe()
                    self._trimmer.tick()
            last = self._trusted_step([], {}, closing=True)
            if last is not None:
                self._commit(last)
        except BaseException:
            self._stopping = True  # nothing waits for Kafka on the way out
            raise
        finally:
            try:
                # Runs on_revoke, which hands over what is left, and raises what it raised
                # (a WorkerError when a spill failed): the rest is closed all the same.
                self._consumer.close()
            finally:
                self._committer.close()
                self._restorer.close()
                self._offset_reader.close()
                self._transactions.close(5)

    def _stepped(
        self, batch: list[Message], positions: dict[int, int], closing: bool = False
    ) -> Snapshot:
        """Run a step on the loop, and again (``_READ_AHEAD_RUNS`` at most) while held calls
        wait for records not read yet, read meanwhile; the snapshot (Kafka thread)."""
        snapshot = self._on_loop(self._steps.step(self._checked(batch), positions, closing))
        runs = 0
        while snapshot is None:  # ends: the last run keeps nothing, so it snapshots
            runs += 1
            keep = runs < _READ_AHEAD_RUNS
            read = self._checked(self._read_ahead())
            snapshot = self._on_loop(self._steps.step(read, keep=keep))
        return snapshot

    def _trusted_step(
        self, batch: list[Message], positions: dict[int, int], closing: bool = False
    ) -> Snapshot | None:
        """:meth:`_stepped`, unless a spill failed (streams/engine/spill.py) or a delay log
        was made again: then nothing is committed, and owned partitions restored (Kafka)."""
        try:
            snapshot = self._stepped(batch, positions, closing)
        except (SpillFailed, LogRewound) as raised:
            self._recover_from_step(raised)
            return None
        failed = self._ownership.spill_failure()
        if failed is not None:
            self._recover_from_step(failed)
            return None
        return snapshot

    def _recover_from_step(self, failure: SpillFailed | LogRewound) -> None:
        """A spill failed, or a delay log was made again: drop the partitions (their handlers
        stop now), let what was submitted commit, restore them from Kafka (Kafka thread)."""
        if isinstance(failure, SpillFailed):
            self._count_spill_failure(failure)
        log.error("%s; restoring owned partitions from Kafka", failure)
        owned = self._on_loop(self._drop_all())
        self._recover(settled=isinstance(self._finish_commits(), TimeoutError), owned=owned)
        self._committer.clear()

    def _finish_commits(self) -> Exception | None:
        """Let what was submitted commit or fail, before a restore reads the committed
        offsets; a transaction stuck in it is fenced (new producers, nothing restored
        yet). The committer's failure, a ``TimeoutError`` when it was stuck, any other
        counted as :meth:`_recover_from` counts it (Kafka thread)."""
        failure = self._committer.flush(_STUCK)
        if isinstance(failure, TimeoutError):
            self._replace_stuck_producer(recover=False)
        elif failure is not None:  # records Kafka refused: their invocations are held
            self._setbacks.commit_failed(self.stats.commits, failure)
            self._group_metadata = None  # as in _recover_from
        return failure

    def _count_spill_failure(self, failure: SpillFailed) -> None:
        """Spill failures that keep coming (:meth:`Setbacks.spill_failed`) end the worker:
        every partition is dropped, so nothing it did since its last snapshot is committed,
        and :class:`WorkerError` is raised (Kafka thread)."""
        failures = self._setbacks.spill_failed()
        if failures is not None:
            self._on_loop(self._drop_all())
            raise WorkerError(
                f"{failure} ({failures} spill failures within {SPILL_WINDOW:.0f}s; README, Limits)"
            ) from failure

    def _observe(self) -> None:
        """Refresh the gauges, and say if the consumer is out of its group (Kafka thread)."""
        self._observed_at = time.monotonic()
        observe(self._consumer, self.topics, self.processors, self.delays)
        self._membership.check(self._consumer)

    def _on_loop(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the event loop and wait for its result (Kafka thread only)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _delay_positions(self) -> dict[int, int]:
        """Consumer positions of delay partitions still catching up (Kafka thread)."""
        catching_up = [p for p, d in list(self.delays.items()) if not d.caught_up]
        if not catching_up:
            return {}
        tps = [TopicPartition(self.topics.delay, p) for p in catching_up]
        return {tp.partition: tp.offset for tp in self._consumer.position(tps) if tp.offset >= 0}

    async def _read_to_end(
        self, partitions: set[int], known: dict[int, int]
    ) -> tuple[dict[int, int], dict[int, int]]:
        """Of ``partitions`` (ingress), those the consumer has read to their ends, and
        those a few records short, with their watermarks (``PartitionEnds.read_to_end``;
        on the loop, while the Kafka thread waits, so the positions stand still)."""
        return await self._ends.read_to_end(self._consumer, partitions, known, self._offsets)

    def _read_ahead(self) -> list[Message]:
        """Read up to the watermarks the kept calls wait for (Kafka thread)."""
        return self._ends.read_ahead(self._consumer, self._steps.waiting, lambda: self._rebalances)

    def _checked(self, batch: list[Message]) -> list[Message]:
        """The records of ``batch`` (:func:`records_of`); an ACL's refusal before the first
        rebalance ends the worker: no partition would ever come (Kafka thread)."""
        records, errors = records_of(batch)
        for error in errors:
            if error.code() in REFUSED and not self._rebalances:  # later, it may pass
                raise WorkerError(f"Kafka refused this worker: {error.str()} (README, "
                                  "Security: the ACLs `kourier acls` lists)")  # fmt: skip
            log.warning("consumer: %s", error)
        return records

    # -- commits ------------------------------------------------------------------------

    def _commit(self, snapshot: Snapshot) -> None:
        """Commit ``snapshot`` after everything submitted before it, and wait (Kafka thread);
        on failure, restore and go on."""
        taken = True
        if self._committer.worth(snapshot, now=True):
            snapshot.metadata = self._metadata()
            taken = self._committer.submit(snapshot, _STUCK)
        failure = self._committer.flush(_STUCK) if taken else TimeoutError("stuck")
        if isinstance(failure, TimeoutError):
            if self._stopping and self._committer.abandoned:
                return  # no producer to commit with: the next owner reads it all again
            self._replace_stuck_producer()
        elif failure is not None:
            self._recover_from(failure)

    def _metadata(self) -> Any:
        """The consumer's group metadata, which a transaction's offsets carry so that the
        broker refuses them from a worker of an older generation (KIP-447); read once per
        generation (Kafka thread).

        librdkafka answers ``consumer_group_metadata()`` from its main thread, and the call
        holds the GIL while it waits: read for every snapshot, it held up the event loop
        and the committer under load. A generation ends only in a rebalance, and with the
        eager ``range`` assignment every rebalance runs the revoke and assign callbacks,
        which forget the metadata, as does a failed commit. The broker refuses offsets of an
        older generation, so metadata kept too long would cost a refused commit and a
        restore, never let a worker that lost its partitions commit."""
        if self._group_metadata is None:
            self._group_metadata = self._consumer.consumer_group_metadata()
        return self._group_metadata

    def _replace_stuck_producer(self, recover: bool = True) -> None:
        """A transaction is stuck inside librdkafka: a new producer with the same
        transactional id fences the stuck one (its open transaction is aborted), a new
        committer thread takes over, and the partitions are restored from Kafka."""
        log.error(
            "a transaction has been stuck for %.0fs; fencing it with a new producer",
            self._committer.busy_for(),
        )
        self._committer.abandon()
        stop = recover and not self._stopping  # (a stopping one hands its partitions over)
        owned = self._on_loop(self._drop_all()) if stop else None  # their handlers stop now
        # New producers fence the stuck one; if Kafka does not answer and the worker stops, it
        # commits nothing more: Kafka aborts the transaction after transaction.timeout.ms.
        if not self._settle_producers():
            return
        self._committer = Committer(self._transact_counted)
        if recover:
            self._recover(settled=True, owned=owned)

    def _settle_producers(self) -> bool:
        """Wait until every producer's last transaction is complete (Kafka thread;
        :meth:`Transactions.settle`); False when the worker stops before Kafka answers."""
        try:
            self._transactions.settle(self._stopped)
        except KafkaException as exc:
            if not self._stopping:
                raise
            log.warning("stopping before the producers' last transactions settled: %s", exc)
            return False
        return True

    def _recover_from(self, failure: Exception, *, may_pause: bool = False) -> None:
        """Restore after a failed commit; with ``may_pause`` (the Kafka thread's loop, not a
        rebalance callback, which every member of the group waits for), after the pause
        that commits failing again and again call for (:meth:`Setbacks.commit_failed`)."""
        due = self._setbacks.commit_failed(self.stats.commits, failure)
        pause = due if may_pause else 0.0
        in_a_row, later = self._setbacks.failed_in_a_row, f" in {pause:g}s" if pause else ""
        log.error("commit failed (%d in a row), restoring owned partitions from Kafka%s: %s",
                  in_a_row, later, failure)  # fmt: skip
        owned = self._on_loop(self._drop_all())  # their handlers stop now, not after it
        pause_unless(self._stopped, pause)
        self._group_metadata = None
        self._recover(owned=owned)
        self._committer.clear()

    def _transact_counted(self, snapshot: Snapshot) -> None:
        """One transaction, with statistics (committer thread)."""
        began = time.perf_counter()
        self._transactions.commit(snapshot)
        self._trimmer.committed(snapshot.offsets)
        stats = self.stats
        stats.add(snapshot, time.perf_counter() - began)
        if log.isEnabledFor(logging.DEBUG) and stats.commits % 200 == 0:
            transactions = self._transactions
            log.debug(
                "%s; %d calls run without their records, %d of %d reads ahead reached their "
                "watermarks",
                stats.describe(transactions.phases, transactions.offsets_first),
                self._steps.calls.ran,
                self._ends.read_ahead_hits,
                self._ends.read_aheads,
            )

    def _recover(self, settled: bool = False, owned: list[TopicPartition] | None = None) -> None:
        """Drop everything uncommitted (``owned``: dropped already), rewind, restore (Kafka
        thread); first, unless ``settled``, let every producer's last transaction end."""
        owned = self._on_loop(self._drop_all()) if owned is None else owned
        if not owned or self._stopping:
            return  # a worker on its way out restores nothing: the next owner does
        if not settled and not self._settle_producers():
            return
        read_on_from(self._consumer, self._take_over(owned))

    async def _drop_all(self) -> list[TopicPartition]:
        owned = self._ownership.drop_all()
        self._steps.drop()
        return owned

    # -- partitions (rebalance callbacks run on the Kafka thread, inside its polls) -------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._rebalances += 1
        self._group_metadata = None  # a new generation
        taken = self._take_over(partitions)
        if any(tp.offset == OFFSET_BEGINNING for tp in taken):  # a delay log made again
            consumer.assign(taken)  # (the others at their committed offsets, as by default)

    def _take_over(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """Read the committed offsets, restore, start (Kafka thread); the offsets read. This
        can fail while brokers come and go, or a transaction stays open on a changelog: tried
        again until it succeeds or the worker stops (nothing taken over). Out of the group (in
        here past ``max.poll.interval.ms``, or its session expired while Kafka was away: no
        member id), it gives its partitions up, and its next poll delivers the loss."""
        member = self._consumer.memberid()
        rewinding = {tp.partition for tp in partitions if tp.topic == self.topics.delay}
        rewinding &= self._ownership.rewind  # across the tries (forget lets go of it)
        while True:
            try:
                still_member(self._consumer, member, "no member")  # out already: none started
                self._ownership.rewind |= rewinding
                committed = (
                    self._offset_reader.committed(partitions, _TIMEOUT) if partitions else []
                )
                failed = next((tp for tp in committed if tp.error is not None), None)
                if failed is not None:
                    # Its offset is unknown (-1001), which reads as "none committed": the
                    # partition would be read again from its start, over its restored state.
                    raise KafkaException(failed.error)
                ends = delay_ends(self._admin, self.topics, committed, _TIMEOUT, self._stopped)
                committed = self._ownership.rewound(committed, ends)
                self._on_loop(self._ownership.restore(committed, ends, self._restore))
                still_member(self._consumer, member, "restored too late")  # (ownership.py)
                self._on_loop(self._ownership.start(committed))
                offsets_lost(self._consumer, self.topics, self._group, committed, self.processors)
                still_member(self._consumer, member, "too late")
                return committed
            except (KafkaException, WorkerError, RestoreError, SpillFailed) as exc:
                self._on_loop(self._ownership.forget(partitions, close=True))
                if self._stopping:
                    log.info("stopping: %s not taken over (%s)", by_topic(partitions), exc)
                    return []
                if isinstance(exc, SpillFailed):
                    self._count_spill_failure(exc)
                now = self._consumer.memberid()
                if not now or now != member:
                    log.warning("not taking over %s: out of group %s since (%s)",
                                by_topic(partitions), self._group, exc)  # fmt: skip
                    return []
                hint = unread_offsets(self._admin, self._group, exc)
                log.warning("taking over %s failed (%s%s); trying again",
                            by_topic(partitions), exc, hint)  # fmt: skip
                time.sleep(1.0)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Hand partitions over cleanly: stop their handlers and timers, take what they have
        to commit, forget them, then commit. Forgotten first, so that a commit that fails
        restores only the partitions this worker keeps (a restore of the revoked ones would
        leave processors running that nothing closes)."""
        self._rebalances += 1
        try:
            snapshot: Snapshot | None = self._on_loop(self._steps.close(partitions))
            failure = self._ownership.spill_failure()
        except SpillFailed as raised:
            snapshot, failure = None, raised
        if snapshot is None or failure is not None:
            # Nothing since the last commit can be trusted, and the partitions are on their
            # way to another worker: commit nothing, and end (a WorkerError, which no step
            # takes for a spill failure to recover from). What was submitted before commits
            # now, inside the rebalance, or is given up on once stuck: closing the committer
            # would otherwise wait for good on a transaction Kafka never answers.
            self._on_loop(self._drop_all())
            if isinstance(self._committer.flush(_STUCK), TimeoutError):
                self._committer.abandon()  # Kafka aborts it when the ids are fenced again
            raise WorkerError(f"{failure} while partitions were handed over") from failure
        self._on_loop(self._ownership.forget(partitions, close=True))
        self._commit(snapshot)
        self._group_metadata = None  # the generation ends with this rebalance
        log.info("revoked %s", by_topic(partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("lost %s without a clean hand-over", by_topic(partitions))
        self._rebalances += 1
        self._group_metadata = None
        # Every handler stops first; what was queued then fails, or is fenced if stuck.
        self._on_loop(self._ownership.forget(partitions, close=True))
        owned = self._on_loop(self._drop_all())  # the kept ones, restored after the wait
        self._recover(settled=isinstance(self._finish_commits(), TimeoutError), owned=owned)
        self._committer.clear()

    def _new_processor(self, partition: int) -> PartitionProcessor:
        return PartitionProcessor(
            partition=partition,
            partitions=self.partitions,
            topics=self.topics,
            registry=self.registry,
            emit=self._steps.emit,
            wake=self._steps.wake,
            deliver_locally=self._steps.local.deliver,
            call_locally=self._steps.calls.hold,
            denied_headers=self.settings.header_denylist,
            run_executor=self._run_pool,
            refused=self._setbacks.refused,
        )

    def _new_delay(self, partition: int, start: int, caught_up_at: int) -> DelayProcessor:
        return DelayProcessor(
            partition=partition, partitions=self.partitions, topics=self.topics,
            start_offset=start, caught_up_at=caught_up_at, emit=self._steps.emit,
            wake=self._steps.wake, fetcher=self._reader(), holding=self._holding,
        )  # fmt: skip

    def _restore(self, processors: list[PartitionProcessor]) -> None:
        """Read back the changelogs of ``processors`` (a thread of its own)."""
        restore_partitions(self._restorer, self._admin, self.topics, processors, self._stopped)

    def _stopped(self) -> bool:
        return self._stopping

    def _reader(self) -> DelayReader:
        """The thread that reads far-off delayed messages back by offset (started lazily)."""
        if self._delay_reader is None:
            group = f"{self.settings.namespace}.delay-reader"
            self._delay_reader = DelayReader(self._client({"group.id": group}), self.topics.delay)
        return self._delay_reader
