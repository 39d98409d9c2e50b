"""Bounded waiting for integration tests, and reading what their handlers left behind."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import Consumer, TopicPartition

from streams.settings import Settings
from streams.wire.topics import Topics

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]


def kourier_process(settings: Settings, *args: str, log: Path) -> subprocess.Popen[bytes]:
    """``kourier *args`` as its own process, on ``settings``' broker and namespace, its
    output in ``log`` (stop it with ``tests.processes.stop_process``)."""
    env = dict(os.environ, KOURIER_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
               KOURIER_NAMESPACE=settings.namespace, PYTHONPATH=str(ROOT))  # fmt: skip
    env.pop("KOURIER_PARTITIONS", None)
    return subprocess.Popen([sys.executable, "-m", "streams.cli", *args], cwd=ROOT, env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)  # fmt: skip


async def poll_until(
    fetch: Callable[[], Awaitable[T]], expected: T, seconds: float, what: str
) -> T:
    """Call ``fetch()`` until it returns ``expected``; fail with the last value seen after
    ``seconds``. For outcomes that arrive eventually by design (one-way sends)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    last: T | None = None
    while loop.time() < deadline:
        last = await fetch()
        if last == expected:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: expected {expected!r}, last saw {last!r} after {seconds}s")


async def invocation_status(
    http: Any, admin_url: str, invocation_id: str, expected: str, seconds: float = 30
) -> dict[str, Any]:
    """The admin API's description of ``invocation_id`` once its status is ``expected``
    (the admin index follows the changelog, so it may lag a commit behind)."""

    async def status() -> str | None:
        async with http.get(f"{admin_url}/invocations/{invocation_id}") as reply:
            found[0] = await reply.json() if reply.status == 200 else {}
            return str(found[0].get("status")) if found[0] else None

    found: list[dict[str, Any]] = [{}]
    await poll_until(status, expected, seconds, f"status of {invocation_id}")
    return found[0]


def effect_runs(path: Path) -> dict[str, list[int]]:
    """The ``effect_then_add`` effects in ``path``: each tag, and the process ids that ran
    it, in order (a tag ran more than once when it has more than one)."""
    runs: dict[str, list[int]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            tag, pid = line.split()
            runs.setdefault(tag, []).append(int(pid))
    return runs


def delay_watermarks(settings: Settings) -> dict[int, tuple[int, int]]:
    """(low, high) watermarks of every delay partition that has held records."""
    return held_watermarks(settings, Topics(settings.namespace).delay)


def held_watermarks(settings: Settings, topic: str) -> dict[int, tuple[int, int]]:
    """(low, high) watermarks of every partition of ``topic`` (one of the namespace's,
    ``settings.partitions`` of them) that has held records."""
    consumer = Consumer(settings.client_config({"group.id": f"{settings.namespace}.marks"}))
    try:
        found = {}
        for partition in range(settings.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 10)
            if high > 0:
                found[partition] = (low, high)
        return found
    finally:
        consumer.close()


def partition_report(settings: Settings) -> str:
    """Per partition of the ingress and responses topics: the low and high watermarks, the
    last stable offset (where ``read_committed`` readers wait for an open transaction) and
    the workers' committed offset; for a failure message, when calls go unanswered."""
    topics = Topics(settings.namespace)
    group = f"{settings.namespace}.workers"
    plain = Consumer(settings.client_config({"group.id": group}))
    committed = Consumer(
        settings.client_config({"group.id": group, "isolation.level": "read_committed"})
    )
    lines = []
    try:
        for topic in (topics.ingress, topics.responses):
            wanted = [TopicPartition(topic, p) for p in range(settings.partitions)]
            offsets = {tp.partition: tp.offset for tp in plain.committed(wanted, 10)}
            for tp in wanted:
                low, high = plain.get_watermark_offsets(tp, 10)
                _, stable = committed.get_watermark_offsets(tp, 10)
                lines.append(
                    f"{topic}[{tp.partition}]: low {low}, high {high}, last stable {stable}, "
                    f"workers' committed {offsets[tp.partition]}"
                )
    except Exception as exc:  # a report for a failure message: never the failure itself
        lines.append(f"(partition report failed: {exc!r})")
    finally:
        plain.close()
        committed.close()
    return "\n".join(lines)
