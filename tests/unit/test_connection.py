"""The client's connection to Kafka where librdkafka refuses a record (raised by
``produce``, or in its delivery report) and where a response cannot be read, and what a
call keeps while it waits: no Kafka is needed to see how each is told."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import weakref
from collections.abc import Callable
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka import KafkaError, KafkaException

from handlers import TerminalError
from streams.client import Client
from streams.client import connection as connection_module
from streams.client.connection import (
    ClientClosed,
    Connection,
    KafkaUnavailable,
    ResponseUnreadable,
    ServiceInfo,
)
from streams.http.ingress import Ingress
from streams.settings import Settings
from streams.wire import ids
from streams.wire.records import Response, Target
from streams.wire.topics import Topics
from tests.unit.harness import until


class Refusing:
    """A producer whose ``produce`` raises ``error``, as librdkafka's does."""

    def __init__(self, error: KafkaError) -> None:
        self.error = error

    def produce(self, *args: Any, **kwargs: Any) -> None:
        raise KafkaException(self.error)


def started(producer: Any, settings: Settings | None = None) -> Connection:
    connection = Connection(settings or Settings(namespace="unit"), Topics("unit"))
    connection._loop = asyncio.get_running_loop()
    connection._producer = producer  # type: ignore[assignment]
    connection.running = True
    return connection


@pytest.mark.parametrize(
    ("error", "refusal", "words"),
    [
        (KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), TerminalError, "Kafka did not take"),
        # As confluent-kafka hands it over: the code alone, its fatal flag unset.
        (KafkaError(KafkaError._FATAL), KafkaUnavailable, "restart the client"),
    ],
)
async def test_a_record_librdkafka_refuses_says_why(
    error: KafkaError, refusal: type[Exception], words: str
) -> None:
    """Not written: a 413 over HTTP for a record too large (sent again, it would be refused
    again), a 503 for a producer that failed for good. It was a KafkaException, which the
    ingress answered with a 500 ("internal error"), and after a fatal error on every call."""
    connection = started(Refusing(error))
    with pytest.raises(refusal, match=words) as raised:
        await connection.produce("unit.ingress", b"{}", 0, "k")
    if refusal is TerminalError:
        assert getattr(raised.value, "status_code", None) == 413
    fatal = error.code() == KafkaError._FATAL
    assert (connection.failed is not None) == fatal, "the producer is done for"


class Full:
    """A producer whose queue is full ``times`` times, then takes the record."""

    def __init__(self, times: int) -> None:
        self.times = times
        self.tries = 0

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self.tries += 1
        if self.tries <= self.times:
            raise BufferError("Local: Queue full")


async def test_a_full_queue_is_tried_again_less_and_less_often(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a long outage librdkafka's queue fills (records never expire): every call then
    woke the loop every 5 ms until its timeout, thousands of calls at once."""
    producer = Full(times=8)
    connection = started(producer)
    pauses: list[float] = []
    sleep = asyncio.sleep

    async def noted(seconds: float) -> None:
        pauses.append(seconds)
        await sleep(0)

    monkeypatch.setattr(asyncio, "sleep", noted)
    response: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    await connection.produce("unit.ingress", b"{}", 0, "k", failing=response)
    assert producer.tries == 9
    assert pauses == [0.005, 0.01, 0.02, 0.04, 0.08, 0.1, 0.1, 0.1]


async def test_a_queue_full_for_long_refuses_the_record_as_not_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A record that never found room waited as long as its caller: over HTTP, until the
    call's timeout, whose 408 said the invocation goes on, though nothing was written."""
    monkeypatch.setattr(connection_module, "QUEUE_FULL_WAIT", 0.2)
    producer = Full(times=10**9)
    connection = started(producer)
    response: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    with pytest.raises(KafkaUnavailable, match="nothing was written"):
        await asyncio.wait_for(
            connection.produce("unit.ingress", b"{}", 0, "k", failing=response), 10
        )
    assert producer.tries > 2


async def test_a_queue_full_for_half_a_short_call_timeout_refuses_the_record() -> None:
    """With a call timeout under twice ``QUEUE_FULL_WAIT`` the call's own timeout came
    first: over HTTP a 408 that said the invocation goes on, though nothing was written."""
    producer = Full(times=10**9)
    connection = started(producer, Settings(namespace="unit", call_timeout=timedelta(seconds=1)))
    response: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    with pytest.raises(KafkaUnavailable, match=r"full for 0\.5s"):
        await asyncio.wait_for(
            connection.produce("unit.ingress", b"{}", 0, "k", failing=response), 1
        )


class Reporting:
    """A producer that takes the record and keeps its delivery callback, for the test to
    report on, as librdkafka's polling thread would."""

    def __init__(self) -> None:
        self.reports: list[Any] = []

    def produce(self, *args: Any, on_delivery: Any = None, **kwargs: Any) -> None:
        self.reports.append(on_delivery)


@pytest.mark.parametrize(
    ("error", "refusal", "words"),
    [
        (KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), TerminalError, "Kafka did not take"),
        # As confluent-kafka hands it over: the code alone, its fatal flag unset.
        (KafkaError(KafkaError._FATAL), KafkaUnavailable, "restart the client"),
        (KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED), KafkaUnavailable, "did not take"),
        (KafkaError(KafkaError.INVALID_TIMESTAMP), KafkaUnavailable, "did not take"),
        (KafkaError(KafkaError.UNKNOWN_TOPIC_ID), KafkaUnavailable, "did not take"),
        # Given up on after it went out, or failed by the idempotent producer: librdkafka
        # marks such a record "possibly persisted", and a 503 ("not written") would have the
        # caller send it again, and run it twice.
        (KafkaError(KafkaError._MSG_TIMED_OUT), ClientClosed, "may have been written"),
        (KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER), ClientClosed, "may have been"),
        (KafkaError(KafkaError.UNKNOWN_PRODUCER_ID), ClientClosed, "may have been written"),
    ],
)
async def test_a_record_the_broker_refuses_says_why_as_produce_does(
    error: KafkaError, refusal: type[Exception], words: str
) -> None:
    """The broker's refusal of a record larger than its topic takes came back in the
    delivery report as KafkaUnavailable (a 503 over HTTP: try again, and be refused again);
    a fatal error of the producer did not say that only a restart helps."""
    producer = Reporting()
    connection = started(producer)
    sent = asyncio.ensure_future(connection.produce("unit.ingress", b"{}", 0, "k"))
    await until(lambda: producer.reports)  # the record is queued, its report to come
    producer.reports[0](error, None)
    connection._settle_all(connection._hand_over())
    with pytest.raises(refusal, match=words) as raised:
        await sent
    if refusal is TerminalError:
        assert getattr(raised.value, "status_code", None) == 413
    if refusal is ClientClosed:
        assert getattr(raised.value, "may_be_written", None) is True
    fatal = error.code() == KafkaError._FATAL
    assert (connection.failed is not None) == fatal, "the producer is done for"


class Read:
    """A response record as the reader's consumer gives it."""

    def __init__(self, value: bytes) -> None:
        self._value = value

    def value(self) -> bytes:
        return self._value


async def test_a_response_the_client_cannot_read_fails_its_caller() -> None:
    """A response that does not decode (a newer Kourier's, say) was dropped, and its caller
    waited for good: ``client.call`` and the CLI have no time limit of their own."""
    connection = started(Reporting())
    waiting = connection.expect("r-1")
    other = connection.expect("r-2")
    connection._on_response(Read(b'{"v": 99, "request_id": "r-1", "invocation_id": "x"}'))
    connection._on_response(Read(b"not json"))  # no request id to be read: nobody to tell
    connection._on_response(Read(b"[" * 100_000))  # nor here (and the pump thread goes on)
    connection._on_response(Read(b'{"v": 99, "request_id": 7}'))
    connection._resolve_all(connection._answered)
    with pytest.raises(ResponseUnreadable, match=r"r-1 cannot be read here: .*v=99"):
        await asyncio.wait_for(waiting, 5)  # (nothing else would answer it)
    assert not other.done()
    other.cancel()


async def test_a_catalog_read_kafka_does_not_answer_is_kafka_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call to a service not in the catalog reads it again first; with Kafka away, the
    read's KafkaException reached the caller (a 500 over HTTP), not the KafkaUnavailable
    every other wait for Kafka raises."""
    connection = started(Reporting())
    closed: list[bool] = []

    def away(reader: Any, tp: Any, timeout: float = 30.0) -> tuple[int, int]:
        raise KafkaException(KafkaError(KafkaError._TRANSPORT))

    monkeypatch.setattr(connection_module, "watermarks", away)
    monkeypatch.setattr(connection, "_new_reader", lambda *a, **k: SimpleNamespace(
        close=lambda: closed.append(True)))  # fmt: skip
    with pytest.raises(KafkaUnavailable, match="did not answer"):
        connection.catch_up_catalog()
    assert closed == [True]


class Announced:
    """A catalog record as the reader's consumer gives it, at ``offset``."""

    def __init__(self, name: str, handlers: tuple[str, ...] = (), offset: int = 0) -> None:
        self._name = name
        self._handlers = {h: {"kind": "service"} for h in handlers}
        self._offset = offset

    def key(self) -> bytes:
        return self._name.encode()

    def value(self) -> bytes:
        manifest = {"name": self._name, "kind": "service", "handlers": self._handlers}
        return json.dumps(manifest).encode()

    def offset(self) -> int:
        return self._offset


async def test_a_service_announced_while_the_loop_reads_the_catalog_leaves_it_whole() -> None:
    """The pump thread added services to the dict the loop iterates (the admin API's
    service list, the ingress's routes): "dictionary changed size during iteration"."""
    connection = started(Reporting())
    connection._on_catalog(Announced("First"))
    reading = iter(connection.services.values())
    assert next(reading).name == "First"
    connection._on_catalog(Announced("Second"))  # as the pump thread would, meanwhile
    assert list(reading) == []
    assert sorted(connection.services) == ["First", "Second"]


class Quiet:
    """A librdkafka client that is never asked anything: a producer with nothing queued, a
    reader, an admin client."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.flushed = 0

    def flush(self, *args: Any) -> int:
        self.flushed += 1
        return 0

    def purge(self) -> None: ...

    def close(self) -> None: ...


async def watch_nothing(*args: Any) -> None:
    await asyncio.Event().wait()


def quiet_connection(
    monkeypatch: pytest.MonkeyPatch, to_thread: Callable[..., Any], producer: Any = None
) -> Connection:
    """A connection whose Kafka clients are stand-ins (``producer`` makes its producer),
    with no threads or stall watch, and ``to_thread`` in place of ``asyncio.to_thread``."""
    monkeypatch.setattr(connection_module, "Producer", producer or Quiet)
    monkeypatch.setattr(connection_module, "AdminClient", Quiet)
    monkeypatch.setattr(connection_module, "watch", watch_nothing)
    monkeypatch.setattr(asyncio, "to_thread", to_thread)
    for thread_role in ("_pump", "_deliveries"):
        monkeypatch.setattr(Connection, thread_role, lambda self: None)
    connection = Connection(Settings(namespace="unit"), Topics("unit"))
    monkeypatch.setattr(connection, "_new_reader", lambda *a, **k: Quiet())
    return connection


def held_start(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Connection, asyncio.Event, asyncio.Event, list[object]]:
    """A quiet connection whose first start waits, once Kafka is asked (``asked``), until
    ``answered``; and the producers made."""
    asked, answered = asyncio.Event(), asyncio.Event()
    made: list[object] = []

    async def kafka_answers_later(call: Any, *args: Any, **kwargs: Any) -> None:
        if getattr(call, "__name__", "") == "_assign_reader" and not answered.is_set():
            asked.set()
            await answered.wait()

    def producer(*args: Any) -> Quiet:
        made.append("producer")
        return Quiet()

    return quiet_connection(monkeypatch, kafka_answers_later, producer), asked, answered, made


async def test_a_close_during_the_start_closes_the_client_once_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A close while the start waited for Kafka returned at once (the client was not
    running yet), and the client then started and ran with nobody to stop it."""
    connection, asked, answered, _ = held_start(monkeypatch)
    starting = asyncio.ensure_future(connection.start())
    await asyncio.wait_for(asked.wait(), 5)
    closing = asyncio.ensure_future(connection.close())
    await asyncio.sleep(0)
    assert not closing.done(), "the close waits for the start"
    answered.set()
    await asyncio.wait_for(asyncio.gather(starting, closing), 5)
    assert not connection.running
    assert connection._closing is not None
    assert connection._closing.done()


async def test_a_call_made_once_the_close_has_begun_is_refused_unwritten() -> None:
    """The client stopped taking calls only when its shutdown task first ran, a loop turn
    after ``close()``: a call that ran in between was written, and its caller told it may
    have been (504) instead of that it was not (503)."""
    connection = started(Refusing(KafkaError(KafkaError._FATAL)))
    shut_down = asyncio.Event()

    async def shutting_down() -> None:
        await shut_down.wait()
        connection.running = False

    connection._shut_down = shutting_down  # type: ignore[method-assign]
    closing = asyncio.ensure_future(connection.close())
    await asyncio.sleep(0)  # close() has run; its shutdown has not
    with pytest.raises(ClientClosed) as raised:
        connection.check_open()
    assert raised.value.may_be_written is False
    shut_down.set()
    await asyncio.wait_for(closing, 5)


async def test_a_start_after_a_cancelled_close_waits_for_that_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cancelled close shuts down on its own; a start meanwhile made new Kafka clients,
    which that shutdown then closed and deleted under the running client."""
    flushing, flushed = asyncio.Event(), asyncio.Event()

    async def in_a_thread(call: Any, *args: Any, **kwargs: Any) -> None:
        if getattr(call, "__name__", "") == "flush" and not flushed.is_set():
            flushing.set()
            await flushed.wait()  # the first close's flush waits for Kafka

    connection = quiet_connection(monkeypatch, in_a_thread)
    await connection.start()
    closing = asyncio.ensure_future(connection.close())
    await asyncio.wait_for(flushing.wait(), 5)
    closing.cancel()  # the shutdown goes on
    starting = asyncio.ensure_future(connection.start())
    await asyncio.sleep(0)
    flushed.set()
    await asyncio.wait_for(starting, 5)
    assert connection.running
    assert isinstance(connection._producer, Quiet), "the old shutdown left the new one alone"


async def test_a_second_start_makes_no_second_set_of_kafka_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two starts, together or one after the other, each made a producer, a reader, a stall
    watch and two threads; the first set ran on with nothing to stop it."""
    connection, asked, answered, made = held_start(monkeypatch)
    first = asyncio.ensure_future(connection.start())
    await asyncio.wait_for(asked.wait(), 5)
    second = asyncio.ensure_future(connection.start())
    await asyncio.sleep(0)
    assert not second.done(), "the second start did not wait for the first"
    answered.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    await connection.start()  # running: nothing more
    assert made == ["producer"]
    assert connection.running
    connection._stalls.cancel()


async def test_a_start_after_a_cancelled_start_waits_for_its_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A start cancelled while its thread read Kafka left that thread running, in calls on
    the connection's reader; a second start made a new reader and read again, and whichever
    thread ended last chose the response partition the client reads."""
    connection, asked, answered, made = held_start(monkeypatch)
    first = asyncio.ensure_future(connection.start())
    await asyncio.wait_for(asked.wait(), 5)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    second = asyncio.ensure_future(connection.start())
    for _ in range(5):
        await asyncio.sleep(0)
    assert made == ["producer"], "the second start began while the first's thread ran"
    answered.set()
    await asyncio.wait_for(second, 5)
    assert made == ["producer", "producer"]
    assert connection.running
    connection._stalls.cancel()


@pytest.mark.parametrize("ends", ["cancelled", "failed"])
async def test_a_start_that_ends_closes_its_reader_once_its_thread_is_done_with_it(
    ends: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancelled start closed its reader while its thread was still in a call on it: the
    close waited for that call, Kafka's own 30 s, past ``kourier call --timeout``."""
    in_call, answered = threading.Event(), threading.Event()
    closed: list[str] = []

    class Reader(Quiet):
        def close(self) -> None:
            closed.append(threading.current_thread().name)

    def reads_kafka(reader: Any) -> None:
        in_call.set()
        if ends == "failed":
            raise RuntimeError("refused")
        answered.wait(10)

    connection = quiet_connection(monkeypatch, asyncio.to_thread)  # real threads
    monkeypatch.setattr(connection, "_new_reader", lambda *a, **k: Reader())
    monkeypatch.setattr(connection, "_assign_reader_at_end", reads_kafka)
    starting = asyncio.ensure_future(connection.start())
    assert await asyncio.to_thread(in_call.wait, 10)
    if ends == "cancelled":
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert closed == [], "closed while its thread was in a call on it"
        answered.set()
    else:
        with pytest.raises(RuntimeError, match="refused"):
            await starting
    await until(lambda: bool(closed))
    assert len(closed) == 1
    assert not connection.running


@pytest.mark.parametrize("followed_past_it", [False, True])
def test_a_catalog_read_to_its_end_finds_a_handler_added_to_a_known_service(
    followed_past_it: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read kept every entry the follower had applied, so a service a worker announced
    again with a new handler stayed without it until the follower caught up (the ingress
    answered 404 meanwhile). What the follower applied past the read's end is newer."""
    connection = Connection(Settings(namespace="unit"), Topics("unit"))
    connection._on_catalog(Announced("Grown", ("old",), offset=3))  # the follower, at 4
    if followed_past_it:
        connection._on_catalog(Announced("Grown", ("old", "newest"), offset=9))
    monkeypatch.setattr(connection_module, "watermarks", lambda *a, **k: (0, 6))
    monkeypatch.setattr(connection, "_new_reader", lambda *a, **k: SimpleNamespace(
        close=lambda: None))  # fmt: skip

    def read_to(low: int, end: int, found: dict[str, Any]) -> int:
        connection._on_catalog(Announced("Grown", ("old", "new"), offset=5), found)
        return end

    monkeypatch.setattr(connection, "_read_catalog", read_to)
    connection.catch_up_catalog()
    handlers = set(connection.services["Grown"].handlers)
    assert handlers == ({"old", "newest"} if followed_past_it else {"old", "new"})


def test_a_catalog_read_cut_short_does_not_undo_what_the_follower_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read that stopped at its 10 s limit short of the end, below what the follower had
    applied, was taken as the newer for being short of the end: its older entry replaced
    the follower's, a handler added since went missing, and the follower, past that
    record, never put it back."""
    connection = Connection(Settings(namespace="unit"), Topics("unit"))
    connection._on_catalog(Announced("Grown", ("old", "new"), offset=3))  # the follower, at 4
    monkeypatch.setattr(connection_module, "watermarks", lambda *a, **k: (0, 6))
    monkeypatch.setattr(connection, "_new_reader", lambda *a, **k: SimpleNamespace(
        close=lambda: None))  # fmt: skip

    def cut_short(low: int, end: int, found: dict[str, Any]) -> int:
        connection._on_catalog(Announced("Grown", ("old",), offset=1), found)
        connection._on_catalog(Announced("Other", ("h",), offset=2), found)
        return 3  # where its time ran out

    monkeypatch.setattr(connection, "_read_catalog", cut_short)
    connection.catch_up_catalog()
    assert set(connection.services["Grown"].handlers) == {"old", "new"}
    assert set(connection.services["Other"].handlers) == {"h"}, "a service it found, lost"


class FailingForGood(Reporting):
    """A producer whose poll raises its fatal error once, as confluent-kafka does, and then
    serves the reports of the records librdkafka purged."""

    def __init__(self) -> None:
        super().__init__()
        self.raised = False

    def poll(self, timeout: float) -> int:
        if self.reports and not self.raised:
            self.raised = True
            error = KafkaError(KafkaError.UNKNOWN_PRODUCER_ID, "unknown producer id", fatal=True)
            raise KafkaException(error)
        if self.raised and self.reports:
            self.reports.pop()(KafkaError(KafkaError._PURGE_QUEUE), None)
        time.sleep(timeout)
        return 0


async def test_a_fatal_error_poll_raises_marks_the_client_failed_and_its_records_unknown() -> None:
    """The error ended the delivery thread: the sends waiting on it waited for good, and
    nothing said the producer had failed; a record librdkafka then purged read as one the
    close dropped, though the client was not closing."""
    producer = FailingForGood()
    connection = started(producer)
    polling = threading.Thread(target=connection._deliveries, daemon=True)
    polling.start()
    try:
        sent = asyncio.ensure_future(connection.produce("unit.ingress", b"{}", 0, "k"))
        with pytest.raises(ClientClosed, match="may have been written") as raised:
            await asyncio.wait_for(sent, 10)
        assert raised.value.may_be_written
        assert connection.failed is not None
        assert "unknown producer id" in connection.failed
    finally:
        connection.running = False
        polling.join(5)


async def test_health_says_503_once_the_producer_failed_for_good() -> None:
    """Every call and send was a 503 until someone restarted the ingress, and its liveness
    check said ok: nothing restarted it."""
    from aiohttp.test_utils import TestClient, TestServer

    from streams.http.admin import AdminApi
    from streams.http.index import InvocationIndex

    class Failing:
        services: dict[str, Any] = {}  # noqa: RUF012
        failed: str | None = None

    client = Failing()
    api = AdminApi(cast(Client, client), cast(InvocationIndex, object()), None)
    async with TestClient(TestServer(api.app(), host="127.0.0.1")) as http:
        assert (await http.get("/health")).status == 200
        client.failed = "Local: Fatal error: unknown producer id"
        reply = await http.get("/health")
        assert reply.status == 503
        assert "unknown producer id" in (await reply.json())["reason"]


async def test_a_start_asked_after_a_close_starts_again_once_that_close_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Start, close, start, while the first start waited for Kafka: the second start saw
    the client running (the close not yet under way) and returned, and the close then shut
    the client its caller was about to use."""
    connection, asked, answered, made = held_start(monkeypatch)
    first = asyncio.ensure_future(connection.start())
    await asyncio.wait_for(asked.wait(), 5)
    closing = asyncio.ensure_future(connection.close())
    await asyncio.sleep(0)
    again = asyncio.ensure_future(connection.start())
    await asyncio.sleep(0)
    answered.set()
    await asyncio.wait_for(asyncio.gather(first, closing, again), 5)
    assert connection.running, "closed under the start asked last"
    assert made == ["producer", "producer"]
    connection._stalls.cancel()


async def test_catalog_refreshes_asked_together_share_one_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each call to a service no worker announced refreshes the catalog (two Kafka consumers
    each, on a thread each): a burst of 32 HTTP calls to one made 32 reads at once. One that
    asks while a read runs waits for the next read: the one under way may have found the
    catalog's end before the announcement the caller looks for."""
    client = Client(Settings(namespace="unit"))
    began = [threading.Event(), threading.Event()]
    release = [threading.Event(), threading.Event()]
    reads: list[int] = []

    def catch_up() -> None:
        n = len(reads)
        reads.append(n)
        began[n].set()
        release[n].wait(10)

    monkeypatch.setattr(client._kafka, "catch_up_catalog", catch_up)
    asking = [asyncio.ensure_future(client.catalog(refresh=True)) for _ in range(32)]
    await asyncio.to_thread(began[0].wait, 10)
    asking[0].cancel()  # one caller gone: the others' read goes on
    late = [asyncio.ensure_future(client.catalog(refresh=True)) for _ in range(8)]
    began_early = await asyncio.to_thread(began[1].wait, 0.2)  # (it must not come)
    assert not began_early, "a read began before the one under way ended"
    release[0].set()
    await asyncio.wait_for(asyncio.gather(*asking[1:]), 10)
    await asyncio.to_thread(began[1].wait, 10)
    assert not any(caller.done() for caller in late), "answered by the read begun before them"
    release[1].set()
    await asyncio.wait_for(asyncio.gather(*late), 10)
    assert reads == [0, 1]


async def test_a_call_waiting_for_the_catalog_is_ended_by_the_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call to a service the catalog does not list waits for the catalog's read, up to
    40 s with Kafka slow: the close ended the calls waiting for their outcomes, not that
    one, which failed only once the read ended, long after the client was closed."""
    client = Client(Settings(namespace="unit"))
    began, release = threading.Event(), threading.Event()

    def catch_up() -> None:
        began.set()
        release.wait(10)

    monkeypatch.setattr(client._kafka, "catch_up_catalog", catch_up)
    connection = client._kafka
    connection.running = True  # as started

    async def shut_down() -> None:
        connection.running = False

    connection._shut_down = shut_down  # type: ignore[method-assign]
    try:
        waiting = asyncio.ensure_future(client.catalog(refresh=True))
        await asyncio.to_thread(began.wait, 10)
        await asyncio.wait_for(connection.close(), 5)
        with pytest.raises(ClientClosed, match="the service catalog") as raised:
            await asyncio.wait_for(waiting, 5)
        assert raised.value.may_be_written is False
    finally:
        release.set()


class Waiting:
    """A connection that takes every record at once and answers no call until told."""

    partitions = 4

    def __init__(self) -> None:
        self.services: dict[str, ServiceInfo] = {}
        self.written = asyncio.Event()
        self.answers: dict[str, asyncio.Future[Response]] = {}

    def check_open(self) -> None: ...

    def new_request_id(self) -> str:
        return f"r{len(self.answers)}"

    def expect(self, request_id: str) -> asyncio.Future[Response]:
        self.answers[request_id] = asyncio.get_running_loop().create_future()
        return self.answers[request_id]

    async def produce(self, *args: Any, **kwargs: Any) -> None:
        self.written.set()


class Argument(dict[str, Any]):
    """A JSON object that can be referred to weakly (a plain dict cannot)."""


class Unacknowledged(Waiting):
    """Takes a record, and acknowledges it only when told (Kafka away meanwhile)."""

    def __init__(self) -> None:
        super().__init__()
        self.acknowledged = asyncio.Event()

    async def produce(self, *args: Any, **kwargs: Any) -> None:
        self.written.set()
        await self.acknowledged.wait()


@pytest.mark.parametrize("mode", ["call", "send", "plain send"])
async def test_a_call_that_waits_keeps_neither_its_argument_nor_its_record(mode: str) -> None:
    """Waiting for its outcome (up to the call timeout), a call held its argument and its
    record: a body of 900 KiB of small objects is tens of MB of them, per call that waits.
    A send that waits for the worker's receipt held them as well, and a plain send while
    Kafka did not acknowledge its record."""
    client = Client(Settings(namespace="unit"))
    kafka = Unacknowledged() if mode == "plain send" else Waiting()
    client._kafka = kafka  # type: ignore[assignment]
    records: list[weakref.ref[Any]] = []
    encoded = client._encoded

    def encoding(record: Any) -> Any:
        records.append(weakref.ref(record))
        return encoded(record)

    client._encoded = encoding  # type: ignore[method-assign]
    argument = Argument(items=[{} for _ in range(1000)])
    held = weakref.ref(argument)
    inv_id = ids.new_id("k", 4)
    target = Target(service="Orders", handler="place")
    if mode == "call":
        waiting = client.call(target, argument, invocation_id=inv_id)
    elif mode == "send":
        waiting = client.send_to(target, argument, idempotency_key="once", invocation_id=inv_id)
    else:
        waiting = client.send_to(target, argument, invocation_id=inv_id)
    task = asyncio.ensure_future(waiting)
    del argument, waiting
    await asyncio.wait_for(kafka.written.wait(), 10)
    gc.collect()
    assert held() is None, "the argument is held while the call waits"
    (record,) = records
    assert record() is None, "the record is held while the call waits"
    if isinstance(kafka, Unacknowledged):
        kafka.acknowledged.set()
    else:
        (answer,) = kafka.answers.values()
        status = "success" if mode == "call" else "accepted"
        answer.set_result(Response(request_id="r0", invocation_id=inv_id, status=status, value=1))
    await asyncio.wait_for(task, 10)


def lists_of(length: int) -> int:
    """How many lists of ``length`` items live (after a collection)."""
    gc.collect()
    return sum(1 for found in gc.get_objects() if type(found) is list and len(found) == length)


async def test_an_http_call_that_waits_keeps_no_parsed_body() -> None:
    """The ingress's handler held the parsed body while its call waited for the outcome."""
    ingress = Ingress(Settings(namespace="unit"))
    kafka = Waiting()
    kafka.services = {"Orders": ServiceInfo(name="Orders", kind="service",
                                            handlers={"place": {"kind": "exclusive"}})}  # fmt: skip
    ingress.client._kafka = kafka  # type: ignore[assignment]
    length = 54_321  # a list of it is the parsed body
    assert lists_of(length) == 0
    async with TestClient(TestServer(ingress.app())) as http:
        body = json.dumps(list(range(length)))  # the test keeps no list of its own
        call = asyncio.ensure_future(
            http.post("/Orders/place", data=body, headers={"content-type": "application/json"})
        )
        await asyncio.wait_for(kafka.written.wait(), 10)
        assert lists_of(length) == 0, "the parsed body is held while the call waits"
        (request_id, answer) = next(iter(kafka.answers.items()))
        answer.set_result(Response(request_id=request_id, status="success", value=1))
        async with await asyncio.wait_for(call, 10) as reply:
            assert reply.status == 200, await reply.text()
