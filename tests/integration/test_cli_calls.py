"""The CLI against a real broker: `kourier call` and `kourier send` print the result, the
invocation id before the wait, and a word when no worker hosts the service; a server told
to listen on a port in use says so in one line."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from streams.client import Client
from streams.kafka.broker import free_port
from streams.kafka.worker import Worker
from streams.settings import Settings
from tests.integration.conftest import ROOT
from tests.integration.helpers import poll_until
from tests.processes import stop_process


def _env(settings: Settings) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), KOURIER_NAMESPACE=settings.namespace,
                KOURIER_BOOTSTRAP_SERVERS=settings.bootstrap_servers)  # fmt: skip


def _kourier(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "streams.cli", *args]
    return subprocess.run(command, cwd=ROOT, env=_env(settings), capture_output=True, text=True,
                          timeout=90)  # fmt: skip


def _spawn(settings: Settings, log: Path, *args: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "streams.cli", *args]
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env=_env(settings),
                                stdout=subprocess.DEVNULL, stderr=out)  # fmt: skip


async def test_a_call_prints_its_result_and_its_invocation_id(
    topics: Settings, worker: Worker, client: Client
) -> None:
    async def announced() -> bool:
        return "Tally" in await client.catalog(refresh=True)

    await poll_until(announced, True, 60, "the worker's services announced")
    done = await asyncio.to_thread(_kourier, topics, "call", "Tally/cli/add", "2")
    assert (done.returncode, done.stdout) == (0, "2\n"), done.stderr
    assert re.search(r"^invocation inv_[0-9a-f]+$", done.stderr, re.MULTILINE), done.stderr
    assert "no worker has announced" not in done.stderr
    sent = await asyncio.to_thread(_kourier, topics, "send", "Tally/cli/add", "3")
    assert sent.returncode == 0, sent.stderr
    again = await asyncio.to_thread(_kourier, topics, "call", "Tally/cli/count")
    assert again.stdout == "5\n", again.stderr


async def test_a_call_given_a_timeout_stops_waiting_and_names_what_to_attach_to(
    topics: Settings,
) -> None:
    """Without ``--timeout`` a call nobody answers waits for good (the test below)."""
    started = time.monotonic()
    done = await asyncio.to_thread(_kourier, topics, "call", "Nowhere/run", "1", "--timeout", "1s")
    took = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    found = re.search(r"no answer within 1s; invocation (inv_[0-9a-f]+) may still run", done.stderr)
    assert found is not None, done.stderr
    assert f"`kourier invocations attach {found.group(1)}`" in done.stderr
    assert took < 60, f"the call took {took:.0f} s to give up"
    bad = await asyncio.to_thread(_kourier, topics, "call", "Nowhere/run", "--timeout", "soon")
    assert (bad.returncode, bad.stderr.strip()) == (
        2, "kourier: error: --timeout 'soon': use 500ms, 5s, 10m or PT1M"
    )  # fmt: skip


async def test_a_call_no_worker_hosts_says_so_and_names_its_invocation_first(
    topics: Settings, tmp_path: Path
) -> None:
    """It waited in silence, and said its invocation id only once answered."""
    log = tmp_path / "call.log"
    process = await asyncio.to_thread(_spawn, topics, log, "call", "Nowhere/run", "1")
    try:

        async def told() -> bool:
            text = log.read_text()
            return "no worker has announced Nowhere" in text and "invocation inv_" in text

        await poll_until(told, True, 60, "the call's notice and invocation id")
        assert process.poll() is None, "the call ended instead of waiting for a worker"
        assert (
            "the call waits in Kafka until one does, and this command with it; a running"
            " worker that does not host it answers 404" in log.read_text()
        )
    finally:
        await asyncio.to_thread(stop_process, process)
    sent = await asyncio.to_thread(_kourier, topics, "send", "Nowhere/run", "1")
    assert sent.returncode == 0, sent.stderr
    assert (
        "no worker has announced Nowhere: with no worker running, the message waits in"
        " Kafka until one does, and this command returns" in sent.stderr
    )
    assert "invocation inv_" not in sent.stderr  # the receipt on stdout names it


async def test_a_send_a_worker_must_accept_names_its_invocation_and_takes_a_timeout(
    topics: Settings,
) -> None:
    """A send with an idempotency key waits for a worker to answer whether it is new: with
    no worker it waited for good, silent, after saying that it would return."""
    args = ("send", "Nowhere/k/run", "1", "--idempotency-key", "order-1", "--timeout", "1s")
    done = await asyncio.to_thread(_kourier, topics, *args)
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert "the message waits in Kafka until one does, and this command up to 1s;" in done.stderr
    assert "a running worker that does not host it answers 404" in done.stderr
    said = re.search(r"^invocation (inv_[0-9a-f]+)$", done.stderr, re.MULTILINE)
    assert said is not None, done.stderr
    assert f"no answer within 1s; invocation {said.group(1)} may still run" in done.stderr


async def test_a_port_in_use_is_one_line_that_names_it(topics: Settings) -> None:
    """The ingress's port and a worker's metrics port, taken: both end with exit 2 and
    one line naming the port (they ended in a traceback, the ingress's Kafka client open)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen()
        port = str(taken.getsockname()[1])
        commands = {
            "ingress": ("ingress", "--port", port, "--admin-port", str(free_port())),
            "admin": ("ingress", "--port", str(free_port()), "--admin-port", port),
            "worker": ("worker", "tests.integration.apps", "--metrics-port", port),
        }
        for name, args in commands.items():
            done = await asyncio.to_thread(_kourier, topics, *args)
            assert done.returncode == 2, f"{name}: {done.stderr[-2000:]}"
            assert f"kourier: error: cannot listen on 127.0.0.1:{port}: " in done.stderr, name
            assert "Traceback" not in done.stderr, done.stderr[-2000:]
