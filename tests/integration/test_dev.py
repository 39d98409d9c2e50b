"""``kourier dev MODULE``: a broker of its own, the topics, a worker and the ingress in one
process (DESIGN §6), and the broker stopped by PID when it ends."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from streams.kafka.broker import free_port
from tests.integration.helpers import poll_until
from tests.processes import alive, stop_process

ROOT = Path(__file__).resolve().parents[2]


def _start_dev(data: Path, log: Path, port: int, admin: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KOURIER_") or k == "KOURIER_CACHE"}  # fmt: skip
    with log.open("wb") as out:  # the process has its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "dev", "examples.quickstart", "--data",
             str(data), "--port", str(port), "--admin-port", str(admin), "--partitions", "2"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


@pytest.mark.parametrize("ending", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup"])
async def test_dev_starts_its_broker_serves_calls_and_stops_the_broker(
    tmp_path: Path, ending: signal.Signals
) -> None:
    """A closed terminal (SIGHUP) ended dev at once, and its broker, in a session of its
    own, ran on."""
    data, log = tmp_path / "broker", tmp_path / "dev.log"
    port, admin = free_port(), free_port()
    dev = _start_dev(data, log, port, admin)
    broker_pid = None
    try:
        url = f"http://127.0.0.1:{port}"

        async def greeted() -> object:
            assert dev.poll() is None, f"kourier dev ended: {log.read_text()[-2000:]}"
            try:
                async with (
                    aiohttp.ClientSession() as http,
                    http.post(f"{url}/Greeter/greet", json="Ada") as reply,
                ):
                    return await reply.json() if reply.status == 200 else reply.status
            except aiohttp.ClientError:
                return None

        await poll_until(greeted, "Hello Ada", 120, f"a call through dev ({log})")
        broker_pid = int((data / "broker.pid").read_text())
        assert alive(broker_pid)
        dev.send_signal(ending)
        assert await asyncio.to_thread(dev.wait, 60) == 0, log.read_text()[-2000:]
        for _ in range(100):  # stopped by dev before it exits; bounded for the reaping
            if not alive(broker_pid):
                break
            await asyncio.sleep(0.1)
        assert not alive(broker_pid), "the broker dev started is still running"
    finally:
        stop_process(dev)
        if broker_pid is not None and alive(broker_pid):
            os.kill(broker_pid, signal.SIGKILL)


async def test_dev_ended_while_its_broker_starts_stops_the_broker(tmp_path: Path) -> None:
    """Before its event loop runs, SIGTERM had its default action: dev died where it was
    (starting the broker, creating topics) and left the broker it had launched running."""
    data, log = tmp_path / "broker", tmp_path / "dev.log"
    dev = _start_dev(data, log, free_port(), free_port())
    broker_pid = None
    try:

        async def launched() -> bool:
            assert dev.poll() is None, f"kourier dev ended: {log.read_text()[-2000:]}"
            return (data / "broker.pid").is_file()

        await poll_until(launched, True, 120, "the broker launched")
        broker_pid = int((data / "broker.pid").read_text())
        dev.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(dev.wait, 60)
        assert code != 0, "it ended before it served: not a clean exit"
        for _ in range(100):  # stopped by dev before it exits; bounded for the reaping
            if not alive(broker_pid):
                break
            await asyncio.sleep(0.1)
        assert not alive(broker_pid), f"the broker dev started is still running: {code}"
    finally:
        stop_process(dev)
        if broker_pid is not None and alive(broker_pid):
            os.kill(broker_pid, signal.SIGKILL)
