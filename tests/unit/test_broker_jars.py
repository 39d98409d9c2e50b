"""The broker jar cache: one directory per revision of ``deploy/kafka/pom.xml``, resolved
once, and an older one kept while a broker runs from it.

Maven is replaced by a script on ``PATH`` that writes one jar named after the pom's
``<kafka.version>`` and counts its runs, so nothing here downloads anything.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streams.kafka import broker

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
mkdir -p "$out" && cp "$pom" "$out/kafka-server.jar"
"""

POM = "<project><properties><kafka.version>4.4.0</kafka.version></properties>{}</project>\n"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache directory of its own and the fake Maven first on ``PATH``; its runs are
    counted in ``tmp_path / "runs"``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mvn = bin_dir / "mvn"
    mvn.write_text(FAKE_MVN)
    mvn.chmod(mvn.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_MVN_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("KOURIER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _deploy(tmp_path: Path, extra: str) -> Path:
    deploy = tmp_path / "deploy"
    deploy.mkdir(exist_ok=True)
    (deploy / "pom.xml").write_text(POM.format(extra))
    return deploy


def _runs(tmp_path: Path) -> int:
    runs = tmp_path / "runs"
    return len(runs.read_text().splitlines()) if runs.exists() else 0


@pytest.fixture
def fake_broker() -> Iterator[Callable[[Path], None]]:
    """Starts processes whose command line reads like a broker's running from a given jar
    directory; each is stopped by PID at the end."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(libs: Path) -> None:
        command = [sys.executable, "-c", "import sys; sys.stdin.read()"]
        command += ["-cp", f"{libs}/*", "kafka.Kafka"]
        processes.append(subprocess.Popen(command, stdin=subprocess.PIPE))

    yield start
    for process in processes:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(10)


def test_jars_are_resolved_once_per_pom(tmp_path: Path, cache: Path) -> None:
    deploy = _deploy(tmp_path, "")
    libs = broker.resolve_jars(deploy)
    assert (libs / "kafka-server.jar").is_file()
    assert libs.parent == cache / "kafka-4.4.0"
    assert broker.resolve_jars(deploy) == libs
    assert _runs(tmp_path) == 1, "the second call must reuse the resolved jars"
    assert [p.name for p in libs.parent.iterdir()] == [libs.name], "no staging left behind"


def test_a_new_pom_gets_new_jars_and_the_old_ones_go(tmp_path: Path, cache: Path) -> None:
    old = broker.resolve_jars(_deploy(tmp_path, ""))
    new = broker.resolve_jars(_deploy(tmp_path, "<!-- tools -->"))
    assert new != old
    assert (new / "kafka-server.jar").is_file()
    assert not old.exists(), "jars no broker runs from are removed"
    assert _runs(tmp_path) == 2


def test_jars_a_broker_runs_from_are_kept(
    tmp_path: Path, cache: Path, fake_broker: Callable[[Path], None]
) -> None:
    old = broker.resolve_jars(_deploy(tmp_path, ""))
    fake_broker(old)
    new = broker.resolve_jars(_deploy(tmp_path, "<!-- tools -->"))
    jar = old / "kafka-server.jar"
    assert jar.is_file(), "a running broker's jars were removed"
    assert jar.read_text() == POM.format(""), "a running broker's jars were replaced"
    assert (new / "kafka-server.jar").read_text() == POM.format("<!-- tools -->")


def test_a_failed_resolve_leaves_nothing(tmp_path: Path, cache: Path) -> None:
    # Maven that stops half way: one jar copied, then an error.
    (tmp_path / "bin" / "mvn").write_text(FAKE_MVN + "echo 'no network' >&2\nexit 1\n")
    with pytest.raises(broker.BrokerError, match="no network"):
        broker.resolve_jars(_deploy(tmp_path, ""))
    left = list(cache.rglob("*")) if cache.exists() else []
    assert not [p for p in left if p.is_file()], f"a failed resolve left {left}"
