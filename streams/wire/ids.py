"""Invocation ids that say which partition owns them.

An id is ``inv_`` + 8 hex digits of a 31-bit routing hash + 24 hex digits that
make it unique. For a keyed target the routing hash is Kafka's murmur2 of the
object key, so the id routes to the key's partition; for a service it is any
hash that lands on the chosen partition. Anyone holding an id can therefore
send a cancel or an attach to the right partition without a lookup.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets

from streams.errors import KourierError
from streams.wire.partitioning import key_hash

#: What every invocation id looks like; records validate theirs against it when decoded.
ID_PATTERN = r"^inv_[0-9a-f]{32}$"
_ID = re.compile(ID_PATTERN)


class InvalidId(KourierError, ValueError):
    """Not a Kourier invocation id, or one of another partition."""


def _make(routing: int, unique: str) -> str:
    return f"inv_{routing:08x}{unique}"


def new_id(key: str | None, partitions: int) -> str:
    """A fresh id: routed by ``key``, or (for a service) to a random partition."""
    routing = key_hash(key) if key is not None else secrets.randbits(31)
    return _make(routing, secrets.token_hex(12))


def id_on_partition(partition: int, partitions: int, seed: str) -> str:
    """A deterministic id whose routing hash lands on ``partition`` (for unkeyed records)."""
    digest = hashlib.sha256(seed.encode()).hexdigest()
    base = int(digest[:8], 16) & 0x7FFFFFFF
    routing = base - base % partitions + partition
    if routing > 0x7FFFFFFF:
        routing -= partitions
    return _make(routing, digest[8:32])


def keyed_id(key: str, seed: str) -> str:
    """A deterministic id routed by ``key`` (same seed, same id)."""
    return _make(key_hash(key), hashlib.sha256(seed.encode()).hexdigest()[:24])


def hashed_id(seed: str) -> str:
    """A deterministic id for ``seed``, its routing hash drawn from the seed too (for an
    invocation without a key, whose partition its id alone names)."""
    digest = hashlib.sha256(seed.encode()).hexdigest()
    return _make(int(digest[:8], 16) & 0x7FFFFFFF, digest[8:32])


def run_of(invocation_id: str, seq: int, created_at: float) -> str:
    """One run of ``invocation_id``: the invocation created at ``seq`` (its ingress offset)
    and ``created_at`` (a call run in its caller's transaction has no record of its own, so
    two runs may share the offset). An id comes back (a workflow run past its retention, an
    idempotency key after a purge); what a run derives from this is not what the earlier
    run under the id derived."""
    return f"{invocation_id}@{seq}@{created_at!r}"


def child_id(parent: str, entry: int, key: str | None, partitions: int) -> str:
    """The id of the call or send made by journal entry ``entry`` of ``parent`` (a
    :func:`run_of`, or an id from before there were runs).

    Derived, not random, so a replay of the parent names the same callee.
    """
    seed = f"{parent}/{entry}"
    return hashed_id(seed) if key is None else keyed_id(key, seed)


def timer_id(run: str, entry: int) -> str:
    """The id a durable sleep at journal entry ``entry`` of ``run`` (:func:`run_of`) and its
    timer's completion carry, so that a timer of an earlier run ends no sleep of this one."""
    return hashed_id(f"{run}/timer/{entry}")


def idempotent_id(service: str, key: str | None, handler: str, idempotency_key: str) -> str:
    """The one id every request with this idempotency key for this target gets.

    Scope = target + key, so duplicates meet on one partition as one invocation.
    """
    seed = json.dumps(["idempotency", service, key, handler, idempotency_key])
    return hashed_id(seed) if key is None else keyed_id(key, seed)


def workflow_run_id(workflow: str, workflow_id: str) -> str:
    """The id of a workflow's ``run``: one per workflow id, so a second run meets the first."""
    return keyed_id(workflow_id, json.dumps(["workflow", workflow, workflow_id]))


def is_id(text: str) -> bool:
    """Whether ``text`` has the shape of an invocation id."""
    return _ID.fullmatch(text) is not None


def belongs_to_key(invocation_id: str, key: str, partitions: int) -> bool:
    """Whether ``invocation_id`` routes to the partition that owns object ``key``, as the
    id of an invocation of that key must."""
    return partition_of(invocation_id, partitions) == key_hash(key) % partitions


def validate(invocation_id: str) -> str:
    if not _ID.fullmatch(invocation_id):
        raise InvalidId(f"{invocation_id!r} is not a Kourier invocation id (inv_ + 32 hex digits)")
    return invocation_id


def partition_of(invocation_id: str, partitions: int) -> int:
    """The partition that owns ``invocation_id``."""
    return int(validate(invocation_id)[4:12], 16) % partitions
