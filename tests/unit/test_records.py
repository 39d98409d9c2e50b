from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import jsonschema
import pytest
from pydantic import ValidationError

from handlers import TerminalError
from streams.engine.outbox import set_aside
from streams.wire import records as r
from streams.wire.deadletter import MAX_DEADLETTER_BYTES, DeadLetter

ID0 = "inv_" + "0" * 32
ID1 = "inv_" + "1" * 32

INVOKE = r.Invoke(
    target=r.Target(service="Counter", key="alice", handler="add"),
    argument={"n": 3},
    invocation_id=ID1,
    idempotency_key="once",
    request_id="req-1",
    headers={"x-trace": "t"},
)

ALL_RECORDS: list[r._Record] = [
    INVOKE,
    r.Cancel(invocation_id=ID1),
    r.Kill(invocation_id=ID1, request_id="req-2"),
    r.AttachRequest(request_id="req-3", invocation_id=ID1, wait=False),
    r.Completion(caller=r.Caller(invocation_id=ID0, entry=2), invocation_id=ID1, value=7),
    r.Completion(
        caller=r.Caller(invocation_id=ID0, entry=3),
        invocation_id=ID1,
        failure=r.Failure(code=409, message="cancelled"),
    ),
]


@pytest.mark.parametrize("record", ALL_RECORDS, ids=lambda rec: rec.__class__.__name__)
def test_ingress_records_round_trip(record: r._Record) -> None:
    data = r.encode(record)
    assert json.loads(data)["v"] == 1
    assert r.decode_ingress(data) == record


def test_a_record_nested_deeper_than_any_parser_goes_is_refused_with_a_reason() -> None:
    """Python's JSON parser raises RecursionError past about 1,000 levels: it escaped
    decode_ingress, and the partition stalled behind the record (test_bad_input)."""
    deep = b"[" * 5_000 + b"]" * 5_000
    invoke = b'{"v": 1, "kind": "invoke", "target": {"service": "S", "handler": "h"}, '
    with pytest.raises(r.RecordError) as refused:
        r.decode_ingress(invoke + b'"argument": ' + deep + b"}")
    assert refused.value.reason == "not-json"
    response = b'{"v": 1, "request_id": "r", "status": "success", "value": ' + deep + b"}"
    with pytest.raises(r.RecordError) as refused:
        r.decode_response(response)
    assert refused.value.reason == "not-json"


def test_other_records_round_trip() -> None:
    response = r.Response(request_id="req-1", invocation_id=ID1, status="success", value=[1])
    assert r.decode_response(r.encode(response)) == response
    delayed = r.Delayed(due=datetime(2030, 1, 1, tzinfo=UTC), invoke=INVOKE)
    assert r.decode_delay(r.encode(delayed)) == delayed
    assert r.decode_delay(r.encode(r.Fired(offset=3))) == r.Fired(offset=3)
    error = r.RecordError("not-json", "boom")
    letter = DeadLetter.of(
        error, topic="ns.ingress", partition=3, offset=9, key=b"k", value=b"\xff\x00",
        at=datetime.now(UTC),
    )  # fmt: skip
    again = DeadLetter.from_record(b"k", b"\xff\x00", letter.headers(), dlq_offset=4)
    assert again.original_value() == b"\xff\x00"
    assert again.original_key() == b"k"
    assert (again.reason, again.partition, again.offset) == ("not-json", 3, 9)
    assert (again.at, again.dlq_offset) == (letter.at, 4)
    assert again.first == "ns.ingress/3/9", "a letter of a first record names its own place"
    # A replay set aside again names the first record, which its replays take their id from.
    replayed = letter.model_copy(update={"offset": 40, "replay_of": "ns.ingress/3/9"})
    again = DeadLetter.from_record(b"k", b"\xff\x00", replayed.headers(), dlq_offset=5)
    assert (again.offset, again.first) == (40, "ns.ingress/3/9")


@pytest.mark.parametrize("value", [b"{not json", None])
def test_a_dead_letter_of_a_record_with_a_huge_key_fits_and_cannot_be_replayed(
    value: bytes | None,
) -> None:
    """Only the value was cut: a record with a key near a megabyte (another producer's) made
    a dead letter Kafka refused, and its partition stalled on it, restored again and again."""
    key = b"k" * 1_000_000
    out = set_aside(r.RecordError("not-json", "boom"), ("ns.ingress", 3, 9), key, value,
                    "ns.deadletter")  # fmt: skip
    size = len(out.key or b"") + len(out.value or b"")
    size += sum(len(name) + len(data or b"") for name, data in out.headers or [])
    assert size <= MAX_DEADLETTER_BYTES
    headers = dict(out.headers or [])
    assert headers["kourier.key-truncated"] == b"1000000"
    headers_read = [(n, d if isinstance(d, bytes) else (d or "").encode())
                    for n, d in out.headers or []]  # fmt: skip
    letter = DeadLetter.from_record(out.key, out.value, headers_read)
    assert letter.truncated is not None, "a letter whose key was cut can be replayed"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("kourier.at", b"yesterday"),
        ("kourier.partition", "\u00b2".encode()),
        ("kourier.at", b"2026-12-01"),
        ("kourier.partition", b"1" * 5000),  # past the digits int() reads
    ],
)
def test_a_dead_letter_with_a_header_another_producer_wrote_still_reads(
    name: str, value: bytes
) -> None:
    """Each raised ValueError, and ``kourier dlq list`` listed no letter at all."""
    letter = DeadLetter.from_record(b"k", b"{", [("kourier.reason", b"not-json"), (name, value)])
    assert letter.reason == "not-json"
    assert letter.at.tzinfo is not None
    assert letter.partition == -1, "no partition header, or one that is no number"


def test_an_attach_by_an_empty_idempotency_key_is_refused_as_a_call_by_one_is() -> None:
    for kind in ("attach", "invoke"):
        record = {"kind": kind, "request_id": "r", "idempotency_key": "",
                  "target": {"service": "S", "handler": "h"}}  # fmt: skip
        with pytest.raises(r.RecordError, match="idempotency_key"):
            r.decode_ingress(json.dumps(record).encode())


def test_a_request_id_longer_than_a_response_can_carry_is_refused() -> None:
    """Only a record that did not decode had its request id bounded: an invoke with one of
    600,000 characters decoded, and its receipt (the id as key and in the value) was more
    than Kafka takes in one record, so every transaction of the worker was refused."""
    target = {"service": "S", "handler": "h"}
    longest = "r" * r.MAX_REQUEST_ID
    records = [
        {"kind": "invoke", "target": target, "mode": "send"},
        {"kind": "cancel", "invocation_id": "inv_" + "0" * 32},
        {"kind": "attach", "invocation_id": "inv_" + "0" * 32},
    ]
    for record in records:
        assert r.decode_ingress(json.dumps({**record, "request_id": longest}).encode())
        too_long = json.dumps({**record, "request_id": longest + "r"}).encode()
        with pytest.raises(r.RecordError, match="request_id") as refused:
            r.decode_ingress(too_long)
        assert refused.value.reason == "bad-schema"
        assert r.request_id_of(too_long) is None, "a dead letter answered at it"


def test_minimal_external_invoke_gets_defaults() -> None:
    record = r.decode_ingress(
        b'{"kind":"invoke","target":{"service":"Greeter","handler":"greet"},"argument":"bob"}'
    )
    assert isinstance(record, r.Invoke)
    assert (record.v, record.mode, record.invocation_id, record.headers) == (1, "call", None, {})


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, "empty"),
        (b"\xff\xfe", "not-json"),
        (b"{not json", "not-json"),
        (b"[1, 2]", "bad-schema"),
        (b'{"v": 2, "kind": "invoke"}', "unsupported-version"),
        (b'{"kind": "teleport"}', "bad-schema"),
        (b'{"kind": "invoke", "target": {"service": "S"}}', "bad-schema"),
        (
            b'{"kind": "invoke", "target": {"service": "S", "handler": "h"}, "extra": 1}',
            "bad-schema",
        ),
        (b'{"kind": "invoke", "target": {"service": "no spaces", "handler": "h"}}', "bad-schema"),
        (b'{"kind": "attach", "request_id": "r"}', "bad-schema"),
    ],
)
def test_bad_records_say_why(data: bytes | None, reason: str) -> None:
    with pytest.raises(r.RecordError) as failure:
        r.decode_ingress(data)
    assert failure.value.reason == reason
    assert failure.value.detail


def test_response_failure_field_matches_status() -> None:
    with pytest.raises(ValidationError):
        r.Response(status="failure", invocation_id=ID1)
    with pytest.raises(ValidationError):
        r.Response(status="success", failure=r.Failure(code=500, message="x"))


def test_delayed_due_must_carry_a_timezone() -> None:
    with pytest.raises(ValidationError):
        r.Delayed(due=datetime(2030, 1, 1), invoke=INVOKE)
    assert r.Delayed(due=datetime.now(UTC) + timedelta(seconds=5), invoke=INVOKE).due.tzinfo


def test_published_schemas_are_valid_and_match_the_records() -> None:
    schemas = r.json_schemas()
    ingress = jsonschema.Draft202012Validator(schemas["ingress"])
    response = jsonschema.Draft202012Validator(schemas["response"])
    jsonschema.Draft202012Validator.check_schema(schemas["ingress"])
    jsonschema.Draft202012Validator.check_schema(schemas["response"])
    for record in ALL_RECORDS[:4]:
        ingress.validate(json.loads(r.encode(record)))
    response.validate(json.loads(r.encode(r.Response(status="accepted", invocation_id=ID1))))
    # The schema rejects what the decoder rejects.
    assert not ingress.is_valid({"kind": "invoke", "target": {"service": "S"}})
    assert not ingress.is_valid({"kind": "completion", "invocation_id": "x"})


def test_a_record_is_read_alike_whether_or_not_it_escapes_a_surrogate_pair() -> None:
    """The surrogate check parses the record again: with the strict reader it refused a
    ``NaN`` the decoder had taken, so an emoji escaped as ``\\ud83d\\ude00`` (Python's
    ``json.dumps`` default) decided whether a record ran or was dead-lettered."""
    base = b'{"v":1,"kind":"invoke","target":{"service":"S","key":"k","handler":"h"},"argument":%s}'
    for argument in (b'["x", "\\ud83d\\ude00"]', b'["NaN", "\\ud83d\\ude00"]'):
        record = r.decode_ingress(base % argument)
        assert isinstance(record, r.Invoke)
        assert isinstance(record.argument, list)
        assert record.argument[1] == "\U0001f600"
    for argument in (b'[NaN, "x"]', b'[NaN, "\\ud83d\\ude00"]', b"Infinity", b"-Infinity"):
        with pytest.raises(r.RecordError) as refused:
            r.decode_ingress(base % argument)
        assert refused.value.reason == "not-json", argument


def test_a_number_a_record_cannot_write_again_is_not_json() -> None:
    """pydantic's parser took ``NaN`` and ``Infinity`` (Python's ``json.dumps`` writes
    them): the first attempt saw ``nan``, and a replay, from the changelog, ``None``."""
    record = b'{"v":1,"kind":"invoke","target":{"service":"S","handler":"h"},"argument":NaN}'
    with pytest.raises(r.RecordError) as refused:
        r.decode_ingress(record)
    assert refused.value.reason == "not-json"
    # The look for them decides nothing else: a record is read alike with the word or not.
    base = b'{"v":1,"kind":"invoke","target":{"service":"S","handler":"h"},"argument":%s}'
    for other in (b"1e300", b"123456789012345678901234567890", b"1" * 250):
        plain = r.decode_ingress(base % b"[%s]" % other)
        worded = r.decode_ingress(base % b'["NaN", %s]' % other)
        assert isinstance(plain, r.Invoke)
        assert isinstance(worded, r.Invoke)


def test_a_number_past_a_floats_range_is_not_json_on_the_ingress_topic() -> None:
    """pydantic's parser read ``1e400`` as infinity, which a record writes as ``null``: the
    first attempt saw ``inf``, a replay ``None``; the HTTP ingress refused the same body."""
    base = b'{"v":1,"kind":"invoke","target":{"service":"S","handler":"h"},"argument":[%s]}'
    for huge in (b"1e400", b"-1e999", b"1" * 400 + b".5", b"1" * 250 + b"e99"):
        with pytest.raises(r.RecordError) as refused:
            r.decode_ingress(base % huge)
        assert refused.value.reason == "not-json", huge[:20]
        assert "past a float's range" in str(refused.value)
    for kept in (b"1e308", b"1e-400", b'"1e400"', b'"' + b"1" * 400 + b'"'):
        record = r.decode_ingress(base % kept)
        assert isinstance(record, r.Invoke)
        assert r.decode_ingress(r.encode(record)) == record, "read alike again"
    # Ids hold such runs often (``e501``): looked for anywhere, most records were parsed
    # twice. Only where a number may begin sends a record the slow way.
    ids_only = b'{"invocation_id":"inv_2291e501e0000000000000000000000a","request_id":"1e999"}'
    assert r._HUGE.search(ids_only) is None
    assert r._HUGE.search(b'{"a": -1.5e400}') is not None


def test_a_value_of_the_largest_size_fits_the_record_that_carries_it() -> None:
    """Values were measured as Python's ``json`` writes them, and records are written by
    pydantic, which spells 1e-05 as 0.00001: a result of such floats that measured within
    the limit made a completion a third larger, which its caller's partition refused."""
    from streams.engine.values import measured

    def fits(value: list[float]) -> bool:
        try:
            measured(value, "a result")
        except TerminalError:
            return False
        return True

    for item in (1e-05, 1.5e-05, 8.631589417736051e-05):
        low, high = 1, r.MAX_VALUE_BYTES  # the most of them the limit takes, by halving
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if fits([item] * middle) else (low, middle - 1)
        count = low
        value, _ = measured([item] * count, "a result")
        caller = r.Caller(invocation_id="inv_" + "0" * 32, entry=0)
        record = r.Completion(caller=caller, invocation_id="inv_" + "1" * 32, value=value)
        assert len(r.encode(record)) <= r.MAX_INGRESS_BYTES, (item, count)


def test_load_json_reads_json_and_refuses_what_python_takes_beyond_it() -> None:
    assert r.load_json(b'{"a": [1, 2.5, "\\u00e9"]}') == {"a": [1, 2.5, "é"]}
    assert r.load_json('{"a": 1}') == {"a": 1}
    assert r.load_json('{"a": 1}'.encode("utf-16")) == {"a": 1}  # as json.loads detects it
    refusals = {b"NaN": "NaN is not JSON", b"[-Infinity]": "-Infinity is not JSON",
                b"1e400": "past a float's range", b"7" * 5_000: "4300 digits",
                b"\xff": "can't decode", b"{": "Expecting"}  # fmt: skip
    for refused, says in refusals.items():
        with pytest.raises(ValueError, match=says):
            r.load_json(refused)
    with pytest.raises(RecursionError):
        r.load_json(b"[" * 100_000 + b"]" * 100_000)
