"""Worker processes: state across restarts, two processes sharing partitions, Kafka ingress."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from streams.client import Client
from streams.settings import Settings
from streams.wire.topics import Topics
from tests.integration.conftest import WorkerProcesses
from tests.integration.helpers import poll_until


async def test_state_survives_a_worker_restart_and_a_kill(
    client: Client, worker_processes: WorkerProcesses
) -> None:
    first = worker_processes.spawn()
    for n in (1, 2, 3):
        await asyncio.wait_for(client.object("Tally", "durable", "add").request(n), 60)
    first.stop()
    assert first.process is not None
    assert first.process.returncode == 0, worker_processes.logs()
    second = worker_processes.spawn()
    total = await asyncio.wait_for(client.object("Tally", "durable", "count").request(), 60)
    assert total == 6
    assert await asyncio.wait_for(client.object("Tally", "durable", "add").request(4), 60) == 10
    second.kill()  # kill -9: no clean hand-over
    worker_processes.spawn()
    assert await asyncio.wait_for(client.object("Tally", "durable", "add").request(5), 90) == 15


async def test_two_worker_processes_share_the_partitions(
    client: Client, worker_processes: WorkerProcesses
) -> None:
    one = worker_processes.spawn()
    keys = [f"spread-{i}" for i in range(16)]
    # The first worker commits under the group's first generation before the second joins.
    assert (
        await asyncio.wait_for(client.object("Tally", keys[0], "whoami").request(), 60) == one.pid
    )
    two = worker_processes.spawn()
    seen: set[int] = set()
    deadline = time.monotonic() + 90
    while seen != {one.pid, two.pid} and time.monotonic() < deadline:
        pids = await asyncio.gather(
            *(client.object("Tally", key, "whoami").request() for key in keys)
        )
        seen = set(pids)
        await asyncio.sleep(0.2)
    assert seen == {one.pid, two.pid}, f"only {seen} answered\n{worker_processes.logs()}"
    # Both keep working correctly together: exact counts across both processes.
    await asyncio.gather(*(client.object_send("Tally", key, "add").send(1) for key in keys))
    await asyncio.gather(*(client.object_send("Tally", key, "add").send(1) for key in keys))

    async def counts() -> list[int]:
        # Shared handlers do not wait behind the exclusive adds: poll until they are applied.
        return list(
            await asyncio.gather(*(client.object("Tally", key, "count").request() for key in keys))
        )

    await poll_until(counts, [2] * len(keys), 60, "counts after two sends per key")
    # Each worker's transactions carry the group generation they were consumed under, which
    # changed when the second one joined: none of them was refused for an older one.
    failed = [
        line
        for log in sorted(worker_processes.log_dir.glob("worker-*.log"))
        for line in log.read_text().splitlines()
        if "commit failed" in line
    ]
    assert not failed, failed


def _read_response(settings: Settings, request_id: str, timeout: float = 60) -> dict[str, object]:
    """A plain confluent-kafka consumer reading the response topic, as any outside program would."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"outside-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([Topics(settings.namespace).responses])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            response: dict[str, object] = json.loads(message.value() or b"null")
            if response.get("request_id") == request_id:
                return response
    finally:
        consumer.close()
    raise AssertionError(f"no response for {request_id} within {timeout}s")


async def test_a_plain_kafka_producer_calls_a_handler(
    topics: Settings, worker_processes: WorkerProcesses
) -> None:
    worker_processes.spawn()
    producer = Producer({"bootstrap.servers": topics.bootstrap_servers})
    request_id = f"outside-{uuid.uuid4()}"
    record = {
        "v": 1,
        "kind": "invoke",
        "target": {"service": "Tally", "key": "kafka", "handler": "add"},
        "argument": 7,
        "request_id": request_id,
    }
    # librdkafka's default partitioner is not Kafka's: the worker moves the record if needed.
    producer.produce(Topics(topics.namespace).ingress, key=b"kafka", value=json.dumps(record))
    assert producer.flush(10) == 0
    response = await asyncio.to_thread(_read_response, topics, request_id)
    assert response["status"] == "success"
    assert response["value"] == 7
    assert str(response["invocation_id"]).startswith("inv_")


async def test_the_readme_kcat_round_trip(
    topics: Settings, worker_processes: WorkerProcesses
) -> None:
    kcat = shutil.which("kcat")
    assert kcat is not None, "kcat is installed by deploy/setup.sh"
    worker_processes.spawn()
    ns = topics.namespace
    record = (
        '{"v":1,"kind":"invoke","target":{"service":"Tally","key":"cat","handler":"add"},'
        '"argument":5,"request_id":"r1"}'
    )
    await asyncio.to_thread(
        subprocess.run,
        [kcat, "-P", "-b", topics.bootstrap_servers, "-t", f"{ns}.ingress", "-k", "cat"],
        input=record.encode(),
        check=True,
        timeout=30,
    )
    # The README's reader: every response so far, then exit; repeated until ours is there.
    reader = [kcat, "-C", "-b", topics.bootstrap_servers, "-t", f"{ns}.responses",
              "-X", "isolation.level=read_committed", "-o", "beginning", "-e", "-q"]  # fmt: skip
    deadline = time.monotonic() + 60
    found: list[dict[str, object]] = []
    while not found and time.monotonic() < deadline:
        read = await asyncio.to_thread(subprocess.run, reader, capture_output=True, timeout=30)
        lines = [json.loads(line) for line in read.stdout.splitlines() if line.strip()]
        found = [r for r in lines if r.get("request_id") == "r1"]
        await asyncio.sleep(0.2)
    assert found, f"kcat saw no response to r1 within 60s\n{worker_processes.logs()}"
    assert found[0]["status"] == "success"
    assert found[0]["value"] == 5


async def test_sigusr1_dumps_a_worker_which_goes_on_working(
    client: Client, worker_processes: WorkerProcesses
) -> None:
    worker = worker_processes.spawn()
    assert await asyncio.wait_for(client.object("Tally", "dumped", "add").request(1), 60) == 1
    # ``hold`` keeps its key until a gate in the worker opens, which nothing here does.
    held = await client.object_send("Tally", "dumped", "hold").send()
    await client.object_send("Tally", "dumped", "add").send(1)

    def status() -> dict[str, Any]:
        text = worker.dump()
        assert "in _kafka_thread" in text, text  # the threads' stacks
        found = re.search(
            r"kourier: status\n(.*)\nkourier: \d+ asyncio tasks[^\n]*\n(.*)", text, re.S
        )
        assert found is not None, text
        assert "streams/kafka/worker.py" in found[2], text  # where the tasks wait
        parsed: dict[str, Any] = json.loads(found[1])
        return parsed

    async def queued() -> tuple[str | None, int]:
        ingress = (await asyncio.to_thread(status))["ingress"]
        holders = {k: v for p in ingress.values() for k, v in p["holders"].items()}
        return holders.get("Tally/dumped"), sum(p["queued"] for p in ingress.values())

    expected: tuple[str | None, int] = (held.invocation_id, 1)
    await poll_until(queued, expected, 60, "the held key and the call behind it")
    described = await asyncio.to_thread(status)
    owned = sorted(described["ingress"], key=int)
    assert owned == [str(p) for p in range(client.settings.partitions)]
    assert described["committer"]["failure"] is None
    # Still working: another key answers.
    assert await asyncio.wait_for(client.object("Tally", "other", "add").request(2), 60) == 2
    assert worker.process is not None
    assert worker.process.poll() is None


@pytest.mark.parametrize("handler", ["blocking_effect", "blocking_to_thread"])
async def test_a_worker_stops_though_a_handler_blocks_a_thread(
    handler: str, client: Client, worker_processes: WorkerProcesses
) -> None:
    """The hand-over leaves a synchronous ``ctx.run`` that does not return on its thread
    (it runs again on the next owner); the interpreter then waited for that thread as it
    exited, and the process with it, for as long as the action blocked (60 s here). The
    same goes for a handler's own ``asyncio.to_thread`` call, which ``asyncio.run`` waited
    for as it ended."""
    worker = worker_processes.spawn()
    assert await asyncio.wait_for(client.object("Tally", "stops", "add").request(1), 60) == 1
    await client.service_send("Relay", handler).send("never-released")

    async def blocking() -> bool:
        return "in _block" in await asyncio.to_thread(worker.dump)

    await poll_until(blocking, True, 60, "the action blocking its thread")
    assert worker.process is not None
    worker.process.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.to_thread(worker.process.wait, 30)
    except subprocess.TimeoutExpired:
        log = worker.read_text()[-3000:]
        raise AssertionError(f"still running 30 s after SIGTERM\n{log}") from None
    assert code == 0, worker.read_text()[-3000:]
    assert "blocking call(s) of handlers still on their threads" in worker.read_text()
