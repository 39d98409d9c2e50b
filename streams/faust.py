"""Faust applications invoke Kourier handlers from their streams.

```python
app = faust.App("orders", broker="kafka://127.0.0.1:9092")
kourier = Kourier(app)                     # the namespace from KOURIER_NAMESPACE

@app.agent(app.topic("orders", value_type=Order))
async def place(orders: faust.StreamT[Order]) -> None:
    async for order in orders:              # one partition's events, in offset order
        total = await kourier.request(Target(service="Counter", key=order.customer,
                                             handler="add"), order.amount)
```

Faust does the producing: every call is an :class:`InvokeRecord` written through the app's
own producer to the ingress topic, keyed by the object key, so one key's calls keep their
order. Each call made while an agent processes an event gets an idempotency key derived
from that event (app id, the agent's name, topic, partition, offset, and the call's position
among the agent's calls for the event), so an event that Faust delivers again after a crash
or a rebalance invokes nothing twice: Kourier answers the repeat with the first outcome.

Outcomes are read ``read_committed`` from the response topic by a :class:`streams.Client`
running inside the app (Faust's own consumer reads ``read_uncommitted``, and would see
responses of aborted transactions). An app with ``processing_guarantee="exactly_once"`` is
refused: Faust's transaction manager cannot produce to a topic the app does not consume.
:meth:`Kourier.request` returns one; the outcomes of :meth:`Kourier.call` arrive on
:attr:`Kourier.outcomes`, a Faust channel that agents consume as a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import deque
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import faust
from aiokafka.errors import MessageSizeTooLargeError
from faust.agents.agent import current_agent
from faust.exceptions import ProducerSendError
from faust.streams import current_event
from faust.types import AppT, EventT
from faust.types.enums import ProcessingGuarantee
from mode import Service
from mode.utils.queues import ThrowableQueue

from handlers.exceptions import TerminalError
from handlers.serde import JSON
from streams import tracing
from streams.client import Client, due_time, outcome
from streams.faust_credentials import FaustSettingsError, broker_credentials
from streams.settings import Settings
from streams.wire import ids
from streams.wire.records import MAX_RECORD_BYTES, RecordError, Response, Target, decode_ingress
from streams.wire.topics import Topics

__all__ = [
    "CallTimedOut",
    "FailureRecord",
    "FaustSettingsError",
    "InvokeRecord",
    "Kourier",
    "ResponseRecord",
    "TargetRecord",
    "broker_credentials",
]

log = logging.getLogger("kourier.faust")


# -- the wire records, as Faust models (the schema is `kourier schema`) -------------------


class TargetRecord(faust.Record, include_metadata=False, serializer="json"):
    """``Service/handler``, or ``Object/key/handler`` with ``key`` set."""

    service: str
    handler: str
    key: str | None = None


class FailureRecord(faust.Record, include_metadata=False, serializer="json"):
    code: int
    message: str


class InvokeRecord(faust.Record, include_metadata=False, serializer="json"):
    """A call or send on the ingress topic (``kind: invoke``)."""

    target: TargetRecord
    argument: Any = None
    invocation_id: str | None = None
    mode: str = "call"
    idempotency_key: str | None = None
    request_id: str | None = None
    headers: dict[str, str] = {}  # noqa: RUF012  (Faust copies field defaults)
    due: str | None = None
    v: int = 1
    kind: str = "invoke"


class ResponseRecord(faust.Record, include_metadata=False, serializer="json"):
    """An outcome on the response topic (``kind: response``)."""

    status: str
    request_id: str | None = None
    invocation_id: str | None = None
    value: Any = None
    failure: FailureRecord | None = None
    v: int = 1
    kind: str = "response"

    def result(self) -> Any:
        """The handler's value, or its failure raised as :class:`TerminalError`."""
        if self.failure is not None:
            raise TerminalError(self.failure.message, self.failure.code)
        return self.value


# -- the integration ----------------------------------------------------------------------


class CallTimedOut(TimeoutError):
    """No outcome of a :meth:`Kourier.request` (or :meth:`Kourier.attach`) within its bound,
    or a record of any of the three verbs not known to be written: the invocation goes on, or
    may. Catch it in the agent, so that the event waits too: an exception that leaves an
    agent acknowledges its event (Faust restarts the agent), and it is not delivered again.
    Calling again with ``idempotency_key=error.idempotency_key`` (the key the call had,
    derived or given) is the same invocation: its outcome once it ends, or the call made now
    if its record was never written; calling again without it is another call, under the
    next derived key. ``invocation_id`` names it for :meth:`Kourier.attach`, which answers
    404 for a record never written. (A plain ``TimeoutError``: no catalog of services in
    time, and nothing written.)"""

    def __init__(self, message: str, invocation_id: str, idempotency_key: str | None) -> None:
        super().__init__(message, invocation_id, idempotency_key)  # all in args: it pickles
        self.invocation_id = invocation_id
        self.idempotency_key = idempotency_key

    def __str__(self) -> str:
        return str(self.args[0])


class Kourier(Service):  # mode.Service: started and stopped with the app
    """Kourier calls and sends from the agents of one Faust app."""

    def __init__(self, app: faust.App, settings: Settings | None = None) -> None:
        guarantee: object = app.conf.processing_guarantee  # (faust types it as the enum class)
        if guarantee == ProcessingGuarantee.EXACTLY_ONCE:
            # Faust's transaction manager then sends every record, and names its producer
            # by the group of the record's topic among those the app consumes: the ingress
            # is none of them, and every call and send would fail with a KeyError.
            raise ValueError(
                "Kourier calls from a Faust app need processing_guarantee='at_least_once' "
                "(the default): with exactly_once, Faust cannot produce to "
                f"{Topics((settings or Settings.from_env()).namespace).ingress}, which the app "
                "does not consume; the idempotency keys derived from each event keep a call "
                "from running twice"
            )
        super().__init__(loop=None)
        self.app = app
        self.settings = settings or Settings.from_env()
        self.topics = Topics(self.settings.namespace)
        self.ingress = app.topic(
            self.topics.ingress, key_type=bytes, value_type=InvokeRecord, key_serializer="raw"
        )
        #: Outcomes of :meth:`call`, in the order they arrive: ``app.agent(kourier.outcomes)``.
        self.outcomes: faust.ChannelT[ResponseRecord] = _Outcomes(app, value_type=ResponseRecord)
        self._client = Client(self.settings)
        # Calls made so far while processing each event, for the idempotency keys.
        # By event, the calls each agent has made for it so far (by the agent's name).
        self._calls: weakref.WeakKeyDictionary[Any, dict[str, int]] = weakref.WeakKeyDictionary()
        app.add_dependency(self)

    async def on_start(self) -> None:
        await self._client.start()

    async def on_stop(self) -> None:
        await self._client.close()

    # -- the three verbs -----------------------------------------------------------------

    async def request(
        self,
        target: Target,
        argument: Any = None,
        *,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        within: timedelta | None = None,
    ) -> Any:
        """Call ``target`` and return its result (its ``TerminalError`` is raised here).

        Awaited inside an agent, the event is acknowledged only once the outcome is in, so
        a crash before then makes Faust deliver the event again, and the repeat (same
        idempotency key) gets the same outcome. An agent waiting here also holds up Faust's
        rebalances and shutdown, so the wait ends after ``within`` (default
        ``KOURIER_CALL_TIMEOUT``, 10 minutes) with ``TimeoutError``; the invocation goes on.
        """
        request_id = self._client.new_request_id()
        answer = self._client.expect(request_id)
        limit = (self.settings.call_timeout if within is None else within).total_seconds()
        loop = asyncio.get_running_loop()
        until = loop.time() + limit  # the catalog's read and Faust's producer count too
        try:
            key = idempotency_key
            record = await self._written(target, argument, request_id, key, headers, None, within)
            assert record.invocation_id is not None
            try:
                async with asyncio.timeout_at(until):
                    response = await answer
            except TimeoutError:
                raise CallTimedOut(
                    f"no outcome of {target.path()} within {limit:g}s; invocation "
                    f"{record.invocation_id} goes on (kourier.attach() waits for it)",
                    record.invocation_id,
                    record.idempotency_key,
                ) from None
        finally:
            answer.cancel()
        return outcome(response)

    async def attach(self, invocation_id: str, *, within: timedelta | None = None) -> Any:
        """Wait for invocation ``invocation_id`` and return its result, as :meth:`request`
        does (its ``TerminalError`` is raised; 404 when its outcome was not kept): after a
        :class:`CallTimedOut`, the same call's outcome. ``CallTimedOut`` again after
        ``within`` (default ``KOURIER_CALL_TIMEOUT``)."""
        limit = (self.settings.call_timeout if within is None else within).total_seconds()
        try:
            async with asyncio.timeout(limit):
                return await self._client.attach(invocation_id)
        except TimeoutError:
            raise CallTimedOut(
                f"no outcome of invocation {invocation_id} within {limit:g}s; it goes on",
                invocation_id,
                None,
            ) from None

    async def call(
        self,
        target: Target,
        argument: Any = None,
        *,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        within: timedelta | None = None,
    ) -> str:
        """Call ``target`` without waiting: returns, once Kafka has the record, the request
        id that the outcome on :attr:`outcomes` carries. Outcomes arrive while the app runs;
        one that comes while it is down is not delivered again unless the call is (use
        :meth:`request` when the outcome must be seen). ``TimeoutError`` when the record is
        not written ``within`` (see :meth:`_written`)."""
        request_id = self._client.new_request_id()
        # Expected at once, as the id is drawn for the client's reader: a restart of the
        # client while the catalog is read fails it (logged), rather than leave it waiting
        # where no response comes.
        answer = self._client.expect(request_id)
        try:
            await self._written(
                target, argument, request_id, idempotency_key, headers, None, within
            )
        except BaseException:
            answer.cancel()
            raise
        answer.add_done_callback(self._forward)
        return request_id

    def _forward(self, answer: asyncio.Future[Response]) -> None:
        if answer.cancelled():
            return
        error = answer.exception()
        if error is not None:  # the client closed before the outcome came
            log.warning("an outcome of kourier.call() is not delivered: %s", error)
            return
        response = answer.result()
        if not self.outcomes.subscriber_count:
            log.warning(
                "nothing subscribes to kourier.outcomes; the outcome of request %s is dropped",
                response.request_id,
            )
        self.add_future(self._deliver(response))

    async def _deliver(self, response: Response) -> None:
        """Put an outcome on ``kourier.outcomes``; that waits while the app's streams are
        suspended, and a stop cancels the wait: the outcome, read, is dropped, and says so
        (its call's event was committed long since: nothing calls again)."""
        try:
            await self.outcomes.send(value=_as_record(response))
        except asyncio.CancelledError:
            log.warning("the app stopped before the outcome of request %s reached "
                        "kourier.outcomes: it is dropped", response.request_id)  # fmt: skip
            raise

    async def send(
        self,
        target: Target,
        argument: Any = None,
        *,
        delay: timedelta | None = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        within: timedelta | None = None,
    ) -> str:
        """One-way: returns the invocation id once Kafka has the record (``TimeoutError``
        when it is not written ``within``, see :meth:`_written`)."""
        due = None if delay is None else due_time(delay, f"the delay of {target.path()}")
        when = None if due is None else due.isoformat()
        record = await self._written(target, argument, None, idempotency_key, headers, when, within)
        assert record.invocation_id is not None
        return record.invocation_id

    async def _written(
        self,
        target: Target,
        argument: Any,
        request_id: str | None,
        idempotency_key: str | None,
        headers: Mapping[str, str] | None,
        due: str | None,
        within: timedelta | None,
    ) -> InvokeRecord:
        """The call's or send's record, written. An agent waiting here (for the catalog, or
        for Faust's producer, up to its request timeout) holds up Faust's rebalances and
        shutdown, as in :meth:`request`: ``TimeoutError`` after ``within`` (default
        ``KOURIER_CALL_TIMEOUT``)."""
        limit = (self.settings.call_timeout if within is None else within).total_seconds()
        record: InvokeRecord | None = None
        try:
            async with asyncio.timeout(limit):
                record = await self._invoke(
                    target, argument, request_id, idempotency_key, headers, due
                )
                await self._produce(target, record)
        except TimeoutError:
            if record is None:
                raise TimeoutError(
                    f"no catalog of services within {limit:g}s; nothing was written"
                ) from None
            assert record.invocation_id is not None
            raise CallTimedOut(
                f"{target.path()} was not written within {limit:g}s; invocation "
                f"{record.invocation_id} may have been (call again with its idempotency key)",
                record.invocation_id,
                record.idempotency_key,
            ) from None
        return record

    # -- building and producing records --------------------------------------------------

    async def _invoke(
        self,
        target: Target,
        argument: Any,
        request_id: str | None,
        idempotency_key: str | None,
        headers: Mapping[str, str] | None,
        due: str | None,
    ) -> InvokeRecord:
        # An empty key is the caller's, refused as the Python client refuses it (400).
        key = self._derived_key() if idempotency_key is None else idempotency_key
        invocation_id = await self._client.id_for(target, key)
        return InvokeRecord(
            target=TargetRecord(service=target.service, handler=target.handler, key=target.key),
            argument=JSON.encode(argument, f"the argument of {target.path()}"),
            invocation_id=invocation_id,
            mode="call" if request_id is not None else "send",
            idempotency_key=key,
            request_id=request_id,
            headers=dict(headers or {}),
            due=due,
        )

    def _derived_key(self) -> str:
        """An idempotency key for the next call of the event being processed."""
        event = current_event()
        if event is None:
            raise RuntimeError(
                "no Faust event is being processed: pass idempotency_key= outside an agent"
            )
        message = event.message
        if message.topic is None or message.offset < 0:
            # An in-memory channel's events (kourier.outcomes, app.channel(), agent.cast)
            # have no offset: every one would get the same key.
            raise RuntimeError(
                "this event comes from a channel, not a Kafka topic, so no idempotency key "
                "can be derived from it: pass idempotency_key="
            )
        own = {f"{self.app.conf.id}-{name}" for name in self.app.agents}
        if message.topic.endswith("-repartition") or message.topic in own:
            # Written by this app (a group_by's topic; an agent's own, which cast, send and
            # ask write to): written again, under new offsets, when the app stops before
            # committing the source's offset: the key would be new each time.
            raise RuntimeError(
                f"this event comes from {message.topic}, which this app writes again after "
                "a restart under new offsets, so no idempotency key can be derived from it: "
                "pass idempotency_key= (say, from the source event's topic, partition and "
                "offset, or from its content)"
            )
        # Faust hands one event to every agent that reads its topic, in whatever order they
        # run: counted for the event alone, a redelivery could give agent A's call the
        # number agent B's had, and each would run again under a key new to it. Outside an
        # agent (a task's or a timer's stream) nothing names the reader: refused.
        agent = current_agent()
        if agent is None:
            raise RuntimeError(
                "this event is processed outside an agent, and streams there share its "
                "count of calls in no fixed order: pass idempotency_key="
            )
        name = agent.name
        counts = self._calls.setdefault(event, {})
        n = counts.get(name, 0)
        counts[name] = n + 1
        where = f"{message.topic}:{message.partition}:{message.offset}"
        return f"faust:{self.app.conf.id}:{name}:{where}:{n}"

    async def _produce(self, target: Target, record: InvokeRecord) -> None:
        """Write ``record`` now (not as a Faust attachment sent after the event is acked),
        as the Python client does: to the partition its invocation id names (for an object,
        its key's), keyed by the object key."""
        assert record.invocation_id is not None
        try:
            written = record.dumps()  # (Faust's JSON: the stdlib's)
        except ValueError as error:  # an integer past the interpreter's 4,300 digits
            raise TerminalError(f"the record cannot be written: {error}", 400) from None
        if len(written) > MAX_RECORD_BYTES:  # a worker would dead-letter it: no invocation
            raise TerminalError(
                f"the record is {len(written)} bytes of JSON, larger than the"
                f" {MAX_RECORD_BYTES} bytes Kourier takes",
                413,
            )
        try:  # as a worker reads it: one it dead-letters would be an invocation never made
            decode_ingress(written)
        except RecordError as error:  # a lone surrogate, a header that is not a string, ...
            raise TerminalError(f"the record cannot be written: {error.detail}", 400) from None
        key = target.key if target.key is not None else record.invocation_id
        partition = ids.partition_of(record.invocation_id, self._client.partitions)
        try:
            delivery = await self.ingress.send(
                key=key.encode(),
                value=written,  # the bytes checked above; Faust writes bytes as they are
                partition=partition,
                headers=_trace_headers(),
                force=True,
            )
            await delivery
        except (MessageSizeTooLargeError, ProducerSendError) as error:
            # The topic's refusal comes as it is; the producer's own (an app's lower
            # producer_max_request_size), wrapped by Faust's send.
            cause = error.__cause__ if isinstance(error, ProducerSendError) else error
            if not isinstance(cause, MessageSizeTooLargeError):
                raise
            raise TerminalError(f"Kafka did not take the record: {cause}", 413) from None


class _Outcomes(faust.Channel[ResponseRecord]):
    """An in-memory channel whose outcomes survive a rebalance.

    A rebalance is made for a topic's events, which are fetched again from the committed
    offsets; no one fetches an outcome again. Faust clears its streams' buffers when a
    rebalance starts and again when it resumes them, and a stream skips an event stamped
    with an earlier consumer generation (every assignment starts a new one) or taken while
    a rebalance suspends it. So each subscriber (every clone is an ``_Outcomes`` too, and
    creates its buffer lazily) buffers in an :class:`_OutcomeQueue`."""

    @property
    def queue(self) -> ThrowableQueue[Any]:
        if self._queue is None:
            maxsize = self.maxsize
            if maxsize is None:
                maxsize = self.app.conf.stream_buffer_maxsize
            self._queue = _OutcomeQueue(self.app, maxsize)
        return self._queue


class _OutcomeQueue(ThrowableQueue[Any]):
    """A buffer of outcome events that no rebalance clears, from which a stream takes one
    only while the app's streams run, stamped then with the consumer generation of that
    moment: so the stream neither skips it nor clears it.

    Like ``asyncio.Queue.get``, :meth:`get` waits for a put through the queue's getters;
    it cannot call that method, which takes "suspended" (:meth:`empty`) for "nothing
    buffered" and would not wake when the streams resume."""

    def __init__(self, app: AppT, maxsize: int) -> None:
        super().__init__(maxsize=maxsize, flow_control=app.flow_control, clear_on_resume=False)
        self._app = app

    def empty(self) -> bool:
        """Nothing to take now: nothing buffered, or the streams suspended (a stream asks
        before it takes one without waiting)."""
        return not self._flow_control.is_active() or super().empty()

    def get_nowait(self) -> Any:
        event = super().get_nowait()
        if isinstance(event, EventT):
            event.message.generation_id = self._app.consumer_generation_id
        return event

    async def get(self) -> Any:
        while True:
            await self._flow_control.acquire()  # the streams run
            if not self._flow_control.is_active():
                continue  # suspended again before this task ran: wait for that to end
            if not self.empty():
                return self.get_nowait()
            getters: deque[asyncio.Future[None]] = self._getters  # type: ignore[attr-defined]
            getter = asyncio.get_running_loop().create_future()
            getters.append(getter)  # woken by the next put (or a throw)
            try:
                await getter
            except BaseException:
                getter.cancel()
                with contextlib.suppress(ValueError):
                    getters.remove(getter)
                if not self.empty() and not getter.cancelled():
                    # Woken, then cancelled: the wake-up goes to whoever waits next.
                    self._wakeup_next(getters)  # type: ignore[attr-defined]
                raise


def _as_record(response: Response) -> ResponseRecord:
    failure = response.failure
    return ResponseRecord(
        status=response.status,
        request_id=response.request_id,
        invocation_id=response.invocation_id,
        value=response.value,
        failure=FailureRecord(code=failure.code, message=failure.message) if failure else None,
    )


def _trace_headers() -> list[tuple[str, bytes]] | None:
    """The current span's context as Faust record headers (see streams.tracing)."""
    carrier = tracing.as_headers(tracing.current()) or []
    return [(name, value.encode()) for name, value in carrier if isinstance(value, str)] or None
