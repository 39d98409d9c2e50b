"""A take-over that cannot read its group's committed offsets names the partition of
``__consumer_offsets`` that holds them: a transaction hanging there (README, Limits) keeps
them unreadable, and nothing in the worker's log said where to look."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from streams.kafka.offsets import OFFSETS_TOPIC, offsets_partition, unread_offsets


def test_the_offsets_partition_is_the_one_kafka_picks() -> None:
    # Java's abs(String.hashCode()) % partitions, checked against jshell; "restart.workers"
    # also against a broker's log (its group coordinator on partition 6 of 8).
    assert offsets_partition("restart.workers", 8) == 6
    assert offsets_partition("restart.workers", 50) == 42
    assert offsets_partition("grüppe.workers", 50) == 33
    assert offsets_partition("x\U0001f600y", 50) == 10  # a surrogate pair: two code units
    assert offsets_partition("polygenelubricants", 50) == 0  # hashCode is Integer.MIN_VALUE


class Admin:
    def __init__(self, partitions: int | None, raises: bool = False) -> None:
        self.partitions = partitions
        self.raises = raises

    def list_topics(self, topic: str, timeout: float) -> Any:
        assert topic == OFFSETS_TOPIC
        if self.raises:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        if self.partitions is None:
            return SimpleNamespace(topics={})
        found = SimpleNamespace(error=None, partitions=dict.fromkeys(range(self.partitions)))
        return SimpleNamespace(topics={topic: found})


def test_a_timed_out_read_names_where_the_group_commits() -> None:
    timed_out = KafkaException(KafkaError(KafkaError._TIMED_OUT, "Failed to get committed"))
    hint = unread_offsets(Admin(8), "restart.workers", timed_out)  # type: ignore[arg-type]
    assert "__consumer_offsets/6" in hint
    assert "Hanging transactions" in hint
    # Any other failure, or a cluster that does not say, adds nothing.
    refused = KafkaException(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED))
    assert unread_offsets(Admin(8), "g", refused) == ""  # type: ignore[arg-type]
    assert unread_offsets(Admin(8), "g", RuntimeError("no")) == ""  # type: ignore[arg-type]
    assert unread_offsets(Admin(None), "g", timed_out) == ""  # type: ignore[arg-type]
    assert unread_offsets(Admin(8, raises=True), "g", timed_out) == ""  # type: ignore[arg-type]
