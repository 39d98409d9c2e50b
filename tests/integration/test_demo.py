"""The README's first command runs the demo; this keeps the demo working."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.processes import alive

ROOT = Path(__file__).resolve().parents[2]


def ended(demo: subprocess.Popen[str], seconds: float) -> tuple[str, str]:
    """``demo``'s output once it ends, or, ``seconds`` on, once SIGTERM has ended it: its
    clean-up stops the broker, the worker and the ingress it started (SIGKILL, which
    ``subprocess.run``'s timeout sends, left all three running)."""
    try:
        return demo.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        demo.send_signal(signal.SIGTERM)
        try:
            out, err = demo.communicate(timeout=150)  # its clean-up takes 90 s at most
        except subprocess.TimeoutExpired:
            demo.kill()
            out, err = demo.communicate()
        raise AssertionError(
            f"the demo ran past {seconds:.0f}s\n{out[-3000:]}{err[-3000:]}"
        ) from None


@pytest.mark.timeout(480)  # past ended()'s own waits
def test_the_demo_runs_end_to_end() -> None:
    """Started as the README says, from another directory (``examples`` was then not
    found), and with a user's own ``KOURIER_TOKEN`` exported (its worker and ingress took
    it, and every call the demo made was a 401)."""
    env = dict(os.environ, KOURIER_TOKEN="the-users-own")
    demo = subprocess.Popen(
        [str(ROOT / "deploy" / "demo.sh")],
        cwd=ROOT / "deploy",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = ended(demo, 300)
    assert demo.returncode == 0, out[-3000:] + err[-3000:]
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


@pytest.mark.timeout(420)  # past the watchdog's and the waits' own
def test_a_demo_ended_by_sigterm_stops_its_broker() -> None:
    """Python's default for SIGTERM ended the demo without its ``finally``: the broker, in a
    session of its own, went on running."""
    demo = subprocess.Popen(
        [sys.executable, "-m", "examples.demo"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    pid = None
    # The read below ends with the demo; SIGTERM, so that it stops what it started.
    watchdog = threading.Timer(180, demo.send_signal, (signal.SIGTERM,))
    watchdog.start()
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            found = re.match(r"broker pid (\d+) at ", line)
            if found:
                pid = int(found.group(1))
                break
        assert pid is not None, "the demo said no broker pid"
        demo.send_signal(signal.SIGTERM)
        rest = demo.communicate(timeout=90)[0]
        assert demo.returncode == 128 + signal.SIGTERM, rest[-2000:]
        assert "stopping the ingress, the worker and the broker" in rest
        deadline = time.monotonic() + 10
        while alive(pid):
            assert time.monotonic() < deadline, f"broker {pid} still runs after the demo ended"
            time.sleep(0.1)
    finally:
        watchdog.cancel()
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)
