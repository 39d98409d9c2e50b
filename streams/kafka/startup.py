"""What a worker settles before it joins its group: that its topics are there, its id and
the transactional ids it commits with (asked for by every producer it makes, then and
later), and the announcement of the services it hosts."""

from __future__ import annotations

import json
import logging
import socket
from typing import IO, Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource

from streams.engine.outbox import Out
from streams.engine.registry import Registry
from streams.errors import KourierError
from streams.kafka.admin import RECORD_BYTES, checked_configs, config_problems, miscounted
from streams.kafka.offsets import MissingTopics, Refusals, required_topics
from streams.kafka.restore import claim_slot
from streams.settings import Settings
from streams.wire.topics import Topics

log = logging.getLogger("kourier.worker")


class WorkerError(KourierError, RuntimeError):
    """The worker cannot run, or run on: its topics missing or not usable, Kafka refusing
    it (ACLs), a hand-over it could not commit, or spills failing again and again."""


def ingress_partitions(settings: Settings, topics: Topics) -> int:
    """The ingress topic's partition count, once every topic of the namespace is there;
    :class:`WorkerError` naming a missing one (``required_topics``), or a co-partitioned
    one whose count differs. A connection refused (TLS, SASL) ends it at once. Blocks: run
    it in a thread."""
    refusals = Refusals()
    config: dict[str, Any] = settings.client_config({"log_level": 4})
    config["error_cb"] = refusals
    try:
        admin = AdminClient(config)
        listed = required_topics(admin, topics.all(), refusals=refusals)
    except MissingTopics as exc:
        raise WorkerError(str(exc)) from None
    partitions = len(listed[topics.ingress].partitions)
    check_record_limits(admin, topics)
    miscounts = miscounted(topics, {name: len(listed[name].partitions) for name in topics.all()})
    if miscounts:
        # With another count a worker would write to partitions that are not there, or
        # look for a key's state and timers where they are not.
        raise WorkerError(
            f"topic {miscounts[0]}: co-partitioned topics must share one partition count, "
            "which must not change once they hold records (README, Limits)"
        )
    return partitions


def check_record_limits(admin: AdminClient, topics: Topics, timeout: float = 10.0) -> None:
    """:class:`WorkerError` when a topic the worker writes to takes records smaller than
    :data:`RECORD_BYTES` (its ``max.message.bytes``, or the broker's default it inherits):
    Kourier checks values against what it writes, so such a record would fail every commit
    of the worker, and again after each restore; or when a topic deletes records Kourier
    still needs (:func:`~streams.kafka.admin.config_problems`). Not checked where reading a
    topic's configuration is not allowed (``DescribeConfigs``, an ACL) or not answered
    within ``timeout`` seconds."""
    specs = {spec.name: spec for spec in topics.specs(1)}
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in specs]
    asked = admin.describe_configs(resources, request_timeout=timeout)
    for resource, future in asked.items():
        try:
            found = future.result(timeout + 5)
        except (KafkaException, TimeoutError) as exc:  # refused (an ACL), or no answer
            reason = exc.args[0] if exc.args else type(exc).__name__
            log.info("%s: its configuration is not checked (%s)", resource.name, reason)
            continue
        problems = config_problems(specs[resource.name], checked_configs(found))
        if problems:  # (`kourier topics create` sets them, where its principal may)
            raise WorkerError("; ".join(problems) + ": `kourier topics create` mends them")
        entry = found.get("max.message.bytes")
        if resource.name == topics.services:  # (manifests are small: never refused)
            continue
        if entry is not None and entry.value is not None and int(entry.value) < RECORD_BYTES:
            raise WorkerError(
                f"topic {resource.name} takes records of at most {entry.value} bytes "
                f"(max.message.bytes); Kourier writes records of up to {RECORD_BYTES} bytes: "
                f"set it to {RECORD_BYTES} or more (Kafka's default is 1048588)"
            )


class Identity:
    """A worker's id, and the transactional ids of its producers' turns.

    Without an id of its own the worker takes ``<host>-<slot>``, the slot held by a file
    lock for as long as this object lives, which is the worker's life and so the
    process's (:func:`~streams.kafka.restore.claim_slot`). So a worker restarted on the
    same host commits with the ids of the one it replaces, and aborts at once what that
    one left open."""

    def __init__(self, namespace: str, worker_id: str | None = None) -> None:
        self.namespace = namespace
        self.worker_id = worker_id  # None until the first transactional id is asked for
        self._slot_lock: IO[str] | None = None

    def transactional_id(self, turn: int = 0) -> str:
        """``<ns>.worker.<id>`` for the first turn (``streams.kafka.transactions``),
        ``<ns>.worker<turn>.<id>`` for the others, which no worker id can reach
        (``--worker-id a.1`` gives ``<ns>.worker.a.1``)."""
        if self.worker_id is None:
            slot, self._slot_lock = claim_slot(self.namespace)
            self.worker_id = f"{socket.gethostname()}-{slot}"
        kind = f"worker{turn}" if turn else "worker"
        return f"{self.namespace}.{kind}.{self.worker_id}"


def manifest(registry: Registry, topics: Topics, worker_id: str | None) -> list[Out]:
    """The records that announce the services a worker hosts: the catalog clients and the
    ingress read, one record per service on partition 0 of the services topic, keyed by
    its name."""
    out = []
    for service in registry.manifest():
        entry: dict[str, Any] = {**service, "worker": worker_id}
        out.append(Out(topics.services, 0, service["name"].encode(), json.dumps(entry).encode()))
    return out
