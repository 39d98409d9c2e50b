"""Records Kafka refuses for good: whose they are, and the invocation failing for them.
(The search for them against a broker: tests/integration/test_refused_records.py.)"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from handlers import ObjectContext, VirtualObject
from streams.engine.journal import entry_key, meta_key, state_key
from streams.engine.outbox import Out, author_of
from streams.kafka import refused as refused_module
from streams.kafka.refused import HELD, RecordsRefused, blame, find_refused, size
from streams.kafka.setbacks import FAILED_PAUSE, Setbacks
from streams.wire import ids
from streams.wire.records import (
    Caller,
    Completion,
    Failure,
    Invoke,
    Response,
    Target,
    encode,
)
from tests.unit.harness import TOPICS, Harness, settle, until

ONE, TWO = ids.new_id("a", 1), ids.new_id("b", 1)
TARGET = Target(service="Bulky", key="k", handler="grow")
RAN: list[str] = []

bulky = VirtualObject("Bulky")


bulky_wait: dict[str, asyncio.Event] = {}


@bulky.handler()
async def grow(ctx: ObjectContext, text: str) -> str:
    RAN.append(text)
    ctx.set("text", text)
    return text


@bulky.handler()
async def wait(ctx: ObjectContext) -> None:
    await bulky_wait[ctx.key].wait()


@bulky.handler()
async def pass_on(ctx: ObjectContext, text: str) -> None:
    ctx.object_send(grow, "elsewhere").send(text)


def test_a_refused_record_names_the_invocation_that_wrote_it() -> None:
    call = Invoke(target=TARGET, invocation_id=TWO, caller=Caller(invocation_id=ONE, entry=0))
    send = Invoke(target=TARGET, invocation_id=TWO, mode="send")
    outcome = Completion(caller=Caller(invocation_id=TWO, entry=3), invocation_id=ONE)
    answer = Response(request_id="r", invocation_id=ONE, status="success", value=1)
    ingress, responses = TOPICS.ingress, TOPICS.responses
    authored = [
        Out(TOPICS.invocations, 0, meta_key(ONE), b"{}"),
        Out(TOPICS.invocations, 0, entry_key(ONE, 7), b"{}"),
        Out(responses, 0, b"r", encode(answer)),
        Out(ingress, 0, b"k", encode(outcome)),  # the callee's outcome: the callee's
        Out(ingress, 0, b"k", encode(call)),  # a call: its caller's
        Out(ingress, 0, b"k", encode(send), author=ONE),  # a send names no sender
    ]
    assert [author_of(out, TOPICS) for out in authored] == [ONE] * len(authored)
    nobody = [
        Out(ingress, 0, b"k", encode(send)),
        Out(TOPICS.state, 0, state_key("Bulky", "k", "text"), b'"x"'),
        Out(TOPICS.deadletter, 0, b"k", b"not a record"),
        Out(ingress, 0, b"k", b"not a record"),
    ]
    assert [author_of(out, TOPICS) for out in nobody] == [None] * len(nobody)


TOO_LARGE = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large")


def response_of(inv_id: str, value: str = "x" * 100) -> Out:
    answer = Response(request_id="r", invocation_id=inv_id, status="success", value=value)
    return Out(TOPICS.responses, 0, b"r", encode(answer))


def test_blame_holds_each_author_once_and_the_latest_few() -> None:
    big = response_of(ONE)
    state = Out(TOPICS.state, 0, state_key("Bulky", "k", "text"), b'"x"')
    refused = RecordsRefused(TOO_LARGE, [(big, TOO_LARGE), (big, TOO_LARGE), (state, TOO_LARGE)])
    assert f"{size(big)} bytes to {TOPICS.responses}" in str(refused)
    held: dict[str, tuple[Failure, float]] = {}
    assert blame(refused, TOPICS, held) == [ONE]
    assert list(held) == [ONE]
    failure, until = held[ONE]
    assert failure.code == 413
    assert "Message size too large" in failure.message
    assert until > time.monotonic()
    many = {f"inv-{n}": held[ONE] for n in range(HELD)}
    many["expired"] = (failure, time.monotonic() - 1)
    assert blame(refused, TOPICS, many) == [ONE]
    assert len(many) == HELD
    assert "expired" not in many, "a hold past its time is let go"
    assert "inv-0" not in many, "the oldest is let go"
    assert ONE in many


def test_an_invocation_blamed_again_before_a_commit_pauses_the_worker() -> None:
    """A hold taken by an attempt that did not commit, and the same record refused again:
    restoring at once, again and again, would be a busy loop."""
    setbacks = Setbacks(TOPICS)
    refused = RecordsRefused(TOO_LARGE, [(response_of(ONE), TOO_LARGE)])
    assert setbacks.commit_failed(0, refused) == 0.0
    setbacks.refused.clear()  # taken by an attempt whose step did not commit
    assert setbacks.commit_failed(0, refused) == FAILED_PAUSE
    assert ONE in setbacks.refused, "held again, for the replay after the pause"
    other = RecordsRefused(TOO_LARGE, [(response_of(TWO), TOO_LARGE)])
    assert setbacks.commit_failed(0, other) == 0.0, "another invocation: no pause"
    assert setbacks.commit_failed(5, refused) == 0.0, "a commit got through since"


class Probed:
    """A producer that takes records of at most ``limit`` bytes, as a broker would."""

    def __init__(self, limit: int, refuse_with: KafkaError = TOO_LARGE) -> None:
        self.limit = limit
        self.refuse_with = refuse_with
        self.sent: list[int] = []  # sizes of the records tried
        self.calls: list[str] = []
        self._report: Any = None

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def produce(self, topic: str, **record: Any) -> None:
        self.calls.append("produce")
        length = len(record["value"]) + len(record["key"])
        self.sent.append(length)
        error = self.refuse_with if length > self.limit else None
        self._report = lambda: record["on_delivery"](error, None)

    def flush(self, timeout: float) -> int:
        self.calls.append("flush")
        self._report()
        return 0

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort")


def records(*sizes: int, topic: str = TOPICS.responses) -> list[Out]:
    return [Out(topic, 0, b"k", b"v" * (n - 1)) for n in sizes]


def test_the_records_refused_are_found_by_bisection_each_sent_alone() -> None:
    snapshot = records(10, 300, 50, 200, 20, 400, 30) + records(500, topic=TOPICS.state)
    producer = Probed(limit=100)
    found = find_refused(lambda: producer, snapshot)  # type: ignore[arg-type,return-value]
    assert sorted(size(out) for out, _ in found) == [200, 300, 400, 500]
    assert all(error.code() == KafkaError.MSG_SIZE_TOO_LARGE for _, error in found)
    assert len(producer.sent) <= 3 + 1, "one try per record, not a bisection"
    assert producer.calls[:4] == ["begin", "produce", "flush", "abort"]
    assert producer.calls.count("begin") == producer.calls.count("abort")
    assert find_refused(lambda: Probed(limit=1000), snapshot) == []  # type: ignore[arg-type,return-value]


def test_the_search_ends_at_another_error_and_in_time(monkeypatch: Any) -> None:
    denied = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    assert find_refused(lambda: Probed(100, denied), records(300)) == []  # type: ignore[arg-type,return-value]
    producer = Probed(limit=100)
    assert find_refused(lambda: producer, records(300, 200), seconds=0) == []  # type: ignore[arg-type,return-value]
    assert producer.sent == []

    class Raising(Probed):
        def produce(self, topic: str, **record: Any) -> None:
            raise KafkaException(TOO_LARGE)  # librdkafka's own limit, before it leaves

    raising = Raising(limit=100)
    found = find_refused(lambda: raising, records(300))  # type: ignore[arg-type,return-value]
    assert [error.code() for _, error in found] == [KafkaError.MSG_SIZE_TOO_LARGE]
    assert raising.calls == ["begin", "abort"]
    assert refused_module.SEARCH_SECONDS < 20.0, "within the worker's stuck-transaction limit"


def test_a_try_whose_abort_fails_keeps_its_verdict() -> None:
    """The abort after each try bumps the producer's epoch, a round trip to the coordinator
    that can outlast its second on a loaded broker. Its failure replaced the delivery
    report the try already had: the search looked no further and named nothing. Each try
    is on a new producer, so the failed abort leaves the next one nothing to trip on."""

    class Unaborted(Probed):
        def abort_transaction(self, timeout: float) -> None:
            super().abort_transaction(timeout)
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))

    found = find_refused(lambda: Unaborted(limit=100), records(300, 50))  # type: ignore[arg-type,return-value]
    assert [(size(out), error.code()) for out, error in found] == [
        (300, KafkaError.MSG_SIZE_TOO_LARGE)
    ]


def test_each_try_is_on_a_new_producer_and_an_end_keeps_what_was_found() -> None:
    made: list[Probed] = []

    def anew() -> Probed:
        if len(made) == 2:  # the turn was settled by the Kafka thread meanwhile
            raise KafkaException(KafkaError(KafkaError._STATE, "no producer to search on"))
        made.append(Probed(limit=100))
        return made[-1]

    # Sorted: 700, 600, 500, 400, 300, 50. The first try (400) is refused, the second (50)
    # taken, the third (300) cannot be made: 400 and all larger are known refused.
    found = find_refused(anew, records(50, 300, 400, 500, 600, 700))  # type: ignore[arg-type]
    assert sorted(size(out) for out, _ in found) == [400, 500, 600, 700]
    assert [p.sent for p in made] == [[400], [50]], "one try per producer"


async def test_a_send_names_its_sender_on_its_record_in_memory() -> None:
    """A send's record names no sender (no caller waits for it): if Kafka refuses it, the
    sender is the one to fail, and only the record kept in memory can say who that is."""
    h = Harness([bulky])
    sender = ids.new_id("k", 1)
    h.send(Invoke(target=Target(service="Bulky", key="k", handler="pass_on"), argument="big",
                  invocation_id=sender, request_id="s"))  # fmt: skip
    await until(lambda: "s" in h.responses())
    (sent,) = [out for out in h.out if out.topic == TOPICS.ingress]
    assert b'"caller"' not in (sent.value or b"")
    assert author_of(sent, TOPICS) == sender


def hold(h: Harness, inv_id: str) -> Failure:
    refusal = Failure(code=413, message="Kafka refused a record this invocation wrote")
    h.processor.attempts.refused[inv_id] = (refusal, time.monotonic() + 60)
    return refusal


async def test_an_invocation_held_as_refused_fails_at_its_next_attempt_without_its_argument() -> (
    None
):
    """Its handler does not run (it would write the refused record again); its outcome,
    retained for its idempotency key, is kept without the argument, which may be what
    Kafka refused."""
    h = Harness([bulky])
    kept = ids.idempotent_id("Bulky", "k", "grow", "once")
    refusal = hold(h, kept)
    h.send(Invoke(target=TARGET, argument="big", idempotency_key="once", request_id="one"))
    await until(lambda: "one" in h.responses())
    assert h.responses()["one"].failure == refusal
    assert RAN == [], "the handler ran: it would write the refused record again"
    assert h.processor.attempts.refused == {}, "still held after it failed"
    assert h.processor.invocations[kept].meta.argument is None
    h.send(Invoke(target=TARGET, argument="small", invocation_id=TWO, request_id="two"))
    await until(lambda: "two" in h.responses())
    assert h.responses()["two"].value == "small"
    assert RAN == ["small"]
    RAN.clear()


async def test_an_invocation_held_as_refused_fails_as_it_queues_behind_its_key() -> None:
    """Its meta, with the argument, is written as it queues: held until the key passed to
    it, that record would have failed every commit meanwhile."""
    h = Harness([bulky])
    waiting = bulky_wait.setdefault("k", asyncio.Event())
    first = ids.new_id("k", 1)
    h.send(Invoke(target=Target(service="Bulky", key="k", handler="wait"), invocation_id=first,
                  request_id="first"))  # fmt: skip
    await until(lambda: h.processor.invocations[first].meta.status == "running")
    refusal = hold(h, TWO)
    h.send(Invoke(target=TARGET, argument="big", invocation_id=TWO, request_id="two"))
    await until(lambda: "two" in h.responses())
    assert h.responses()["two"].failure == refusal
    assert "first" not in h.responses(), "it failed while the key was held"
    waiting.set()
    await until(lambda: "first" in h.responses())
    assert RAN == []


async def test_an_invocation_held_as_refused_fails_as_it_is_scheduled() -> None:
    """A delayed send's meta, with the argument, is written as it is scheduled: held until
    its due time (days away, it may be), that record would have failed every commit."""
    h = Harness([bulky])
    hold(h, TWO)
    due = datetime.now(UTC) + timedelta(days=2)
    h.send(Invoke(target=TARGET, argument="big", invocation_id=TWO, mode="send", due=due))
    await settle()
    meta = h.processor.invocations[TWO].meta if TWO in h.processor.invocations else None
    assert meta is None or meta.status == "completed"
    assert [out for out in h.out if out.topic == TOPICS.delay] == [], "it was scheduled"
    assert h.processor.attempts.refused == {}
