"""The broker's helper processes end: Maven and Kafka's StorageTool are stopped, with
everything they started, when they outlast their time, and a broker launched but not yet
written down is stopped when its start is interrupted. Stand-in scripts play Maven and
Java, so nothing here downloads or starts anything real."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from streams.kafka import broker


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie counts as ended.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:  # gone meanwhile
        return False


def _ends(pid: int, within: float = 10.0) -> bool:
    """Whether ``pid`` ends within ``within`` seconds. A process that was sent SIGKILL has
    closed its files (the pipe the command's output came by) a moment before it is a
    zombie: it is not a child here, so there is nothing to wait on but its state."""
    deadline = time.monotonic() + within
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_maven_that_hangs_is_stopped_with_what_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``mvn`` is a script whose JVM is its child: a resolve that hung (a repository that
    answers nothing) waited for ever, and killing only the script would leave the JVM."""
    (tmp_path / "bin").mkdir()
    child = tmp_path / "child.pid"
    # The JVM stand-in holds none of Maven's pipes: their end says nothing of it.
    _script(tmp_path / "bin" / "mvn", f"sleep 300 >/dev/null 2>&1 &\necho $! > {child}\nwait\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{Path(sys.executable).parent}:/usr/bin:/bin")
    monkeypatch.setenv("KOURIER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(broker, "MAVEN_TIMEOUT", 1.0)
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    (deploy / "pom.xml").write_text(
        "<project><properties><kafka.version>4.4.0</kafka.version></properties></project>\n"
    )
    with pytest.raises(broker.BrokerError, match="Maven did not finish within 1s"):
        broker.resolve_jars(deploy)
    pid = int(child.read_text())
    try:
        assert _ends(pid), "the JVM Maven started was left running"
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    left = list((tmp_path / "cache").rglob("*")) if (tmp_path / "cache").exists() else []
    assert [p for p in left if p.is_file()] == [], f"a stopped resolve left {left}"


def test_a_format_that_hangs_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    java = _script(tmp_path / "java", "exec sleep 30\n")
    monkeypatch.setattr(broker, "FORMAT_TIMEOUT", 1.0)
    with pytest.raises(broker.BrokerError, match="StorageTool did not finish within 1s"):
        broker._format_storage(str(java), tmp_path, tmp_path / "server.properties", tmp_path)


def test_a_format_that_fails_says_why(tmp_path: Path) -> None:
    java = _script(tmp_path / "java", "echo 'bad config' >&2\nexit 1\n")
    with pytest.raises(broker.BrokerError, match="formatting KRaft storage failed:\nbad config"):
        broker._format_storage(str(java), tmp_path, tmp_path / "server.properties", tmp_path)


def test_a_broker_launched_but_not_written_down_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C between the JVM's start and its PID file left a broker that no ``stop``
    could find (``stop`` goes by the PID file)."""
    java = _script(tmp_path / "java", "exec sleep 30\n")
    started: list[subprocess.Popen[bytes]] = []
    popen = subprocess.Popen

    def recorded(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        process: subprocess.Popen[bytes] = popen(*args, **kwargs)
        started.append(process)
        return process

    write_text = Path.write_text

    def interrupted(path: Path, *args: Any, **kwargs: Any) -> int:
        if path.name == "broker.pid":
            raise KeyboardInterrupt
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(broker.subprocess, "Popen", recorded)
    monkeypatch.setattr(Path, "write_text", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            broker._launch(str(java), tmp_path, tmp_path / "p", tmp_path, tmp_path, "256m")
        assert len(started) == 1
        assert started[0].poll() is not None, "the launched broker was left running"
    finally:
        for process in started:
            process.kill()
            process.wait(10)
