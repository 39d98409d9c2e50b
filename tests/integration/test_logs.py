"""A worker's log lines name the invocation they are about, in JSON when asked."""

from __future__ import annotations

import asyncio
import json
import re

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
    records: list[dict[str, object]] = []
    for _ in range(100):  # written as they are logged: bounded, for the file's flush
        records = _log_records(worker.log_file.read_text())
        if wanted <= {r["message"] for r in records}:
            break
        await asyncio.sleep(0.05)
    mine = [r for r in records if r["message"] in wanted]
    assert {r["message"] for r in mine} == wanted, records[-20:]
    assert {r["invocation_id"] for r in mine} == {inv_id}
    assert {r["logger"] for r in mine} == {"apps.notes"}
    started = [r for r in records if str(r["message"]).startswith("worker ")]
    assert started, "the worker logs its start"
    assert all("invocation_id" not in r for r in started), "a line about no invocation names one"
    text = TEXT_LINE.findall(worker.log_file.read_text())
    assert not text, f"log lines in the text format: {text[:3]}"


#: A log line in the text format (``2026-12-06 21:00:00,123 INFO kourier.worker ...``).
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ \S+ .*$", re.M)


def _log_records(text: str) -> list[dict[str, object]]:
    """Every JSON line (a last line may be half written); the file also holds the CLI's
    own messages (``kourier: ...``) and librdkafka's (``%4|...``), which are no records."""
    lines = text.splitlines()
    if not text.endswith("\n"):
        lines = lines[:-1]
    return [json.loads(line) for line in lines if line.startswith("{")]
