"""The CLI's output closed before it is written (``kourier ... | head``): the command ends
quietly, with 141, as SIGPIPE would end it."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest


def test_output_closed_early_ends_the_command_quietly() -> None:
    """``kourier ... | head``: a reader gone before the output is written ends the command
    as SIGPIPE would, with no error line and no "Exception ignored" at exit."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "streams.cli", "schema"],
            stdout=write, stderr=subprocess.PIPE, text=True, timeout=60,
        )  # fmt: skip
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, "")


def test_a_short_output_closed_early_ends_the_command_quietly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Less than a buffer's worth, printed without a flush, is written at exit, where the
    closed output was met outside the command: "Exception ignored ... BrokenPipeError"."""
    from streams.cli import commands, parser

    read, write = os.pipe()
    os.close(read)
    piped = io.TextIOWrapper(io.BufferedWriter(io.FileIO(write, "w")))
    monkeypatch.setattr(sys, "stdout", piped)
    monkeypatch.setattr(commands, "acls", lambda args: print("one short line") or 0)
    try:
        assert parser.main(["acls", "--client", "User:web"]) == 141
    finally:
        piped.close()  # what was left goes to /dev/null now


def test_a_closed_output_is_not_a_try_again(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``kourier ... | head -1``: a ``BrokenPipeError`` is a ``ConnectionError``, and said
    "try again" to a command that had done its work (now: nothing, as below)."""
    from streams.cli import commands, parser

    def piped(args: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(commands, "acls", piped)
    assert parser.main(["acls", "--client", "User:web"]) == 141
    assert capsys.readouterr().err == ""


def test_a_command_started_with_its_output_closed_ends_as_before() -> None:
    """``kourier ... >&-``: Python has no ``sys.stdout`` then, and ``print`` writes nothing;
    the flush after the command raised ``AttributeError``, a traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "schema"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=60,
        preexec_fn=lambda: os.close(1),  # (the child only closes its standard output)
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
