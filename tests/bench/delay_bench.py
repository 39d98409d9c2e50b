"""Delayed sends: release lateness under steady load, and worker memory with 1 M pending.

    .venv/bin/python -m tests.bench.delay_bench [--sends 2000] [--pending 1000000] [--no-watch]
    .venv/bin/python -m tests.bench.delay_bench --overdue 1000000

Starts its own broker and one worker process (``tests.bench.apps``), stops both by PID,
and prints one JSON document (``--pending 0``: the lateness part only):

- ``lateness``: delayed sends through the Python client, paced evenly over 10 s; half due
  2 s after sending (held in full from the start, released while the other sends still
  arrive), half due 45 s after (beyond the worker's 30 s horizon: kept as offsets and read
  back from the delay partition before they are due). Lateness = the time the handler
  starts minus the due time. ``on_ingress`` is when the released invocation became
  readable (committed) on the ingress topic, from a consumer in this process. Run twice:
  ``lateness_first_round`` also warms up the broker's JIT and the worker, and runs slower.
- ``idle_no_pending``: the worker's RSS and CPU seconds over 10 s with nothing pending.
- ``pending``: ``--pending`` ``Delayed`` records due in 5 to 6 hours produced straight
  onto the delay topic; once the worker reports them all pending (the
  ``kourier_pending_timers`` gauge, or else its log lines), its RSS and CPU seconds over
  10 s, and its RSS after those 10 s.
- ``restart``: a new worker process that re-reads all of them from the delay topic: how
  long until it reports them all, its RSS then, CPU seconds over 10 s, RSS after.

``--overdue N`` measures only the take-over after an outage: ``N`` ``Delayed`` records due an
hour ago, produced onto the delay topic while no worker runs; then a worker starts, reads
them all (overdue, each due at once) and releases them. ``overdue`` gives how long until
every partition had caught up (its log line), until the pending gauge read 0 (all released)
and until the released invocations had run (the ``Meter`` counts they add to sum to ``N``, read
every 2 s), its RSS at each, and its peak RSS (``VmHWM``) over the whole take-over.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from streams.client import Client
from streams.kafka import broker
from streams.kafka.admin import create_topics
from streams.kafka.offsets import consume_ready
from streams.settings import Settings
from streams.wire import ids
from streams.wire.partitioning import partition_for
from streams.wire.records import Delayed, Invoke, Target, encode
from tests.bench.bench import ROOT, cpu_seconds, pct, rss_mib, spawn
from tests.processes import stop_process

NEAR, FAR = 2.0, 45.0  # seconds of delay: inside and beyond the worker's 30 s horizon
SPREAD = 10.0  # seconds over which the sends are paced
KEYS = 40  # Lateness objects per round
REPORT_SETTLE = 12.0  # seconds: the worker logs pending counts within 10 s of a change
_PENDING = re.compile(r"delay (\d+): (\d+) pending")
_CAUGHT_UP = re.compile(r"delay (\d+): caught up at offset \d+, (\d+) pending")
_GAUGE = re.compile(r"^kourier_pending_timers\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)


def cpu_over(pid: int, seconds: float) -> float:
    began = cpu_seconds(pid)
    time.sleep(seconds)
    return round(cpu_seconds(pid) - began, 3)


class WorkerProcess:
    """``kourier worker tests.bench.apps``; its pending count from the Prometheus gauge
    ``kourier_pending_timers`` (metrics on a free port), or else from its log lines."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.metrics = f"http://127.0.0.1:{broker.free_port()}/metrics"
        port = self.metrics.rsplit(":", 1)[1].split("/")[0]
        self.process = spawn(
            ["worker", "tests.bench.apps"], {**env, "KOURIER_METRICS_PORT": port}, log
        )
        self.pid = self.process.pid

    def pending_from_metrics(self) -> int | None:
        try:
            with urllib.request.urlopen(self.metrics, timeout=5) as reply:
                text = reply.read().decode()
        except OSError:
            return None
        values = [float(m[1]) for m in _GAUGE.finditer(text)]
        return round(sum(values)) if values else None

    def pending_from_log(self) -> int:
        last: dict[int, int] = {}
        for match in _PENDING.finditer(self.log.read_text(errors="replace")):
            last[int(match[1])] = int(match[2])
        return sum(last.values())

    def pending(self) -> int:
        from_metrics = self.pending_from_metrics()
        return self.pending_from_log() if from_metrics is None else from_metrics

    def wait_pending(self, expected: int, seconds: float) -> float:
        """Wait until the worker reports ``expected`` pending messages; when it did."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.pending() == expected:
                return time.monotonic()
            time.sleep(0.5)
        raise RuntimeError(f"the worker reported {self.pending()} of {expected} pending")

    def wait_caught_up(self, partitions: int, seconds: float) -> tuple[float, int]:
        """Wait until every delay partition logged that it caught up; when, and the
        messages pending then."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            found = {int(m[1]): int(m[2]) for m in _CAUGHT_UP.finditer(self.log.read_text())}
            if len(found) == partitions:
                return time.monotonic(), sum(found.values())
            time.sleep(0.2)
        raise RuntimeError(f"delay partitions still catching up after {seconds:.0f} s")

    def stop(self) -> None:
        stop_process(self.process)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(pct(values, 0.5) * 1000, 1),
        "p95_ms": round(pct(values, 0.95) * 1000, 1),
        "p99_ms": round(pct(values, 0.99) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
        "earliest_ms": round(min(values) * 1000, 1),
    }


class IngressWatch:
    """Notes when each released invocation becomes readable on the ingress topic."""

    def __init__(self, settings: Settings) -> None:
        self.seen: dict[str, float] = {}
        self._settings = settings
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> IngressWatch:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        consumer = Consumer(
            self._settings.client_config(
                {
                    "group.id": "delay-bench-watch",
                    "isolation.level": "read_committed",
                    "fetch.wait.max.ms": 5,  # short: the watch adds no wait of its own
                }
            )
        )
        topic = f"{self._settings.namespace}.ingress"
        consumer.assign(
            [TopicPartition(topic, p, OFFSET_END) for p in range(self._settings.partitions)]
        )
        self._ready.set()
        while not self._stop.is_set():
            for message in consume_ready(consumer, 500, 0.1):
                if message.error() is None:
                    now = time.time()
                    with_id = json.loads(message.value() or b"{}").get("invocation_id")
                    if with_id is not None:
                        self.seen.setdefault(with_id, now)
        consumer.close()


async def workload_lateness(
    settings: Settings, total: int, watch_ingress: bool, round_name: str
) -> dict[str, Any]:
    """``total`` delayed sends paced over SPREAD seconds; lateness at the handler's start.
    Even sends are due NEAR seconds later, to the first half of the keys; odd ones FAR."""
    keys = [f"{round_name}-{i}" for i in range(KEYS)]
    dues: dict[str, tuple[str, float]] = {}  # invocation id -> (near|far, due)
    half = len(keys) // 2
    watch = IngressWatch(settings)
    with watch if watch_ingress else contextlib.nullcontext(watch):
        async with Client(settings) as client:
            for key in keys:  # every partition's owner is up before the clock starts
                await asyncio.wait_for(client.object("Lateness", key, "values").request(), 120)
            began = time.monotonic()

            async def one(i: int) -> None:
                await asyncio.sleep(began + i * SPREAD / total - time.monotonic())
                kind, delay = ("near", NEAR) if i % 2 == 0 else ("far", FAR)
                key = keys[(i // 2) % half + (0 if kind == "near" else half)]
                due = time.time() + delay
                callee = client.object_send("Lateness", key, "record")
                receipt = await callee.send(due, delay=timedelta(seconds=delay))
                dues[receipt.invocation_id] = (kind, due)

            await asyncio.gather(*(one(i) for i in range(total)))
            deadline = time.monotonic() + FAR + 120
            found: dict[str, list[float]] = {}
            while time.monotonic() < deadline:
                lists = await asyncio.gather(
                    *(client.object("Lateness", key, "values").request() for key in keys)
                )
                found = dict(zip(keys, lists, strict=True))
                if sum(len(values) for values in found.values()) >= total:
                    break
                await asyncio.sleep(1.0)
        await asyncio.sleep(0.5)
    every = [late for values in found.values() for late in values]
    if len(every) < total:
        raise RuntimeError(f"only {len(every)} of {total} delayed sends ran")
    near = [late for key in keys[:half] for late in found[key]]
    far = [late for key in keys[half:] for late in found[key]]
    visible = {
        kind: [watch.seen[i] - due for i, (k, due) in dues.items() if k == kind and i in watch.seen]
        for kind in ("near", "far")
    }
    result: dict[str, Any] = {
        "sends": total,
        "spread_s": SPREAD,
        "handler_start": summary(every),
        f"handler_start_due_in_{NEAR:.0f}s": summary(near),
        f"handler_start_due_in_{FAR:.0f}s_read_back": summary(far),
        "ran": len(every),
        "early": sum(1 for late in every if late < 0),
    }
    if watch_ingress:
        result["on_ingress"] = summary(visible["near"] + visible["far"])
        result[f"on_ingress_due_in_{NEAR:.0f}s"] = summary(visible["near"])
        result[f"on_ingress_due_in_{FAR:.0f}s"] = summary(visible["far"])
    return result


def produce_pending(settings: Settings, total: int, due_in: float = 5 * 3600) -> float:
    """``total`` Delayed records due ``due_in`` seconds from now (5 hours) to an hour later,
    straight onto the delay topic."""
    producer = Producer(
        settings.client_config(
            {"linger.ms": 20, "batch.num.messages": 10000, "compression.type": "lz4"}
        )
    )
    topic = f"{settings.namespace}.delay"
    now = datetime.now(UTC)
    rng = random.Random(7)
    keys = [f"far-{i}" for i in range(1000)]
    began = time.monotonic()
    for i in range(total):
        key = keys[i % len(keys)]
        invoke = Invoke(
            target=Target(service="Meter", key=key, handler="add"),
            argument=1,
            invocation_id=ids.new_id(key, settings.partitions),
            mode="send",
        )
        due = now + timedelta(seconds=due_in + rng.uniform(0, 3600))
        value = encode(Delayed(due=due, invoke=invoke))
        while True:
            try:
                producer.produce(
                    topic, value, key.encode(), partition=partition_for(key, settings.partitions)
                )
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)
    return time.monotonic() - began


def bench_settings(bootstrap: str) -> tuple[Settings, dict[str, str]]:
    """The benchmark's settings on the broker at ``bootstrap`` (its topics made), and the
    environment its worker processes get."""
    settings = Settings(bootstrap_servers=bootstrap, namespace="dbench", partitions=8)
    create_topics(settings)
    env = dict(
        os.environ,
        KOURIER_BOOTSTRAP_SERVERS=bootstrap,
        KOURIER_NAMESPACE=settings.namespace,
        PYTHONPATH=str(ROOT),
    )
    return settings, env


async def run(sends: int, pending: int, watch_ingress: bool = True) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="kourier-delay-bench-"))
    running = broker.start(work / "kafka", port=0)
    workers: list[WorkerProcess] = []
    try:
        settings, env = bench_settings(running.bootstrap)
        worker = WorkerProcess(env, work / "worker-1.log")
        workers.append(worker)
        results: dict[str, Any] = {
            "cpus": os.cpu_count(),
            "kafka": broker.kafka_version(),
            "partitions": settings.partitions,
        }
        # The first round also warms the broker's JIT and the worker up; the second is
        # the figure (bench.py warms up with echo calls for the same reason).
        results["lateness_first_round"] = await workload_lateness(
            settings, sends, watch_ingress, "first"
        )
        say("lateness_first_round", results)
        results["lateness"] = await workload_lateness(settings, sends, watch_ingress, "second")
        say("lateness", results)
        if not pending:
            return results

        await asyncio.sleep(REPORT_SETTLE)
        idle = {
            "worker_rss_mib": round(rss_mib(worker.pid), 1),
            "worker_cpu_s_over_10s": await asyncio.to_thread(cpu_over, worker.pid, 10.0),
            "reported_pending": worker.pending(),
        }
        results["idle_no_pending"] = idle
        say("idle_no_pending", results)
        produce_s = await asyncio.to_thread(produce_pending, settings, pending)
        produced = time.monotonic()
        seen = await asyncio.to_thread(worker.wait_pending, pending, 600)
        results["pending"] = {
            "messages": pending,
            "due_in_h": [5, 6],
            "produce_s": round(produce_s, 1),
            "reported_s_after_produced": round(seen - produced, 1),
            "reported_pending_metric": worker.pending_from_metrics(),
            "reported_pending_log": worker.pending_from_log(),
            "worker_rss_mib": round(rss_mib(worker.pid), 1),
            "worker_cpu_s_over_10s": await asyncio.to_thread(cpu_over, worker.pid, 10.0),
        }
        results["pending"]["worker_rss_after_those_10s_mib"] = round(rss_mib(worker.pid), 1)
        say("pending", results)

        worker.stop()
        began = time.monotonic()
        worker = WorkerProcess(env, work / "worker-2.log")
        workers.append(worker)
        seen = await asyncio.to_thread(worker.wait_pending, pending, 600)
        results["restart"] = {
            "reported_s_after_start": round(seen - began, 1),
            "reported_pending": worker.pending(),
            "worker_rss_mib": round(rss_mib(worker.pid), 1),
            "worker_cpu_s_over_10s": await asyncio.to_thread(cpu_over, worker.pid, 10.0),
        }
        results["restart"]["worker_rss_after_those_10s_mib"] = round(rss_mib(worker.pid), 1)
        return results
    finally:
        for each in workers:
            each.stop()
        broker.stop(work / "kafka")


async def run_overdue(total: int) -> dict[str, Any]:
    """A worker taking over a delay topic whose ``total`` messages all fell due during an
    outage (see the module's docstring)."""
    work = Path(tempfile.mkdtemp(prefix="kourier-delay-bench-"))
    running = broker.start(work / "kafka", port=0)
    worker: WorkerProcess | None = None
    try:
        settings, env = bench_settings(running.bootstrap)
        produce_s = await asyncio.to_thread(produce_pending, settings, total, -2 * 3600)
        began = time.monotonic()
        worker = WorkerProcess(env, work / "worker.log")
        caught_up, pending = await asyncio.to_thread(
            worker.wait_caught_up, settings.partitions, 600
        )
        rss_caught_up = rss_mib(worker.pid)
        deadline = time.monotonic() + 900
        while worker.pending_from_metrics() != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{worker.pending()} of {total} overdue still pending")
            await asyncio.sleep(0.2)
        released, rss_released = time.monotonic(), rss_mib(worker.pid)
        async with Client(settings) as client:
            ran = 0
            while ran < total:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{ran} of {total} released invocations ran")
                await asyncio.sleep(2.0)
                counts = await asyncio.gather(
                    *(client.object("Meter", f"far-{i}", "count").request() for i in range(1000))
                )
                ran = sum(counts)
        return {
            "overdue": {
                "messages": total,
                "produce_s": round(produce_s, 1),
                "pending_when_caught_up": pending,
                "caught_up_s_after_start": round(caught_up - began, 1),
                "released_s_after_start": round(released - began, 1),
                "ran_s_after_start": round(time.monotonic() - began, 1),
                "worker_rss_caught_up_mib": round(rss_caught_up, 1),
                "worker_rss_released_mib": round(rss_released, 1),
                "worker_rss_ran_mib": round(rss_mib(worker.pid), 1),
                "worker_peak_rss_mib": round(rss_mib(worker.pid, "VmHWM"), 1),
            }
        }
    finally:
        if worker is not None:
            worker.stop()
        broker.stop(work / "kafka")


def say(name: str, results: dict[str, Any]) -> None:
    print(f"delay-bench: {name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=2000, help="delayed sends for lateness")
    parser.add_argument("--pending", type=int, default=1_000_000, help="far-off messages; 0: none")
    parser.add_argument(
        "--no-watch", action="store_true", help="do not time releases on the ingress topic"
    )
    parser.add_argument(
        "--overdue", type=int, default=0, help="only the take-over of this many overdue messages"
    )
    args = parser.parse_args()
    if args.overdue:
        print(json.dumps(asyncio.run(run_overdue(args.overdue)), indent=2))
        return
    print(json.dumps(asyncio.run(run(args.sends, args.pending, not args.no_watch)), indent=2))


if __name__ == "__main__":
    main()
