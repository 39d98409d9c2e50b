"""The worker process: consumes the ingress topic, runs handlers, commits effects exactly once.

One consumer in the group ``<ns>.workers`` and one transactional producer per
process. Every commit is one Kafka transaction holding the outgoing records,
the changelog writes of every owned partition and the consumed offsets
(``send_offsets_to_transaction`` with the consumer's group metadata, KIP-447),
so a worker that lost its partitions (a zombie) can no longer commit anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import socket
import time
from collections.abc import Sequence
from typing import IO, Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from handlers.service import ServiceDefinition
from streams.broker import cache_dir
from streams.offsets import watermarks
from streams.partition import Out, PartitionProcessor
from streams.registry import Registry
from streams.settings import Settings
from streams.topics import Topics

log = logging.getLogger("kourier.worker")
_TIMEOUT = 30.0


class WorkerError(RuntimeError):
    retriable = False


def _claim_slot(namespace: str) -> tuple[int, IO[str]]:
    """A per-host slot number, held by a file lock for the life of the process.

    A worker restarted after ``kill -9`` gets its old slot back, hence its old
    transactional id, which aborts the dead process's open transaction at once
    instead of after ``transaction.timeout.ms``.
    """
    folder = cache_dir() / "slots"
    folder.mkdir(parents=True, exist_ok=True)
    for slot in range(4096):
        handle = (folder / f"{namespace}-{slot}.lock").open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return slot, handle
    raise WorkerError("no free worker slot on this host")


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
        self.registry = Registry(services)
        self.topics = Topics(settings.namespace)
        self._worker_id = worker_id
        self.processors: dict[int, PartitionProcessor] = {}
        self._outbox: list[Out] = []
        self._offsets: dict[int, int] = {}
        self._epoch = 0
        self._stopping = False
        self.partitions = 0
        self.commits = 0

    # -- set-up -------------------------------------------------------------------

    def _client(self, extra: dict[str, Any]) -> dict[str, Any]:
        return self.settings.client_config({"log_level": 4, **extra})

    def _ingress_partitions(self) -> int:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self._client({}))
        topics = admin.list_topics(timeout=_TIMEOUT).topics
        missing = [t for t in self.topics.all() if t not in topics]
        if missing:
            raise WorkerError(f"missing topics {missing}: run `kourier topics create` first")
        return len(topics[self.topics.ingress].partitions)

    def _transactional_id(self) -> str:
        if self._worker_id is None:
            slot, self._slot_lock = _claim_slot(self.settings.namespace)
            self._worker_id = f"{socket.gethostname()}-{slot}"
        return f"{self.settings.namespace}.worker.{self._worker_id}"

    def _new_producer(self) -> Producer:
        producer = Producer(
            self._client(
                {
                    "transactional.id": self._transactional_id(),
                    "transaction.timeout.ms": 10_000,
                    "linger.ms": 1,
                    # The default 100 ms backoff caps a transactional producer at ~10 commits/s:
                    # the next transaction waits for the previous one's markers.
                    "retry.backoff.ms": 5,
                    "retry.backoff.max.ms": 100,
                }
            )
        )
        producer.init_transactions(_TIMEOUT)
        return producer

    def _new_consumer(self, group: str | None = None) -> Consumer:
        return Consumer(
            self._client(
                {
                    "group.id": group or f"{self.settings.namespace}.workers",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "isolation.level": "read_committed",
                    "partition.assignment.strategy": "cooperative-sticky",
                    "fetch.wait.max.ms": 10,
                    # The broker's minimum, so that a dead worker's partitions move on quickly.
                    "session.timeout.ms": 6_000,
                    "heartbeat.interval.ms": 1_000,
                }
            )
        )

    def _publish_manifest(self) -> None:
        self._producer.begin_transaction()
        for service in self.registry.manifest():
            service["worker"] = self._worker_id
            self._producer.produce(
                self.topics.services, key=service["name"].encode(), value=json.dumps(service)
            )
        self._producer.commit_transaction(_TIMEOUT)

    # -- the loop -------------------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`stop`; in-flight invocations resume elsewhere by replay."""
        self._loop = asyncio.get_running_loop()
        self._dirty = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self.partitions = await asyncio.to_thread(self._ingress_partitions)
        self._producer = await asyncio.to_thread(self._new_producer)
        await asyncio.to_thread(self._publish_manifest)
        self._restorer = self._new_consumer(f"{self.settings.namespace}.restore")
        # Reads the group's committed offsets; it never subscribes, so it never joins the
        # group (asking the subscribed consumer from inside its rebalance callback blocks).
        self._offset_reader = self._new_consumer()
        self._consumer = self._new_consumer()
        self._consumer.subscribe(
            [self.topics.ingress],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info("worker %s hosts %s", self._worker_id, ", ".join(self.registry.services))
        committer = asyncio.create_task(self._commit_loop())
        try:
            while not self._stopping:
                epoch = self._epoch
                batch = await asyncio.to_thread(self._consumer.consume, 1000, 0.05)
                if epoch != self._epoch:
                    continue  # fetched before a reset: those records will be read again
                self._dispatch(batch)
        finally:
            self._stopping = True
            for processor in self.processors.values():
                processor.close()
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            with contextlib.suppress(KafkaException):
                await self._commit()
            await asyncio.to_thread(self._consumer.close)
            self._restorer.close()
            self._offset_reader.close()
            self._producer.flush(5)
            # librdkafka handles live until garbage collected: drop ours now.
            del self._producer, self._consumer, self._restorer, self._offset_reader

    def stop(self) -> None:
        self._stopping = True

    def _dispatch(self, batch: list[Message]) -> None:
        for message in batch:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer: %s", error)
                continue
            partition = message.partition()
            assert partition is not None
            processor = self.processors.get(partition)
            if processor is None:
                continue
            offset = message.offset()
            assert offset is not None
            processor.on_message(message.key(), message.value(), offset)
            self._offsets[partition] = offset + 1
        if batch:
            self._dirty.set()

    def _wake(self) -> None:
        self._dirty.set()

    def _emit(self, out: Out) -> None:
        self._outbox.append(out)

    # -- commits ------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._commit()
            except KafkaException as exc:
                log.error("commit failed, restoring owned partitions: %s", exc)
                await self._reset()

    async def _commit(self) -> None:
        """One transaction: every pending output, changelog write and consumed offset."""
        async with self._commit_lock:
            out = self._outbox
            self._outbox = []
            for processor in self.processors.values():
                out.extend(processor.flush())
            offsets = [
                TopicPartition(self.topics.ingress, partition, offset)
                for partition, offset in self._offsets.items()
            ]
            if not out:
                return
            await asyncio.to_thread(self._transact, out, offsets)
            self.commits += 1

    def _transact(self, out: list[Out], offsets: list[TopicPartition]) -> None:
        producer = self._producer
        producer.begin_transaction()
        try:
            for record in out:
                while True:
                    try:
                        producer.produce(
                            record.topic,
                            value=record.value,
                            key=record.key,
                            partition=record.partition,
                        )
                        break
                    except BufferError:
                        producer.poll(0.01)
            if offsets:
                metadata = self._consumer.consumer_group_metadata()
                producer.send_offsets_to_transaction(offsets, metadata, _TIMEOUT)
            producer.commit_transaction(_TIMEOUT)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.txn_requires_abort():
                with contextlib.suppress(KafkaException):
                    producer.abort_transaction(_TIMEOUT)
            elif error.fatal():
                self._producer = self._new_producer()
            raise

    # -- partitions ---------------------------------------------------------------------

    def _call_on_loop(self, coro: Any) -> None:
        """Run ``coro`` on the event loop from the consumer's thread, and wait for it."""
        asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._call_on_loop(self._assign([tp.partition for tp in partitions]))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._call_on_loop(self._revoke([tp.partition for tp in partitions]))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._call_on_loop(self._lose([tp.partition for tp in partitions]))

    async def _assign(self, partitions: list[int]) -> None:
        began = time.monotonic()
        committed = await asyncio.to_thread(
            self._offset_reader.committed,
            [TopicPartition(self.topics.ingress, p) for p in partitions],
            _TIMEOUT,
        )
        for tp in committed:
            if tp.offset >= 0:
                self._offsets[tp.partition] = tp.offset
        for partition in partitions:
            processor = PartitionProcessor(
                partition=partition,
                partitions=self.partitions,
                topics=self.topics,
                registry=self.registry,
                emit=self._emit,
                wake=self._wake,
            )
            await asyncio.to_thread(self._restore, processor)
            self.processors[partition] = processor
            processor.start()
        log.info(
            "assigned partitions %s (restored in %.2fs)",
            sorted(partitions),
            time.monotonic() - began,
        )

    async def _revoke(self, partitions: list[int]) -> None:
        """Hand partitions over cleanly: stop their handlers, commit, forget them."""
        for partition in partitions:
            if partition in self.processors:
                self.processors[partition].close()
        try:
            await self._commit()
            failed = False
        except KafkaException as exc:
            log.error("commit before hand-over failed: %s", exc)
            failed = True
        for partition in partitions:
            self.processors.pop(partition, None)
            self._offsets.pop(partition, None)
        log.info("revoked partitions %s", sorted(partitions))
        if failed:
            await self._reset()

    async def _lose(self, partitions: list[int]) -> None:
        log.warning("lost partitions %s without a clean hand-over", sorted(partitions))
        for partition in partitions:
            processor = self.processors.pop(partition, None)
            if processor is not None:
                processor.close()
            self._offsets.pop(partition, None)
        await self._reset()

    async def _reset(self) -> None:
        """After a failed commit: drop everything uncommitted, restore from Kafka, go on."""
        async with self._commit_lock:
            self._epoch += 1
            self._outbox = []
            owned = list(self.processors)
            for processor in self.processors.values():
                processor.close()
            self.processors.clear()
            self._offsets.clear()
            if owned:
                positions = [TopicPartition(self.topics.ingress, p) for p in owned]
                committed = await asyncio.to_thread(
                    self._offset_reader.committed, positions, _TIMEOUT
                )
                for tp in committed:
                    offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                    await asyncio.to_thread(
                        self._consumer.seek, TopicPartition(tp.topic, tp.partition, offset)
                    )
        if owned:
            await self._assign(owned)

    def _restore(self, processor: PartitionProcessor) -> None:
        """Read the partition's changelogs from the start to their end (blocking)."""
        partition = processor.partition
        sources = {
            self.topics.state: processor.restore_state,
            self.topics.invocations: processor.restore_invocation,
        }
        ends: dict[str, int] = {}
        for topic in sources:
            _, high = watermarks(self._restorer, TopicPartition(topic, partition))
            ends[topic] = high
        pending = [TopicPartition(t, partition, OFFSET_BEGINNING) for t, end in ends.items() if end]
        if not pending:
            return
        self._restorer.assign(pending)
        deadline = time.monotonic() + 5 * _TIMEOUT
        try:
            while True:
                for message in self._restorer.consume(1000, 0.1):
                    if message.error() is None:
                        key = message.key()
                        assert key is not None
                        sources[message.topic() or ""](key, message.value())
                positions = self._restorer.position(pending)
                if all(tp.offset >= ends[tp.topic] for tp in positions):
                    return
                if time.monotonic() > deadline:
                    raise WorkerError(f"restoring partition {partition} took too long")
        finally:
            self._restorer.unassign()
