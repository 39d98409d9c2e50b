"""How long a take-over's restore takes: a whole assignment's changelogs read together,
against one partition after another.

    .venv/bin/python -m tests.bench.restores [--partitions 16] [--records 50 2000]

Starts its own broker, stops it by PID, and prints one JSON document. For each count of
records it writes that many keys to every partition of the three changelogs
(``<ns>.state``, ``<ns>.invocations``, ``<ns>.dedup``, 200-byte values), then restores all
``--partitions`` partitions the way a worker's take-over does (``restore_partitions``):

- ``first_ms``: the first restore of a fresh restorer consumer, all partitions together,
  right after the consumer was created;
- ``idle_first_ms``: the first restore of a fresh restorer that stayed idle for 3 s first,
  as a worker's does while it joins its group (two of them). It knows none of the
  changelogs' leaders when it is assigned them, and ``restore_partitions`` looks them up
  first; without that, it waited for librdkafka's once-a-second scan for topics without
  leaders, which a 3 s sleep makes the worst case, close to a second;
- ``one_by_one_ms``: three rounds of one ``restore_partitions`` call per partition, one
  after another (the worker restored that way before it restored an assignment together;
  both start from offset 0 here).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from streams.kafka import broker
from streams.kafka.admin import admin_client, create_topics
from streams.kafka.offsets import worker_consumer
from streams.kafka.restore import restore_partitions
from streams.settings import Settings
from streams.wire.topics import Topics


class Counted:
    """A partition processor's restore side that counts what it is handed."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.records = 0

    def restore_state(self, key: bytes, value: bytes | None) -> None:
        self.records += 1

    def restore_invocation(self, key: bytes, value: bytes | None) -> None:
        self.records += 1

    def restore_dedup(self, key: bytes, value: bytes | None) -> None:
        self.records += 1


def _fill(settings: Settings, topics: Topics, records: int) -> None:
    producer = Producer(settings.client_config({"linger.ms": 5}))
    for partition in range(settings.partitions):
        for topic in (topics.state, topics.invocations, topics.dedup):
            for i in range(records):
                producer.produce(topic, key=b"k%d" % i, value=b"x" * 200, partition=partition)
                producer.poll(0)
    assert producer.flush(60) == 0, "records not written"


def _restore(settings: Settings, restorer: Any, admin: Any, processors: list[Counted]) -> float:
    began = time.perf_counter()
    restore_partitions(restorer, admin, Topics(settings.namespace), processors)
    return round(1000 * (time.perf_counter() - began), 1)


def _idle_first(settings: Settings, admin: Any, expected: int) -> float:
    restorer = worker_consumer(settings, f"{settings.namespace}.restore", 5)
    try:
        time.sleep(3.0)  # idle, as a worker is until its group assigns it partitions
        everything = [Counted(p) for p in range(settings.partitions)]
        took = _restore(settings, restorer, admin, everything)
        assert sum(c.records for c in everything) == expected, "records missed"
        return took
    finally:
        restorer.close()


def measure(bootstrap: str, partitions: int, records: int) -> dict[str, Any]:
    settings = Settings(
        namespace=f"restores{records}", bootstrap_servers=bootstrap, partitions=partitions
    )
    topics = Topics(settings.namespace)
    create_topics(settings)
    _fill(settings, topics, records)
    expected = 3 * partitions * records
    restorer = worker_consumer(settings, f"{settings.namespace}.restore", 5)
    admin = admin_client(settings)  # one for the worker's life, as the worker's
    try:
        everything = [Counted(p) for p in range(partitions)]
        first = _restore(settings, restorer, admin, everything)
        assert sum(c.records for c in everything) == expected, "records missed"
        together, one_by_one = [], []
        for _ in range(3):
            everything = [Counted(p) for p in range(partitions)]
            together.append(_restore(settings, restorer, admin, everything))
            assert sum(c.records for c in everything) == expected, "records missed"
            singles = [Counted(p) for p in range(partitions)]
            one_by_one.append(
                round(sum(_restore(settings, restorer, admin, [c]) for c in singles), 1)
            )
            assert sum(c.records for c in singles) == expected, "records missed"
        idle = [_idle_first(settings, admin, expected) for _ in range(2)]
    finally:
        restorer.close()
    return {
        "records_per_changelog_partition": records,
        "first_ms": first,
        "idle_first_ms": idle,
        "together_ms": together,
        "one_by_one_ms": one_by_one,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--records", type=int, nargs="+", default=[50, 2000])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kourier-restores-"))
    try:
        running = broker.start(work / "kafka", port=0)
        try:
            result = {
                "kafka": broker.kafka_version(),
                "partitions": args.partitions,
                "runs": [measure(running.bootstrap, args.partitions, n) for n in args.records],
            }
        finally:
            broker.stop(work / "kafka")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
