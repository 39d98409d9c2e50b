"""Kourier's benchmark: DESIGN.md §9 workloads against a genuine Apache Kafka broker.

    .venv/bin/python -m tests.bench.bench [--quick]

Starts its own broker, a worker process and an ingress process, runs each workload,
stops everything by PID, and prints one JSON document. The load generators run in this
process, on the same machine, so every figure shares the machine's cores with the
broker, the worker and the ingress.

Each workload but the delayed sends also reports ``cpu_ms_per_invocation``: the CPU time
(``/proc``, user + system) that each process used over the workload, divided by its
invocations. The processes are the broker, the worker, the ingress and ``load_generator``
(this process). The sends are measured until the worker has committed all of them, before
their counts are read; the backlog from the restarted worker's assignment (after its
restore) to its last commit. An HTTP chain call counts as one invocation, though it runs
two handlers. The delayed sends have no figure: most of their time is the wait and the
polling of their results. ``idle`` is each process's share of a core over a quiet spell
after the warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from streams.client import Client
from streams.kafka import broker
from streams.kafka.admin import create_topics
from streams.settings import Settings
from streams.wire import ids
from streams.wire.partitioning import partition_for
from streams.wire.records import Invoke, Target, encode
from tests.processes import stop_process

ROOT = Path(__file__).resolve().parents[2]
KEYS = [f"key-{i}" for i in range(100)]


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time so far of process ``pid``, or of its thread ``thread``."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_readings(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process."""
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def cpu_per_invocation(
    before: dict[str, float], after: dict[str, float], invocations: int
) -> dict[str, float]:
    """Milliseconds of CPU per invocation of each process between two readings."""
    return {name: round((after[name] - before[name]) / invocations * 1000, 3) for name in before}


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A process's resident set now, or another ``/proc/<pid>/status`` field in kB (``VmHWM``:
    its peak so far), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def wait_counts(url: str, expected: dict[str, int], seconds: float) -> float:
    """Poll every key's count until all equal ``expected``; the time it happened."""
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:

            async def exact(key: str) -> bool:
                async with http.post(f"{url}/Meter/{key}/count") as reply:
                    return bool(await reply.json() == expected[key])

            if all(await asyncio.gather(*(exact(key) for key in expected))):
                return time.monotonic()
            await asyncio.sleep(0.05)
    raise RuntimeError(f"counts not exact within {seconds}s")


async def http_load(
    url: str, paths: list[tuple[str, Any]], concurrency: int
) -> tuple[float, list[float], int]:
    """POST every (path, body); returns (elapsed s, latencies s, non-2xx count)."""
    queue = list(reversed(paths))
    latencies: list[float] = []
    failures = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def runner() -> None:
            nonlocal failures
            while queue:
                path, body = queue.pop()
                began = time.perf_counter()
                async with http.post(url + path, json=body) as reply:
                    await reply.read()
                    if reply.status >= 300:
                        failures += 1
                latencies.append(time.perf_counter() - began)

        began = time.monotonic()
        await asyncio.gather(*(runner() for _ in range(concurrency)))
        return time.monotonic() - began, latencies, failures


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def workload_http_sends(
    url: str, settings: Settings, total: int, cpu: Callable[[], dict[str, float]]
) -> dict[str, Any]:
    """One-way sends via HTTP; CPU read (``cpu()``) until the worker has committed them."""
    paths = [(f"/Meter/{KEYS[i % len(KEYS)]}/add/send", 1) for i in range(total)]
    began, before = time.monotonic(), cpu()
    _, _, failures = await http_load(url, paths, 64)
    with contextlib.closing(group_offsets(settings)) as offsets:
        await until_committed(offsets, settings, 120)
    used = cpu_per_invocation(before, cpu(), total)
    done = await wait_counts(url, {k: total // len(KEYS) for k in KEYS}, 120)
    return {"sends": total, "keys": len(KEYS), "non_2xx": failures,
            "sends_per_s": round(total / (done - began)),
            "cpu_ms_per_invocation": used}  # fmt: skip


async def workload_kafka_sends(
    url: str, settings: Settings, total: int, already: int, cpu: Callable[[], dict[str, float]]
) -> dict[str, Any]:
    """Producers write invoke records straight to the ingress topic; each key already
    counts ``already`` from the HTTP workload. CPU read until the worker has committed them."""
    began, before = time.monotonic(), cpu()
    await asyncio.to_thread(produce_sends, settings, total)
    produced = time.monotonic()
    with contextlib.closing(group_offsets(settings)) as offsets:
        await until_committed(offsets, settings, 300)
    used = cpu_per_invocation(before, cpu(), total)
    done = await wait_counts(url, {k: already + total // len(KEYS) for k in KEYS}, 300)
    return {"invocations": total, "produce_s": round(produced - began, 2),
            "invocations_per_s": round(total / (done - began)),
            "cpu_ms_per_invocation": used}  # fmt: skip


def group_offsets(settings: Settings) -> Consumer:
    """A consumer that reads the worker group's committed offsets (it never joins)."""
    return Consumer(settings.client_config({"group.id": f"{settings.namespace}.workers",
                                            "enable.auto.commit": False}))  # fmt: skip


async def until_committed(consumer: Consumer, settings: Settings, seconds: float) -> int:
    """Until the workers have committed everything on the ingress topic; the committed
    total then. It reads offsets only (``consumer``: :func:`group_offsets`), so unlike
    :func:`wait_counts` it adds no invocation to what is measured."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, end = await asyncio.to_thread(committed_total, consumer, settings)
        if done >= end:
            return done
        await asyncio.sleep(0.02)
    raise RuntimeError(f"the ingress topic was not committed to its end within {seconds}s")


def produce_sends(settings: Settings, total: int) -> None:
    """``total`` one-way ``Meter/add`` invocations, spread over the keys, onto the ingress."""
    producer = Producer(settings.client_config({"linger.ms": 5, "batch.num.messages": 10000}))
    partitions = settings.partitions
    topic = f"{settings.namespace}.ingress"
    for i in range(total):
        key = KEYS[i % len(KEYS)]
        record = Invoke(target=Target(service="Meter", key=key, handler="add"), argument=1,
                        invocation_id=ids.new_id(key, partitions), mode="send")  # fmt: skip
        while True:
            try:
                producer.produce(topic, encode(record), key.encode(),
                                 partition=partition_for(key, partitions))  # fmt: skip
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(60)


def committed_total(consumer: Consumer, settings: Settings) -> tuple[int, int]:
    """(offsets the worker group has committed, end offsets) summed over ingress partitions."""
    tps = [TopicPartition(f"{settings.namespace}.ingress", p) for p in range(settings.partitions)]
    done = sum(max(tp.offset, 0) for tp in consumer.committed(tps, 30))
    end = sum(consumer.get_watermark_offsets(tp, 30)[1] for tp in tps)
    return done, end


async def workload_kafka_backlog(
    url: str,
    settings: Settings,
    total: int,
    already: int,
    restart: Callable[[str], None],
    assigned: Callable[[], bool],
    cpu: Callable[[], dict[str, float]],
) -> dict[str, Any]:
    """Like the raw pipeline, a backlog: ``total`` invocations wait on the ingress topic
    while the worker is stopped; timed, and its CPU read (``cpu()``), from the moment the
    restarted worker says it has its partitions (``assigned()``) to its last commit. (Its
    first commit is no start mark: a fast worker can take the whole backlog in one.)"""
    await asyncio.to_thread(restart, "stop")
    await asyncio.to_thread(produce_sends, settings, total)
    with contextlib.closing(group_offsets(settings)) as offsets:
        await asyncio.to_thread(restart, "start")
        deadline = time.monotonic() + 300
        while not assigned():
            if time.monotonic() > deadline:
                raise RuntimeError("the restarted worker had no partitions within 300 s")
            await asyncio.sleep(0.02)
        first, cpu_first = time.monotonic(), cpu()
        done_first, _ = await asyncio.to_thread(committed_total, offsets, settings)
        done = await until_committed(offsets, settings, 300)
        last, cpu_last = time.monotonic(), cpu()
    await wait_counts(url, {k: already + total // len(KEYS) for k in KEYS}, 120)
    between = max(done - done_first, 1)  # invocations committed after the first reading
    return {"invocations": total, "drain_s": round(last - first, 2),
            "invocations_per_s": round(between / (last - first)),
            "cpu_ms_per_invocation": cpu_per_invocation(cpu_first, cpu_last, between)}  # fmt: skip


async def workload_echo(url: str, total: int, concurrency: int) -> dict[str, Any]:
    paths = [("/Echo/echo_value", i) for i in range(total)]
    elapsed, latencies, failures = await http_load(url, paths, concurrency)
    result = {"calls": total, "concurrency": concurrency, "non_2xx": failures,
              "calls_per_s": round(total / elapsed),
              "p50_ms": round(pct(latencies, 0.5) * 1000, 2),
              "p99_ms": round(pct(latencies, 0.99) * 1000, 2)}  # fmt: skip
    if concurrency == 1:
        result["mean_ms"] = round(statistics.fmean(latencies) * 1000, 2)
    return result


async def workload_chain(url: str, total: int) -> dict[str, Any]:
    paths = [("/Chain/bump", KEYS[i % len(KEYS)]) for i in range(total)]
    elapsed, latencies, failures = await http_load(url, paths, 32)
    return {"calls": total, "concurrency": 32, "non_2xx": failures,
            "calls_per_s": round(total / elapsed),
            "p50_ms": round(pct(latencies, 0.5) * 1000, 2)}  # fmt: skip


async def workload_delayed(settings: Settings, total: int) -> dict[str, Any]:
    """Delayed sends (2 s) spread over 10 keys: how late each ran after its due time."""
    keys = [f"late-{i}" for i in range(10)]
    delay = 2.0
    async with Client(settings) as client:
        sends = []
        for i in range(total):
            due = time.time() + delay
            sends.append(client.object_send("Lateness", keys[i % 10], "record").send(
                due, delay=timedelta(seconds=delay)
            ))  # fmt: skip
        await asyncio.gather(*sends)
        deadline = time.monotonic() + 120
        found: list[float] = []
        while time.monotonic() < deadline:
            lists = await asyncio.gather(
                *(client.object("Lateness", key, "values").request() for key in keys)
            )
            found = [value for values in lists for value in values]
            if len(found) >= total:
                break
            await asyncio.sleep(0.2)
    if len(found) < total:
        raise RuntimeError(f"only {len(found)} of {total} delayed sends ran within 120s")
    return {"sends": total, "delay_s": delay,
            "lateness_p50_ms": round(pct(found, 0.5) * 1000, 1),
            "lateness_p99_ms": round(pct(found, 0.99) * 1000, 1),
            "lateness_max_ms": round(max(found) * 1000, 1),
            "earliest_ms": round(min(found) * 1000, 1)}  # fmt: skip


def raw_pipeline(settings: Settings, total: int) -> dict[str, Any]:
    """The ceiling: confluent-kafka consume -> produce, no transactions, same broker."""
    admin = AdminClient(settings.client_config())
    source, sink = f"{settings.namespace}.raw-in", f"{settings.namespace}.raw-out"
    for future in admin.create_topics([NewTopic(t, settings.partitions, 1)
                                       for t in (source, sink)]).values():  # fmt: skip
        future.result(30)
    producer = Producer(settings.client_config({"linger.ms": 5, "batch.num.messages": 10000}))
    payload = b'{"v":1,"kind":"invoke","target":{"service":"Meter","key":"k","handler":"add"}}'
    for i in range(total):
        while True:
            try:
                producer.produce(source, payload, KEYS[i % len(KEYS)].encode())
                break
            except BufferError:
                producer.poll(0.01)
    producer.flush(60)
    consumer = Consumer(settings.client_config({"group.id": f"raw-{uuid.uuid4()}",
                                                "auto.offset.reset": "earliest"}))  # fmt: skip
    consumer.subscribe([source])
    copied = 0
    began = None
    deadline = time.monotonic() + 120
    while copied < total and time.monotonic() < deadline:
        for message in consumer.consume(10000, 0.5):
            if message.error() is not None:
                continue
            began = began or time.monotonic()
            while True:
                try:
                    producer.produce(sink, message.value(), message.key())
                    break
                except BufferError:
                    producer.poll(0.01)
            copied += 1
    producer.flush(60)
    elapsed = time.monotonic() - (began or time.monotonic())
    consumer.close()
    return {"records": copied, "records_per_s": round(copied / max(elapsed, 1e-9))}


def say(results: dict[str, Any]) -> None:
    """Progress on stderr: the last workload's figures."""
    name = list(results)[-1]
    print(f"bench: {name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def local_kafka(prefix: str, namespace: str) -> Iterator[tuple[Path, Settings, dict[str, str]]]:
    """A broker of its own in a new work directory, with the namespace's topics (8
    partitions), stopped by PID on exit: the work directory, the settings, and the
    environment a ``kourier`` process needs to use them."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    running = broker.start(work / "kafka", port=0)
    try:
        settings = Settings(bootstrap_servers=running.bootstrap, namespace=namespace, partitions=8)
        create_topics(settings)
        env = dict(os.environ, KOURIER_BOOTSTRAP_SERVERS=running.bootstrap,
                   KOURIER_NAMESPACE=namespace, PYTHONPATH=str(ROOT))  # fmt: skip
        yield work, settings, env
    finally:
        broker.stop(work / "kafka")


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "streams.cli", *args], cwd=ROOT, env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)  # fmt: skip


async def run(quick: bool) -> dict[str, Any]:
    scale = 0.25 if quick else 1.0
    processes: list[subprocess.Popen[bytes]] = []
    with local_kafka("kourier-bench-", "bench") as (work, settings, env):
        try:
            return await _workloads(work, settings, env, scale, processes)
        finally:
            for process in processes:
                stop_process(process)


async def _workloads(
    work: Path,
    settings: Settings,
    env: dict[str, str],
    scale: float,
    processes: list[subprocess.Popen[bytes]],
) -> dict[str, Any]:
    """Every workload, against a worker and an ingress it starts (into ``processes``)."""
    port = broker.free_port()
    worker = spawn(["worker", "tests.bench.apps"], env, work / "worker.log")
    ingress = spawn(["ingress", "--port", str(port), "--admin-port", str(broker.free_port())],
                    env, work / "ingress.log")  # fmt: skip
    processes += [worker, ingress]
    url = f"http://127.0.0.1:{port}"
    broker_pid = int((work / "kafka" / "broker.pid").read_text())

    def cpu() -> dict[str, float]:
        return cpu_readings({"broker": broker_pid, "worker": worker.pid,
                             "ingress": ingress.pid, "load_generator": os.getpid()})  # fmt: skip

    async def measured(invocations: int, workload: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        before = cpu()
        result = await workload
        result["cpu_ms_per_invocation"] = cpu_per_invocation(before, cpu(), invocations)
        return result

    await wait_ready(url)
    await http_load(url, [("/Echo/echo_value", 0)] * 200, 8)  # warm-up
    results: dict[str, Any] = {"cpus": os.cpu_count(), "kafka": broker.kafka_version(),
                               "partitions": settings.partitions}  # fmt: skip
    quiet = 20 * scale  # seconds of the idle reading: 5 with --quick
    before = cpu()
    await asyncio.sleep(quiet)  # a measuring window, not a wait for an event
    shares = {name: round((used - before[name]) / quiet * 100, 1) for name, used in cpu().items()}
    results["idle"] = {"seconds": quiet, "cpu_pct": shares}
    say(results)
    http_sends = int(20000 * scale)
    results["http_sends_100_keys"] = await workload_http_sends(url, settings, http_sends, cpu)
    say(results)
    kafka_sends = int(40000 * scale)
    results["kafka_ingress_sends_100_keys"] = await workload_kafka_sends(
        url, settings, kafka_sends, http_sends // len(KEYS), cpu
    )
    say(results)

    restarted_log = work / "worker-2.log"

    def restart(what: str) -> None:
        nonlocal worker
        if what == "stop":
            stop_process(worker, 60)
        else:
            worker = spawn(["worker", "tests.bench.apps"], env, restarted_log)
            processes.append(worker)

    def assigned() -> bool:  # the worker's INFO line once it has its partitions
        return " assigned " in restarted_log.read_text(errors="replace")

    already = (http_sends + kafka_sends) // len(KEYS)
    results["kafka_ingress_backlog_100_keys"] = await workload_kafka_backlog(
        url, settings, kafka_sends, already, restart, assigned, cpu
    )
    say(results)
    echoes, sequential, chains, delayed = (int(n * scale) for n in (20000, 2000, 10000, 2000))
    results["http_echo_64_concurrent"] = await measured(echoes, workload_echo(url, echoes, 64))
    say(results)
    results["http_echo_sequential"] = await measured(sequential, workload_echo(url, sequential, 1))
    say(results)
    results["http_chain_32_concurrent"] = await measured(chains, workload_chain(url, chains))
    say(results)
    results["delayed_send_lateness"] = await workload_delayed(settings, delayed)
    say(results)
    results["worker_rss_mib"] = round(rss_mib(worker.pid), 1)
    results["ingress_rss_mib"] = round(rss_mib(ingress.pid), 1)
    results["raw_pipeline"] = raw_pipeline(settings, int(200000 * scale))
    ceiling = results["raw_pipeline"]["records_per_s"]
    kafka_rate = results["kafka_ingress_sends_100_keys"]["invocations_per_s"]
    results["kafka_ingress_vs_raw_pipeline"] = round(kafka_rate / ceiling, 3)
    backlog_rate = results["kafka_ingress_backlog_100_keys"]["invocations_per_s"]
    results["kafka_backlog_vs_raw_pipeline"] = round(backlog_rate / ceiling, 3)
    return results


async def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"{url}/health") as reply:
                    if {"Meter", "Echo", "Chain", "Lateness"} <= set(
                        (await reply.json())["services"]
                    ):
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("the ingress did not list the benchmark services within 60s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the work")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.quick)), indent=2))


if __name__ == "__main__":
    main()
