"""A local, genuine Apache Kafka broker (KRaft) for development and tests: one node, or a
cluster of several on loopback.

The broker jars come from Maven Central through ``deploy/kafka/pom.xml``
(``mvn dependency:copy-dependencies``); Maven caches them in ``~/.m2`` and
Kourier keeps the copied class path in ``~/.cache/kourier``, so only the first
start downloads anything. A data directory holds everything of one broker:
``server.properties``, the Kafka log dirs, ``server.log`` and ``broker.pid``. A cluster's
data directory holds one such directory per node (``node-1``, ``node-2``, ...), each
node a combined broker and controller.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template

from streams.errors import KourierError
from streams.kafka.ports import free_port as free_port  # (where callers have found it)
from streams.kafka.ports import port_in_use, reserve

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "kafka"
_READY_TIMEOUT = 90.0
#: How long Maven may take to resolve the broker jars (the first run downloads about
#: 100 MB) and Kafka's StorageTool to format a data directory, before both are stopped.
MAVEN_TIMEOUT = 900.0
FORMAT_TIMEOUT = 120.0
#: The JVM's garbage collector and compiler options for a local broker (its heap is set
#: apart). ``KAFKA_JVM_PERFORMANCE_OPTS``, the variable of Kafka's own start scripts,
#: replaces them when it is set. The default keeps C2, which pays for itself after about
#: half a minute of load. Measured on 2 cores, 32 concurrent chain calls:
#: - in a broker's first minutes, C2's compiler thread took 0.6 of a core, half of the
#:   broker's CPU: 3.9-4.1 ms of broker CPU per call, against 2.5 ms with C1 alone
#:   (``-XX:TieredStopAtLevel=1``);
#: - after 60,000 calls of warm-up, C2's code cost 1.1 ms per call, C1's 1.9 ms.
#: So C1 alone suits a broker started for a few minutes of work on a small machine.
JVM_PERFORMANCE_OPTS = ("-XX:+UseG1GC",)


class BrokerError(KourierError, RuntimeError):
    """The local broker could not be resolved, started or stopped."""


@dataclass(frozen=True)
class Broker:
    """A running local broker."""

    bootstrap: str
    pid: int
    data_dir: Path

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"


@dataclass(frozen=True)
class Cluster:
    """A running local cluster: its nodes, in node-id order."""

    nodes: list[Broker]
    data_dir: Path

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)


#: A new data directory's listener port when none is asked for.
DEFAULT_PORT = 9092


def node_dirs(data_dir: Path) -> list[Path]:
    """The node directories of a cluster's data directory (none for a single broker)."""
    found = [p for p in data_dir.glob("node-*") if p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def cache_dir() -> Path:
    return Path(os.environ.get("KOURIER_CACHE") or Path.home() / ".cache" / "kourier")


def kafka_version(deploy_dir: Path = DEPLOY_DIR) -> str:
    pom = deploy_dir / "pom.xml"
    if not pom.is_file():
        raise BrokerError(f"no {pom}: run Kourier from its source checkout")
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom.read_text())
    if not match:
        raise BrokerError(f"{deploy_dir / 'pom.xml'} does not pin <kafka.version>")
    return match.group(1)


def resolve_jars(deploy_dir: Path = DEPLOY_DIR) -> Path:
    """The directory of broker jars, resolved with Maven on first use.

    Each revision of ``pom.xml`` gets a directory of its own, named by its digest, so a
    broker that runs from older jars keeps them while newer ones are resolved beside them.
    Nothing here deletes a directory: which brokers run from one is not known for sure."""
    version = kafka_version(deploy_dir)  # (which says when there is no pom.xml)
    pom = deploy_dir / "pom.xml"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:16]
    libs = cache_dir() / f"kafka-{version}" / f"libs-{digest}"
    if libs.is_dir():  # a directory is renamed into place only once complete
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (mvn) is not installed: apt-get install maven")
    staging = libs.with_name(f"staging-{digest}.{os.getpid()}.{threading.get_ident()}")
    command = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    try:
        code, output = _run_bounded(command, MAVEN_TIMEOUT, "Maven")
        if code != 0:
            raise BrokerError(f"Maven could not resolve the Kafka jars:\n{output}")
        if not staging.is_dir():
            raise BrokerError(f"Maven wrote no jars to {staging}")
        try:
            staging.rename(libs)
        except OSError as error:
            if not libs.is_dir():  # not merely another process's same jars, first
                raise BrokerError(f"could not put the Kafka jars in {libs}: {error}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return libs


_LISTENERS = re.compile(r"^\s*listeners\s*=\s*(\S+?)\s*$", re.M)


def _taken(props: Path) -> str | None:
    """The address of ``props``' broker, or of its controller (said so), if something
    already holds its port: a data dir keeps the controller port it was made with, and a
    broker that cannot bind it only exited with code 1."""
    address = _address(props)
    if port_in_use(int(address.rsplit(":", 1)[1])):
        return address
    found = _LISTENERS.search(props.read_text())
    for listener in found.group(1).split(",") if found else ():
        name, _, controller = listener.partition("://")
        port = controller.rpartition(":")[2]
        if name == "CONTROLLER" and port.isdigit() and port_in_use(int(port)):
            return f"{controller} (its controller's)"
    return None


def _alive(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is the live broker of ``data_dir`` (resolved): not a recycled PID of
    something else, nor of another data directory's broker, which a stop would kill."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone, perhaps between the two reads
        return False
    zombie = stat.rsplit(")", 1)[1].split()[0] == "Z"
    args = cmdline.split(b"\0")
    props = str(data_dir / "server.properties").encode()
    return b"kafka.Kafka" in args and props in args and not zombie


#: The address clients are given (of whichever listener: a template may secure it).
_ADVERTISED = re.compile(r"^advertised\.listeners=\w+://(\S+)$", re.M)


def status(data_dir: Path) -> Broker | None:
    """The broker running from ``data_dir``, or ``None``."""
    pid_file = data_dir / "broker.pid"
    props = data_dir / "server.properties"
    if not pid_file.is_file() or not props.is_file():
        return None
    pid = int(pid_file.read_text())
    if not _alive(pid, data_dir.resolve()):
        return None
    match = _ADVERTISED.search(props.read_text())
    return Broker(bootstrap=match.group(1) if match else "?", pid=pid, data_dir=data_dir)


def _write_properties(data_dir: Path, port: int | None, deploy_dir: Path) -> Path:
    """Write ``server.properties``; a data dir keeps its ports across restarts unless
    another ``port`` is asked for (``None``: its own, 9092 for a new one). One written
    before single nodes stopped shutting down "controlled" gains that line (see the
    template: a graceful stop could leave a hanging transaction)."""
    props = data_dir / "server.properties"
    if props.is_file():
        text = props.read_text()
        current = re.search(r"^listeners=\w+://127\.0\.0\.1:(\d+),", text, re.M)
        if current and (port in (0, None) or int(current.group(1)) == port):
            if not re.search(r"^controlled\.shutdown\.enable=", text, re.M):
                props.write_text(text.rstrip("\n") + "\ncontrolled.shutdown.enable=false\n")
            return props
    _write_nodes([data_dir], [DEFAULT_PORT if port is None else port], deploy_dir)
    return props


def _write_nodes(dirs: list[Path], ports: list[int], deploy_dir: Path) -> None:
    """Write every node's ``server.properties``: each node is broker and controller, and
    all of them vote in the controller quorum. Port 0 picks a free one."""
    template = Template((deploy_dir / "server.properties.template").read_text())
    reserve(ports)  # no controller on a listener's port
    controllers = [free_port() for _ in dirs]
    voters = ",".join(f"{i}@127.0.0.1:{port}" for i, port in enumerate(controllers, 1))
    replicas = min(3, len(dirs))
    for node_id, (node_dir, port, controller) in enumerate(
        zip(dirs, ports, controllers, strict=True), 1
    ):
        node_dir.mkdir(parents=True, exist_ok=True)
        (node_dir / "server.properties").write_text(
            template.substitute(
                node_id=node_id,
                voters=voters,
                port=port or free_port(),
                controller_port=controller,
                log_dirs=node_dir / "kafka-logs",
                replicas=replicas,
                min_isr=min(2, replicas),
                heartbeat_ms=500 if len(dirs) > 1 else 2000,
                session_ms=3000 if len(dirs) > 1 else 9000,
                controlled_shutdown="true" if len(dirs) > 1 else "false",
            )
        )


def _cluster_id(data_dir: Path) -> str:
    """One id for every node of a cluster, kept in its data directory."""
    stored = data_dir / "cluster.id"
    if stored.is_file():
        return stored.read_text().strip()
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    stored.write_text(cluster_id)
    return cluster_id


def _run_bounded(command: list[str], timeout: float, what: str) -> tuple[int, str]:
    """Run ``command`` in a process group of its own and return its exit code and output
    (stdout, then stderr). Past ``timeout`` seconds, or on any exception here (Ctrl-C), the
    whole group is killed: ``mvn`` is a script whose JVM would outlive its shell."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except BaseException as error:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        if isinstance(error, subprocess.TimeoutExpired):
            raise BrokerError(f"{what} did not finish within {timeout:.0f}s") from None
        raise
    return process.returncode, out + err


def _format_storage(
    java: str, libs: Path, props: Path, data_dir: Path, cluster_id: str | None = None
) -> None:
    if (data_dir / "kafka-logs" / "meta.properties").is_file():
        return
    if cluster_id is None:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    command = [
        java,
        "-cp",
        f"{libs}/*",
        "kafka.tools.StorageTool",
        "format",
        # One argument with "=": a random id may start with "-", which argparse would
        # otherwise take for an option (1 start in 64 failed that way).
        f"--cluster-id={cluster_id}",
        "-c",
        str(props),
    ]
    code, output = _run_bounded(command, FORMAT_TIMEOUT, "Kafka's StorageTool")
    if code != 0:
        raise BrokerError(f"formatting KRaft storage failed:\n{output}")


def start(
    data_dir: Path,
    port: int | None = None,
    *,
    deploy_dir: Path = DEPLOY_DIR,
    heap: str = "1g",
    timeout: float = _READY_TIMEOUT,
    client: Mapping[str, str] | None = None,
) -> Broker:
    """Start a broker from ``data_dir`` (``port=0`` picks a free port; none given, the data
    dir's own, or :data:`DEFAULT_PORT` for a new one) and wait until it serves.

    Restarting an existing data dir keeps its topics, offsets and port. ``client`` holds the
    librdkafka settings that reach a broker whose template (in ``deploy_dir``) secures its
    listener: its security protocol and credentials.
    """
    data_dir = data_dir.resolve()
    _make_dir(data_dir)
    if node_dirs(data_dir):
        raise BrokerError(f"{data_dir} holds a cluster; start it with --nodes")
    running = status(data_dir)
    if running is not None:
        return running
    java = shutil.which("java")
    if java is None:
        raise BrokerError("Java 17+ is not installed: apt-get install openjdk-17-jre-headless")
    libs = resolve_jars(deploy_dir)
    props = _write_properties(data_dir, port, deploy_dir)
    address = _address(props)
    taken = _taken(props)
    if taken is not None:
        raise BrokerError(
            f"port of {taken} is already in use; choose another with --port N (`kourier"
            " dev`: --kafka-port N; 0 keeps the port a data dir has)"
        )
    _format_storage(java, libs, props, data_dir)
    try:  # a signal once launched stops it (by its pid file)
        process = _launch(java, libs, props, data_dir, deploy_dir, heap)
        wait_ready(address, timeout, process, client=client)
    except BaseException:
        stop(data_dir)
        raise
    return Broker(bootstrap=address, pid=process.pid, data_dir=data_dir)


def jvm_performance_opts(environ: Mapping[str, str]) -> list[str]:
    """``KAFKA_JVM_PERFORMANCE_OPTS`` from ``environ`` split at whitespace, as Kafka's
    scripts expand it (no quotes removed), when it is set and not empty; else
    :data:`JVM_PERFORMANCE_OPTS`."""
    custom = environ.get("KAFKA_JVM_PERFORMANCE_OPTS", "")
    return custom.split() if custom else list(JVM_PERFORMANCE_OPTS)


def _launch(
    java: str, libs: Path, props: Path, data_dir: Path, deploy_dir: Path, heap: str
) -> subprocess.Popen[bytes]:
    """Start ``kafka.Kafka`` on ``props`` in a session of its own; its PID goes to
    ``broker.pid``, its output to ``broker.out``."""
    command = [
        java,
        "-Xms256m",
        f"-Xmx{heap}",
        *jvm_performance_opts(os.environ),
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={data_dir}",
        f"-Dlog4j2.configurationFile={deploy_dir / 'log4j2.properties'}",
        "-cp",
        f"{libs}/*",
        "kafka.Kafka",
        str(props),
    ]
    process = None
    try:  # until its PID is written down, nothing else could stop it
        with (data_dir / "broker.out").open("ab") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        (data_dir / "broker.pid").write_text(str(process.pid))
    except BaseException:
        if process is not None:
            process.kill()
            process.wait()
        raise
    return process


def start_cluster(
    data_dir: Path,
    nodes: int = 3,
    port: int | None = None,
    *,
    deploy_dir: Path = DEPLOY_DIR,
    heap: str = "512m",
    timeout: float = _READY_TIMEOUT,
) -> Cluster:
    """Start ``nodes`` KRaft nodes from ``data_dir/node-<i>`` on loopback, listening on
    ``port``, ``port + 1``, ... (``port=0``: free ports), and wait until every one of them
    is a broker of the cluster. Restarting keeps topics, offsets and ports; nodes that
    already run are left alone (so a killed node can be started again this way)."""
    if nodes < 2:
        raise BrokerError("a cluster has two or more nodes; use start() for one")
    data_dir = data_dir.resolve()
    _make_dir(data_dir)
    if (data_dir / "server.properties").is_file():
        raise BrokerError(f"{data_dir} holds a single broker; give the cluster another --data")
    java = shutil.which("java")
    if java is None:
        raise BrokerError("Java 17+ is not installed: apt-get install openjdk-17-jre-headless")
    libs = resolve_jars(deploy_dir)
    dirs = [data_dir / f"node-{i}" for i in range(1, nodes + 1)]
    existing = node_dirs(data_dir)
    if existing and len(existing) != nodes:
        raise BrokerError(f"{data_dir} holds a {len(existing)}-node cluster, not {nodes}")
    if not all((d / "server.properties").is_file() for d in dirs):
        first = DEFAULT_PORT if port is None else port
        ports = [0] * nodes if first == 0 else [first + i for i in range(nodes)]
        _write_nodes(dirs, ports, deploy_dir)
    cluster_id = _cluster_id(data_dir)
    stopped = [d for d in dirs if status(d) is None]
    for node_dir in stopped:  # every port before any node starts, which would be stopped
        taken = _taken(node_dir / "server.properties")
        if taken is not None:
            raise BrokerError(
                f"port of {taken} is already in use: stop what holds it, or start the"
                " cluster with another --data (a cluster keeps the ports it was made with)"
            )
    launched: dict[Path, subprocess.Popen[bytes]] = {}
    try:
        for node_dir in stopped:
            props = node_dir / "server.properties"
            _format_storage(java, libs, props, node_dir, cluster_id)
            launched[node_dir] = _launch(java, libs, props, node_dir, deploy_dir, heap)
        nodes_now = [_node(d, launched.get(d)) for d in dirs]
        cluster = Cluster(nodes_now, data_dir)
        for node in nodes_now:  # a node killed moments ago may still be listed: ask each
            if node.data_dir in launched:
                wait_ready(node.bootstrap, timeout, launched[node.data_dir])
        # Each node learns of the others' registrations on its own: until all list every
        # broker, a client asking one that does not would create topics with fewer replicas.
        for node in nodes_now:
            wait_ready(node.bootstrap, timeout, *launched.values(), brokers=nodes)
    except BaseException:
        # Only what this call started (running nodes stay up), together, as stop() does; by
        # their pid files too, which a launch the exception cut short wrote.
        pids = {d: d / "broker.pid" for d in stopped}
        ours = {int(f.read_text()): d for d, f in pids.items() if f.is_file()}
        _stop_all({pid: d for pid, d in ours.items() if _alive(pid, d)})
        for process in launched.values():
            if process.poll() is None:  # (not told apart as this node's: ended all the same)
                process.kill()
            process.wait()
        for pid, node_dir in ours.items():
            _reap(pid)
            pids[node_dir].unlink(missing_ok=True)
        raise
    return cluster


def _make_dir(data_dir: Path) -> None:
    """Create ``data_dir`` if need be, or say why it cannot be one (a file, no access)."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / ".kourier-write-check"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise BrokerError(f"{data_dir} cannot be a data directory: {error.strerror}") from None


def _address(props: Path) -> str:
    found = _ADVERTISED.search(props.read_text())
    if found is None:
        raise BrokerError(f"{props} has no advertised listener")
    return found.group(1)


def _node(node_dir: Path, process: subprocess.Popen[bytes] | None) -> Broker:
    """The broker of ``node_dir``: the one just launched, or the one already running."""
    if process is not None:
        return Broker(_address(node_dir / "server.properties"), process.pid, node_dir)
    running = status(node_dir)
    if running is None:
        raise BrokerError(f"the node in {node_dir} stopped: see its server.log")
    return running


def cluster_status(data_dir: Path) -> list[tuple[Path, Broker | None]]:
    """Each node directory of a cluster, with its running broker or ``None``."""
    return [(node_dir, status(node_dir)) for node_dir in node_dirs(data_dir.resolve())]


def wait_ready(
    bootstrap: str,
    timeout: float,
    *processes: subprocess.Popen[bytes],
    brokers: int = 1,
    client: Mapping[str, str] | None = None,
) -> None:
    """Wait until ``brokers`` brokers answer a metadata request (they can create topics)."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({**(client or {}), "bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise BrokerError(f"a broker exited with code {process.returncode} while starting")
        try:
            metadata = admin.list_topics(timeout=1.0)
            if len(metadata.brokers) >= brokers:
                return
            last_error = f"{len(metadata.brokers)} of {brokers} brokers registered"
        except Exception as exc:  # KafkaException while the broker boots
            last_error = str(exc)
        time.sleep(0.2)
    raise BrokerError(
        f"the broker at {bootstrap} did not answer within {timeout:.0f}s: {last_error}"
    )


def stop(data_dir: Path, timeout: float = 30.0) -> bool:
    """Stop the broker of ``data_dir``, or every node of the cluster there, by PID
    (SIGTERM, then SIGKILL). True if one ran."""
    data_dir = data_dir.resolve()
    # A cluster's nodes are stopped together: one by one, the last ones would wait for a
    # controller quorum that the first ones took away.
    pid_files = [d / "broker.pid" for d in [*node_dirs(data_dir), data_dir]]
    pids = {f: int(f.read_text()) for f in pid_files if f.is_file()}
    alive = {pid: f.parent for f, pid in pids.items() if _alive(pid, f.parent)}
    _stop_all(alive, timeout)
    for pid_file, pid in pids.items():
        _reap(pid)
        pid_file.unlink(missing_ok=True)
    return bool(alive)


def _stop_all(alive: Mapping[int, Path], timeout: float = 30.0) -> None:
    """SIGTERM every broker in ``alive`` (PID: data dir) at once, then SIGKILL those
    still running after ``timeout`` seconds; return once all have ended."""
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):  # (it ended since)
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_alive(pid, d) for pid, d in alive.items()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid, node in alive.items():
        if _alive(pid, node):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while _alive(pid, node):
                time.sleep(0.05)


def kill(data_dir: Path) -> None:
    """``kill -9`` the broker of ``data_dir`` (for failure tests); its data stays."""
    data_dir = data_dir.resolve()
    pid = int((data_dir / "broker.pid").read_text())
    if _alive(pid, data_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while _alive(pid, data_dir):
            time.sleep(0.05)
    _reap(pid)


def _reap(pid: int) -> None:
    """Collect the exit status when the broker is our child, so it leaves no zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
