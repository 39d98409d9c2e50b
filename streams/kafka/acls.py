"""The Kafka ACLs Kourier's processes need in one namespace, and creating them
(``kourier acls``).

Two roles. A worker reads and writes every topic of the namespace, joins the group
``<ns>.workers``, commits with transactional ids ``<ns>.worker*``, and deletes released
records of the delay topic (``streams.kafka.trim``). A client (the ingress, the Python
client, the CLI, the Faust bridge) reads the namespace's topics and writes calls to the
ingress topic. Its consumers are assigned their partitions and commit nothing, but having a
``group.id`` (``<ns>.client.<uuid>`` and the like) they look up their group's coordinator,
which takes Describe on the group. Every name starts with ``<ns>.``, so prefixed ACLs cover
them.

Read or Write implies Describe in Kafka's authorizer; Describe is listed anyway, so that the
table reads as what each role does. The README's table is :func:`markdown`, checked by a
unit test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from streams.errors import KourierError
from streams.kafka.admin import checked_admin
from streams.kafka.offsets import cluster_metadata
from streams.settings import Settings

Role = Literal["worker", "client"]
_NOT_ALLOWED = KafkaError.CLUSTER_AUTHORIZATION_FAILED


@dataclass(frozen=True)
class Need:
    """Operations a role needs on the resources a name (``<ns>`` for the namespace) matches."""

    role: Role
    resource: str  # as Kafka names it: Topic, Group, TransactionalId
    name: str
    pattern: Literal["prefixed", "literal"]
    operations: tuple[str, ...]


NEEDS: tuple[Need, ...] = (
    # DescribeConfigs: a worker checks that the topics take the records it writes.
    Need("worker", "Topic", "<ns>.", "prefixed", ("Read", "Write", "Describe", "DescribeConfigs")),
    Need("worker", "Topic", "<ns>.delay", "literal", ("Delete",)),
    Need("worker", "Group", "<ns>.", "prefixed", ("Read",)),
    Need("worker", "TransactionalId", "<ns>.", "prefixed", ("Write", "Describe")),
    Need("client", "Topic", "<ns>.", "prefixed", ("Read", "Describe")),
    Need("client", "Topic", "<ns>.ingress", "literal", ("Write",)),
    Need("client", "Group", "<ns>.", "prefixed", ("Describe",)),
)


@dataclass(frozen=True)
class Acl:
    """One ACL: ``principal`` may do ``operation`` on what ``name`` matches."""

    principal: str
    resource: str
    name: str
    pattern: str
    operation: str

    def binding(self) -> AclBinding:
        return AclBinding(
            ResourceType[_upper_snake(self.resource)],
            self.name,
            ResourcePatternType[self.pattern.upper()],
            self.principal,
            "*",
            AclOperation[_upper_snake(self.operation)],
            AclPermissionType.ALLOW,
        )


def needed(namespace: str, principals: Mapping[Role, str]) -> list[Acl]:
    """The ACLs of each role in ``principals`` (role -> ``User:name``) in ``namespace``,
    each once (one principal may take both roles)."""
    wanted = [
        Acl(principal, need.resource, need.name.replace("<ns>", namespace), need.pattern, op)
        for role, principal in principals.items()
        for need in NEEDS
        if need.role == role
        for op in need.operations
    ]
    return list(dict.fromkeys(wanted))


class AclError(KourierError, RuntimeError):
    """This principal may not create ACLs."""


def create_acls(settings: Settings, wanted: Sequence[Acl], timeout: float = 30.0) -> None:
    """Create ``wanted`` (ACLs that exist already are kept as they are); raises the first
    refusal: :class:`AclError` when ``settings``' principal may not alter the cluster's
    ACLs, Kafka's own error (a ``KafkaException``) otherwise."""
    admin, refusals = checked_admin(settings)
    cluster_metadata(admin, timeout, refusals)  # a connection refused (TLS, SASL) raises here
    futures = admin.create_acls([acl.binding() for acl in wanted], request_timeout=timeout)
    for future in futures.values():
        try:
            future.result(timeout + 5)  # librdkafka's _TIMED_OUT, not a wait of our own
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == _NOT_ALLOWED:
                raise AclError(
                    f"Kafka refused to create ACLs: {error.str().rstrip('.')}. Creating them "
                    "takes Alter on the cluster: run this with an administrator's Kafka settings"
                ) from None
            raise


def markdown() -> str:
    """:data:`NEEDS` as the README's table."""
    lines = ["| role | resource | name | pattern | operations |", "|---|---|---|---|---|"]
    lines += [
        f"| {n.role} | {n.resource} | `{n.name}` | {n.pattern} | {', '.join(n.operations)} |"
        for n in NEEDS
    ]
    return "\n".join(lines)


def _upper_snake(name: str) -> str:
    """``TransactionalId`` -> ``TRANSACTIONAL_ID``, as confluent-kafka's enums name them."""
    return "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(name)).upper()
