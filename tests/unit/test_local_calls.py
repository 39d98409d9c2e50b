"""Calls between two partitions of one worker, run without their records
(``streams.engine.local.LocalCalls``): which calls may, and what the snapshot then holds.

The worker asks the broker whether a partition has records left to read
(``Worker._read_to_end``, tested against Kafka in tests/integration/test_local_calls.py);
here the answer is given, and everything else is the worker's own logic.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from handlers import Context, ObjectContext, Service, VirtualObject
from streams.engine.journal import entry_key
from streams.engine.outbox import Out
from streams.engine.partition import PartitionProcessor
from streams.kafka.committer import Committer, Snapshot
from streams.kafka.worker import _READ_AHEAD_RUNS, Worker
from streams.settings import Settings
from streams.wire import ids
from streams.wire.partitioning import partition_of_key
from streams.wire.records import Invoke, Target, encode
from tests.unit.harness import TOPICS, of_kind, until

meter = VirtualObject("Meter")


@meter.handler()
async def add(ctx: ObjectContext, n: int) -> int:
    value: int = (await ctx.get("count") or 0) + n
    ctx.set("count", value)
    return value


@meter.handler()
async def nap(ctx: ObjectContext) -> str:
    await ctx.sleep(timedelta(hours=1))
    return "rested"


caller = Service("Caller")


@caller.handler()
async def bump(ctx: Context, key: str) -> int:
    result: int = await ctx.object(add, key).request(1)
    return result


@caller.handler()
async def send_two(ctx: Context, key: str) -> None:
    ctx.object_send(add, key).send(1)
    ctx.object_send(add, key).send(10)


@caller.handler()
async def wake(ctx: Context, key: str) -> str:
    result: str = await ctx.object(nap, key).request()
    return result


#: A key of partition 1 of 2; the callers below run on partition 0.
KEY = next(f"k{i}" for i in range(100) if partition_of_key(f"k{i}", 2) == 1)
OTHER_KEY = next(f"o{i}" for i in range(100) if partition_of_key(f"o{i}", 2) == 1)


@pytest.fixture
async def worker() -> AsyncIterator[Worker]:
    """A worker (no Kafka) that runs both partitions of a two-partition namespace."""
    worker = Worker(Settings(namespace=TOPICS.namespace), [meter, caller])
    for p in (0, 1):
        worker.processors[p] = make(worker, p)
        worker.processors[p].start()
    worker._committer = Committer(lambda snapshot: None)
    yield worker
    worker._committer.close()
    worker._ownership.close_all()


def make(worker: Worker, partition: int) -> PartitionProcessor:
    return PartitionProcessor(
        partition=partition, partitions=2, topics=TOPICS, registry=worker.registry,
        emit=worker._steps.emit, wake=lambda: None, deliver_locally=worker._steps.local.deliver,
        call_locally=worker._steps.calls.hold,
    )  # fmt: skip


def start(worker: Worker, handler: str, key: str, request_id: str = "r") -> str:
    """Invoke ``Caller/<handler>(key)`` on partition 0, as its record would."""
    inv_id = ids.id_on_partition(0, 2, request_id)
    record = Invoke(target=Target(service="Caller", handler=handler), argument=key,
                    invocation_id=inv_id, request_id=request_id)  # fmt: skip
    worker.processors[0].on_message(inv_id.encode(), encode(record), 0)
    return inv_id


def release(worker: Worker, ready: dict[int, int], unsent: set[Any] | None = None) -> int:
    steps = worker._steps
    return steps.calls.release(steps.calls.take(), ready, unsent or set(), steps.emit)


def arguments(out: list[Out]) -> list[Any]:
    return [json.loads(o.value or b"{}")["argument"] for o in of_kind(out, "invoke")]


def response(out: list[Out], request_id: str) -> Any:
    for o in out:
        if o.topic == TOPICS.responses and o.key == request_id.encode():
            return json.loads(o.value or b"{}").get("value")
    return None


async def test_a_call_to_a_partition_read_to_its_end_runs_there_without_its_record(
    worker: Worker,
) -> None:
    start(worker, "bump", KEY)
    await until(lambda: worker._steps.calls.held)
    assert not of_kind(worker._steps.outbox, "invoke"), "the call is held"

    assert release(worker, {1: 7}) == 1
    await until(lambda: response(worker._steps.outbox, "r") == 1)
    snapshot = worker._steps.snapshot()
    kinds = [json.loads(o.value)["kind"] for o in snapshot.out
             if o.topic == TOPICS.ingress and o.value]  # fmt: skip
    assert kinds == [], "neither the call nor its completion is written"
    state = [o for o in snapshot.out if o.topic == TOPICS.state and o.value]
    assert [json.loads(o.value or b"null") for o in state] == [1], "the object's state is"
    assert worker._steps.calls.ran == 1


async def test_a_call_to_a_partition_with_records_left_to_read_goes_as_its_record(
    worker: Worker,
) -> None:
    start(worker, "bump", KEY)
    await until(lambda: worker._steps.calls.held)
    assert release(worker, {}) == 0
    assert arguments(worker._steps.outbox) == [1]
    assert not any(
        inv.meta.target.service == "Meter" for inv in worker.processors[1].invocations.values()
    ), "the callee's partition applies the record when it reads it, not before"


async def test_a_call_waits_behind_an_unsent_record_to_its_key(worker: Worker) -> None:
    start(worker, "send_two", KEY)
    await until(lambda: worker._steps.calls.held)  # both sends: the handler makes them at once
    assert release(worker, {1: 0}, {(1, KEY.encode())}) == 0
    assert arguments(worker._steps.outbox) == [1, 10], "both go as records, in the order sent"


async def test_an_unsent_record_to_another_key_holds_nothing_back(worker: Worker) -> None:
    start(worker, "send_two", KEY)
    await until(lambda: worker._steps.calls.held)  # both sends: the handler makes them at once
    # The first send runs here and takes the key; the second finds it busy, so it queues
    # the only way that keeps its place: as its record.
    assert release(worker, {1: 0}, {(1, OTHER_KEY.encode())}) == 1
    assert arguments(worker._steps.outbox) == [10]
    running = [inv for inv in worker.processors[1].invocations.values()
               if inv.meta.target.service == "Meter"]  # fmt: skip
    assert [inv.meta.argument for inv in running] == [1]


async def test_a_record_to_a_partition_with_a_held_call_keeps_its_place(worker: Worker) -> None:
    start(worker, "bump", KEY)
    await until(lambda: worker._steps.calls.held)
    later = Out(TOPICS.ingress, 1, b"x", b"{}")
    worker._steps.emit(later)
    assert later not in worker._steps.outbox, "held behind the call"
    assert release(worker, {}) == 0
    assert worker._steps.outbox[-2:] == [of_kind(worker._steps.outbox, "invoke")[0], later]


async def test_a_record_emitted_while_the_worker_asks_waits_for_the_next_batch(
    worker: Worker,
) -> None:
    start(worker, "bump", KEY)
    await until(lambda: worker._steps.calls.held)
    batch = worker._steps.calls.take()
    later = Out(TOPICS.ingress, 1, b"x", b"{}")
    worker._steps.emit(later)  # while the batch's partitions are being asked about
    worker._steps.calls.release(batch, {}, set(), worker._steps.outbox.append)
    assert later not in worker._steps.outbox, "after the batch, not in it"
    assert worker._steps.calls.held
    worker._steps.snapshot()  # nothing stays held past a snapshot
    assert not worker._steps.calls.held


async def test_a_call_to_a_busy_key_goes_as_its_record(worker: Worker) -> None:
    start(worker, "wake", KEY, request_id="first")
    await until(lambda: worker._steps.calls.held)
    assert release(worker, {1: 0}) == 1  # the napping call takes the key
    start(worker, "bump", KEY, request_id="second")
    await until(lambda: worker._steps.calls.held)
    assert release(worker, {1: 0}) == 0
    assert arguments(worker._steps.outbox) == [1]


async def test_the_callees_invocation_is_in_the_snapshot_with_its_callers_journal(
    worker: Worker,
) -> None:
    """The call has no record: a new owner of the callee's partition resumes the callee
    from the changelog the caller's transaction wrote."""
    caller_id = start(worker, "wake", KEY)
    await until(lambda: worker._steps.calls.held)
    release(worker, {1: 3})
    await until(lambda: any(o.topic == TOPICS.delay for o in worker._steps.outbox))  # its nap
    snapshot = worker._steps.snapshot()
    assert of_kind(snapshot.out, "invoke") == []
    calls = [o for o in snapshot.out if o.topic == TOPICS.invocations and o.partition == 0
             and o.key == entry_key(caller_id, 0)]  # fmt: skip
    assert len(calls) == 1, "the caller's journal entry for the call is in the same snapshot"
    assert json.loads(calls[0].value or b"{}")["kind"] == "call"

    new_owner = make(worker, 1)
    for o in snapshot.out:
        if o.topic == TOPICS.invocations and o.partition == 1:
            assert o.key is not None
            new_owner.restore_invocation(o.key, o.value)
    new_owner.start()
    [callee] = [inv for inv in new_owner.invocations.values()
                if inv.meta.target.service == "Meter"]  # fmt: skip
    assert callee.meta.caller is not None
    assert callee.meta.caller.invocation_id == caller_id
    assert callee.meta.seq == 3, "placed where the partition's next record would have been"
    new_owner.close()


async def test_unsent_counts_the_outbox_and_the_committer_but_not_applied_completions(
    worker: Worker,
) -> None:
    worker._steps.outbox.append(Out(TOPICS.ingress, 1, b"a", b"{}"))
    worker._steps.outbox.append(Out(TOPICS.responses, 0, b"b", b"{}"))
    assert worker._steps._unsent() == {(1, b"a")}
    start(worker, "bump", KEY)
    await until(lambda: worker._steps.calls.held)
    release(worker, {1: 0})
    await until(lambda: response(worker._steps.outbox, "r") == 1)
    # The callee's completion record is in the outbox, applied by its caller already.
    assert worker._steps._unsent() == {(1, b"a")}


async def test_a_call_does_not_pass_a_record_to_its_key_held_before_it(worker: Worker) -> None:
    start(worker, "bump", OTHER_KEY, request_id="first")
    await until(lambda: worker._steps.calls.held)
    earlier = Out(TOPICS.ingress, 1, KEY.encode(), b"{}")  # say, a cancel someone sent
    worker._steps.emit(earlier)
    start(worker, "bump", KEY, request_id="second")
    await until(lambda: sum(len(queue) for queue in worker._steps.calls._held.values()) == 3)
    assert release(worker, {1: 0}) == 1, "the call to the other key runs here"
    assert worker._steps.outbox[-2:] == [earlier, of_kind(worker._steps.outbox, "invoke")[0]]
    assert arguments(worker._steps.outbox) == [1]


async def test_unsent_counts_records_the_committer_has_not_committed(worker: Worker) -> None:
    worker._committer.close()
    going = threading.Event()
    worker._committer = Committer(lambda snapshot: going.wait(10))
    worker._committer.submit(Snapshot([Out(TOPICS.ingress, 1, b"in-flight", b"{}")], []))
    await until(lambda: not worker._committer.idle)
    worker._committer.submit(Snapshot([Out(TOPICS.ingress, 0, b"queued", b"{}")], []))
    assert worker._steps._unsent() == {(1, b"in-flight"), (0, b"queued")}
    going.set()
    await until(lambda: worker._committer.idle)
    assert worker._steps._unsent() == set()


async def test_a_step_runs_held_calls_where_the_partition_is_read_to_its_end(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[set[int]] = []

    async def read_to_end(
        partitions: set[int], known: dict[int, int]
    ) -> tuple[dict[int, int], dict[int, int]]:
        asked.append(partitions)
        return {p: 0 for p in partitions}, {}

    monkeypatch.setattr(worker, "_read_to_end", read_to_end)
    start(worker, "bump", KEY)
    await until(lambda: worker._steps.calls.held)
    await worker._steps._run_held()
    assert asked == [{1}]
    assert worker._steps.calls.ran == 1
    await until(lambda: response(worker._steps.outbox, "r") == 1)
    assert of_kind(worker._steps.outbox, "invoke") == []


async def test_a_step_that_cannot_ask_sends_its_held_calls_as_records(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def read_to_end(
        partitions: set[int], known: dict[int, int]
    ) -> tuple[dict[int, int], dict[int, int]]:
        await asyncio.sleep(0)
        raise RuntimeError("no answer")

    monkeypatch.setattr(worker, "_read_to_end", read_to_end)
    start(worker, "bump", KEY)
    await until(lambda: worker._steps.calls.held)
    await worker._steps._run_held()
    assert arguments(worker._steps.outbox) == [1], "the call is not lost"
    assert not worker._steps.calls.held


async def test_calls_kept_by_a_release_stay_ahead_of_those_held_since(worker: Worker) -> None:
    start(worker, "bump", KEY, request_id="first")
    await until(lambda: worker._steps.calls.held)
    batch = worker._steps.calls.take()
    later = Out(TOPICS.ingress, 1, b"x", b"{}")
    worker._steps.emit(later)  # held behind the batch being decided
    assert worker._steps.calls.release(batch, {}, set(), worker._steps.emit, keep={1}) == 0
    assert of_kind(worker._steps.outbox, "invoke") == []
    assert later not in worker._steps.outbox
    assert worker._steps.calls.called_since == {1}, (
        "the batch's call was held since the take before"
    )
    assert release(worker, {}) == 0
    outbox = worker._steps.outbox
    assert outbox[-2:] == [of_kind(outbox, "invoke")[0], later], "in order"


class Answers:
    """``Worker._read_to_end`` with given answers, one per call, and what it was asked."""

    def __init__(self, *answers: tuple[dict[int, int], dict[int, int]]) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[set[int], dict[int, int]]] = []

    async def __call__(
        self, partitions: set[int], known: dict[int, int]
    ) -> tuple[dict[int, int], dict[int, int]]:
        self.asked.append((partitions, dict(known)))
        return self.answers.pop(0)


async def test_a_call_a_few_records_short_of_its_partitions_end_waits_for_them(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step ends without a snapshot; once those records are read, its second run
    decides the call against the watermark asked the first time."""
    answers = Answers(({}, {1: 5}), ({1: 5}, {}))
    monkeypatch.setattr(worker, "_read_to_end", answers)
    start(worker, "bump", KEY)
    await until(lambda: worker._steps.calls.held)
    assert await worker._steps.step([]) is None, "no snapshot while the call waits"
    assert worker._steps.waiting == {1: 5}
    assert worker._steps.calls.held
    assert of_kind(worker._steps.outbox, "invoke") == []
    snapshot = await worker._steps.step([], keep=False)
    assert snapshot is not None
    assert answers.asked == [({1}, {}), ({1}, {1: 5})], "the second run reuses the watermark"
    assert worker._steps.calls.ran == 1
    assert of_kind(snapshot.out, "invoke") == []
    assert response(snapshot.out, "r") == 1


async def test_a_run_that_may_not_keep_sends_what_is_still_short_as_records(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "_read_to_end", Answers(({}, {1: 5}), ({}, {1: 5})))
    start(worker, "bump", KEY)
    await until(lambda: worker._steps.calls.held)
    assert await worker._steps.step([]) is None
    snapshot = await worker._steps.step([], keep=False)
    assert snapshot is not None, "a run that may not keep never waits"
    assert worker._steps.waiting == {}
    assert arguments(snapshot.out) == [1]
    assert worker._steps.calls.ran == 0


async def test_a_call_made_after_the_first_ask_gets_a_watermark_of_its_own(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record written after the first ask may have been written before this call was
    made: the old watermark does not cover it."""
    answers = Answers(({}, {1: 5}), ({1: 9}, {}))
    monkeypatch.setattr(worker, "_read_to_end", answers)
    start(worker, "bump", KEY, request_id="first")
    await until(lambda: worker._steps.calls.held)
    assert await worker._steps.step([]) is None
    start(worker, "bump", OTHER_KEY, request_id="second")  # as a record read meanwhile would
    await until(lambda: len(worker._steps.calls._held[1]) == 2)
    snapshot = await worker._steps.step([], keep=False)
    assert snapshot is not None
    assert answers.asked[1] == ({1}, {}), "partition 1 is asked again"
    assert worker._steps.calls.ran == 2


async def test_calls_are_not_kept_where_the_worker_has_records_uncommitted(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One in the transaction in flight holds the consumer back until it commits; and once
    committed, while the calls wait, it may lie past the watermark, yet is ahead of them."""
    monkeypatch.setattr(worker, "_read_to_end", Answers(({}, {1: 5})))
    monkeypatch.setattr(worker._committer, "writing_to", lambda topic: {(1, b"other")})
    start(worker, "bump", KEY)
    await until(lambda: worker._steps.calls.held)
    snapshot = await worker._steps.step([])
    assert snapshot is not None, "nothing kept"
    assert worker._steps.waiting == {}
    assert arguments(snapshot.out) == [1]


async def test_the_kafka_thread_reads_ahead_then_runs_the_step_again(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "_read_to_end", Answers(({}, {1: 5}), ({1: 5}, {})))
    reads: list[dict[int, int]] = []

    def read_ahead() -> list[Any]:
        reads.append(dict(worker._steps.waiting))
        return []

    monkeypatch.setattr(worker, "_read_ahead", read_ahead)
    worker._loop = asyncio.get_running_loop()
    start(worker, "bump", KEY)
    await until(lambda: worker._steps.calls.held)
    snapshot = await asyncio.to_thread(worker._stepped, [], {})
    assert reads == [{1: 5}], "one read ahead, for the watermark the call waits for"
    assert worker._steps.calls.ran == 1
    assert of_kind(snapshot.out, "invoke") == []
    assert response(snapshot.out, "r") == 1


async def test_the_kafka_thread_reads_ahead_a_bounded_number_of_times(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = 1 + _READ_AHEAD_RUNS
    monkeypatch.setattr(worker, "_read_to_end", Answers(*[({}, {1: 5})] * runs))
    reads: list[int] = []
    monkeypatch.setattr(worker, "_read_ahead", lambda: reads.append(1) or [])
    worker._loop = asyncio.get_running_loop()
    start(worker, "bump", KEY)
    await until(lambda: worker._steps.calls.held)
    snapshot = await asyncio.to_thread(worker._stepped, [], {})
    assert arguments(snapshot.out) == [1], "still short: the call goes as its record"
    assert not worker._steps.calls.held
    assert len(reads) == _READ_AHEAD_RUNS


async def test_a_watermark_asked_again_is_the_one_the_next_run_reuses(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = Answers(({}, {1: 5}), ({}, {1: 7}), ({1: 7}, {}))
    monkeypatch.setattr(worker, "_read_to_end", answers)
    start(worker, "bump", KEY, request_id="first")
    await until(lambda: worker._steps.calls.held)
    assert await worker._steps.step([]) is None
    start(worker, "bump", OTHER_KEY, request_id="second")  # made after the first ask
    await until(lambda: len(worker._steps.calls._held[1]) == 2)
    assert await worker._steps.step([]) is None, "still short: both kept"
    snapshot = await worker._steps.step([], keep=False)
    assert snapshot is not None
    assert [known for _, known in answers.asked] == [{}, {}, {1: 7}]
    assert worker._steps.calls.ran == 2


async def test_calls_are_not_kept_behind_an_unsent_record_in_the_outbox(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker, "_read_to_end", Answers(({}, {1: 5})))
    worker._steps.outbox.append(Out(TOPICS.ingress, 1, b"other", b"{}"))
    start(worker, "bump", KEY)
    await until(lambda: worker._steps.calls.held)
    snapshot = await worker._steps.step([])
    assert snapshot is not None
    assert worker._steps.waiting == {}
