"""The ``kourier`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from streams.errors import KourierError
from streams.kafka import broker
from streams.settings import Settings
from streams.wire.topics import Topics

_DEFAULT_DATA = Path.home() / ".cache" / "kourier" / "broker"


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        bootstrap_servers=getattr(args, "bootstrap_servers", None),
        namespace=getattr(args, "namespace", None),
        partitions=getattr(args, "partitions", None),
        replication_factor=getattr(args, "replication_factor", None),
    )


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- broker ------------------------------------------------------------------


def _broker_start(args: argparse.Namespace) -> int:
    began = time.monotonic()
    _say(f"kourier: resolving Apache Kafka {broker.kafka_version()} with Maven ...")
    broker.resolve_jars()
    if args.nodes > 1:
        _say(f"kourier: starting {args.nodes} KRaft nodes in {args.data} ...")
        cluster = broker.start_cluster(Path(args.data), args.nodes, port=args.port)
        pids = ", ".join(str(node.pid) for node in cluster.nodes)
        _say(f"kourier: cluster ready in {time.monotonic() - began:.1f}s (pids {pids})")
        print(cluster.bootstrap)
        return 0
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
    nodes = broker.cluster_status(Path(args.data))
    if nodes:
        rows = [
            {"data": str(node_dir), "running": running is not None}
            | ({"bootstrap": running.bootstrap, "pid": running.pid} if running else {})
            for node_dir, running in nodes
        ]
        up = sum(row["running"] is True for row in rows)
        print(json.dumps({"running": up == len(rows), "nodes": rows}))
        return 0 if up == len(rows) else 1
    running = broker.status(Path(args.data))
    if running is None:
        print(json.dumps({"running": False, "data": str(args.data)}))
        return 1
    print(
        json.dumps(
            {
                "running": True,
                "bootstrap": running.bootstrap,
                "pid": running.pid,
                "data": str(running.data_dir),
            }
        )
    )
    return 0


# -- schema and topics ---------------------------------------------------------


def _schema(args: argparse.Namespace) -> int:
    from streams.wire.records import json_schemas

    schemas = json_schemas()
    document = schemas if args.which == "all" else schemas[args.which]
    print(json.dumps(document, indent=2))
    return 0


def _topics_create(args: argparse.Namespace) -> int:
    from streams.kafka.admin import create_topics

    for state in create_topics(_settings(args)):
        verb = "created" if state.created else "exists "
        shape = f"{state.partitions} partitions, {state.replication_factor} replicas"
        print(f"{verb} {state.spec.name} ({shape})")
    return 0


def _topics_describe(args: argparse.Namespace) -> int:
    from streams.kafka.admin import describe_topics

    described = describe_topics(_settings(args))
    print(json.dumps(described, indent=2))
    for warning in described["warnings"]:
        _say(f"kourier: warning: {warning}")
    return 0


# -- worker, calls -------------------------------------------------------------------


def _configure_logging(verbose: bool = False) -> None:
    import logging

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def _run_until_signal(main: Any) -> int:
    """Run ``main`` (a coroutine function taking a stop event) until SIGINT or SIGTERM."""
    import asyncio
    import signal

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    asyncio.run(runner())
    return 0


def _worker(args: argparse.Namespace) -> int:
    import asyncio

    from streams.engine.registry import load_services
    from streams.kafka.worker import Worker

    _configure_logging(args.verbose)
    sys.path.insert(0, ".")
    worker = Worker(_settings(args), load_services(args.module), worker_id=args.worker_id)
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.metrics_host)
        _say(f"kourier: worker metrics on http://{args.metrics_host}:{args.metrics_port}/metrics")

    async def main(stop: Any) -> None:
        task = asyncio.create_task(worker.run())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        worker.stop()
        await task

    return _run_until_signal(main)


def _ingress(args: argparse.Namespace) -> int:
    from streams.http.ingress import serve

    _configure_logging()

    async def main(stop: Any) -> None:
        ingress, runners = await serve(
            _settings(args), host=args.host, port=args.port, admin_port=args.admin_port
        )
        print(f"http://{args.host}:{args.port}", flush=True)
        await stop.wait()
        for runner in runners:
            await runner.cleanup()
        await ingress.close()

    return _run_until_signal(main)


def _dev(args: argparse.Namespace) -> int:
    """Broker (unless KOURIER_BOOTSTRAP_SERVERS is set), topics, worker and ingress in one go."""
    import asyncio

    from streams.engine.registry import load_services
    from streams.http.ingress import serve
    from streams.kafka.admin import create_topics
    from streams.kafka.worker import Worker

    _configure_logging(args.verbose)
    sys.path.insert(0, ".")
    services = load_services(args.module)
    data_dir = Path(args.data)
    started_broker = False
    if os.environ.get("KOURIER_BOOTSTRAP_SERVERS") or args.bootstrap_servers:
        settings = _settings(args)
    else:
        if args.nodes > 1:
            bootstrap = broker.start_cluster(data_dir, args.nodes, port=args.kafka_port).bootstrap
        else:
            bootstrap = broker.start(data_dir, port=args.kafka_port).bootstrap
        started_broker = True
        settings = _settings(args).model_copy(update={"bootstrap_servers": bootstrap})
    try:
        create_topics(settings)
        worker = Worker(settings, services)

        async def main(stop: Any) -> None:
            work = asyncio.create_task(worker.run())
            ingress, runners = await serve(
                settings, host=args.host, port=args.port, admin_port=args.admin_port
            )
            _say(
                f"kourier dev: Kafka {settings.bootstrap_servers}, namespace "
                f"{settings.namespace}, ingress http://{args.host}:{args.port}, "
                f"admin http://{args.host}:{args.admin_port}"
            )
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
            for runner in runners:
                await runner.cleanup()
            await ingress.close()
            worker.stop()
            await work

        return _run_until_signal(main)
    finally:
        if started_broker:
            broker.stop(data_dir)


def _parse_target(text: str) -> Any:
    from streams.wire.records import Target

    parts = text.strip("/").split("/")
    if len(parts) == 2:
        return Target(service=parts[0], handler=parts[1])
    if len(parts) == 3:
        return Target(service=parts[0], key=parts[1], handler=parts[2])
    raise ValueError(f"target {text!r} must be Service/handler or Object/key/handler")


def _call(args: argparse.Namespace) -> int:
    import asyncio

    from streams.client import Client
    from streams.http.ingress import parse_duration

    target = _parse_target(args.target)
    argument = json.loads(args.json) if args.json is not None else None

    async def main() -> int:
        async with Client(_settings(args)) as client:
            if args.command == "send":
                delay = parse_duration(args.delay) if args.delay else None
                await client.catalog()
                receipt = await client.send_to(
                    target, argument, delay=delay, idempotency_key=args.idempotency_key
                )
                print(json.dumps({"invocationId": receipt.invocation_id, "status": receipt.status}))
                return 0
            await client.catalog()
            inv_id, response = await client.call(
                target, argument, idempotency_key=args.idempotency_key
            )
            _say(f"invocation {inv_id}")
            if response.failure is not None:
                print(json.dumps(response.failure.model_dump()))
                return 1
            print(json.dumps(response.value))
            return 0

    return asyncio.run(main())


# -- admin: invocations, services, state (over the admin HTTP API) --------------


def _http(method: str, url: str) -> tuple[int, Any]:
    """One JSON request; returns (status, decoded body) for 2xx and 4xx/5xx alike."""
    from urllib.error import HTTPError, URLError
    from urllib.request import Request, urlopen

    request = Request(url, method=method)
    token = os.environ.get("KOURIER_TOKEN")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read() or b"null")
    except HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body)
        except ValueError:
            return error.code, {"code": error.code, "message": body.decode(errors="replace")}
    except URLError as error:
        message = f"cannot reach {url}: {error.reason} (is `kourier ingress` up?)"
        raise ConnectionError(message) from None


def _admin(args: argparse.Namespace) -> int:
    from urllib.parse import quote, urlencode

    admin = args.admin_url.rstrip("/")
    op = getattr(args, "op", None)
    if args.command == "services":
        status, body = _http("GET", f"{admin}/services")
    elif args.command == "state":
        status, body = _http("GET", f"{admin}/state/{quote(args.service)}/{quote(args.key)}")
    elif op == "list":
        query = {"status": args.status, "service": args.service, "key": args.key}
        params = urlencode({k: v for k, v in query.items() if v} | {"limit": args.limit})
        status, body = _http("GET", f"{admin}/invocations?{params}")
    elif op == "deadlocks":
        status, body = _http("GET", f"{admin}/deadlocks")
    elif op == "describe":
        status, body = _http("GET", f"{admin}/invocations/{quote(args.id)}")
    elif op == "attach":
        ingress = args.ingress_url.rstrip("/")
        status, body = _http("GET", f"{ingress}/restate/attach/{quote(args.id)}")
    else:
        status, body = _http("PATCH", f"{admin}/invocations/{quote(args.id)}/{op}")
    print(json.dumps(body, indent=2))
    return 0 if status < 400 else 1


def _dlq(args: argparse.Namespace) -> int:
    from streams.kafka import deadletters

    settings = _settings(args)
    letters = deadletters.read(settings, reason=args.reason)
    if args.op == "list":
        rows = [letter.model_dump(mode="json") for letter in letters[-args.limit :]]
        print(json.dumps(rows, indent=2))
        return 0
    chosen = [x for x in letters if args.all or x.dlq_offset in set(args.offset or [])]
    if args.all:  # letters that cannot be replayed are left where they are, and named
        ingress = Topics(settings.namespace).ingress
        kept = [x.dlq_offset for x in chosen if x.truncated is not None or x.topic != ingress]
        if kept:
            _say(f"kourier: leaving {len(kept)} letters that cannot be replayed: offsets {kept}")
        chosen = [x for x in chosen if x.dlq_offset not in kept]
    if not chosen:
        _say("kourier: nothing to replay: give --offset N (repeatable) or --all")
        return 1
    try:
        count = deadletters.replay(settings, chosen)
    except ValueError as error:
        _say(f"kourier: {error}; nothing was replayed")
        return 1
    print(json.dumps({"replayed": count, "offsets": [x.dlq_offset for x in chosen]}))
    return 0


# -- parser -------------------------------------------------------------------


def _kafka_flags(parser: argparse.ArgumentParser, partitions: bool = False) -> None:
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap (KOURIER_BOOTSTRAP_SERVERS)")
    parser.add_argument("--namespace", help="topic prefix (KOURIER_NAMESPACE, default kourier)")
    if partitions:
        parser.add_argument(
            "--partitions", type=int, help="ingress partitions (KOURIER_PARTITIONS, default 8)"
        )


def _http_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=8080, help="HTTP ingress port")
    parser.add_argument("--admin-port", type=int, default=9070, help="admin API port")


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
            op.add_argument(
                "--port", type=int, default=9092, help="listener port, the first node's with "
                "--nodes (the others take the next ones); 0 = any free"
            )  # fmt: skip
            op.add_argument(
                "--nodes", type=int, default=1, help="KRaft nodes: 3 starts a local cluster"
            )
        op.set_defaults(func=func)

    schema = commands.add_parser("schema", help="JSON Schema of the ingress and response records")
    schema.add_argument("which", nargs="?", choices=("all", "ingress", "response"), default="all")
    schema.set_defaults(func=_schema)

    topics = commands.add_parser("topics", help="create or describe Kourier's topics")
    topic_ops = topics.add_subparsers(dest="op", required=True)
    create = topic_ops.add_parser("create", help="create missing topics (idempotent)")
    _kafka_flags(create, partitions=True)
    create.add_argument(
        "--replication-factor",
        type=int,
        help="replicas per topic (KOURIER_REPLICATION_FACTOR; default min(3, brokers))",
    )
    create.set_defaults(func=_topics_create)
    describe = topic_ops.add_parser("describe", help="show the namespace's topics")
    _kafka_flags(describe, partitions=True)
    describe.set_defaults(func=_topics_describe)
    worker = commands.add_parser("worker", help="run handlers: MODULE or MODULE:ATTR")
    worker.add_argument("module", help="e.g. examples.quickstart or app.services:ALL")
    worker.add_argument("--worker-id", help="stable id (default: host name + free slot)")
    worker.add_argument("-v", "--verbose", action="store_true")
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ["KOURIER_METRICS_PORT"])
        if os.environ.get("KOURIER_METRICS_PORT")
        else None,
        help="serve Prometheus metrics on this port (KOURIER_METRICS_PORT; default: off)",
    )
    worker.add_argument("--metrics-host", default="127.0.0.1", help="interface for metrics")
    _kafka_flags(worker)
    worker.set_defaults(func=_worker)

    ingress = commands.add_parser("ingress", help="the HTTP ingress and the admin API")
    _http_flags(ingress)
    _kafka_flags(ingress)
    ingress.set_defaults(func=_ingress)

    dev = commands.add_parser("dev", help="broker + topics + worker + ingress, for development")
    dev.add_argument("module", help="the handlers to run, e.g. examples.quickstart")
    dev.add_argument("--kafka-port", type=int, default=0, help="local broker port (0 = free)")
    dev.add_argument("--nodes", type=int, default=1, help="local KRaft nodes (3: a cluster)")
    dev.add_argument("--data", default=str(_DEFAULT_DATA.with_name("dev-broker")))
    dev.add_argument("-v", "--verbose", action="store_true")
    _http_flags(dev)
    _kafka_flags(dev, partitions=True)
    dev.set_defaults(func=_dev)

    for name, text in (
        ("call", "call a handler and print its result"),
        ("send", "send a one-way message to a handler"),
    ):
        cmd = commands.add_parser(name, help=text)
        cmd.add_argument("target", help="Service/handler or Object/key/handler")
        cmd.add_argument("json", nargs="?", help="the argument, as JSON")
        cmd.add_argument("--idempotency-key")
        if name == "send":
            cmd.add_argument("--delay", help="run no earlier than this: 500ms, 5s, 10m, PT1H")
        _kafka_flags(cmd)
        cmd.set_defaults(func=_call)

    invocations = commands.add_parser("invocations", help="list, inspect and control invocations")
    invocation_ops = invocations.add_subparsers(dest="op", required=True)
    listing = invocation_ops.add_parser("list", help="invocations, newest first")
    listing.add_argument("--status", help="pending, running, suspended, backing-off, paused, ...")
    listing.add_argument("--service")
    listing.add_argument("--key")
    listing.add_argument("--limit", type=int, default=50)
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
        op.add_argument("id", help="invocation id (inv_...)")
        _admin_flags(op)
    dlq = commands.add_parser("dlq", help="dead letters: list them, replay them to ingress")
    dlq_ops = dlq.add_subparsers(dest="op", required=True)
    dlq_list = dlq_ops.add_parser("list", help="dead letters with their reason, newest last")
    dlq_list.add_argument("--limit", type=int, default=100)
    dlq_replay = dlq_ops.add_parser("replay", help="produce dead letters to ingress again")
    dlq_replay.add_argument("--offset", type=int, action="append", help="a DLQ offset")
    dlq_replay.add_argument("--all", action="store_true", help="every one (of --reason)")
    for op in (dlq_list, dlq_replay):
        op.add_argument("--reason", help="only these: not-json, bad-schema, unknown-target, ...")
        _kafka_flags(op)
        op.set_defaults(func=_dlq)
    services = commands.add_parser("services", help="services the workers announce")
    _admin_flags(services)
    state = commands.add_parser("state", help="an object's or workflow's state")
    state_ops = state.add_subparsers(dest="op", required=True)
    state_get = state_ops.add_parser("get", help="print the state of one key")
    state_get.add_argument("service")
    state_get.add_argument("key")
    _admin_flags(state_get)
    return parser


def _admin_flags(parser: argparse.ArgumentParser) -> None:
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
    parser.set_defaults(func=_admin)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        refused = isinstance(exc, KourierError) and not exc.retriable
        if refused or isinstance(exc, (ValueError, ConnectionError)):
            _say(f"kourier: error: {exc}")
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
