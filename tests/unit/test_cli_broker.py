"""The CLI's local brokers: ``kourier broker`` and ``kourier dev``, their ports, data
directories, JVM options and signals, with Kafka itself stood in for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest


def test_a_local_broker_takes_its_jvm_options_from_kafkas_variable_when_set() -> None:
    from streams.kafka.broker import JVM_PERFORMANCE_OPTS, jvm_performance_opts

    assert jvm_performance_opts({}) == list(JVM_PERFORMANCE_OPTS)
    custom = " -XX:+UseSerialGC\t-XX:TieredStopAtLevel=1  -Dnote=it's "
    assert jvm_performance_opts({"KAFKA_JVM_PERFORMANCE_OPTS": custom}) == [
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-Dnote=it's",
    ], "split at whitespace, quotes kept, as Kafka's scripts expand it"
    empty = jvm_performance_opts({"KAFKA_JVM_PERFORMANCE_OPTS": ""})
    assert empty == list(JVM_PERFORMANCE_OPTS), "set but empty: the defaults, as Kafka's"
    assert jvm_performance_opts({"KAFKA_JVM_PERFORMANCE_OPTS": "  "}) == [], "blanks: none"


def test_a_cluster_whose_ports_would_pass_65535_is_refused_before_maven_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.cli import parser

    argv = ["broker", "start", "--port", "65534", "--nodes", "3", "--data", str(tmp_path)]
    assert parser.main(argv) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert said == ["kourier: error: --port 65534 leaves no room for 3 nodes' ports"]


@pytest.mark.parametrize("running", [True, False], ids=["already-running", "started"])
def test_dev_stops_the_broker_only_when_it_started_it(
    running: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A second ``kourier dev`` on the default data directory used the first one's broker,
    and stopped it as it ended."""
    from streams.cli import commands, parser
    from streams.kafka import broker

    found = broker.Broker("127.0.0.1:1", 1, tmp_path)
    stopped: list[Path] = []
    monkeypatch.delenv("KOURIER_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setattr(broker, "status", lambda data_dir: found if running else None)
    monkeypatch.setattr(broker, "start", lambda data_dir, port: found)
    monkeypatch.setattr(broker, "stop", lambda data_dir: stopped.append(data_dir))

    def no_topics(*args: object) -> None:
        raise ValueError("no Kafka in this test")

    monkeypatch.setattr(commands, "_ensure_topics", no_topics)
    assert parser.main(["dev", "examples.quickstart", "--data", str(tmp_path)]) == 2
    assert stopped == ([] if running else [tmp_path]), "stopped a broker it did not start"


@pytest.mark.parametrize(("port", "stops"), [("9093", True), ("9092", False)])
def test_broker_stop_with_a_port_stops_only_the_broker_on_it(
    port: str, stops: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``--port`` was refused on stop and status (DESIGN names it for all three)."""
    from streams.cli import parser
    from streams.kafka import broker

    stopped: list[Path] = []
    monkeypatch.setattr(broker, "status", lambda data: broker.Broker("127.0.0.1:9093", 1, data))
    monkeypatch.setattr(broker, "stop", lambda data: stopped.append(data) or True)
    code = parser.main(["broker", "stop", "--data", str(tmp_path), "--port", port])
    assert (code, bool(stopped)) == ((0, True) if stops else (2, False))
    assert parser.main(["broker", "status", "--data", str(tmp_path), "--port", port]) == (
        0 if stops else 2
    )
    started: list[Path] = []
    monkeypatch.setattr(broker, "resolve_jars", lambda: tmp_path)
    monkeypatch.setattr(
        broker, "start", lambda data, port: started.append(data) or broker.status(data)
    )
    # It printed the other broker's address, exit 0: a script took it for the one asked for.
    assert parser.main(["broker", "start", "--data", str(tmp_path), "--port", port]) == (
        0 if stops else 2
    )
    assert bool(started) == stops


def test_dev_on_a_cluster_with_a_node_up_stops_only_the_nodes_it_started(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from streams.cli import commands, parser
    from streams.kafka import broker

    nodes = [tmp_path / f"node-{i}" for i in (1, 2, 3)]
    up = {nodes[0]}  # one node runs; dev starts the other two
    stopped: list[Path] = []

    def status() -> list[tuple[Path, broker.Broker | None]]:
        return [(d, broker.Broker("127.0.0.1:1", 1, d) if d in up else None) for d in nodes]

    def start_cluster(data_dir: Path, count: int, port: int) -> Any:
        up.update(nodes)
        return SimpleNamespace(bootstrap="127.0.0.1:1")

    def no_topics(*args: object) -> None:
        raise ValueError("no Kafka in this test")

    monkeypatch.delenv("KOURIER_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setattr(broker, "cluster_status", lambda data_dir: status())
    monkeypatch.setattr(broker, "start_cluster", start_cluster)
    monkeypatch.setattr(broker, "stop", lambda data_dir: stopped.append(data_dir))
    monkeypatch.setattr(commands, "_ensure_topics", no_topics)
    argv = ["dev", "examples.quickstart", "--nodes", "3", "--data", str(tmp_path)]
    assert parser.main(argv) == 2
    assert stopped == nodes[1:], "it stopped a node it did not start, or left its own running"


def test_kourier_cache_moves_the_local_brokers_data_as_the_jars(tmp_path: Path) -> None:
    """``kourier broker start`` and ``kourier dev`` wrote under ``~/.cache/kourier`` whatever
    ``KOURIER_CACHE`` said (a read-only home stopped them)."""
    import os

    script = (
        "from streams.cli.parser import build_parser as b; p = b();"
        " print(p.parse_args(['broker', 'start']).data);"
        " print(p.parse_args(['dev', 'examples.quickstart']).data)"
    )
    shown = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "KOURIER_CACHE": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert shown == [str(tmp_path / "broker"), str(tmp_path / "dev-broker")]


def test_an_empty_kourier_cache_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """``KOURIER_CACHE=`` made the cache the working directory."""
    from streams.kafka import broker

    monkeypatch.setenv("KOURIER_CACHE", "")
    assert broker.cache_dir() == Path.home() / ".cache" / "kourier"


def test_a_signal_while_a_cluster_starts_stops_what_it_started(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SIGTERM's default ended ``kourier broker start`` at once, and the nodes it had
    launched (sessions of their own) ran on; a second Ctrl-C cut the clean-up short."""
    import os
    import signal

    from streams.cli import parser
    from streams.kafka import broker

    class Ended(Exception):
        pass

    def ended(signum: int, frame: object) -> None:  # this test's: the default would end it
        raise Ended(signum)

    steps: list[str] = []

    def start_cluster(data_dir: Path, count: int, port: int) -> Any:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            steps.append("went on")
        except BaseException:
            os.kill(os.getpid(), signal.SIGINT)  # a second, during the clean-up
            steps.append("stopped what it started")
            raise

    monkeypatch.setattr(broker, "resolve_jars", lambda: tmp_path)
    monkeypatch.setattr(broker, "start_cluster", start_cluster)
    before = {sig: signal.signal(sig, ended) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with pytest.raises(SystemExit) as exited:
            parser.main(["broker", "start", "--nodes", "3", "--data", str(tmp_path)])
        assert exited.value.code == 128 + signal.SIGTERM
        assert steps == ["stopped what it started"]
        assert signal.getsignal(signal.SIGTERM) is ended, "its handlers were not put back"
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_a_signal_the_process_ignores_stays_ignored_while_a_broker_starts() -> None:
    """Under nohup (SIGHUP ignored) closing the terminal stopped the brokers mid-start."""
    import signal

    from streams.cli import commands

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        seen = commands._ended_by_signals(lambda: 0 if signal.getsignal(signal.SIGHUP) is
                                          signal.SIG_IGN else 1)  # fmt: skip
        assert seen == 0, "SIGHUP, ignored by the process, ended the command"
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def test_broker_start_away_from_the_checkout_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Installed without its ``deploy/`` (not editable), ``kourier broker start`` failed
    reading ``pom.xml`` for the version it names, before the check that says why."""
    from streams.cli import parser
    from streams.kafka import broker

    monkeypatch.setattr(broker, "DEPLOY_DIR", tmp_path)
    monkeypatch.setattr(broker.kafka_version, "__defaults__", (tmp_path,))
    monkeypatch.setattr(broker.resolve_jars, "__defaults__", (tmp_path,))
    assert parser.main(["broker", "start", "--data", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert "run Kourier from its source checkout" in err, err
    assert "Traceback" not in err, err


def test_a_broker_whose_controller_port_is_taken_is_refused_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data dir keeps the controller port it was made with: one another program holds
    now was only seen once Java had started and exited ("exited with code 1")."""
    import socket

    from streams.kafka import broker

    with socket.socket() as client_port, socket.socket() as controller:
        for held in (client_port, controller):
            held.bind(("127.0.0.1", 0))
        ports = [held.getsockname()[1] for held in (client_port, controller)]
        props = tmp_path / "server.properties"
        props.write_text(
            f"listeners=PLAINTEXT://127.0.0.1:{ports[0]},CONTROLLER://127.0.0.1:{ports[1]}\n"
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{ports[0]}\n"
        )
        assert broker._taken(props) is None
        controller.listen()
        assert broker._taken(props) == f"127.0.0.1:{ports[1]} (its controller's)"

        def never(*args: Any, **kwargs: Any) -> None:
            raise AssertionError("formatted or launched with its controller port taken")

        monkeypatch.setattr(broker, "resolve_jars", lambda deploy_dir: [])
        monkeypatch.setattr(broker, "_write_properties", lambda *args: props)
        monkeypatch.setattr(broker, "_format_storage", never)
        monkeypatch.setattr(broker, "_launch", never)
        with pytest.raises(broker.BrokerError, match=r"\(its controller's\) is already in use"):
            broker.start(tmp_path)
        client_port.listen()
        assert broker._taken(props) == f"127.0.0.1:{ports[0]}", "the clients' port, first"


@pytest.mark.parametrize(("nodes", "warned"), [(2, True), (3, False)])
def test_two_nodes_are_started_with_a_warning_that_they_survive_no_loss(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    nodes: int,
    warned: bool,
) -> None:
    from streams.cli import parser
    from streams.kafka import broker

    def start_cluster(data_dir: Path, count: int, port: int) -> Any:
        assert count == nodes
        return SimpleNamespace(bootstrap="127.0.0.1:1", nodes=[])

    monkeypatch.setattr(broker, "resolve_jars", lambda: tmp_path)
    monkeypatch.setattr(broker, "start_cluster", start_cluster)
    argv = ["broker", "start", "--nodes", str(nodes), "--data", str(tmp_path), "--port", "0"]
    assert parser.main(argv) == 0
    said = capsys.readouterr().err
    assert ("tolerate the loss of neither" in said) is warned, said
