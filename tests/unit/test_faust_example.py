"""``examples.faust_orders``' agents, fed events directly (the app is not started): what
they do with an outcome that failed, and with a call Kafka did not take in time. The app
runs against a real broker and worker in tests/integration/test_faust.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from examples import faust_orders
from streams import Target
from streams.faust import CallTimedOut, FailureRecord, ResponseRecord


def body(agent: object) -> Any:
    """The ``async def`` an ``@app.agent`` wraps, to be handed a stream of its own."""
    return cast(Any, agent).fun


async def events(*items: Any) -> AsyncIterator[Any]:
    for item in items:
        yield item


async def test_a_failed_greeting_is_written_as_a_failure_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``outcome.result()`` raised the failure (a worker that does not host ``Greeter``
    answers 404): the agent ended, and past 100 such restarts a second Faust stops the app."""
    written: list[faust_orders.Greeting] = []

    async def send(value: faust_orders.Greeting) -> None:
        written.append(value)

    monkeypatch.setattr(faust_orders.greetings, "send", send)
    failed = ResponseRecord(
        status="failure", request_id="r1", failure=FailureRecord(code=404, message="no Greeter")
    )
    ok = ResponseRecord(status="success", request_id="r2", value="Hello ada")
    await body(faust_orders.greeted)(events(failed, ok))
    assert [(g.request_id, g.greeting, g.failure) for g in written] == [
        ("r1", None, "404 no Greeter"),
        ("r2", "Hello ada", None),
    ]


async def test_a_signup_kafka_did_not_take_in_time_is_called_again_under_its_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``welcome`` let ``CallTimedOut`` leave the agent: Faust acknowledged the signup, and
    a record that was never written was a greeting lost for good."""
    asked: list[tuple[Target, object, str | None]] = []

    async def call(target: Target, argument: object, idempotency_key: str | None = None) -> str:
        asked.append((target, argument, idempotency_key))
        if len(asked) == 1:
            raise CallTimedOut("not known to be written within 5s", "inv_1", "faust:derived")
        return "inv_1"

    monkeypatch.setattr(faust_orders.kourier, "call", call)
    await body(faust_orders.welcome)(events("ada"))
    greet = Target(service="Greeter", handler="greet")
    assert asked == [(greet, "ada", None), (greet, "ada", "faust:derived")]
