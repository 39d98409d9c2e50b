"""A Faust application that hands its work to Kourier handlers (``examples.quickstart``).

- ``place``: every order on ``<ns>.orders`` (keyed by customer) adds its amount to the
  ``Counter`` object of that customer and waits for the new total, which it writes to
  ``<ns>.order-totals``. A customer's orders are added in the order they were placed.
- ``welcome``: every name on ``<ns>.signups`` is greeted by the ``Greeter`` service
  without waiting; ``greeted`` reads the greetings from Kourier's outcomes, as a stream,
  and writes them to ``<ns>.greetings``.

Run it next to a Kourier worker (``kourier worker examples.quickstart``)::

    python -m examples.faust_orders worker -l info

Settings: ``KOURIER_BOOTSTRAP_SERVERS``, ``KOURIER_NAMESPACE`` and the ``KOURIER_KAFKA_*``
security properties as for every Kourier process; ``ORDERS_COMMIT_INTERVAL`` (seconds,
default 2.8) is how often Faust commits the offsets of events it has processed.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import faust

from streams import Settings, Target
from streams.faust import CallTimedOut, Kourier, ResponseRecord, broker_credentials

settings = Settings.from_env()
app = faust.App(
    f"{settings.namespace}-orders",
    broker=[f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
    # SASL and TLS from the same KOURIER_KAFKA_* variables as Kourier's own clients.
    broker_credentials=broker_credentials(settings),
    web_enabled=False,
    store="memory://",
    consumer_auto_offset_reset="earliest",
    topic_partitions=4,
    # A worker that dies without leaving its group hands its partitions over after 10 s.
    broker_session_timeout=10.0,
    broker_commit_interval=float(os.environ.get("ORDERS_COMMIT_INTERVAL", "2.8")),
)
kourier = Kourier(app, settings)
T = TypeVar("T")


class Order(faust.Record, serializer="json", include_metadata=False):
    id: str
    customer: str
    amount: int


class Total(faust.Record, serializer="json", include_metadata=False):
    order: str
    customer: str
    total: int


class Greeting(faust.Record, serializer="json", include_metadata=False):
    """A greeting, or why there is none (a worker that does not host ``Greeter``: 404)."""

    request_id: str
    greeting: str | None = None
    failure: str | None = None


# The app owns these topics (internal=True): Faust creates them, with 4 partitions, when
# missing. Kourier's own topics are created by `kourier worker`.
orders = app.topic(f"{settings.namespace}.orders", value_type=Order, internal=True)
totals = app.topic(f"{settings.namespace}.order-totals", value_type=Total, internal=True)
signups = app.topic(
    f"{settings.namespace}.signups", value_type=str, value_serializer="raw", internal=True
)
greetings = app.topic(f"{settings.namespace}.greetings", value_type=Greeting, internal=True)


async def declare_outputs() -> None:
    """Faust creates the topics agents read; these two are only written to. In a deployment,
    create them before the app starts: aiokafka's producer has stalled when a topic it sends
    to was created moments before (see the README's Faust section)."""
    for topic in (totals, greetings):
        await topic.maybe_declare()


app.task(declare_outputs)


async def until_written(ask: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``ask(*args, idempotency_key=...)``, again while Kafka has not taken it within the bound
    (``CallTimedOut``): leaving the agent would acknowledge the event, and the call would
    be lost if it was not written. The first key is derived from the event; the next ones
    are the same, so the call is made once, however often it is asked."""
    key = None
    while True:
        try:
            return await ask(*args, idempotency_key=key)
        except CallTimedOut as slow:
            key = slow.idempotency_key  # the same call: its outcome, or it runs now


@app.agent(orders)
async def place(stream: faust.StreamT[Order]) -> None:
    async for order in stream:
        counter = Target(service="Counter", key=order.customer, handler="add")
        total = await until_written(kourier.request, counter, order.amount)
        await totals.send(
            key=order.customer.encode(),
            value=Total(order=order.id, customer=order.customer, total=total),
        )


@app.agent(signups)
async def welcome(stream: faust.StreamT[str]) -> None:
    greet = Target(service="Greeter", handler="greet")
    async for name in stream:
        await until_written(kourier.call, greet, name)


@app.agent(kourier.outcomes)
async def greeted(stream: faust.StreamT[ResponseRecord]) -> None:
    async for outcome in stream:
        if outcome.failure is None:
            greeting = Greeting(request_id=outcome.request_id, greeting=outcome.value)
        else:  # raised (outcome.result()), it would end the agent, and a burst the app
            failure = f"{outcome.failure.code} {outcome.failure.message}"
            greeting = Greeting(request_id=outcome.request_id, failure=failure)
        await greetings.send(value=greeting)


if __name__ == "__main__":
    app.main()
