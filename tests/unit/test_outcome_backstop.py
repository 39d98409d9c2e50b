"""An invocation whose outcome cannot be written still ends, and frees its key."""

from __future__ import annotations

from typing import Any

import pytest

import streams.engine.outbox
from handlers import ObjectContext, VirtualObject
from streams.wire.records import Target
from tests.unit.harness import Harness, until

box = VirtualObject("Box")


@box.handler()
async def give(ctx: ObjectContext, value: str) -> str:
    return value


async def test_an_outcome_that_cannot_be_written_fails_the_call_and_frees_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An error raised while the engine writes an invocation's outcome (here: its records
    refuse to encode) ended the attempt's task with that error, so the caller waited for
    ever and the object's key stayed locked for the calls queued behind it."""
    encode = streams.engine.outbox.encode

    def refusing(record: Any) -> bytes:
        if getattr(record, "value", None) == "unwritable":
            raise ValueError("this value cannot be encoded")
        return encode(record)

    monkeypatch.setattr(streams.engine.outbox, "encode", refusing)
    h = Harness([box])
    target = Target(service="Box", key="k", handler="give")
    h.call(target, "unwritable", request_id="bad")
    h.call(target, "fine", request_id="next")
    await until(lambda: {"bad", "next"} <= h.responses().keys())
    responses = h.responses()
    failure = responses["bad"].failure
    assert failure is not None
    assert failure.code == 500
    assert "could not be written" in failure.message
    assert "this value cannot be encoded" in failure.message
    assert responses["next"].failure is None
    assert responses["next"].value == "fine"
