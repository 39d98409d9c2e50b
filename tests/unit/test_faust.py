"""streams.faust without a broker: its records against Kourier's wire format, and the
idempotency keys it derives from Faust events."""

from __future__ import annotations

import asyncio
import pickle
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import faust
import pytest
from aiokafka.errors import MessageSizeTooLargeError
from faust.exceptions import ProducerSendError

from handlers import TerminalError
from streams import faust as integration
from streams.client.connection import ClientClosed, ServiceInfo
from streams.faust import InvokeRecord, Kourier, ResponseRecord, TargetRecord
from streams.settings import Settings
from streams.wire import ids
from streams.wire.records import (
    MAX_RECORD_BYTES,
    Failure,
    Invoke,
    Response,
    Target,
    decode_ingress,
    encode,
)


@dataclass
class Message:
    topic: str | None
    partition: int
    offset: int


@dataclass(eq=False)
class Event:
    message: Message


@pytest.fixture
def kourier() -> Kourier:
    app = faust.App("unit-orders", broker="kafka://127.0.0.1:1", web_enabled=False)
    return Kourier(app, Settings(namespace="unit"))


def test_an_invoke_record_is_what_the_worker_decodes() -> None:
    record = InvokeRecord(
        target=TargetRecord(service="Counter", handler="add", key="ada"),
        argument={"n": 5},
        idempotency_key="k1",
        request_id="r1",
        headers={"x-tenant": "blue"},
    )
    decoded = decode_ingress(record.dumps())
    assert isinstance(decoded, Invoke)
    assert decoded.target.path() == "Counter/ada/add"
    assert (decoded.argument, decoded.idempotency_key, decoded.request_id) == ({"n": 5}, "k1", "r1")
    assert decoded.headers == {"x-tenant": "blue"}


def test_a_response_reads_as_a_response_record() -> None:
    ok = ResponseRecord.loads(encode(Response(request_id="r", status="success", value=[1, 2])))
    assert ok.result() == [1, 2]
    failure = Failure(code=409, message="cancelled")
    failed = ResponseRecord.loads(encode(Response(status="failure", failure=failure)))
    with pytest.raises(Exception, match="cancelled") as raised:
        failed.result()
    assert getattr(raised.value, "status_code", None) == 409


def test_keys_derive_from_the_event_and_repeat_on_redelivery(
    kourier: Kourier, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = Event(Message("unit.orders", 2, 41))
    monkeypatch.setattr(integration, "current_event", lambda: first)
    monkeypatch.setattr(integration, "current_agent", lambda: SimpleNamespace(name="app.a"))
    assert kourier._derived_key() == "faust:unit-orders:app.a:unit.orders:2:41:0"
    assert kourier._derived_key() == "faust:unit-orders:app.a:unit.orders:2:41:1"
    again = Event(Message("unit.orders", 2, 41))  # the same record, delivered again
    monkeypatch.setattr(integration, "current_event", lambda: again)
    assert kourier._derived_key() == "faust:unit-orders:app.a:unit.orders:2:41:0"


def test_an_event_read_outside_an_agent_has_no_key_to_derive(
    kourier: Kourier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task's or a timer's stream: two of them on one topic share its events and counted
    their calls together, in no fixed order, so a redelivery could swap their keys (each
    answered with the other's outcome). The README said it was refused; it was derived."""
    monkeypatch.setattr(integration, "current_event", lambda: Event(Message("unit.orders", 2, 41)))
    monkeypatch.setattr(integration, "current_agent", lambda: None)
    with pytest.raises(RuntimeError, match="outside an agent"):
        kourier._derived_key()


def test_an_event_on_an_agents_own_topic_has_no_key_to_derive(
    kourier: Kourier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``agent.cast()``, ``send()`` and ``ask()`` write to the agent's own topic (the app's
    id, then the agent's name) as the casting agent runs: stopped before committing its
    source's offset, the app casts again under new offsets, and each call ran once more."""

    @kourier.app.agent()
    async def reserve(stream: faust.StreamT[str]) -> None:
        async for _ in stream:
            pass

    cast = Message(f"unit-orders-{reserve.name}", 0, 7)  # what reserve.cast() writes
    monkeypatch.setattr(integration, "current_event", lambda: Event(cast))
    monkeypatch.setattr(integration, "current_agent", lambda: SimpleNamespace(name="app.b"))
    with pytest.raises(RuntimeError, match="this app writes again"):
        kourier._derived_key()
    # Another producer's topic whose name begins as the app's id does: its own events.
    placed = Message("unit-orders-placed", 0, 7)
    monkeypatch.setattr(integration, "current_event", lambda: Event(placed))
    assert kourier._derived_key() == "faust:unit-orders:app.b:unit-orders-placed:0:7:0"


def test_agents_sharing_an_event_count_their_calls_apart(
    kourier: Kourier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faust hands one event object to every agent reading its topic, in no fixed order.
    Counted per event, agent B's first call got 1 after agent A's first, and 0 when B ran
    first after a redelivery: each then ran again under a key new to its target."""
    shared = Event(Message("unit.orders", 2, 41))
    monkeypatch.setattr(integration, "current_event", lambda: shared)
    running = ["app.reserve"]
    monkeypatch.setattr(integration, "current_agent", lambda: SimpleNamespace(name=running[0]))
    assert kourier._derived_key() == "faust:unit-orders:app.reserve:unit.orders:2:41:0"
    running[0] = "app.bill"
    assert kourier._derived_key() == "faust:unit-orders:app.bill:unit.orders:2:41:0"
    assert kourier._derived_key() == "faust:unit-orders:app.bill:unit.orders:2:41:1"
    running[0] = "app.reserve"
    assert kourier._derived_key() == "faust:unit-orders:app.reserve:unit.orders:2:41:1"


def test_a_channel_event_has_no_key_to_derive(
    kourier: Kourier, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(integration, "current_event", lambda: Event(Message(None, 0, -1)))
    with pytest.raises(RuntimeError, match="pass idempotency_key="):
        kourier._derived_key()
    monkeypatch.setattr(integration, "current_event", lambda: None)
    with pytest.raises(RuntimeError, match="outside an agent"):
        kourier._derived_key()


def test_a_group_by_event_has_no_key_to_derive(
    kourier: Kourier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent reading ``orders.group_by(...)`` reads what the app forwarded to a topic of
    its own; stopped before committing the source's offsets, the app forwards those events
    again under new offsets: the derived key changed, and each call ran once more."""
    repartitioned = Message("unit-orders-Order.customer-repartition", 0, 7)
    monkeypatch.setattr(integration, "current_event", lambda: Event(repartitioned))
    with pytest.raises(RuntimeError, match="pass idempotency_key="):
        kourier._derived_key()


async def test_outcomes_reach_an_agent_across_a_rebalance(kourier: Kourier) -> None:
    """A rebalance is made for a topic's events, fetched again from the committed offsets;
    nothing fetches an outcome again. Faust clears its streams' buffers as a rebalance starts
    and as it ends, and a stream skips an event stamped with an earlier consumer generation
    (each assignment starts one) or taken while the rebalance suspends it: an outcome
    buffered before the rebalance, and one that arrived during it, were both dropped."""
    app = kourier.app
    flow = app.flow_control
    flow.resume()  # as when the app has recovered its first assignment
    agent_stream = app.stream(kourier.outcomes)  # as an agent reads it
    stream = aiter(agent_stream)

    def answered(request_id: str) -> asyncio.Future[Response]:
        """The client's future for a call of ``kourier.call()``, answered."""
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        future.set_result(Response(request_id=request_id, status="success", value="Hello"))
        return future

    first = integration._as_record(Response(request_id="r1", status="success", value="Hello"))
    await kourier.outcomes.send(value=first)  # buffered, nobody has read it yet
    buffered = agent_stream.channel.queue
    assert buffered.qsize() == 1
    received: list[str | None] = []

    async def read() -> None:
        while len(received) < 3:
            value = await anext(stream)
            assert isinstance(value, ResponseRecord)
            # An event, as any stream's: take(), events() and the like need it.
            assert agent_stream.current_event is not None
            received.append(value.request_id)

    # A rebalance, as App._on_partitions_revoked, the assignment and Recovery go through it.
    flow.suspend()
    flow.clear()
    kourier._forward(answered("r2"))  # arrives while the streams are suspended
    reader = asyncio.ensure_future(read())
    for _ in range(10):
        await asyncio.sleep(0)  # the stream asks its buffer for the next, while suspended
    app.consumer_generation_id += 1  # the new assignment
    flow.clear()
    assert buffered.qsize() == 1, "the buffer was cleared, or taken from while suspended"
    flow.resume()
    kourier._forward(answered("r3"))
    try:
        async with asyncio.timeout(5):
            await reader
    except TimeoutError:
        reader.cancel()
    assert received == ["r1", "r2", "r3"], "an outcome was dropped by the rebalance"


async def test_an_outcome_waits_out_a_suspension_that_follows_a_resume(kourier: Kourier) -> None:
    """Resumed, then suspended again before the waiting stream ran: it must not take an
    outcome while suspended (the stream would skip it), and takes it at the next resume."""
    flow = kourier.app.flow_control
    queue = integration._OutcomeQueue(kourier.app, maxsize=10)
    queue.put_nowait("outcome")
    flow.suspend()
    getting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    flow.resume()
    flow.suspend()  # before the getter ran
    for _ in range(10):
        await asyncio.sleep(0)
    assert not getting.done(), "taken while the streams were suspended"
    flow.resume()
    async with asyncio.timeout(5):
        assert await getting == "outcome"


async def test_an_outcome_a_cancelled_getter_was_woken_for_goes_to_the_next(
    kourier: Kourier,
) -> None:
    """Two streams wait; a put wakes the first, which is cancelled before it runs: the
    outcome stays for the second, which is woken in its place."""
    kourier.app.flow_control.resume()
    queue = integration._OutcomeQueue(kourier.app, maxsize=10)
    first = asyncio.ensure_future(queue.get())
    second = asyncio.ensure_future(queue.get())
    for _ in range(5):
        await asyncio.sleep(0)
    queue.put_nowait("outcome")
    first.cancel()
    async with asyncio.timeout(5):
        assert await second == "outcome"
    assert first.cancelled()


@pytest.fixture
async def produced(kourier: Kourier, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """``kourier`` as if started, with ``Greeter`` announced and Faust's producer waiting for
    Kafka for good; set once a record reached it."""
    produced = asyncio.Event()

    async def kafka_away(target: object, record: object) -> None:
        produced.set()
        await asyncio.sleep(3600)  # stands for a producer that never hears from Kafka

    monkeypatch.setattr(kourier, "_produce", kafka_away)
    monkeypatch.setitem(kourier._client._kafka.services, "Greeter", GREETER)
    monkeypatch.setattr(kourier._client, "new_request_id", lambda: "r-away")
    monkeypatch.setattr(kourier._client._kafka, "partitions", 8)
    monkeypatch.setattr(kourier._client._kafka, "_loop", asyncio.get_running_loop(), raising=False)
    monkeypatch.setattr(kourier._client._kafka, "running", True)  # as once started
    return produced


@pytest.mark.parametrize(("within", "said"), [(0.2, r"within 0\.2s"), (0, r"within 0s")])
async def test_request_within_bounds_the_produce_too(
    kourier: Kourier, produced: asyncio.Event, within: float, said: str
) -> None:
    """``within`` bounds the whole request: Faust's producer waits for Kafka (up to its
    request timeout, 20 minutes by default), and an agent waiting there holds up Faust's
    rebalances and shutdown as much as one waiting for the outcome. ``timedelta(0)``, false
    as a bool, waited the 10 minutes of ``KOURIER_CALL_TIMEOUT`` instead of none."""
    target = Target(service="Greeter", handler="greet")
    bound = timedelta(seconds=within)
    asking = kourier.request(target, "ada", idempotency_key="k1", within=bound)
    with pytest.raises(TimeoutError, match=said):
        await asyncio.wait_for(asking, 5)
    if within:
        assert produced.is_set()


async def test_a_call_or_send_before_the_client_started_says_so(kourier: Kourier) -> None:
    """They failed with an AttributeError (no request ids yet) and a ZeroDivisionError (no
    partition count yet)."""
    target = Target(service="Greeter", handler="greet")
    with pytest.raises(ClientClosed, match=r"not started \(await start\(\)\)"):
        await kourier.request(target, "ada", idempotency_key="k1")
    with pytest.raises(ClientClosed, match="not started"):
        await kourier.send(target, "ada", idempotency_key="k2")


async def test_request_within_bounds_the_catalogs_read_too(
    kourier: Kourier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service the catalog does not know has the catalog read again first, which waits
    for Kafka: within ``within`` as well."""

    async def catalog(refresh: bool = False) -> dict[str, ServiceInfo]:
        await asyncio.sleep(3600)  # stands for a read that never hears from Kafka
        return {}

    monkeypatch.setattr(kourier._client, "catalog", catalog)
    monkeypatch.setattr(kourier._client, "new_request_id", lambda: "r-unread")
    monkeypatch.setattr(kourier._client._kafka, "_loop", asyncio.get_running_loop(), raising=False)
    monkeypatch.setattr(kourier._client._kafka, "running", True)  # as once started
    target = Target(service="Unknown", handler="greet")
    asking = kourier.request(target, "ada", idempotency_key="k1", within=timedelta(seconds=0.2))
    with pytest.raises(TimeoutError, match="nothing was written"):
        await asyncio.wait_for(asking, 30)


GREETER = ServiceInfo(name="Greeter", kind="service", handlers={"greet": {"kind": "shared"}})


async def test_a_workflow_announced_since_the_catalog_was_read_gets_its_runs_id(
    kourier: Kourier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalog is followed with a long fetch wait: a workflow announced a moment ago was
    not in it yet, so ``send`` returned a fresh id, and an attach or cancel by it found no
    run (404). An unknown service has the catalog read to its end first, as the Python
    client does."""
    signup = ServiceInfo(name="Signup", kind="workflow", handlers={"run": {"kind": "workflow"}})

    async def catalog(refresh: bool = False) -> dict[str, ServiceInfo]:
        assert refresh, "an unknown service must have the catalog read again"
        kourier._client._kafka.services["Signup"] = signup  # announced meanwhile
        return kourier._client.services

    written: list[InvokeRecord] = []

    async def produce(target: Target, record: InvokeRecord) -> None:
        written.append(record)

    monkeypatch.setattr(kourier._client, "catalog", catalog)
    monkeypatch.setattr(kourier, "_produce", produce)
    monkeypatch.setattr(kourier._client._kafka, "partitions", 8)
    monkeypatch.setattr(kourier._client._kafka, "running", True)  # as once started
    run = Target(service="Signup", key="ada", handler="run")
    inv_id = await kourier.send(run, {"email": "ada@example.com"}, idempotency_key="k1")
    assert inv_id == ids.workflow_run_id("Signup", "ada")
    assert [record.invocation_id for record in written] == [inv_id]


@pytest.fixture
def sent(kourier: Kourier, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """What ``kourier`` gives Faust's producer, as if started, with ``Greeter`` announced."""
    given: list[object] = []

    async def ingress_send(**record: object) -> asyncio.Future[None]:  # Faust's producer
        given.append(record)
        delivered = asyncio.get_running_loop().create_future()
        delivered.set_result(None)
        return delivered

    monkeypatch.setattr(kourier.ingress, "send", ingress_send)
    monkeypatch.setitem(kourier._client._kafka.services, "Greeter", GREETER)
    monkeypatch.setattr(kourier._client._kafka, "partitions", 8)
    monkeypatch.setattr(kourier._client._kafka, "running", True)  # as once started
    return given


async def test_an_argument_past_what_a_record_carries_is_a_413(
    kourier: Kourier, sent: list[object]
) -> None:
    """A worker dead-letters an invoke larger than a record may be: ``send`` returned an
    invocation id for an invocation that never came to be."""
    target = Target(service="Greeter", handler="greet")
    with pytest.raises(TerminalError) as refused:
        await kourier.send(target, "x" * MAX_RECORD_BYTES, idempotency_key="k1")
    assert refused.value.status_code == 413
    assert sent == []


@pytest.mark.parametrize("verb", ["call", "send"])
async def test_call_and_send_are_bounded_by_within_too(
    kourier: Kourier, produced: asyncio.Event, verb: str
) -> None:
    """``request`` had ``within=`` because an agent waiting on Faust's producer holds up
    rebalances and shutdown; ``call`` and ``send`` waited there with no bound at all."""
    target = Target(service="Greeter", handler="greet")
    bound = timedelta(seconds=0.1)
    asking = getattr(kourier, verb)(target, "ada", idempotency_key="k1", within=bound)
    with pytest.raises(integration.CallTimedOut, match="may have been") as slow:
        await asyncio.wait_for(asking, 5)
    assert slow.value.invocation_id == ids.idempotent_id("Greeter", None, "greet", "k1")
    assert slow.value.idempotency_key == "k1", "calling again under it is the same call"
    again = pickle.loads(pickle.dumps(slow.value))  # as a process pool hands it back
    assert (str(again), again.invocation_id, again.idempotency_key) == (
        str(slow.value), slow.value.invocation_id, "k1"
    )  # fmt: skip
    assert kourier._client.awaited == 0, "an outcome still expected"


async def test_call_expects_its_outcome_before_it_waits_for_the_catalog(
    kourier: Kourier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``call`` drew its request id (for the response partition its client reads), waited
    for the catalog, and only then expected the outcome: a client restarted meanwhile reads
    another partition, and the outcome went where nobody read, unnoticed."""
    steps: list[str] = []
    expected: asyncio.Future[object] = asyncio.get_running_loop().create_future()

    def expect(request_id: str) -> asyncio.Future[object]:
        steps.append("expect")
        return expected

    async def invoke(*args: object) -> object:
        steps.append("catalog")
        raise RuntimeError("the catalog is not there")

    monkeypatch.setattr(kourier._client, "new_request_id", lambda: "r1")
    monkeypatch.setattr(kourier._client, "expect", expect)
    monkeypatch.setattr(kourier, "_invoke", invoke)
    with pytest.raises(RuntimeError):
        await kourier.call(Target(service="Greeter", handler="greet"), "ada")
    assert steps == ["expect", "catalog"]
    assert expected.cancelled(), "still expected after the call failed"


async def test_a_record_the_topic_refuses_as_too_large_is_a_413(
    kourier: Kourier, sent: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A topic whose ``max.message.bytes`` is below what Kourier takes refuses the record:
    Faust's producer raised aiokafka's own error, as the Python client raises none."""

    async def too_large(**record: object) -> None:
        raise MessageSizeTooLargeError()

    monkeypatch.setattr(kourier.ingress, "send", too_large)
    with pytest.raises(TerminalError) as refused:
        await kourier.send(Target(service="Greeter", handler="greet"), "ada", idempotency_key="k")
    assert refused.value.status_code == 413

    async def wrapped(**record: object) -> None:  # as Faust's send wraps aiokafka's errors
        try:
            raise MessageSizeTooLargeError()  # the producer's own limit, below Kourier's
        except MessageSizeTooLargeError as error:
            raise ProducerSendError(f"Error while sending: {error!r}") from error

    monkeypatch.setattr(kourier.ingress, "send", wrapped)
    with pytest.raises(TerminalError) as refused:
        await kourier.send(Target(service="Greeter", handler="greet"), "ada", idempotency_key="k")
    assert refused.value.status_code == 413, "Faust's wrapping went past the 413"


async def test_a_record_a_worker_would_dead_letter_is_a_400_and_not_sent(
    kourier: Kourier, sent: list[object]
) -> None:
    """Faust's JSON writes a lone surrogate escaped, and its records check no header's type:
    a worker dead-lettered such an invoke and answered nothing, so ``request`` waited out its
    whole timeout and ``send`` named an invocation that never came to be."""
    target = Target(service="Greeter", handler="greet")
    for argument, headers in (("\udcff", None), ("ada", {"n": 1})):
        with pytest.raises(TerminalError) as refused:
            await kourier.send(target, argument, idempotency_key="k1", headers=headers)  # type: ignore[arg-type]
        assert refused.value.status_code == 400
        assert "the record cannot be written" in refused.value.message
    assert sent == []
    await kourier.send(target, "ada", idempotency_key="k1", headers={"n": "1"})
    assert len(sent) == 1


async def test_an_integer_past_the_interpreters_digits_is_a_400_and_not_sent(
    kourier: Kourier, sent: list[object]
) -> None:
    """Faust's JSON (the stdlib's) cannot write an integer past 4,300 digits: ``send``
    raised its ``ValueError``, which no caller expects of a bad argument."""
    target = Target(service="Greeter", handler="greet")
    with pytest.raises(TerminalError) as refused:
        await kourier.send(target, [10**5000], idempotency_key="k1")
    assert refused.value.status_code == 400
    assert "the record cannot be written" in refused.value.message
    assert sent == []


async def test_faust_is_given_the_bytes_that_were_checked(
    kourier: Kourier, sent: list[object]
) -> None:
    """The record was checked as bytes (its size, what a worker decodes), then handed to
    Faust as a record, which wrote it to JSON once more on the event loop: up to 900 KiB."""
    await kourier.send(Target(service="Greeter", handler="greet"), "ada", idempotency_key="k1")
    [given] = sent
    assert isinstance(given, dict)
    value = given["value"]
    assert isinstance(value, bytes)
    decoded = decode_ingress(value)
    assert isinstance(decoded, Invoke)
    assert (decoded.target.path(), decoded.argument) == ("Greeter/greet", "ada")
    prepared, _ = kourier.ingress.prepare_value(value, None)
    assert prepared is value, "Faust writes it again"


async def test_a_delayed_send_past_what_a_record_carries_is_a_400(kourier: Kourier) -> None:
    target = Target(service="Greeter", handler="greet")
    last_hour = datetime.max.replace(tzinfo=UTC) - datetime.now(UTC) - timedelta(hours=1)
    for delay in (last_hour, timedelta(days=3_000_000), timedelta.max):
        with pytest.raises(TerminalError) as refused:
            await kourier.send(target, "ada", idempotency_key="k", delay=delay)
        assert refused.value.status_code == 400


def credentials(**kafka: str) -> object:
    """Faust's credentials for librdkafka properties (``sasl_username``: ``sasl.username``)."""
    return integration.broker_credentials(Settings(kafka={k.replace("_", "."): v
                                                          for k, v in kafka.items()}))  # fmt: skip


def test_broker_credentials_follow_kouriers_kafka_settings(tmp_path: Path) -> None:
    assert credentials() is None, "plain text takes no credentials"
    plain = credentials(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                        sasl_username="shop", sasl_password="secret")  # fmt: skip
    assert isinstance(plain, faust.SASLCredentials)
    assert (plain.protocol.value, plain.mechanism.value) == ("SASL_PLAINTEXT", "PLAIN")
    assert (plain.username, plain.password) == ("shop", "secret")
    scram = credentials(security_protocol="sasl_ssl", sasl_mechanisms="SCRAM-SHA-256",
                        sasl_username="shop", sasl_password="secret")  # fmt: skip
    assert isinstance(scram, faust.SASLCredentials)
    assert (scram.protocol.value, scram.mechanism.value) == ("SASL_SSL", "SCRAM-SHA-256")
    assert scram.ssl_context is not None
    assert scram.ssl_context.check_hostname, "the host name is checked by default"
    assert scram.ssl_context.verify_mode == ssl.CERT_REQUIRED
    tls = credentials(security_protocol="SSL", ssl_endpoint_identification_algorithm="none")
    assert isinstance(tls, faust.SSLCredentials)
    assert tls.protocol.value == "SSL"
    assert tls.context is not None
    assert not tls.context.check_hostname
    assert tls.context.verify_mode == ssl.CERT_REQUIRED, "the certificate is still verified"
    unverified = credentials(security_protocol="SSL", enable_ssl_certificate_verification="false")
    assert isinstance(unverified, faust.SSLCredentials)
    assert unverified.context.verify_mode == ssl.CERT_NONE
    assert isinstance(credentials(security_protocol="SSL", ssl_ca_location=str(tmp_path)),
                      faust.SSLCredentials), "a directory of authorities"  # fmt: skip
    with pytest.raises(FileNotFoundError):  # the CA named is the one loaded
        credentials(security_protocol="SSL", ssl_ca_location="/nonexistent/ca.pem")
    with pytest.raises(FileNotFoundError):  # and so is the client certificate
        credentials(security_protocol="SSL", ssl_certificate_location="/nonexistent/me.pem",
                    ssl_key_location="/nonexistent/me.key")  # fmt: skip


@pytest.mark.parametrize(
    ("kafka", "says"),
    [
        ({"security_protocol": "SASL_PLAINTEXT"}, "sasl.mechanism GSSAPI"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"}, "OAUTHBEARER"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "plain"}, "sasl.mechanism plain"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}, "takes sasl.username"),
        ({"security_protocol": "TLS"}, "security.protocol 'TLS'"),
        ({"security_protocol": "SSL", "ssl_ca_pem": "-----BEGIN"}, "ssl.ca.pem: not given"),
        ({"security_protocol": "SSL", "ssl_key_location": "k.pem"}, "without ssl.certificate"),
    ],
)
def test_broker_credentials_refuse_what_faust_cannot_be_given(
    kafka: dict[str, str], says: str
) -> None:
    with pytest.raises(integration.FaustSettingsError, match=says):
        credentials(**kafka)


async def test_a_request_that_times_out_names_its_invocation_to_attach_to(
    kourier: Kourier, sent: list[object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain ``TimeoutError`` that left the agent acknowledged its event, and calling
    again took the next derived key, so invoked again: nothing waited for the first call."""
    never: asyncio.Future[object] = asyncio.get_running_loop().create_future()  # no outcome
    monkeypatch.setattr(kourier._client, "new_request_id", lambda: "r1")
    monkeypatch.setattr(kourier._client, "expect", lambda request_id: never)
    target = Target(service="Greeter", handler="greet")
    bound = timedelta(seconds=0.05)
    with pytest.raises(integration.CallTimedOut) as slow:
        await asyncio.wait_for(
            kourier.request(target, "ada", idempotency_key="k1", within=bound), 5
        )
    assert slow.value.invocation_id == ids.idempotent_id("Greeter", None, "greet", "k1")
    assert slow.value.idempotency_key == "k1"
    assert len(sent) == 1
    attached: list[str] = []

    async def attach(invocation_id: str) -> str:
        attached.append(invocation_id)
        if len(attached) == 1:
            await asyncio.sleep(3600)  # the outcome not in yet
        return "hello ada"

    monkeypatch.setattr(kourier._client, "attach", attach)
    with pytest.raises(integration.CallTimedOut) as again:
        await asyncio.wait_for(kourier.attach(slow.value.invocation_id, within=bound), 5)
    assert again.value.invocation_id == slow.value.invocation_id
    assert await kourier.attach(slow.value.invocation_id) == "hello ada"
    assert attached == [slow.value.invocation_id] * 2
    assert len(sent) == 1, "attach wrote a record"


async def test_an_empty_idempotency_key_is_refused_not_derived(
    kourier: Kourier, sent: list[object]
) -> None:
    """``""`` was taken for no key: derived in an agent, and outside one refused as if none
    had been passed."""
    with pytest.raises(TerminalError) as refused:
        await kourier.send(Target(service="Greeter", handler="greet"), "ada", idempotency_key="")
    assert refused.value.status_code == 400
    assert sent == []


async def test_an_outcome_a_stop_drops_says_so(
    kourier: Kourier, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop suspends the streams and waits for the agents: an outcome of ``call()`` read
    meanwhile waits to be put on ``kourier.outcomes`` until the stop cancels it, and was
    dropped without a word (its event committed long since: nothing calls again)."""
    app = kourier.app
    app.flow_control.suspend()  # as App.stop does first
    stream = app.stream(kourier.outcomes)  # an agent subscribes
    assert stream.channel is not None
    answer: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
    answer.set_result(Response(request_id="r9", status="success", value="Hello"))
    kourier._forward(answer)
    for _ in range(10):
        await asyncio.sleep(0)
    assert stream.channel.queue.qsize() == 0, "put while the streams were suspended"
    late: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
    late.set_result(Response(request_id="r10", status="success", value="Hello"))
    kourier._forward(late)  # and one whose put has not begun
    await kourier._stop_futures()  # as the stop of the app's services does
    for _ in range(3):
        await asyncio.sleep(0)
    assert "outcome of request r9" in caplog.text
    assert "outcome of request r10" in caplog.text


def test_an_exactly_once_app_is_refused_with_its_reason() -> None:
    """Faust's transaction manager then sends every record, naming its producer by the
    group of the record's topic among those the app consumes: every call and send failed
    with a KeyError naming the ingress topic."""
    app = faust.App("unit-eos", broker="kafka://127.0.0.1:1", web_enabled=False,
                    processing_guarantee="exactly_once")  # fmt: skip
    with pytest.raises(ValueError, match="at_least_once"):
        Kourier(app, Settings(namespace="unit"))
