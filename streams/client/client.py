"""The Python client: calls and sends through the ingress topic, outcomes from the response topic.

```python
async with Client(Settings.from_env()) as client:
    greeting = await client.service("Greeter", "greet").request("Ada")
    receipt = await client.object_send("Counter", "ada", "add").send(1)
```

What crosses Kafka (the producer, the readers, their threads) is the client's
:class:`~streams.client.connection.Connection`; this module builds the records and turns
the responses into results and errors.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, JsonValue, ValidationError
from pydantic_core import PydanticSerializationError

from handlers.exceptions import TerminalError
from handlers.serde import JSON
from streams import tracing
from streams.client.connection import Connection, ServiceInfo
from streams.engine.values import due_after
from streams.settings import Settings
from streams.wire import ids
from streams.wire.records import (
    MAX_RECORD_BYTES,
    AttachRequest,
    Cancel,
    Invoke,
    Kill,
    Purge,
    Response,
    Resume,
    Target,
    encode,
    idempotency_key_refusal,
)
from streams.wire.topics import Topics


@dataclass(frozen=True)
class CallResult:
    invocation_id: str
    value: JsonValue


@dataclass(frozen=True)
class SendReceipt:
    invocation_id: str
    status: Literal["Accepted", "PreviouslyAccepted"]


@contextlib.contextmanager
def _nesting_checked() -> Iterator[None]:
    """A record whose value pydantic refuses as nested past the depth it checks (about 250
    levels: fewer than JSON parsers take) is refused as :meth:`Client._produce` refuses one
    its writer cannot serialize: a 400, which the HTTP ingress answers as it is."""
    try:
        yield
    except ValidationError as error:
        if error.errors()[0]["type"] != "recursion_depth_exceeded":
            raise
        raise TerminalError("the value is nested deeper than a record can carry", 400) from None


class Client:
    """Talks to Kourier workers through Kafka; use as ``async with Client(...)``."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.topics = Topics(self.settings.namespace)
        self._kafka = Connection(self.settings, self.topics)
        # The catalog's read under way, and the next, which callers since it began share.
        self._reading: asyncio.Future[None] | None = None
        self._next_read: asyncio.Future[None] | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect: read responses from here on, and the service catalog. Raises
        ``MissingTopics`` when the namespace's topics are not there, ``KafkaUnavailable``
        when Kafka does not answer, and Kafka's ``KafkaException`` (``_SSL``,
        ``_AUTHENTICATION``) at once when the brokers refuse the connection's TLS or SASL
        settings. Started already, or starting, it waits for that start and does nothing
        more."""
        await self._kafka.start()

    async def close(self) -> None:
        """Stop reading, deliver or drop what is still to produce, and end every call that
        waits (``ClientClosed``). A cancelled close goes on to its end, which a later close
        waits for."""
        await self._kafka.close()

    @property
    def running(self) -> bool:
        """Started, and not closed since."""
        return self._kafka.running

    @property
    def failed(self) -> str | None:
        """Kafka's reason, once the client's producer failed for good: every call and send
        fails until the client is started again (the ingress's ``/health`` then says 503)."""
        return self._kafka.failed

    @property
    def partitions(self) -> int:
        """The ingress topic's partitions (0 before :meth:`start`)."""
        return self._kafka.partitions

    @property
    def services(self) -> dict[str, ServiceInfo]:
        """The service catalog as followed so far (:meth:`catalog`)."""
        return self._kafka.services

    @property
    def awaited(self) -> int:
        """Responses this client still waits for (one per call in flight)."""
        return self._kafka.awaited

    async def catalog(self, refresh: bool = False) -> dict[str, ServiceInfo]:
        """The services workers have announced: the catalog as read to its end when the
        client started (for at most 10 s), and followed since. With ``refresh``, read to
        its end again first: the follower reads with a long fetch wait, so a service
        announced a moment ago may not have reached it yet. Refreshes asked for together
        share one read, which begins after each asked: each call to a service no worker
        announced asks for one (two Kafka consumers each), and a burst made as many."""
        if refresh:
            loop = asyncio.get_running_loop()
            queued = self._next_read
            if queued is None or queued.done() or queued.get_loop() is not loop:
                running = self._reading
                if running is not None and running.get_loop() is not loop:
                    running = None  # another loop's, before this one (asyncio.run again)
                self._next_read = queued = asyncio.ensure_future(self._read_catalog_after(running))
                # Its failure is raised to each caller; one all left is not logged as lost.
                queued.add_done_callback(lambda read: read.cancelled() or read.exception())
            # A cancelled caller stops no one's read, nor does a close: it ends the wait.
            await self._kafka.unless_closed(asyncio.shield(queued), "the service catalog")
        return self.services

    async def _read_catalog_after(self, running: asyncio.Future[None] | None) -> None:
        """Read the catalog to its end once ``running``, a read that may have found the end
        before what this one's callers look for, has ended."""
        if running is not None:
            await asyncio.gather(running, return_exceptions=True)
        self._reading, self._next_read = self._next_read, None  # later callers: the next
        await asyncio.to_thread(self._kafka.catch_up_catalog)

    # -- producing --------------------------------------------------------------------

    async def _produce(
        self,
        topic: str,
        record: BaseModel,
        partition: int,
        key: str,
        failing: asyncio.Future[Response] | None = None,
    ) -> None:
        """Write ``record``; with ``failing``, see :meth:`Connection.produce`."""
        value, headers = self._encoded(record)
        await self._kafka.produce(topic, value, partition, key, headers, failing=failing)

    def _encoded(
        self, record: BaseModel
    ) -> tuple[bytes, list[tuple[str, str | bytes | None]] | None]:
        """``record`` as written (400 when it cannot be, 413 past ``MAX_RECORD_BYTES``),
        and the trace headers of an invocation, which continues its invoker's trace."""
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
        headers = tracing.as_headers(tracing.current()) if isinstance(record, Invoke) else None
        return value, headers

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
        with _nesting_checked():
            record = Invoke(
                target=target,
                argument=argument,
                invocation_id=inv_id,
                idempotency_key=idempotency_key,
                request_id=request_id,
                headers=dict(headers or {}),
            )
        sent = self._request(record, inv_id, target.key or inv_id)
        del record, argument  # the request lets go of them once written (_request)
        response = await sent
        return response.invocation_id or inv_id, response

    async def _request(self, record: BaseModel, owner: str, key: str) -> Response:
        """Produce a record carrying ``request_id`` to the partition of invocation ``owner``
        and wait for the worker's response. Only the record's bytes are kept, and only
        until Kafka has them: a call waiting for its outcome keeps neither its argument
        nor its record (a body of 900 KiB can be tens of MB of Python objects)."""
        request_id = getattr(record, "request_id", None)
        assert isinstance(request_id, str)
        partition = ids.partition_of(owner, self.partitions)
        value, headers = self._encoded(record)
        del record
        future = self.expect(request_id)
        try:
            topic = self.topics.ingress
            await self._kafka.produce(topic, value, partition, key, headers, failing=future)
            del value
            return await future
        finally:
            future.cancel()

    def expect(self, request_id: str) -> asyncio.Future[Response]:
        """The response to ``request_id``, once read: register before producing the record
        (by any producer: the Faust integration writes through Faust's), cancel to stop
        waiting. ``request_id`` must come from :meth:`new_request_id`, whose ids hash to the
        one response partition this client reads."""
        return self._kafka.expect(request_id)

    def new_request_id(self) -> str:
        """A fresh request id whose responses land on the partition this client reads."""
        return self._kafka.new_request_id()

    async def _id_for(
        self, target: Target, idempotency_key: str | None, invocation_id: str | None
    ) -> str:
        """The id a call or send gets: ``invocation_id`` when the caller chose it (it must
        route to the key's partition), else :meth:`invocation_id_for`."""
        self._kafka.check_open()  # before the catalog is asked, which needs Kafka
        inv_id = invocation_id or await self.id_for(target, idempotency_key)
        if target.key is not None and not ids.belongs_to_key(inv_id, target.key, self.partitions):
            raise ValueError(f"{inv_id} does not route to the partition of key {target.key!r}")
        return inv_id

    async def id_for(self, target: Target, idempotency_key: str | None) -> str:
        """:meth:`invocation_id_for`, the catalog read again first when it does not list
        ``target``'s service: a workflow announced a moment ago has run ids of its own,
        which a later attach or cancel must be given."""
        self._kafka.check_open()  # the partition count is known once started
        if target.service not in self.services:
            await self.catalog(refresh=True)
        return self.invocation_id_for(target, idempotency_key)

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
        may_repeat = send_may_repeat(target, idempotency_key, inv_id)
        due = None if delay is None else due_time(delay, f"the delay of {target.path()}")
        with _nesting_checked():
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
            sent = self._request(record, inv_id, key)
            del record, argument  # the request lets go of them once written (_request)
            response = await sent
            if response.failure is not None:
                raise TerminalError(response.failure.message, response.failure.code)
            again = response.status == "previously_accepted"
            return SendReceipt(
                response.invocation_id or inv_id, "PreviouslyAccepted" if again else "Accepted"
            )
        partition = ids.partition_of(inv_id, self.partitions)
        value, trace = self._encoded(record)
        del record, argument  # as a call's: not kept while Kafka is away (see _request)
        await self._kafka.produce(self.topics.ingress, value, partition, key, trace)
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
        self._kafka.check_open()
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


def send_may_repeat(target: Target, idempotency_key: str | None, invocation_id: str) -> bool:
    """Whether a send to ``target`` as ``invocation_id`` may meet an earlier one (an
    idempotency key, a workflow's run): :meth:`Client.send_to` then waits for a worker to
    answer ``Accepted`` or ``PreviouslyAccepted``, not only for Kafka's acknowledgement."""
    return idempotency_key is not None or invocation_id == ids.workflow_run_id(
        target.service, target.key or ""
    )
