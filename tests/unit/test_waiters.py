"""Who waits for an invocation: request ids of callers and attaches outside Kourier, and
handlers attached to it. Driven with the engine's harness, no Kafka."""

from __future__ import annotations

import asyncio

import pytest

from handlers import Service
from handlers.context import Context
from streams.engine import waiters
from streams.wire import ids
from streams.wire.records import AttachRequest, Caller, Target
from tests.unit.harness import Harness, until

slow = Service("Slow")
RELEASE = asyncio.Event()


@slow.handler()
async def wait(ctx: Context) -> str:
    await RELEASE.wait()
    return "done"


async def test_attaches_given_up_make_room_for_new_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """An HTTP client whose attach is cut off (its own timeout, a proxy's) leaves its
    request id with the invocation: nothing tells the worker. Once MAX_WAITERS had gathered
    (polls of a workflow that runs for days), every new attach was refused with 429 until
    the invocation completed. The longest waiting is let go instead, told so (429)."""
    limit = 5
    monkeypatch.setattr(waiters, "MAX_WAITERS", limit)
    RELEASE.clear()
    harness = Harness([slow])
    inv_id = harness.call(Target(service="Slow", handler="wait"), request_id="call")
    for n in range(limit + 2):
        harness.send(AttachRequest(request_id=f"attach{n}", invocation_id=inv_id))
    answered = harness.responses()
    # The first three attaches waited longest: let go, with a 429 each. The call that made
    # the invocation is kept: it has no idempotency key, and a caller that called again
    # would run it twice.
    assert sorted(answered) == ["attach0", "attach1", "attach2"]
    assert {r.failure.code for r in answered.values() if r.failure} == {429}
    RELEASE.set()
    await until(lambda: f"attach{limit + 1}" in harness.responses())
    outcomes = harness.responses()
    assert outcomes["call"].value == "done"
    assert all(outcomes[f"attach{n}"].value == "done" for n in range(3, limit + 2))


async def test_handlers_attached_longest_make_room_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler's attach stays with the invocation after the handler went on (its attach
    lost a select, or it completed): nothing tells this partition. Once handlers had taken
    the MAX_WAITERS places (a handler polling a workflow that runs for days), every new
    attach, a handler's or an HTTP client's, was refused with 429. The handler attached
    longest is let go instead, its attach failed with 429."""
    monkeypatch.setattr(waiters, "MAX_WAITERS", 3)
    RELEASE.clear()
    harness = Harness([slow])
    inv_id = harness.call(Target(service="Slow", handler="wait"), request_id="call")
    pollers = [Caller(invocation_id=ids.new_id(None, 1), entry=n) for n in range(3)]
    for n, poller in enumerate(pollers):
        harness.send(AttachRequest(request_id=f"h{n}", invocation_id=inv_id, caller=poller))
    harness.send(AttachRequest(request_id="late", invocation_id=inv_id))
    assert "late" not in harness.responses(), "it waits: not refused"
    let_go = harness.records("completion")
    assert [c["caller"] for c in let_go] == [pollers[0].model_dump(), pollers[1].model_dump()]
    assert {c["failure"]["code"] for c in let_go} == {429}
    RELEASE.set()
    await until(lambda: "late" in harness.responses())
    assert harness.responses()["late"].value == "done"


async def test_attaches_with_long_ids_make_room_by_their_bytes_too() -> None:
    """A thousand attaches with ids of 1,024 characters each (the longest a record takes)
    grew the invocation's record past a megabyte, what Kafka takes in one: the invocation
    failed with 413, however small its argument. The oldest are let go instead (429)."""
    RELEASE.clear()
    harness = Harness([slow])
    inv_id = harness.call(Target(service="Slow", handler="wait"), request_id="call")
    long_ids = [f"{n:04d}" + "x" * 1020 for n in range(100)]
    for request_id in long_ids:
        harness.send(AttachRequest(request_id=request_id, invocation_id=inv_id))
    meta = harness.processor.invocations[inv_id].meta
    assert len(meta.to_json()) < 70_000, "the ids take 64 KiB at most"
    let_go = sorted(harness.responses())
    assert let_go == long_ids[: len(let_go)], "the oldest are let go, in order"
    assert 30 < len(let_go) < 100 - 50, len(let_go)
    assert {r.failure.code for r in harness.responses().values() if r.failure} == {429}
    assert meta.request_ids[0] == "call", "the call that made it is kept"
    RELEASE.set()
    await until(lambda: long_ids[-1] in harness.responses())
    assert harness.responses()["call"].value == "done"
