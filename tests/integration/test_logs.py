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
    own = [r for r in records if str(r["logger"]).startswith("kourier.")]
    assert own, "the worker logs its start"
    assert all("invocation_id" not in r for r in own if r["message"] not in wanted), (
        "a line about no invocation names one"
    )


def _log_records(text: str) -> list[dict[str, object]]:
    """Every line Python logged, as JSON (a last line may be half written). The CLI's own
    messages (``kourier: ...``) and librdkafka's (``%4|...``) are not log records."""
    lines = text.splitlines()
    if not text.endswith("\n"):
        lines = lines[:-1]
    return [json.loads(line) for line in lines
            if line.strip() and not line.startswith(("kourier:", "%"))]  # fmt: skip
