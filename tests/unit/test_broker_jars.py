"""The broker jar cache: one directory per revision of ``deploy/kafka/pom.xml``, resolved
once, and never replaced under a broker that runs from it.

Maven is replaced by a script on ``PATH`` that copies the pom it was given into one "jar"
and counts its runs, so nothing here downloads anything.
"""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from streams.kafka import broker
from streams.kafka import ports as free_ports

FAKE_MVN = """#!/bin/sh
# Stand-in for `mvn -f POM dependency:copy-dependencies`: one "jar" holding the pom it
# came from, and one line per run.
echo run >> "$FAKE_MVN_RUNS"
prev=
for arg in "$@"; do
  case "$arg" in
    -DoutputDirectory=*) out="${arg#-DoutputDirectory=}" ;;
  esac
  [ "$prev" = -f ] && pom="$arg"
  prev="$arg"
done
"""
WRITE_JAR = 'mkdir -p "$out" && cp "$pom" "$out/kafka-server.jar"\n'

POM = "<project><properties><kafka.version>4.4.0</kafka.version></properties>{}</project>\n"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache directory of its own and the fake Maven first on ``PATH``; its runs are
    counted in ``tmp_path / "runs"``."""
    (tmp_path / "bin").mkdir()
    _maven(tmp_path, WRITE_JAR)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{Path(sys.executable).parent}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_MVN_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("KOURIER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "kafka-4.4.0"


def _maven(tmp_path: Path, then: str) -> None:
    """The fake Maven, finding its arguments and then running the shell lines ``then``."""
    mvn = tmp_path / "bin" / "mvn"
    mvn.write_text(FAKE_MVN + then)
    mvn.chmod(mvn.stat().st_mode | stat.S_IXUSR)


def _deploy(tmp_path: Path, extra: str) -> Path:
    deploy = tmp_path / "deploy"
    deploy.mkdir(exist_ok=True)
    (deploy / "pom.xml").write_text(POM.format(extra))
    return deploy


def _runs(tmp_path: Path) -> int:
    runs = tmp_path / "runs"
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_jars_are_resolved_once_per_pom(tmp_path: Path, cache: Path) -> None:
    deploy = _deploy(tmp_path, "")
    libs = broker.resolve_jars(deploy)
    assert libs.parent == cache
    assert (libs / "kafka-server.jar").read_text() == POM.format("")
    assert broker.resolve_jars(deploy) == libs
    assert _runs(tmp_path) == 1, "the second call must reuse the resolved jars"
    assert _files(cache) == [libs.name, f"{libs.name}/kafka-server.jar"], "staging left behind"


def test_a_new_pom_leaves_the_jars_a_broker_may_run_from(tmp_path: Path, cache: Path) -> None:
    old = broker.resolve_jars(_deploy(tmp_path, ""))
    new = broker.resolve_jars(_deploy(tmp_path, "<!-- tools -->"))
    assert new != old
    assert (new / "kafka-server.jar").read_text() == POM.format("<!-- tools -->")
    jar = old / "kafka-server.jar"
    assert jar.is_file(), "the older jars were removed"
    assert jar.read_text() == POM.format(""), "the older jars were replaced in place"
    assert _runs(tmp_path) == 2


def test_jars_another_process_put_in_place_first_are_used(tmp_path: Path, cache: Path) -> None:
    # Maven finishes after another resolve of the same pom already renamed its jars in.
    other = 'digest="${out##*/staging-}"; target="${out%/*}/libs-${digest%%.*}"\n'
    other += 'mkdir -p "$target" && echo theirs > "$target/kafka-server.jar"\n'
    _maven(tmp_path, other + WRITE_JAR)
    libs = broker.resolve_jars(_deploy(tmp_path, ""))
    assert (libs / "kafka-server.jar").read_text() == "theirs\n"
    assert _files(cache) == [libs.name, f"{libs.name}/kafka-server.jar"], "staging left behind"


@pytest.mark.parametrize(
    ("then", "error"),
    [
        (WRITE_JAR + "echo 'no network' >&2\nexit 1\n", "no network"),  # stopped half way
        ("exit 0\n", "Maven wrote no jars"),
    ],
)
def test_a_failed_resolve_leaves_nothing(
    tmp_path: Path, cache: Path, then: str, error: str
) -> None:
    _maven(tmp_path, then)
    with pytest.raises(broker.BrokerError, match=error):
        broker.resolve_jars(_deploy(tmp_path, ""))
    assert not cache.exists() or _files(cache) == [], f"a failed resolve left {_files(cache)}"


def test_a_pid_file_names_only_the_broker_of_its_own_data_directory(tmp_path: Path) -> None:
    """A node killed outright leaves its ``broker.pid``; once another data directory's broker
    took that PID over, ``status`` called the dead node running and ``stop`` killed the other
    broker. A broker counts as the directory's when its command names its properties."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "kafka.Kafka",
                              str(tmp_path / "elsewhere" / "server.properties")])  # fmt: skip
    try:
        mine = tmp_path / "mine"
        mine.mkdir()
        (mine / "server.properties").write_text("advertised.listeners=PLAINTEXT://127.0.0.1:1\n")
        (mine / "broker.pid").write_text(str(other.pid))
        assert broker.status(mine) is None
        assert broker.stop(mine, timeout=1) is False
        assert other.poll() is None, "another directory's broker was stopped"
    finally:
        other.kill()
        other.wait(10)


def test_a_clusters_controller_ports_are_none_of_its_listener_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Controller ports were drawn at random without the listener ports given, and written
    down: one drawn equal to ``--port`` + 1 failed every start of the cluster."""
    monkeypatch.setattr(free_ports.random, "randrange", lambda low, high: 30001)
    dirs = [tmp_path / f"node-{i}" for i in (1, 2, 3)]
    broker._write_nodes(dirs, [30000, 30001, 30002], broker.DEPLOY_DIR)
    ports = []
    for node in dirs:
        text = (node / "server.properties").read_text()
        ports += [int(p) for p in re.findall(r"^listeners=.*?:(\d+),.*?:(\d+)$", text, re.M)[0]]
    assert len(ports) == len(set(ports)) == 6, ports
