"""Does stopping a single broker while transactions commit leave a hanging transaction?

    .venv/bin/python -m tests.bench.hanging_txn [--rounds 6] [--controlled]

Each round starts a broker of its own, creates a topic of 4 partitions, and commits small
transactions in a loop (one record on each partition) from a transactional producer with a
5 s transaction timeout. After 3 s the broker is stopped (SIGTERM, as ``kourier broker
stop`` does) and started again on the same data directory. 20 s later, past the timeout and
the coordinator's sweep for timed-out transactions, every partition's last stable offset
should equal its high watermark; a partition where it stays below holds a hanging
transaction, which ``read_committed`` readers never pass. Prints one JSON line a round and a
summary.

``--controlled`` sets ``controlled.shutdown.enable=true`` (Kafka's default, which a single
node of ``kourier broker start`` no longer uses: see README "Limits"). Every broker is
stopped by PID, also on failure.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from confluent_kafka import IsolationLevel, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from streams.kafka import broker

PARTITIONS = 4


def _commit_in_a_loop(bootstrap: str, stop: threading.Event, commits: list[int]) -> None:
    producer = Producer({
        "bootstrap.servers": bootstrap, "transactional.id": "hanging-probe",
        "transaction.timeout.ms": 5000, "log_level": 0,
    })  # fmt: skip
    producer.init_transactions(30)
    while not stop.is_set():
        try:
            producer.begin_transaction()
            for partition in range(PARTITIONS):
                producer.produce("t", b"v", partition=partition)
            producer.commit_transaction(10)
            commits[0] += 1
        except KafkaException as exc:  # the broker went away: abort if asked, else stop
            error = exc.args[0]
            if error.txn_requires_abort():
                try:
                    producer.abort_transaction(10)
                except KafkaException:
                    return
            elif not error.retriable():
                return
            time.sleep(0.05)


def _ends(bootstrap: str) -> tuple[dict[int, int], dict[int, int]]:
    """High watermarks and last stable offsets of the topic's partitions."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    latest = {TopicPartition("t", p): OffsetSpec.latest() for p in range(PARTITIONS)}
    ends = []
    for level in (IsolationLevel.READ_UNCOMMITTED, IsolationLevel.READ_COMMITTED):
        futures = admin.list_offsets(latest, isolation_level=level)
        ends.append({tp.partition: future.result().offset for tp, future in futures.items()})
    return ends[0], ends[1]


def one_round(controlled: bool) -> dict[str, object]:
    data = Path(tempfile.mkdtemp(prefix="kourier-hanging-")) / "kafka"
    try:
        running = broker.start(data, port=0)
        if controlled:
            props = data / "server.properties"
            props.write_text(
                props.read_text().replace(
                    "controlled.shutdown.enable=false", "controlled.shutdown.enable=true"
                )
            )
            broker.stop(data)
            running = broker.start(data, port=0)
        admin = AdminClient({"bootstrap.servers": running.bootstrap})
        for future in admin.create_topics([NewTopic("t", PARTITIONS, 1)]).values():
            future.result()
        stop, commits = threading.Event(), [0]
        worker = threading.Thread(
            target=_commit_in_a_loop, args=(running.bootstrap, stop, commits), daemon=True
        )
        worker.start()
        time.sleep(3)
        broker.stop(data)
        stop.set()
        worker.join(60)
        running = broker.start(data, port=0)
        time.sleep(20)
        high, stable = _ends(running.bootstrap)
        hanging = sorted(p for p in range(PARTITIONS) if stable[p] < high[p])
        return {"commits": commits[0], "high": high, "stable": stable, "hanging": hanging}
    finally:
        broker.stop(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--controlled", action="store_true")
    args = parser.parse_args()
    hung = 0
    for number in range(args.rounds):
        result = one_round(args.controlled)
        hung += bool(result["hanging"])
        print(json.dumps({"round": number, **result}), flush=True)
    print(json.dumps({
        "controlled_shutdown": args.controlled, "rounds": args.rounds,
        "rounds_with_a_hanging_transaction": hung,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
