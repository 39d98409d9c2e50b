"""The README's first command runs the demo; this keeps the demo working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_runs_end_to_end() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "examples.demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert '200 "Hello Ada"' in out
    assert "200 7" in out  # 5 then 2 added to one counter
    assert '"status": "Accepted"' in out
    assert "200 30" in out  # three one-way sends of 10, each applied once
    assert "add/send?delay=2s" in out
    assert "200 0" in out  # the delayed send has not run yet
    assert "applied" in out
    assert out.count("-H 'idempotency-key: order-17'") == 2
    assert "200 50" in out  # dave's counter after two idempotent adds of 50
    assert "/restate/attach/inv_" in out
    assert '400 {"code": 400, "message": "name must not be empty"}' in out
    assert '/cancel\n  202 {"invocationId": "inv_' in out
    assert '200 "released"' in out  # the cancelled hold compensated
    assert '"status": "PreviouslyAccepted"' in out  # a workflow's run sent twice
    assert "/restate/workflow/Signup/ada/attach\n  200 true" in out
    assert '"request_id":"demo-kcat"' in out
    assert "stopping the ingress, the worker and the broker" in out
