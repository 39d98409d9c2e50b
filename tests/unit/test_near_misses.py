"""Records that decode as JSON of the right shape but are wrong all the same: bad ids,
ids on the wrong partition, invocations of handlers this worker does not host. Each is
dead-lettered or answered with a clear failure; the partition and its keys go on."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from handlers import ObjectContext, RetryPolicy, VirtualObject
from streams.engine.control import Controls
from streams.engine.journal import InvocationLog, meta_key
from streams.engine.partition import PartitionProcessor
from streams.wire import ids
from streams.wire.deadletter import DeadLetter
from streams.wire.records import Caller, Cancel, Invoke, Resume, Target
from tests.unit.harness import TOPICS, Harness, settle, until

box = VirtualObject("Box", retry=RetryPolicy(initial=timedelta(milliseconds=1), max_attempts=1))


@box.handler()
async def put(ctx: ObjectContext, n: int) -> int:
    value: int = (await ctx.get("n") or 0) + n
    ctx.set("n", value)
    return value


@box.handler()
async def broken(ctx: ObjectContext) -> None:
    raise RuntimeError("always")


def reasons(h: Harness) -> list[str]:
    return [
        dict(o.headers or [])["kourier.reason"].decode()  # type: ignore[union-attr]
        for o in h.out
        if o.topic == TOPICS.deadletter
    ]


def put_on(key: str) -> Target:
    return Target(service="Box", key=key, handler="put")


async def test_a_malformed_caller_id_is_a_dead_letter_and_locks_nothing() -> None:
    h = Harness([box])
    record = {"kind": "invoke", "target": put_on("a").model_dump(), "argument": 1,
              "caller": {"invocation_id": "inv_not-a-real-id", "entry": 0}}  # fmt: skip
    h.send_raw(record)
    assert reasons(h) == ["bad-schema"]
    h.call(put_on("a"), 5, request_id="after")
    await until(lambda: "after" in h.responses())
    assert h.responses()["after"].value == 5, "the key was never locked"


async def test_a_call_to_a_handler_not_hosted_is_answered_404_and_set_aside() -> None:
    """One that someone waited for (a client's, a caller's) was answered 404 and dropped:
    DESIGN §6 sets every record for an unknown service or handler aside, to be replayed
    once it is deployed."""
    h = Harness([box])
    missing = Target(service="Box", key="a", handler="nowhere")
    h.call(missing, 1, request_id="client")
    caller = Caller(invocation_id=ids.new_id("c", 1), entry=3)
    h.send(Invoke(target=missing, argument=1, caller=caller, invocation_id=ids.new_id("a", 1)))
    h.send(Invoke(target=missing, argument=1, mode="send"))  # nobody waits for it
    assert reasons(h) == ["unknown-target"] * 3
    # Whom a letter's call was answered, its letter says: `dlq replay --all` leaves those.
    assert answered(h) == [404, 404, None]
    h.send_raw({"kind": "invoke", "target": put_on("b").model_dump(), "request_id": "newer",
                "a_field_of_a_newer_client": 1})  # fmt: skip
    assert h.responses()["newer"].failure.code == 400
    assert answered(h)[-1] == 400


def answered(h: Harness) -> list[int | None]:
    """What each dead letter says its client or caller was answered."""
    return [
        DeadLetter.from_record(o.key, o.value, [(n, v) for n, v in o.headers or []
                                                if isinstance(v, bytes)]).answered
        for o in h.out
        if o.topic == TOPICS.deadletter
    ]  # fmt: skip
    failure = h.responses()["client"].failure
    assert failure is not None
    assert failure.code == 404
    (completion,) = [json.loads(o.value or b"") for o in h.out if o.topic == TOPICS.ingress]
    assert completion["failure"]["code"] == 404


async def test_every_id_field_is_checked_when_decoded() -> None:
    h = Harness([box])
    bad = "inv_zz"
    for record in (
        {"kind": "cancel", "invocation_id": bad},
        {"kind": "attach", "request_id": "r", "invocation_id": bad},
        {"kind": "completion", "caller": {"invocation_id": bad, "entry": 0},
         "invocation_id": ids.new_id("a", 1)},
        {"kind": "start", "invocation_id": bad, "seq": 0},
        {"kind": "invoke", "target": put_on("a").model_dump(), "invocation_id": bad},
    ):  # fmt: skip
        h.send_raw(record)
    assert reasons(h) == ["bad-schema"] * 5


async def test_an_id_that_routes_away_from_its_key_is_a_dead_letter() -> None:
    h = Harness([box], partitions=4)
    key = next(
        k for k in (f"k{i}" for i in range(100)) if ids.partition_of(ids.new_id(k, 4), 4) == 0
    )
    stray = next(i for i in (ids.new_id(None, 4) for _ in range(100)) if ids.partition_of(i, 4))
    h.send(Invoke(target=put_on(key), argument=1, invocation_id=stray, request_id="stray"))
    assert reasons(h) == ["bad-schema"]
    assert stray not in h.processor.invocations
    assert h.responses()["stray"].failure.code == 400, "the caller hears why"


async def test_a_record_that_fails_to_apply_is_a_dead_letter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness([box])

    def explode(self: Controls, record: Any) -> None:
        raise KeyError("something unforeseen")

    monkeypatch.setattr(Controls, "apply", explode)
    h.send(Cancel(invocation_id=ids.new_id("a", 1)))
    assert reasons(h) == ["apply-failed"]
    h.call(put_on("a"), 2, request_id="next")
    await until(lambda: "next" in h.responses())
    assert h.responses()["next"].value == 2


async def test_a_call_that_fails_to_apply_answers_its_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Set aside as apply-failed, the call was answered by nobody: a client's call, and a
    calling handler, waited for good."""
    h = Harness([box])
    real = PartitionProcessor._apply_invoke

    def explode(self: PartitionProcessor, record: Invoke, *args: Any) -> None:
        if record.target.key == "x":
            raise KeyError("something unforeseen")
        real(self, record, *args)

    monkeypatch.setattr(PartitionProcessor, "_apply_invoke", explode)
    caller = Caller(invocation_id=ids.new_id("c", 1), entry=3)
    h.send(Invoke(target=put_on("x"), argument=1, request_id="x", caller=caller,
                  invocation_id=ids.new_id("x", 1)))  # fmt: skip
    assert reasons(h) == ["apply-failed"]
    assert answered(h) == [500], "its letter says whoever waited was answered"
    failure = h.responses()["x"].failure
    assert failure is not None
    assert failure.code == 500
    assert failure.message.startswith("not applied: apply-failed: KeyError"), failure.message
    (completion,) = [json.loads(o.value or b"") for o in h.out if o.topic == TOPICS.ingress]
    assert completion["caller"] == {"invocation_id": caller.invocation_id, "entry": 3}
    assert completion["failure"]["code"] == 500
    h.call(put_on("y"), 2, request_id="next")
    await until(lambda: "next" in h.responses())
    assert h.responses()["next"].value == 2


async def test_a_call_that_fails_after_its_invocation_was_made_is_answered_by_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Applied in part (its invocation made, then something unforeseen), it is answered by
    its invocation's outcome alone, not first with a 500 its caller would take for it."""
    h = Harness([box])
    real = PartitionProcessor._apply_invoke

    def explode_after(self: PartitionProcessor, record: Invoke, *args: Any) -> None:
        real(self, record, *args)
        raise KeyError("something unforeseen, afterwards")

    monkeypatch.setattr(PartitionProcessor, "_apply_invoke", explode_after)
    h.call(put_on("z"), 4, request_id="z")
    assert reasons(h) == ["apply-failed"]
    await until(lambda: "z" in h.responses())
    answers = [o for o in h.out if o.topic == TOPICS.responses]
    assert len(answers) == 1
    assert h.responses()["z"].value == 4


async def test_a_paused_invocation_of_a_handler_not_hosted_here_cancels_cleanly() -> None:
    h = Harness([box])
    inv_id = h.call(Target(service="Box", key="p", handler="broken"), request_id="p")
    await until(lambda: h.processor.invocations[inv_id].meta.status == "paused")
    h.services = []  # the next owner does not host Box
    restored = h.hand_over()
    assert restored.invocations[inv_id].meta.status == "paused"
    h.send(Resume(invocation_id=inv_id, request_id="resume"))
    assert h.responses()["resume"].failure.code == 409
    h.send(Cancel(invocation_id=inv_id, request_id="cancel"))
    await settle()
    assert h.responses()["cancel"].status == "success"
    assert inv_id not in restored.invocations


async def test_a_lone_surrogate_is_refused_when_decoded() -> None:
    h = Harness([box])
    h.send_raw({"kind": "invoke", "target": put_on("s").model_dump(), "argument": "\ud800"})
    assert reasons(h) == ["bad-schema"]
    assert h.processor.invocations == {}


@pytest.mark.parametrize(
    "encoded",
    [
        pytest.param(lambda text: text.encode("utf-16"), id="utf-16"),
        pytest.param(
            lambda text: text.replace("\\ud800", "\ud800").encode("utf-8", "surrogatepass"),
            id="raw-bytes",
        ),
    ],
)
async def test_a_lone_surrogate_read_past_utf8_is_refused(encoded: Any) -> None:
    """pydantic's parser takes UTF-8 alone; a record it refuses is read again by Python's,
    which also reads UTF-16 and UTF-32, and surrogates written as raw bytes. The escapes
    looked for in the raw bytes are not there then, and the record was taken: its meta could
    not be written, and the partition's next commit failed."""
    h = Harness([box])
    record = {"kind": "invoke", "target": put_on("s").model_dump(), "argument": "\ud800"}
    value = encoded(json.dumps(record))
    h.processor.on_message(None, value, 0)
    assert reasons(h) == ["bad-schema"]
    assert h.processor.invocations == {}


async def test_a_dead_letter_fits_however_long_the_reason_quotes_the_record() -> None:
    """A record just under the size limit whose version is a long list: the reason quoted
    it (Python's repr, half as long again), and the dead letter's headers alone were past
    what librdkafka produces, so the record could not be set aside."""
    h = Harness([box])
    value = b'{"v":[' + b",".join([b"0"] * 460_000) + b"]}"
    h.processor.on_message(None, value, 0)
    assert reasons(h) == ["bad-schema"]
    (letter,) = [o for o in h.out if o.topic == TOPICS.deadletter]
    headers = sum(len(name) + len(data or b"") for name, data in letter.headers or [])
    assert headers + len(letter.value or b"") < 1_000_000, "the dead letter does not fit"


async def test_internal_ids_are_checked_too() -> None:
    h = Harness([box])
    good = ids.new_id("a", 1)
    h.send_raw({"kind": "completion", "caller": {"invocation_id": good, "entry": 0},
                "invocation_id": "inv_bad"})  # fmt: skip
    h.send_raw({"kind": "attach", "request_id": "r", "invocation_id": good,
                "caller": {"invocation_id": "inv_bad", "entry": 0}})  # fmt: skip
    assert reasons(h) == ["bad-schema", "bad-schema"]


def test_a_meta_written_before_ids_were_checked_still_restores() -> None:
    log = InvocationLog()
    meta = {
        "id": ids.new_id("a", 1),
        "target": put_on("a").model_dump(),
        "exclusive": True,
        "status": "running",
        "caller": {"invocation_id": "inv_not-a-real-id", "entry": 0},
        "attachers": [{"invocation_id": "inv_zz", "entry": 1}],
    }
    log.apply(meta_key(meta["id"]), json.dumps(meta).encode())
    restored = log.metas[meta["id"]]
    assert restored.caller is None
    assert restored.attachers == []
    assert restored.status == "running"


TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01;vendor=1"


async def test_a_dead_letter_keeps_its_records_trace_context_for_its_replay() -> None:
    """A letter dropped the record's ``traceparent``: its replay started a trace of its own,
    apart from the one its producer began (DESIGN §8: one trace per call)."""
    h = Harness([box])
    h.processor.on_message(b"k", b"{not json", 5, trace=TRACE)
    (out,) = [o for o in h.out if o.topic == TOPICS.deadletter]
    headers = [(n, v) for n, v in out.headers or [] if isinstance(v, bytes)]
    assert ("traceparent", TRACE.split(";")[0].encode()) in headers
    assert ("tracestate", b"vendor=1") in headers
    letter = DeadLetter.from_record(out.key, out.value, headers)
    assert letter.trace == TRACE
    assert letter.trace_headers() == [("traceparent", TRACE.split(";")[0].encode()),
                                      ("tracestate", b"vendor=1")]  # fmt: skip
