"""A real Faust worker (examples.faust_orders) invokes handlers of a Kourier worker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from confluent_kafka import Message, Producer

from examples import quickstart
from streams.client import Client
from streams.kafka.worker import Worker
from streams.settings import Settings
from tests.integration.conftest import WorkerProcess, WorkerProcesses, in_process_worker
from tests.kafka_helpers import create_topic, drain, values

CUSTOMERS = ["ada", "bob", "cyd", "dee", "eve"]


@pytest.fixture
async def kourier_worker(topics: Settings) -> AsyncIterator[Worker]:
    """The quickstart handlers (Counter, Greeter, ...) in this process."""
    async with in_process_worker(topics, quickstart.SERVICES, f"faust-{topics.namespace}") as w:
        yield w


@pytest.fixture
def faust_app(topics: Settings, worker_processes: WorkerProcesses) -> Callable[[], WorkerProcess]:
    """The example Faust app. It commits nothing for 600 s, so a killed one leaves every
    event unacked. Its four topics exist, with a leader on every partition, before it
    starts, as in a deployment. When the app created its output topics itself while it was
    already sending (``declare_outputs``), its producer now and then stopped sending
    altogether: a task dump showed aiokafka's sender waiting on a metadata update for a
    ``greetings`` partition without a leader, and the ingress records queued behind it."""
    for name in ("orders", "signups", "order-totals", "greetings"):
        create_topic(topics, name, partitions=4)
    datadir = str(worker_processes.log_dir / "faust")
    argv = ["-m", "examples.faust_orders", "--datadir", datadir, "worker", "-l", "info"]

    def start() -> WorkerProcess:
        return worker_processes.spawn(env={"ORDERS_COMMIT_INTERVAL": "600"}, argv=argv)

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


async def read(
    processes: WorkerProcesses,
    topic: str,
    expect: int,
    count: Callable[[list[Message]], int] = len,
) -> list[dict[str, Any]]:
    """The JSON values of ``topic``'s records, once ``expect`` of them came (as ``count``
    counts them); the Faust app's log goes with the failure if they do not."""
    settings = processes.settings
    name = f"{settings.namespace}.{topic}"
    try:
        messages = await asyncio.to_thread(
            drain, settings, name, expect=expect, timeout=90, count=count
        )
    except AssertionError as missing:
        raise AssertionError(f"{missing}\n{processes.logs()}") from None
    return values(messages)


async def test_orders_reach_objects_in_key_order_and_totals_come_back(
    topics: Settings,
    kourier_worker: Worker,
    faust_app: Callable[[], WorkerProcess],
    worker_processes: WorkerProcesses,
) -> None:
    faust_app()
    await asyncio.to_thread(produce, topics, "orders", orders(40))

    seen = await read(worker_processes, "order-totals", 40)

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
    await read(worker_processes, "order-totals", 20)
    first.kill()

    faust_app()
    after = await read(worker_processes, "order-totals", 40)

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

    # Distinct greetings: a signup Faust delivers again after a rebalance is called again,
    # and the repeat (same derived idempotency key) brings the first outcome once more.
    def distinct(messages: list[Message]) -> int:
        return len({v["greeting"] for v in values(messages)})

    greetings = {v["greeting"] for v in await read(worker_processes, "greetings", 10, distinct)}
    assert greetings == {f"Hello {n}" for n in names}, worker_processes.logs()
