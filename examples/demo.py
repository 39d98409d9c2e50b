"""The README's demo: a real broker, Kourier's topics, and records crossing Kafka.

Run it with ``deploy/demo.sh``; it stops everything it started.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from confluent_kafka import Consumer

from streams import broker, records
from streams.admin import create_topics
from streams.settings import Settings
from streams.topics import Topics


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def main() -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="kourier-demo-"))
    step("starting a genuine Apache Kafka broker (KRaft) from deploy/kafka")
    running = broker.start(data_dir, port=0)
    print(f"broker pid {running.pid} at {running.bootstrap}")
    try:
        settings = Settings(bootstrap_servers=running.bootstrap, namespace="demo")
        topics = Topics(settings.namespace)

        step("kourier topics create")
        for state in create_topics(settings):
            print(f"  {state.spec.name:<18} {state.partitions} partitions  {state.spec.purpose}")

        step("an outside producer (kcat) writes an invoke record to the ingress topic")
        record = {
            "v": 1,
            "kind": "invoke",
            "target": {"service": "Counter", "key": "alice", "handler": "add"},
            "argument": 5,
            "request_id": f"demo-{uuid.uuid4().hex[:8]}",
        }
        line = json.dumps(record)
        print(f"  kcat -P -b {running.bootstrap} -t {topics.ingress} -k alice")
        print(f"  {line}")
        kcat = shutil.which("kcat")
        if kcat is None:
            print("kcat is not installed (deploy/setup.sh installs it)", file=sys.stderr)
            return 1
        subprocess.run(
            [kcat, "-P", "-b", running.bootstrap, "-t", topics.ingress, "-k", "alice"],
            input=line.encode(),
            check=True,
        )

        step("Kourier reads it back and validates it against the wire schema")
        consumer = Consumer(
            settings.client_config(
                {"group.id": "demo", "auto.offset.reset": "earliest", "log_level": 3}
            )
        )
        consumer.subscribe([topics.ingress])
        message = None
        for _ in range(40):
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                break
        consumer.close()
        if message is None or message.error() is not None:
            print("the record did not arrive within 20 s", file=sys.stderr)
            return 1
        decoded = records.decode_ingress(message.value())
        print(f"  partition {message.partition()} offset {message.offset()}: {decoded!r}")

        step("a malformed record is named, not guessed at")
        try:
            records.decode_ingress(b'{"kind": "invoke", "target": {"service": "Counter"}}')
        except records.RecordError as error:
            print(f"  {error.reason}: {error.detail}")
        return 0
    finally:
        step("stopping the broker")
        broker.stop(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
