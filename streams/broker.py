"""A local, genuine Apache Kafka broker (KRaft, single node) for development and tests.

The broker jars come from Maven Central through ``deploy/kafka/pom.xml``
(``mvn dependency:copy-dependencies``); Maven caches them in ``~/.m2`` and
Kourier keeps the copied class path in ``~/.cache/kourier``, so only the first
start downloads anything. A data directory holds everything of one broker:
``server.properties``, the Kafka log dirs, ``server.log`` and ``broker.pid``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from string import Template

DEPLOY_DIR = Path(__file__).resolve().parents[1] / "deploy" / "kafka"
_READY_TIMEOUT = 90.0


class BrokerError(RuntimeError):
    """The local broker could not be resolved, started or stopped."""

    retriable = False


@dataclass(frozen=True)
class Broker:
    """A running local broker."""

    bootstrap: str
    pid: int
    data_dir: Path

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"


def cache_dir() -> Path:
    return Path(os.environ.get("KOURIER_CACHE", Path.home() / ".cache" / "kourier"))


def kafka_version(deploy_dir: Path = DEPLOY_DIR) -> str:
    match = re.search(
        r"<kafka.version>([^<]+)</kafka.version>", (deploy_dir / "pom.xml").read_text()
    )
    if not match:
        raise BrokerError(f"{deploy_dir / 'pom.xml'} does not pin <kafka.version>")
    return match.group(1)


def resolve_jars(deploy_dir: Path = DEPLOY_DIR) -> Path:
    """The directory of broker jars, resolved with Maven on first use."""
    pom = deploy_dir / "pom.xml"
    if not pom.is_file():
        raise BrokerError(f"no {pom}: run Kourier from its source checkout")
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    libs = cache_dir() / f"kafka-{kafka_version(deploy_dir)}" / "libs"
    stamp = libs / ".pom-sha256"
    if stamp.is_file() and stamp.read_text() == digest:
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (mvn) is not installed: apt-get install maven")
    staging = libs.with_name(f"libs.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
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
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BrokerError(f"Maven could not resolve the Kafka jars:\n{done.stdout}{done.stderr}")
    (staging / ".pom-sha256").write_text(digest)
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    return libs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live Kafka broker (not a recycled PID of something else)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    zombie = stat.rsplit(")", 1)[1].split()[0] == "Z"
    return b"kafka.Kafka" in cmdline and not zombie


def status(data_dir: Path) -> Broker | None:
    """The broker running from ``data_dir``, or ``None``."""
    pid_file = data_dir / "broker.pid"
    props = data_dir / "server.properties"
    if not pid_file.is_file() or not props.is_file():
        return None
    pid = int(pid_file.read_text())
    if not _alive(pid):
        return None
    match = re.search(r"^advertised\.listeners=PLAINTEXT://(\S+)$", props.read_text(), re.M)
    return Broker(bootstrap=match.group(1) if match else "?", pid=pid, data_dir=data_dir)


def _write_properties(data_dir: Path, port: int, deploy_dir: Path) -> Path:
    """Write ``server.properties``; a data dir keeps its ports across restarts."""
    props = data_dir / "server.properties"
    if props.is_file():
        current = re.search(r"^listeners=PLAINTEXT://127\.0\.0\.1:(\d+),", props.read_text(), re.M)
        if current and (port == 0 or int(current.group(1)) == port):
            return props
    if port == 0:
        port = free_port()
    template = Template((deploy_dir / "server.properties.template").read_text())
    props.write_text(
        template.substitute(
            port=port, controller_port=free_port(), log_dirs=data_dir / "kafka-logs"
        )
    )
    return props


def _format_storage(java: str, libs: Path, props: Path, data_dir: Path) -> None:
    if (data_dir / "kafka-logs" / "meta.properties").is_file():
        return
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
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BrokerError(f"formatting KRaft storage failed:\n{done.stdout}{done.stderr}")


def start(
    data_dir: Path,
    port: int = 9092,
    *,
    deploy_dir: Path = DEPLOY_DIR,
    heap: str = "1g",
    timeout: float = _READY_TIMEOUT,
) -> Broker:
    """Start a broker from ``data_dir`` (``port=0`` picks a free port) and wait until it serves.

    Restarting an existing data dir keeps its topics, offsets and port.
    """
    data_dir = data_dir.resolve()
    running = status(data_dir)
    if running is not None:
        return running
    java = shutil.which("java")
    if java is None:
        raise BrokerError("Java 17+ is not installed: apt-get install openjdk-17-jre-headless")
    libs = resolve_jars(deploy_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    props = _write_properties(data_dir, port, deploy_dir)
    bootstrap = re.search(r"^advertised\.listeners=PLAINTEXT://(\S+)$", props.read_text(), re.M)
    assert bootstrap is not None
    address = bootstrap.group(1)
    if _port_in_use(int(address.rsplit(":", 1)[1])):
        raise BrokerError(f"port of {address} is already in use; choose another with --port")
    _format_storage(java, libs, props, data_dir)
    command = [
        java,
        "-Xms256m",
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={data_dir}",
        f"-Dlog4j2.configurationFile={deploy_dir / 'log4j2.properties'}",
        "-cp",
        f"{libs}/*",
        "kafka.Kafka",
        str(props),
    ]
    with (data_dir / "broker.out").open("ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    (data_dir / "broker.pid").write_text(str(process.pid))
    broker = Broker(bootstrap=address, pid=process.pid, data_dir=data_dir)
    try:
        wait_ready(address, timeout, process)
    except BaseException:
        stop(data_dir)
        raise
    return broker


def wait_ready(
    bootstrap: str, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until the broker answers a metadata request and can create topics."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BrokerError(f"the broker exited with code {process.returncode} while starting")
        try:
            metadata = admin.list_topics(timeout=1.0)
            if metadata.brokers:
                return
        except Exception as exc:  # KafkaException while the broker boots
            last_error = str(exc)
        time.sleep(0.2)
    raise BrokerError(
        f"the broker at {bootstrap} did not answer within {timeout:.0f}s: {last_error}"
    )


def stop(data_dir: Path, timeout: float = 30.0) -> bool:
    """Stop the broker of ``data_dir`` by its PID (SIGTERM, then SIGKILL). True if one ran."""
    data_dir = data_dir.resolve()
    pid_file = data_dir / "broker.pid"
    if not pid_file.is_file():
        return False
    pid = int(pid_file.read_text())
    was_alive = _alive(pid)
    if was_alive:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
    _reap(pid)
    pid_file.unlink(missing_ok=True)
    return was_alive


def kill(data_dir: Path) -> None:
    """``kill -9`` the broker of ``data_dir`` (for failure tests); its data stays."""
    pid = int((data_dir.resolve() / "broker.pid").read_text())
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)
    _reap(pid)


def _reap(pid: int) -> None:
    """Collect the exit status when the broker is our child, so it leaves no zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
