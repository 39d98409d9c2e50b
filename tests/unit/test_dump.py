"""``kill -USR1``: what the dump writes, and that the signal never ends a process
(streams/cli/dump.py; a worker's dump over Kafka is in tests/integration/test_processes.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from streams.cli import dump


def test_the_stacks_name_each_thread_once() -> None:
    gate = threading.Event()
    helper = threading.Thread(target=gate.wait, name="kourier-test-helper")
    helper.start()
    try:
        text = dump._stacks()
    finally:
        gate.set()
        helper.join(30)
    assert re.search(r"^kourier: stacks of \d+ threads$", text, re.M), text
    for name in ("MainThread", "kourier-test-helper"):
        headers = re.findall(rf"^Thread 0x[0-9a-f]{{16}} {name} \(most recent call last\):$",
                             text, re.M)  # fmt: skip
        assert len(headers) == 1, text
    assert ", in wait\n" in text, text  # the helper's stack, down to its wait


async def test_a_dump_gives_the_status_and_counts_tasks_by_place(
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
    assert "MainThread" not in text, text  # the stacks, written before, name the threads
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

        dump.listen()
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
    # The signal sent before ``install`` may be taken before or after it: one or two dumps.
    assert 1 <= done.stderr.count(dump.END) <= 2, done.stderr
    main_thread = r"^Thread 0x[0-9a-f]{16} MainThread \(most recent call last\):\n"
    assert re.search(main_thread + r"(?:.*\n)*?  File .*, in run_until_complete\n",
                     done.stderr, re.M), done.stderr  # fmt: skip


def test_sigusr1_while_threads_start_and_end_does_not_crash_the_process() -> None:
    """A worker starts threads (``asyncio.to_thread``) while it runs. A dump that reads the
    stacks of threads which go on running (:mod:`faulthandler` from the signal handler)
    crashes the process when one starts or ends meanwhile; the dump's own thread reads
    them holding the GIL. Each signal is sent once the dump before it has ended, and each
    dump must have the stacks, the churning threads' among them."""
    script = textwrap.dedent(
        """
        import asyncio, sys, threading
        from streams.cli import dump

        dump.from_the_start()

        def churn():
            while True:
                started = threading.Thread(target=threading.Event)
                started.start()
                started.join()

        async def main():
            dump.install(asyncio.get_running_loop(), dict)
            for _ in range(3):
                threading.Thread(target=churn, daemon=True).start()
            print("ready", file=sys.stderr, flush=True)
            await asyncio.to_thread(sys.stdin.read)  # until the test ends it

        asyncio.run(main())
        """
    )
    lines: queue.Queue[str] = queue.Queue()
    process = subprocess.Popen([sys.executable, "-c", script], text=True, stdin=subprocess.PIPE,
                               stderr=subprocess.PIPE)  # fmt: skip

    def read() -> None:
        for line in process.stderr or ():
            lines.put(line)

    def until(last: str, what: str) -> str:
        """The lines up to ``last``, within 30 s, while the process runs."""
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while not (seen and seen[-1] == last):
            assert process.poll() is None, (
                f"ended with {process.returncode} {what}:\n{''.join(seen[-40:])}"
            )
            left = deadline - time.monotonic()
            assert left > 0, f"no {last.strip()!r} {what} in 30s:\n{''.join(seen[-40:])}"
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=min(left, 0.5)))
        return "".join(seen)

    try:
        threading.Thread(target=read, daemon=True).start()
        until("ready\n", "before it was ready")
        for sent in range(1, 301):
            process.send_signal(signal.SIGUSR1)
            text = until(f"{dump.END}\n", f"at signal {sent}")
            assert re.search(r"^kourier: stacks of \d+ threads\n", text, re.M), text
            assert ", in churn\n" in text, text
        assert process.poll() is None
    finally:
        process.kill()
        process.wait(30)


def test_a_process_started_under_default_mask_gets_sigusr1_unblocked() -> None:
    """A process started by a thread inherits its signal mask; ``kourier dev`` starts its
    brokers under ``default_mask``, so that they do not inherit the dump's block."""
    script = textwrap.dedent(
        """
        import subprocess
        from streams.cli import dump

        def blocked():
            status = subprocess.run(["cat", "/proc/self/status"], capture_output=True,
                                    text=True, check=True).stdout
            mask = next(line for line in status.splitlines() if line.startswith("SigBlk:"))
            return bool(int(mask.split()[1], 16) & (1 << (10 - 1)))  # SIGUSR1 is 10

        dump.listen()
        inherited = blocked()
        with dump.default_mask():
            unblocked = not blocked()
        print(inherited, unblocked, blocked())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "True True True\n", "inherited, unblocked, blocked again"


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
