"""Exactly-once keyed counting on a real local broker: (a) faust-streaming exactly_once with a
Table, (b) confluent-kafka consumer + transactional producer (KIP-447) with a dict mirrored to a
compacted changelog (retry.backoff.ms 5 and default 100), (c) raw consume->produce, no txns.

Run:  /tmp/venv/bin/python tests/bench/engine_prototype.py  (own broker in a temp dir; one JSON)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streams.kafka import broker

N, KEYS, PARTITIONS = 20_000, 100, 4
TXN_RECORDS, TXN_SECONDS = 100, 0.020
PHASE_TIMEOUT = 75.0  # seconds for one pipeline to make all N outputs visible
FAUST_COMMIT_INTERVAL = 0.1  # seconds (faust's default broker_commit_interval is 2.8)
FAUST_SETTLE = 2.0  # seconds between the last visible output and reading faust's changelog

Result = dict[str, Any]
Record = tuple[float, bytes, bytes]  # (arrival time, key, value)


def key_of(i: int) -> bytes:
    return b"k%03d" % (i % KEYS)


def create_topics(bootstrap: str, names: list[str], compacted: set[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    compact = {"cleanup.policy": "compact"}
    topics = [NewTopic(n, PARTITIONS, 1, config=compact if n in compacted else {}) for n in names]
    for future in admin.create_topics(topics).values():
        future.result(timeout=30)


def produce_input(bootstrap: str, topic: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(N):
        producer.produce(topic, key=key_of(i), value=b"%d" % i)
        producer.poll(0)
    if producer.flush(30) != 0:
        raise TimeoutError(f"input: records still unsent to {topic} after 30s")


def read_topic(bootstrap: str, topic: str, deadline: float, expect: int | None = None,
               ready: threading.Event | None = None, isolation: str = "read_committed",
               idle: float = 2.0) -> list[Record]:  # fmt: skip
    """Read ``topic`` from the start until ``expect`` records arrived (then 1 s more for
    extras) or, with ``expect=None``, until ``idle`` seconds pass without a record."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4()}",
        "enable.auto.commit": False, "isolation.level": isolation,
    })  # fmt: skip
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    if ready is not None:
        ready.set()
    records, last_seen = list[Record](), time.monotonic()
    try:
        while time.monotonic() < deadline:
            if expect is not None and len(records) >= expect:
                deadline = min(deadline, time.monotonic() + 1.0)
            elif expect is None and time.monotonic() - last_seen > idle:
                break
            for m in consumer.consume(num_messages=1000, timeout=0.1):
                if m.error() is None:
                    records.append((time.monotonic(), m.key() or b"", m.value() or b""))
                    last_seen = records[-1][0]
    finally:
        consumer.close()
    return records


def read_changelog(bootstrap: str, topic: str, isolation: str = "read_committed") -> Result:
    log = read_topic(bootstrap, topic, time.monotonic() + 20, isolation=isolation)
    latest = {key: int(json.loads(value)) for _, key, value in log}
    return {"records": len(log), "sum": sum(latest.values())}


def committed_total(bootstrap: str, group: str, topic: str) -> int:
    """Sum of the group's committed offsets on ``topic`` (== N once everything committed)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(tps, timeout=10))
    finally:
        consumer.close()


def evaluate(t0: float, sink: list[Record], state_sum: int | None, changelog_sum: int | None,
             offsets: int) -> Result:  # fmt: skip
    """Throughput from the first to the last visible output, and the exactness checks."""
    per_key: dict[bytes, list[int]] = defaultdict(list)
    for _, key, value in sink:
        per_key[key].append(int(value))
    expected = Counter(key_of(i) for i in range(N))
    sequences = all(sorted(per_key[k]) == list(range(1, c + 1)) for k, c in expected.items())
    checks = [len(sink) == N, state_sum == N, sequences, offsets == N]
    if changelog_sum is not None:
        checks.append(changelog_sum == N)
    seen = min(N, len(sink))
    first, last = (sink[0][0], sink[seen - 1][0]) if sink else (t0, t0)
    return {
        "records_per_s": round((seen - 1) / (last - first)) if seen > 1 else None,
        "first_output_after_s": round(first - t0, 3), "end_to_end_s": round(last - t0, 3),
        "sink_records_read_committed": len(sink), "state_sum": state_sum,
        "changelog_sum": changelog_sum, "offsets_committed": offsets,
        "per_key_sequences_1_to_n": sequences, "exact": all(checks),
    }  # fmt: skip


def confluent_pipeline(bootstrap: str, source: str, sink: str, group: str,
                       changelog: str | None, producer_config: dict[str, Any],
                       deadline: float) -> int:  # fmt: skip
    """Consume ``source``, count per key, produce to ``sink`` (and ``changelog``); with a
    ``transactional.id`` in ``producer_config`` commit every TXN_RECORDS or TXN_SECONDS."""
    transactional = "transactional.id" in producer_config
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
        "enable.auto.commit": not transactional, "isolation.level": "read_committed",
    })  # fmt: skip
    producer = Producer({"bootstrap.servers": bootstrap, **producer_config})
    state: dict[bytes, int] = defaultdict(int)
    processed, pending, txn_start, offsets = 0, 0, 0.0, dict[int, int]()  # offsets by partition
    try:
        if transactional:
            producer.init_transactions(30)
        consumer.subscribe([source])
        while processed < N:
            if time.monotonic() > deadline:
                raise TimeoutError(f"processed {processed} of {N} within {PHASE_TIMEOUT:.0f}s")
            for m in consumer.consume(num_messages=TXN_RECORDS, timeout=0.005):
                if m.error() is not None:
                    raise KafkaException(m.error())
                if transactional and pending == 0:
                    producer.begin_transaction()
                    txn_start = time.monotonic()
                key, partition, offset = m.key() or b"", m.partition() or 0, m.offset() or 0
                state[key] += 1
                value = b"%d" % state[key]
                if changelog is not None:  # co-partitioned with the source record
                    producer.produce(changelog, key=key, value=value, partition=partition)
                producer.produce(sink, key=key, value=value)
                offsets[partition] = offset + 1
                processed, pending = processed + 1, pending + 1
            producer.poll(0)
            if transactional and pending and (
                pending >= TXN_RECORDS or time.monotonic() - txn_start >= TXN_SECONDS
                or processed >= N
            ):  # fmt: skip
                tps = [TopicPartition(source, p, o) for p, o in offsets.items()]
                producer.send_offsets_to_transaction(tps, consumer.consumer_group_metadata(), 10)
                producer.commit_transaction(10)
                pending = 0
        if producer.flush(30) != 0:
            raise TimeoutError("records still unsent after 30s")
        if not transactional:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return sum(state.values())


def confluent_phase(bootstrap: str, source: str, sink: str, changelog: str | None,
                    producer_config: dict[str, Any]) -> Result:  # fmt: skip
    group = f"proto-{uuid.uuid4().hex[:8]}"
    if "transactional.id" in producer_config:
        producer_config = {**producer_config, "transactional.id": group}
    result: Result = {"producer_config": producer_config, "error": None}
    try:
        ready, records, t0 = threading.Event(), list[Record](), time.monotonic()
        watch = (bootstrap, sink, t0 + PHASE_TIMEOUT + 2, N, ready)
        watcher = threading.Thread(target=lambda: records.extend(read_topic(*watch)), daemon=True)
        watcher.start()
        ready.wait(10)
        args = (bootstrap, source, sink, group, changelog, producer_config)
        state_sum = confluent_pipeline(*args, t0 + PHASE_TIMEOUT)
        watcher.join(PHASE_TIMEOUT + 10)
        logged = read_changelog(bootstrap, changelog)["sum"] if changelog else None
        offsets = committed_total(bootstrap, group, source)
        return {**result, **evaluate(t0, records, state_sum, logged, offsets)}
    except Exception as exc:
        return {**result, "exact": False, "error": f"{type(exc).__name__}: {exc}"}


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines[f"{record.levelname} {record.name}: {record.getMessage()}"[:300]] += 1


async def faust_phase(bootstrap: str, source: str, sink: str, workdir: Path) -> Result:
    import faust

    app_id = f"proto-faust-{uuid.uuid4().hex[:8]}"
    changelog = f"{app_id}-counts-changelog"
    collect = _Collect()
    logging.getLogger().addHandler(collect)
    app = faust.App(
        app_id, broker=f"kafka://{bootstrap}", store="memory://", topic_partitions=PARTITIONS,
        processing_guarantee="exactly_once", web_enabled=False, autodiscover=False,
        datadir=str(workdir / app_id), topic_replication_factor=1,
        consumer_auto_offset_reset="earliest", broker_commit_interval=FAUST_COMMIT_INTERVAL,
    )  # fmt: skip
    app.in_worker = True  # app.in_transaction (exactly-once) requires a worker context
    counts = app.Table("counts", default=int, partitions=PARTITIONS)
    src = app.topic(source, key_serializer="raw", value_serializer="raw")
    out = app.topic(sink, key_serializer="raw", value_serializer="raw")

    @app.agent(src)
    async def count(stream: Any) -> None:
        async for key, _ in stream.items():
            counts[key.decode()] += 1
            await out.send(key=key, value=b"%d" % counts[key.decode()])

    result: Result = {"app_id": app_id, "commit_interval_s": FAUST_COMMIT_INTERVAL, "error": None}
    ready, t0 = threading.Event(), time.monotonic()
    watch = asyncio.create_task(
        asyncio.to_thread(read_topic, bootstrap, sink, t0 + PHASE_TIMEOUT, N, ready))  # fmt: skip
    await asyncio.to_thread(ready.wait, 10)
    state_sum: int | None = None
    try:
        await asyncio.wait_for(app.start(), 60)
        records = await watch
        state_sum = sum(counts.values())
        await asyncio.sleep(FAUST_SETTLE)  # let the buffered changelog writes catch up
        result["changelog_while_running"] = await asyncio.to_thread(
            read_changelog, bootstrap, changelog)  # fmt: skip
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        records = await watch
    finally:
        try:
            await asyncio.wait_for(app.stop(), 30)
        except Exception as exc:
            result["stop_error"] = f"{type(exc).__name__}: {exc}"
        logging.getLogger().removeHandler(collect)
    result["changelog_after_stop"] = after = await asyncio.to_thread(
        read_changelog, bootstrap, changelog)  # fmt: skip
    result["changelog_after_stop_read_uncommitted"] = await asyncio.to_thread(
        read_changelog, bootstrap, changelog, "read_uncommitted")  # fmt: skip
    offsets = await asyncio.to_thread(committed_total, bootstrap, app_id, source)
    result.update(evaluate(t0, records, state_sum, after["sum"], offsets))
    if len(records) < N and result["error"] is None:
        result["error"] = f"timeout: {len(records)} of {N} outputs visible within {PHASE_TIMEOUT}s"
    result["warnings"] = [f"{n}x {line}" for line, n in collect.lines.most_common(6)]
    return result


def main() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="proto-kafka-"))
    report: Result = {"cpus": os.cpu_count(), "records": N, "keys": KEYS, "partitions": PARTITIONS}
    try:
        b, run = broker.start(data_dir, port=0), uuid.uuid4().hex[:8]
        source, changelogs = f"proto.{run}.source", [f"proto.{run}.changelog-{i}" for i in (1, 2)]
        sinks = [f"proto.{run}.sink-{x}" for x in "abcd"]
        create_topics(b.bootstrap, [source, *sinks, *changelogs], set(changelogs))
        produce_input(b.bootstrap, source)
        txn = {"linger.ms": 5, "transactional.id": ""}  # the phase fills in a unique id
        phases: dict[str, tuple[str, str | None, dict[str, Any]]] = {
            "raw_pipeline": (sinks[3], None, {"linger.ms": 5}),
            "confluent_transactional": (sinks[1], changelogs[0], {**txn, "retry.backoff.ms": 5}),
            "confluent_transactional_default_backoff": (sinks[2], changelogs[1], txn),
        }
        for name, (sink, changelog, config) in phases.items():
            report[name] = confluent_phase(b.bootstrap, source, sink, changelog, config)
        try:
            faust_run = faust_phase(b.bootstrap, source, sinks[0], data_dir)
            report["faust_exactly_once"] = asyncio.run(asyncio.wait_for(faust_run, 180))
        except Exception as exc:
            report["faust_exactly_once"] = {"exact": False, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        broker.stop(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
