"""The worker's transaction error paths (``streams.kafka.transactions``), with a stand-in
producer: whatever fails ends in an abort, or in a fresh producer when the abort fails too,
so no transaction stays open.

(Kafka itself is not needed to see which calls the worker makes; what the broker does with
them is tested on the real one, in tests/integration/test_oversize.py.)
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streams.engine.outbox import Out
from streams.kafka import transactions
from streams.kafka.committer import Snapshot
from streams.kafka.offsets import REFUSED
from streams.kafka.refused import RecordsRefused
from streams.kafka.transactions import Transactions
from tests.threads import in_thread


class StandIn:
    """Records the transactional calls; raises where told."""

    def __init__(self, fail: dict[str, KafkaError], times: int = -1) -> None:
        self.fail = fail
        self.times = times  # how many calls fail (-1: all)
        self.calls: list[str] = []
        self.reported: Any = None

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.fail and self.times != 0:
            self.times -= 1
            raise KafkaException(self.fail[name])

    def begin_transaction(self) -> None:
        self._call("begin")

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self._call("produce")
        self.reported = kwargs.get("on_delivery")

    def flush(self, *args: Any) -> int:
        self._call("flush")
        if self.reported is not None:
            self.reported(None, None)  # taken
        return 0

    def send_offsets_to_transaction(self, *args: Any) -> None:
        self._call("offsets")

    def commit_transaction(self, *args: Any) -> None:
        self._call("commit")

    def abort_transaction(self, *args: Any) -> None:
        self._call("abort")


def transactions_on(*producers: StandIn) -> tuple[Transactions, list[Any]]:
    """The worker's transactions on ``producers``, taken in turn; the producers made after
    them, in order, each with the turn it was made for (``made_for``)."""
    first: list[Any] = list(producers)
    fresh: list[Any] = []

    def new_producer(turn: int) -> Any:
        if first:
            return first.pop(0)
        fresh.append(StandIn({}))
        fresh[-1].made_for = turn
        return fresh[-1]

    return Transactions(new_producer, len(producers)), fresh


SNAPSHOT = Snapshot(out=[Out("t", 0, b"k", b"v")], offsets=[])


@pytest.mark.parametrize(
    ("where", "code"),
    [("produce", KafkaError.MSG_SIZE_TOO_LARGE), ("begin", KafkaError._STATE)],
)
def test_a_transaction_that_failed_for_good_is_aborted(where: str, code: int) -> None:
    producer = StandIn({where: KafkaError(code)})
    tx, fresh = transactions_on(producer)
    with pytest.raises(KafkaException) as raised:
        tx.commit(SNAPSHOT)
    assert producer.calls[-1] == "abort"
    assert not isinstance(raised.value, RecordsRefused)
    if code == KafkaError.MSG_SIZE_TOO_LARGE:  # which record: it alone, on a new producer
        assert producer.calls == ["begin", "produce", "abort"]
        (tried,) = fresh
        assert (tried.made_for, tried.calls) == (0, ["begin", "produce", "flush", "abort"])
        assert tx.producers == [tried]
        return  # the record was taken alone: nobody is blamed (tests/unit/test_refused.py)
    assert fresh == [], "an abort was enough"


TOO_LARGE = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)


def refusing(first: StandIn) -> tuple[Transactions, list[StandIn]]:
    """Transactions of one turn on ``first``, then on producers made anew that Kafka refuses
    the record on too; every producer made, in order."""
    made: list[StandIn] = []

    def new_producer(turn: int) -> Any:
        if not made and turn == 0 and first.calls == []:
            made.append(first)
            return first
        made.append(StandIn({"produce": TOO_LARGE}))
        return made[-1]

    return Transactions(new_producer, 1), made


def test_a_record_refused_for_good_is_named_in_the_failure() -> None:
    """After the abort, the record is sent alone on a producer made anew for the turn,
    which Kafka refuses too: the failure names it, and the turn keeps the producer made
    last."""
    tx, made = refusing(StandIn({"produce": TOO_LARGE}))
    with pytest.raises(RecordsRefused) as raised:
        tx.commit(SNAPSHOT)
    assert [out for out, _ in raised.value.refused] == SNAPSHOT.out
    assert raised.value.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE
    assert len(made) == 2
    assert made[1].calls == ["begin", "produce", "abort"]
    assert tx.producers == [made[1]]


def test_a_record_refused_for_good_is_looked_for_when_the_abort_fails_too() -> None:
    """A transaction refused for good whose abort then failed (timed out) replaced its
    producer and raised the plain error: nothing named the record, the replay wrote it
    again, and the worker went round until an abort happened to work. The search makes
    producers of its own anyway."""
    producer = StandIn({"produce": TOO_LARGE, "abort": KafkaError(KafkaError._TIMED_OUT)})
    tx, made = refusing(producer)
    with pytest.raises(RecordsRefused) as raised:
        tx.commit(SNAPSHOT)
    assert [out for out, _ in raised.value.refused] == SNAPSHOT.out
    assert producer.calls == ["begin", "produce", "abort"]
    assert tx.producers == [made[-1]]


def test_a_commit_in_doubt_is_tried_again_not_restored() -> None:
    """A commit that timed out may have committed: restoring from Kafka now would apply its
    records twice if it did, so the commit is tried again until it settles."""
    producer = StandIn({"commit": KafkaError(KafkaError._TIMED_OUT, retriable=True)}, times=2)
    tx, fresh = transactions_on(producer)
    tx.commit(SNAPSHOT)  # settles on the third try: no failure for the Kafka thread
    assert producer.calls == ["begin", "produce", "commit", "commit", "commit"]
    assert fresh == []


class InDoubt(StandIn):
    """A producer whose every commit stays in doubt; ``tried`` once it has been tried 3 times."""

    def __init__(self) -> None:
        super().__init__({"commit": KafkaError(KafkaError._TIMED_OUT, retriable=True)})
        self.tried = threading.Event()

    def commit_transaction(self, *args: Any) -> None:
        if self.calls.count("commit") >= 3:
            self.tried.set()
        super().commit_transaction(*args)


def test_a_commit_in_doubt_is_no_longer_tried_once_the_transactions_close() -> None:
    """A committer abandoned in a commit that stays in doubt (Kafka away as the worker
    stops) went on trying it after the worker had stopped, for good: the worker's producers
    stayed its own."""
    producer = InDoubt()
    tx, _ = transactions_on(producer)
    thread, errors = in_thread(lambda: tx.commit(SNAPSHOT))
    assert producer.tried.wait(10), "the commit was not tried again"
    tx.close(1)
    thread.join(10)
    assert not thread.is_alive(), "the commit is still tried after the close"
    assert [type(error) for error in errors] == [KafkaException]
    assert "flush" in producer.calls, "closed without a flush"


def test_a_commit_in_doubt_on_a_fenced_producer_is_raised() -> None:
    """Once the Kafka thread fenced a stuck producer, its commit stops being tried."""
    producer = StandIn({"commit": KafkaError(KafkaError._TIMED_OUT, retriable=True)})
    tx, fresh = transactions_on(producer)
    original = producer._call

    def fence_on_second_commit(name: str) -> None:
        if name == "commit" and producer.calls.count("commit") == 1:
            tx.producers[0] = StandIn({})  # type: ignore[assignment]
        original(name)

    producer._call = fence_on_second_commit  # type: ignore[method-assign]
    with pytest.raises(KafkaException):
        tx.commit(SNAPSHOT)
    assert producer.calls.count("commit") == 2
    assert "abort" not in producer.calls
    assert fresh == []


def test_a_producer_that_cannot_abort_is_replaced() -> None:
    producer = StandIn({"commit": KafkaError(KafkaError.INVALID_RECORD),
                        "abort": KafkaError(KafkaError._STATE)})  # fmt: skip
    tx, fresh = transactions_on(producer)
    with pytest.raises(KafkaException):
        tx.commit(SNAPSHOT)
    assert len(fresh) == 1
    assert tx.producer is fresh[0]


def test_a_fatal_error_replaces_the_producer() -> None:
    producer = StandIn({"commit": KafkaError(KafkaError._FENCED, fatal=True)})
    tx, fresh = transactions_on(producer)
    with pytest.raises(KafkaException):
        tx.commit(SNAPSHOT)
    assert "abort" not in producer.calls
    assert tx.producer is fresh[0]


def with_offsets() -> Snapshot:
    return Snapshot(out=[Out("t", 0, b"k", b"v")], offsets=[TopicPartition("t", 0, 1)])


def test_a_transaction_right_after_a_commit_sends_its_offsets_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Right after a commit the coordinator refuses the next transaction's first requests
    while it writes the markers. librdkafka retries refused offsets within a millisecond
    but a refused partition registration only after 20 ms, so the offsets go first."""
    monkeypatch.setattr(transactions, "SETTLING", 3600.0)  # every gap counts as right after
    producer = StandIn({})
    tx, _ = transactions_on(producer)
    tx.commit(with_offsets())
    assert producer.calls == ["begin", "produce", "offsets", "commit"], "no commit before it"
    producer.calls.clear()
    tx.commit(with_offsets())
    assert producer.calls == ["begin", "offsets", "produce", "commit"]
    assert tx.offsets_first == 1


def test_a_transaction_long_after_a_commit_sends_its_records_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its partitions register while the offsets travel (the sequential case)."""
    monkeypatch.setattr(transactions, "SETTLING", 0.0)  # every gap counts as long after
    producer = StandIn({})
    tx, _ = transactions_on(producer)
    for _ in range(2):
        tx.commit(with_offsets())
    assert producer.calls == ["begin", "produce", "offsets", "commit"] * 2
    assert tx.offsets_first == 0


def test_a_failed_commit_does_not_count_as_a_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a commit that returned makes the next transaction send its offsets first."""
    monkeypatch.setattr(transactions, "SETTLING", 3600.0)
    producer = StandIn({"commit": KafkaError(KafkaError.INVALID_RECORD)})
    tx, _ = transactions_on(producer)
    with pytest.raises(KafkaException):
        tx.commit(with_offsets())
    producer.fail.clear()
    producer.calls.clear()
    tx.commit(with_offsets())
    assert producer.calls == ["begin", "produce", "offsets", "commit"]


def test_offsets_refused_before_the_records_abort_the_transaction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In the offsets-first order a refusal comes before any record: the transaction is
    aborted with nothing produced, as in the other order."""
    monkeypatch.setattr(transactions, "SETTLING", 3600.0)
    producer = StandIn({})
    tx, fresh = transactions_on(producer)
    tx.commit(with_offsets())
    producer.fail["offsets"] = KafkaError(KafkaError.INVALID_TXN_STATE)
    producer.calls.clear()
    with pytest.raises(KafkaException):
        tx.commit(with_offsets())
    assert producer.calls == ["begin", "offsets", "abort"]
    assert fresh == [], "an abort was enough"
    assert tx.offsets_first == 0, "only committed transactions are counted"


def test_transactions_take_the_producers_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each transaction runs on the producer after the last one's, so none waits for the
    markers of the transaction its own producer committed just before."""
    monkeypatch.setattr(transactions, "SETTLING", 0.0)
    first, second = StandIn({}), StandIn({})
    tx, fresh = transactions_on(first, second)
    for _ in range(3):
        tx.commit(with_offsets())
    assert first.calls == ["begin", "produce", "offsets", "commit"] * 2
    assert second.calls == ["begin", "produce", "offsets", "commit"]
    assert tx.producer is second
    assert fresh == []


def test_a_failed_transaction_keeps_its_turn() -> None:
    """After an abort the next transaction runs on the same producer, which is clean."""
    first = StandIn({"commit": KafkaError(KafkaError.INVALID_RECORD)}, times=1)
    second = StandIn({})
    tx, _ = transactions_on(first, second)
    with pytest.raises(KafkaException):
        tx.commit(SNAPSHOT)
    tx.commit(SNAPSHOT)
    assert first.calls == ["begin", "produce", "commit", "abort", "begin", "produce", "commit"]
    assert second.calls == []


def test_only_the_failed_producer_is_replaced() -> None:
    first = StandIn({})
    second = StandIn({"commit": KafkaError(KafkaError._FENCED, fatal=True)})
    tx, fresh = transactions_on(first, second)
    tx.commit(SNAPSHOT)
    with pytest.raises(KafkaException):
        tx.commit(SNAPSHOT)
    assert [p.made_for for p in fresh] == [1]
    assert tx.producers == [first, fresh[0]]
    assert tx.producer is fresh[0], "the failed turn runs the next transaction"


def test_settling_renews_every_producer_in_turn_order() -> None:
    """Before a restore, and to fence a stuck transaction: each id's last transaction is
    complete once a new producer with it is ready (its ``init_transactions``)."""
    first, second = StandIn({}), StandIn({})
    tx, fresh = transactions_on(first, second)
    tx.commit(SNAPSHOT)  # the next transaction is the second producer's
    tx.settle(lambda: False)
    assert [p.made_for for p in fresh] == [0, 1]
    assert tx.producers == fresh
    assert tx.producer is fresh[1], "settling keeps the turn"


def test_settling_is_tried_again_until_kafka_answers() -> None:
    tx, fresh = transactions_on(StandIn({}), StandIn({}))
    made = tx._new_producer
    refusals = [KafkaException(KafkaError(KafkaError._TRANSPORT))] * 2

    def flaky(turn: int) -> Any:
        if turn == 1 and refusals:
            raise refusals.pop()
        return made(turn)

    tx._new_producer = flaky
    tx.settle(lambda: False)
    assert not refusals, "both refusals were met"
    assert [p.made_for for p in fresh] == [0, 1]


def test_settling_backs_off_while_kafka_refuses_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refusal that comes at once (here the transactional id not authorized) is tried
    again after a pause that doubles, not in a loop that floods the log and the broker."""
    tx, fresh = transactions_on(StandIn({}))
    made = tx._new_producer
    refusals = [KafkaException(KafkaError(KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED))] * 7
    pauses: list[float] = []
    monkeypatch.setattr(transactions.time, "sleep", pauses.append)

    def refused(turn: int) -> Any:
        if refusals:
            raise refusals.pop()
        return made(turn)

    tx._new_producer = refused
    tx.settle(lambda: False)
    assert [p.made_for for p in fresh] == [0]
    assert pauses == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0]


def test_settling_gives_up_when_the_worker_stops() -> None:
    tx, _ = transactions_on(StandIn({}), StandIn({}))

    def unreachable(turn: int) -> Any:
        raise KafkaException(KafkaError(KafkaError._TRANSPORT))

    tx._new_producer = unreachable
    with pytest.raises(KafkaException):
        tx.settle(lambda: True)


def test_every_producer_is_flushed_within_one_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker stops within the flush timeout, not within that timeout per producer: here
    each producer uses all the time it is given."""
    clock = [100.0]
    monkeypatch.setattr(transactions.time, "monotonic", lambda: clock[0])
    flushed: list[float] = []

    def flush(timeout: float) -> None:
        flushed.append(timeout)
        clock[0] += timeout

    first, second = StandIn({}), StandIn({})
    for producer in (first, second):
        producer.flush = flush  # type: ignore[attr-defined]
    tx, _ = transactions_on(first, second)
    tx.flush(5)
    assert flushed == [5.0, 0.0]


def test_a_commit_that_returns_after_its_fence_leaves_the_turns_alone() -> None:
    """A commit stuck past the fence (a settle) may still return on the abandoned
    committer thread; the new committer's turns are not moved by it."""
    first, second = StandIn({}), StandIn({})
    tx, fresh = transactions_on(first, second)
    original = first._call

    def fenced_during_commit(name: str) -> None:
        original(name)
        if name == "commit":
            tx.settle(lambda: False)

    first._call = fenced_during_commit  # type: ignore[method-assign]
    tx.commit(SNAPSHOT)
    assert tx.producers == fresh
    assert tx.producer is fresh[0], "the next transaction is the fenced turn's new producer"


def test_a_fenced_commit_that_fails_later_leaves_the_new_producers_alone() -> None:
    """The abandoned committer thread's failure comes after the fence renewed every
    producer; by then a new committer uses them, and none may be replaced under it."""
    first = StandIn({"commit": KafkaError(KafkaError._FENCED, fatal=True)})
    second = StandIn({})
    tx, fresh = transactions_on(first, second)
    original = first._call

    def fenced_then_failed(name: str) -> None:
        if name == "commit":
            tx.settle(lambda: False)
        original(name)

    first._call = fenced_then_failed  # type: ignore[method-assign]
    with pytest.raises(KafkaException):
        tx.commit(SNAPSHOT)
    assert [p.made_for for p in fresh] == [0, 1], "only the fence made new producers"
    assert tx.producers == fresh


def test_an_announcement_that_fails_is_tried_again_on_new_producers() -> None:
    """A broker that restarts as a worker starts fails its first transaction, which
    announces its services: that must not end the worker (Worker._publish_manifest)."""
    timed_out = StandIn({"commit": KafkaError(KafkaError._MSG_TIMED_OUT)}, times=1)
    tx, fresh = transactions_on(timed_out, StandIn({}))
    tx.announce(SNAPSHOT.out * 3, lambda: False)
    assert timed_out.calls == ["begin", "produce", "produce", "produce", "commit"]
    assert [p.made_for for p in fresh] == [0, 1], "then every producer was renewed"
    assert fresh[0].calls == ["begin", "produce", "produce", "produce", "commit"]


@pytest.mark.parametrize(
    ("code", "stopping"),
    [(KafkaError.TOPIC_AUTHORIZATION_FAILED, False), (KafkaError._MSG_TIMED_OUT, True)],
)
def test_an_announcement_refused_by_acl_or_failing_as_the_worker_stops_is_raised(
    code: int, stopping: bool
) -> None:
    tx, fresh = transactions_on(StandIn({"commit": KafkaError(code)}), StandIn({}))
    with pytest.raises(KafkaException):
        tx.announce(SNAPSHOT.out, lambda: stopping, {KafkaError.TOPIC_AUTHORIZATION_FAILED})
    assert fresh == [], "no new producer: nothing was tried again"


def test_producers_kafka_does_not_answer_at_start_are_made_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broker restarting as a worker starts: ``init_transactions`` gives up after 30 s,
    which ended the worker. It is tried again, after a doubling pause; an ACL's refusal, a
    fatal error, or the worker stopping meanwhile, is raised."""
    pauses: list[float] = []
    monkeypatch.setattr(transactions.time, "sleep", pauses.append)
    answers: list[KafkaError | None] = [KafkaError(KafkaError._TIMED_OUT)] * 3 + [None, None]

    def new_producer(turn: int) -> Any:
        error = answers.pop(0)
        if error is not None:
            raise KafkaException(error)
        return StandIn({})

    tx = Transactions(new_producer, stopping=lambda: False, refused=REFUSED)
    assert len(tx.producers) == 2
    assert pauses == [0.05, 0.1, 0.2]
    running, stopped = (lambda: False), (lambda: True)
    for error, stopping in (
        (KafkaError(KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED), running),
        (KafkaError(KafkaError._FENCED, fatal=True), running),
        (KafkaError(KafkaError._TIMED_OUT), stopped),
    ):
        answers[:] = [error]
        with pytest.raises(KafkaException):
            Transactions(new_producer, stopping=stopping, refused=REFUSED)
        assert answers == [], "asked again"


def test_a_worker_announces_its_services_on_partition_0_of_the_services_topic() -> None:
    from streams.kafka.worker import Worker
    from streams.settings import Settings
    from tests.integration.apps import SERVICES

    worker = Worker(Settings(bootstrap_servers="127.0.0.1:1", namespace="ns"), SERVICES,
                    worker_id="w")  # fmt: skip

    class Announced:
        def __init__(self) -> None:
            self.out: list[Out] = []

        def announce(self, out: list[Out], *_: Any) -> None:
            self.out.extend(out)

    worker._transactions = announced = Announced()  # type: ignore[assignment]
    worker._publish_manifest()
    assert {(o.topic, o.partition) for o in announced.out} == {("ns.services", 0)}
    assert sorted(o.key for o in announced.out) == sorted(s.name.encode() for s in SERVICES)


def test_a_producer_made_by_a_failing_commit_never_outlives_one_made_by_a_settle() -> None:
    """Making a producer fences every one made before it with the same transactional id,
    so a turn must keep the one made last. An abandoned commit that fails for good makes a
    producer for its turn while the Kafka thread settles that turn: the two must not both
    be made at once, or the one made first may be the one kept, fenced (Kafka thread and
    committer thread, with a producer whose making waits, as for a broker's answer)."""
    epochs = {0: 0, 1: 0}  # per turn, the epoch of the producer made last (the live one)
    answer = threading.Event()  # lets the failing commit's new producer return
    committer_making = threading.Event()

    def new_producer(turn: int) -> Any:
        epochs[turn] += 1  # the coordinator fences every earlier producer of the turn now
        producer = StandIn({})
        producer.epoch = epochs[turn]  # type: ignore[attr-defined]
        if threading.current_thread().name == "committer":
            committer_making.set()
            assert answer.wait(10), "the test never let the new producer return"
        return producer

    first = StandIn({"commit": KafkaError(KafkaError._FENCED, fatal=True)})
    tx = Transactions(lambda turn: first, 1)
    tx._new_producer = new_producer  # made from now on
    raised: list[BaseException] = []

    def commit() -> None:
        try:
            tx.commit(SNAPSHOT)
        except BaseException as exc:
            raised.append(exc)

    failed = threading.Thread(target=commit, name="committer")
    failed.start()
    assert committer_making.wait(10), "the failing commit did not make a new producer"
    settling = threading.Thread(target=tx.settle, args=(lambda: False,), name="kafka")
    settling.start()
    settling.join(1.0)  # it must wait for the producer being made (it ends at once if not)
    answer.set()
    failed.join(10)
    settling.join(10)
    assert not failed.is_alive(), "the failing commit ended"
    assert not settling.is_alive(), "the settle ended"
    assert [type(exc) for exc in raised] == [KafkaException], "the commit failed for good"
    kept = tx.producers[0].epoch  # type: ignore[attr-defined]
    assert kept == epochs[0] == 2, "the turn keeps the producer made last"


def test_a_stopping_worker_does_not_wait_for_a_producer_being_made() -> None:
    tx, fresh = transactions_on(StandIn({}))
    stopping = pytest.raises(KafkaException, match="stopping while a producer was being made")
    with tx._making, stopping:  # the lock: a failed commit's replacement, waiting for Kafka
        tx.settle(lambda: True)
    assert fresh == [], "no producer was made"


class RefusesTheHeader(StandIn):
    """``produce`` raises what confluent-kafka raises for a header it cannot send."""

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append("produce")
        raise TypeError("expected bytes or str for the header's value")


def test_a_transaction_that_failed_with_no_kafka_error_is_aborted_too() -> None:
    """Only a KafkaException aborted: this transaction stayed open, and the next commit on
    the producer's turn failed as it began, which cost one more restore."""
    producer = RefusesTheHeader({})
    tx, _ = transactions_on(producer)
    with pytest.raises(TypeError):
        tx.commit(SNAPSHOT)
    assert producer.calls == ["begin", "produce", "abort"]


@pytest.mark.parametrize(
    "kafka", [{"message.timeout.ms": "30000"}, {"enable.idempotence": "false"}, {"linger": "1"}]
)
def test_settings_librdkafka_refuses_for_a_transactional_producer_are_said_once(
    kafka: dict[str, str],
) -> None:
    """Made again every 2 s for good, as if Kafka had not answered: the worker neither
    started nor ended."""
    from streams.settings import Settings, SettingsError

    settings = Settings(bootstrap_servers="127.0.0.1:1", namespace="ns", kafka=kafka)
    with pytest.raises(SettingsError, match="transactional producer refuses its settings"):
        Transactions(lambda turn: transactions.transactional_producer(settings, f"t-{turn}"),
                     stopping=lambda: False)  # fmt: skip
