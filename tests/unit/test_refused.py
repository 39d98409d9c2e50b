"""Records Kafka refuses for good: whose they are, and the invocation failing for them.
(The search for them against a broker: tests/integration/test_refused_records.py.)"""

from __future__ import annotations

from confluent_kafka import KafkaError

from handlers import ObjectContext, VirtualObject
from streams.engine.journal import entry_key, meta_key, state_key
from streams.engine.outbox import Out, author_of
from streams.kafka.refused import HELD, RecordsRefused, blame, size
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
from tests.unit.harness import TOPICS, Harness, until

ONE, TWO = ids.new_id("a", 1), ids.new_id("b", 1)
TARGET = Target(service="Bulky", key="k", handler="grow")
RAN: list[str] = []

bulky = VirtualObject("Bulky")


@bulky.handler()
async def grow(ctx: ObjectContext, text: str) -> str:
    RAN.append(text)
    ctx.set("text", text)
    return text


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


def test_blame_holds_each_author_once_and_the_latest_few() -> None:
    error = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large")
    answer = Response(request_id="r", invocation_id=ONE, status="success", value="x" * 100)
    big = Out(TOPICS.responses, 0, b"r", encode(answer))
    state = Out(TOPICS.state, 0, state_key("Bulky", "k", "text"), b'"x"')
    refused = RecordsRefused(error, [(big, error), (big, error), (state, error)])
    assert f"{size(big)} bytes to {TOPICS.responses}" in str(refused)
    held: dict[str, Failure] = {}
    assert blame(refused, TOPICS, held) == [ONE]
    assert list(held) == [ONE]
    assert held[ONE].code == 413
    assert "Message size too large" in held[ONE].message
    assert blame(refused, TOPICS, held) == [], "held already: not blamed again"
    many = {f"inv-{n}": held[ONE] for n in range(HELD)}
    assert blame(refused, TOPICS, many) == [ONE]
    assert len(many) == HELD
    assert "inv-0" not in many, "the oldest is let go"
    assert ONE in many


async def test_an_invocation_held_as_refused_fails_at_its_next_attempt_without_its_argument() -> (
    None
):
    """Its handler does not run (it would write the refused record again); its outcome,
    retained for its idempotency key, is kept without the argument, which may be what
    Kafka refused."""
    h = Harness([bulky])
    kept = ids.idempotent_id("Bulky", "k", "grow", "once")
    refusal = Failure(code=413, message="Kafka refused a record this invocation wrote")
    h.processor.attempts.refused[kept] = refusal
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
