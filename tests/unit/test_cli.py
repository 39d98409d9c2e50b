"""The CLI: what its commands say and exit with on errors, bad arguments and signals."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import pytest

from streams.settings import Settings
from streams.wire.topics import Topics


def test_kourier_schema_prints_valid_json_schema() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "schema"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    for which in ("ingress", "response"):
        jsonschema.Draft202012Validator.check_schema(document[which])
    ingress = jsonschema.Draft202012Validator(document["ingress"])
    assert ingress.is_valid(
        {"v": 1, "kind": "invoke", "target": {"service": "Greeter", "handler": "greet"}}
    )
    assert not ingress.is_valid({"v": 1, "kind": "invoke"})


def test_kourier_without_arguments_explains_itself() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "broker" in done.stderr


def test_a_runtime_error_that_retrying_cannot_fix_is_one_line_not_a_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "worker", "no_such_module_xyz"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "kourier: error: cannot import 'no_such_module_xyz': No module named 'no_such_module_xyz'"
    ]


def test_every_runtime_error_is_a_kourier_error_that_says_whether_to_retry() -> None:
    from streams.client import ClientClosed, KafkaUnavailable
    from streams.engine.registry import RegistryError
    from streams.errors import KourierError
    from streams.http.shared import HttpError
    from streams.kafka.admin import TopicError
    from streams.kafka.broker import BrokerError
    from streams.kafka.restore import NoSlot, RestoreError
    from streams.kafka.startup import WorkerError
    from streams.wire.ids import InvalidId
    from streams.wire.records import RecordError

    refused = [
        ClientClosed,
        RegistryError,
        HttpError,
        TopicError,
        BrokerError,
        WorkerError,
        InvalidId,
        RecordError,
        NoSlot,
    ]
    assert all(issubclass(kind, KourierError) and not kind.retriable for kind in refused)
    assert issubclass(KafkaUnavailable, KourierError)
    assert KafkaUnavailable.retriable, "Kafka away: the same send may succeed later"
    assert issubclass(RestoreError, KourierError)
    assert RestoreError.retriable, "a slow restore: the take-over is tried again"
    from streams.kafka.admin import BrokersAway

    assert issubclass(BrokersAway, TopicError)
    assert BrokersAway.retriable, "brokers away: the topics are made once they are back"
    from streams.cli.admin import Unanswered
    from streams.kafka.deadletters import ReadTimeout

    for slow in (ReadTimeout, Unanswered):  # a bare TimeoutError was a traceback
        assert issubclass(slow, KourierError)
        assert slow.retriable, f"{slow.__name__}: the same command may succeed later"


def test_a_replay_of_all_with_nothing_to_replay_answers_as_one_that_replayed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 0 and JSON for a script, as any replay: it said so on stderr only."""
    from streams.cli import parser
    from streams.kafka import deadletters

    monkeypatch.setattr(deadletters, "read", lambda *args, **kwargs: [])
    monkeypatch.setattr(deadletters, "replay", lambda *args, **kwargs: pytest.fail("replay"))
    assert parser.main(["dlq", "replay", "--all", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"replayed": 0, "offsets": []}


def test_a_replay_that_names_no_letter_is_a_usage_error_before_kafka_is_asked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """It read the whole dead-letter topic first, then exited 1."""
    from streams.cli import parser
    from streams.kafka import deadletters

    monkeypatch.setattr(deadletters, "read", lambda *args, **kwargs: pytest.fail("read"))
    assert parser.main(["dlq", "replay"]) == 2
    assert capsys.readouterr().err.strip() == (
        "kourier: error: give --offset N (repeatable) or --all"
    )


def test_a_replay_of_named_letters_and_all_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--offset 17 --all`` replayed every letter."""
    from streams.cli import parser
    from streams.kafka import deadletters

    monkeypatch.setattr(deadletters, "read", lambda *args, **kwargs: pytest.fail("read"))
    with pytest.raises(SystemExit) as ended:
        parser.main(["dlq", "replay", "--offset", "17", "--all"])
    assert ended.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


class FullQueue:
    """librdkafka's queue full after two records, and Kafka taking none of them."""

    def __init__(self, config: object) -> None:
        self.queued = 0

    def produce(self, *args: object, **kwargs: object) -> None:
        if self.queued == 2:
            raise BufferError("Local: Queue full")
        self.queued += 1

    def flush(self, timeout: float) -> int:
        return self.queued


def test_a_replay_that_fills_the_queue_is_one_line_that_says_to_try_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``BufferError`` from the producer was a traceback, and the records queued before it
    were never flushed."""
    import base64
    from datetime import UTC, datetime

    from streams.kafka import deadletters
    from streams.wire.deadletter import DeadLetter

    topics = Topics("unit")
    letters = [
        DeadLetter(reason="bad-schema", detail="d", topic=topics.ingress, partition=0, offset=i,
                   payload=base64.b64encode(b"{}").decode(), at=datetime.now(UTC), dlq_offset=i)
        for i in range(5)
    ]  # fmt: skip
    monkeypatch.setattr(deadletters, "Producer", FullQueue)
    monkeypatch.setattr(
        deadletters, "required_topics",
        lambda *args: {topics.ingress: SimpleNamespace(partitions={0: None})},
    )  # fmt: skip
    with pytest.raises(deadletters.ReplayIncomplete, match="2 of 5 were queued"):
        deadletters.replay(Settings(namespace="unit"), letters, timeout=0.1)


def test_a_long_running_command_keeps_its_startup_objects_from_the_collector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Worker and ingress freeze what they built before serving, so that full collections
    no longer walk it (a 28 ms pause each, measured)."""
    from streams.cli import commands, dump

    # Not the dump's signal mask and thread in the test process (every process the tests
    # start later would inherit the mask).
    monkeypatch.setattr(dump, "install", lambda loop, status=None: None)
    monkeypatch.setattr(dump, "uninstall", lambda loop: None)

    frozen: list[int] = []

    async def main(stop: object) -> None:
        frozen.append(gc.get_freeze_count())

    try:
        assert commands._run_until_signal(main, "kourier-test") == 0
    finally:
        gc.unfreeze()
    assert frozen, "main ran"
    assert frozen[0] > 10_000, "the imported modules' objects are frozen"


def test_a_call_the_client_refuses_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The client refuses an argument too deep for a record with TerminalError 400, which
    ``kourier call`` and ``kourier send`` let out as a traceback. (The client's side is
    tested against the broker in tests/integration/test_bad_input.py.)"""
    from handlers.exceptions import TerminalError
    from streams.cli import calls, parser

    def refused(args: object) -> int:
        raise TerminalError("the record cannot be written as JSON: too deep", 400)

    monkeypatch.setattr(calls, "call", refused)
    for command in ("call", "send"):
        assert parser.main([command, "Relay/echo", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == "kourier: error: 400 the record cannot be written as JSON: too deep"


@pytest.mark.parametrize("delay", ["xyz", ""])
def test_a_send_with_a_bad_delay_is_refused_before_kafka_is_asked(
    delay: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--delay ''`` is not a send without a delay, and no delay waits for a broker to be
    refused: nothing listens on port 1, and the command answers at once all the same."""
    from streams.cli import parser

    argv = ["send", "Relay/echo", "1", "--delay", delay, "--bootstrap-servers", "127.0.0.1:1"]
    assert parser.main(argv) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(f"invalid delay {delay!r}: use 500ms, 5s, 10m, 1h or ISO-8601 like PT5S")
    )


def test_kafka_that_does_not_answer_is_one_line_that_says_to_try_again(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """``kourier send`` (and ``call``, the same client start) with Kafka away: one line and
    exit 1 (the same command may succeed later), not a traceback of librdkafka's metadata
    error."""
    import socket

    from streams.cli import parser

    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["send", "Relay/echo", "1", "--bootstrap-servers", f"127.0.0.1:{port}"]
    assert parser.main(argv) == 1
    ours = [line for line in capfd.readouterr().err.splitlines() if "rdkafka" not in line]
    assert len(ours) == 1, ours
    assert ours[0].startswith(f"kourier: error: Kafka at 127.0.0.1:{port} did not answer: ")
    assert ours[0].endswith("; try again")


@pytest.mark.parametrize(
    ("code", "exit_code", "ending"),
    [
        ("_ALL_BROKERS_DOWN", 1, "; try again"),
        (
            "TOPIC_AUTHORIZATION_FAILED",
            2,
            "authorization failed (README, Security: the ACLs `kourier acls` lists)",
        ),
        # transient while topics are being made, so flagged retriable here; not after retries
        ("UNKNOWN_TOPIC_OR_PART", 2, "(`kourier topics create`)?"),
        ("_UNKNOWN_TOPIC", 2, "(`kourier topics create`)?"),
    ],
)
def test_kafkas_own_error_is_one_line_that_says_whether_to_try_again(
    code: str,
    exit_code: int,
    ending: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A librdkafka error that reaches the CLI (``topics describe``, ``dlq list``): one
    line, exit 1 when Kafka may answer later, 2 when it refused or a topic is not there."""
    from confluent_kafka import KafkaError, KafkaException

    from streams.cli import calls, parser

    def failing(args: object) -> int:
        raise KafkaException(
            KafkaError(getattr(KafkaError, code), retriable=code != "TOPIC_AUTHORIZATION_FAILED")
        )

    monkeypatch.setattr(calls, "call", failing)
    assert parser.main(["call", "Relay/echo", "1"]) == exit_code
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("kourier: error: Kafka: ")
    assert line.lower().endswith(ending.lower()), line


def test_an_argument_that_is_not_json_is_one_line_that_shows_how_to_quote(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``kourier call Greeter/greet ada``: the argument is JSON, so a bare word is refused
    before anything connects, with a hint, not json's bare "Expecting value"."""
    from streams.cli import parser

    argv = ["call", "Relay/echo", "ada", "--bootstrap-servers", "127.0.0.1:1"]
    assert parser.main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("kourier: error: the argument 'ada' is not JSON (Expecting value")
    assert line.endswith("""a string is quoted: '"ada"'""")


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["ingress", "--port", "99999"], "argument --port: '99999' is no port"),
        (["ingress", "--admin-port", "http"], "argument --admin-port: 'http' is no port"),
        (["worker", "m", "--metrics-port", "-1"], "argument --metrics-port: '-1' is no port"),
        (["dev", "m", "--kafka-port", "65536"], "argument --kafka-port: '65536' is no port"),
        (["topics", "create", "--partitions", "0"], "argument --partitions: '0': give a whole"),
        (["topics", "create", "--replication-factor", "-3"], "'-3': give a whole number"),
        (["broker", "start", "--nodes", "0"], "argument --nodes: '0': give a whole number"),
        (["dlq", "list", "--limit", "-1"], "argument --limit: '-1': give a whole number"),
        (["invocations", "cancel", "--service", "S", "--limit", "0"], "'0': give a whole"),
    ],
)
def test_a_port_or_count_out_of_range_is_refused_before_anything_starts(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A port past 65535 reached the server's bind() and ended in a traceback; zero nodes
    started a single broker; a negative --limit listed all but the first dead letter."""
    from streams.cli import parser

    with pytest.raises(SystemExit) as exited:
        parser.build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert said in capsys.readouterr().err


def test_the_metrics_port_from_the_environment_is_checked_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.cli import parser

    monkeypatch.setenv("KOURIER_METRICS_PORT", "9100")
    assert parser.build_parser().parse_args(["worker", "m"]).metrics_port == 9100
    monkeypatch.setenv("KOURIER_METRICS_PORT", "metrics")
    with pytest.raises(SystemExit):
        parser.build_parser().parse_args(["worker", "m"])
    assert "'metrics' is no port" in capsys.readouterr().err


NOWHERE = ["--bootstrap-servers", "127.0.0.1:1"]  # refused before it is reached


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["call", "Relay/echo", "[NaN]", *NOWHERE], "the argument '[NaN]' is not JSON (NaN is"),
        (["call", "Relay/echo", "[" * 5_000, *NOWHERE], "the argument is nested deeper than"),
        (["worker", ".handlers"], "'.handlers' is not a module name"),
        (["broker", "start", "--data", "{file}"], "{file} cannot be a data directory: File"),
    ],
    ids=["nan", "deep", "relative-module", "data-is-a-file"],
)
def test_a_bad_argument_is_one_line_not_a_traceback(
    argv: list[str], said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each ended in a traceback (RecursionError, TypeError, FileExistsError), or, for NaN,
    sent ``null`` without a word where the HTTP ingress answers 400."""
    from streams.cli import parser

    file = tmp_path / "a-file"
    file.write_text("")
    argv = [arg.replace("{file}", str(file)) for arg in argv]
    assert parser.main(argv) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"kourier: error: {said.replace('{file}', str(file))}"), line


def test_a_worker_that_fails_with_handlers_threads_blocked_still_ends(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An error the CLI does not turn into a message left ``main`` before the exit that
    does not wait for blocked threads: the interpreter then waited for them as it ended."""

    from streams.cli import commands, parser

    exits: list[int] = []

    def fails(args: object) -> int:
        commands.EXIT_AT_ONCE = True  # as _leave_blocked_actions sets it, in its finally
        raise RuntimeError("a defect")

    monkeypatch.setattr(commands, "worker", fails)
    monkeypatch.setattr(os, "_exit", exits.append)
    assert parser.main(["worker", "some.module"]) == 1
    assert exits == [1]
    assert "RuntimeError: a defect" in capsys.readouterr().err
    assert parser.main(["schema", "ingress"]) == 0  # the flag does not outlive its command
    assert exits == [1]


def test_a_second_ctrl_c_while_a_stopped_worker_waits_for_blocked_actions_ends_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The 5 s wait for handlers' blocking ``ctx.run`` work runs once the signal handlers
    are back to Python's: a second Ctrl-C there raised ``KeyboardInterrupt`` before the
    flag was set, ``main`` returned 130, and the interpreter then waited for the thread."""
    import signal
    import threading

    from streams.cli import commands, parser
    from streams.kafka.threads import RUN_THREADS

    release = threading.Event()
    blocked = threading.Thread(target=release.wait, name=f"{RUN_THREADS}-0", daemon=True)
    blocked.start()
    main_thread = threading.main_thread().ident
    assert main_thread is not None
    interrupt = threading.Timer(0.3, signal.pthread_kill, (main_thread, signal.SIGINT))

    def stopped_worker(args: object) -> int:  # what `worker` does once its loop has ended
        interrupt.start()
        commands._leave_blocked_actions()
        return 0

    exits: list[int] = []
    monkeypatch.setattr(commands, "worker", stopped_worker)
    monkeypatch.setattr("os._exit", exits.append)
    # As in a terminal: a background job (a CI run started with &) ignores SIGINT.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert parser.main(["worker", "some.module"]) == 130
        assert exits == [130], "the second Ctrl-C left the process to wait for the thread"
    finally:
        signal.signal(signal.SIGINT, before)
        interrupt.cancel()
        release.set()
        blocked.join(5)


def test_a_worker_on_metrics_port_0_names_the_port_it_bound(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--metrics-port 0`` takes any free port, and the worker said it served on ``:0``."""
    import prometheus_client

    from streams.cli import commands, parser
    from streams.kafka import worker

    servers: list[Any] = []
    start = prometheus_client.start_http_server

    def recorded(port: int, addr: str = "") -> Any:
        served = start(port, addr=addr)
        servers.append(served[0])
        return served

    monkeypatch.setattr(prometheus_client, "start_http_server", recorded)
    monkeypatch.setattr(commands, "_ensure_topics", lambda *args: None)
    monkeypatch.setattr(worker, "Worker", lambda *args, **kwargs: SimpleNamespace(status=None))
    monkeypatch.setattr(commands, "_run_until_signal", lambda *args: 0)
    argv = ["worker", "examples.quickstart", "--metrics-port", "0", *NOWHERE]
    try:
        assert parser.main(argv) == 0
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    assert len(servers) == 1
    port = servers[0].server_port
    assert port != 0
    assert f"worker metrics on http://127.0.0.1:{port}/metrics" in capsys.readouterr().err


@pytest.mark.parametrize(
    "failure",
    [PermissionError(13, "Permission denied", "/root/x/broker.pid"), FileNotFoundError()],
)
def test_a_file_the_command_cannot_read_is_one_line_not_a_traceback(
    failure: OSError,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """``kourier broker status --data`` a directory of another user's (``Path.is_file``
    raises ``PermissionError`` there) ended in a traceback."""
    from streams.cli import parser
    from streams.kafka import broker

    def unreadable(data_dir: Path) -> object:
        raise failure

    monkeypatch.setattr(broker, "cluster_status", unreadable)
    assert parser.main(["broker", "status", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("kourier: error: "), err
    assert err[len("kourier: error: ") :].strip(), "no word of what failed"
    assert len(err.splitlines()) == 1, err


def test_a_wait_that_timed_out_is_a_try_again(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``TimeoutError`` is an ``OSError``: not a refusal (exit 2), but one that may pass."""
    from streams.cli import commands, parser

    def slow(args: object) -> int:
        raise TimeoutError

    monkeypatch.setattr(commands, "acls", slow)
    assert parser.main(["acls", "--client", "User:web"]) == 1
    assert capsys.readouterr().err == "kourier: error: no answer in time; try again\n"


@pytest.mark.parametrize(
    "failure",
    [ConnectionRefusedError(111, "Connection refused"), OSError(24, "Too many open files")],
)
def test_an_os_error_that_may_pass_is_a_try_again(
    failure: OSError, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused connection, or a process out of file descriptors, exited 2, as a usage
    error: a script took the command for wrong, not for one to run again."""
    from streams.cli import commands, parser

    def short_of_something(args: object) -> int:
        raise failure

    monkeypatch.setattr(commands, "acls", short_of_something)
    assert parser.main(["acls", "--client", "User:web"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kourier: error: "), err
    assert err.endswith("; try again\n"), err


@pytest.mark.parametrize("verb", ["call", "send"])
def test_the_timeout_of_call_and_send_bounds_the_wait_for_kafka_too(verb: str) -> None:
    """``--timeout`` began once the client had started and read the catalog: with Kafka
    away, ``kourier call --timeout 1s`` waited Kafka's own 30 s, and said to try again."""
    import time

    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", verb, "Greeter/greet", '"ada"', "--timeout", "1s",
         "--idempotency-key", "k1", *NOWHERE],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    took = time.monotonic() - began
    assert done.returncode == 1, done.stderr[-2000:]
    said = [line for line in done.stderr.splitlines() if line.startswith("kourier:")]
    assert said == ["kourier: no answer from Kafka within 1s; nothing was written"], said
    assert took < 20, f"{took:.0f}s: not bounded by --timeout 1s"
