"""Records Kafka refuses for good, and the invocations that wrote them.

Kafka takes or refuses a transaction whole. A record it will never take (one larger than
its topic's ``max.message.bytes``, lowered while workers run, or set so on a topic the
worker could not check at its start: ``streams/kafka/startup.py``) failed every commit that
held it. The worker restored its partitions, replayed the same step, wrote the same record
again, and every partition of the worker waited behind it.

So a commit that fails with such an error is followed, on the committer thread, by a search
for the records to blame (:func:`find_refused`): each topic's records of the failed
transaction, the largest first, go to Kafka one at a time, each in a transaction of its own
that is aborted, until one is taken (a topic's limit is the same for all its partitions).
The invocations that wrote the refused ones (``streams.engine.outbox.author_of``) then fail
with 413 at their next attempt, which the restore that follows starts: nothing they did
since their last committed step is written, and the rest of the step commits. A refused
record that no one invocation wrote (object state, a dead letter) is not blamed on anyone:
the worker restores and tries again after a pause, as for any failed commit.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import MutableMapping, Sequence

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams.engine.outbox import Out, author_of
from streams.wire.records import Failure
from streams.wire.topics import Topics

log = logging.getLogger("kourier.worker")

#: Errors a record meets again however often it is sent.
REFUSED_FOR_GOOD = frozenset({KafkaError.MSG_SIZE_TOO_LARGE})
#: Invocations held to fail at once at most: the oldest are let go past it (each is failed
#: at its next attempt, which the restore right after the search starts).
HELD = 10_000


class RecordsRefused(KafkaException):
    """A transaction Kafka refused (its error is ``args[0]``, as for any
    ``KafkaException``) because of some of its records, which it will refuse whenever they
    are sent: ``refused`` holds each with Kafka's error for it."""

    def __init__(self, error: KafkaError, refused: Sequence[tuple[Out, KafkaError]]) -> None:
        super().__init__(error)
        self.refused = list(refused)

    def __str__(self) -> str:
        records = ", ".join(f"{size(out)} bytes to {out.topic}" for out, _ in self.refused)
        return f"{self.args[0].str()}; refused for good: {records}"


def size(out: Out) -> int:
    """Bytes of a record's key, value and headers."""
    headers = sum(len(name) + len(value or b"") for name, value in out.headers or ())
    return len(out.key or b"") + len(out.value or b"") + headers


def find_refused(
    producer: Producer, records: Sequence[Out], timeout: float
) -> list[tuple[Out, KafkaError]]:
    """Which of ``records`` Kafka refuses for good, with its error: per topic, the largest
    first, each sent alone in a transaction that is then aborted, until one is taken. A
    failure of another kind ends the search with what was found. ``producer`` has no
    transaction open, and has none open after."""
    refused: list[tuple[Out, KafkaError]] = []
    by_topic: dict[str, list[Out]] = defaultdict(list)
    for out in records:
        by_topic[out.topic].append(out)
    for outs in by_topic.values():
        for out in sorted(outs, key=size, reverse=True):
            error = _sent_alone(producer, out, timeout)
            if error is None:
                break
            if error.code() not in REFUSED_FOR_GOOD:
                log.warning("looking for a record Kafka refuses, met %s; looking no further", error)
                return refused
            refused.append((out, error))
    return refused


def _sent_alone(producer: Producer, out: Out, timeout: float) -> KafkaError | None:
    """Kafka's error for ``out`` sent alone in a transaction, which is aborted; None once
    it was taken."""
    reports: list[KafkaError | None] = []

    def report(error: KafkaError | None, _: Message) -> None:
        reports.append(error)

    producer.begin_transaction()
    try:
        producer.produce(out.topic, value=out.value, key=out.key, partition=out.partition,
                         headers=out.headers, on_delivery=report)  # fmt: skip
        producer.flush(timeout)
    except KafkaException as exc:  # refused before it left (librdkafka's own limit)
        reports.append(exc.args[0])
    finally:
        producer.abort_transaction(timeout)
    if not reports:
        return KafkaError(KafkaError._TIMED_OUT, "no delivery report in time")
    return reports[0]


def blame(refused: RecordsRefused, topics: Topics, held: MutableMapping[str, Failure]) -> list[str]:
    """Hold, in ``held``, the failure of every invocation that wrote a record of
    ``refused``: the ids newly held (none when no one invocation wrote them). Kafka thread;
    the partitions' attempts take from ``held`` on the event loop."""
    blamed = []
    for out, error in refused.refused:
        author = author_of(out, topics)
        log.error("Kafka refused a record of %d bytes to %s[%d] for good (%s): %s",
                  size(out), out.topic, out.partition, error.str(),
                  f"invocation {author} fails with 413" if author else "no invocation wrote it "
                  "alone; fix the topic's max.message.bytes (README, Limits)")  # fmt: skip
        if author is None or author in held:
            continue
        held[author] = Failure(
            code=413,
            message=f"Kafka refused a record this invocation wrote: {size(out)} bytes to "
            f"{out.topic} ({error.str()}); nothing it did since its last committed step "
            "was written",
        )
        blamed.append(author)
    # The event loop's attempts take ids out meanwhile: each step here is one dict call.
    for oldest in list(held)[: max(0, len(held) - HELD)]:
        held.pop(oldest, None)
    return blamed
