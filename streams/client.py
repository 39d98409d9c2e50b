"""The Python client: calls and sends through the ingress topic, outcomes from the response topic.

```python
async with Client(Settings.from_env()) as client:
    greeting = await client.service("Greeter", "greet").request("Ada")
    receipt = await client.object_send("Counter", "ada", "add").send(1)
```
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from pydantic import BaseModel, JsonValue
from pydantic_core import PydanticSerializationError

from handlers.exceptions import TerminalError
from handlers.serde import JSON
from streams import tracing
from streams.engine.values import due_after
from streams.errors import KourierError
from streams.kafka.offsets import (
    FETCH_WAIT_MS,
    consume_ready,
    required_topics,
    transient,
    watermarks,
)
from streams.kafka.offsets import (
    MissingTopics as MissingTopics,  # raised by start(), so part of this module's API
)
from streams.kafka.stalls import StallWatch, watch
from streams.settings import Settings
from streams.wire import ids
from streams.wire.partitioning import KeysOn
from streams.wire.records import (
    MAX_RECORD_BYTES,
    AttachRequest,
    Cancel,
    Invoke,
    Kill,
    Purge,
    RecordError,
    Response,
    Resume,
    Target,
    decode_response,
    encode,
    idempotency_key_refusal,
)
from streams.wire.topics import Topics

_TIMEOUT = 30.0


class ServiceInfo(BaseModel):
    """A service as its workers announce it on the services topic."""

    name: str
    kind: Literal["service", "object", "workflow"]
    handlers: dict[str, dict[str, str]]
    worker: str | None = None

    def handler_kind(self, handler: str) -> str | None:
        info = self.handlers.get(handler)
        return None if info is None else info.get("kind")


class KafkaUnavailable(KourierError, RuntimeError):
    """Kafka could not take or deliver the record in time (HTTP 503)."""

    retriable = True


class ClientClosed(KourierError, RuntimeError):
    """The client closed while a call waited: its record may have been written and its
    invocation may run. Attach to it (by its id) with another client for its outcome;
    calling again without an idempotency key could run it twice."""


@dataclass(frozen=True)
class CallResult:
    invocation_id: str
    value: JsonValue


@dataclass(frozen=True)
class SendReceipt:
    invocation_id: str
    status: Literal["Accepted", "PreviouslyAccepted"]


class Client:
    """Talks to Kourier workers through Kafka; use as ``async with Client(...)``."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.topics = Topics(self.settings.namespace)
        self.partitions = 0
        self._pending: dict[str, asyncio.Future[Response]] = {}
        # Delivery reports and responses read by the background threads, not yet handed
        # to the loop (each list is touched by one thread at a time; see the threads).
        self._reports: list[tuple[asyncio.Future[None], KafkaError | None]] = []
        self._answered: list[Response] = []
        self._running = False
        self._closing: asyncio.Future[None] | None = None
        self.services: dict[str, ServiceInfo] = {}

    # -- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._closing = None  # a client closed before may start again
        self._producer = Producer(
            self.settings.producer_config(
                {
                    "enable.idempotence": True,
                    "linger.ms": 0,
                    # No delivery timeout: a record whose fate is unknown (brokers away) is
                    # retried until Kafka says, so a failure reported here always means "not
                    # written" (HTTP 503), never "perhaps written".
                    "message.timeout.ms": 0,
                    "log_level": 3,
                }
            )
        )
        self._reader = self._new_reader(FETCH_WAIT_MS)
        try:
            await asyncio.to_thread(self._assign_reader)
        except Exception:  # not on a cancel: the thread may still be in a call on the reader
            self._reader.close()  # nothing was produced: the producer has nothing to flush
            del self._producer, self._reader
            raise
        # A transaction left open on the response partition would hold every answer back.
        self._admin = AdminClient(self.settings.client_config({"log_level": 3}))
        stalls = StallWatch(self.settings.stall_after.total_seconds())
        self._stalls = asyncio.create_task(watch(self._admin, stalls, self._read))
        self._running = True
        self._threads = [
            threading.Thread(target=self._pump, name="kourier-responses", daemon=True),
            threading.Thread(target=self._deliveries, name="kourier-deliveries", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def awaited(self) -> int:
        """Responses this client still waits for (one per call in flight)."""
        return len(self._pending)

    def _assign_reader(self) -> None:
        """Read responses from the current end, fixed now, so no response can be missed.
        Kafka away (or a partition without a leader) past the timeouts: KafkaUnavailable."""
        try:
            self._assign_reader_at_end()
        except KafkaException as exc:
            error = exc.args[0]
            if not isinstance(error, KafkaError) or not transient(error):
                raise
            where = self.settings.bootstrap_servers
            raise KafkaUnavailable(f"Kafka at {where} did not answer: {error.str()}") from None

    def _assign_reader_at_end(self) -> None:
        needed = (self.topics.ingress, self.topics.responses, self.topics.services)
        metadata = required_topics(self._reader, needed)
        self.partitions = len(metadata[self.topics.ingress].partitions)
        # Responses land on the partition their request id hashes to; this client picks ids
        # that all hash to one partition, and reads only that one. A worker's transaction
        # then touches one response partition per client, not all of them.
        response_partitions = len(metadata[self.topics.responses].partitions)
        self._home = random.randrange(response_partitions)
        self._request_ids = KeysOn(self._home, response_partitions)
        tp = TopicPartition(self.topics.responses, self._home)
        _, high = watermarks(self._reader, tp)
        start = [TopicPartition(self.topics.responses, self._home, high)]
        low, end = watermarks(self._reader, TopicPartition(self.topics.services, 0))
        start.append(TopicPartition(self.topics.services, 0, self._read_catalog(low, end)))
        self._reader.assign(start)

    def _read(self) -> list[tuple[str, int]]:
        """The partitions this client reads: its responses, and the service catalog."""
        return [(self.topics.responses, self._home), (self.topics.services, 0)]

    def _new_reader(self, wait_ms: int, extra: Mapping[str, str] | None = None) -> Consumer:
        """A ``read_committed`` consumer outside any group's assignment (it is assigned
        partitions and commits nothing), with ``wait_ms`` as its fetch wait."""
        return Consumer(
            self.settings.client_config(
                {
                    "group.id": f"{self.settings.namespace}.client.{uuid.uuid4().hex}",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "fetch.wait.max.ms": wait_ms,
                    "log_level": 3,
                    **(extra or {}),
                }
            )
        )

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

    async def close(self) -> None:
        """Stop reading, deliver or drop what is still to produce, and end every call that
        waits (:class:`ClientClosed`). A cancelled close goes on to its end, which a later
        close waits for."""
        if self._closing is None:
            if not self._running:
                return
            self._closing = asyncio.ensure_future(self._shut_down())
        await asyncio.shield(self._closing)

    async def _shut_down(self) -> None:
        self._running = False
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
                # destroyed. One still queued was never written (KafkaUnavailable); one in
                # flight may have been (ClientClosed, see _settle).
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

    def _deliveries(self) -> None:
        """Background thread: delivery reports, served as soon as the broker acknowledges,
        handed to the loop once per poll (one wake-up of the loop for all of them)."""
        while self._running:
            self._producer.poll(0.05)
            reports = self._hand_over()
            if reports:
                self._loop.call_soon_threadsafe(self._settle_all, reports)

    def _hand_over(self) -> list[tuple[asyncio.Future[None], KafkaError | None]]:
        """The delivery reports gathered since the last call (the polling thread)."""
        reports, self._reports = self._reports, []
        return reports

    @staticmethod
    def _settle_all(reports: list[tuple[asyncio.Future[None], KafkaError | None]]) -> None:
        for future, error in reports:
            _settle(future, error)

    def _pump(self) -> None:
        """Background thread: the response topic and the service catalog."""
        while self._running:
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

    def _on_catalog(self, message: Message, services: dict[str, ServiceInfo] | None = None) -> None:
        """Apply a catalog record to ``services`` (by default the client's)."""
        services = self.services if services is None else services
        key = (message.key() or b"").decode(errors="replace")
        value = message.value()
        if value is None:
            services.pop(key, None)
        else:
            with contextlib.suppress(ValueError):
                services[key] = ServiceInfo.model_validate_json(value)

    async def catalog(self, refresh: bool = False) -> dict[str, ServiceInfo]:
        """The services workers have announced: the catalog as read to its end when the
        client started (for at most 10 s), and followed since. With ``refresh``, read to
        its end again first: the follower reads with a long fetch wait, so a service
        announced a moment ago may not have reached it yet."""
        if refresh:
            await asyncio.to_thread(self._catch_up_catalog)
        return self.services

    def _catch_up_catalog(self) -> None:
        """Read the catalog to its current end and add the services not known yet (the
        follower, reading on meanwhile, applies updates and removals in order)."""
        reader = self._new_reader(5)
        try:
            low, end = watermarks(reader, TopicPartition(self.topics.services, 0))
        finally:
            reader.close()
        found: dict[str, ServiceInfo] = {}
        self._read_catalog(low, end, found)
        for name, info in found.items():
            self.services.setdefault(name, info)

    def _on_response(self, message: Message) -> None:
        try:
            response = decode_response(message.value())
        except RecordError:
            return
        if response.request_id is None:
            return
        self._answered.append(response)

    def _resolve_all(self, answered: list[Response]) -> None:
        for response in answered:
            future = self._pending.pop(response.request_id or "", None)
            if future is not None and not future.done():
                future.set_result(response)

    # -- producing --------------------------------------------------------------------

    async def _produce(self, topic: str, record: BaseModel, partition: int, key: str) -> None:
        delivered: asyncio.Future[None] = self._loop.create_future()

        def report(error: KafkaError | None, message: Message) -> None:
            self._reports.append((delivered, error))

        try:
            value = encode(record)
        except PydanticSerializationError as error:
            if "surrogates not allowed" in str(error):  # pydantic names the UnicodeEncodeError
                message = "the value or a header holds a lone UTF-16 surrogate: not UTF-8"
            else:  # a value fine alone, too deep in a record
                message = f"the value is nested deeper than a record can carry ({error})"
            raise TerminalError(message, 400) from None
        if len(value) > MAX_RECORD_BYTES:  # a worker would dead-letter it; Kafka may refuse it
            raise TerminalError(
                f"the record is {len(value)} bytes of JSON, larger than the {MAX_RECORD_BYTES}"
                " bytes Kourier takes",
                413,
            )
        # An invocation continues the trace of whoever invokes (streams.tracing).
        headers = tracing.as_headers(tracing.current()) if isinstance(record, Invoke) else None
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
                await asyncio.sleep(0.005)
        await delivered

    async def call(
        self,
        target: Target,
        argument: JsonValue = None,
        *,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        invocation_id: str | None = None,
    ) -> tuple[str, Response]:
        """Invoke and wait for the outcome; the raw response, for the HTTP ingress."""
        inv_id = await self._id_for(target, idempotency_key, invocation_id)
        request_id = self.new_request_id()
        record = Invoke(
            target=target,
            argument=argument,
            invocation_id=inv_id,
            idempotency_key=idempotency_key,
            request_id=request_id,
            headers=dict(headers or {}),
        )
        response = await self._request(record, inv_id, target.key or inv_id)
        return response.invocation_id or inv_id, response

    async def _request(self, record: BaseModel, owner: str, key: str) -> Response:
        """Produce a record carrying ``request_id`` to the partition of invocation ``owner``
        and wait for the worker's response."""
        request_id = getattr(record, "request_id", None)
        assert isinstance(request_id, str)
        partition = ids.partition_of(owner, self.partitions)
        future = self.expect(request_id)
        try:
            await self._produce(self.topics.ingress, record, partition, key)
            return await future
        finally:
            future.cancel()

    def expect(self, request_id: str) -> asyncio.Future[Response]:
        """The response to ``request_id``, once read: register before producing the record
        (by any producer: the Faust integration writes through Faust's), cancel to stop
        waiting. ``request_id`` must come from :meth:`new_request_id`, whose ids hash to the
        one response partition this client reads."""
        future: asyncio.Future[Response] = self._loop.create_future()
        self._pending[request_id] = future
        future.add_done_callback(lambda _: self._pending.pop(request_id, None))
        return future

    def new_request_id(self) -> str:
        """A fresh request id whose responses land on the partition this client reads."""
        return next(self._request_ids)

    async def _id_for(
        self, target: Target, idempotency_key: str | None, invocation_id: str | None
    ) -> str:
        """The id a call or send gets: ``invocation_id`` when the caller chose it (it must
        route to the key's partition), else :meth:`invocation_id_for`."""
        if target.service not in self.services:
            await self.catalog(refresh=True)  # to know whether it is a workflow
        inv_id = invocation_id or self.invocation_id_for(target, idempotency_key)
        if target.key is not None and not ids.belongs_to_key(inv_id, target.key, self.partitions):
            raise ValueError(f"{inv_id} does not route to the partition of key {target.key!r}")
        return inv_id

    def invocation_id_for(self, target: Target, idempotency_key: str | None) -> str:
        """The id an invocation will have: derived for a workflow's run and for idempotency
        keys (so duplicates meet), fresh otherwise."""
        refusal = None if idempotency_key is None else idempotency_key_refusal(idempotency_key)
        if refusal is not None:
            raise TerminalError(refusal, 400)
        info = self.services.get(target.service)
        if info is not None and info.handler_kind(target.handler) == "workflow":
            return ids.workflow_run_id(target.service, target.key or "")
        if idempotency_key is None:
            return ids.new_id(target.key, self.partitions)
        return ids.idempotent_id(target.service, target.key, target.handler, idempotency_key)

    async def send_to(
        self,
        target: Target,
        argument: JsonValue = None,
        *,
        delay: timedelta | None = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        invocation_id: str | None = None,
    ) -> SendReceipt:
        """One-way: returns once Kafka has the message.

        A send that may meet an earlier one (an idempotency key, a workflow's run) asks
        the worker, which answers ``Accepted`` or ``PreviouslyAccepted``. A delayed send
        is an invocation from then on (status ``scheduled``): it can be listed, cancelled
        and attached to by its id before it runs.
        """
        inv_id = await self._id_for(target, idempotency_key, invocation_id)
        may_repeat = idempotency_key is not None or inv_id == ids.workflow_run_id(
            target.service, target.key or ""
        )
        due = None if delay is None else due_time(delay, f"the delay of {target.path()}")
        record = Invoke(
            target=target,
            argument=argument,
            invocation_id=inv_id,
            mode="send",
            idempotency_key=idempotency_key,
            headers=dict(headers or {}),
            request_id=self.new_request_id() if may_repeat else None,
            due=due,
        )
        key = target.key or inv_id
        if record.request_id is not None:
            response = await self._request(record, inv_id, key)
            if response.failure is not None:
                raise TerminalError(response.failure.message, response.failure.code)
            again = response.status == "previously_accepted"
            return SendReceipt(
                response.invocation_id or inv_id, "PreviouslyAccepted" if again else "Accepted"
            )
        partition = ids.partition_of(inv_id, self.partitions)
        await self._produce(self.topics.ingress, record, partition, key)
        return SendReceipt(invocation_id=inv_id, status="Accepted")

    async def attach(
        self,
        invocation_id: str | None = None,
        *,
        target: Target | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """Wait for an invocation and return its result (``TerminalError`` on failure; 404
        when it is unknown or its outcome was not retained). Name it by id, by ``target``
        plus ``idempotency_key``, or by a workflow's ``target`` (``Target(service="Signup",
        key=workflow_id, handler="run")``)."""
        response = await self.attach_response(
            invocation_id, wait=True, target=target, idempotency_key=idempotency_key
        )
        return outcome(response)

    async def output(
        self,
        invocation_id: str | None = None,
        *,
        target: Target | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """The result now: ``TerminalError`` 470 while it still runs."""
        response = await self.attach_response(
            invocation_id, wait=False, target=target, idempotency_key=idempotency_key
        )
        return outcome(response)

    async def attach_response(
        self,
        invocation_id: str | None = None,
        *,
        wait: bool,
        target: Target | None = None,
        idempotency_key: str | None = None,
    ) -> Response:
        """Attach (``wait``) or output, naming the invocation by id, by ``target`` plus
        ``idempotency_key``, or by a workflow ``target`` (service, workflow id, ``run``)."""
        if invocation_id is None:
            if target is None:
                raise ValueError("name the invocation: an id, or a target")
            if idempotency_key is None:  # only a workflow's run derives its id from the target
                await self._require_run(target)
            invocation_id = self.invocation_id_for(target, idempotency_key)
        ids.validate(invocation_id)
        record = AttachRequest(
            request_id=self.new_request_id(),
            invocation_id=invocation_id,
            wait=wait,
        )
        return await self._request(record, invocation_id, invocation_id)

    async def _require_run(self, target: Target) -> None:
        """Refuse ``target`` unless it is a workflow's run: 404 for a service no worker has
        announced, ``ValueError`` for a handler that is not one."""
        if target.service not in self.services:
            await self.catalog(refresh=True)
        info = self.services.get(target.service)
        if info is None:
            raise TerminalError(f"no worker has announced service {target.service!r}", 404)
        if info.handler_kind(target.handler) != "workflow":
            raise ValueError(
                f"{target.service}/{target.handler} is not a workflow's run: attach to it by"
                " its invocation id, or by the idempotency key it was called with"
            )

    async def cancel(self, invocation_id: str) -> str:
        """Cancel: the invocation sees a 409 ``TerminalError`` at its next await and may
        compensate. Returns ``"accepted"`` (delivered asynchronously) or ``"success"`` (it
        was queued and is now completed); raises ``TerminalError`` 404 / 409."""
        return await self._control(Cancel, invocation_id)

    async def kill(self, invocation_id: str) -> str:
        """Stop an invocation and the calls it waits on at once, without compensation."""
        return await self._control(Kill, invocation_id)

    async def purge(self, invocation_id: str) -> str:
        """Forget a completed invocation's retained outcome and idempotency key now."""
        return await self._control(Purge, invocation_id)

    async def resume(self, invocation_id: str) -> str:
        """Retry a ``paused`` invocation from attempt 1."""
        return await self._control(Resume, invocation_id)

    async def _control(self, kind: type[Cancel | Kill | Purge | Resume], invocation_id: str) -> str:
        ids.validate(invocation_id)
        record = kind(invocation_id=invocation_id, request_id=self.new_request_id())
        response = await self._request(record, invocation_id, invocation_id)
        if response.failure is not None:
            raise TerminalError(response.failure.message, response.failure.code)
        return response.status

    # -- the handler-like API ----------------------------------------------------------

    def service(self, service: str, handler: str) -> ClientCallee:
        return ClientCallee(self, Target(service=service, handler=handler))

    def object(self, obj: str, key: str, handler: str) -> ClientCallee:
        return ClientCallee(self, Target(service=obj, key=key, handler=handler))

    def workflow(self, workflow: str, workflow_id: str, handler: str = "run") -> ClientCallee:
        return ClientCallee(self, Target(service=workflow, key=workflow_id, handler=handler))

    def service_send(self, service: str, handler: str) -> ClientRecipient:
        return ClientRecipient(self, Target(service=service, handler=handler))

    def object_send(self, obj: str, key: str, handler: str) -> ClientRecipient:
        return ClientRecipient(self, Target(service=obj, key=key, handler=handler))

    def workflow_send(
        self, workflow: str, workflow_id: str, handler: str = "run"
    ) -> ClientRecipient:
        return ClientRecipient(self, Target(service=workflow, key=workflow_id, handler=handler))


def _settle(future: asyncio.Future[None], error: KafkaError | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    elif error.code() == KafkaError._PURGE_INFLIGHT:  # sent: Kafka may have written it
        future.set_exception(ClientClosed("client closed while Kafka had the record"))
    else:
        future.set_exception(KafkaUnavailable(f"Kafka did not take the record: {error.str()}"))


def due_time(delay: timedelta, what: str) -> datetime:
    """Now plus ``delay``, as a record's ``due``: the bound handlers' timers have
    (:func:`streams.engine.values.due_after`, a 400 past it)."""
    return datetime.fromtimestamp(due_after(delay, what), UTC)


def outcome(response: Response) -> JsonValue:
    """The value of a response, or its failure raised as :class:`TerminalError`."""
    if response.failure is not None:
        raise TerminalError(response.failure.message, response.failure.code)
    return response.value


class ClientCallee:
    def __init__(self, client: Client, target: Target) -> None:
        self._client = client
        self._target = target

    async def request(
        self,
        arg: Any = None,
        *,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """The handler's result; its ``TerminalError`` is raised here."""
        argument = JSON.encode(arg, f"the argument of {self._target.path()}")
        _, response = await self._client.call(
            self._target, argument, idempotency_key=idempotency_key, headers=headers
        )
        return outcome(response)


class ClientRecipient:
    def __init__(self, client: Client, target: Target) -> None:
        self._client = client
        self._target = target

    async def send(
        self,
        arg: Any = None,
        *,
        delay: timedelta | None = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> SendReceipt:
        return await self._client.send_to(
            self._target,
            JSON.encode(arg, f"the argument of {self._target.path()}"),
            delay=delay,
            idempotency_key=idempotency_key,
            headers=headers,
        )
