"""The dead-letter topic's records: a record Kourier could not process, byte for byte, with
why and where it came from in ``kourier.*`` headers (``streams.kafka.deadletters`` reads
and replays them)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

from streams.wire.records import RecordError

#: What a dead letter (key, value and headers) may take: librdkafka refuses records over
#: 1,000,000 bytes. A copy that would not fit keeps what does of the original value, and
#: ``kourier.truncated`` gives the original length.
MAX_DEADLETTER_BYTES = 990_000
#: The most of the original key a dead letter keeps (``kourier.key-truncated``: its length).
MAX_DEADLETTER_KEY = 64 * 1024
#: The key, value and headers of a dead letter as produced.
DeadLetterRecord = tuple[bytes | None, bytes | None, list[tuple[str, str | bytes | None]]]
#: The header of a replayed record: where the record first set aside was read
#: (``topic/partition/offset``). A call that names neither an id nor an idempotency key
#: takes its idempotency key from it (``streams.engine.replays``).
REPLAY_HEADER = "kourier.replay-of"
#: The headers a dead letter writes of its own; the record's others it keeps as they were.
OWN_HEADERS = frozenset({
    "kourier.reason", "kourier.detail", "kourier.topic", "kourier.partition", "kourier.offset",
    "kourier.at", "kourier.answered", "kourier.truncated", "kourier.key-truncated",
    "kourier.replayed-from", "kourier.headers-dropped", REPLAY_HEADER, "traceparent",
    "tracestate",
})  # fmt: skip
#: A record's header as kept: its name, and its value in base64 (None: a null value).
KeptHeader = tuple[str, str | None]
#: The largest record a worker writes again as it came (moved to its key's partition): the
#: worker's producer takes 1,000,000 bytes, with the batch around it.
MAX_MOVED_BYTES = 990_000


def headers_bytes(headers: Sequence[tuple[str, str | bytes | None]] | None) -> int:
    """What ``headers`` take in a record: names and values as UTF-8, and the varint
    lengths around each, counted at their largest (5 bytes each)."""
    return sum(
        len(name.encode(errors="replace"))
        + len(data.encode() if isinstance(data, str) else data or b"")
        + 10
        for name, data in headers or ()
    )


_EPOCH = "1970-01-01T00:00:00+00:00"  # a dead letter's time when its header does not say


class DeadLetter(BaseModel):
    """A record that could not be processed, and where it came from and why.

    On the dead-letter topic the record keeps its original key and value, byte for byte,
    and this metadata travels in ``kourier.*`` headers (:meth:`headers`), as Kafka
    Connect's dead-letter queues do: nothing is re-encoded, and a replay produces exactly
    what arrived. Only a record so near Kafka's size limit that it would not fit with its
    headers keeps just the start of its value (``kourier.truncated``: the original
    length); such a letter cannot be replayed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    key: str | None = Field(default=None, description="original key, base64")
    payload: str = Field(description="original value, base64")
    at: datetime
    dlq_offset: int | None = Field(default=None, description="where it sits on the DLQ topic")
    truncated: int | None = Field(
        default=None, description="the original value's length, when only its start is kept"
    )
    replay_of: str | None = Field(
        default=None, description="for a replay set aside again: where the first record was read"
    )
    answered: int | None = Field(
        default=None,
        description="the status its client or calling handler was answered with, if any: "
        "replayed, it would run what they were told did not",
    )
    trace: str | None = Field(
        default=None,
        description="the W3C trace context its record carried (traceparent[;tracestate]), "
        "which a replay carries on",
    )
    record_headers: list[KeptHeader] = Field(
        default_factory=list,
        description="its record's other headers (name, value in base64), which a replay "
        "writes again",
    )
    headers_dropped: int | None = Field(
        default=None,
        description="how many headers of its record were dropped, as its value would not fit "
        "with them: a replay writes it without them",
    )

    @classmethod
    def of(
        cls,
        error: RecordError,
        *,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        at: datetime,
        replay_of: str | None = None,
        answered: int | None = None,
        trace: str | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> DeadLetter:
        return cls(
            reason=error.reason,
            detail=error.detail,
            topic=topic,
            partition=partition,
            offset=offset,
            key=None if key is None else base64.b64encode(key).decode(),
            payload=base64.b64encode(value or b"").decode(),
            at=at,
            replay_of=replay_of,
            answered=answered,
            trace=trace,
            record_headers=kept(headers),
        )

    def record(self, key: bytes | None, value: bytes | None) -> DeadLetterRecord:
        """The key, value and headers to put on the dead-letter topic: the original key and
        value, cut only when they would not fit. A key past ``MAX_DEADLETTER_KEY`` keeps
        its start (``kourier.key-truncated``, the original length); a value that does not
        fit with the key and headers keeps what does (``kourier.truncated``, the original
        length), and so does a letter whose key was cut: it cannot be replayed either. The
        record's other headers go along when the value fits with them, else none do
        (``kourier.headers-dropped``, how many): the value is what a replay needs."""
        headers = self.headers()
        key_cut = key is not None and len(key) > MAX_DEADLETTER_KEY
        if key is not None and key_cut:
            headers.append(("kourier.key-truncated", str(len(key)).encode()))
            key = key[:MAX_DEADLETTER_KEY]
        room = (
            MAX_DEADLETTER_BYTES
            - len(key or b"")
            - sum(len(name) + len(data or b"") for name, data in headers)
        )
        original = self.original_headers()
        if len(value or b"") + headers_bytes(original) <= room:
            headers += original
        elif original:
            headers.append(("kourier.headers-dropped", str(len(original)).encode()))
        if key_cut or (value is not None and len(value) > room):
            headers.append(("kourier.truncated", str(len(value or b"")).encode()))
            value = None if value is None else value[: max(0, room - 64)]
        return key, value, headers

    def headers(self) -> list[tuple[str, str | bytes | None]]:
        headers: list[tuple[str, str | bytes | None]] = [
            ("kourier.reason", self.reason.encode()),
            ("kourier.detail", self.detail.encode()),
            ("kourier.topic", self.topic.encode()),
            ("kourier.partition", str(self.partition).encode()),
            ("kourier.offset", str(self.offset).encode()),
            ("kourier.at", self.at.isoformat().encode()),
        ]
        if self.replay_of is not None:
            headers.append((REPLAY_HEADER, self.replay_of.encode()))
        if self.answered is not None:
            headers.append(("kourier.answered", str(self.answered).encode()))
        return headers + self.trace_headers()

    def original_headers(self) -> list[tuple[str, str | bytes | None]]:
        """The record's other headers, as it had them (a replay writes them too)."""
        return [(name, None if data is None else base64.b64decode(data))
                for name, data in self.record_headers]  # fmt: skip

    def trace_headers(self) -> list[tuple[str, str | bytes | None]]:
        """The trace context its record carried, as W3C headers (a replay writes them too)."""
        if not self.trace:
            return []
        parent, _, state = self.trace.partition(";")
        found: list[tuple[str, str | bytes | None]] = [("traceparent", parent.encode())]
        if state:
            found.append(("tracestate", state.encode()))
        return found

    @classmethod
    def from_record(
        cls,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, str | bytes | None]] | None,
        dlq_offset: int | None = None,
    ) -> DeadLetter:
        """Read a dead-letter topic record back (missing headers read as unknown)."""
        found = {
            name: data.decode(errors="replace") if isinstance(data, bytes) else data or ""
            for name, data in headers or []
        }

        def number(name: str) -> int:
            text = found.get(f"kourier.{name}", "-1")
            digits = text.removeprefix("-")
            number = digits.isascii() and digits.isdigit() and len(digits) <= 20  # 2**63 too
            return int(text) if number else -1

        try:  # another producer's header may be anything: the letter is still listed
            at = datetime.fromisoformat(found.get("kourier.at", _EPOCH))
        except ValueError:
            at = datetime.fromisoformat(_EPOCH)
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)

        return cls(
            reason=found.get("kourier.reason", "unknown"),
            detail=found.get("kourier.detail", ""),
            topic=found.get("kourier.topic", ""),
            partition=number("partition"),
            offset=number("offset"),
            key=None if key is None else base64.b64encode(key).decode(),
            payload=base64.b64encode(value or b"").decode(),
            at=at,
            dlq_offset=dlq_offset,
            truncated=number("truncated") if "kourier.truncated" in found else None,
            replay_of=found.get(REPLAY_HEADER),
            answered=number("answered") if "kourier.answered" in found else None,
            headers_dropped=(
                number("headers-dropped") if "kourier.headers-dropped" in found else None
            ),
            trace=";".join(found[n] for n in ("traceparent", "tracestate") if n in found) or None,
            record_headers=kept(headers),
        )

    @property
    def first(self) -> str:
        """Where the record first set aside was read: this letter's record, or, for a
        replay set aside again, the record it replayed (``topic/partition/offset``)."""
        return self.replay_of or f"{self.topic}/{self.partition}/{self.offset}"

    def original_key(self) -> bytes | None:
        return None if self.key is None else base64.b64decode(self.key)

    def original_value(self) -> bytes:
        return base64.b64decode(self.payload)


def kept(headers: Sequence[tuple[str, str | bytes | None]] | None) -> list[KeptHeader]:
    """Of a record's ``headers``, those a dead letter keeps as they were: all but its own
    (``OWN_HEADERS``: what it writes itself, and the trace context it keeps apart)."""
    return [
        (name, None if data is None else base64.b64encode(
            data.encode() if isinstance(data, str) else data).decode())
        for name, data in headers or ()
        if name not in OWN_HEADERS
    ]  # fmt: skip
