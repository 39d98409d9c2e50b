"""Every record a partition sends out, built in one place.

The processor and the invocations it runs never encode a record themselves: they ask the
:class:`Outbox` for a response, a completion, an invoke, an attach, a control record, a
durable timer or a dead letter. The outbox encodes it, picks the topic and partition that
owns it, and hands an :class:`Out` to ``emit`` — the worker, which produces it in the next
transaction, or a test, which collects it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import JsonValue

from streams.engine.journal import InvocationMeta, entry_of
from streams.metrics import DEADLETTERS
from streams.tracing import as_headers
from streams.wire import ids
from streams.wire.deadletter import REPLAY_HEADER, DeadLetter
from streams.wire.partitioning import partition_of_key
from streams.wire.records import (
    AttachRequest,
    Caller,
    Completion,
    Control,
    Delayed,
    Failure,
    Invoke,
    RecordError,
    Response,
    Start,
    Target,
    decode_ingress,
    decode_response,
    encode,
    request_id_of,
)
from streams.wire.topics import Topics

log = logging.getLogger("kourier.partition")

#: The header of a cancel or kill that a caller sends on to its callee: the caller's id, so
#: that the callee's partition acts on it only if that caller started the callee (a caller
#: that joined another's invocation, or met a workflow's run, has its own wait ended).
ORIGIN_HEADER = "kourier.origin"

Headers = list[tuple[str, str | bytes | None]]


#: What the worker writes in ``ORIGIN_HEADER``: the caller's id, and the entry of a call
#: whose deadline passed.
_ORIGIN = re.compile(r"inv_[0-9a-f]{32}(/[0-9]{1,10})?")


def origin_of(headers: Headers | Mapping[str, str | bytes | None] | None) -> str | None:
    """The id of the caller that sent a cancel or kill on (see ``ORIGIN_HEADER``); None
    when the header holds anything else, which another producer put there."""
    origin = _text(headers, ORIGIN_HEADER)
    return origin if origin is not None and _ORIGIN.fullmatch(origin) else None


def replay_of(headers: Headers | Mapping[str, str | bytes | None] | None) -> str | None:
    """Where the dead letter a replayed record came from was first read (``REPLAY_HEADER``)."""
    return _text(headers, REPLAY_HEADER)


def _text(headers: Headers | Mapping[str, str | bytes | None] | None, header: str) -> str | None:
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for name, value in pairs:
        if name == header and value is not None:
            return value.decode(errors="replace") if isinstance(value, bytes) else value
    return None


@dataclass(frozen=True, slots=True)
class Out:
    """A record to produce in the next transaction."""

    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    headers: Headers | None = None
    #: The invocation whose step made it, where the record does not name it (a send); in
    #: memory only: see :func:`author_of`.
    author: str | None = None


def handler_invoke(
    caller_id: str,
    index: int,
    *,
    target: Target,
    argument: JsonValue,
    callee: str,
    mode: Literal["call", "send"],
    idempotency_key: str | None,
    headers: dict[str, str],
    due: float | None,
) -> Invoke:
    """The record of the call or send that invocation ``caller_id`` journaled at ``index``:
    a call names that entry, for its completion; a delayed send its due time."""
    record = Invoke(
        target=target,
        argument=argument,
        invocation_id=callee,
        mode=mode,
        idempotency_key=idempotency_key,
        headers=headers,
        caller=Caller(invocation_id=caller_id, entry=index) if mode == "call" else None,
    )
    if due is not None:  # scheduled by the callee's partition from now on
        record = record.model_copy(update={"due": datetime.fromtimestamp(due, UTC)})
    return record


def author_of(out: Out, topics: Topics) -> str | None:
    """The invocation that fails when Kafka refuses ``out`` for good (a record larger than
    its topic takes now): the one whose meta or journal entry it is, whose outcome it
    carries (a response, a completion), or which made the call or send. None for what no
    one invocation made: object state, dead letters, timers, controls."""
    if out.author is not None:
        return out.author
    key, value = out.key or b"", out.value
    try:
        if out.topic == topics.invocations:
            entry = entry_of(key)
            if entry is not None:
                return entry[0]
            return key[2:].decode() if key.startswith(b"m/") else None
        if out.topic == topics.responses:
            return decode_response(value).invocation_id
        if out.topic == topics.ingress:
            record = decode_ingress(value)
            if isinstance(record, Completion):
                return record.invocation_id
            if isinstance(record, Invoke) and record.caller is not None:
                return record.caller.invocation_id
    except Exception:  # not a record of ours as we write them: nobody's
        return None
    return None


class Outbox:
    """Builds the outgoing records of ingress partition ``partition``."""

    def __init__(
        self,
        topics: Topics,
        partition: int,
        partitions: int,
        emit: Callable[[Out], None],
        deliver_locally: Callable[[int, Completion, Out], None] | None = None,
        call_locally: Callable[[int, Invoke, Out, str | None], bool] | None = None,
    ) -> None:
        self.topics = topics
        self.partition = partition
        self.partitions = partitions
        self._emit_now = emit
        self._deliver_locally = deliver_locally
        self._call_locally = call_locally
        self._held: list[Callable[[], None]] | None = None

    def _emit(self, out: Out) -> None:
        if self._held is None:
            self._emit_now(out)
        else:
            self._held.append(functools.partial(self._emit_now, out))

    @contextlib.contextmanager
    def holding(self) -> Iterator[list[Callable[[], None]]]:
        """Hold the records emitted in the block, and the local deliveries of its
        completions: the caller sends them (calls each) once every record was built, or
        drops them all. Calls made in the block are not held (``invoke`` may run them
        locally at once); an outcome makes none."""
        assert self._held is None, "holding() does not nest"
        held: list[Callable[[], None]] = []
        self._held = held
        try:
            yield held
        finally:
            self._held = None

    def response(self, response: Response) -> None:
        """To the response topic, on the partition of its request id (where clients read)."""
        request_id = response.request_id
        assert request_id is not None, "a response answers a request"
        partition = partition_of_key(request_id, self.partitions)
        self._emit(Out(self.topics.responses, partition, request_id.encode(), encode(response)))

    def failure_response(self, request_id: str, inv_id: str | None, failure: Failure) -> None:
        self.response(
            Response(request_id=request_id, invocation_id=inv_id, status="failure", failure=failure)
        )

    def outcome(self, request_id: str, meta: InvocationMeta) -> None:
        """A completed invocation's outcome, to whoever sent ``request_id``: its failure
        alone (a value refused as too large never travels with it), or its value."""
        if meta.failure is not None:
            self.failure_response(request_id, meta.id, meta.failure)
        else:
            self.response(Response(request_id=request_id, invocation_id=meta.id,
                                   status="success", value=meta.value))  # fmt: skip

    # Each answer below returns the status it told whoever waits (None: nobody was told),
    # which the record's dead letter then carries (``kourier.answered``).

    def unrouted(self, record: Invoke, failure: Failure) -> int | None:
        """Answer a call that cannot run (unknown target, too large, a bad id) without
        creating an invocation: to its request id, and to a calling handler."""
        told = None
        if record.request_id is not None:
            self.failure_response(record.request_id, record.invocation_id, failure)
            told = failure.code
        if record.caller is not None and record.invocation_id is not None:
            self.completion(Completion(
                caller=record.caller, invocation_id=record.invocation_id, failure=failure
            ))  # fmt: skip
            told = failure.code
        return told

    def oversize(self, value: bytes) -> int | None:
        """Tell whoever waits for an oversize invocation that it will not run (413)."""
        try:
            record = decode_ingress(value)
        except RecordError:
            return None
        if not isinstance(record, Invoke):
            return None
        return self.unrouted(
            record, Failure(code=413, message="the record is larger than Kourier accepts")
        )

    def refused(
        self, record: Invoke | Control | AttachRequest | Completion | Start, failure: Failure
    ) -> int | None:
        """Answer a record that will not be applied: a call as :meth:`unrouted`, an attach or
        a control at its request id (a completion or a start has none)."""
        if isinstance(record, Invoke):
            return self.unrouted(record, failure)
        if isinstance(record, AttachRequest | Control) and record.request_id is not None:
            self.failure_response(record.request_id, record.invocation_id, failure)
            return failure.code
        return None

    def undecoded(self, error: RecordError, value: bytes | None) -> int | None:
        """Answer the request id of a record that does not decode, if it names one (a newer
        client's field an older worker does not know, say): its caller waited for good."""
        request_id = request_id_of(value)
        if request_id is None:
            return None
        said = f"the record was refused ({error.reason}: {error.detail}); it is on the "
        code = 413 if error.reason == "oversize" else 400
        self.failure_response(
            request_id, None, Failure(code=code, message=said + "dead-letter topic")
        )
        return code

    def completion(self, completion: Completion) -> None:
        """A callee's outcome, to the partition of the caller waiting for it; and, when
        that partition runs in this process, to its processor at once (``deliver_locally``,
        ``streams.engine.local``, which also tells the worker when the record is redundant).
        Applied after the caller's journal has it, the record changes nothing."""
        caller = completion.caller.invocation_id
        owner = ids.partition_of(caller, self.partitions)
        record = Out(self.topics.ingress, owner, caller.encode(), encode(completion))
        self._emit(record)
        if self._deliver_locally is None:
            return
        if self._held is None:
            self._deliver_locally(owner, completion, record)
        else:
            self._held.append(functools.partial(self._deliver_locally, owner, completion, record))

    def invoke(self, record: Invoke, trace: str | None = None, author: str | None = None) -> None:
        """A call or send that handler ``author`` made, to the partition of the callee's id,
        with the trace context of the span that made it in its headers; or, when that
        partition runs in this process, to ``call_locally`` (``streams.engine.local``), which
        may run it there without the record."""
        callee = record.invocation_id
        assert callee is not None
        owner = ids.partition_of(callee, self.partitions)
        key = (record.target.key if record.target.key is not None else callee).encode()
        out = Out(self.topics.ingress, owner, key, encode(record), as_headers(trace), author)
        if self._call_locally is None or not self._call_locally(owner, record, out, trace):
            self._emit(out)

    def attach(self, record: AttachRequest) -> None:
        """A handler's attach: to the partition of the invocation it names."""
        assert record.invocation_id is not None
        owner = ids.partition_of(record.invocation_id, self.partitions)
        key = record.invocation_id.encode()
        self._emit(Out(self.topics.ingress, owner, key, encode(record)))

    def control(self, record: Control, origin: str | None = None) -> None:
        """A cancel or kill for an invocation, on its partition; ``origin``: the caller
        that sends it on to its callee."""
        owner = ids.partition_of(record.invocation_id, self.partitions)
        key = record.invocation_id.encode()
        headers: Headers | None = None if origin is None else [(ORIGIN_HEADER, origin)]
        self._emit(Out(self.topics.ingress, owner, key, encode(record), headers))

    def timer(self, invocation_id: str, due: float, completion: Completion) -> None:
        """A durable timer: ``completion`` comes back through the delay topic at ``due``."""
        delayed = Delayed(due=datetime.fromtimestamp(due, UTC), completion=completion)
        owner = ids.partition_of(invocation_id, self.partitions)
        self._emit(Out(self.topics.delay, owner, invocation_id.encode(), encode(delayed)))

    def delayed(self, record: Delayed, owner_id: str) -> None:
        """A record held on the delay topic until due (a scheduled invocation's start)."""
        owner = ids.partition_of(owner_id, self.partitions)
        self._emit(Out(self.topics.delay, owner, owner_id.encode(), encode(record)))

    def forward(
        self,
        owner: int,
        key: bytes | None,
        value: bytes | None,
        trace: str | None = None,
        origin: str | None = None,
        replayed: str | None = None,
        original: Headers | None = None,
    ) -> None:
        """An ingress record that belongs to another partition, moved there unchanged: with
        its ``original`` headers when known, else with its trace context, origin and
        ``REPLAY_HEADER``."""
        if original is not None:
            self._emit(Out(self.topics.ingress, owner, key, value, original))
            return
        headers = as_headers(trace)
        if origin is not None:
            headers = [*(headers or []), (ORIGIN_HEADER, origin)]
        if replayed is not None:
            headers = [*(headers or []), (REPLAY_HEADER, replayed)]
        self._emit(Out(self.topics.ingress, owner, key, value, headers))

    def dead_letter(
        self,
        error: RecordError,
        key: bytes | None,
        value: bytes | None,
        offset: int,
        replayed: str | None = None,
        answered: int | None = None,
        trace: str | None = None,
        headers: Headers | None = None,
    ) -> None:
        """An ingress record set aside, unchanged, with the reason in its headers (and, for
        a replay, where the record it replayed was first read; for one whose client or
        caller was ``answered``, that status; the ``trace`` context it carried; its other
        ``headers``)."""
        log.warning(
            "dead letter at %s/%d@%d: %s", self.topics.ingress, self.partition, offset, error
        )
        DEADLETTERS.labels(error.reason).inc()
        source = (self.topics.ingress, self.partition, offset)
        deadletter = self.topics.deadletter
        self._emit(
            set_aside(error, source, key, value, deadletter, replayed, answered, trace, headers)
        )


def set_aside(
    error: RecordError,
    source: tuple[str, int, int],
    key: bytes | None,
    value: bytes | None,
    deadletter_topic: str,
    replayed: str | None = None,
    answered: int | None = None,
    trace: str | None = None,
    headers: Headers | None = None,
) -> Out:
    """The dead letter of the record at ``source`` (topic, partition, offset): its key and
    value unchanged, why in its headers, cut only if it would not fit."""
    topic, partition, offset = source
    letter = DeadLetter.of(error, topic=topic, partition=partition, offset=offset, key=key,
                           value=value, at=datetime.now(UTC), replay_of=replayed,
                           answered=answered, trace=trace, headers=headers)  # fmt: skip
    return Out(deadletter_topic, 0, *letter.record(key, value))
