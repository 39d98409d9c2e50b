"""Records Kafka refuses for good, and the invocations that wrote them.

Kafka takes or refuses a transaction whole. A record it will never take (one larger than its
topic's ``max.message.bytes``, lowered while workers run, or set so on a topic the worker
could not check at its start: ``streams/kafka/startup.py``) failed every commit that held
it. The worker restored its partitions, replayed the same step, wrote the same record again,
and every partition of the worker waited behind it.

So a commit that fails with such an error is followed, on the committer thread, by a search
for the records to blame (:func:`find_refused`): each topic's records of the failed
transaction, sorted by size, are sent alone, each in a transaction of its own that is
aborted, to find by bisection the largest one Kafka takes; those larger are refused (a
topic's limit is the same on all its partitions, once a change of it has reached them). Each
try is made on a producer made anew for the turn. The search begins no try after
``SEARCH_SECONDS``, well within the time after which the worker takes a transaction for
stuck. The invocations that wrote the refused records (``streams.engine.outbox.author_of``)
are then held to fail with 413 (:func:`blame`): at their next attempt, which the restore
that follows starts, or as they queue behind their key or are scheduled. Nothing they did
since their last committed step is written, and the rest of the step commits. A refused
record that no one invocation wrote (object state, a dead letter, a duplicate request's
answer) and a batch refused whole whose records each fit are blamed on nobody: the worker
restores and tries again after a pause, as for any failed commit, and so it does when every
invocation blamed was blamed before since the last commit (``setbacks.py``).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, MutableMapping, Sequence

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams.engine.outbox import Out, author_of
from streams.wire.records import Failure
from streams.wire.topics import Topics

log = logging.getLogger("kourier.worker")

#: Errors a record meets again however often it is sent.
REFUSED_FOR_GOOD = frozenset({KafkaError.MSG_SIZE_TOO_LARGE})
#: Seconds the search for refused records may take in all (a try begins only with
#: ``TRY_SECONDS`` left: its flush and its abort may each take that long).
SEARCH_SECONDS = 6.0
TRY_SECONDS = 1.0
#: Invocations held to fail at most (the oldest are let go past it), and seconds a hold
#: lasts: its invocation's next attempt comes in the replay right after the search, or at
#: its retry (at most a minute later with the default retry policy).
HELD = 10_000
HOLD_SECONDS = 600.0


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
    producer: Callable[[], Producer], records: Sequence[Out], seconds: float = SEARCH_SECONDS
) -> list[tuple[Out, KafkaError]]:
    """Which of ``records`` Kafka refuses for good, with its error: per topic, by bisection
    of the records sorted by size, each try one record sent alone in a transaction that is
    then aborted; all larger than the largest taken are refused. A failure of another kind
    (``producer()`` raising too), or the end of ``seconds``, ends the search with what was
    found.

    Each try is made on a new producer (``producer()``): after a batch Kafka refused, the
    one that sent it is out of step with the broker's sequence numbers for the partition
    (``OUT_OF_ORDER_SEQUENCE_NUMBER`` on the next record) until its epoch is bumped."""
    deadline = time.monotonic() + seconds
    refused: list[tuple[Out, KafkaError]] = []
    by_topic: dict[str, list[Out]] = defaultdict(list)
    for out in records:
        by_topic[out.topic].append(out)
    over = False
    for outs in by_topic.values():
        outs.sort(key=size, reverse=True)
        low, high = 0, len(outs)  # outs[:low] refused, outs[high:] taken
        error: KafkaError | None = None
        while low < high and not over:
            middle = (low + high) // 2
            met = None
            if deadline - time.monotonic() >= TRY_SECONDS:
                try:
                    met = _sent_alone(producer(), outs[middle])
                except KafkaException as exc:
                    met = exc.args[0]
            if met is not None and met.code() in REFUSED_FOR_GOOD:
                low, error = middle + 1, met
            elif met is not None and met.code() == KafkaError.NO_ERROR:
                high = middle
            else:
                log.warning("looking for the records Kafka refuses: %s; looking no further",
                            met.str() if met is not None else "out of time")  # fmt: skip
                over = True
        if error is not None:
            refused += [(out, error) for out in outs[:low]]
    return refused


def _sent_alone(producer: Producer, out: Out) -> KafkaError:
    """Kafka's error for ``out`` sent alone in a transaction, which is aborted; NO_ERROR
    once it was taken."""
    reports: list[KafkaError] = []

    def report(error: KafkaError | None, _: Message) -> None:
        reports.append(KafkaError(KafkaError.NO_ERROR) if error is None else error)

    producer.begin_transaction()
    try:
        producer.produce(out.topic, value=out.value, key=out.key, partition=out.partition,
                         headers=out.headers, on_delivery=report)  # fmt: skip
        producer.flush(TRY_SECONDS)
    except KafkaException as exc:  # refused before it left (librdkafka's own limit)
        reports.append(exc.args[0])
    finally:
        try:
            producer.abort_transaction(TRY_SECONDS)
        except KafkaException as exc:  # the verdict stands; the next try has a new producer
            log.warning("a try's abort failed: %s", exc.args[0])
    if not reports:
        return KafkaError(KafkaError._TIMED_OUT, "no delivery report in time")
    return reports[0]


def blame(
    refused: RecordsRefused, topics: Topics, held: MutableMapping[str, tuple[Failure, float]]
) -> list[str]:
    """Hold, in ``held``, the failure of every invocation that wrote a record of
    ``refused``: their ids (none when no one invocation wrote them). Kafka thread; the
    partitions take from ``held`` on the event loop, so each change here is one dict call."""
    now = time.monotonic()
    blamed: list[str] = []
    for out, error in refused.refused:
        author = author_of(out, topics)
        log.error("Kafka refused a record of %d bytes to %s[%d] for good (%s): %s",
                  size(out), out.topic, out.partition, error.str(),
                  f"invocation {author} fails with 413" if author else "nobody is failed for "
                  "it (README, Limits): fix the topic's max.message.bytes")  # fmt: skip
        if author is None or author in blamed:
            continue
        message = (f"Kafka refused a record this invocation wrote: {size(out)} bytes to "
                   f"{out.topic} ({error.str()}); nothing it did since its last committed "
                   "step was written")  # fmt: skip
        held[author] = (Failure(code=413, message=message), now + HOLD_SECONDS)
        blamed.append(author)
    for inv_id, (_, until) in list(held.items()):
        if until < now:
            held.pop(inv_id, None)
    for oldest in list(held)[: max(0, len(held) - HELD)]:
        held.pop(oldest, None)
    return blamed
