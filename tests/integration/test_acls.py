"""Kafka with SASL and ACLs: a worker, an ingress and a client granted exactly the README's
ACL table (Operations, Security) serve calls, sends and delayed sends; a worker without
``DELETE`` on the delay topic says so once and goes on.

The broker here is the project's own, from a copy of its template whose client listener
takes SASL/PLAIN and whose authorizer is Kafka's ``StandardAuthorizer``; it runs for this
module alone and is stopped by PID.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    OffsetSpec,
    ResourcePatternType,
    ResourceType,
)

from streams.client import Client
from streams.kafka import broker
from streams.kafka.admin import create_topics
from streams.kafka.broker import free_port
from streams.settings import Settings
from tests.integration.conftest import ROOT, WorkerProcess
from tests.integration.helpers import poll_until

Row = tuple[str, str, str, list[str]]  # an ACL table's resource, name, pattern, operations
PASSWORDS = {user: f"{user}-secret" for user in ("admin", "worker", "client", "trimless")}
# The client listener takes SASL/PLAIN, with these users; the controller listener stays
# plaintext on loopback, and its principal (ANONYMOUS) and the broker's own are super users.
_SECURED = {
    "\nlisteners=PLAINTEXT://": "\nlisteners=SASL_PLAINTEXT://",
    "\nadvertised.listeners=PLAINTEXT://": "\nadvertised.listeners=SASL_PLAINTEXT://",
    "inter.broker.listener.name=PLAINTEXT": "inter.broker.listener.name=SASL_PLAINTEXT",
    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,": (
        "listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,"
    ),
}
_USERS = " ".join(f'user_{name}="{password}"' for name, password in PASSWORDS.items())
_SASL = f"""
sasl.enabled.mechanisms=PLAIN
sasl.mechanism.inter.broker.protocol=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=\
org.apache.kafka.common.security.plain.PlainLoginModule required \
username="admin" password="{PASSWORDS["admin"]}" {_USERS};
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:ANONYMOUS
"""


def sasl(user: str) -> dict[str, str]:
    """librdkafka settings of ``user``."""
    return {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": user,
        "sasl.password": PASSWORDS[user],
    }


def sasl_env(user: str) -> dict[str, str]:
    """The same, as the ``KOURIER_KAFKA_*`` variables a Kourier process reads."""
    return {f"KOURIER_KAFKA_{k.replace('.', '_').upper()}": v for k, v in sasl(user).items()}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The bootstrap address of a broker that authenticates and authorizes every client."""
    deploy = tmp_path_factory.mktemp("deploy")
    for name in ("pom.xml", "log4j2.properties"):  # the same pom: the same cached jars
        shutil.copy(broker.DEPLOY_DIR / name, deploy / name)
    template = (broker.DEPLOY_DIR / "server.properties.template").read_text()
    for plain, secure in _SECURED.items():
        assert plain in template, f"the broker template no longer has {plain!r}"
        template = template.replace(plain, secure)
    (deploy / "server.properties.template").write_text(template + _SASL)
    data = tmp_path_factory.mktemp("secured-kafka")
    running = broker.start(data, port=0, deploy_dir=deploy, client=sasl("admin"))
    try:
        yield running.bootstrap
    finally:
        broker.stop(data)


def readme_acls(role: str) -> list[Row]:
    """The README's ACL rows for ``role``: (resource, name, pattern, operations)."""
    text = (ROOT / "README.md").read_text()
    header = "| role | resource | name | pattern | operations |"
    assert header in text, "the README has no ACL table"
    rows = []
    for line in text[text.index(header) :].splitlines()[2:]:
        if not line.startswith("|"):
            break
        roles, resource, name, pattern, operations = (c.strip() for c in line.strip("|").split("|"))
        if role in [r.strip() for r in roles.split(",")]:
            ops = [op.strip() for op in operations.split(",")]
            rows.append((resource, name.strip("`"), pattern, ops))
    assert rows, f"no ACL rows for {role}"
    return rows


def grant(admin: AdminClient, user: str, rows: list[Row], ns: str) -> None:
    bindings = []
    for resource, name, pattern, operations in rows:
        for operation in operations:
            bindings.append(
                AclBinding(
                    ResourceType[_snake(resource)],
                    name.replace("<ns>", ns),
                    ResourcePatternType[pattern.upper()],
                    f"User:{user}",
                    "*",
                    AclOperation[_snake(operation)],
                    AclPermissionType.ALLOW,
                )
            )
    for future in admin.create_acls(bindings, request_timeout=30).values():
        future.result(timeout=60)


def _snake(name: str) -> str:
    """``TransactionalId`` -> ``TRANSACTIONAL_ID``, as confluent-kafka's enums name them."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", name).upper()


def namespace(bootstrap: str) -> Settings:
    """A new namespace, its topics created by the admin; the admin's settings."""
    ns = f"t{uuid.uuid4().hex[:12]}"
    settings = Settings(
        bootstrap_servers=bootstrap, namespace=ns, partitions=2, kafka=sasl("admin")
    )
    create_topics(settings)
    return settings


def granted(admin: Settings, user: str, role: str, without: str | None = None) -> Settings:
    """``user`` granted the README's rows of ``role`` in ``admin``'s namespace (but for
    any row of the one operation ``without``); the settings ``user`` connects with."""
    rows = [row for row in readme_acls(role) if row[3] != [without]]
    client = AdminClient(admin.client_config({}))
    grant(client, user, rows, admin.namespace)
    return admin.model_copy(update={"kafka": sasl(user)})


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


def cli(settings: Settings, user: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``kourier <argv>`` as ``user``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **sasl_env(user))
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


async def test_a_worker_an_ingress_and_a_client_need_no_more_than_the_readme_acls(
    secured: str, tmp_path: Path
) -> None:
    admin = namespace(secured)
    worker = worker_as("worker", granted(admin, "worker", "worker"), tmp_path)
    as_client = granted(admin, "client", "client")
    port, admin_port = free_port(), free_port()
    argv = ["-m", "streams.cli", "ingress", "--port", str(port), "--admin-port", str(admin_port)]
    ingress = WorkerProcess(as_client, "", tmp_path, sasl_env("client"), argv)
    ingress.start()
    try:
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


async def test_a_worker_not_allowed_to_delete_delay_records_says_so_once_and_goes_on(
    secured: str, tmp_path: Path
) -> None:
    admin = namespace(secured)
    worker = worker_as("trimless", granted(admin, "trimless", "worker", without="Delete"), tmp_path)
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
    assert low_watermarks(admin) == [0] * admin.partitions


async def _healthy(http: aiohttp.ClientSession, base: str) -> bool:
    try:
        async with http.get(f"{base}/health") as reply:
            return reply.status == 200 and "Tally" in (await reply.json())["services"]
    except aiohttp.ClientError:
        return False
