"""Topic administration: create Kourier's topics idempotently and describe them."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, TypedDict

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._metadata import TopicMetadata
from confluent_kafka.cimpl import NewTopic

from streams.errors import KourierError
from streams.kafka.offsets import REFUSED, Refusals, cluster_metadata
from streams.settings import Settings
from streams.wire.topics import Topics, TopicSpec

log = logging.getLogger("kourier.topics")

#: The largest record a worker writes, about: an invocation's meta with its argument (up to
#: 900 KiB) and its result (up to 64 KiB beside such an argument). librdkafka refuses larger
#: ones itself (its ``message.max.bytes``).
RECORD_BYTES = 1_000_000


class TopicError(KourierError, RuntimeError):
    """A topic exists with a shape Kourier cannot use, or could not be created."""


class BrokersAway(TopicError):
    """Fewer brokers are up than the topics' replicas need: it may pass once they are back."""

    retriable = True


@dataclass(frozen=True)
class TopicState:
    spec: TopicSpec
    created: bool
    partitions: int
    replication_factor: int
    mended: bool = False  # existed, with settings that lost records (mend_configs)


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(settings.client_config(log_level=4))


def checked_admin(settings: Settings) -> tuple[AdminClient, Refusals]:
    """A short-lived admin client and its error callback, with which :func:`cluster_metadata`
    tells a connection the brokers refused (TLS, SASL) from brokers that do not answer."""
    refusals = Refusals()
    config: dict[str, Any] = {**settings.client_config(log_level=4), "error_cb": refusals}
    return AdminClient(config), refusals


def replication_for(settings: Settings, brokers: int, cluster_default: int | None = None) -> int:
    """Replicas per topic: as configured, else min(3, brokers), so that one broker's loss
    loses nothing and (with ``min.insync.replicas`` = min(2, RF)) stalls no write. The
    cluster's ``default.replication.factor``, when higher, counts as brokers too (up to 3):
    the metadata lists only the brokers up, and a topic made while one of three restarts
    would otherwise get two replicas for good, and stop its writes at the next loss."""
    wanted = settings.replication_factor or min(3, max(1, brokers, cluster_default or 0))
    if wanted > brokers:
        why = (
            f" (the cluster's default.replication.factor is {cluster_default}: start the"
            " brokers that are away, or give --replication-factor)"
            if not settings.replication_factor
            else ""
        )
        failure = BrokersAway if why else TopicError
        raise failure(
            f"replication factor {wanted} needs {wanted} brokers; the cluster has {brokers}{why}"
        )
    return wanted


def cluster_replication(admin: AdminClient, broker: int, timeout: float) -> int | None:
    """``default.replication.factor`` of ``broker``; None where it may not be read (an ACL:
    DescribeConfigs on the cluster) or is not answered in time."""
    resource = ConfigResource(ConfigResource.Type.BROKER, str(broker))
    future = admin.describe_configs([resource], request_timeout=timeout)[resource]
    try:
        entry = future.result(timeout + 5).get("default.replication.factor")
    except (KafkaException, TimeoutError) as exc:
        log.info("the brokers' default.replication.factor is not known (%s)", exc)
        return None
    return int(entry.value) if entry is not None and entry.value is not None else None


def min_insync(replication_factor: int) -> int:
    return min(2, replication_factor)


def create_topics(settings: Settings, timeout: float = 30.0, mend: bool = True) -> list[TopicState]:
    """Create every topic of the namespace that does not exist yet.

    Existing topics keep their settings, except those that delete records Kourier needs
    (:func:`mend_configs`, unless not to ``mend``); one whose partition count differs from
    the co-partitioned layout is an error: keys would land on other partitions.
    """
    admin, refusals = checked_admin(settings)
    specs = Topics(settings.namespace).specs(settings.partitions)
    cluster = cluster_metadata(admin, timeout, refusals)
    existing = cluster.topics
    missing = [spec for spec in specs if spec.name not in existing]
    made: set[str] = set()  # not those another process created since the metadata was read
    if missing:
        default = None
        if not settings.replication_factor and cluster.brokers:
            default = cluster_replication(admin, min(cluster.brokers), timeout)
        replicas = replication_for(settings, len(cluster.brokers), default)
        insync = {"min.insync.replicas": str(min_insync(replicas))}
        new = [NewTopic(s.name, s.partitions, replicas, config=s.config | insync) for s in missing]
        futures = admin.create_topics(
            new,
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result()
                made.add(name)
            except KafkaException as exc:
                error = exc.args[0]
                if error.code() in REFUSED:
                    said = error.str().rstrip(".")
                    raise TopicError(
                        f"could not create {name}: {said}. It is missing, or this principal "
                        "may not see it: with ACLs, using a topic takes Describe on it, "
                        "creating one Create (README, Security; `kourier acls`)"
                    ) from None
                if error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise TopicError(f"could not create {name}: {error.str()}") from None
    metadata = _wait_for_metadata(admin, specs, timeout)
    states = []
    for spec in specs:
        have = len(metadata[spec.name].partitions) if spec.name in metadata else 0
        if have != spec.partitions:
            raise TopicError(
                f"topic {spec.name} has {have} partitions, Kourier expects {spec.partitions}: "
                "co-partitioned topics must share one partition count (set --partitions)"
            )
        states.append(TopicState(spec, spec.name in made, have, _replicas(metadata[spec.name])))
    there = [spec for spec in specs if spec.name not in made]
    mended = set(mend_configs(admin, there, timeout)) if mend else set()
    return [replace(state, mended=state.spec.name in mended) for state in states]


def create_missing_topics(
    settings: Settings, timeout: float = 30.0, mend: bool = True
) -> tuple[list[TopicState], int]:
    """What ``kourier worker`` and ``kourier ingress`` do at start: when every topic exists,
    only mend the settings that delete records Kourier needs (the worker checks their shape
    itself); otherwise :func:`create_topics`, co-partitioned with the namespace's ingress
    topic when that exists (its partition count wins over the setting). Returns the topics
    it created or mended, and the partition count in use. The ingress does not ``mend``:
    its principal need not read the topics' settings (``kourier acls``)."""
    admin, refusals = checked_admin(settings)
    metadata = cluster_metadata(admin, timeout, refusals).topics
    topics = Topics(settings.namespace)
    ingress = metadata.get(topics.ingress)
    if ingress is not None and ingress.partitions:
        settings = settings.model_copy(update={"partitions": len(ingress.partitions)})
    specs = topics.specs(settings.partitions)
    if all(spec.name in metadata for spec in specs):
        mended = set(mend_configs(admin, specs, timeout)) if mend else set()
        shapes = [(spec, metadata[spec.name]) for spec in specs if spec.name in mended]
        changed = [TopicState(spec, False, len(topic.partitions), _replicas(topic), mended=True)
                   for spec, topic in shapes]  # fmt: skip
        return changed, settings.partitions
    states = create_topics(settings, timeout, mend)
    return [state for state in states if state.created or state.mended], settings.partitions


def _replicas(topic: TopicMetadata) -> int:
    """A topic's replication factor: its partitions' smallest replica count."""
    return min((len(p.replicas) for p in topic.partitions.values()), default=0)


def _wait_for_metadata(
    admin: AdminClient, specs: list[TopicSpec], timeout: float
) -> dict[str, TopicMetadata]:
    """Topic metadata once every partition of every spec has a leader (new topics take a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        metadata = admin.list_topics(timeout=timeout).topics
        ready = all(
            spec.name in metadata
            and len(metadata[spec.name].partitions) > 0
            and all(p.leader >= 0 for p in metadata[spec.name].partitions.values())
            for spec in specs
        )
        if ready or time.monotonic() > deadline:
            return metadata
        time.sleep(0.1)


#: The topic settings :func:`config_problems` reads.
CHECKED_CONFIGS = ("cleanup.policy", "retention.ms", "retention.bytes")


def checked_configs(described: dict[str, Any]) -> dict[str, str | None]:
    """The settings :func:`config_problems` reads, of what ``describe_configs`` gave."""
    return {name: described[name].value for name in CHECKED_CONFIGS if name in described}


def required_configs(spec: TopicSpec) -> dict[str, str]:
    """The settings of ``spec``'s topic without which Kafka deletes records Kourier needs:
    a changelog compacted (by key, for good), the delay topic kept until Kourier deletes
    its records, the others deleted, never compacted (a key's earlier records count)."""
    if spec.config.get("cleanup.policy") == "compact":
        return {"cleanup.policy": "compact"}
    if spec.config.get("retention.ms") == "-1":
        return {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}
    return {"cleanup.policy": "delete"}


def config_problems(spec: TopicSpec, config: dict[str, str | None]) -> list[str]:
    """What in an existing topic's configuration deletes records Kourier still needs (see
    :func:`required_configs`; a changelog may delete by age or size as well as compact, as
    long as neither limit is set). Topics made by other means get Kafka's defaults, which
    delete records after 7 days, and a delay topic made before Kourier set ``retention.ms``
    on it has them too: ``kourier topics create`` mends them (:func:`mend_configs`)."""
    problems: list[str] = []
    given = config.get("cleanup.policy") or "delete"
    policy = {word.strip().lower() for word in given.split(",") if word.strip()}
    required = required_configs(spec)
    wanted = required["cleanup.policy"]
    if wanted not in policy or (wanted == "delete" and "compact" in policy):
        problems.append(
            f"{spec.name} has cleanup.policy={given}: it holds {spec.purpose}, which needs "
            f"cleanup.policy={wanted}"
        )
    if ("delete" in policy and wanted == "compact") or "retention.ms" in required:
        for name in ("retention.ms", "retention.bytes"):
            value = config.get(name)
            if value is not None and int(value) >= 0:
                problems.append(
                    f"{spec.name} deletes records by {name}={value}: it holds "
                    f"{spec.purpose}, needed until Kourier is done with them ({name}=-1)"
                )
    return problems


def mend_configs(admin: AdminClient, specs: list[TopicSpec], timeout: float) -> list[str]:
    """Set :func:`required_configs` on the topics of ``specs`` whose settings have
    :func:`config_problems`; the names of those mended. One this principal may not read or
    alter (an ACL) is left as it is: the worker refuses it, naming the settings."""
    wrong = [spec for spec in _with_problems(admin, specs, timeout) if spec is not None]
    mended: list[str] = []
    if wrong:
        mend = [
            ConfigResource(ConfigResource.Type.TOPIC, spec.name, incremental_configs=[
                ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
                for name, value in required_configs(spec).items()
            ])
            for spec in wrong
        ]  # fmt: skip
        altered = admin.incremental_alter_configs(mend, request_timeout=timeout)
        for resource, future in altered.items():
            try:
                future.result(timeout + 5)
            except (KafkaException, TimeoutError) as exc:
                log.warning("could not mend the settings of %s: %s", resource.name, exc)
                continue
            mended.append(resource.name)
        # Other brokers learn of the change a moment later: the worker's check, which may
        # ask one of them, must not find it still to be made.
        done = [spec for spec in wrong if spec.name in mended]
        deadline = time.monotonic() + timeout
        while _with_problems(admin, done, timeout) and time.monotonic() < deadline:
            time.sleep(0.1)
    return mended


def _with_problems(
    admin: AdminClient, specs: list[TopicSpec], timeout: float
) -> list[TopicSpec | None]:
    """The specs whose topics a broker describes with :func:`config_problems`, and None for
    each whose settings it would not give (refused, or no answer)."""
    if not specs:
        return []
    by_name = {spec.name: spec for spec in specs}
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in by_name]
    found: list[TopicSpec | None] = []
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        try:
            described = future.result(timeout + 5)
        except (KafkaException, TimeoutError):
            found.append(None)
            continue
        if config_problems(by_name[resource.name], checked_configs(described)):
            found.append(by_name[resource.name])
    return found


class TopicsDescription(TypedDict):
    brokers: int
    topics: list[dict[str, object]]
    warnings: list[str]


def describe_topics(settings: Settings, timeout: float = 30.0) -> TopicsDescription:
    """The cluster's brokers, and each topic of the namespace: whether it exists, its
    partitions, replication factor, the smallest in-sync replica set of its partitions,
    ``min.insync.replicas`` and cleanup policy; ``warnings`` for what risks data or
    availability (one replica on a cluster, or a minimum of one in-sync, a partition whose
    ISR is below its minimum, a topic that takes records smaller than :data:`RECORD_BYTES`,
    one that deletes records Kourier needs: :func:`config_problems`)."""
    admin, refusals = checked_admin(settings)
    specs = Topics(settings.namespace).specs(settings.partitions)
    cluster = cluster_metadata(admin, timeout, refusals)
    metadata = cluster.topics
    brokers = len(cluster.brokers)
    present = [s.name for s in specs if s.name in metadata]
    configs: dict[str, dict[str, str]] = {}
    # Asked of another broker than the metadata, which may not know a new topic yet: such a
    # topic is described as not there (yet), like one that no broker lists.
    unknown: set[str] = set()
    if present:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in present]
        for resource, future in admin.describe_configs(resources).items():
            try:
                found = future.result()
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise
                unknown.add(resource.name)
                continue
            configs[resource.name] = {
                name: found[name].value
                for name in ("min.insync.replicas", "max.message.bytes", *CHECKED_CONFIGS)
                if name in found
            }
    rows: list[dict[str, object]] = []
    warnings: list[str] = []
    counts: dict[str, int] = {}  # of the topics there
    for spec in specs:
        topic = None if spec.name in unknown else metadata.get(spec.name)
        partitions = list(topic.partitions.values()) if topic is not None else []
        factor = min((len(p.replicas) for p in partitions), default=0)
        isr = min((len(p.isrs) for p in partitions), default=0)
        config = configs.get(spec.name, {})
        floor = int(config.get("min.insync.replicas", "1"))
        rows.append({
            "topic": spec.name,
            "exists": topic is not None,
            "partitions": len(partitions),
            "replication_factor": factor,
            "min_isr": isr,
            "min.insync.replicas": floor if topic is not None else None,
            "cleanup.policy": config.get("cleanup.policy"),
            "purpose": spec.purpose,
        })  # fmt: skip
        if topic is None:
            continue
        counts[spec.name] = len(partitions)
        if factor == 1 and brokers > 1:
            warnings.append(
                f"{spec.name} has one replica on a {brokers}-broker cluster: losing its broker "
                "loses its data (recreate it with --replication-factor)"
            )
        largest = int(config.get("max.message.bytes") or RECORD_BYTES)
        if largest < RECORD_BYTES and spec.name != Topics(settings.namespace).services:
            warnings.append(
                f"{spec.name} takes records of at most {largest} bytes (max.message.bytes), "
                f"below the {RECORD_BYTES} Kourier writes: workers refuse to start"
            )
        warnings += config_problems(spec, dict(config))
        if factor > 1 and floor < 2:
            warnings.append(
                f"{spec.name} has min.insync.replicas={floor} on {factor} replicas: a write "
                "acknowledged by its leader alone is lost with it (set it to 2)"
            )
        if isr < floor:
            warnings.append(
                f"{spec.name}: a partition has {isr} in-sync replicas, below its "
                f"min.insync.replicas={floor}; writes to it fail until a replica catches up"
            )
    warnings += [
        f"{miscount}: co-partitioned topics must share one partition count; workers refuse to start"
        for miscount in miscounted(Topics(settings.namespace), counts)
    ]
    return {"brokers": brokers, "topics": rows, "warnings": warnings}


def miscounted(topics: Topics, counts: Mapping[str, int]) -> list[str]:
    """Of the topics ``counts`` gives partition counts for, each co-partitioned one whose
    count is not the ingress topic's, said as "X has N partitions and <ingress> M": a
    worker refuses to start on it (``startup.ingress_partitions``), and ``describe`` warns."""
    ingress = counts.get(topics.ingress)
    return [
        f"{name} has {counts[name]} partitions and {topics.ingress} {ingress}"
        for name in topics.co_partitioned()
        if ingress is not None and name in counts and counts[name] != ingress
    ]
