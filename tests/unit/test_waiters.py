"""Who waits for an invocation: request ids of callers and attaches outside Kourier, and
handlers attached to it. Driven with the engine's harness, no Kafka."""

from __future__ import annotations

import asyncio

import pytest

from handlers import Service
from handlers.context import Context
from streams.engine import waiters
from streams.wire.records import AttachRequest, Target
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
