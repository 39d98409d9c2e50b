"""An invocation whose outcome cannot be written still ends, once, and frees its key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import streams.engine.outbox
from handlers import ObjectContext, VirtualObject
from streams.engine.outbox import Out
from streams.metrics import INVOCATIONS
from streams.wire import ids
from streams.wire.records import (
    Caller,
    Completion,
    Invoke,
    Target,
    decode_ingress,
    decode_response,
)
from tests.unit.harness import TOPICS, Harness, until

box = VirtualObject("Box")
TARGET = Target(service="Box", key="k", handler="give")


@box.handler()
async def give(ctx: ObjectContext, value: str) -> str:
    return value


def refuse(monkeypatch: pytest.MonkeyPatch, refused: Callable[[Any], bool]) -> None:
    """Make the outbox's encoding fail for the records ``refused`` picks."""
    encode = streams.engine.outbox.encode

    def refusing(record: Any) -> bytes:
        if refused(record):
            raise ValueError("this record cannot be encoded")
        return encode(record)

    monkeypatch.setattr(streams.engine.outbox, "encode", refusing)


def responses(out: list[Out], request_id: str) -> list[Any]:
    """Every response written for ``request_id``, in order (not only the last)."""
    found = [decode_response(o.value) for o in out if o.topic == TOPICS.responses]
    return [r for r in found if r.request_id == request_id]


def completions(out: list[Out], invocation_id: str) -> list[Completion]:
    """Every completion of ``invocation_id`` written to the ingress topic."""
    found = [decode_ingress(o.value) for o in out if o.topic == TOPICS.ingress]
    return [c for c in found if isinstance(c, Completion) and c.invocation_id == invocation_id]


def counted(outcome: str) -> float:
    return INVOCATIONS.labels("Box", "give", outcome).value


async def test_an_outcome_that_cannot_be_written_fails_the_call_and_frees_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An error raised while the engine wrote an invocation's outcome (here: its records
    refuse to encode) ended the attempt's task with that error, so the caller waited for
    ever and the object's key stayed locked for the calls queued behind it."""
    refuse(monkeypatch, lambda record: getattr(record, "value", None) == "unwritable")
    h = Harness([box])
    h.call(TARGET, "unwritable", request_id="bad")
    h.call(TARGET, "fine", request_id="next")
    await until(lambda: {"bad", "next"} <= h.responses().keys())
    (bad,) = responses(h.out, "bad")
    assert bad.failure is not None
    assert bad.failure.code == 500
    assert "the outcome of Box/k/give could not be written" in bad.failure.message
    assert "this record cannot be encoded" in bad.failure.message
    (fine,) = responses(h.out, "next")
    assert (fine.failure, fine.value) == (None, "fine")


async def test_a_record_failing_part_way_sends_none_of_the_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When only a later record of the outcome fails (the caller's completion, after the
    response), nobody hears the value: the response and the completion both say 500,
    once each, and the invocation is counted once, as a failure."""
    refuse(monkeypatch, lambda record: isinstance(record, Completion) and record.value == "x")
    before = counted("success"), counted("failure")
    h = Harness([box])
    callee = ids.new_id("k", 1)
    caller = Caller(invocation_id=ids.new_id(None, 1), entry=0)
    h.send(Invoke(target=TARGET, argument="x", invocation_id=callee, request_id="both",
                  caller=caller))  # fmt: skip
    h.call(TARGET, "fine", request_id="next")
    await until(lambda: {"both", "next"} <= h.responses().keys())
    answers = responses(h.out, "both")
    assert [(r.status, r.failure and r.failure.code) for r in answers] == [("failure", 500)]
    told = completions(h.out, callee)
    assert [(c.value, c.failure and c.failure.code) for c in told] == [(None, 500)]
    assert (counted("success"), counted("failure")) == (before[0] + 1, before[1] + 1)


async def test_an_outcome_whose_failure_cannot_be_written_either_still_frees_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When not even the 500 can be written (every response to one request id refuses to
    encode), nobody is told, but the error no longer escapes the completion: the key is
    freed and the call queued behind it runs."""
    refuse(monkeypatch, lambda record: getattr(record, "request_id", None) == "mute")
    h = Harness([box])
    h.call(TARGET, "anything", request_id="mute")
    h.call(TARGET, "fine", request_id="next")
    await until(lambda: "next" in h.responses())
    assert responses(h.out, "mute") == []
    (fine,) = responses(h.out, "next")
    assert (fine.failure, fine.value) == (None, "fine")
