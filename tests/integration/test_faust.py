"""A real Faust worker (examples.faust_orders) invokes handlers of a Kourier worker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import pytest
from confluent_kafka import Producer

from examples import quickstart
from streams.client import Client
from streams.kafka.worker import Worker
from streams.settings import Settings
from tests.integration.conftest import WorkerProcess, WorkerProcesses, in_process_worker
from tests.kafka_helpers import drain

CUSTOMERS = ["ada", "bob", "cyd", "dee", "eve"]


@pytest.fixture
async def kourier_worker(topics: Settings) -> AsyncIterator[Worker]:
    """The quickstart handlers (Counter, Greeter, ...) in this process."""
    async with in_process_worker(topics, quickstart.SERVICES, f"faust-{topics.namespace}") as w:
        yield w


#: The example Faust app; it creates its own topics (orders, order-totals, signups,
#: greetings). It commits nothing for 600 s, so a killed one leaves every event unacked.
FAUST = ["-m", "examples.faust_orders", "worker", "-l", "info"]


@pytest.fixture
def faust_app(worker_processes: WorkerProcesses) -> Callable[[], WorkerProcess]:
    def start() -> WorkerProcess:
        return worker_processes.spawn(env={"ORDERS_COMMIT_INTERVAL": "600"}, argv=FAUST)

    return start


def produce(settings: Settings, topic: str, records: list[tuple[str | None, bytes]]) -> None:
    producer = Producer(settings.client_config({"enable.idempotence": True}))
    for key, value in records:
        producer.produce(f"{settings.namespace}.{topic}", value=value, key=key)
    assert producer.flush(30) == 0, f"{topic}: records not delivered"


def orders(count: int) -> list[tuple[str | None, bytes]]:
    """``count`` orders over five customers, amounts 1, 2, 3, ..."""
    return [
        (
            CUSTOMERS[i % 5],
            json.dumps({"id": f"o{i}", "customer": CUSTOMERS[i % 5], "amount": i + 1}).encode(),
        )
        for i in range(count)
    ]


async def totals(settings: Settings, expect: int) -> list[dict[str, object]]:
    messages = await asyncio.to_thread(
        drain, settings, f"{settings.namespace}.order-totals", expect=expect, timeout=90
    )
    return [json.loads(m.value() or b"") for m in messages]


async def test_orders_reach_objects_in_key_order_and_totals_come_back(
    topics: Settings,
    kourier_worker: Worker,
    faust_app: Callable[[], WorkerProcess],
    worker_processes: WorkerProcesses,
) -> None:
    faust_app()
    await asyncio.to_thread(produce, topics, "orders", orders(40))

    seen = await totals(topics, 40)

    by_customer: dict[str, list[int]] = {}
    for total in seen:
        by_customer.setdefault(str(total["customer"]), []).append(int(str(total["total"])))
    for i, customer in enumerate(CUSTOMERS):
        amounts = [n + 1 for n in range(i, 40, 5)]
        running = [sum(amounts[: j + 1]) for j in range(len(amounts))]
        # Totals in the order the orders were placed: one customer's adds ran in key order.
        assert by_customer[customer] == running, (customer, worker_processes.logs())
    async with Client(topics) as client:
        assert await client.object("Counter", "ada", "get").request() == sum(range(1, 41, 5))


async def test_a_faust_crash_before_its_commit_invokes_nothing_twice(
    topics: Settings,
    kourier_worker: Worker,
    faust_app: Callable[[], WorkerProcess],
    worker_processes: WorkerProcesses,
) -> None:
    """Faust commits nothing for 600 s here, so after SIGKILL the new Faust worker processes
    every order again; the derived idempotency keys make Kourier answer the repeats with the
    first outcomes instead of adding again."""
    first = faust_app()
    await asyncio.to_thread(produce, topics, "orders", orders(20))
    await totals(topics, 20)
    first.kill()

    faust_app()
    after = await totals(topics, 40)

    per_order: dict[str, list[object]] = {}
    for total in after:
        per_order.setdefault(str(total["order"]), []).append(total["total"])
    assert len(per_order) == 20, worker_processes.logs()
    for order, seen in per_order.items():
        # Each order once before the crash and once after, with the same total both times.
        assert seen == [seen[0], seen[0]], (order, seen, worker_processes.logs())
    async with Client(topics) as client:
        for i, customer in enumerate(CUSTOMERS):
            expected = sum(range(i + 1, 21, 5))
            assert await client.object("Counter", customer, "get").request() == expected


async def test_calls_outcomes_arrive_as_a_faust_stream(
    topics: Settings,
    kourier_worker: Worker,
    faust_app: Callable[[], WorkerProcess],
    worker_processes: WorkerProcesses,
) -> None:
    faust_app()
    names = [f"n{i}" for i in range(10)]
    await asyncio.to_thread(produce, topics, "signups", [(None, n.encode()) for n in names])

    messages = await asyncio.to_thread(
        drain, topics, f"{topics.namespace}.greetings", expect=10, timeout=90
    )

    greetings = sorted(json.loads(m.value() or b"")["greeting"] for m in messages)
    assert greetings == sorted(f"Hello {n}" for n in names), worker_processes.logs()
