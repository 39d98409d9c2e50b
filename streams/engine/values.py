"""What a handler hands to Kourier is checked where the handler hands it over.

An argument, a result, a ``ctx.run`` value, headers, a delay or an invocation id that
Kourier could not write, or that is not what it claims, is the handler's terminal error
(400, or 413 when too large), raised at the call site before anything is journaled: a
replay meets the same error at the same place.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from handlers.exceptions import TerminalError
from handlers.serde import JSON
from streams.wire import ids
from streams.wire.records import (
    LAST_DUE,
    MAX_INGRESS_BYTES,
    MAX_VALUE_BYTES,
    Failure,
    Invoke,
    encode,
    idempotency_key_refusal,
    value_size,
)


def checked_id(invocation_id: str) -> None:
    """A malformed id from handler code is the handler's terminal error (400)."""
    try:
        ids.validate(invocation_id)
    except ids.InvalidId as error:
        raise TerminalError(str(error), 400) from None


def writable(value: Any, what: str) -> Any:
    """``value`` as JSON that fits in a record: not JSON is a 400, too large a 413, raised
    where the handler made it, before anything is journaled (so a replay raises the same)."""
    return measured(value, what)[0]


_SCALARS = frozenset({int, float, str, bool, type(None)})


def measured(value: Any, what: str) -> tuple[Any, int]:
    """:func:`writable`, with the size of the JSON it will be written as."""
    if type(value) not in _SCALARS:
        # Every record holds a value one level down (an invocation's argument, a response's
        # value, a journal entry's), and pydantic's serializer stops at 255 levels: so a
        # value is encoded one level down too, and one nested too deep for a record is
        # refused here instead of failing the record.
        encoded = JSON.encode([value], what)[0]
    else:
        encoded = JSON.encode(value, what)
    try:
        size = value_size(encoded)
    except UnicodeEncodeError:
        raise TerminalError(f"{what} holds a lone UTF-16 surrogate: not JSON", 400) from None
    except ValueError as error:  # an integer past Python's 4,300 digits, which no reader takes
        raise TerminalError(f"{what} is not JSON that Kourier reads: {error}", 400) from None
    if size > MAX_VALUE_BYTES:
        raise TerminalError(
            f"{what} is {size} bytes of JSON; Kourier writes at most {MAX_VALUE_BYTES} "
            "in one record",
            413,
        )
    return encoded, size


def checked_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Headers of a call or send: names and values are strings (400), of 64 KiB in all at
    most (413), as an HTTP server would take them."""
    found = dict(headers or {})
    for name, value in found.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TerminalError(f"header {name!r}: names and values must be strings", 400)
    if found and value_size(found) > _MAX_HEADER_BYTES:
        raise TerminalError(f"headers over {_MAX_HEADER_BYTES} bytes", 413)
    return found


_MAX_HEADER_BYTES = 64 * 1024
#: Room in a call's or send's record for all but its argument and headers (its target,
#: ids, idempotency key); one that comes nearer the limit is measured as written.
_ENVELOPE = 64 * 1024


def checked_record(
    size: int, headers: dict[str, str], record: Callable[[], Invoke], what: str
) -> None:
    """A call's or send's record, whose argument (``size`` bytes) and headers each fit,
    may still not: 413 past ``MAX_INGRESS_BYTES`` (its callee's partition would dead-letter
    it, and nobody would hear of a send). Only one near the limit is made to measure."""
    if size + (value_size(headers) if headers else 0) + _ENVELOPE <= MAX_INGRESS_BYTES:
        return
    length = len(encode(record()))
    if length > MAX_INGRESS_BYTES:
        raise TerminalError(
            f"the record of {what} would be {length} bytes; Kourier takes at most "
            f"{MAX_INGRESS_BYTES}",
            413,
        )


def checked_idempotency_key(key: Any, what: str) -> str | None:
    """A handler's idempotency key for a call or send: a string a record carries (400),
    checked before anything is journaled, as the HTTP ingress and the client check it."""
    if key is None:
        return None
    if not isinstance(key, str):
        raise TerminalError(f"the idempotency key of {what} must be a string", 400)
    refusal = idempotency_key_refusal(key)
    if refusal is not None:
        raise TerminalError(f"{refusal} ({what})", 400)
    return key


#: Latest due time a timer or a delayed send may have: what a record carries (a whole
#: second, exact as a float).
_LATEST = LAST_DUE.timestamp()


def due_after(duration: timedelta, what: str, now: float | None = None) -> float:
    """``now`` (the wall clock when not given) plus ``duration`` as epoch seconds; past
    the year 9999 it is a 400. A duration below zero counts as none: a due time far in the
    past is no time a record can carry either. Anything but a ``timedelta`` is a 400 too
    (a number of seconds, say: retried, it failed alike until the invocation paused)."""
    if not isinstance(duration, timedelta):
        kind = type(duration).__name__
        raise TerminalError(f"{what} must be a datetime.timedelta, not {kind}", 400)
    due = (time.time() if now is None else now) + max(duration.total_seconds(), 0.0)
    if due > _LATEST:
        raise TerminalError(f"{what} ({duration}) ends after the year 9999", 400)
    return due


def described(error: BaseException) -> str:
    """An attempt's error as its status and retry log show it: its type and message (an
    error whose ``__str__`` itself raises is named by its type: raising here, the attempt's
    task ended with the invocation running, and an object's key held for good)."""
    try:
        message = str(error)
    except Exception:
        message = "(its message could not be read)"
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def failure_of(error: TerminalError) -> Failure:
    """The failure a ``TerminalError`` ends its invocation (or a ``ctx.run`` entry) with: a
    500 when it carries no status code and message Kourier can write (a subclass that set
    them otherwise)."""
    try:
        return Failure(code=error.status_code, message=error.message)
    except Exception:  # ValidationError, AttributeError: see described
        return Failure(code=500, message=f"an unreadable TerminalError: {described(error)}")
