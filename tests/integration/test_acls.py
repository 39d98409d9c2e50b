"""Kafka with TLS, SASL and ACLs: a worker, an ingress, the Python client, the CLI and a
Faust app granted exactly what ``kourier acls --apply`` creates (``streams.kafka.acls``, the
README's table) serve calls, sends and delayed sends; a worker without ``Delete`` on the
delay topic says so once and goes on.

The broker here is the project's own, from a copy of its template whose client listener
takes SASL/PLAIN over TLS (``SASL_SSL``, with a certificate for 127.0.0.1 that the JDK's
``keytool`` makes for this module) and whose authorizer is Kafka's ``StandardAuthorizer``;
it runs for this module alone and is stopped by PID. Every client trusts that certificate
through ``ssl.ca.location`` and checks the broker's name against it, librdkafka's default.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from streams.client import Client
from streams.kafka import broker
from streams.kafka.acls import NEEDS, Acl, create_acls, needed
from streams.kafka.admin import create_topics
from streams.kafka.broker import free_port
from streams.settings import Settings
from tests.integration.conftest import ROOT, WorkerProcess
from tests.integration.helpers import poll_until
from tests.kafka_helpers import create_topic, drain, values

PASSWORDS = {user: f"{user}-secret" for user in ("admin", "worker", "client", "trimless")}
# The client listener takes SASL/PLAIN over TLS, with these users; the controller listener
# stays plaintext on loopback, and its principal (ANONYMOUS) and the broker's own are super
# users.
_SECURED = {
    "\nlisteners=PLAINTEXT://": "\nlisteners=SASL_SSL://",
    "\nadvertised.listeners=PLAINTEXT://": "\nadvertised.listeners=SASL_SSL://",
    "inter.broker.listener.name=PLAINTEXT": "inter.broker.listener.name=SASL_SSL",
    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,": (
        "listener.security.protocol.map=SASL_SSL:SASL_SSL,"
    ),
}
_USERS = " ".join(f'user_{name}="{password}"' for name, password in PASSWORDS.items())
_SASL = f"""
sasl.enabled.mechanisms=PLAIN
sasl.mechanism.inter.broker.protocol=PLAIN
listener.name.sasl_ssl.plain.sasl.jaas.config=\
org.apache.kafka.common.security.plain.PlainLoginModule required \
username="admin" password="{PASSWORDS["admin"]}" {_USERS};
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:ANONYMOUS
"""
_STORE_PASSWORD = "store-secret"
#: What every client of the secured broker trusts: the broker's certificate, once the
#: ``secured`` fixture has made it.
_TRUST: dict[str, str] = {}


def certificate(directory: Path) -> str:
    """Make the broker's key and self-signed certificate for 127.0.0.1 (the JDK's
    ``keytool``, which the broker's Java comes with) in ``directory``; the broker's TLS
    properties. The certificate, as PEM, is ``ca.pem`` there."""
    stores = {"storetype": "PKCS12", "storepass": _STORE_PASSWORD}
    pairs = [item for name, value in stores.items() for item in (f"-{name}", value)]
    keystore, truststore, pem = (directory / n for n in ("broker.p12", "trust.p12", "ca.pem"))

    def keytool(*argv: str) -> None:
        done = subprocess.run(["keytool", *argv], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr

    keytool("-genkeypair", "-alias", "broker", "-keyalg", "RSA", "-keysize", "2048",
            "-validity", "2", "-dname", "CN=127.0.0.1", "-ext", "SAN=ip:127.0.0.1",
            "-keystore", str(keystore), *pairs)  # fmt: skip
    keytool("-exportcert", "-rfc", "-alias", "broker", "-keystore", str(keystore),
            "-file", str(pem), *pairs)  # fmt: skip
    keytool("-importcert", "-noprompt", "-alias", "broker", "-file", str(pem),
            "-keystore", str(truststore), *pairs)  # fmt: skip
    return f"""
ssl.keystore.type=PKCS12
ssl.keystore.location={keystore}
ssl.keystore.password={_STORE_PASSWORD}
ssl.key.password={_STORE_PASSWORD}
ssl.truststore.type=PKCS12
ssl.truststore.location={truststore}
ssl.truststore.password={_STORE_PASSWORD}
"""


def sasl(user: str) -> dict[str, str]:
    """librdkafka settings of ``user``."""
    assert _TRUST, "the secured broker's certificate is made by the secured fixture"
    return {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": user,
        "sasl.password": PASSWORDS[user],
        **_TRUST,
    }


def sasl_env(user: str) -> dict[str, str]:
    """The same, as the ``KOURIER_KAFKA_*`` variables a Kourier process reads."""
    return {f"KOURIER_KAFKA_{k.replace('.', '_').upper()}": v for k, v in sasl(user).items()}


@dataclass
class Secured:
    bootstrap: str
    log: Path  # the broker's log, where the authorizer notes each denial


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A broker that authenticates and authorizes every client."""
    deploy = tmp_path_factory.mktemp("deploy")
    for name in ("pom.xml", "log4j2.properties"):  # the same pom: the same cached jars
        shutil.copy(broker.DEPLOY_DIR / name, deploy / name)
    template = (broker.DEPLOY_DIR / "server.properties.template").read_text()
    for plain, secure in _SECURED.items():
        assert plain in template, f"the broker template no longer has {plain!r}"
        template = template.replace(plain, secure)
    tls = certificate(deploy)
    (deploy / "server.properties.template").write_text(template + _SASL + tls)
    _TRUST["ssl.ca.location"] = str(deploy / "ca.pem")
    data = tmp_path_factory.mktemp("secured-kafka")
    try:
        running = broker.start(data, port=0, deploy_dir=deploy, client=sasl("admin"))
        try:
            yield Secured(running.bootstrap, data / "server.log")
        finally:
            broker.stop(data)
    finally:
        _TRUST.clear()


def namespace(bootstrap: str) -> Settings:
    """A new namespace, its topics created by the admin; the admin's settings."""
    ns = f"t{uuid.uuid4().hex[:12]}"
    settings = Settings(
        bootstrap_servers=bootstrap, namespace=ns, partitions=2, kafka=sasl("admin")
    )
    create_topics(settings)
    return settings


def as_user(admin: Settings, user: str) -> Settings:
    """The settings ``user`` connects with, once the broker lets ``user`` see the ingress
    topic: a broker applies new ACLs a moment after they are created (30 s at most)."""
    settings = admin.model_copy(update={"kafka": sasl(user)})
    client = AdminClient(settings.client_config({}))
    topic = f"{admin.namespace}.ingress"
    deadline = time.monotonic() + 30
    while (found := client.list_topics(topic, timeout=10).topics.get(topic)) is None or found.error:
        assert time.monotonic() < deadline, f"{user} still may not see {topic}: {found}"
        time.sleep(0.1)
    return settings


def worker_as(user: str, settings: Settings, log_dir: Path) -> WorkerProcess:
    """A worker of the integration apps as ``user``, deleting released delay records at once."""
    module = "tests.chaos.carrying:SERVICES"
    argv = ["-m", "streams.cli", "worker", module]
    process = WorkerProcess(settings, module, log_dir, sasl_env(user), argv)
    process.start()
    return process


def low_watermarks(admin: Settings) -> list[int]:
    """Where each delay partition now starts."""
    asked = {
        TopicPartition(f"{admin.namespace}.delay", p): OffsetSpec.earliest()
        for p in range(admin.partitions)
    }
    client = AdminClient(admin.client_config({}))  # kept: its futures end with it
    answered = client.list_offsets(asked, request_timeout=30)
    return [answered[tp].result(timeout=60).offset for tp in asked]


def cli(
    settings: Settings, user: str, argv: list[str], kafka: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``kourier <argv>`` as ``user``, or with the ``KOURIER_KAFKA_*`` variables ``kafka``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(sasl_env(user) if kafka is None else kafka))
    env.update(KOURIER_BOOTSTRAP_SERVERS=settings.bootstrap_servers,
               KOURIER_NAMESPACE=settings.namespace)  # fmt: skip
    command = [sys.executable, "-m", "streams.cli", *argv]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)


async def later(client: Client, key: str) -> None:
    """A delayed send made by a handler (``Relay/later``), which goes through the delay
    topic, to ``Tally/<key>/add``: 1 in half a second."""
    await asyncio.wait_for(client.service("Relay", "later").request({"key": key, "ms": 500}), 90)


async def count(client: Client, key: str) -> int:
    value: int = await asyncio.wait_for(client.object("Tally", key, "count").request(), 60)
    return value


async def test_a_worker_an_ingress_and_a_client_need_no_more_than_kourier_acls_creates(
    secured: Secured, tmp_path: Path
) -> None:
    admin = namespace(secured.bootstrap)
    applied = cli(admin, "admin", ["acls", "--worker", "User:worker", "--client", "User:client",
                                   "--apply", "--json"])  # fmt: skip
    assert applied.returncode == 0, applied.stdout + applied.stderr
    granted = json.loads(applied.stdout)
    assert granted["applied"] is True
    assert len(granted["acls"]) == sum(len(need.operations) for need in NEEDS)
    as_worker, as_client = as_user(admin, "worker"), as_user(admin, "client")
    port, admin_port = free_port(), free_port()
    argv = ["-m", "streams.cli", "ingress", "--port", str(port), "--admin-port", str(admin_port)]
    ingress = WorkerProcess(as_client, "", tmp_path, sasl_env("client"), argv)
    worker = worker_as("worker", as_worker, tmp_path)
    try:
        ingress.start()
        async with Client(as_client) as client:
            add = client.object("Tally", "acl", "add").request(1)
            try:
                assert await asyncio.wait_for(add, 90) == 1
            except TimeoutError:
                raise AssertionError(f"no answer in 90 s\n{worker.read_text()}") from None
            await client.object_send("Tally", "acl", "add").send(1, delay=timedelta(seconds=1))
            await later(client, "acl")
            await poll_until(lambda: count(client, "acl"), 3, 60, "the delayed sends' adds")
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{port}"
            await poll_until(lambda: _healthy(http, base), True, 60, "the ingress, healthy")
            async with http.post(f"{base}/Tally/acl/add", json=4) as reply:
                assert reply.status == 200, await reply.text()
                assert await reply.json() == 7
            async with http.get(f"http://127.0.0.1:{admin_port}/invocations") as reply:
                assert reply.status == 200, await reply.text()
        # The CLI, as the client: a call, and the dead letters (none).
        for command in (["call", "Tally/acl/count"], ["dlq", "list", "--json"]):
            done = await asyncio.to_thread(cli, as_client, "client", command)
            assert done.returncode == 0, done.stdout + done.stderr
            assert done.stdout.strip() == ("7" if command[0] == "call" else "[]"), done.stdout
        # The released delayed send's record is deleted: the worker may delete.
        await poll_until(
            lambda: asyncio.to_thread(lambda: sum(low_watermarks(admin)) > 0),
            True, 60, "a released delay record deleted",
        )  # fmt: skip
    finally:
        ingress.stop()
        worker.stop()
    logs = worker.read_text() + ingress.read_text()
    assert "AUTHORIZATION" not in logs.upper(), logs
    assert "not allowed" not in logs, logs
    denied = [line for line in secured.log.read_text().splitlines()
              if "Denied" in line and admin.namespace in line]  # fmt: skip
    assert not denied, "\n".join(denied)


async def test_a_worker_not_allowed_to_delete_delay_records_says_so_once_and_goes_on(
    secured: Secured, tmp_path: Path
) -> None:
    admin = namespace(secured.bootstrap)
    wanted = needed(admin.namespace, {"worker": "User:trimless"})
    # Nor to read the topics' configurations: it does not check their record limit, and
    # starts all the same.
    withheld = ("Delete", "DescribeConfigs")
    create_acls(admin, [acl for acl in wanted if acl.operation not in withheld])
    worker = worker_as("trimless", as_user(admin, "trimless"), tmp_path)
    refused = "not allowed to delete released records"
    try:
        async with Client(admin) as client:
            for _ in range(3):
                await later(client, "trimless")
            await poll_until(lambda: count(client, "trimless"), 3, 90, "three delayed adds")
            await poll_until(
                lambda: asyncio.to_thread(lambda: refused in worker.read_text()),
                True, 30, "the worker's warning",
            )  # fmt: skip
            await later(client, "trimless")
            await poll_until(lambda: count(client, "trimless"), 4, 60, "a delayed add after it")
    finally:
        worker.stop()
    logs = worker.read_text()
    assert logs.count(refused) == 1, logs
    assert "its configuration is not checked" in logs, logs
    assert low_watermarks(admin) == [0] * admin.partitions


async def test_a_faust_app_needs_the_clients_acls_and_fausts_own(
    secured: Secured, tmp_path: Path
) -> None:
    """``examples.faust_orders`` as the client, connected by ``broker_credentials`` from the
    same ``KOURIER_KAFKA_*`` variables as the Kourier client inside it: besides the client's
    ACLs, Faust's own: its group, its leader-assignment topic, and the two topics it writes.
    The four topics it declares exist already, so it needs no ``Create``."""
    admin = namespace(secured.bootstrap)
    ns = admin.namespace
    app_topics = [f"{ns}.{name}" for name in ("orders", "signups", "order-totals", "greetings")]
    faust_own = [
        Acl("User:client", "Group", f"{ns}-orders", "literal", "Read"),
        Acl("User:client", "Topic", f"{ns}-orders-", "prefixed", "All"),  # __assignor-__leader
        *(Acl("User:client", "Topic", topic, "literal", "Write") for topic in app_topics[2:]),
    ]
    create_acls(admin, [*needed(ns, {"worker": "User:worker", "client": "User:client"}),
                        *faust_own])  # fmt: skip
    for topic in app_topics:  # before the app starts (the README's Faust section)
        create_topic(admin, topic.removeprefix(f"{ns}."), partitions=2)
    as_client = as_user(admin, "client")
    worker = WorkerProcess(as_user(admin, "worker"), "examples.quickstart", tmp_path,
                           sasl_env("worker"))  # fmt: skip
    argv = ["-m", "examples.faust_orders", "--datadir", str(tmp_path / "faust"), "worker"]
    app = WorkerProcess(as_client, "", tmp_path, sasl_env("client"), argv)
    try:
        worker.start()
        app.start()
        producer = Producer(admin.client_config({}))
        for n, customer in enumerate(["ada", "bob", "ada"]):
            order = {"id": f"o{n}", "customer": customer, "amount": n + 1}
            producer.produce(app_topics[0], json.dumps(order).encode(), customer.encode())
        assert producer.flush(30) == 0, "orders left undelivered"
        try:
            totals = await asyncio.to_thread(drain, admin, app_topics[2], expect=3, timeout=120)
        except AssertionError as missing:
            raise AssertionError(f"{missing}\n{app.read_text()}\n{worker.read_text()}") from None
    finally:
        app.stop()
        worker.stop()
    by_order = {total["order"]: total["total"] for total in values(totals)}
    assert by_order == {"o0": 1, "o1": 2, "o2": 4}, by_order
    denied = [line for line in secured.log.read_text().splitlines()
              if "Denied" in line and ns in line]  # fmt: skip
    assert not denied, "\n".join(denied)


async def _healthy(http: aiohttp.ClientSession, base: str) -> bool:
    try:
        async with http.get(f"{base}/health") as reply:
            return reply.status == 200 and "Tally" in (await reply.json())["services"]
    except aiohttp.ClientError:
        return False


async def test_acls_apply_on_a_broker_without_an_authorizer_says_so(settings: Settings) -> None:
    env = dict(
        os.environ, PYTHONPATH=str(ROOT), KOURIER_BOOTSTRAP_SERVERS=settings.bootstrap_servers
    )
    command = [sys.executable, "-m", "streams.cli", "acls", "--worker", "User:w", "--apply"]
    done = await asyncio.to_thread(
        subprocess.run, command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 2, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == "kourier: error: Kafka: No Authorizer is configured.", done.stderr


@pytest.mark.parametrize(
    ("missing", "said"),
    [
        ("Topic", "could not create {ns}.ingress: Authorization failed"),
        ("Group", "Kafka refused this worker: FindCoordinator response error: Group authorization"),
        ("TransactionalId", "Transactional Id authorization failed"),
    ],
)
async def test_a_worker_short_of_an_acl_ends_saying_which_and_where_to_look(
    secured: Secured, missing: str, said: str
) -> None:
    admin = namespace(secured.bootstrap)
    wanted = needed(admin.namespace, {"worker": "User:worker"})
    create_acls(admin, [acl for acl in wanted if acl.resource != missing])
    if missing != "Topic":
        as_user(admin, "worker")  # the ACLs it has are in force: the refusal is the one missing
    done = await asyncio.to_thread(cli, admin, "worker", ["worker", "tests.integration.apps"])
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("kourier: error: "), done.stderr
    assert said.format(ns=admin.namespace) in last, last
    assert "`kourier acls`" in last, last


async def test_acls_apply_by_a_principal_that_may_not_says_what_it_takes(secured: Secured) -> None:
    admin = namespace(secured.bootstrap)
    done = await asyncio.to_thread(cli, admin, "client", ["acls", "--client", "User:x", "--apply"])
    assert done.returncode == 2, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("kourier: error: Kafka refused to create ACLs"), last
    assert "takes Alter on the cluster" in last, last


async def test_a_client_without_its_acls_is_told_where_to_look(secured: Secured) -> None:
    admin = namespace(secured.bootstrap)  # and no ACL for anyone
    done = await asyncio.to_thread(cli, admin, "client", ["call", "Tally/a/count"])
    assert done.returncode == 2, done.stdout + done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"kourier: error: topic {admin.namespace}.ingress is missing"), last
    assert "`kourier acls`" in last, last


async def test_a_client_that_does_not_trust_the_brokers_certificate_is_told_so_at_once(
    secured: Secured,
) -> None:
    """The listener is TLS for real: without ``ssl.ca.location`` librdkafka trusts the
    system's certificates alone, none of which signed the broker's. The CLI says so with
    Kafka's reason and exit 2 (the same settings will never connect), rather than time out
    and say to try again."""
    admin = namespace(secured.bootstrap)
    untrusting = {k: v for k, v in sasl_env("client").items()
                  if k != "KOURIER_KAFKA_SSL_CA_LOCATION"}  # fmt: skip
    done = await asyncio.to_thread(cli, admin, "client", ["call", "Tally/a/count"], untrusting)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2, last
    assert last.startswith("kourier: error: Kafka: "), last
    assert "SSL handshake failed" in last, last
    assert "certificate verify failed" in last, last
    assert last.endswith("(README, Security: the KOURIER_KAFKA_* settings)"), last


async def test_a_wrong_password_ends_a_start_or_a_command_with_kafkas_reason(
    secured: Secured,
) -> None:
    """A SASL login the broker refuses ends a worker's start (with and without creating
    topics), ``dlq list`` and ``acls --apply`` with Kafka's reason and exit 2, and makes
    ``Client.start()`` raise it, rather than a timeout and a "try again"."""
    admin = namespace(secured.bootstrap)
    wrong = {**sasl_env("worker"), "KOURIER_KAFKA_SASL_PASSWORD": "not-the-password"}
    for argv in (["worker", "tests.integration.apps"],
                 ["worker", "--no-create-topics", "tests.integration.apps"],
                 ["dlq", "list"], ["acls", "--client", "User:x", "--apply"]):  # fmt: skip
        done = await asyncio.to_thread(cli, admin, "worker", argv, wrong)
        last = done.stderr.strip().splitlines()[-1]
        assert done.returncode == 2, f"{argv}: {last}"
        assert "Authentication failed: Invalid username or password" in last, f"{argv}: {last}"
    settings = admin.model_copy(update={"kafka": {**sasl("client"), "sasl.password": "wrong"}})
    with pytest.raises(KafkaException) as refused:
        await asyncio.wait_for(Client(settings).start(), 60)
    assert refused.value.args[0].code() == KafkaError._AUTHENTICATION, refused.value
