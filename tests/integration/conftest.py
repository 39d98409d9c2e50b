"""Fixtures for tests against the real broker: topics, workers, ingress."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from handlers.service import ServiceDefinition
from streams.cli import dump
from streams.client import Client
from streams.http.ingress import Ingress, shut_down
from streams.http.shared import app_runner
from streams.kafka.admin import create_topics
from streams.kafka.broker import free_port
from streams.kafka.worker import Worker
from streams.settings import Settings
from tests.integration import apps
from tests.integration.helpers import poll_until
from tests.processes import stop_process

ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def topics(settings: Settings) -> Settings:
    """Settings whose namespace has all its topics."""
    create_topics(settings)
    return settings


@contextlib.asynccontextmanager
async def in_process_worker(
    settings: Settings, services: list[ServiceDefinition], worker_id: str
) -> AsyncIterator[Worker]:
    """A worker hosting ``services`` on this event loop, stopped on the way out."""
    running = Worker(settings, services, worker_id=worker_id)
    task = asyncio.create_task(running.run())
    try:
        yield running
    finally:
        running.stop()
        await asyncio.wait_for(task, 60)


@pytest.fixture
async def worker(topics: Settings) -> AsyncIterator[Worker]:
    """An in-process worker hosting tests.integration.apps, stopped after the test."""
    async with in_process_worker(topics, apps.SERVICES, f"inproc-{topics.namespace}") as running:
        yield running
    apps.GATES.clear()
    apps.STARTED.clear()


@pytest.fixture
async def client(topics: Settings) -> AsyncIterator[Client]:
    async with Client(topics) as connected:
        yield connected


@contextlib.asynccontextmanager
async def served_ingress(settings: Settings, **options: int) -> AsyncIterator[tuple[Ingress, str]]:
    """An in-process HTTP ingress (and its admin API) on free ports, once the worker's
    services are announced; yields it and its URL (``ADMIN_URLS`` maps that to the admin)."""
    ingress = Ingress(settings, **options)
    await ingress.start()  # closes what it started if it fails
    runners = []
    urls = []
    try:

        async def announced() -> bool:
            return set(ingress.client.services) >= {s.name for s in apps.SERVICES}

        # A worker's first transactions can be slow on a cold broker: wait, then say so.
        await poll_until(announced, True, 60, "the worker's services known to the ingress")
        for app in (ingress.app(), ingress.admin.app()):
            runner = app_runner(app)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            runners.append(runner)
            urls.append(f"http://127.0.0.1:{port}")
        ADMIN_URLS[urls[0]] = urls[1]
        yield ingress, urls[0]
    finally:
        await shut_down(ingress, runners)


@pytest.fixture
async def ingress_url(topics: Settings, worker: Worker) -> AsyncIterator[str]:
    """An in-process HTTP ingress on a free port; the worker has announced its services."""
    async with served_ingress(topics) as (_, url):
        yield url


#: The admin API that goes with each ingress URL the ``ingress_url`` fixture served.
ADMIN_URLS: dict[str, str] = {}


@pytest.fixture
def admin_url(ingress_url: str) -> str:
    """The admin API (``/invocations``, ``/services``, ``/state``) of ``ingress_url``."""
    return ADMIN_URLS[ingress_url]


class WorkerProcess:
    """``kourier worker`` (or ``argv``, another Python program of this project) as a real
    process in the namespace of ``settings``, stopped by PID."""

    def __init__(
        self,
        settings: Settings,
        module: str,
        log_dir: Path,
        extra_env: dict[str, str] | None = None,
        argv: list[str] | None = None,
    ) -> None:
        self.settings = settings
        self.module = module
        self.log_dir = log_dir
        self.extra_env = extra_env or {}
        self.argv = argv or ["-m", "streams.cli", "worker", module]
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_file: Path | None = None

    def start(self) -> None:
        env = dict(os.environ)
        env.update(
            KOURIER_BOOTSTRAP_SERVERS=self.settings.bootstrap_servers,
            KOURIER_NAMESPACE=self.settings.namespace,
            PYTHONPATH=str(ROOT),
        )
        env.update(self.extra_env)
        self.starts += 1
        self.log_file = self.log_dir / f"worker-{id(self)}-{self.starts}.log"
        log = self.log_file.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, *self.argv],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        if self.process is not None:
            stop_process(self.process, timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def read_text(self) -> str:
        """Its log so far (standard output and error)."""
        return "" if self.log_file is None else self.log_file.read_text(errors="replace")

    def dump(self, timeout: float = 10) -> str:
        """What the running process is doing (``kill -USR1``, streams/cli/dump.py): the
        text its log gained up to the dump's last line; a note instead when it has exited
        or did not finish one within ``timeout`` (the threads' stacks come regardless)."""
        if self.process is None or self.process.poll() is not None or self.log_file is None:
            return f"(worker {self.process and self.process.pid} is not running)"
        start = self.log_file.stat().st_size
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.log_file.read_bytes()[start:].decode(errors="replace")
            if dump.END in text:
                return text[: text.index(dump.END)]
            if self.process.poll() is not None:
                return f"{text}\n(worker {self.pid} exited with {self.process.returncode})"
            time.sleep(0.05)
        return f"{text}\n(no end of the dump of worker {self.pid} after {timeout}s)"


class WorkerProcesses:
    """Starts worker processes for one test and stops every one of them afterwards."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.started: list[WorkerProcess] = []

    def spawn(
        self,
        module: str = "tests.integration.apps",
        env: dict[str, str] | None = None,
        argv: list[str] | None = None,
    ) -> WorkerProcess:
        process = WorkerProcess(self.settings, module, self.log_dir, env, argv)
        process.start()
        self.started.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.log_dir.glob("worker-*.log")))

    def dumps(self) -> str:
        """A dump of every worker still running (:meth:`WorkerProcess.dump`), and how each
        of the others ended (a negative code is the signal: -9 for a kill, -11 a crash)."""
        said = []
        for p in self.started:
            if p.process is None:
                continue
            code = p.process.poll()
            said.append(f"== worker {p.pid}\n{p.dump()}" if code is None
                        else f"== worker {p.pid} exited with {code}")  # fmt: skip
        return "\n".join(said)


@pytest.fixture
def worker_processes(topics: Settings, tmp_path: Path) -> Iterator[WorkerProcesses]:
    processes = WorkerProcesses(topics, tmp_path)
    yield processes
    for process in processes.started:
        with contextlib.suppress(Exception):
            process.stop()
