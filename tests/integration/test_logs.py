"""A worker's log lines name the invocation they are about, in JSON when asked."""

from __future__ import annotations

import asyncio
import json

from streams.client import Client
from tests.integration.conftest import WorkerProcesses


async def test_a_handlers_log_lines_name_its_invocation_in_json(
    client: Client, worker_processes: WorkerProcesses
) -> None:
    """DESIGN §8: structured logs carry the invocation id; a handler's own lines too, and
    those of its ``ctx.run`` action on a thread."""
    worker = worker_processes.spawn(env={"KOURIER_LOG_FORMAT": "json"})
    inv_id = await asyncio.wait_for(client.service("Relay", "note").request("hello"), 60)
    assert worker.log_file is not None
    wanted = {"noted hello", "noted on a thread hello"}
    for _ in range(100):  # written as they are logged: bounded, for the file's flush
        lines = worker.log_file.read_text().splitlines()
        if wanted <= {json.loads(line)["message"] for line in lines if line.startswith("{")}:
            break
        await asyncio.sleep(0.05)
    # Every log line is JSON (the CLI's own messages, "kourier: ...", are not log lines).
    records = [
        json.loads(line) for line in lines if line.strip() and not line.startswith("kourier:")
    ]
    mine = [r for r in records if r["message"] in wanted]
    assert len(mine) == 2, lines[-20:]
    assert {r["invocation_id"] for r in mine} == {inv_id}
    assert {r["logger"] for r in mine} == {"apps.notes"}
    started = [r for r in records if "invocation_id" not in r]
    assert started, "the worker's own lines outside an attempt name no invocation"
