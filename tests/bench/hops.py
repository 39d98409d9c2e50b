"""Where the time of one call goes: a sequential echo, hop by hop, from Kafka timestamps.

    .venv/bin/python -m tests.bench.hops [--calls 1000] [--chain] [--http]

Starts its own broker and one worker process (``tests.bench.apps``, debug logging for its
commit statistics), stops both by PID, and prints one JSON document. Each call is an
``Invoke`` for ``Echo/echo_value`` with a request id, produced straight to the ingress topic
(acks=all, no linger), and its response read from the response topic by a
``read_committed`` consumer with the fetch wait the client and ingress use.
Per call, with the record timestamps (CreateTime, set where each record is produced):

- ``produce_ack``: the invoke produced until the broker acknowledged it;
- ``to_response``: the invoke's timestamp until the worker produced the response (the
  worker's fetch wake-up, the handler, and the step until the snapshot is produced, inside
  the open transaction);
- ``commit_and_read``: the response's timestamp until this process read it (the rest of the
  transaction: offsets, commit, markers; then the ``read_committed`` fetch wake-up);
- ``total``: produce until the response was read.

With ``--chain`` each call is ``Chain/bump``, which calls ``Meter/add`` on one key and
returns its result: two transactions in a row (the call to the object; then the object's
completion, which the worker also hands straight to the caller, with the caller's
response), so ``to_response`` then spans the first and the worker's statistics count two
commits per call.

With ``--http`` the calls go through an ingress process instead (``POST /Echo/echo_value``
on one keep-alive connection), and a ``read_uncommitted`` consumer of the ingress and
response topics in this process finds both records by the ``x-restate-id`` answered:

- ``to_invoke``: the request sent until the ingress produced the invoke (HTTP parsing,
  routing, the record's encoding);
- ``to_response``: as above;
- ``commit_and_answer``: the response's timestamp until the HTTP answer arrived (the rest
  of the transaction, the ingress's ``read_committed`` fetch, its hand-over to the event
  loop, the HTTP answer);
- ``total``: the request sent until its answer arrived.

Timestamps have millisecond resolution, so each hop is known to about a millisecond.

``broker_cpu_ms_per_call`` splits the broker's CPU over the measured calls by its threads
(``/proc``): ``jit`` is its JIT compilers, ``requests`` its network and request handler
threads (the controller's among them: broker and controller share the process), ``other``
the rest of the process (coordinators, marker sender, GC, threads that ended meanwhile).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import re
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from streams.kafka import broker
from streams.kafka.offsets import FETCH_WAIT_MS, consume_ready, watermarks
from streams.settings import Settings
from streams.wire import ids
from streams.wire.records import Invoke, Target, decode_response, encode
from tests.bench.bench import cpu_seconds, local_kafka, spawn, wait_ready
from tests.processes import stop_process

_COMMITS = re.compile(
    r"commits (\d+), ([0-9.]+) ms each, ([0-9.]+) records in ([0-9.]+) partitions each "
    r"\(records ([0-9.]+), offsets ([0-9.]+), commit ([0-9.]+) ms; offsets first in (\d+)\)"
)


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {
        "p50": at(0.5),
        "p90": at(0.9),
        "p99": at(0.99),
        "mean": round(statistics.fmean(ordered), 2),
    }


#: Calls not counted: the first few hundred run slower while the broker's JIT compiles.
_WARMUP = 500


def broker_threads(pid: int) -> dict[str, float]:
    """CPU seconds the broker has used so far, by kind of thread (see the docstring). The
    process total keeps the time of threads that ended (the JVM starts and stops compiler
    threads), so ``other`` is what the total has beyond the live JIT and request threads."""
    used = {"jit": 0.0, "requests": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text()
            seconds = cpu_seconds(pid, int(task.name))
        except OSError:  # the thread ended meanwhile
            continue
        if "CompilerThre" in name:
            used["jit"] += seconds
        elif "data-plane" in name:
            used["requests"] += seconds
    return {**used, "other": cpu_seconds(pid) - used["jit"] - used["requests"]}


def summary(
    hops: dict[str, list[float]], calls: int, broker_pid: int | None, cpu_before: dict[str, float]
) -> dict[str, Any]:
    """Percentiles of each hop, and the broker's CPU per call since ``cpu_before``."""
    results: dict[str, Any] = {name: percentiles(values) for name, values in hops.items()}
    if broker_pid is not None and cpu_before:
        cpu_after = broker_threads(broker_pid)
        results["broker_cpu_ms_per_call"] = {
            kind: round(1000 * (cpu_after[kind] - cpu_before[kind]) / calls, 2)
            for kind in cpu_after
        }
    return results


def measure(
    settings: Settings, calls: int, chain: bool, broker_pid: int | None = None
) -> dict[str, Any]:
    producer = Producer(settings.producer_config({"linger.ms": 0, "enable.idempotence": True}))
    consumer = Consumer(settings.client_config({
        "group.id": f"hops-{uuid.uuid4().hex}", "enable.auto.commit": False,
        "isolation.level": "read_committed", "fetch.wait.max.ms": FETCH_WAIT_MS,
        "auto.offset.reset": "latest",
    }))  # fmt: skip
    topic = f"{settings.namespace}.responses"
    partitions = len(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    assignment = []
    for p in range(partitions):
        _, high = watermarks(consumer, TopicPartition(topic, p))
        assignment.append(TopicPartition(topic, p, high))
    consumer.assign(assignment)
    hops: dict[str, list[float]] = {"produce_ack": [], "to_response": [], "commit_and_read": [],
                                    "total": []}  # fmt: skip
    cpu_before: dict[str, float] = {}
    try:
        for i in range(calls + _WARMUP):  # the broker's JIT warms up first
            request_id = uuid.uuid4().hex
            inv_id = ids.new_id(None, settings.partitions)
            target, argument = (
                (Target(service="Chain", handler="bump"), "hops")
                if chain
                else (Target(service="Echo", handler="echo_value"), i)
            )
            record = Invoke(target=target, argument=argument,
                            invocation_id=inv_id, request_id=request_id)  # fmt: skip
            acked: list[float] = []
            began = time.time()
            producer.produce(f"{settings.namespace}.ingress", encode(record), inv_id.encode(),
                             partition=ids.partition_of(inv_id, settings.partitions),
                             on_delivery=_stamp_into(acked))  # fmt: skip
            producer.flush(10)
            ack_at = time.time()
            answered = _response(consumer, request_id, began + 30)
            read_at, response_ts = answered
            if i < _WARMUP:
                if i == _WARMUP - 1 and broker_pid is not None:
                    cpu_before = broker_threads(broker_pid)
                continue
            invoke_ts = acked[0]
            hops["produce_ack"].append(1000 * (ack_at - began))
            hops["to_response"].append(1000 * (response_ts - invoke_ts))
            hops["commit_and_read"].append(1000 * (read_at - response_ts))
            hops["total"].append(1000 * (read_at - began))
    finally:
        consumer.close()
    return summary(hops, calls, broker_pid, cpu_before)


class _Stamps:
    """The timestamp (seconds) of every invoke and response record, by invocation id, read
    ``read_uncommitted`` by a thread: a record counts when it is produced, not committed."""

    def __init__(self, settings: Settings) -> None:
        self.invokes: dict[str, float] = {}
        self.responses: dict[str, float] = {}
        self._consumer = Consumer(settings.client_config({
            "group.id": f"hops-{uuid.uuid4().hex}", "enable.auto.commit": False,
            "isolation.level": "read_uncommitted", "fetch.wait.max.ms": 1,
        }))  # fmt: skip
        assignment = []
        for name in ("ingress", "responses"):
            topic = f"{settings.namespace}.{name}"
            found = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
            for p in found:
                _, high = watermarks(self._consumer, TopicPartition(topic, p))
                assignment.append(TopicPartition(topic, p, high))
        self._consumer.assign(assignment)
        self._running = True
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while self._running:
            for message in consume_ready(self._consumer, 500, 0.05):
                value = message.value()
                if message.error() is not None or value is None:
                    continue
                record = json.loads(value)
                inv_id = record.get("invocation_id")
                if not isinstance(inv_id, str):
                    continue
                kind = record.get("kind")
                if kind in ("invoke", "response"):
                    stamps = self.invokes if kind == "invoke" else self.responses
                    stamps[inv_id] = message.timestamp()[1] / 1000

    def both(self, inv_id: str, deadline: float) -> tuple[float, float]:
        while time.time() < deadline:
            if inv_id in self.invokes and inv_id in self.responses:
                return self.invokes[inv_id], self.responses[inv_id]
            time.sleep(0.001)
        raise RuntimeError(f"the records of {inv_id} were not read in time")

    def close(self) -> None:
        self._running = False
        self._thread.join()
        self._consumer.close()


def measure_http(
    settings: Settings, port: int, calls: int, broker_pid: int | None = None
) -> dict[str, Any]:
    stamps = _Stamps(settings)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    hops: dict[str, list[float]] = {"to_invoke": [], "to_response": [],
                                    "commit_and_answer": [], "total": []}  # fmt: skip
    cpu_before: dict[str, float] = {}
    try:
        for i in range(calls + _WARMUP):
            began = time.time()
            connection.request("POST", "/Echo/echo_value", body=str(i),
                               headers={"content-type": "application/json"})  # fmt: skip
            reply = connection.getresponse()
            body = reply.read()
            answered = time.time()
            if reply.status != 200 or json.loads(body) != i:
                raise RuntimeError(f"call {i} answered {reply.status} {body!r}")
            inv_id = reply.getheader("x-restate-id") or ""
            invoke_ts, response_ts = stamps.both(inv_id, answered + 10)
            if i < _WARMUP:
                if i == _WARMUP - 1 and broker_pid is not None:
                    cpu_before = broker_threads(broker_pid)
                continue
            hops["to_invoke"].append(1000 * (invoke_ts - began))
            hops["to_response"].append(1000 * (response_ts - invoke_ts))
            hops["commit_and_answer"].append(1000 * (answered - response_ts))
            hops["total"].append(1000 * (answered - began))
    finally:
        connection.close()
        stamps.close()
    return summary(hops, calls, broker_pid, cpu_before)


def _stamp_into(stamps: list[float]) -> Any:
    """A delivery callback that keeps the record's timestamp (seconds)."""

    def delivered(error: Any, message: Any) -> None:
        if error is None:
            stamps.append(message.timestamp()[1] / 1000)

    return delivered


def _response(consumer: Consumer, request_id: str, deadline: float) -> tuple[float, float]:
    """When the response to ``request_id`` was read, and its record's timestamp."""
    while time.time() < deadline:
        for message in consume_ready(consumer, 100, 0.05):
            if message.error() is not None:
                continue
            if decode_response(message.value()).request_id == request_id:
                return time.time(), message.timestamp()[1] / 1000
    raise RuntimeError(f"no response to {request_id} in time")


def run(calls: int, chain: bool, over_http: bool) -> dict[str, Any]:
    with local_kafka("kourier-hops-", "hops") as (work, settings, env):
        log = work / "worker.log"
        worker = spawn(["worker", "-v", "tests.bench.apps"], env, log)
        processes = [worker]
        running = broker.status(work / "kafka")
        pid = running.pid if running is not None else None
        try:
            call = "Chain/bump" if chain else "Echo/echo_value"
            results: dict[str, Any] = {"calls": calls, "kafka": broker.kafka_version(),
                                       "call": call}  # fmt: skip
            if over_http:
                port = broker.free_port()
                admin = str(broker.free_port())
                processes.append(spawn(["ingress", "--port", str(port), "--admin-port", admin],
                                       env, work / "ingress.log"))  # fmt: skip
                asyncio.run(wait_ready(f"http://127.0.0.1:{port}"))
                results["via"] = "HTTP ingress"
                results["hops_ms"] = measure_http(settings, port, calls, pid)
            else:
                results["hops_ms"] = measure(settings, calls, chain, pid)
            found = _COMMITS.findall(log.read_text(errors="replace"))
            if found:
                commits, ms, records, partitions, producing, offsets, committing, first = found[-1]
                results["worker_commits"] = {
                    "commits": int(commits), "ms_each": float(ms), "records_each": float(records),
                    "partitions_each": float(partitions),
                    "ms_in_begin_and_produce": float(producing),
                    "ms_in_send_offsets": float(offsets), "ms_in_commit": float(committing),
                    "offsets_first": int(first),
                }  # fmt: skip
            return results
        finally:
            for process in processes:
                stop_process(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--chain", action="store_true", help="Chain/bump -> Meter/add calls")
    parser.add_argument("--http", action="store_true", help="Echo calls through an ingress")
    args = parser.parse_args()
    if args.chain and args.http:
        parser.error("--http measures Echo calls only")
    print(json.dumps(run(args.calls, args.chain, args.http), indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
