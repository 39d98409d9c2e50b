"""Small helpers for tests that talk to the real broker."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Message
from confluent_kafka.cimpl import NewTopic

from streams.kafka import broker
from streams.kafka.admin import admin_client
from streams.settings import Settings


def create_topic(settings: Settings, suffix: str, partitions: int = 1) -> str:
    """Create ``<namespace>.<suffix>`` and wait until every partition has a leader."""
    name = f"{settings.namespace}.{suffix}"
    admin = admin_client(settings)  # must outlive the future
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)
    deadline = time.monotonic() + 30
    while True:
        found = admin.list_topics(name, timeout=10).topics[name].partitions
        if len(found) == partitions and all(p.leader >= 0 for p in found.values()):
            return name
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: partitions without a leader after 30s: {found}")
        time.sleep(0.05)


def drain(
    settings: Settings,
    topic: str,
    *,
    expect: int,
    isolation: str = "read_committed",
    timeout: float = 20.0,
    settle: float = 0.5,
    count: Callable[[list[Message]], int] = len,
) -> list[Message]:
    """Read ``topic`` from the start until ``expect`` records arrived (as ``count`` counts
    them: by default every record), then ``settle`` seconds more to catch any extra record;
    fail with a clear message if fewer arrive in ``timeout``."""
    consumer = Consumer(
        settings.client_config(
            {
                "group.id": f"drain-{uuid.uuid4()}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": isolation,
            }
        )
    )
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and count(messages) < expect:
            for message in consumer.consume(num_messages=500, timeout=0.5):
                if message.error() is None:
                    messages.append(message)
        if count(messages) < expect:
            raise AssertionError(
                f"{topic}: {count(messages)} of {expect} records within {timeout:.0f}s "
                f"({isolation}; {len(messages)} read)"
            )
        extra_until = time.monotonic() + settle
        while time.monotonic() < extra_until:
            messages.extend(
                m for m in consumer.consume(num_messages=500, timeout=0.1) if m.error() is None
            )
    finally:
        consumer.close()
    return messages


def values(messages: list[Message]) -> list[dict[str, Any]]:
    """The JSON objects that ``messages`` hold."""
    return [json.loads(m.value() or b"") for m in messages]


async def transactions_tool(bootstrap: str, *args: str) -> str:
    """The output of Kafka's TransactionsCommand (what ``kafka-transactions.sh`` runs) with
    ``args``, from the jars ``kourier broker jars`` names; it must succeed."""
    java = shutil.which("java")
    assert java is not None, "java is needed to run Kafka's tools"
    libs = await asyncio.to_thread(broker.resolve_jars)
    tool = await asyncio.create_subprocess_exec(
        java, "-cp", f"{libs}/*", "org.apache.kafka.tools.TransactionsCommand",
        "--bootstrap-server", bootstrap, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(tool.communicate(), 120)
    finally:
        if tool.returncode is None:
            tool.kill()
            await tool.wait()
    assert tool.returncode == 0, output.decode()
    return output.decode()


async def abort(bootstrap: str, topic: str, partition: int, start_offset: int) -> None:
    """End the transaction open at ``start_offset`` (``kafka-transactions.sh abort``)."""
    await transactions_tool(bootstrap, "abort", "--topic", topic, "--partition",
                            str(partition), "--start-offset", str(start_offset))  # fmt: skip


async def open_transaction_starts(bootstrap: str, topic: str, partition: int) -> list[int]:
    """Where the transactions open on a partition start (``describe-producers``)."""
    output = await transactions_tool(
        bootstrap, "describe-producers", "--topic", topic, "--partition", str(partition)
    )
    rows = [[cell.strip() for cell in line.split("\t")] for line in output.splitlines()]
    header = next(row for row in rows if "CurrentTransactionStartOffset" in row)
    column = header.index("CurrentTransactionStartOffset")
    starts = [row[column] for row in rows[rows.index(header) + 1 :] if len(row) > column]
    return [int(start) for start in starts if start.lstrip("-").isdigit() and int(start) >= 0]


#: What a broker logs when its transaction coordinator completes a transaction without
#: writing its markers, taking its partitions for deleted (KAFKA-20734; README, Limits).
MARKERS_SKIPPED = re.compile(
    r"Couldn't find leader endpoint for partitions Set\((?P<partitions>[^)]*)\) while trying"
    r" to send transaction markers for (?P<transactional_id>[^\s,]+)"
)


async def end_transactions_left_hanging(bootstrap: str, server_log: Path) -> list[str]:
    """The documented remedy for Kafka's defect (README, Hanging transactions): abort the
    transactions the broker's log says it left without markers, on every partition it
    names, so that the whole transaction is dropped alike. What was aborted."""
    ended = []
    text = await asyncio.to_thread(server_log.read_text, errors="replace")
    for skipped in MARKERS_SKIPPED.finditer(text):
        for name in skipped["partitions"].split(", "):
            topic, _, partition = name.rpartition("-")
            for start in await open_transaction_starts(bootstrap, topic, int(partition)):
                await abort(bootstrap, topic, int(partition), start)
                ended.append(f"{name}@{start} ({skipped['transactional_id']})")
    return ended
