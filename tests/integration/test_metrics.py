"""A worker process's Prometheus metrics, scraped over HTTP after real traffic."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from handlers import TerminalError
from streams.client import Client
from streams.kafka.broker import free_port
from tests.integration.conftest import WorkerProcesses


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of ``name`` with exactly these labels, if present."""
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    return None


async def test_worker_metrics_count_invocations_and_partitions(
    client: Client, worker_processes: WorkerProcesses
) -> None:
    port = free_port()
    worker_processes.spawn(env={"KOURIER_METRICS_PORT": str(port)})
    for n in range(5):
        assert await client.object("Tally", "metered", "add").request(1) == n + 1
    with pytest.raises(TerminalError):
        await client.object("Tally", "metered", "refuse").request(418)
    url = f"http://127.0.0.1:{port}/metrics"
    text = ""
    async with aiohttp.ClientSession() as http:
        deadline = asyncio.get_running_loop().time() + 30
        while asyncio.get_running_loop().time() < deadline:
            async with http.get(url) as reply:
                text = await reply.text()
            if sample(text, "kourier_consumer_lag", topic=f"{client.topics.ingress}",
                      partition="0") is not None:  # fmt: skip
                break
            await asyncio.sleep(0.2)
    ok = sample(text, "kourier_invocations_total", service="Tally", handler="add",
                outcome="success")  # fmt: skip
    failed = sample(text, "kourier_invocations_total", service="Tally", handler="refuse",
                    outcome="failure")  # fmt: skip
    assert (ok, failed) == (5.0, 1.0), text[:2000]
    assert sample(text, "kourier_invocation_seconds_count", service="Tally", handler="add") == 5
    assert sample(text, "kourier_handler_seconds_count", service="Tally", handler="add") == 5
    partitions = client.partitions
    for partition in range(partitions):
        lag = sample(text, "kourier_consumer_lag", topic=client.topics.ingress,
                     partition=str(partition))  # fmt: skip
        assert lag is not None, f"no lag gauge for partition {partition}"
        assert sample(text, "kourier_inbox_depth", partition=str(partition)) == 0
        assert sample(text, "kourier_pending_timers", partition=str(partition)) == 0
