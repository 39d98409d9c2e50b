"""``listed_topics``: which topics a client waits for, and when it stops asking (the calls it
makes, with a stand-in client; a topic created while a real client and worker wait is in
tests/integration/test_topic_creation.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from confluent_kafka import KafkaError

from streams.kafka.offsets import listed_topics


@dataclass
class Listed:
    error: KafkaError | None = None
    partitions: dict[int, object] = field(default_factory=dict)


@dataclass
class Answer:
    topics: dict[str, Listed]


class StandInClient:
    """Answers each ``list_topics`` with the next of ``rounds``, the last one from then on."""

    def __init__(self, *rounds: dict[str, Listed]) -> None:
        self.rounds = list(rounds)
        self.asked = 0

    def list_topics(self, timeout: float) -> Answer:
        self.asked += 1
        return Answer(self.rounds.pop(0) if len(self.rounds) > 1 else self.rounds[0])


def test_a_topic_listed_later_is_waited_for() -> None:
    client = StandInClient({"a": Listed()}, {"a": Listed()}, {"a": Listed(), "b": Listed()})
    metadata, absent = listed_topics(client, ["a", "b"], grace=10)  # type: ignore[arg-type]
    assert absent == []
    assert set(metadata) == {"a", "b"}
    assert client.asked == 3


def test_a_topic_whose_leader_is_not_ready_is_asked_for_again() -> None:
    electing = Listed(KafkaError(KafkaError.LEADER_NOT_AVAILABLE))
    client = StandInClient({"a": electing}, {"a": Listed()})
    assert listed_topics(client, ["a"], grace=10)[1] == []  # type: ignore[arg-type]
    assert client.asked == 2


def test_a_topic_never_listed_is_absent_after_the_grace() -> None:
    client = StandInClient({"a": Listed()})
    assert listed_topics(client, ["a", "b"], grace=0.5)[1] == ["b"]  # type: ignore[arg-type]
    assert client.asked > 1, "asked again within the grace"


def test_an_error_that_will_not_pass_ends_the_wait_at_once() -> None:
    refused = Listed(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    client = StandInClient({"a": refused})
    assert listed_topics(client, ["a", "b"], grace=10)[1] == ["a", "b"]  # type: ignore[arg-type]
    assert client.asked == 1
