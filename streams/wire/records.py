"""Every record Kourier writes to or reads from Kafka, as versioned pydantic models.

All records are JSON objects with ``"v": 1`` and a ``"kind"`` discriminator.
The ingress topic carries :data:`IngressRecord` (invoke, cancel, kill, attach,
completion); the response topic carries :class:`Response`; the delay topic
carries :class:`Delayed`; the dead-letter topic carries
:class:`~streams.wire.deadletter.DeadLetter`.
External producers write :data:`ExternalRecord`, whose JSON Schema
``kourier schema`` prints.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from streams.errors import KourierError
from streams.wire.ids import ID_PATTERN

WIRE_VERSION = 1
#: The largest JSON value Kourier writes into one record: a call's argument, a result, a
#: state value, a promise, a ``ctx.run`` result. Brokers refuse records over 1 MiB by default
#: (``message.max.bytes``); the rest is room for the record around the value.
MAX_VALUE_BYTES = 900 * 1024
#: The largest ingress record a client writes (the Python client, the HTTP ingress, Faust
#: refuse a larger one: 413).
MAX_RECORD_BYTES = 900 * 1024
#: Larger ingress records go to the dead-letter topic. Room past the largest value for the
#: record around it: a completion that carries a result of ``MAX_VALUE_BYTES`` reaches its
#: caller, and a handler's call or send is measured against it where the handler makes it
#: (``values.checked_record``: its headers may take 64 KiB more than its argument).
MAX_INGRESS_BYTES = MAX_VALUE_BYTES + 8 * 1024
#: An invocation id (``inv_`` + 32 hex digits): checked when a record is decoded, so that a
#: malformed one is a dead letter, not an error deep inside a partition.
InvocationId = Annotated[str, Field(pattern=ID_PATTERN)]
#: The latest due time a record may carry: more than a day inside Python's datetime range
#: in UTC, so that every clock and timestamp conversion of it works, and a whole second, so
#: that its timestamp is exact as a float (one a microsecond short of the range's last day
#: rounded up past it, and an invocation scheduled that late could not be written).
LAST_DUE = datetime(9999, 12, 30, tzinfo=UTC)


def _in_range(due: datetime) -> datetime:
    try:
        late = due.astimezone(UTC) > LAST_DUE
    except OverflowError:  # 9999-12-31 at a negative offset is year 10000 in UTC
        late = True
    if late:
        raise ValueError(f"'due' {due.isoformat()} is past {LAST_DUE.isoformat()}")
    return due


#: A due time: timezone-aware and within range.
Due = Annotated[AwareDatetime, AfterValidator(_in_range)]
_T = TypeVar("_T")
_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]{0,199}$"


class RecordError(KourierError, ValueError):
    """A record that cannot be decoded; ``reason`` is a short machine-readable word."""

    def __init__(self, reason: str, detail: str) -> None:
        # The detail may quote the record (a value, a field the decoder named): it goes in
        # a dead letter's header, which must leave room for the record itself.
        detail = shorten(detail)
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Record(_Model):
    v: Literal[1] = Field(default=1, description="wire format version")


#: The longest idempotency key, in characters.
MAX_IDEMPOTENCY_KEY = 1024
#: The longest request id, in characters: a response holds it twice, as its key and in
#: its value (a longer one, in a record that decodes, grew a response past what Kafka
#: takes in one record).
MAX_REQUEST_ID = 1024


def idempotency_key_refusal(key: str) -> str | None:
    """Why no record can carry ``key`` as its idempotency key, or None. An empty key is a
    caller's bug (an unset variable): taken for none, the call would run again on every
    retry the caller believes deduplicated."""
    if not key:
        return "idempotency key is empty: give one, or none"
    if len(key) > MAX_IDEMPOTENCY_KEY:
        return f"idempotency key of {len(key)} characters; at most {MAX_IDEMPOTENCY_KEY}"
    if not key.isascii():
        try:
            key.encode()
        except UnicodeEncodeError:
            return "idempotency key holds a lone UTF-16 surrogate"
    return None


class Target(_Model):
    """The handler an invocation runs: ``service/handler`` or ``service/key/handler``."""

    service: str = Field(pattern=_NAME, description="service, virtual object or workflow name")
    handler: str = Field(pattern=_NAME)
    key: str | None = Field(
        default=None,
        max_length=4096,
        description="object key or workflow id; absent for services",
    )

    def path(self) -> str:
        if self.key is None:
            return f"{self.service}/{self.handler}"
        return f"{self.service}/{self.key}/{self.handler}"


class Failure(_Model):
    """A terminal failure: an HTTP-like status code and a message. A longer message is cut
    to :data:`MAX_MESSAGE_CHARS`, so that no error text can grow a record past Kafka's limit."""

    code: int = Field(ge=400, le=599)
    message: str

    @field_validator("message", mode="before")
    @classmethod
    def _bounded(cls, value: Any) -> Any:
        return shorten(value) if isinstance(value, str) else value


#: Longest failure message (or last error) kept, in characters.
MAX_MESSAGE_CHARS = 8_192


def shorten(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text``, cut to ``limit`` characters with a note of how long it was, and any lone
    UTF-16 surrogate in it written as its escape (``\\udc80``): an error's text may hold
    one (``os.fsdecode`` of a bad byte), which no JSON writer encodes, so a failure or a
    last error keeping it could not be written to the changelog."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode()
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters in all)"


class Caller(_Model):
    """Internal: the invocation (and its journal entry) waiting for a call's outcome."""

    invocation_id: InvocationId
    entry: int = Field(ge=0)


class Invoke(_Record):
    """Run ``target`` with ``argument``.

    Outside producers set ``request_id`` when they want the outcome on the
    response topic, and may leave ``invocation_id`` out (the worker assigns one).
    """

    kind: Literal["invoke"] = "invoke"
    target: Target
    argument: JsonValue = None
    invocation_id: InvocationId | None = None
    mode: Literal["call", "send"] = Field(
        default="call", description="'send' is one-way: nobody waits for the outcome"
    )
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=MAX_IDEMPOTENCY_KEY)
    request_id: str | None = Field(
        default=None,
        max_length=MAX_REQUEST_ID,
        description="correlation id echoed on the response topic",
    )
    headers: dict[str, str] = Field(default_factory=dict)
    caller: Caller | None = Field(default=None, description="internal: set by Kourier workers")
    due: Due | None = Field(
        default=None,
        description="a delayed send: the invocation exists (status 'scheduled') from now on "
        "and runs no earlier than this time",
    )

    @model_validator(mode="after")
    def _only_sends_are_delayed(self) -> Self:
        if self.due is not None and (self.mode != "send" or self.caller is not None):
            raise ValueError("'due' is for one-way sends only")
        return self


class _ControlRecord(_Record):
    """Acts on the invocation ``invocation_id``; its partition answers ``request_id``."""

    invocation_id: InvocationId
    request_id: str | None = Field(default=None, max_length=MAX_REQUEST_ID)


class Cancel(_ControlRecord):
    """Cancel an invocation: it sees a 409 terminal error at its next await point."""

    kind: Literal["cancel"] = "cancel"


class Kill(_ControlRecord):
    """Stop an invocation at once, without running compensation."""

    kind: Literal["kill"] = "kill"


class Purge(_ControlRecord):
    """Forget a completed invocation's retained outcome (and its idempotency key) now."""

    kind: Literal["purge"] = "purge"


class Resume(_ControlRecord):
    """Retry a ``paused`` invocation (retries exhausted) from attempt 1."""

    kind: Literal["resume"] = "resume"


class AttachRequest(_Record):
    """Ask for an invocation's outcome on the response topic.

    Name the invocation by ``invocation_id``, or by ``target`` plus
    ``idempotency_key``, or (for a workflow) by ``target`` alone with the
    workflow id as key. ``wait=false`` asks for output now (470 when not ready).
    """

    kind: Literal["attach"] = "attach"
    request_id: str = Field(max_length=MAX_REQUEST_ID)
    invocation_id: InvocationId | None = None
    target: Target | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=MAX_IDEMPOTENCY_KEY)
    wait: bool = True
    caller: Caller | None = Field(
        default=None, description="internal: a handler's ctx.attach_invocation waiting for it"
    )

    @model_validator(mode="after")
    def _names_one_invocation(self) -> Self:
        if self.invocation_id is None and self.target is None:
            raise ValueError("attach needs invocation_id, or target (with idempotency_key)")
        return self


class Completion(_Record):
    """Internal: the outcome of a call, delivered to the caller's journal entry."""

    kind: Literal["completion"] = "completion"
    caller: Caller
    invocation_id: InvocationId = Field(description="the callee")
    value: JsonValue = None
    failure: Failure | None = None


#: How long before its due time a scheduled invocation's :class:`Start` leaves the delay
#: topic (``engine/delay.py``); the partition that applies it waits out the rest
#: (``engine/starts.py``), so nothing runs before it is due.
START_LEAD = 0.025


class Start(_Record):
    """Internal: the scheduled invocation ``invocation_id`` is due; its partition runs it.

    ``seq`` is the offset of the record that scheduled it: an id can be scheduled again
    (a workflow's run, an idempotency key after its retention or a purge), and a ``Start``
    left behind by an earlier, cancelled one must not run the new one early.
    """

    kind: Literal["start"] = "start"
    invocation_id: InvocationId
    seq: int = Field(ge=0)


class Response(_Record):
    """An outcome on the response topic, for whoever set ``request_id``."""

    kind: Literal["response"] = "response"
    request_id: str | None = None
    invocation_id: str | None = None
    status: Literal["success", "failure", "accepted", "previously_accepted"]
    value: JsonValue = None
    failure: Failure | None = None

    @model_validator(mode="after")
    def _failure_matches_status(self) -> Self:
        if (self.status == "failure") != (self.failure is not None):
            raise ValueError("'failure' is set exactly when status is 'failure'")
        return self


class Delayed(_Record):
    """A record held on the delay topic until ``due``, then released to ingress.

    It carries a scheduled invocation becoming due (``start``), a durable timer firing
    (``completion``: a ``ctx.sleep`` ending, or a call's deadline passing), or, as
    written by earlier versions, a whole delayed send (``invoke``).
    """

    kind: Literal["delayed"] = "delayed"
    due: Due
    start: Start | None = None
    completion: Completion | None = None
    invoke: Invoke | None = None

    @model_validator(mode="after")
    def _holds_one_record(self) -> Self:
        held = [r for r in (self.start, self.completion, self.invoke) if r is not None]
        if len(held) != 1:
            raise ValueError(
                "a delayed record holds exactly one of 'start', 'completion' and 'invoke'"
            )
        return self

    def release_time(self) -> float:
        """When to release it: its due time, or ``START_LEAD`` before it for the start of a
        scheduled invocation, so that the release transaction and the ingress fetch (a few
        ms) overlap the wait; the partition then queues the invocation when it is due.
        Timers (sleeps, call deadlines) go at their due time: a waiting handler wakes."""
        due = self.due.timestamp()
        return due - START_LEAD if self.start is not None else due

    def released(self) -> Start | Completion | Invoke:
        """The record to put on the ingress topic when due."""
        inner = self.start or self.completion or self.invoke
        assert inner is not None
        return inner

    def owner_id(self) -> str | None:
        """The invocation whose partition receives the released record."""
        if self.start is not None:
            return self.start.invocation_id
        if self.completion is not None:
            return self.completion.caller.invocation_id
        assert self.invoke is not None
        return self.invoke.invocation_id


class Fired(_Record):
    """Marks the delayed record at ``offset`` of the same delay partition as released."""

    kind: Literal["fired"] = "fired"
    offset: int = Field(ge=0)


#: Records that act on an existing invocation, named by its id.
Control = Cancel | Kill | Purge | Resume
IngressRecord = Annotated[
    Invoke | Cancel | Kill | Purge | Resume | AttachRequest | Completion | Start,
    Field(discriminator="kind"),
]
ExternalRecord = Annotated[
    Invoke | Cancel | Kill | Purge | Resume | AttachRequest, Field(discriminator="kind")
]

_INGRESS: TypeAdapter[Invoke | Control | AttachRequest | Completion | Start] = TypeAdapter(
    IngressRecord
)
_EXTERNAL: TypeAdapter[Invoke | Control | AttachRequest] = TypeAdapter(ExternalRecord)
_RESPONSE: TypeAdapter[Response] = TypeAdapter(Response)
_DELAY: TypeAdapter[Delayed | Fired] = TypeAdapter(
    Annotated[Delayed | Fired, Field(discriminator="kind")]
)


def dump_value(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON: how Kourier writes state and promise values, and
    measures every value against :data:`MAX_VALUE_BYTES`. Raises ``UnicodeEncodeError``
    for a string with a lone surrogate, which no JSON writer can encode as UTF-8."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def load_json(data: bytes | str) -> Any:
    """``data`` parsed as JSON, RFC 8259's: ``ValueError`` for what Python's parser takes
    beyond it (``NaN``, ``Infinity``, a number past a float's range), which a record would
    write again as ``null``, and for an integer past Python's 4,300 digits. Like the
    parser, ``RecursionError`` for JSON nested deeper than it goes."""
    if isinstance(data, bytes | bytearray):  # as json.loads reads bytes
        data = data.decode(json.detect_encoding(data), "surrogatepass")
    elif data.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", data, 0)
    return _STRICT.decode(data)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is past a float's range")
    return value


#: One decoder for :func:`load_json`: ``json.loads`` with hooks would build one a call.
_STRICT = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)
#: Finds ``NaN``, ``Infinity`` and floats past their range, and nothing else (integers are
#: not even converted).
_CONSTANTS = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite, parse_int=len)
#: What a number past a float's range must hold, where a JSON number may begin (not in an
#: id such as ``inv_...e501...``, which would send most records the slow way): a
#: three-digit exponent, or 200 digits in a row (fewer, times at most 1e99, stay below
#: 1.8e308). Each number is looked at once, from the character before it (half the cost
#: of a look-behind: about 1.7 µs on a 200-byte record).
_HUGE = re.compile(rb"[\[:,\s]-?[0-9](?:[0-9]*(?:\.[0-9]*)?[eE][+-]?[0-9]{3}|[0-9]{199})")


def _constants(data: bytes) -> None:
    """``RecordError`` ``not-json`` when ``data`` holds ``NaN`` or ``Infinity`` as a value,
    or a number past a float's range."""
    try:
        _CONSTANTS.decode(data.decode(json.detect_encoding(data), "surrogatepass"))
    except ValueError as exc:
        raise RecordError("not-json", str(exc)) from None
    except RecursionError:  # as _load says it (pydantic's parser refuses such depths first)
        raise RecordError("not-json", "nested deeper than the JSON parser goes") from None


def value_size(value: Any) -> int:
    """The size of ``value`` as Kourier writes it, in a state record (:func:`dump_value`) or
    inside another record (pydantic's writer, which spells a float from 1e-05 to 1e-04 out:
    ``1e-05`` is ``0.00001``, at most two bytes more; measured alike, a result of such
    floats within the limit made a record Kafka refused)."""
    if type(value) is int:  # a counter's state, say: as JSON writes it, without writing it
        return len(repr(value))
    written = dump_value(value)
    return len(written) + 2 * written.count(b"e-05")


def encode(record: BaseModel) -> bytes:
    """The record as compact JSON bytes; fields left at ``None`` are omitted."""
    return record.model_dump_json(exclude_none=True).encode()


def _load(data: bytes | None) -> dict[str, Any]:
    if data is None:
        raise RecordError("empty", "record has no value")
    try:
        obj = load_json(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError among them
        raise RecordError("not-json", str(exc)) from None
    except RecursionError:
        raise RecordError("not-json", "nested deeper than the JSON parser goes") from None
    if not isinstance(obj, dict):
        raise RecordError("bad-schema", f"expected a JSON object, got {type(obj).__name__}")
    version = obj.get("v", WIRE_VERSION)
    if type(version) is not int or version != WIRE_VERSION:
        if type(version) is int and version > WIRE_VERSION:  # a newer Kourier's
            raise RecordError("unsupported-version", f"v={version!r}; this Kourier reads v=1")
        # Not a version at all: no newer worker reads it either (a delay record kept for
        # one was held, and copied again at each carry, for good).
        raise RecordError("bad-schema", f"v: {version!r} is no version; this Kourier reads v=1")
    return obj


def first_problem(error: ValidationError, whole: str) -> str:
    """The first thing ``error`` refused, as ``where: why`` (``whole`` when it names no
    field: the value as a whole)."""
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or whole
    return f"{where}: {first['msg']}"


def _validate(adapter: TypeAdapter[_T], data: bytes | None) -> _T:
    obj = _load(data)
    try:
        return adapter.validate_python(obj)
    except ValidationError as exc:
        raise RecordError("bad-schema", first_problem(exc, "record")) from None


def request_id_of(value: bytes | None) -> str | None:
    """The ``request_id`` of a record that does not decode, if it has one to be read (and
    one a response can carry: UTF-8, of at most ``MAX_REQUEST_ID`` characters)."""
    try:
        found = json.loads(value or b"")
    except (ValueError, RecursionError):  # not JSON, or nested past what Python parses
        return None
    request_id = found.get("request_id") if isinstance(found, dict) else None
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID:
        return None
    try:
        request_id.encode()
    except UnicodeEncodeError:  # a lone surrogate: no record can carry it
        return None
    return request_id


def decode_ingress(data: bytes | None) -> Invoke | Control | AttachRequest | Completion | Start:
    """Decode an ingress-topic value, or raise :class:`RecordError` saying why not."""
    raw = data or b""
    try:  # the common case, in one pass; a record that fails is decoded again to say why
        record = _INGRESS.validate_json(raw)
        if b"NaN" in raw or b"Infinity" in raw or _HUGE.search(raw) is not None:
            # pydantic's parser takes them (a number past a float's range as infinity), as
            # Python's json.dumps writes them, but no record writes them again: a replay
            # would find null where the first attempt had NaN. Read for them alone, the
            # record is not JSON (a string that holds such a word or number is).
            _constants(raw)
    except ValidationError:
        record = _validate(_INGRESS, data)
        # Read past UTF-8 (UTF-16, or surrogates spelt as raw bytes): can it be written?
        try:
            encode(record)
        except ValueError:
            raise RecordError("bad-schema", "a string holds a lone UTF-16 surrogate") from None
        return record
    _check_surrogates(raw)
    return record


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _check_surrogates(data: bytes) -> None:
    """A JSON string may spell a lone UTF-16 surrogate (``"\\ud800"``): it decodes, but no
    record holding it can be written again. Such a record is refused here."""
    if _SURROGATE_ESCAPE.search(data) is None:
        return
    try:
        dump_value(json.loads(data))  # as the decoder read it (NaN too), not load_json
    except UnicodeEncodeError:
        raise RecordError("bad-schema", "a string holds a lone UTF-16 surrogate") from None
    except ValueError as exc:  # what the decoder took and Python's parser does not
        raise RecordError("not-json", str(exc)) from None


def decode_response(data: bytes | None) -> Response:
    return _validate(_RESPONSE, data)


def decode_delay(data: bytes | None) -> Delayed | Fired:
    """Decode a delay-topic value: a delayed invocation, or the marker that released one."""
    return _validate(_DELAY, data)


def json_schemas() -> dict[str, Any]:
    """JSON Schemas of what outside producers write and what they read back."""
    return {
        "$comment": "Kourier wire format v1: write 'ingress' records to <namespace>.ingress, "
        "read 'response' records from <namespace>.responses",
        "ingress": _EXTERNAL.json_schema(),
        "response": _RESPONSE.json_schema(),
    }
