"""What a worker settles before it joins its group (``streams.kafka.startup``): its
transactional ids, the slot that names it when it has no id of its own, and the records
that announce its services. No Kafka: these are names, a file lock and records."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from streams.engine.registry import Registry
from streams.kafka.startup import Identity, manifest
from streams.wire.topics import Topics
from tests.integration.apps import SERVICES


def test_a_worker_id_names_every_turn_and_no_id_reaches_another_turn() -> None:
    ids = Identity("ns", "a.1")
    assert [ids.transactional_id(turn) for turn in range(3)] == [
        "ns.worker.a.1",
        "ns.worker1.a.1",
        "ns.worker2.a.1",
    ]
    # an id that starts with a digit reaches none of another worker's turns
    digit = Identity("ns", "1.a.1")
    assert {digit.transactional_id(turn) for turn in range(3)}.isdisjoint(
        {ids.transactional_id(turn) for turn in range(3)}
    )


def test_without_an_id_a_worker_takes_a_free_slot_and_holds_it_while_it_lives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KOURIER_CACHE", str(tmp_path))  # the slots' lock files go there
    first, second = Identity("ns"), Identity("ns")
    assert first.worker_id is None, "no slot is claimed before an id is asked for"
    host = socket.gethostname()
    assert first.transactional_id() == f"ns.worker.{host}-0"
    assert first.transactional_id(1) == f"ns.worker1.{host}-0", "the same slot"
    assert second.transactional_id() == f"ns.worker.{host}-1", "slot 0 is held"
    locks = [first._slot_lock, second._slot_lock]
    assert locks[0] is not None
    locks[0].close()  # the first worker's process ends: its slot is free again
    third = Identity("ns")
    assert third.transactional_id() == f"ns.worker.{host}-0"
    for lock in [*locks, third._slot_lock]:
        if lock is not None:
            lock.close()


def test_the_manifest_announces_each_service_on_partition_0_keyed_by_its_name() -> None:
    registry = Registry(SERVICES)
    out = manifest(registry, Topics("ns"), "w-1")
    assert {(record.topic, record.partition) for record in out} == {("ns.services", 0)}
    announced = {record.key: json.loads(record.value) for record in out}
    assert set(announced) == {service.name.encode() for service in SERVICES}
    for entry, expected in zip(announced.values(), registry.manifest(), strict=True):
        assert entry == {**expected, "worker": "w-1"}
