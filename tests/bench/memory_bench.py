"""Worker memory with many scheduled invocations and many retained idempotent outcomes.

    .venv/bin/python -m tests.bench.memory_bench [--invocations 100000]

Starts its own broker and one worker process (``tests.bench.apps``), stops both by PID,
and prints one JSON document:

- ``warm``: the worker's RSS after 1,000 idempotent sends (imports, buffers, JIT-free
  Python warmed up).
- ``scheduled``: ``--invocations`` delayed ``Meter/add`` sends due in two hours, produced
  straight onto the ingress topic, then one plain send per key; once those have counted
  (so every delayed send before them is scheduled), the worker's RSS, and the growth per
  scheduled invocation over ``warm``.
- ``retained``: ``--invocations`` one-way ``Meter/add`` sends, each with its own
  idempotency key; once every one has counted, the worker's RSS, and the growth per
  retained outcome over ``scheduled``.
- ``repeated``: the same records produced again, then one plain send per key: only those
  may count (every repeat is answered from its retained outcome), and the RSS after.
- ``restarted``: the worker stopped and a new one started, which reads every partition's
  changelogs back: the seconds its restore took (its log line), the seconds until every
  key answered again, its peak RSS (``VmHWM``) and its RSS once answering.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from streams.client import Client
from streams.kafka import broker
from streams.settings import Settings
from streams.wire.partitioning import partition_for
from streams.wire.records import Invoke, Target, encode
from tests.bench.bench import KEYS, local_kafka, rss_mib, spawn
from tests.processes import stop_process


def produce(settings: Settings, records: Iterator[tuple[str, Invoke]]) -> None:
    """Produce ``(key, record)`` pairs onto the ingress topic, each to its key's partition."""
    producer = Producer(settings.client_config({"linger.ms": 5, "batch.num.messages": 10000}))
    topic = f"{settings.namespace}.ingress"
    for key, record in records:
        while True:
            try:
                producer.produce(topic, encode(record), key.encode(),
                                 partition=partition_for(key, settings.partitions))  # fmt: skip
                break
            except BufferError:
                producer.poll(0.01)
    if producer.flush(60):
        raise RuntimeError("records left undelivered after 60 s")


def meter_add(key: str, **fields: Any) -> tuple[str, Invoke]:
    """A one-way ``Meter/add(1)`` to ``key``, with ``fields`` of the record, and its key."""
    target = Target(service="Meter", key=key, handler="add")
    return key, Invoke(target=target, argument=1, mode="send", **fields)


def produce_delayed(settings: Settings, total: int, due: datetime) -> None:
    """``total`` one-way ``Meter/add`` sends due at ``due``, spread over the keys."""
    produce(settings, (meter_add(KEYS[n % len(KEYS)], due=due) for n in range(total)))


def produce_idempotent(settings: Settings, first: int, total: int) -> None:
    """Sends ``first`` .. ``first + total - 1``, each with idempotency key ``idem-<n>``."""
    numbers = range(first, first + total)
    keyed = (meter_add(KEYS[n % len(KEYS)], idempotency_key=f"idem-{n}") for n in numbers)
    produce(settings, keyed)


async def total_count(client: Client) -> int:
    counts = await asyncio.gather(*(client.object("Meter", k, "count").request() for k in KEYS))
    return sum(counts)


async def wait_total(client: Client, expected: int, seconds: float) -> float:
    deadline = time.monotonic() + seconds
    seen = -1
    while time.monotonic() < deadline:
        seen = await total_count(client)
        if seen == expected:
            return time.monotonic()
        if seen > expected:
            raise RuntimeError(f"counted {seen}, more than the {expected} sends")
        await asyncio.sleep(1)
    raise RuntimeError(f"counted {seen} of {expected} within {seconds} s")


def produce_markers(settings: Settings) -> None:
    """One plain ``Meter/add`` per key: once each has counted, everything produced to that
    key before it has been processed (one key's invocations run in order)."""
    produce(settings, (meter_add(key) for key in KEYS))


async def run(invocations: int) -> dict[str, Any]:
    with local_kafka("kourier-memory-bench-", "mbench") as (work, settings, env):
        worker = spawn(["worker", "tests.bench.apps"], env, work / "worker.log")
        try:
            results: dict[str, Any] = {"cpus": os.cpu_count(), "kafka": broker.kafka_version()}
            warm = 1000
            async with Client(settings) as client:
                await asyncio.to_thread(produce_idempotent, settings, 0, warm)
                await wait_total(client, warm, 120)
                results["warm"] = {"sends": warm, "worker_rss_mib": round(rss_mib(worker.pid), 1)}
                say(results)

                began = time.monotonic()
                due = datetime.now(UTC) + timedelta(hours=2)
                await asyncio.to_thread(produce_delayed, settings, invocations, due)
                await asyncio.to_thread(produce_markers, settings)
                counted = warm + len(KEYS)  # the delayed sends count nothing for two hours
                done = await wait_total(client, counted, 1800)
                grew(results, "scheduled", "warm", worker.pid, invocations, done - began)

                began = time.monotonic()
                await asyncio.to_thread(produce_idempotent, settings, warm, invocations)
                done = await wait_total(client, counted + invocations, 1800)
                grew(results, "retained", "scheduled", worker.pid, invocations, done - began)

                began = time.monotonic()
                await asyncio.to_thread(produce_idempotent, settings, warm, invocations)
                await asyncio.to_thread(produce_markers, settings)
                expected = counted + invocations + len(KEYS)  # the repeats count nothing
                await wait_total(client, expected, 1800)
                total = await total_count(client)
                if total != expected:
                    raise RuntimeError(f"counted {total} after the repeats, not {expected}")
                results["repeated"] = {
                    "invocations": invocations,
                    "seconds": round(time.monotonic() - began, 1),
                    "total_count_after": total,
                    "expected_count": expected,
                    "worker_rss_mib": round(rss_mib(worker.pid), 1),
                }
                say(results)

                stop_process(worker)
                began = time.monotonic()
                log = work / "restarted.log"
                worker = spawn(["worker", "tests.bench.apps"], env, log)
                await wait_total(client, expected, 1800)
                results["restarted"] = {
                    "invocations_held": 2 * invocations + warm,
                    "restore_seconds": restore_seconds(log),
                    "answering_after_s": round(time.monotonic() - began, 1),
                    "worker_peak_rss_mib": round(rss_mib(worker.pid, "VmHWM"), 1),
                    "worker_rss_mib": round(rss_mib(worker.pid), 1),
                }
                say(results)
            return results
        finally:
            stop_process(worker)


def restore_seconds(log: Path) -> float | None:
    """The seconds of the worker's last take-over, from its ``restored in`` log line."""
    found = re.findall(r"\(restored in ([0-9.]+)s\)", log.read_text(errors="replace"))
    return float(found[-1]) if found else None


def grew(
    results: dict[str, Any], phase: str, since: str, pid: int, invocations: int, seconds: float
) -> None:
    """Record ``phase``: the worker's RSS now, and its growth per invocation over the RSS
    after phase ``since``."""
    rss = rss_mib(pid)
    growth = (rss - results[since]["worker_rss_mib"]) * 1024 * 1024 / invocations
    results[phase] = {
        "invocations": invocations,
        "seconds": round(seconds, 1),
        "worker_rss_mib": round(rss, 1),
        "bytes_per_invocation": round(growth),
    }
    say(results)


def say(results: dict[str, Any]) -> None:
    name = list(results)[-1]
    print(f"memory-bench: {name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invocations", type=int, default=100_000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.invocations)), indent=2))


if __name__ == "__main__":
    main()
