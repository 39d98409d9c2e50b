"""Which ingress partition owns a record.

Every record is keyed so that a plain Kafka producer puts it on the right partition; a
record that arrives elsewhere (a producer that partitions differently) is forwarded. An
object's records go to its key's partition; records about an invocation to the partition its
id names; a keyless call with an idempotency key to the partition of the id that key derives.
"""

from __future__ import annotations

from streams.wire import ids
from streams.wire.partitioning import partition_for
from streams.wire.records import (
    AttachRequest,
    Completion,
    Control,
    Invoke,
    RecordError,
    Start,
    Target,
)

#: An ingress record, once decoded.
IngressRecord = Invoke | Control | AttachRequest | Completion | Start


def owner(record: IngressRecord, partitions: int, here: int) -> int:
    """The partition that owns ``record`` (``here`` for a keyless call without an id or an
    idempotency key); ``RecordError`` for an id that names no partition, or the wrong one."""
    try:
        if isinstance(record, Invoke):
            # A keyless call's id names its partition, unless an idempotency key does: the
            # invocation takes the id that key derives, whatever id the record gives.
            keyless = record.target.key is None and record.idempotency_key is None
            if keyless and record.invocation_id is not None:
                return ids.partition_of(record.invocation_id, partitions)
            key = record.target.key
            given = record.invocation_id
            if (
                given is not None
                and key is not None
                and not ids.belongs_to_key(given, key, partitions)
            ):
                raise RecordError(
                    "bad-schema",
                    f"invocation_id does not route to the partition of key {key!r}: "
                    "derive the id from the key (streams.wire.ids.new_id) or leave it out",
                )
            return owner_of(record.target, record.idempotency_key, partitions, here)
        if isinstance(record, Completion):
            return ids.partition_of(record.caller.invocation_id, partitions)
        if isinstance(record, Start):
            return ids.partition_of(record.invocation_id, partitions)
        if isinstance(record, AttachRequest) and record.invocation_id is None:
            assert record.target is not None
            return owner_of(record.target, record.idempotency_key, partitions, here)
        assert record.invocation_id is not None
        return ids.partition_of(record.invocation_id, partitions)
    except ids.InvalidId as exc:
        raise RecordError("bad-schema", str(exc)) from None


def owner_of(target: Target, idempotency_key: str | None, partitions: int, here: int) -> int:
    """The partition of ``target``: its object key's, or for a service with an idempotency
    key the one its derived id names (``here`` otherwise)."""
    if target.key is not None:
        return partition_for(target.key, partitions)
    if idempotency_key is not None:
        same = ids.idempotent_id(target.service, None, target.handler, idempotency_key)
        return ids.partition_of(same, partitions)
    return here
