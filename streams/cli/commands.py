"""What each ``kourier`` command does; ``streams.cli.parser`` maps the command line to them."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from streams.cli import dump, output
from streams.errors import ServeError
from streams.kafka import broker
from streams.settings import Settings
from streams.wire.topics import Topics

#: The signals that end a long-running command, through its clean-up.
ENDING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

DEFAULT_DATA = broker.cache_dir() / "broker"  # KOURIER_CACHE moves it, as the jars


def settings_of(args: argparse.Namespace) -> Settings:
    """The environment's settings, with what the command's flags say instead."""
    return Settings.from_env(
        bootstrap_servers=getattr(args, "bootstrap_servers", None),
        namespace=getattr(args, "namespace", None),
        partitions=getattr(args, "partitions", None),
        replication_factor=getattr(args, "replication_factor", None),
    )


def say(message: str) -> None:
    """A line for a person, on stderr: escaped, as it may quote a server's answer."""
    print(output.terminal_safe(message), file=sys.stderr, flush=True)


# -- broker ------------------------------------------------------------------


def broker_start(args: argparse.Namespace) -> int:
    """Start a broker or a cluster. A signal that ends the command while it starts them
    stops what it started (broker.start and start_cluster clean up on the way out)."""
    return _ended_by_signals(lambda: _broker_start(args))


def _warn_of_two(nodes: int) -> None:
    """Two nodes are allowed (replication can be tried on them) but survive no loss."""
    if nodes == 2:
        say("kourier: warning: 2 nodes tolerate the loss of neither (the KRaft quorum and "
            "writes with min.insync.replicas=2 need both); 3 tolerate one")  # fmt: skip


def _broker_start(args: argparse.Namespace) -> int:
    if args.port and args.port + args.nodes - 1 > 65535:  # the other nodes take the next ones
        raise ValueError(f"--port {args.port} leaves no room for {args.nodes} nodes' ports")
    if args.port and args.nodes == 1:  # its broker running elsewhere is not the one asked for
        _on_port(args)
    began = time.monotonic()
    say(f"kourier: resolving Apache Kafka {broker.kafka_version()} with Maven ...")
    broker.resolve_jars()
    if args.nodes > 1:
        _warn_of_two(args.nodes)
        say(f"kourier: starting {args.nodes} KRaft nodes in {args.data} ...")
        cluster = broker.start_cluster(Path(args.data), args.nodes, port=args.port)
        pids = ", ".join(str(node.pid) for node in cluster.nodes)
        say(f"kourier: cluster ready in {time.monotonic() - began:.1f}s (pids {pids})")
        _started(args, cluster.bootstrap, [node.pid for node in cluster.nodes])
        return 0
    say(f"kourier: starting the broker in {args.data} ...")
    running = broker.start(Path(args.data), port=args.port)
    say(f"kourier: broker pid {running.pid} ready in {time.monotonic() - began:.1f}s")
    _started(args, running.bootstrap, [running.pid])
    return 0


def _started(args: argparse.Namespace, bootstrap: str, pids: list[int]) -> None:
    """The bootstrap address alone (scripts capture it), or with ``--json`` a document."""
    if args.json:
        print(json.dumps({"bootstrap": bootstrap, "pids": pids, "data": str(args.data)}))
    else:
        print(bootstrap)


def broker_jars(args: argparse.Namespace) -> int:
    print(broker.resolve_jars())
    return 0


def _running(data: Path) -> dict[Path, broker.Broker]:
    """The brokers running from ``data``: a cluster's by node directory, or its one."""
    nodes = broker.cluster_status(data)
    if nodes:
        return {node_dir: found for node_dir, found in nodes if found is not None}
    found = broker.status(data.resolve())
    return {} if found is None else {data: found}


def _on_port(args: argparse.Namespace) -> None:
    """With ``--port``, refuse (``ValueError``) when the brokers running from ``--data``
    listen elsewhere: ``stop`` would stop another broker than the one meant."""
    if getattr(args, "port", None) is None:
        return
    listening = [found.bootstrap for found in _running(Path(args.data)).values()]
    if listening and not any(b.rsplit(":", 1)[-1] == str(args.port) for b in listening):
        where = ", ".join(listening)
        raise ValueError(f"the broker of {args.data} listens on {where}, not port {args.port}")


def broker_stop(args: argparse.Namespace) -> int:
    _on_port(args)
    stopped = broker.stop(Path(args.data))
    say("kourier: broker stopped" if stopped else "kourier: no broker was running there")
    return 0


def broker_status(args: argparse.Namespace) -> int:
    _on_port(args)
    nodes = broker.cluster_status(Path(args.data))
    if nodes:
        rows = [
            {"data": str(node_dir), "running": running is not None}
            | ({"bootstrap": running.bootstrap, "pid": running.pid} if running else {})
            for node_dir, running in nodes
        ]
        up = sum(row["running"] is True for row in rows)
        cluster = {"running": up == len(rows), "nodes": rows}
        output.emit(
            args,
            cluster,
            lambda c: output.table(c["nodes"], ["data", "running", "bootstrap", "pid"]),
        )
        return 0 if up == len(rows) else 1
    running = broker.status(Path(args.data))
    if running is None:
        output.emit(args, {"running": False, "data": str(args.data)}, output.one_line)
        return 1
    found = {
        "running": True,
        "bootstrap": running.bootstrap,
        "pid": running.pid,
        "data": str(running.data_dir),
    }
    output.emit(args, found, output.one_line)
    return 0


# -- schema and topics ---------------------------------------------------------


def schema(args: argparse.Namespace) -> int:
    from streams.wire.records import json_schemas

    schemas = json_schemas()
    document = schemas if args.which == "all" else schemas[args.which]
    print(json.dumps(document, indent=2))
    return 0


def topics_create(args: argparse.Namespace) -> int:
    from streams.kafka.admin import create_topics

    states = create_topics(settings_of(args))
    if args.json:  # the lines below are the established output, piped or not
        rows = [
            {
                "topic": state.spec.name,
                "created": state.created,
                "mended": state.mended,
                "partitions": state.partitions,
                "replication_factor": state.replication_factor,
            }
            for state in states
        ]
        print(json.dumps({"topics": rows}, indent=2))
        return 0
    for state in states:
        verb = "created" if state.created else "mended " if state.mended else "exists "
        shape = f"{state.partitions} partitions, {state.replication_factor} replicas"
        print(f"{verb} {state.spec.name} ({shape})")
    return 0


def _ensure_topics(args: argparse.Namespace, settings: Settings, mend: bool = True) -> None:
    """Create the namespace's missing topics (unless ``--no-create-topics``) and, unless not
    to ``mend``, set what Kourier needs on existing ones, saying which."""
    if not getattr(args, "create_topics", True):  # (``dev`` always creates them)
        return
    from streams.kafka.admin import create_missing_topics

    changed, partitions = create_missing_topics(settings, mend=mend)
    for state in changed:
        if state.created:
            shape = f"{state.partitions} partitions, {state.replication_factor} replicas"
            say(f"kourier: created {state.spec.name} ({shape})")
        else:
            say(f"kourier: mended {state.spec.name}: its settings would delete records Kourier"
                " needs")  # fmt: skip
    asked = getattr(args, "partitions", None)
    if asked is not None and asked != partitions:
        say(f"kourier: warning: --partitions {asked} is ignored: the namespace's topics keep (or"
            f" are created with) the {partitions} partitions of its ingress topic")  # fmt: skip


def topics_describe(args: argparse.Namespace) -> int:
    from streams.kafka.admin import describe_topics

    described = describe_topics(settings_of(args))
    output.emit(args, described, output.topics)
    for warning in described["warnings"]:
        say(f"kourier: warning: {warning}")
    return 0


def acls(args: argparse.Namespace) -> int:
    """The ACLs the named principals need in the namespace (``streams.kafka.acls``); with
    ``--apply``, created with the CLI's own Kafka settings."""
    from dataclasses import asdict

    from streams.kafka.acls import Role, create_acls, needed

    principals: dict[Role, str] = {}
    named: tuple[tuple[Role, str | None], ...] = (("worker", args.worker), ("client", args.client))
    for role, principal in named:
        if principal is None:
            continue
        if ":" not in principal:
            raise ValueError(f"{principal!r} names no principal type: write User:{principal}")
        principals[role] = principal
    if not principals:
        raise ValueError("name whom to grant: --worker User:NAME, --client User:NAME or both")
    settings = settings_of(args)
    wanted = needed(settings.namespace, principals)
    if args.apply:
        create_acls(settings, wanted)
    rows = [asdict(acl) for acl in wanted]
    body = {"namespace": settings.namespace, "applied": args.apply, "acls": rows}
    output.emit(args, body, output.acls)
    return 0


# -- worker, calls -------------------------------------------------------------------


def _configure_logging(verbose: bool = False) -> None:
    from streams import logs

    logs.configure(verbose, os.environ.get("KOURIER_LOG_FORMAT") or "text")


def _run_until_signal(
    main: Any, traced_as: str, status: Callable[[], Mapping[str, Any]] | None = None
) -> int:
    """Run ``main`` (a coroutine function taking a stop event) until SIGINT, SIGTERM or SIGHUP,
    exporting its spans as service ``traced_as`` when ``OTEL_TRACES_EXPORTER`` says so.
    SIGUSR1 dumps the threads, ``status()`` and the asyncio tasks (streams/cli/dump.py).

    What the process built before this point (modules, the services, settings) lives as
    long as it does, so it is taken out of the garbage collector's reach (``gc.freeze``).
    Otherwise every full collection walks it: about 53,000 objects after the imports,
    28 ms a collection, during which every call in flight waits (one such collection in
    each of a worker and an ingress over 2,500 sequential calls, ``hops --http``)."""
    import asyncio
    import gc

    from streams import tracing
    from streams.kafka.threads import RUN_THREADS, Unwaited

    if tracing.configure(traced_as):
        say(f"kourier: traces exported ({os.environ['OTEL_TRACES_EXPORTER']})")

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.set_default_executor(Unwaited(thread_name_prefix=f"{RUN_THREADS}-to-thread"))
        for sig in ENDING:
            loop.add_signal_handler(sig, stop.set)
        try:
            dump.install(loop, status)
            await main(stop)
        finally:
            dump.uninstall(loop)

    gc.freeze()
    # The loop's handlers end with it, leaving each signal's default action: the ones in
    # place before it (``kourier dev``'s) hold again while the spans are sent.
    before = {sig: signal.getsignal(sig) for sig in ENDING}
    try:
        asyncio.run(runner())
    finally:
        _restore(before)
        tracing.shutdown()
    return 0


def worker(args: argparse.Namespace) -> int:
    dump.from_the_start()  # a SIGUSR1 must not end it; a crash says where it was
    import asyncio

    from streams.engine import spill
    from streams.engine.registry import load_services
    from streams.kafka.worker import Worker

    _configure_logging(args.verbose)
    spill.probe()
    sys.path.insert(0, ".")
    settings = settings_of(args)
    services = load_services(args.module)
    _ensure_topics(args, settings)
    worker = Worker(settings, services, worker_id=args.worker_id)
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        try:
            served, _ = start_http_server(args.metrics_port, addr=args.metrics_host)
        except OSError as error:
            raise ServeError(args.metrics_host, args.metrics_port, error) from None
        port = served.server_port  # the one bound, for --metrics-port 0
        say(f"kourier: worker metrics on http://{args.metrics_host}:{port}/metrics")

    async def main(stop: Any) -> None:
        task = asyncio.create_task(worker.run())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        worker.stop()
        await task

    try:
        return _run_until_signal(main, "kourier-worker", worker.status)
    finally:  # stopped, or failed
        _leave_blocked_actions()


#: Set when a stopped worker left handlers' blocking work on its threads: the command then
#: ends the process at once (``parser.main``), as the interpreter would wait for them.
EXIT_AT_ONCE = False


def _leave_blocked_actions() -> None:
    """Whether handlers' blocking work (synchronous ``ctx.run`` actions, their own
    ``asyncio.to_thread`` calls) still holds threads 5 s after the worker stopped: their
    invocations were handed over, and run again on the next owner."""
    global EXIT_AT_ONCE
    from streams.kafka.threads import actions_left

    try:
        left = actions_left(5.0)
    except KeyboardInterrupt:  # a second Ctrl-C while they are waited for: out at once
        EXIT_AT_ONCE = True
        raise
    if left:
        say(f"kourier: {left} blocking call(s) of handlers still on their threads; exiting")
        EXIT_AT_ONCE = True


def ingress(args: argparse.Namespace) -> int:
    dump.from_the_start()  # a SIGUSR1 must not end it; a crash says where it was
    from streams.engine import spill
    from streams.http.ingress import bound_port, serve, shut_down

    _configure_logging()
    spill.probe()  # the admin index spills too (streams/http/index_spill.py)
    settings = settings_of(args)
    _ensure_topics(args, settings, mend=False)  # (its principal may not read settings)

    async def main(stop: Any) -> None:
        ingress, runners = await serve(
            settings,
            host=args.host,
            port=args.port,
            admin_port=args.admin_port,
            admin_host=args.admin_host,
        )
        print(f"http://{args.host}:{bound_port(runners[0])}", flush=True)
        await stop.wait()
        await shut_down(ingress, runners)

    return _run_until_signal(main, "kourier-ingress")


def dev(args: argparse.Namespace) -> int:
    """Broker (unless KOURIER_BOOTSTRAP_SERVERS is set), topics, worker and ingress in one go.
    The brokers it starts run in sessions of their own: it stops them itself, whichever of
    SIGINT, SIGTERM and SIGHUP (a closed terminal) ends it, and whenever."""
    return _ended_by_signals(lambda: _dev(args))


def _ended_by_signals(run: Callable[[], int]) -> int:
    """``run()``, which SIGINT, SIGTERM and SIGHUP end as an exception (``SystemExit``), so
    that its clean-up runs (the brokers it started run in sessions of their own, and the
    default SIGTERM left them running); a second signal waits for that clean-up. The
    process's handlers are as they were once it returns."""
    previous = {sig: signal.getsignal(sig) for sig in ENDING}

    def leave(signum: int, frame: object) -> None:  # outside the event loop's own handlers
        _ignore_ending()
        raise SystemExit(128 + signum)

    for sig in ENDING:
        if previous[sig] is not signal.SIG_IGN:  # (nohup's SIGHUP, a background job's SIGINT)
            signal.signal(sig, leave)
    try:
        return run()
    finally:
        _restore(previous)


def _ignore_ending() -> None:
    for sig in ENDING:
        signal.signal(sig, signal.SIG_IGN)


def _restore(handlers: Mapping[signal.Signals, Any]) -> None:
    """Put ``handlers`` back (one that is None was not set from Python: left as it is)."""
    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


def _dev(args: argparse.Namespace) -> int:
    dump.from_the_start()  # a SIGUSR1 must not end it; a crash says where it was
    import asyncio

    from streams.engine import spill
    from streams.engine.registry import load_services
    from streams.http.ingress import bound_port, serve, shut_down
    from streams.kafka.worker import Worker

    _configure_logging(args.verbose)
    spill.probe()
    sys.path.insert(0, ".")
    services = load_services(args.module)
    data_dir = Path(args.data)
    started: list[Path] = []  # data directories of the brokers this command started
    settings = settings_of(args)  # refused before a broker starts that nothing would stop
    try:
        if not (os.environ.get("KOURIER_BOOTSTRAP_SERVERS") or args.bootstrap_servers):
            # Brokers already running from --data (another `kourier dev`, `kourier broker
            # start`) are used and left running: only what this command started is stopped.
            before = set(_running(data_dir))
            started = [] if before else [data_dir]  # from now: a start cut short is stopped
            with dump.default_mask():  # the brokers as `kourier broker start` starts them
                if args.nodes > 1:
                    _warn_of_two(args.nodes)
                    cluster = broker.start_cluster(data_dir, args.nodes, port=args.kafka_port)
                    bootstrap = cluster.bootstrap
                    nodes = [d for d, _ in broker.cluster_status(data_dir)]
                    # All together when it started them all: one by one, the last would
                    # wait for a quorum the first took away.
                    started = started or [d for d in nodes if d not in before]
                else:
                    bootstrap = broker.start(data_dir, port=args.kafka_port).bootstrap
            if before:
                say(f"kourier dev: using the brokers already running from {data_dir}; "
                    "left running")  # fmt: skip
            settings = settings.model_copy(update={"bootstrap_servers": bootstrap})
        _ensure_topics(args, settings)  # an existing namespace keeps its partition count
        worker = Worker(settings, services)

        async def main(stop: Any) -> None:
            work = asyncio.create_task(worker.run())
            ingress, runners = await serve(
                settings,
                host=args.host,
                port=args.port,
                admin_port=args.admin_port,
                admin_host=args.admin_host,
            )
            say(
                f"kourier dev: Kafka {settings.bootstrap_servers}, namespace "
                f"{settings.namespace}, ingress http://{args.host}:{bound_port(runners[0])}, "
                f"admin http://{args.admin_host or args.host}:{bound_port(runners[1])}"
            )
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
            await shut_down(ingress, runners)
            worker.stop()
            await work

        return _run_until_signal(main, "kourier", worker.status)
    finally:
        _ignore_ending()  # the clean-up runs to its end
        for started_dir in started:
            broker.stop(started_dir)
        _leave_blocked_actions()


def dlq(args: argparse.Namespace) -> int:
    from streams.kafka import deadletters

    settings = settings_of(args)
    if args.op == "list":
        letters = deadletters.read(settings, reason=args.reason, last=args.limit)
        output.emit(args, [letter.model_dump(mode="json") for letter in letters],
                    output.dead_letters)  # fmt: skip
        return 0
    if not args.all and not args.offset:  # a usage error: known before the topic is read
        say("kourier: error: give --offset N (repeatable) or --all")
        return 2
    letters = deadletters.read(settings, reason=args.reason)
    chosen = [x for x in letters if args.all or x.dlq_offset in set(args.offset or [])]
    if args.all:  # letters that cannot be replayed are left where they are, and named
        ingress = Topics(settings.namespace).ingress
        kept = [x.dlq_offset for x in chosen if x.truncated is not None or x.topic != ingress]
        if kept:
            say(f"kourier: leaving {len(kept)} letters that cannot be replayed: offsets {kept}")
        told = [x.dlq_offset for x in chosen if x.answered is not None and x.dlq_offset not in kept]
        if told:
            say(f"kourier: leaving {len(told)} letters whose caller was answered (replay them by"
                f" --offset to run them all the same): offsets {told}")  # fmt: skip
            kept += told
        chosen = [x for x in chosen if x.dlq_offset not in kept]
    else:
        missing = sorted(set(args.offset or []) - {x.dlq_offset for x in chosen})
        if missing:
            which = f" with reason {args.reason}" if args.reason else ""
            at = "offsets" if len(missing) > 1 else "offset"
            say(
                f"kourier: error: no dead letter{which} at {at} {', '.join(map(str, missing))};"
                " nothing was replayed (`kourier dlq list` shows them)"
            )
            return 2
    try:  # none (--all, and no letter of --reason that can be replayed) replays nothing
        count = deadletters.replay(settings, chosen) if chosen else 0
    except ValueError as error:  # the letters chosen cannot be replayed, now or later
        say(f"kourier: error: {error}; nothing was replayed")
        return 2
    except deadletters.ReplayIncomplete as error:
        say(f"kourier: error: replay: {error}; try again (`kourier dlq list` shows the letters)")
        return 1
    replayed = {"replayed": count, "offsets": [x.dlq_offset for x in chosen]}
    output.emit(args, replayed, output.one_line)
    return 0
