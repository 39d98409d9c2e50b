"""``kill -USR1``: what the dump writes, and that the signal never ends a process
(streams/cli/dump.py; a worker's dump over Kafka is in tests/integration/test_processes.py)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from streams.cli import dump


async def test_a_dump_names_the_threads_gives_the_status_and_counts_tasks_by_place(
    capsys: pytest.CaptureFixture[str],
) -> None:
    gate = asyncio.Event()
    waiting = [asyncio.create_task(gate.wait(), name=f"waiter-{i}") for i in range(7)]
    await asyncio.sleep(0)
    try:
        dump._dump(lambda: {"ingress": {0: {"queued": 2}, 1: {"queued": 0}}, "stopping": False})
    finally:
        gate.set()
        await asyncio.gather(*waiting)
    text = capsys.readouterr().err
    assert re.search(r"^kourier: \d+ threads$", text, re.M), text
    assert re.search(r"^  0x[0-9a-f]{16} MainThread$", text, re.M), text
    found = re.search(r"kourier: status\n(.*?)\nkourier: (\d+) asyncio tasks", text, re.S)
    assert found is not None, text
    assert json.loads(found[1]) == {"ingress": {"0": {"queued": 2}, "1": {"queued": 0}},
                                    "stopping": False}  # fmt: skip
    # The seven waiters wait at one place, shown once, with five of their names.
    assert "7 (waiter-0, waiter-1, waiter-2, waiter-3, waiter-4, ...):\n" in text, text
    assert "in wait\n" in text
    assert text.endswith(f"{dump.END}\n")


async def test_a_status_that_fails_still_gives_the_rest(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def broken() -> dict[str, int]:
        raise RuntimeError("no look")

    dump._dump(broken)
    text = capsys.readouterr().err
    assert "(no status: RuntimeError('no look'))" in text
    assert text.endswith(f"{dump.END}\n")


def test_sigusr1_before_install_and_after_uninstall_does_not_end_the_process() -> None:
    script = textwrap.dedent(
        """
        import asyncio, os, signal
        from streams.cli import dump

        dump.ignore()
        os.kill(os.getpid(), signal.SIGUSR1)

        async def main():
            loop = asyncio.get_running_loop()
            looked = asyncio.Event()
            dump.install(loop, lambda: looked.set() or {})
            os.kill(os.getpid(), signal.SIGUSR1)
            await asyncio.wait_for(looked.wait(), 30)  # the loop's part has run
            dump.uninstall(loop)

        asyncio.run(main())
        os.kill(os.getpid(), signal.SIGUSR1)
        print("alive")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "alive\n"
    assert done.stderr.count(dump.END) == 1, done.stderr
    assert "Current thread 0x" in done.stderr  # faulthandler's part


def test_a_process_that_crashes_writes_every_threads_stack_before_it_ends(
    tmp_path: Path,
) -> None:
    """A fatal signal in a ``kourier worker`` (a crash in native code), here while it loads
    its services, before anything else, leaves the threads' stacks in its log, not a log
    that just stops."""
    (tmp_path / "crashes_on_import.py").write_text(
        textwrap.dedent(
            """
            import os, signal, threading

            parked, never = threading.Event(), threading.Event()

            def parked_thread():
                parked.set()
                never.wait()

            def crash_here():
                os.kill(os.getpid(), signal.SIGSEGV)

            threading.Thread(target=parked_thread, name="parked", daemon=True).start()
            parked.wait(30)
            crash_here()
            """
        )
    )
    unset = ("OTEL_", "PYTHONFAULT", "PYTHONDEVMODE")  # the last two enable it themselves
    env = {k: v for k, v in os.environ.items() if not k.startswith(unset)}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])  # run from tmp_path
    command = [sys.executable, "-m", "streams.cli", "worker", "crashes_on_import"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False,
                          env=env, cwd=tmp_path)  # fmt: skip
    assert done.returncode == -signal.SIGSEGV, done.stderr
    assert "Fatal Python error: Segmentation fault" in done.stderr, done.stderr
    assert "in crash_here" in done.stderr, done.stderr  # the thread that crashed
    assert "in parked_thread" in done.stderr, done.stderr  # and the others
