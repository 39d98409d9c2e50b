"""The ``kourier`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from streams import broker
from streams.settings import Settings

_DEFAULT_DATA = Path.home() / ".cache" / "kourier" / "broker"


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        bootstrap_servers=getattr(args, "bootstrap_servers", None),
        namespace=getattr(args, "namespace", None),
        partitions=getattr(args, "partitions", None),
    )


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- broker ------------------------------------------------------------------


def _broker_start(args: argparse.Namespace) -> int:
    began = time.monotonic()
    _say(f"kourier: resolving Apache Kafka {broker.kafka_version()} with Maven ...")
    broker.resolve_jars()
    _say(f"kourier: starting the broker in {args.data} ...")
    running = broker.start(Path(args.data), port=args.port)
    _say(f"kourier: broker pid {running.pid} ready in {time.monotonic() - began:.1f}s")
    print(running.bootstrap)
    return 0


def _broker_jars(args: argparse.Namespace) -> int:
    print(broker.resolve_jars())
    return 0


def _broker_stop(args: argparse.Namespace) -> int:
    stopped = broker.stop(Path(args.data))
    _say("kourier: broker stopped" if stopped else "kourier: no broker was running there")
    return 0


def _broker_status(args: argparse.Namespace) -> int:
    running = broker.status(Path(args.data))
    if running is None:
        print(json.dumps({"running": False, "data": str(args.data)}))
        return 1
    print(json.dumps({"running": True, "bootstrap": running.bootstrap, "pid": running.pid,
                      "data": str(running.data_dir)}))  # fmt: skip
    return 0


# -- schema and topics ---------------------------------------------------------


def _schema(args: argparse.Namespace) -> int:
    from streams.records import json_schemas

    schemas = json_schemas()
    document = schemas if args.which == "all" else schemas[args.which]
    print(json.dumps(document, indent=2))
    return 0


def _topics_create(args: argparse.Namespace) -> int:
    from streams.admin import create_topics

    for state in create_topics(_settings(args)):
        verb = "created" if state.created else "exists "
        print(f"{verb} {state.spec.name} ({state.partitions} partitions)")
    return 0


def _topics_describe(args: argparse.Namespace) -> int:
    from streams.admin import describe_topics

    print(json.dumps(describe_topics(_settings(args)), indent=2))
    return 0


# -- parser -------------------------------------------------------------------


def _kafka_flags(parser: argparse.ArgumentParser, partitions: bool = False) -> None:
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap (KOURIER_BOOTSTRAP_SERVERS)")
    parser.add_argument("--namespace", help="topic prefix (KOURIER_NAMESPACE, default kourier)")
    if partitions:
        parser.add_argument(
            "--partitions", type=int, help="ingress partitions (KOURIER_PARTITIONS, default 8)"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kourier", description="Durable service invocation on Apache Kafka."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    broker_cmd = commands.add_parser("broker", help="a local Apache Kafka broker (KRaft)")
    broker_ops = broker_cmd.add_subparsers(dest="op", required=True)
    for name, func, text in (
        ("start", _broker_start, "resolve the jars, format storage, start, wait until ready"),
        ("stop", _broker_stop, "stop the broker by its PID"),
        ("status", _broker_status, "print whether the broker runs (exit 1 if not)"),
        ("jars", _broker_jars, "resolve the broker jars with Maven and print their directory"),
    ):
        op = broker_ops.add_parser(name, help=text)
        if name != "jars":
            op.add_argument("--data", default=str(_DEFAULT_DATA), help="data directory")
        if name == "start":
            op.add_argument("--port", type=int, default=9092, help="listener port (0 = any free)")
        op.set_defaults(func=func)

    schema = commands.add_parser("schema", help="JSON Schema of the ingress and response records")
    schema.add_argument("which", nargs="?", choices=("all", "ingress", "response"), default="all")
    schema.set_defaults(func=_schema)

    topics = commands.add_parser("topics", help="create or describe Kourier's topics")
    topic_ops = topics.add_subparsers(dest="op", required=True)
    create = topic_ops.add_parser("create", help="create missing topics (idempotent)")
    _kafka_flags(create, partitions=True)
    create.set_defaults(func=_topics_create)
    describe = topic_ops.add_parser("describe", help="show the namespace's topics")
    _kafka_flags(describe, partitions=True)
    describe.set_defaults(func=_topics_describe)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if getattr(exc, "retriable", None) is False or isinstance(exc, ValueError):
            _say(f"kourier: error: {exc}")
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
