"""Offsets with no records to go with them (``Committer.worth``): records consumed that
wrote nothing, as a send to a handler that only returns, are committed all the same; left
out, the next owner of their partition ran them again. End to end, with Kafka:
tests/integration/test_hand_over.py."""

from __future__ import annotations

from confluent_kafka import TopicPartition

from streams.engine.outbox import Out
from streams.kafka.committer import Committer, Snapshot
from tests.unit.harness import TOPICS


def read_to(offset: int, out: list[Out] | None = None) -> Snapshot:
    """A snapshot of ingress partition 0 read up to ``offset``, with ``out`` to write."""
    return Snapshot(out=out or [], offsets=[TopicPartition(TOPICS.ingress, 0, offset)])


def test_offsets_alone_are_worth_a_transaction_once_they_moved() -> None:
    committed: list[list[tuple[int, int]]] = []
    committer = Committer(lambda s: committed.append([(o.partition, o.offset) for o in s.offsets]))
    try:
        assert committer.worth(read_to(5)), "offsets never committed are left out"
        assert committer.submit(read_to(5))
        assert committer.flush(10) is None
        assert committed == [[(0, 5)]]
        assert not committer.worth(read_to(5), now=True), "offsets committed already, again"
        assert not committer.worth(read_to(7)), "a transaction for every step that moved them"
        assert committer.worth(read_to(7), now=True), "a hand-over leaves them to be run again"
        assert committer.worth(read_to(7, [Out(TOPICS.ingress, 0, b"k", b"v")]))
        committer.OFFSETS_EVERY = 0.0  # as a second after the last transaction
        assert committer.worth(read_to(7))
        committer.clear()  # after a failure: the next owner, this one too, reads them again
        assert committer.worth(read_to(5), now=True)
        assert not committer.worth(Snapshot(out=[], offsets=[]), now=True)
    finally:
        committer.close()
