"""The partition processor as pure logic: records in, records out, no Kafka."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from handlers import (
    Context,
    ObjectContext,
    RetryPolicy,
    Service,
    TerminalError,
    VirtualObject,
    select,
)
from streams.engine.attempts import _SETTLE_TURNS
from streams.engine.journal import entry_key
from streams.engine.outbox import Out, origin_of
from streams.engine.partition import PartitionProcessor
from streams.engine.store import ObjectKey
from streams.kafka.worker import Worker
from streams.settings import Settings
from streams.wire import ids
from streams.wire.records import (
    START_LEAD,
    AttachRequest,
    Caller,
    Cancel,
    Completion,
    Invoke,
    Start,
    Target,
    encode,
)
from tests.unit.harness import TOPICS, Harness, of_kind, settle, until

calls = {"flaky": 0, "meets_a_cancel": 0, "cancels_its_own_task": 0, "nap": 0, "replayed": 0}

box = VirtualObject("Box")


@box.handler()
async def put(ctx: ObjectContext, n: int) -> int:
    value: int = (await ctx.get("n") or 0) + n
    ctx.set("n", value)
    return value


@box.handler()
async def wait_twice(ctx: ObjectContext) -> int:
    first: int = await ctx.service("Helper", "one").request()
    second: int = await ctx.service("Helper", "one").request()
    ctx.set("n", first + second)
    return first + second


patient = VirtualObject("Patient", inactivity_timeout=timedelta(milliseconds=20))


@patient.handler()
async def ask(ctx: ObjectContext) -> int:
    answer: int = await ctx.service("Helper", "one").request()
    await ctx.sleep(timedelta(milliseconds=50))
    return answer + 1


@patient.handler()
async def race(ctx: ObjectContext, wait_ms: int) -> list[object]:
    call = ctx.service("Helper", "one").request()
    timer = ctx.sleep(timedelta(milliseconds=wait_ms))
    name, value = await select(answer=call, timeout=timer)
    return [name, value]


@patient.handler()
async def race_then_ask(ctx: ObjectContext, wait_ms: int) -> list[object]:
    call = ctx.service("Helper", "one").request()
    timer = ctx.sleep(timedelta(milliseconds=wait_ms))
    name, value = await select(answer=call, timeout=timer)
    extra: int = await ctx.service("Helper", "one").request()
    return [name, value, extra]


svc = Service("Helper", retry=RetryPolicy(initial=timedelta(milliseconds=1), max_attempts=3))


@svc.handler()
async def one(ctx: Context) -> int:
    return 1


@svc.handler()
async def flaky(ctx: Context) -> str:
    calls["flaky"] += 1
    raise RuntimeError("transient")


@box.handler()
async def meets_a_cancel(ctx: ObjectContext) -> str:
    """The first attempt awaits a future that was cancelled: CancelledError reaches the
    handler, though nobody cancelled the attempt."""
    calls["meets_a_cancel"] += 1
    if calls["meets_a_cancel"] == 1:
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future
    return "ran"


@box.handler()
async def cancels_its_own_task(ctx: ObjectContext) -> str:
    """The first attempt's own task is cancelled by code that is not Kourier's (a library
    that cancels the current task and never takes the cancel back)."""
    calls["cancels_its_own_task"] += 1
    if calls["cancels_its_own_task"] == 1:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)
    return "ran"


napper = VirtualObject("Napper", inactivity_timeout=timedelta(hours=1))


@napper.handler()
async def nap(ctx: ObjectContext) -> str:
    calls["nap"] += 1
    await ctx.sleep(timedelta(hours=1))
    await asyncio.sleep(0)  # work after the wait: the resumed attempt is not done at once
    return "done"


@svc.handler()
async def refuse(ctx: Context) -> None:
    raise TerminalError("no", 403)


async def test_exclusive_calls_on_one_key_run_in_order_and_answer() -> None:
    h = Harness([box, svc, patient])
    for i in range(5):
        h.call(Target(service="Box", key="a", handler="put"), 1, request_id=f"r{i}")
    await settle()
    responses = h.responses()
    assert [responses[f"r{i}"].value for i in range(5)] == [1, 2, 3, 4, 5]


async def test_a_call_whose_request_id_is_empty_is_answered() -> None:
    """The schema takes an empty request id, and duplicates and refusals answered it; the
    call's own outcome, found by truth rather than by ``None``, was never sent."""
    h = Harness([box, svc, patient])
    h.call(Target(service="Box", key="e", handler="put"), 2, request_id="")
    await settle()
    assert h.responses()[""].value == 2


async def test_an_invocation_id_given_again_for_another_handler_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A call that names an existing invocation's id joins it (a client's retry). One for
    another handler joined it too: it never ran, and its caller got the other's result."""
    h = Harness([box, svc, patient])
    inv_id = h.call(Target(service="Box", key="j", handler="put"), 3, request_id="first")
    h.send(Invoke(target=Target(service="Box", key="j", handler="wait_twice"), invocation_id=inv_id,
                  request_id="other"))  # fmt: skip
    await settle()
    assert h.responses()["first"].value == 3
    failure = h.responses()["other"].failure
    assert failure is not None
    assert (failure.code, failure.message) == (409, f"invocation {inv_id} is one of Box/j/put")
    assert f"refused: invocation {inv_id} is one of Box/j/put" in caplog.text  # a send says so


async def test_terminal_errors_answer_once_and_retries_end_paused() -> None:
    h = Harness([box, svc, patient])
    h.call(Target(service="Helper", handler="refuse"), request_id="no")
    await settle()
    failure = h.responses()["no"].failure
    assert failure is not None
    assert (failure.code, failure.message) == (403, "no")
    before = calls["flaky"]
    flaky_id = h.call(Target(service="Helper", handler="flaky"), request_id="flaky")
    await until(lambda: h.processor.invocations[flaky_id].meta.status == "paused")
    await settle()
    assert calls["flaky"] - before == 3
    assert "flaky" not in h.responses()


@pytest.mark.parametrize("handler", ["meets_a_cancel", "cancels_its_own_task"])
async def test_a_cancel_that_is_not_kourier_s_is_retried_like_any_failure(handler: str) -> None:
    """A CancelledError the handler meets (a future it awaited was cancelled), or a cancel
    of the attempt's task by code other than Kourier's, used to end the attempt as if
    Kourier had stopped it: the invocation stayed running with no task, nobody was
    answered, and the object's key stayed locked for the call queued behind it."""
    h = Harness([box, svc, patient])
    calls[handler] = 0
    inv_id = h.call(Target(service="Box", key="c", handler=handler), request_id="c")
    h.call(Target(service="Box", key="c", handler="put"), 5, request_id="next")
    await until(lambda: {"c", "next"} <= h.responses().keys())
    responses = h.responses()
    assert responses["c"].value == "ran"
    assert responses["next"].value == 5, "the call queued on the key ran after it"
    assert calls[handler] == 2
    inv = h.processor.invocations.get(inv_id)
    assert inv is None or inv.meta.status == "completed"


async def test_an_attempt_suspended_then_resumed_before_it_saw_its_cancel_is_not_retried() -> None:
    """The suspension cancels the attempt's task; a completion in the same loop turn resumes
    the invocation with a new attempt before the old one has seen its cancel. The old one
    must end quietly, not be taken for a failure: that backed the invocation off and
    retried it alongside the attempt already running."""
    h = Harness([napper])
    calls["nap"] = 0
    inv_id = h.call(Target(service="Napper", key="k", handler="nap"), request_id="nap")
    processor = h.processor
    await until(lambda: (inv := processor.invocations.get(inv_id)) is not None and inv.waiting)
    inv = processor.invocations[inv_id]
    inv.waited_at -= 3600  # it has waited its hour
    # Its inactivity timeout fires, and the loop has turned since without it taking a step.
    processor.attempts._suspend_if_idle(inv, inv.task, turns=_SETTLE_TURNS)
    assert inv.meta.status == "suspended"
    sleep = next(i for i, entry in enumerate(inv.journal) if entry.kind == "sleep")
    inv.complete_entry(sleep, value=None)  # and the timer is due in the same turn
    await until(lambda: "nap" in h.responses())
    await settle()
    assert h.responses()["nap"].value == "done"
    assert calls["nap"] == 2, "the first attempt and the resumed one, no retry"
    assert (inv.meta.attempt, inv.meta.last_error) == (1, None)


drowsy = VirtualObject("Drowsy", inactivity_timeout=timedelta(milliseconds=100))


@drowsy.handler()
async def doze(ctx: ObjectContext) -> str:
    await ctx.sleep(timedelta(hours=1))
    return "done"


async def test_a_step_while_a_suspension_looks_again_puts_it_off_not_away() -> None:
    """An entry it does not await completing while the timer looked again (a call it fanned
    out answering) ended the look with no timer after it: the invocation stayed in memory
    for the whole of its wait, however long, never suspended."""
    h = Harness([drowsy])
    inv_id = h.call(Target(service="Drowsy", key="k", handler="doze"), request_id="doze")
    attempts = h.processor.attempts
    look = attempts._suspend_if_idle
    stepped: list[int] = []

    def once_mid_look(inv: Any, task: Any, turns: int = 0, steps: int = -1) -> None:
        if turns == 1 and not stepped:
            inv.steps += 1  # as a completion of an entry it does not await does
            stepped.append(turns)
        look(inv, task, turns, steps)

    attempts._suspend_if_idle = once_mid_look  # type: ignore[method-assign]
    await until(lambda: h.processor.invocations[inv_id].meta.status == "suspended", seconds=3)
    assert stepped == [1]


async def test_a_restored_invocation_replays_without_repeating_its_calls() -> None:
    h = Harness([box, svc, patient])
    inv_id = h.call(Target(service="Box", key="k", handler="wait_twice"), request_id="w")
    await settle()
    first_calls = h.invokes()
    assert len(first_calls) == 1, "the handler waits on its first call"
    # A new owner restores the changelog and resumes by replay: the call is not re-sent.
    restored = h.hand_over()
    await settle()
    assert h.invokes() == []
    callee = first_calls[0]["invocation_id"]
    h.send(Completion(caller=Caller(invocation_id=inv_id, entry=0), invocation_id=callee,
                      value=1))  # fmt: skip
    await settle()
    second = h.invokes()
    assert len(second) == 1
    assert second[0]["invocation_id"] != callee
    h.send(Completion(caller=Caller(invocation_id=inv_id, entry=1),
                      invocation_id=second[0]["invocation_id"], value=1))  # fmt: skip
    await settle()
    assert h.responses()["w"].value == 2
    assert restored.store.state[("Box", "k")] == {"n": 2}


async def test_a_completion_delivered_locally_resumes_its_caller_before_the_record() -> None:
    """In a worker that runs the caller's partition, the callee's completion reaches the
    caller at once; its record, applied when it comes, changes nothing."""
    h = Harness([box, svc, patient], local=True)
    h.call(Target(service="Box", key="k", handler="wait_twice"), request_id="w")
    for n in (1, 2):  # deliver each call the handler makes, and nothing else
        await until(lambda count=n: len(h.invokes()) == count)
        h.send_raw(h.invokes()[-1])
    await until(lambda: "w" in h.responses())
    assert h.responses()["w"].value == 2

    completions = h.records("completion")
    assert len(completions) == 2, "the records are written (a worker's snapshot decides)"
    h.processor.flush()
    written = len(h.out)
    for record in completions:
        h.send_raw(record)
    await settle()
    assert len(h.out) == written, "applying the records after the delivery writes nothing"
    assert h.processor.flush() == [], "... and changes nothing"
    assert h.processor.store.state[("Box", "k")] == {"n": 2}


async def test_a_completion_its_caller_applied_leaves_the_snapshot_to_the_journal() -> None:
    """A completion record whose caller took the outcome before the snapshot is left out
    of it; the caller's journal, flushed into the same snapshot, is enough to resume."""
    h = Harness([box, svc, patient], local=True)
    h.call(Target(service="Box", key="k", handler="wait_twice"), request_id="w")
    await until(lambda: len(h.invokes()) == 1)
    first_snapshot = h.processor.flush()  # the caller, waiting on its first call
    h.send_raw(h.invokes()[0])
    await until(lambda: len(h.invokes()) == 2)  # the caller took the outcome, called again
    second_call = h.invokes()[1]

    written = list(h.out)
    [completion] = of_kind(written, "completion")
    kept = h.completions.needed(written)
    assert completion not in kept
    assert kept == [o for o in written if o is not completion], "nothing else is left out"
    assert h.completions.needed(written) == written, "each snapshot decides once"

    # A new owner restored from both snapshots' changelogs (no completion record) resumes
    # the caller at its second call, without sending the first one again.
    h.hand_over(earlier=first_snapshot)
    await settle()
    assert h.invokes() == []
    h.send_raw(second_call)
    await until(lambda: "w" in h.responses())
    assert h.responses()["w"].value == 2


async def _first_completion_applied(h: Harness) -> Out:
    """Call ``wait_twice``, run its first call; the completion record the caller applied."""
    h.call(Target(service="Box", key="k", handler="wait_twice"), request_id="w")
    await until(lambda: len(h.invokes()) == 1)
    h.send_raw(h.invokes()[0])
    await until(lambda: len(h.invokes()) == 2)
    [completion] = of_kind(h.out, "completion")
    return completion


async def test_a_completion_not_applied_in_its_snapshot_keeps_its_record() -> None:
    # The caller's partition moved to a new processor before the snapshot (a restore).
    h = Harness([box, svc, patient], local=True)
    completion = await _first_completion_applied(h)
    h.processors[0] = h.make()
    assert completion in h.completions.needed(list(h.out))

    # The caller's processor was closed before the snapshot (the partition revoked).
    h = Harness([box, svc, patient], local=True)
    completion = await _first_completion_applied(h)
    h.processor.close()
    assert completion in h.completions.needed(list(h.out))

    # The same completion again: the entry is done already, so it applies nothing.
    h = Harness([box, svc, patient], local=True)
    completion = await _first_completion_applied(h)
    h.completions.needed(list(h.out))  # the first one's snapshot
    again = Out(completion.topic, completion.partition, completion.key, completion.value)
    h.completions.deliver(0, Completion.model_validate_json(completion.value or b""), again)
    await settle()
    assert h.completions.needed([again]) == [again]

    # A completion for a caller the partition does not have.
    unknown = Completion(caller=Caller(invocation_id=ids.new_id("k", 1), entry=0),
                         invocation_id=ids.new_id(None, 1), value=1)  # fmt: skip
    h.completions.deliver(0, unknown, again)
    await settle()
    assert h.completions.needed([again]) == [again]


async def test_a_diverging_replay_fails_with_a_clear_error() -> None:
    h = Harness([box, svc, patient])
    inv_id = h.call(Target(service="Box", key="k", handler="wait_twice"), request_id="w")
    await settle()
    inv = h.processor.invocations[inv_id]
    # Pretend the journal recorded something else at entry 0.
    inv.journal[0] = inv.journal[0].replace(target=Target(service="Helper", handler="flaky"))
    inv.close()
    h.processor.attempts.run(inv)
    await settle()
    failure = h.responses()["w"].failure
    assert failure is not None
    assert failure.code == 500
    assert "journal entry 0" in failure.message
    assert "non-deterministic" in failure.message


async def test_a_dead_letter_keeps_the_records_other_headers() -> None:
    """A dead letter kept only the trace context of its record's headers: a producer's own
    (a correlation id, a content type) and a worker's ``kourier.origin`` were lost, and a
    replay wrote the record without them."""
    from streams.wire.deadletter import DeadLetter

    h = Harness([box, svc])
    origin = "inv_" + "b" * 32
    headers: list[tuple[str, str | bytes | None]] = [
        ("x-correlation", b"42"), ("kourier.origin", origin.encode()), ("empty", None),
        ("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"),
    ]  # fmt: skip
    h.processor.on_message(b"k", b"not json", 3, headers=headers)
    (letter,) = [o for o in h.out if o.topic == TOPICS.deadletter]
    written = letter.headers or []
    theirs = [(n, v) for n, v in written if not n.startswith("kourier.") or n == "kourier.origin"]
    assert theirs == headers[:3]
    read = DeadLetter.from_record(letter.key, letter.value, written)
    assert read.original_headers() == headers[:3]
    # The value comes first: headers it would not fit with are dropped, and counted.
    heavy = [("x-heavy", b"h" * 200_000)]
    h.processor.on_message(b"k", b"x" * 900_000, 4, headers=heavy)
    dropped = dict(h.out[-1].headers or [])
    assert "x-heavy" not in dropped
    assert dropped["kourier.headers-dropped"] == b"1"
    listed = DeadLetter.from_record(h.out[-1].key, h.out[-1].value, h.out[-1].headers)
    assert (listed.headers_dropped, listed.record_headers) == (1, [])
    assert "kourier.truncated" not in dropped


async def test_malformed_and_misrouted_records() -> None:
    h = Harness([box, svc, patient], partitions=4)
    h.processor.on_message(b"k", b"not json", 0)
    letters = [o for o in h.out if o.topic == TOPICS.deadletter]
    assert len(letters) == 1
    assert letters[0].value == b"not json", "the original record, unchanged"
    assert dict(letters[0].headers or [])["kourier.reason"] == b"not-json"
    # Oversize records too, and a caller waiting for one hears 413.
    big = Invoke(target=Target(service="Helper", handler="one"), argument="x" * 1_000_000,
                 request_id="big")  # fmt: skip
    h.processor.on_message(None, encode(big), 2)
    assert dict(h.out[-1].headers or [])["kourier.reason"] == b"oversize"
    assert h.responses()["big"].failure.code == 413
    # A keyed invoke that belongs to another partition is moved there untouched.
    key = next(k for k in (f"k{i}" for i in range(100)) if ids.partition_of(ids.new_id(k, 4), 4))
    raw = encode(Invoke(target=Target(service="Box", key=key, handler="put"), argument=1))
    h.processor.on_message(key.encode(), raw, 1)
    moved = [o for o in h.out if o.topic == TOPICS.ingress]
    assert len(moved) == 1
    assert moved[0].value == raw
    assert moved[0].partition == ids.partition_of(ids.new_id(key, 4), 4)


replays = VirtualObject("Replays")


@replays.handler()
async def count(ctx: ObjectContext) -> int:
    calls["replayed"] += 1
    return calls["replayed"]


async def test_a_dead_letter_replayed_twice_runs_once_and_its_copies_name_the_first() -> None:
    """Two replays of one letter (``kourier dlq replay`` run twice, or a replay of the
    letter its first replay became) made two invocations of a call without an id."""
    h = Harness([replays], partitions=4)
    key = next(k for k in (f"k{i}" for i in range(100)) if ids.key_hash(k) % 4 == 0)
    raw = encode(Invoke(target=Target(service="Replays", key=key, handler="count"), mode="send"))
    first = f"{TOPICS.ingress}/0/3"
    for offset in (10, 11):  # the second while the first is queued or runs
        h.processor.on_message(key.encode(), raw, offset, replayed=first)
    # The same record, not a replay, is a call of its own; it answers after both (one key).
    plain = Invoke(target=Target(service="Replays", key=key, handler="count"), request_id="one")
    h.processor.on_message(key.encode(), encode(plain), 12)
    await until(lambda: "one" in h.responses())
    assert h.responses()["one"].value == 2
    # Once the first has completed, too.
    h.processor.on_message(key.encode(), raw, 13, replayed=first)
    h.processor.on_message(key.encode(), encode(plain.model_copy(update={"request_id": "two"})), 14)
    await until(lambda: "two" in h.responses())
    assert h.responses()["two"].value == 3
    assert calls["replayed"] == 3
    # A replay set aside again, or moved to its partition, still names the first record.
    h.processor.on_message(key.encode(), b"not json", 15, replayed=first)
    assert dict(h.out[-1].headers or [])["kourier.replay-of"] == first.encode()
    other = next(k for k in (f"k{i}" for i in range(100)) if ids.key_hash(k) % 4 == 1)
    moved = encode(Invoke(target=Target(service="Replays", key=other, handler="count")))
    h.processor.on_message(other.encode(), moved, 16, replayed=first)
    assert (h.out[-1].topic, h.out[-1].partition) == (TOPICS.ingress, 1)
    assert dict(h.out[-1].headers or [])["kourier.replay-of"] == first


async def test_a_record_that_does_not_decode_answers_the_request_it_names() -> None:
    """A newer client's field an older worker does not know (a rolling upgrade), say: the
    record went to the dead-letter topic and its caller waited for good."""
    h = Harness([box, svc])
    newer = {"kind": "invoke", "target": {"service": "Helper", "handler": "one"},
             "request_id": "r-new", "priority": 5}  # fmt: skip
    h.send_raw(newer)
    assert [o.topic for o in h.out] == [TOPICS.responses, TOPICS.deadletter]
    failure = h.responses()["r-new"].failure
    assert failure is not None
    assert failure.code == 400
    assert "bad-schema" in failure.message
    assert "dead-letter topic" in failure.message
    # An oversize one that does not decode too (one that does is answered 413 as a call).
    junk = json.dumps({"request_id": "r-big", "padding": "x" * 1_000_000}).encode()
    h.processor.on_message(None, junk, 98)
    assert h.responses()["r-big"].failure.code == 413
    assert h.out[-1].topic == TOPICS.deadletter
    for unanswerable in (b"not json", b'{"request_id": 7}', b'{"request_id": "\\ud800"}'):
        h.processor.on_message(None, unanswerable, 99)
        assert h.out[-1].topic == TOPICS.deadletter, unanswerable
    assert len(h.responses()) == 2


async def test_a_record_too_large_to_move_is_a_dead_letter_and_one_moved_keeps_its_headers() -> (
    None
):
    """A record on another key's partition is moved there. One whose key, value and headers
    together passed what the worker's producer takes (1,000,000 bytes; brokers take more)
    failed every commit: the partition was restored and the step failed again. One moved
    kept only its trace context, origin and replay header of all its headers."""
    h = Harness([box, svc], partitions=2)
    key = next(k for k in "abcdefgh" if ids.partition_of(ids.new_id(k, 2), 2) == 1)
    target = Target(service="Box", key=key, handler="put")
    call = Invoke(target=target, argument="x" * 880_000, invocation_id=ids.new_id(key, 2),
                  request_id="big")  # fmt: skip
    value = encode(call)
    h.processor.on_message(b"k" * 120_000, value, 7)
    assert [o.topic for o in h.out] == [TOPICS.responses, TOPICS.deadletter]
    failure = h.responses()["big"].failure
    assert failure is not None
    assert failure.code == 413
    detail = dict(h.out[-1].headers or [])["kourier.detail"]
    assert detail.endswith(b"bytes with key and headers, to move"), detail
    heavy: list[tuple[str, str | bytes | None]] = [("x-heavy", b"h" * 120_000)]
    h.processor.on_message(b"k", value, 8, headers=heavy)  # the headers count too
    assert h.out[-1].topic == TOPICS.deadletter
    mine: list[tuple[str, str | bytes | None]] = [("x-correlation", b"42"), ("x-empty", None)]
    h.processor.on_message(b"k" * 64_000, value, 9, headers=mine)  # fits: moved as it came
    moved = h.out[-1]
    assert (moved.topic, moved.partition, moved.key, moved.value) == (
        TOPICS.ingress, 1, b"k" * 64_000, value,
    )  # fmt: skip
    assert moved.headers == mine


@pytest.mark.parametrize("origin", [b"", b"x" * 100_000, b"inv_1/2", b"inv_" + b"0" * 32 + b"/x"])
async def test_an_origin_header_of_another_shape_is_not_taken(origin: bytes) -> None:
    """``kourier.origin`` is the worker's; any other producer's value is dropped, not moved
    on with the record it came with (a long one would not fit)."""
    assert origin_of([("kourier.origin", origin)]) is None
    worker_s = "inv_" + "a" * 32 + "/17"
    assert origin_of([("kourier.origin", worker_s.encode())]) == worker_s


async def test_an_attach_or_control_that_is_not_applied_answers_its_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only a call was answered: an attach or a cancel whose applying raised went to the
    dead-letter topic, and its requester waited for good."""
    h = Harness([box, svc])
    inv_id = ids.new_id("k", 1)

    def broken(*args: object) -> None:
        raise RuntimeError("a defect")

    monkeypatch.setattr(h.processor.waiters, "apply", broken)
    monkeypatch.setattr(h.processor.controls, "apply", broken)
    h.send(AttachRequest(request_id="attach", invocation_id=inv_id))
    h.send(Cancel(invocation_id=inv_id, request_id="cancel"))
    for request_id in ("attach", "cancel"):
        failure = h.responses()[request_id].failure
        assert failure is not None, request_id
        assert failure.code == 500
        assert "not applied" in failure.message
    letters = [o for o in h.out if o.topic == TOPICS.deadletter]
    assert [dict(o.headers or [])["kourier.reason"] for o in letters] == [b"apply-failed"] * 2


async def test_a_replayed_keyless_call_goes_to_the_partition_its_replay_key_names() -> None:
    """It ran where it landed, under an id that names another partition: its callees'
    completions, its Start and any cancel went there, to nobody."""
    h = Harness([svc], partitions=4)
    raw = encode(Invoke(target=Target(service="Helper", handler="one"), mode="send"))

    def owner(place: str) -> int:
        same = ids.idempotent_id("Helper", None, "one", f"kourier.replay-of/{place}")
        return ids.partition_of(same, 4)

    place = next(p for p in (f"{TOPICS.ingress}/0/{n}" for n in range(100)) if owner(p))
    h.processor.on_message(None, raw, 20, replayed=place)
    assert [(o.topic, o.partition) for o in h.out] == [(TOPICS.ingress, owner(place))]
    assert dict(h.out[0].headers or [])["kourier.replay-of"] == place


@pytest.mark.parametrize(
    "header", ["elsewhere.ingress/0/3", "unit.ingress/0/3/4", "unit.ingress/0/" + "9" * 1000]
)
async def test_a_replay_header_that_names_no_ingress_place_is_ignored(header: str) -> None:
    """Another producer's header went on into dead letters, where one near Kafka's limit
    made a letter Kafka refused for good, and named a key of its choosing."""
    h = Harness([replays], partitions=1)
    h.processor.on_message(b"k", b"not json", 0, replayed=header)
    assert "kourier.replay-of" not in dict(h.out[-1].headers or [])
    raw = encode(Invoke(target=Target(service="Replays", key="k", handler="count"), mode="send"))
    for offset in (1, 2):
        h.processor.on_message(b"k", raw, offset, replayed=header)
    await until(lambda: calls["replayed"] == 2)


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    calls["flaky"] = calls["replayed"] = 0


async def test_a_waiting_invocation_is_suspended_and_resumed_by_replay() -> None:
    h = Harness([box, svc, patient])
    inv_id = h.call(Target(service="Patient", key="p", handler="ask"), request_id="ask")
    inv = h.processor.invocations[inv_id]
    await until(lambda: inv.meta.status == "suspended")
    assert inv.task is None, "a suspended invocation holds no task"
    (call,) = h.invokes()
    h.send(Completion(caller=Caller(invocation_id=inv_id, entry=0),
                      invocation_id=call["invocation_id"], value=41))  # fmt: skip
    # Resumed by replay, then in its durable sleep: suspended again, woken by its timer.
    await until(lambda: inv.meta.status == "suspended" and inv.journal[-1].kind == "sleep")
    await until(lambda: "ask" in h.responses())
    assert h.responses()["ask"].value == 42
    assert len(h.invokes()) == 1, "the replay did not repeat the call"


async def test_select_returns_whichever_completes_first() -> None:
    h = Harness([box, svc, patient])
    inv_id = h.call(Target(service="Patient", key="r", handler="race"), 30, request_id="slow")
    await until(lambda: "slow" in h.responses())
    assert h.responses()["slow"].value == ["timeout", None]
    # A call that answers before the timer wins.
    fast_id = h.call(Target(service="Patient", key="f", handler="race"), 60_000, request_id="fast")
    await until(lambda: len(h.invokes()) == 2)
    callee = h.invokes()[1]["invocation_id"]
    h.send(Completion(caller=Caller(invocation_id=fast_id, entry=0), invocation_id=callee,
                      value=7))  # fmt: skip
    await until(lambda: "fast" in h.responses())
    assert h.responses()["fast"].value == ["answer", 7]
    assert inv_id != fast_id


async def test_a_replayed_select_takes_the_journaled_branch() -> None:
    h = Harness([box, svc, patient])
    target = Target(service="Patient", key="s", handler="race_then_ask")
    inv_id = h.call(target, 60_000, request_id="r1")
    await settle()
    (call,) = h.invokes()
    # The timer fires first (as if 60 s had passed): the select journals "timeout".
    inv = h.processor.invocations[inv_id]
    timer = inv.journal[1].callee  # what the sleep's timer carries
    assert timer is not None
    h.send(Completion(caller=Caller(invocation_id=inv_id, entry=1), invocation_id=timer))
    await until(lambda: len(h.invokes()) == 2)  # past the select, in its second call
    # A new owner replays; meanwhile the call's answer has arrived too. The replay must take
    # the journaled branch, not whichever completes first now.
    h.hand_over()
    h.send(Completion(caller=Caller(invocation_id=inv_id, entry=0),
                      invocation_id=call["invocation_id"], value=7))  # fmt: skip
    await settle()
    assert h.invokes() == [], "the replay sent nothing again"
    second = inv.journal[3].callee
    h.send(Completion(caller=Caller(invocation_id=inv_id, entry=3), invocation_id=second,
                      value=1))  # fmt: skip
    await until(lambda: "r1" in h.responses())
    assert h.responses()["r1"].value == ["timeout", None, 1]


class HeldClock:
    """The processor's wall clock, moved by the test: what is due is due only when the
    test says, however long the test takes."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def scheduled(h: Harness, key: str, due: float) -> tuple[str, int]:
    """A delayed send to Box/key/put(5) due at ``due``: its id and the offset of its Start."""
    inv_id = ids.new_id(key, 1)
    when = datetime.fromtimestamp(due, UTC)
    target = Target(service="Box", key=key, handler="put")
    h.send(Invoke(target=target, argument=5, invocation_id=inv_id, mode="send", due=when))
    return inv_id, h.offset - 1


async def test_a_start_released_early_queues_its_invocation_when_due_not_before() -> None:
    """The delay topic releases a Start START_LEAD early (or more, from a worker whose
    clock runs ahead); the partition waits out the rest by its own clock, without holding
    the key, and a cancel in that wait means nothing runs."""
    clock = HeldClock()
    h = Harness([box, svc, patient], clock=clock)
    due = clock.now + 0.5  # START_LEAD, plus 475 ms of skew
    soon, soon_seq = scheduled(h, "e", due)
    cancelled, cancelled_seq = scheduled(h, "e", due)
    await settle()
    h.send(Start(invocation_id=soon, seq=soon_seq))
    h.send(Start(invocation_id=cancelled, seq=cancelled_seq))
    h.send(Cancel(invocation_id=cancelled))
    h.call(Target(service="Box", key="e", handler="put"), 1, request_id="now")
    await until(lambda: "now" in h.responses())
    assert h.responses()["now"].value == 1, "the key is free while the Start waits"
    await asyncio.sleep(0.6)  # the loop's timer fires; the partition's clock says not yet
    assert h.processor.invocations[soon].meta.status == "pending", "not before it is due"
    clock.now = due + 0.001  # due times travel with microseconds
    await until(lambda: h.processor.invocations.get(soon) is None)
    assert h.processor.store.state[("Box", "e")] == {"n": 6}, "the cancelled one never ran"


async def test_a_start_waiting_for_its_due_time_is_the_partitions_next_due() -> None:
    """The worker's Kafka thread polls no longer than a partition's ``next_due`` and steps
    once it passes (``streams.kafka.pacing``), so that an invocation whose Start came early
    has its first effects in the transaction right after its due time, not a poll later.
    ``next_due`` is the earliest due time still waited for: a cancelled one drops out."""
    clock = HeldClock()
    h = Harness([box, svc, patient], clock=clock)
    assert h.processor.next_due is None
    cancelled_due, first_due, later_due = (clock.now + s for s in (0.3, 0.5, 0.8))
    later, later_seq = scheduled(h, "n1", later_due)
    first, first_seq = scheduled(h, "n2", first_due)
    cancelled, cancelled_seq = scheduled(h, "n3", cancelled_due)
    await settle()
    assert h.processor.next_due is None, "scheduled, not started: the delay topic's concern"
    for inv_id, seq in ((later, later_seq), (first, first_seq), (cancelled, cancelled_seq)):
        h.send(Start(invocation_id=inv_id, seq=seq))
    await settle()

    def due_at(when: float) -> bool:  # due times travel with microseconds
        return bool(h.processor.next_due == pytest.approx(when, abs=1e-5))

    assert due_at(cancelled_due)
    h.send(Cancel(invocation_id=cancelled))
    await until(lambda: due_at(first_due))  # once its timer looked again
    clock.now = first_due + 0.001
    await until(lambda: due_at(later_due))
    await until(lambda: h.processor.store.state.get(("Box", "n2")) == {"n": 5})
    assert h.processor.invocations[later].meta.status == "pending", "not before it is due"
    clock.now = later_due + 0.001
    await until(lambda: h.processor.next_due is None)
    await until(lambda: h.processor.store.state.get(("Box", "n1")) == {"n": 5})
    assert ("Box", "n3") not in h.processor.store.state, "the cancelled one never ran"


async def blocked_behind_a_call(key: str) -> tuple[Harness, HeldClock, str, int, float]:
    """A send to Box/key due in 0.3 s, and a call holding that key, awaiting a call of its
    own: the harness, its clock, the send's id and the offset of its Start, its due time."""
    clock = HeldClock()
    h = Harness([box, svc, patient], clock=clock)
    due = clock.now + 0.3
    inv_id, seq = scheduled(h, key, due)
    await settle()
    h.call(Target(service="Box", key=key, handler="wait_twice"), request_id="blocker")
    await until(lambda: len(h.invokes()) == 1)  # the blocker holds the key, awaiting a call
    return h, clock, inv_id, seq, due


async def test_a_step_releases_a_started_invocation_once_it_is_due_and_its_timer_then_not() -> None:
    """The worker's step releases what fell due (``release_due``), ahead of the loop's
    timer; the timer, when it comes, leaves alone an invocation released already, also
    one still queued behind its key's exclusive call, so it is queued once."""
    h, clock, held, seq, due = await blocked_behind_a_call("q")
    timer_came = asyncio.Event()
    on_timer = h.processor.starts._on_timer

    def timer(inv: object, seq: int) -> None:
        on_timer(inv, seq)  # type: ignore[arg-type]
        timer_came.set()

    h.processor.starts._on_timer = timer  # type: ignore[method-assign]
    h.send(Start(invocation_id=held, seq=seq))
    await settle()
    h.processor.release_due(due - 0.001)
    assert h.processor.next_due is not None, "not due yet: still held"
    clock.now = due + 0.001
    h.processor.release_due(clock.now)
    assert h.processor.next_due is None
    queued = h.processor.locks.queued
    assert queued(ObjectKey("Box", "q")) == [held], "queued behind the blocker at its release"
    await asyncio.wait_for(timer_came.wait(), 5)
    assert queued(ObjectKey("Box", "q")) == [held], "queued a second time by its timer"


async def test_a_started_invocation_takes_its_place_in_line_by_its_start_as_in_a_restore() -> None:
    """A call that arrived while a Start waited out its lead queued ahead of it, and a
    restore, which lines up by offset, put it behind: the order of two calls to one key
    depended on whether the partition moved in between."""
    h, clock, started, seq, due = await blocked_behind_a_call("line")
    h.send(Start(invocation_id=started, seq=seq))
    later = h.call(Target(service="Box", key="line", handler="put"), 1, request_id="later")
    clock.now = due + 0.001
    h.processor.release_due(clock.now)
    obj = ObjectKey("Box", "line")
    assert h.processor.locks.queued(obj) == [started, later]
    restored = h.hand_over()
    assert restored.locks.queued(obj) == [started, later]


async def started_early(key: str) -> tuple[Harness, HeldClock, str, float]:
    """A partition that applied the Start of Box/key/put(5) START_LEAD before it is due:
    the harness, its clock, the invocation and its due time."""
    clock = HeldClock()
    h = Harness([box, svc, patient], clock=clock)
    due = clock.now + START_LEAD
    soon, seq = scheduled(h, key, due)
    await settle()
    h.send(Start(invocation_id=soon, seq=seq))
    return h, clock, soon, due


async def test_a_delayed_send_is_scheduled_by_the_partitions_clock() -> None:
    """Whether a send is due yet and when its Start may run are read from one clock. The
    send was judged by the system clock and its Start by the partition's, so with the two
    apart a send not yet due by the partition's clock ran at once (and in the unit tier a
    slow machine ran the sends of the tests below before their Start)."""
    clock = HeldClock()
    clock.now -= 1.0  # the partition's clock a second behind the system's
    h = Harness([box, svc, patient], clock=clock)
    soon, _ = scheduled(h, "clock", clock.now + 0.5)  # past, by the system clock
    await settle()
    assert soon in h.processor.invocations, "the send ran at once"
    assert ("Box", "clock") not in h.processor.store.state, "the send ran at once"


async def test_a_start_released_early_and_handed_over_runs_when_due_not_before() -> None:
    """The new owner holds it again (its ``next_due``), and the old one, closed, no more."""
    h, clock, soon, due = await started_early("h")
    await settle()
    old = h.processor
    assert old.next_due == pytest.approx(due, abs=1e-5)
    restored = h.hand_over()  # the new owner restores it pending, within the lead
    assert old.next_due is None, "a closed partition holds nothing"
    clock.now = due - 0.001  # restoring took time, and it is still not due
    await until(lambda: restored.next_due == pytest.approx(due, abs=1e-5))
    assert restored.invocations[soon].meta.status == "pending", "not before it is due"
    clock.now = due + 0.001  # due times travel with microseconds
    await until(lambda: restored.invocations.get(soon) is None)
    assert restored.store.state[("Box", "h")] == {"n": 5}
    assert restored.next_due is None


async def test_a_start_restored_as_its_due_time_passes_is_queued_once() -> None:
    """Restoring takes time: the clock may pass the due time while the new owner looks at
    the invocation. It decides once whether to wait, and the invocation runs either way."""
    h, _, soon, due = await started_early("r")
    readings = iter([due - 0.01])  # the first look during the restore; then it is due

    def restoring() -> float:
        return next(readings, due + 0.001)

    h.clock = restoring
    restored = h.hand_over()
    await until(lambda: restored.invocations.get(soon) is None)
    assert restored.store.state[("Box", "r")] == {"n": 5}


async def test_a_start_far_too_early_runs_at_once() -> None:
    """No release sends a Start an hour early; one written by hand runs the invocation."""
    clock = HeldClock()
    h = Harness([box, svc, patient], clock=clock)
    inv_id, seq = scheduled(h, "f", clock.now + 3600)
    await settle()
    h.send(Start(invocation_id=inv_id, seq=seq))
    await until(lambda: h.processor.invocations.get(inv_id) is None)


async def test_a_scheduled_invocation_survives_a_restore_without_locking_its_key() -> None:
    h = Harness([box, svc, patient])
    target = Target(service="Box", key="s", handler="put")
    later = ids.new_id("s", 1)
    due = datetime.now(UTC) + timedelta(hours=1)
    h.send(Invoke(target=target, argument=5, invocation_id=later, mode="send", due=due))
    seq = h.offset - 1
    await settle()
    assert h.processor.invocations[later].meta.status == "scheduled"
    starts = [o for o in h.out if o.topic == TOPICS.delay]
    assert len(starts) == 1, "one Start on the delay topic, due when the send is"
    restored = h.hand_over()
    assert restored.invocations[later].meta.status == "scheduled"
    h.call(target, 1, request_id="now")
    await until(lambda: "now" in h.responses())
    assert h.responses()["now"].value == 1, "the key is free while the send waits"
    h.send(Start(invocation_id=later, seq=seq))
    await until(lambda: restored.invocations.get(later) is None)
    assert restored.store.state[("Box", "s")] == {"n": 6}
    h.send(Start(invocation_id=later, seq=seq))  # a second release changes nothing
    await settle()
    assert restored.store.state[("Box", "s")] == {"n": 6}


async def test_a_worker_snapshot_carries_the_callers_journal_not_the_completion() -> None:
    """Two partitions of one worker (the callee runs on either): the callee's completion
    reaches the caller at once, and the worker's snapshot holds the caller's journal
    entry, done, instead of the completion record."""
    worker = Worker(Settings(namespace=TOPICS.namespace), [box, svc, patient])
    for p in (0, 1):
        worker.processors[p] = PartitionProcessor(
            partition=p, partitions=2, topics=TOPICS, registry=worker.registry,
            emit=worker._steps.emit, wake=lambda: None, deliver_locally=worker._steps.local.deliver,
        )  # fmt: skip
        worker.processors[p].start()
    inv_id = ids.new_id("k", 2)
    caller = worker.processors[ids.partition_of(inv_id, 2)]
    caller.on_message(b"k", encode(Invoke(target=Target(service="Box", key="k",
                      handler="wait_twice"), invocation_id=inv_id, request_id="w")), 0)  # fmt: skip

    def invokes() -> list[Out]:
        return of_kind(worker._steps.outbox, "invoke")

    await until(lambda: len(invokes()) == 1)
    [call] = invokes()
    worker._steps.snapshot()  # the caller, waiting on its first call, is written
    worker.processors[call.partition].on_message(call.key, call.value, 1)
    await until(lambda: len(invokes()) == 1)  # the second call
    snapshot = worker._steps.snapshot()
    kinds = [json.loads(o.value)["kind"] for o in snapshot.out
             if o.topic == TOPICS.ingress and o.value]  # fmt: skip
    assert kinds == ["invoke"], "the second call goes out, the completion record does not"
    entries = {o.key: json.loads(o.value) for o in snapshot.out
               if o.topic == TOPICS.invocations and o.value}  # fmt: skip
    assert entries[entry_key(inv_id, 0)]["done"] is True
    assert entries[entry_key(inv_id, 0)]["value"] == 1
    worker._ownership.close_all()


async def test_a_send_due_past_the_year_9999_in_utc_is_a_dead_letter_and_nothing_else() -> None:
    """Another producer may write any offset. 9999-12-31 at -14:00 is year 10000 in UTC,
    which Python cannot hold: it failed half way through applying the record, after the
    send was answered "accepted" and made an invocation, which stayed "scheduled" with
    nothing to start it, its idempotency key taken for good."""
    h = Harness([box, svc, patient])
    target = {"service": "Box", "key": "far", "handler": "put"}
    h.send_raw({"v": 1, "kind": "invoke", "target": target, "argument": 1, "mode": "send",
                "request_id": "far", "idempotency_key": "once",
                "due": "9999-12-31T23:00:00-14:00"})  # fmt: skip
    await settle()
    letters = [o for o in h.out if o.topic == TOPICS.deadletter]
    assert len(letters) == 1, "the record is set aside"
    assert dict(letters[0].headers or [])["kourier.reason"] == b"bad-schema"
    refused = h.responses()["far"]  # its sender hears it was refused, not accepted
    assert (refused.status, refused.failure and refused.failure.code) == ("failure", 400)
    assert not h.processor.invocations, "no invocation was made"


async def test_a_send_due_where_its_service_is_not_hosted_runs_where_it_is() -> None:
    """A rolling deploy: a worker that does not host the service takes the partition, and
    the delayed send falls due there. Its Start is consumed, so the worker writes it as
    pending, which a worker that hosts the service restores and runs. It was marked paused
    in memory only, the Start dropped: restored elsewhere as scheduled, it never ran."""
    h = Harness([box, svc, patient])
    later, seq = scheduled(h, "r", time.time() + 3600)
    await settle()
    first = h.processor.flush()
    h.services = [svc, patient]
    without = h.hand_over(first)
    assert without.invocations[later].meta.status == "scheduled"
    h.send(Start(invocation_id=later, seq=seq))
    await settle()
    assert without.invocations[later].meta.status == "pending"
    h.services = [box, svc, patient]
    hosting = h.hand_over(first)  # the changelog: the first owner's records, then these
    await until(lambda: hosting.invocations.get(later) is None)
    assert hosting.store.state[("Box", "r")] == {"n": 5}
