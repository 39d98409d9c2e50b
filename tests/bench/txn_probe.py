"""One Kafka transaction in a worker's shape, step by step and request by request.

    .venv/bin/python -m tests.bench.txn_probe [--transactions 2000] [--offsets 16]

Starts its own broker, stops it by PID, and prints one JSON document. Each round produces
one record to partition 0 of an input topic, consumes it, and runs the transaction a worker
runs for it: ``begin_transaction``, ``produce`` of one response record,
``send_offsets_to_transaction`` (``--offsets`` partitions of the input topic, with the
consumer's group metadata) and ``commit_transaction``. Nothing else uses the broker, and
no Python runs beside it, so this is the floor of a worker's transaction on the machine.
(The consumer is assigned, not subscribed: its metadata names no generation, so the group
coordinator has none to check.)

It runs twice, each time after 500 unmeasured rounds for the broker's JIT, and reports:

- ``steps_ms``, from the first run: the time spent in each of the three calls, and in the
  whole transaction;
- ``round_trips_ms``, from the second run, with librdkafka's ``debug=protocol`` log (which
  costs the process time of its own, so the first run goes without it): each request's
  round trip, and how many of each one transaction sends.

The offsets call sends ``AddOffsetsToTxn`` to the transaction coordinator, then
``TxnOffsetCommit`` to the group coordinator. The first ``produce`` of a transaction starts
a 1 ms timer in librdkafka; when it fires, ``AddPartitionsToTxn`` registers the partition
and the record follows in a ``Produce``. The commit waits for that record, then sends
``EndTxn``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streams.kafka import broker

_WARMUP = 500
_RTT = re.compile(r"Received (\w+)Response \(v\d+, \d+ bytes, CorrId \d+, rtt ([\d.]+)ms\)")


class _RoundTrips(logging.Handler):
    """Collects librdkafka's logged round trips per request type while ``measuring``."""

    def __init__(self) -> None:
        super().__init__()
        self.measuring = False
        self.seen: dict[str, list[float]] = defaultdict(list)

    def emit(self, record: logging.LogRecord) -> None:
        found = _RTT.search(record.getMessage())
        if found and self.measuring:
            self.seen[found.group(1)].append(float(found.group(2)))


def _median_ms(values: list[float]) -> float:
    return round(1000 * statistics.median(values), 2)


def probe(
    bootstrap: str, transactions: int, offsets: int, offsets_first: bool = False
) -> dict[str, Any]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics(
        [NewTopic("probe.in", max(offsets, 1), 1), NewTopic("probe.out", 1, 1)]
    ).values():
        future.result()
    steps = _rounds(bootstrap, transactions, offsets, None, offsets_first=offsets_first)
    trips = _RoundTrips()
    logger = logging.getLogger("txn_probe.librdkafka")
    logger.addHandler(trips)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    _rounds(bootstrap, transactions, offsets, trips, {"debug": "protocol", "logger": logger})
    return {
        "steps_ms": {name: _median_ms(values) for name, values in steps.items()},
        "round_trips_ms": {
            name: {
                "per_transaction": round(len(values) / transactions, 2),
                "p50": round(statistics.median(values), 2),
            }
            for name, values in sorted(trips.seen.items())
        },
    }


def _rounds(
    bootstrap: str,
    transactions: int,
    offsets: int,
    trips: _RoundTrips | None,
    logging_config: dict[str, Any] | None = None,
    offsets_first: bool = False,
) -> dict[str, list[float]]:
    """One run: the warm-up rounds, then ``transactions`` measured ones; the step times."""
    producer = Producer({
        "bootstrap.servers": bootstrap, "transactional.id": f"probe-{uuid.uuid4().hex}",
        "linger.ms": 0, "retry.backoff.ms": 1, "retry.backoff.max.ms": 20,
        **(logging_config or {}),
    })  # fmt: skip
    source = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex}",
        "enable.auto.commit": False, "isolation.level": "read_committed",
        "fetch.wait.max.ms": 500,
    })  # fmt: skip
    _, high = consumer.get_watermark_offsets(TopicPartition("probe.in", 0), 10)
    consumer.assign([TopicPartition("probe.in", 0, high)])
    producer.init_transactions(30)
    steps: dict[str, list[float]] = defaultdict(list)
    deadline = time.monotonic() + 600
    try:
        for i in range(_WARMUP + transactions):
            if trips is not None:
                trips.measuring = i >= _WARMUP
            source.produce("probe.in", b"x", partition=0)
            source.flush(10)
            message = None
            while message is None or message.error() is not None:
                if time.monotonic() > deadline:
                    raise RuntimeError("the probe did not finish within 10 minutes")
                message = consumer.poll(1.0)
            positions = [TopicPartition("probe.in", 0, (message.offset() or 0) + 1)]
            positions += [TopicPartition("probe.in", p, 0) for p in range(1, offsets)]
            metadata = consumer.consumer_group_metadata()
            began = time.perf_counter()
            producer.begin_transaction()
            if offsets_first and i % 2:
                producer.send_offsets_to_transaction(positions, metadata)
                sent = time.perf_counter()
                producer.produce("probe.out", b"y", partition=0)
                producer.commit_transaction(30)
                if i >= _WARMUP:
                    steps["offsets_first.send_offsets"].append(sent - began)
                    steps["offsets_first.commit"].append(time.perf_counter() - sent)
                    steps["offsets_first.transaction"].append(time.perf_counter() - began)
                continue
            producer.produce("probe.out", b"y", partition=0)
            produced = time.perf_counter()
            producer.send_offsets_to_transaction(positions, metadata)
            sent = time.perf_counter()
            producer.commit_transaction(30)
            if i >= _WARMUP:
                steps["begin_and_produce"].append(produced - began)
                steps["send_offsets"].append(sent - produced)
                steps["commit"].append(time.perf_counter() - sent)
                steps["transaction"].append(time.perf_counter() - began)
    finally:
        consumer.close()
    return steps


def run(transactions: int, offsets: int, offsets_first: bool = False) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="kourier-txn-probe-"))
    try:
        running = broker.start(work / "kafka", port=0)
        try:
            return {
                "kafka": broker.kafka_version(),
                "transactions": transactions,
                "offsets_partitions": offsets,
                **probe(running.bootstrap, transactions, offsets, offsets_first),
            }
        finally:
            broker.stop(work / "kafka")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument("--offsets", type=int, default=16, help="input partitions in offsets")
    parser.add_argument("--offsets-first", action="store_true",
                        help="every other round sends the offsets before producing")  # fmt: skip
    args = parser.parse_args()
    print(json.dumps(run(args.transactions, args.offsets, args.offsets_first), indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
