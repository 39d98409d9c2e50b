"""The worker's transactional producers, and one Kafka transaction per snapshot on them.

One transaction holds a step's outgoing records, its changelog writes and its consumed
offsets (KIP-447). It commits, or it fails for good and is aborted — or, when even the abort
fails, its producer is replaced — so no open transaction wedges the next one. A commit (or
offset send) that fails without an outcome, as when a broker is away, is tried again until
it settles: restoring while it might still commit would apply its records twice. Runs on
the committer thread (``streams.kafka.committer``), apart from :meth:`Transactions.settle`.

The transactions take two producers in turn, each with a transactional id of its own. For
a few milliseconds after a commit returns, the coordinator is still writing that
transaction's markers, and it refuses the same id's next transaction meanwhile
(``CONCURRENT_TRANSACTIONS``); another id's transaction is not held up by them.
Transactions still run one at a time, and each begins only once the last commit has
returned, when that transaction's outcome is decided. So on every partition its records
come before the next one's, and whichever markers land first, the group coordinator keeps
the offsets committed last: it keeps the commit written later to ``__consumer_offsets``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Collection

from confluent_kafka import KafkaError, KafkaException, Producer

from streams.engine.outbox import Out
from streams.kafka.committer import Snapshot
from streams.kafka.refused import REFUSED_FOR_GOOD, RecordsRefused, find_refused
from streams.settings import Settings, SettingsError

log = logging.getLogger("kourier.worker")

#: Seconds a transactional call may take before librdkafka gives up on it.
TIMEOUT = 30.0

#: A transaction that begins within this many seconds of its producer's last commit sends
#: its offsets before its records (see :meth:`Transactions.commit`). Between sequential
#: calls the gap is several milliseconds, and there the records go first.
SETTLING = 0.001
#: Producers, and transactional ids, that the transactions take in turn (see above).
PRODUCERS = 2
#: Seconds between tries of a new producer while Kafka refuses it, doubling up to the max.
SETTLE_PAUSE = 0.05
SETTLE_PAUSE_MAX = 2.0


def transactional_producer(settings: Settings, transactional_id: str) -> Producer:
    """A producer for one worker's transactions, its earlier self's open one aborted.
    ``SettingsError`` when librdkafka refuses its settings: made again, it would be refused
    again (a ``KafkaException`` is tried again, as Kafka's answers are)."""
    try:
        producer = Producer(
            settings.producer_config(
                {
                    "log_level": 4,
                    "transactional.id": transactional_id,
                    "transaction.timeout.ms": 10_000,
                    "linger.ms": 0,
                    # The default 100 ms backoff caps a transactional producer at ~10
                    # commits/s: the next transaction waits for the previous one's markers.
                    "retry.backoff.ms": 1,
                    "retry.backoff.max.ms": 20,
                }
            )
        )
    except KafkaException as exc:  # nothing was asked of Kafka yet
        error = exc.args[0]
        said = error.str() if isinstance(error, KafkaError) else str(exc)
        raise SettingsError(
            f"the worker's transactional producer refuses its settings: {said} (a"
            " KOURIER_KAFKA_* setting; transaction.timeout.ms is 10000, and idempotence is on)"
        ) from None
    producer.init_transactions(TIMEOUT)
    return producer


class Transactions:
    """Commits snapshots on producers taken in turn, replacing one when it fails for good."""

    def __init__(
        self,
        new_producer: Callable[[int], Producer],
        producers: int = PRODUCERS,
        *,
        stopping: Callable[[], bool] = lambda: True,
        refused: Collection[int] = (),
    ) -> None:
        """Make a producer for each turn. One that Kafka does not answer in time (a broker
        restarting as the worker starts) is made again after a doubling pause, until it is
        or ``stopping()``; a refusal whose code is in ``refused`` (an ACL's) is raised."""
        self._new_producer = new_producer  # the producer for one turn, by its number
        self.producers = [self._first(turn, stopping, refused) for turn in range(producers)]
        self._turn = 0  # whose transaction runs next, or runs now
        #: Seconds spent in each step of the committed transactions, summed (statistics).
        self.phases = {"records": 0.0, "offsets": 0.0, "commit": 0.0}
        #: Transactions that sent their offsets before their records (statistics).
        self.offsets_first = 0
        #: perf_counter() when each producer's last commit returned
        self._committed_at = [float("-inf")] * producers
        # Producers are made one at a time. Making one fences every producer made before it
        # with the same transactional id, so a turn must keep the one made last: a failed
        # commit's replacement (committer thread) and a settle (Kafka thread) take turns.
        self._making = threading.Lock()

    def _first(self, turn: int, stopping: Callable[[], bool], refused: Collection[int]) -> Producer:
        def gives_up(error: KafkaError) -> bool:
            return error.code() in refused or bool(error.fatal())

        return _until_made(functools.partial(self._new_producer, turn), stopping, gives_up)

    @property
    def producer(self) -> Producer:
        """The producer whose transaction runs next, or runs now."""
        return self.producers[self._turn]

    def flush(self, timeout: float) -> None:
        """Flush every producer, all within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        for producer in self.producers:
            producer.flush(max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float) -> None:
        """Flush every producer within ``timeout`` seconds, then let go of them: a
        committer abandoned in a commit that stays in doubt stops trying it again
        (:meth:`_settled`) rather than go on after the worker, for good."""
        try:
            self.flush(timeout)
        finally:
            self.producers = []  # what the committer replaces meanwhile fails (IndexError)

    def settle(self, stopping: Callable[[], bool]) -> None:
        """A new producer for every turn, before the worker restores from Kafka (Kafka
        thread, with the committer idle or abandoned); each tried until Kafka answers or the
        worker stops. ``init_transactions`` with an id returns only once that id's last
        transaction is complete: a stuck one is completed or aborted by the coordinator (the
        new producer fences the stuck one), and one that committed just before has its
        markers written. Kafka writes the marker on ``__consumer_offsets`` apart from those
        on the changelogs, so without this a restore could read the offsets committed after
        a transaction and the state from before it."""
        for turn in range(len(self.producers)):
            _until_made(functools.partial(self._make, turn, stopping), stopping)

    def _make(self, turn: int, stopping: Callable[[], bool]) -> Producer:
        """A new producer for ``turn`` once no other is being made (:meth:`_replace` may be,
        on the committer thread); a worker that stops meanwhile gives up waiting."""
        began: float | None = time.monotonic()
        while not self._making.acquire(timeout=0.1):
            if stopping():
                raise KafkaException(
                    KafkaError(KafkaError._TIMED_OUT, "stopping while a producer was being made")
                )
            if began is not None and time.monotonic() - began > TIMEOUT:
                log.warning("waited %.0fs for a producer being made; waiting on", TIMEOUT)
                began = None  # said once
        try:
            self.producers[turn] = made = self._new_producer(turn)
        finally:
            self._making.release()
        return made

    def announce(
        self, out: list[Out], stopping: Callable[[], bool], refused: Collection[int] = ()
    ) -> None:
        """Commit ``out`` in a transaction of its own (a worker's services, as it starts;
        Kafka thread, before any committer). Tried again while it fails, after a doubling
        pause and on producers renewed by :meth:`settle`, which waits while Kafka is away:
        a broker that restarts as the worker starts must not end it, any more than one that
        restarts later. A failure whose code is in ``refused`` (an ACL's), or one once
        ``stopping()``, is raised."""
        pause = SETTLE_PAUSE
        while True:
            producer = self.producer
            try:
                producer.begin_transaction()
                self._produce(producer, Snapshot(out, []))
                producer.commit_transaction(TIMEOUT)
                return
            except KafkaException as exc:
                if stopping() or exc.args[0].code() in refused:
                    raise
                log.warning("a transaction of its own failed (%s); trying again", exc.args[0])
            time.sleep(pause)
            pause = min(2 * pause, SETTLE_PAUSE_MAX)
            self.settle(stopping)  # each new producer completes what its id left open

    def commit(self, snapshot: Snapshot) -> None:
        """One transaction (committer thread). Sending the offsets and committing are tried
        again while they fail retriably (a broker away): until they settle, nobody knows
        whether the transaction committed, and restoring from Kafka meanwhile would apply
        its records a second time if it did. Any other failure is raised, and the Kafka
        thread then restores its partitions from Kafka; before that a transaction that
        failed for good (a record refused, an abortable error) is aborted, or when even that
        fails the producer is replaced, so that no open transaction wedges the next ones. A
        transaction that never settles is fenced by the Kafka thread (:meth:`settle`). One
        that failed because Kafka refused a record as too large is raised as
        ``RecordsRefused``, naming the records it refuses (:meth:`_refused`).

        The records go first: their partitions register (after librdkafka's 1 ms timer)
        while the offsets travel. But for a few milliseconds after a commit returns, the
        coordinator is still writing that transaction's markers, and it refuses the next
        transaction's first requests. librdkafka asks again after ``retry.backoff.ms`` for
        refused offsets, but after a fixed 20 ms for a refused partition registration. So a
        transaction that begins within ``SETTLING`` of its producer's last commit sends its
        offsets first; once they are accepted, its partitions register at once. (With the
        producers taken in turn, that is rare: see the module's docstring.)"""
        turn = self._turn
        producer = self.producers[turn]
        offsets_first = bool(snapshot.offsets) and (
            time.perf_counter() - self._committed_at[turn] < SETTLING
        )
        try:
            began = time.perf_counter()
            producer.begin_transaction()
            records = time.perf_counter() - began  # counted with the records, as before
            offsets = self._send_offsets(producer, snapshot) if offsets_first else 0.0
            records += self._produce(producer, snapshot)
            if not offsets_first:
                offsets = self._send_offsets(producer, snapshot)
            began = time.perf_counter()
            self._settled(producer, lambda: producer.commit_transaction(TIMEOUT))
            committed = time.perf_counter()
            if self.producers[turn] is not producer:
                return  # settled while it committed: the turns are the new committer's
            self._committed_at[turn] = committed
            self._turn = (turn + 1) % len(self.producers)
            self.phases["records"] += records
            self.phases["offsets"] += offsets
            self.phases["commit"] += committed - began
            self.offsets_first += offsets_first
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if in_doubt(error):
                raise  # the producer was fenced meanwhile: settle() settles it
            kept: Producer | None = producer
            if error.fatal() or not self._aborted(producer):
                kept = self._replace(turn, producer)
            if kept is not None and error.code() in REFUSED_FOR_GOOD:
                refused = self._refused(turn, kept, snapshot)  # on producers of its own
                if refused:
                    raise RecordsRefused(error, refused) from exc
            raise
        except Exception:  # not Kafka's (a header produce() refuses): the transaction it
            if not self._aborted(producer):  # left open would fail the turn's next commit
                self._replace(turn, producer)
            raise

    def _refused(
        self, turn: int, producer: Producer, snapshot: Snapshot
    ) -> list[tuple[Out, KafkaError]]:
        """The records of ``snapshot`` that Kafka refuses for good (streams.kafka.refused),
        looked for on producers made anew for ``turn``, from ``producer`` on. The search
        stops once the turn is no longer its own (the Kafka thread settled it: this
        committer was abandoned) or no producer can be made."""
        mine = producer

        def anew() -> Producer:
            nonlocal mine
            made = self._replace(turn, mine)
            if made is None:
                raise KafkaException(KafkaError(KafkaError._STATE, "no producer to search on"))
            mine = made
            return made

        return find_refused(anew, snapshot.out)

    @staticmethod
    def _produce(producer: Producer, snapshot: Snapshot) -> float:
        """Queue the snapshot's records in the open transaction; the seconds it took."""
        began = time.perf_counter()
        for record in snapshot.out:
            while True:
                try:
                    producer.produce(
                        record.topic,
                        value=record.value,
                        key=record.key,
                        partition=record.partition,
                        headers=record.headers,
                    )
                    break
                except BufferError:
                    producer.poll(0.01)
        return time.perf_counter() - began

    def _send_offsets(self, producer: Producer, snapshot: Snapshot) -> float:
        """Add the snapshot's consumed offsets to the open transaction; the seconds it took."""
        if not snapshot.offsets:
            return 0.0
        began = time.perf_counter()
        offsets, metadata = snapshot.offsets, snapshot.metadata
        self._settled(
            producer, lambda: producer.send_offsets_to_transaction(offsets, metadata, TIMEOUT)
        )
        return time.perf_counter() - began

    def _settled(self, producer: Producer, call: Callable[[], None]) -> None:
        """``call`` again while it fails retriably and ``producer`` is still the worker's."""
        while True:
            try:
                call()
                return
            except KafkaException as exc:
                if not in_doubt(exc.args[0]) or all(p is not producer for p in self.producers):
                    raise
                log.warning("transaction not settled yet (%s); trying again", exc.args[0])

    def _replace(self, turn: int, failed: Producer) -> Producer | None:
        """A new producer for ``turn``, with the same transactional id, unless ``failed`` was
        settled meanwhile (committer thread, which may be one the Kafka thread abandoned and
        is settling); when Kafka cannot be reached, the old one stays and the next failure
        tries again. The producer made, if one was."""
        with self._making:
            if self.producers[turn] is not failed:
                return None
            try:
                self.producers[turn] = made = self._new_producer(turn)
            except KafkaException as exc:
                log.warning("no new producer yet: %s", exc.args[0])
                return None
            return made

    @staticmethod
    def _aborted(producer: Producer) -> bool:
        """Abort the open transaction; False when the producer cannot (it is replaced)."""
        try:
            producer.abort_transaction(TIMEOUT)
        except KafkaException as exc:
            log.warning("abort failed (%s); a new producer takes over", exc.args[0])
            return False
        return True


def _until_made(
    make: Callable[[], Producer],
    stopping: Callable[[], bool],
    gives_up: Callable[[KafkaError], bool] = lambda error: False,
) -> Producer:
    """``make()``'s producer, made again after a doubling pause while Kafka does not take it
    (a refusal that comes at once, as an ACL's, is then not a busy loop); its failure is
    raised once ``stopping()``, or when ``gives_up`` on its error."""
    pause = SETTLE_PAUSE
    while True:
        try:
            return make()
        except KafkaException as exc:
            if stopping() or gives_up(exc.args[0]):
                raise
            log.warning("new producer not ready yet: %s", exc)
        time.sleep(pause)
        pause = min(2 * pause, SETTLE_PAUSE_MAX)


def in_doubt(error: KafkaError) -> bool:
    """A transactional call that failed without an outcome: it may be tried again."""
    return bool(error.retriable() and not error.txn_requires_abort() and not error.fatal())
