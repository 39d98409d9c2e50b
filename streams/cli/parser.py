"""The ``kourier`` command line: its parser, and running the chosen command."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import get_args

from handlers.exceptions import TerminalError
from streams.cli import admin as admin_api
from streams.cli import calls
from streams.cli import commands as run
from streams.engine.journal import Status
from streams.errors import KourierError

STATUSES = get_args(Status)


#: ``--json`` of a command whose lines are its output, piped or not.
_LINES = "print JSON instead of the lines it prints, piped or not"


def _json_flag(
    parser: argparse.ArgumentParser,
    help: str = "print JSON (the default when standard output is not a terminal)",
) -> None:
    parser.add_argument("--json", action="store_true", help=help)


def _port(text: str) -> int:
    """A TCP port (0: any free one), refused by argparse with its range otherwise."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is no port: give a number from 0 to 65535")
    return port


def _count(text: str) -> int:
    """A whole number of at least 1 (partitions, replicas, nodes, rows)."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least 1")
    return count


def _kafka_flags(parser: argparse.ArgumentParser, partitions: bool = False) -> None:
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap (KOURIER_BOOTSTRAP_SERVERS)")
    parser.add_argument("--namespace", help="topic prefix (KOURIER_NAMESPACE, default kourier)")
    if partitions:
        parser.add_argument(
            "--partitions", type=_count, help="ingress partitions (KOURIER_PARTITIONS, default 8)"
        )


def _topic_flags(parser: argparse.ArgumentParser) -> None:
    """Creating the namespace's missing topics at start, as Kafka Streams does."""
    parser.add_argument(
        "--partitions", type=_count, help="partitions of topics it creates (KOURIER_PARTITIONS)"
    )
    parser.add_argument(
        "--replication-factor",
        type=_count,
        help="replicas of topics it creates (KOURIER_REPLICATION_FACTOR; default min(3, brokers))",
    )
    parser.add_argument(
        "--no-create-topics",
        dest="create_topics",
        action="store_false",
        help="never create topics (where only operators may): missing ones are an error",
    )


def _http_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=_port, default=8080, help="HTTP ingress port")
    parser.add_argument("--admin-port", type=_port, default=9070, help="admin API port")
    parser.add_argument(
        "--admin-host", default=None, help="interface for the admin API (default: --host)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kourier", description="Durable service invocation on Apache Kafka."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    broker_cmd = commands.add_parser("broker", help="a local Apache Kafka broker (KRaft)")
    broker_ops = broker_cmd.add_subparsers(dest="op", required=True)
    for name, func, text in (
        ("start", run.broker_start, "resolve the jars, format storage, start, wait until ready"),
        ("stop", run.broker_stop, "stop the broker by its PID"),
        ("status", run.broker_status, "print whether the broker runs (exit 1 if not)"),
        ("jars", run.broker_jars, "resolve the broker jars with Maven and print their directory"),
    ):
        op = broker_ops.add_parser(name, help=text)
        if name != "jars":
            op.add_argument("--data", default=str(run.DEFAULT_DATA), help="data directory")
        if name == "start":
            op.add_argument(
                "--port", type=_port, default=None, help="listener port, the first node's with "
                "--nodes (the others take the next ones; a cluster keeps those it was made with); "
                "0 = any free for a new data dir; default: the port the data dir had, 9092 "
                "for a new one"
            )  # fmt: skip
            op.add_argument(
                "--nodes", type=_count, default=1, help="KRaft nodes: 3 starts a local cluster"
            )
        elif name != "jars":
            op.add_argument(
                "--port", type=_port, default=None,
                help="refuse (exit 2) unless the broker of --data listens on this port",
            )  # fmt: skip
        if name == "start":
            _json_flag(op, _LINES)
        elif name == "status":
            _json_flag(op)
        op.set_defaults(func=func)

    schema = commands.add_parser("schema", help="JSON Schema of the ingress and response records")
    schema.add_argument("which", nargs="?", choices=("all", "ingress", "response"), default="all")
    schema.set_defaults(func=run.schema)

    topics = commands.add_parser("topics", help="create or describe Kourier's topics")
    topic_ops = topics.add_subparsers(dest="op", required=True)
    create = topic_ops.add_parser("create", help="create missing topics (idempotent)")
    _kafka_flags(create, partitions=True)
    create.add_argument(
        "--replication-factor",
        type=_count,
        help="replicas per topic (KOURIER_REPLICATION_FACTOR; default min(3, brokers))",
    )
    _json_flag(create, _LINES)
    create.set_defaults(func=run.topics_create)
    describe = topic_ops.add_parser("describe", help="show the namespace's topics")
    _kafka_flags(describe)
    _json_flag(describe)
    describe.set_defaults(func=run.topics_describe)
    acls = commands.add_parser(
        "acls", help="the Kafka ACLs a worker and a client need; --apply creates them"
    )
    _kafka_flags(acls)
    acls.add_argument("--worker", metavar="PRINCIPAL", help="the workers' principal: User:NAME")
    acls.add_argument(
        "--client",
        metavar="PRINCIPAL",
        help="the principal of the ingress, clients and the CLI: User:NAME",
    )
    acls.add_argument(
        "--apply", action="store_true", help="create them (needs Alter on the cluster)"
    )
    _json_flag(acls)
    acls.set_defaults(func=run.acls)
    worker = commands.add_parser("worker", help="run handlers: MODULE or MODULE:ATTR")
    worker.add_argument("module", help="e.g. examples.quickstart or app.services:ALL")
    worker.add_argument("--worker-id", help="stable id (default: host name + free slot)")
    worker.add_argument("-v", "--verbose", action="store_true")
    worker.add_argument(
        "--metrics-port",
        type=_port,
        default=os.environ.get("KOURIER_METRICS_PORT") or None,  # argparse checks a string
        help="serve Prometheus metrics on this port (KOURIER_METRICS_PORT; default: off)",
    )
    worker.add_argument("--metrics-host", default="127.0.0.1", help="interface for metrics")
    _kafka_flags(worker)
    _topic_flags(worker)
    worker.set_defaults(func=run.worker)

    ingress = commands.add_parser("ingress", help="the HTTP ingress and the admin API")
    _http_flags(ingress)
    _kafka_flags(ingress)
    _topic_flags(ingress)
    ingress.set_defaults(func=run.ingress)

    dev = commands.add_parser("dev", help="broker + topics + worker + ingress, for development")
    dev.add_argument("module", help="the handlers to run, e.g. examples.quickstart")
    dev.add_argument("--kafka-port", type=_port, default=0, help="local broker port (0 = free)")
    dev.add_argument("--nodes", type=_count, default=1, help="local KRaft nodes (3: a cluster)")
    dev.add_argument("--data", default=str(run.DEFAULT_DATA.with_name("dev-broker")))
    dev.add_argument("-v", "--verbose", action="store_true")
    _http_flags(dev)
    _kafka_flags(dev, partitions=True)
    dev.set_defaults(func=run.dev)

    for name, text in (
        ("call", "call a handler and print its result"),
        ("send", "send a one-way message to a handler"),
    ):
        cmd = commands.add_parser(name, help=text)
        cmd.add_argument("target", help="Service/handler or Object/key/handler")
        cmd.add_argument("argument", nargs="?", metavar="json", help="the argument, as JSON")
        cmd.add_argument("--idempotency-key")
        if name == "send":
            cmd.add_argument("--delay", help="run no earlier than this: 500ms, 5s, 10m, PT1H")
        waits = "the call" if name == "call" else "Kafka, and a worker's accepting (a key, a run)"
        cmd.add_argument(
            "--timeout", help=f"stop waiting for {waits} after this (500ms, 5s, PT1M); it goes on"
        )
        _kafka_flags(cmd)
        _json_flag(cmd, "taken, and changes nothing: the result or receipt is JSON already")
        cmd.set_defaults(func=calls.call)

    invocations = commands.add_parser("invocations", help="list, inspect and control invocations")
    invocation_ops = invocations.add_subparsers(dest="op", required=True)
    listing = invocation_ops.add_parser("list", help="invocations, newest first")
    listing.add_argument("--status", choices=STATUSES, metavar="STATUS", help=", ".join(STATUSES))
    listing.add_argument("--service")
    listing.add_argument("--key")
    listing.add_argument("--limit", type=_count, default=50)
    _admin_flags(listing)
    deadlocks = invocation_ops.add_parser("deadlocks", help="wait-for cycles between invocations")
    _admin_flags(deadlocks)
    for name, text in (
        ("describe", "status, journal and what it waits on"),
        ("cancel", "cancel: a 409 at its next await; it may compensate"),
        ("kill", "stop it and its calls at once, without compensation"),
        ("purge", "forget a completed invocation's retained outcome"),
        ("resume", "retry a paused invocation"),
        ("attach", "wait for its outcome and print it"),
    ):
        op = invocation_ops.add_parser(name, help=text)
        if name in admin_api.BULK_OPS:
            _bulk_flags(op)
        else:
            op.add_argument("id", help="invocation id (inv_...)")
        _admin_flags(op)
    dlq = commands.add_parser("dlq", help="dead letters: list them, replay them to ingress")
    dlq_ops = dlq.add_subparsers(dest="op", required=True)
    dlq_list = dlq_ops.add_parser("list", help="dead letters with their reason, newest last")
    dlq_list.add_argument("--limit", type=_count, default=100)
    dlq_replay = dlq_ops.add_parser("replay", help="produce dead letters to ingress again")
    which = dlq_replay.add_mutually_exclusive_group()  # --all took every one, --offset or not
    which.add_argument("--offset", type=int, action="append", help="a DLQ offset")
    which.add_argument("--all", action="store_true", help="every one (of --reason)")
    for op in (dlq_list, dlq_replay):
        op.add_argument("--reason", help="only these: not-json, bad-schema, unknown-target, ...")
        _kafka_flags(op)
        _json_flag(op)
        op.set_defaults(func=run.dlq)
    services = commands.add_parser("services", help="services the workers announce")
    _admin_flags(services)
    state = commands.add_parser("state", help="an object's or workflow's state")
    state_ops = state.add_subparsers(dest="op", required=True)
    state_get = state_ops.add_parser("get", help="print the state of one key")
    state_get.add_argument("service")
    state_get.add_argument("key")
    _admin_flags(state_get)
    return parser


def _bulk_flags(parser: argparse.ArgumentParser) -> None:
    """One invocation by id, or every one a filter matches (see ``streams/cli/admin.py``)."""
    parser.add_argument("id", nargs="?", help="invocation id (inv_...), or filter instead:")
    parser.add_argument("--service", help="every invocation of this service or object")
    parser.add_argument("--status", choices=STATUSES, metavar="STATUS", help=", ".join(STATUSES))
    parser.add_argument("--key", help="every invocation of this object key or workflow id")
    parser.add_argument("--dry-run", action="store_true", help="list what matches; do nothing")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument(
        "--limit", type=_count, default=1000, help="act on at most N, the newest (default 1000)"
    )


def _admin_flags(parser: argparse.ArgumentParser) -> None:
    _json_flag(parser)
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("KOURIER_ADMIN_URL", "http://127.0.0.1:9070"),
        help="admin API (KOURIER_ADMIN_URL)",
    )
    parser.add_argument(
        "--ingress-url",
        default=os.environ.get("KOURIER_INGRESS_URL", "http://127.0.0.1:8080"),
        help="HTTP ingress, for attach (KOURIER_INGRESS_URL)",
    )
    parser.set_defaults(func=admin_api.admin)


_CREATE_THEM = "is the namespace right, and have its topics been created (`kourier topics create`)?"


def main(argv: Sequence[str] | None = None) -> int:
    run.EXIT_AT_ONCE = False
    try:
        code = _main(argv)
    except BaseException:
        if not run.EXIT_AT_ONCE:
            raise
        traceback.print_exc()  # then out, as below: an unforeseen error of a worker
        code = 1
    if run.EXIT_AT_ONCE:  # a stopped worker left handlers' blocking work on its threads
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    return code


def _quiet_stdout() -> None:
    """Point standard output at /dev/null: what is left in its buffer would fail again
    at exit ("Exception ignored ... BrokenPipeError")."""
    with contextlib.suppress(OSError, ValueError):  # not a file (a test's capture)
        out = sys.stdout.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out)
        os.close(devnull)


#: ``OSError`` numbers of a machine short of something for now (files, memory, buffers).
_PASSING = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM, errno.ENOBUFS})


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        code = func(args)
        if sys.stdout is not None:  # (None: started with its output closed, `>&-`)
            sys.stdout.flush()  # what it printed, written here: a closed output is met below,
        return code  # not at exit ("Exception ignored ...", exit status 120)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # its output closed early (`kourier ... | head`)
        _quiet_stdout()
        return 128 + 13  # out quietly, as SIGPIPE would end it
    except TerminalError as exc:  # a request the client refused (an argument too deep)
        run.say(f"kourier: error: {exc.status_code} {exc.message}")
        return 2
    except Exception as exc:
        if isinstance(exc, TimeoutError):  # (an OSError) no answer in time: it may pass
            run.say(f"kourier: error: {str(exc) or 'no answer in time'}; try again")
            return 1
        passing = isinstance(exc, ConnectionError)
        if passing or getattr(exc, "errno", None) in _PASSING:
            run.say(f"kourier: error: {exc}; try again")  # not the command's: it may pass
            return 1
        refused = isinstance(exc, KourierError) and not exc.retriable
        if refused or isinstance(exc, (ValueError, OSError)):  # (a file it may not read)
            run.say(f"kourier: error: {str(exc) or type(exc).__name__}")
            return 2
        if isinstance(exc, KourierError):  # retriable: the same command may succeed later
            run.say(f"kourier: error: {exc}; try again")
            return 1
        said = _kafka_error(exc)
        if said is None:
            raise
        run.say(said[0])
        return said[1]


def _kafka_error(exc: Exception) -> tuple[str, int] | None:
    """librdkafka's error as one line and an exit code: 1 when it may pass, 2 when not."""
    from confluent_kafka import KafkaError, KafkaException

    from streams.kafka.offsets import CONNECTION_REFUSED, REFUSED, transient

    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    if not isinstance(error, KafkaError):
        return None
    line = f"kourier: error: Kafka: {error.str()}"
    # A topic that is not there passes by itself while topics are being created; met after
    # a command's retries, it is the wrong namespace or topics never created.
    missing = (KafkaError._UNKNOWN_TOPIC, KafkaError._UNKNOWN_PARTITION)
    if error.code() in (*missing, KafkaError.UNKNOWN_TOPIC_OR_PART):
        return f"{line}: {_CREATE_THEM}", 2
    if transient(error):
        return f"{line}; try again", 1
    if error.code() in REFUSED:  # ACLs that do not allow it
        return f"{line} (README, Security: the ACLs `kourier acls` lists)", 2
    if error.code() in CONNECTION_REFUSED:  # the TLS or SASL settings
        return f"{line} (README, Security: the KOURIER_KAFKA_* settings)", 2
    return line, 2
