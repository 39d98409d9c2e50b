"""Every Kafka topic name Kourier uses is derived here, from the namespace, and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

# Changelog topics keep only the latest value per key, and never delete it by age.
_COMPACTED = {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "segment.ms": "600000"}
#: Kept until Kourier deletes them (by age or size, a broker's defaults would sooner).
_KEPT = {"retention.ms": "-1", "retention.bytes": "-1"}


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: name, partition count and topic-level configuration."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    purpose: str = ""


@dataclass(frozen=True)
class Topics:
    """The topic names of one Kourier namespace.

    Topics co-partitioned with ``ingress`` (same partition count, same key ->
    same partition number) hold what a partition's owner needs: its delayed
    messages, its object state, its invocations and its idempotency table.
    Each name is built once: the worker compares and writes them for every record.
    """

    namespace: str

    def _name(self, suffix: str) -> str:
        return f"{self.namespace}.{suffix}"

    @cached_property
    def ingress(self) -> str:
        """Invocations, cancels, kills, attaches and completions, keyed by object key."""
        return self._name("ingress")

    @cached_property
    def delay(self) -> str:
        """Delayed messages waiting for their due time, keyed like ``ingress``."""
        return self._name("delay")

    @cached_property
    def responses(self) -> str:
        """Outcomes for callers outside Kourier (HTTP ingress, client, external producers)."""
        return self._name("responses")

    @cached_property
    def deadletter(self) -> str:
        """Malformed ingress records, with the reason in headers."""
        return self._name("deadletter")

    @cached_property
    def state(self) -> str:
        """Changelog of virtual-object and workflow state (compacted)."""
        return self._name("state")

    @cached_property
    def invocations(self) -> str:
        """Changelog of invocation status and journals (compacted)."""
        return self._name("invocations")

    @cached_property
    def dedup(self) -> str:
        """Changelog of the idempotency-key table (compacted)."""
        return self._name("dedup")

    @cached_property
    def services(self) -> str:
        """What each worker hosts (service manifests), read by the ingress (compacted)."""
        return self._name("services")

    def specs(self, partitions: int) -> list[TopicSpec]:
        """Every topic of the namespace, as it should be created."""
        return [
            TopicSpec(
                self.ingress, partitions, {}, "calls and control records, keyed by object key"
            ),
            # Kept until deleted: a pending record must outlive its delay, however long.
            TopicSpec(self.delay, partitions, dict(_KEPT), "delayed sends and timers"),
            TopicSpec(self.responses, partitions, {}, "outcomes read by attach and clients"),
            TopicSpec(self.deadletter, 1, {}, "malformed records with reason headers"),
            TopicSpec(self.state, partitions, dict(_COMPACTED), "object and workflow state"),
            TopicSpec(
                self.invocations, partitions, dict(_COMPACTED), "invocation status, journals"
            ),
            TopicSpec(self.dedup, partitions, dict(_COMPACTED), "idempotency-key table"),
            TopicSpec(self.services, 1, dict(_COMPACTED), "deployed services and handlers"),
        ]

    def co_partitioned(self) -> list[str]:
        """The topics that share the ingress topic's partition count: a key's records,
        state, timers and responses are on the partition its hash names among that count."""
        return [self.ingress, self.delay, self.responses, self.state, self.invocations, self.dedup]

    def all(self) -> list[str]:
        return [spec.name for spec in self.specs(1)]
