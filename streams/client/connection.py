"""The client's side of Kafka: its producer, its reader of responses and of the service
catalog, and the two threads that serve them (``streams.client.client`` builds the calls).

Responses land on the partition their request id hashes to. A client draws ids that all
hash to one partition (:class:`~streams.wire.partitioning.KeysOn`) and reads only that one,
from its end when the client starts, so a worker's transaction touches one response
partition per client and no response written after the start can be missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, Literal, TypeVar

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from pydantic import BaseModel

from handlers.exceptions import TerminalError
from streams.errors import KourierError
from streams.kafka.offsets import (
    FETCH_WAIT_MS,
    Refusals,
    consume_ready,
    required_topics,
    transient,
    watermarks,
)
from streams.kafka.stalls import StallWatch, watch
from streams.settings import Settings
from streams.wire.partitioning import KeysOn
from streams.wire.records import RecordError, Response, decode_response, request_id_of
from streams.wire.topics import Topics

_T = TypeVar("_T")

#: A delivery report waiting to reach the loop: whose future, and Kafka's error if any.
_Report = tuple[asyncio.Future[Any], KafkaError | None]


class ServiceInfo(BaseModel):
    """A service as its workers announce it on the services topic."""

    name: str
    kind: Literal["service", "object", "workflow"]
    handlers: dict[str, dict[str, str]]
    worker: str | None = None

    def handler_kind(self, handler: str) -> str | None:
        info = self.handlers.get(handler)
        return None if info is None else info.get("kind")


#: Seconds a record waits for room in librdkafka's queue, full in a long outage, before
#: it is refused (KafkaUnavailable, nothing written): a call waiting on did so until its
#: timeout, whose answer says the invocation may go on. Half the call timeout when that
#: is shorter (``KOURIER_CALL_TIMEOUT``), for the same reason.
QUEUE_FULL_WAIT = 30.0


class _Shared:
    """A start's reader, which its thread reads Kafka with: closed by the last to let go of
    it, the thread done with it or the start that failed or was cancelled (a close while
    the thread is in a call on it would wait for that call: Kafka's own 30 s)."""

    def __init__(self, reader: Consumer) -> None:
        self.reader = reader
        self._lock = threading.Lock()
        self._holders = 2

    def let_go(self) -> None:
        with self._lock:
            self._holders -= 1
            last = self._holders == 0
        if last:
            self.reader.close()


class KafkaUnavailable(KourierError, RuntimeError):
    """Kafka could not take or deliver the record in time (HTTP 503)."""

    retriable = True


class ClientClosed(KourierError, RuntimeError):
    """The client closed while a call waited, or Kafka failed a record that may have been
    written: its invocation may run. Attach to it (by its id) with another client for its
    outcome; calling again without an idempotency key could run it twice. Raised for a
    call made once the client is closing or closed, ``may_be_written`` is False: nothing
    was."""

    def __init__(self, message: str, *, may_be_written: bool = True) -> None:
        super().__init__(message)
        self.may_be_written = may_be_written


class ResponseUnreadable(KourierError, RuntimeError):
    """The worker answered, and this client cannot read the answer (written by a newer
    Kourier, say): the invocation ran, or was refused. Attach to it with a client that can
    read it; calling again may run it again."""


class Connection:
    """A client's producer and readers; :meth:`start` on the loop that will use it."""

    def __init__(self, settings: Settings, topics: Topics) -> None:
        self.settings = settings
        self.topics = topics
        self.partitions = 0  # of the ingress topic, known once started
        #: The catalog. Threads (the pump, a catch-up) replace it, never change it in place,
        #: so the loop may iterate it; ``_catalog_lock`` keeps their updates from crossing.
        self.services: dict[str, ServiceInfo] = {}
        self._catalog_lock = threading.Lock()
        self._followed = 0  # the catalog's offset the follower has applied records up to
        self.running = False
        #: Kafka's reason, once the producer failed for good (an idempotent producer that
        #: lost its sequence, an ACL): no record goes out again until the client restarts.
        self.failed: str | None = None
        self._pending: dict[str, asyncio.Future[Response]] = {}
        self._closes: set[asyncio.Future[None]] = set()  # set when a close begins
        # Delivery reports and responses read by the background threads, not yet handed
        # to the loop (each list is touched by one thread at a time; see the threads).
        self._reports: list[_Report] = []
        #: Responses read, and those read but not understood (by request id), for the loop.
        self._answered: list[Response | tuple[str, RecordError]] = []
        self._closing: asyncio.Future[None] | None = None
        self._starting: asyncio.Future[None] | None = None  # done once a start has ended
        self._reading: asyncio.Future[None] | None = None  # a start's thread that reads Kafka

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Start, unless running: a start under way is waited for, and tried again only if
        it failed (two would each make a producer, a reader and threads, the first's left
        running with nothing to stop them)."""
        while self._starting is not None and not self._starting.done():
            await asyncio.shield(self._starting)
        if self.running and self._closing is None:  # (a close under way: started after it)
            return
        self._loop = asyncio.get_running_loop()
        self._starting = starting = self._loop.create_future()  # a close waits for it
        try:
            if self._closing is not None and not self._closing.done():
                await asyncio.shield(self._closing)  # a cancelled close still shutting down
            if self._reading is not None and not self._reading.done():
                await asyncio.wait([self._reading])  # a cancelled start's thread, still on
            await self._start()
        finally:
            starting.set_result(None)

    async def _start(self) -> None:
        self._closing = None  # a client closed before may start again
        self.failed = None  # with a producer of its own
        self._producer = Producer(
            self.settings.producer_config(
                {
                    "enable.idempotence": True,
                    "linger.ms": 0,
                    # No delivery timeout: a record whose fate is unknown (brokers away) is
                    # retried until Kafka says. What Kafka then reports says "not written"
                    # (HTTP 503) or "perhaps written" (an idempotence error: ClientClosed, may
                    # be written, 504) by its code; so does the close, which gives up on such
                    # a record (see _settle).
                    "message.timeout.ms": 0,
                    "log_level": 3,
                }
            )
        )
        # Its error callback, served by its polls, tells a TLS handshake or a SASL login the
        # brokers refused from brokers that do not answer: the start fails at once then.
        self._refusals = Refusals()
        self._reader = self._new_reader(FETCH_WAIT_MS, refusals=self._refusals)
        # Shielded: on a cancel the thread goes on, in calls on the reader and setting what
        # the client reads; a next start begins once it ends (a close does not wait for it:
        # it leaves nothing of the client's running).
        shared = _Shared(self._reader)
        self._reading = asyncio.ensure_future(asyncio.to_thread(self._assign_reader, shared))
        try:
            await asyncio.shield(self._reading)
        except BaseException:
            shared.let_go()
            del self._producer, self._reader  # nothing was produced: nothing to flush
            raise
        # A transaction left open on the response partition would hold every answer back.
        self._admin = AdminClient(self.settings.client_config({"log_level": 3}))
        stalls = StallWatch(self.settings.stall_after.total_seconds())
        self._stalls = asyncio.create_task(watch(self._admin, stalls, self.read))
        self.running = True
        self._threads = [
            threading.Thread(target=self._pump, name="kourier-responses", daemon=True),
            threading.Thread(target=self._deliveries, name="kourier-deliveries", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def awaited(self) -> int:
        """Responses still waited for (one per call in flight)."""
        return len(self._pending)

    def _assign_reader(self, shared: _Shared) -> None:
        """Read responses from the current end, fixed now, so no response can be missed.
        Kafka away (or a partition without a leader) past the timeouts: KafkaUnavailable; a
        connection the brokers refused (TLS, SASL): their ``KafkaException`` at once."""
        with self._unavailable():
            try:
                self._assign_reader_at_end(shared.reader)
            finally:
                shared.let_go()

    @contextlib.contextmanager
    def _unavailable(self) -> Iterator[None]:
        """A ``KafkaException`` that trying later can mend (Kafka away) as KafkaUnavailable."""
        try:
            yield
        except KafkaException as exc:
            error = exc.args[0]
            if not isinstance(error, KafkaError) or not transient(error):
                raise
            where = self.settings.bootstrap_servers
            raise KafkaUnavailable(f"Kafka at {where} did not answer: {error.str()}") from None

    def _assign_reader_at_end(self, reader: Consumer) -> None:
        needed = (self.topics.ingress, self.topics.responses, self.topics.services)
        metadata = required_topics(reader, needed, refusals=self._refusals)
        self.partitions = len(metadata[self.topics.ingress].partitions)
        response_partitions = len(metadata[self.topics.responses].partitions)
        self._home = random.randrange(response_partitions)
        self._request_ids = KeysOn(self._home, response_partitions)
        tp = TopicPartition(self.topics.responses, self._home)
        _, high = watermarks(reader, tp)
        start = [TopicPartition(self.topics.responses, self._home, high)]
        low, end = watermarks(reader, TopicPartition(self.topics.services, 0))
        self._followed = self._read_catalog(low, end)
        start.append(TopicPartition(self.topics.services, 0, self._followed))
        reader.assign(start)

    def read(self) -> list[tuple[str, int]]:
        """The partitions this client reads: its responses, and the service catalog."""
        return [(self.topics.responses, self._home), (self.topics.services, 0)]

    def _new_reader(
        self,
        wait_ms: int,
        extra: Mapping[str, str] | None = None,
        refusals: Refusals | None = None,
    ) -> Consumer:
        """A ``read_committed`` consumer outside any group's assignment (it is assigned
        partitions and commits nothing), with ``wait_ms`` as its fetch wait, and
        ``refusals`` as its error callback."""
        config: dict[str, Any] = self.settings.client_config(
            {
                "group.id": f"{self.settings.namespace}.client.{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": wait_ms,
                "log_level": 3,
                **(extra or {}),
            }
        )
        if refusals is not None:
            config["error_cb"] = refusals
        return Consumer(config)

    async def close(self) -> None:
        """Stop reading, deliver or drop what is still to produce, and end every call that
        waits (:class:`ClientClosed`). A cancelled close goes on to its end, which a later
        close waits for. A close during the start waits for it, then closes."""
        if self._starting is not None and not self._starting.done():
            await asyncio.shield(self._starting)
        if self._closing is None:
            if not self.running:
                return
            self.running = False  # no call from now on: check_open says so at once
            for closing in self._closes:
                if not closing.done():
                    closing.set_result(None)
            self._closing = asyncio.ensure_future(self._shut_down())
        await asyncio.shield(self._closing)

    async def _shut_down(self) -> None:
        self.running = False
        try:
            self._stalls.cancel()
            await asyncio.gather(self._stalls, return_exceptions=True)  # it logs its errors
            for thread in self._threads:
                await asyncio.to_thread(thread.join)
            self._reader.close()
            try:
                await asyncio.to_thread(self._producer.flush, 5)
                # Records still undelivered (Kafka away: they have no delivery timeout) are
                # dropped now, their senders told so; otherwise the producer could never be
                # destroyed. Each may have been written (ClientClosed, see _settle).
                self._producer.purge()
                await asyncio.to_thread(self._producer.flush, 1)
            finally:
                self._settle_all(self._hand_over())  # reports served by those flushes
            # librdkafka handles live until garbage collected (the finished watch task
            # keeps its admin client through its exception's traceback)
            del self._producer, self._reader, self._admin, self._stalls
        finally:  # even when the close is cancelled: no response can come any more
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ClientClosed("client closed before the outcome came"))

    async def unless_closed(self, waited: asyncio.Future[_T], what: str) -> _T:
        """``waited``'s result, or ``ClientClosed`` (nothing written) once a close begins:
        a call waiting for ``what`` (the catalog's read, up to 40 s) ends with the close,
        as one waiting for its outcome does; what it waited for goes on by itself."""
        closing = asyncio.get_running_loop().create_future()
        self._closes.add(closing)
        try:
            await asyncio.wait({waited, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._closes.discard(closing)
            if not waited.done():  # left to end by itself: a failure is not "never retrieved"
                waited.add_done_callback(lambda left: left.cancelled() or left.exception())
        if not waited.done():
            raise ClientClosed(f"the client closed while waiting for {what}", may_be_written=False)
        return waited.result()

    def check_open(self) -> None:
        """``ClientClosed`` (nothing written) before the client has started, and once it is
        closing or closed."""
        if not self.running:
            said = "closed" if self._closing is not None else "not started (await start())"
            raise ClientClosed(f"the client is {said}", may_be_written=False)

    # -- producing --------------------------------------------------------------------

    async def produce(
        self,
        topic: str,
        value: bytes,
        partition: int,
        key: str,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        *,
        failing: asyncio.Future[Any] | None = None,
    ) -> None:
        """Write one record; returns once Kafka has it (``KafkaUnavailable`` when it did
        not take it, ``ClientClosed`` when the client closed while it may have).

        With ``failing`` (the future of the record's response) it returns once the record
        is queued, and only a failure reaches the loop, as that future's exception: a call
        waits for its response alone, and its delivery costs the loop no wake-up."""
        self.check_open()  # closing or closed: no report would ever come
        delivered: asyncio.Future[Any] = self._loop.create_future() if failing is None else failing

        def report(error: KafkaError | None, message: Message) -> None:
            if failing is None or error is not None:
                self._reports.append((delivered, error))

        pause = 0.005  # while librdkafka's queue is full, doubling: a long outage fills it
        full_wait = min(QUEUE_FULL_WAIT, self.settings.call_timeout.total_seconds() / 2)
        full_until = self._loop.time() + full_wait
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key.encode(),
                    partition=partition,
                    on_delivery=report,
                    headers=headers,
                )
                break
            except BufferError:
                if self._loop.time() > full_until:  # not queued: a 503, not "it may go on"
                    raise KafkaUnavailable(
                        f"the client's queue of records for Kafka has been full for"
                        f" {full_wait:g}s (Kafka unreachable?): nothing was written"
                    ) from None
                await asyncio.sleep(pause)
                pause = min(2 * pause, 0.1)
                self.check_open()
            except KafkaException as exc:  # not queued: nothing was written
                error: KafkaError = exc.args[0]
                said = f"Kafka did not take the record: {error.str()}"
                if error.code() == KafkaError.MSG_SIZE_TOO_LARGE:  # the same record, again
                    raise TerminalError(said, 413) from None
                if _fatal(error):  # the idempotent producer failed for good (an ACL, say)
                    self.failed = self.failed or error.str()
                    said += "; the client's producer cannot go on: restart the client"
                raise KafkaUnavailable(said) from None
        if failing is None:
            await delivered

    def _deliveries(self) -> None:
        """Background thread: delivery reports, served as soon as the broker acknowledges,
        handed to the loop once per poll (one wake-up of the loop for all of them)."""
        while self.running:
            try:
                self._producer.poll(0.05)
            except KafkaException as exc:  # a fatal error is raised here, once: the thread
                error: KafkaError = exc.args[0]  # goes on, to serve the reports that follow
                self.failed = error.str()
            reports = self._hand_over()
            if reports:
                self._loop.call_soon_threadsafe(self._settle_all, reports)

    def _hand_over(self) -> list[_Report]:
        """The delivery reports gathered since the last call (the polling thread)."""
        reports, self._reports = self._reports, []
        return reports

    def _settle_all(self, reports: list[_Report]) -> None:
        for future, error in reports:
            if error is not None and _fatal(error):
                self.failed = self.failed or error.str()
            _settle(future, error, closing=not self.running)

    # -- responses --------------------------------------------------------------------

    def expect(self, request_id: str) -> asyncio.Future[Response]:
        """The response to ``request_id``, once read: register before producing the record,
        cancel to stop waiting. ``request_id`` must come from :meth:`new_request_id`."""
        self.check_open()  # no response is read any more
        future: asyncio.Future[Response] = self._loop.create_future()
        self._pending[request_id] = future
        future.add_done_callback(lambda _: self._pending.pop(request_id, None))
        return future

    def new_request_id(self) -> str:
        """A fresh request id whose responses land on the partition this client reads."""
        self.check_open()  # (the partition is known once started)
        return next(self._request_ids)

    def _pump(self) -> None:
        """Background thread: the response topic and the service catalog."""
        while self.running:
            for message in consume_ready(self._reader, 500, 0.05):
                if message.error() is None:
                    self._on_message(message)
            if self._answered:
                answered, self._answered = self._answered, []
                self._loop.call_soon_threadsafe(self._resolve_all, answered)

    def _on_message(self, message: Message) -> None:
        if message.topic() == self.topics.services:
            self._on_catalog(message)
        else:
            self._on_response(message)

    def _on_response(self, message: Message) -> None:
        try:
            response = decode_response(message.value())
        except RecordError as error:  # whoever waits for it would wait for good
            request_id = request_id_of(message.value())
            if request_id is not None:
                self._answered.append((request_id, error))
            return
        if response.request_id is None:
            return
        self._answered.append(response)

    def _resolve_all(self, answered: list[Response | tuple[str, RecordError]]) -> None:
        for response in answered:
            if isinstance(response, Response):
                future = self._pending.pop(response.request_id or "", None)
                if future is not None and not future.done():
                    future.set_result(response)
                continue
            request_id, error = response
            future = self._pending.pop(request_id, None)
            if future is not None and not future.done():
                said = f"the response to request {request_id} cannot be read here: {error}"
                future.set_exception(ResponseUnreadable(said))

    # -- the service catalog ------------------------------------------------------------

    def _on_catalog(self, message: Message, services: dict[str, ServiceInfo] | None = None) -> None:
        """Apply a catalog record to ``services``, or to a copy of the client's that then
        replaces it."""
        if services is None:
            with self._catalog_lock:
                updated = dict(self.services)
                self._on_catalog(message, updated)
                self.services = updated
                self._followed = max(self._followed, (message.offset() or 0) + 1)
            return
        key = (message.key() or b"").decode(errors="replace")
        value = message.value()
        if value is None:
            services.pop(key, None)
        else:
            with contextlib.suppress(ValueError):
                services[key] = ServiceInfo.model_validate_json(value)

    def _read_catalog(
        self, low: int, end: int, services: dict[str, ServiceInfo] | None = None
    ) -> int:
        """Read the service catalog from ``low`` to ``end`` (or for 10 s) with a consumer of
        its own; the offset to follow it from. The reader's long fetch wait would make this
        slow: its position passes the catalog's final commit marker only on the fetch
        after. Explicit offsets: a new consumer asked for the beginning waits 500 ms for
        the partition's leader before it asks where the beginning is."""
        if end <= low:
            return end
        reader = self._new_reader(5, {"auto.offset.reset": "earliest"})
        catalog = [TopicPartition(self.topics.services, 0)]
        try:
            reader.assign([TopicPartition(self.topics.services, 0, low)])
            position = low
            deadline = time.monotonic() + 10.0
            # Positions, not record offsets: transaction markers take offsets too.
            while position < end and time.monotonic() < deadline:
                for message in consume_ready(reader, 500, 0.1):
                    if message.error() is None:
                        self._on_catalog(message, services)
                position = reader.position(catalog)[0].offset
            return max(position, low)
        finally:
            reader.close()

    def catch_up_catalog(self) -> None:
        """Read the catalog to its current end and add what it says: the services not known
        yet, and, while the follower has not read that far, the new entries of known ones
        (a handler added); the follower, reading on meanwhile, applies updates and removals
        in order. Blocks: run it in a thread."""
        reader = self._new_reader(5)
        try:
            with self._unavailable():
                low, end = watermarks(reader, TopicPartition(self.topics.services, 0))
        finally:
            reader.close()
        found: dict[str, ServiceInfo] = {}
        reached = self._read_catalog(low, end, found)  # short of the end after 10 s
        with self._catalog_lock:
            if self._followed < reached:  # this read is the newer
                self.services = {**self.services, **found}
            else:
                self.services = {**found, **self.services}


def _fatal(error: KafkaError) -> bool:
    """Whether the producer failed for good: ``produce()`` and delivery reports say so by
    the code alone (confluent-kafka sets the flag only on what ``poll()`` raises)."""
    return bool(error.fatal()) or error.code() == KafkaError._FATAL


#: Delivery-report errors that say the record was not written: the broker refused it as
#: it was, or librdkafka never sent it. Any other (an idempotence error, a request given up
#: on after it went out) may come for a record that was written: librdkafka knows which
#: ("possibly persisted", ``rdkafka_request.c``), but its Python client does not say.
NOT_WRITTEN = frozenset({
    KafkaError._FATAL,  # produced once the producer had failed for good: never sent
    KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION, KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.TOPIC_EXCEPTION, KafkaError.UNKNOWN_TOPIC_ID,
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.INVALID_RECORD, KafkaError.INVALID_MSG, KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_REQUIRED_ACKS, KafkaError.POLICY_VIOLATION, KafkaError.INVALID_TIMESTAMP,
    KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT, KafkaError.UNSUPPORTED_VERSION,
    KafkaError.UNSUPPORTED_COMPRESSION_TYPE,
})  # fmt: skip


def _settle(future: asyncio.Future[Any], error: KafkaError | None, closing: bool = True) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    elif error.code() in (KafkaError._PURGE_INFLIGHT, KafkaError._PURGE_QUEUE):
        if closing:
            # Dropped by the close. One in flight may have been written; so may one still
            # queued, if it is there to be retried after a request that went unanswered
            # (librdkafka knows, but its Python client does not say which).
            said = "client closed before Kafka acknowledged the record"
        else:
            # Dropped by librdkafka once the producer failed for good: written or not, as
            # for a close (a 504 over HTTP, "may go on"), and only a restart mends it.
            said = (f"Kafka dropped the record, which may have been written ({error.str()}):"
                    " the client's producer cannot go on: restart the client")  # fmt: skip
        future.set_exception(ClientClosed(said))
    else:
        said = f"Kafka did not take the record: {error.str()}"
        if error.code() == KafkaError.MSG_SIZE_TOO_LARGE:  # the topic takes less: not again
            future.set_exception(TerminalError(said, 413))
            return
        restart = "; the client's producer cannot go on: restart the client"
        if error.code() not in NOT_WRITTEN:  # (a 504 over HTTP, "may go on", not a 503)
            said = f"Kafka failed the record, which may have been written ({error.str()})"
            future.set_exception(ClientClosed(said + (restart if _fatal(error) else "")))
            return
        if _fatal(error):  # as for produce(): the idempotent producer failed for good
            said += restart
        future.set_exception(KafkaUnavailable(said))
