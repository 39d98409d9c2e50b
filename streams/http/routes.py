"""What the HTTP ingress reads of a request: the path's target and mode (both of
Restate's URL families), a delay, an idempotency key, header values and the JSON body,
each refused with the 4xx that says why (``HttpError``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from urllib.parse import unquote

from aiohttp import web
from pydantic import JsonValue, ValidationError

from streams.client import ServiceInfo
from streams.http.shared import HttpError
from streams.settings import short_duration
from streams.wire.records import (
    LAST_DUE,
    Target,
    first_problem,
    idempotency_key_refusal,
    load_json,
)

_ISO_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> timedelta:
    """``500ms``, ``5s``, ``10m``, ``1h``, ``2d`` or ISO-8601 ``PT5S``, due at a time a
    datetime can hold."""
    try:
        duration = short_duration(text)
        iso = _ISO_DURATION.fullmatch(text)
        if duration is None and iso and text not in ("P", "PT") and not text.endswith("T"):
            parts = {k: float(v) for k, v in iso.groupdict().items() if v}
            duration = timedelta(
                days=parts.get("d", 0),
                hours=parts.get("h", 0),
                minutes=parts.get("m", 0),
                seconds=parts.get("s", 0),
            )
        if duration is not None:
            if datetime.now(UTC) + duration > LAST_DUE:  # OverflowError past the year 9999
                raise OverflowError
            return duration
    except OverflowError:
        raise HttpError(400, f"delay {text!r} ends after the year 9999") from None
    raise HttpError(400, f"invalid delay {text!r}: use 500ms, 5s, 10m, 1h or ISO-8601 like PT5S")


@dataclass(frozen=True)
class Route:
    target: Target
    mode: Literal["call", "send"]

    def template(self) -> str:
        """The path without its key, as a span is named: ``/Counter/{key}/add/send``."""
        target = self.target
        key = "/{key}" if target.key is not None else ""
        send = "/send" if self.mode == "send" else ""
        return f"/{target.service}{key}/{target.handler}{send}"


#: The 404 of a path that names no service: no catalog, however fresh, has a route for it.
NO_SERVICE = "no service in the path"

#: Where a request keeps its route, once found (``Ingress.invoke`` names its span by it).
ROUTED = web.RequestKey("kourier.route", Route)


def segments_of(raw_path: str) -> list[str]:
    """A URL path's segments, each percent-decoded on its own, so that a key may hold a
    slash (``/Counter/a%2Fb/add`` is key ``a/b``)."""
    return [decoded(s) for s in raw_path.split("/") if s]


def decoded(segment: str) -> str:
    """A path segment percent-decoded, or a 400 when its bytes are not UTF-8: replaced by
    U+FFFD, two keys that differ only there would name one object."""
    try:
        return unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise HttpError(400, f"path segment {segment!r} is not UTF-8 once decoded") from None


def route(raw_path: str, services: dict[str, ServiceInfo]) -> Route:
    """Map a URL path, as sent, to a target: both of Restate's URL families."""
    segments = segments_of(raw_path)
    mode: Literal["call", "send"] = "call"
    if len(segments) >= 2 and segments[0] == "restate" and segments[1] in ("call", "send"):
        mode = "call" if segments[1] == "call" else "send"
        segments = segments[2:]
        suffixed = False
    else:
        suffixed = True
    if not segments:
        raise HttpError(404, NO_SERVICE)
    info = services.get(segments[0])
    if info is None:
        raise HttpError(404, f"unknown service {segments[0]!r}")
    expected = 3 if info.kind != "service" else 2
    if suffixed and len(segments) == expected + 1 and segments[-1] == "send":
        mode = "send"
        segments = segments[:-1]
    if len(segments) != expected:
        shape = "/Service/handler" if expected == 2 else f"/{info.kind.title()}/key/handler"
        kind = f"an {info.kind}" if info.kind == "object" else f"a {info.kind}"
        path = unquote(raw_path)
        raise HttpError(400, f"bad path {path!r}: {info.name} is {kind}, use {shape}")
    key = segments[1] if expected == 3 else None
    handler = segments[-1]
    if info.handler_kind(handler) is None:
        if suffixed and handler == "send" and expected == 3:  # /Object/handler/send: no key
            kind = f"an {info.kind}" if info.kind == "object" else f"a {info.kind}"
            shape = f"/{info.kind.title()}/key/handler/send"
            raise HttpError(
                400, f"bad path {unquote(raw_path)!r}: {info.name} is {kind}, use {shape}"
            )
        raise HttpError(404, f"{info.name} has no handler {handler!r}")
    return Route(target_of(info.name, key, handler), mode)


def target_of(service: str, key: str | None, handler: str) -> Target:
    try:
        return Target(service=service, key=key, handler=handler)
    except ValidationError as error:
        raise HttpError(400, f"bad {first_problem(error, 'target')}") from None


def idempotency_key_of(text: str) -> str:
    """A key as given (header or attach path), or a 400 saying why no record can carry it."""
    refusal = idempotency_key_refusal(text)
    if refusal is not None:
        raise HttpError(400, refusal)
    return utf8(text, "idempotency-key")


def utf8(value: str, header: str) -> str:
    """``value`` if it is UTF-8 as sent. aiohttp decodes other header bytes to lone
    surrogates, which no record can carry: refused here, naming the header. (A key from a
    path cannot hold one: :func:`decoded` refuses what is not UTF-8.)"""
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise HttpError(400, f"header {header!r} is not UTF-8") from None
    return value


#: A body deeper than the JSON parser goes. One it parses may still be too deep for a
#: record: the client refuses that one with the same words (``Client._produce``).
_TOO_DEEP = "body is JSON nested deeper than a record can carry"


def is_json(media_type: str) -> bool:
    """``application/json``, ``text/json`` or a ``+json`` type such as
    ``application/vnd.api+json`` (``media_type`` as aiohttp parses it: lower case, no
    parameters)."""
    return media_type in ("application/json", "text/json") or media_type.endswith("+json")


async def read_json(request: web.Request, max_body: int) -> JsonValue:
    if request.content_length is not None and request.content_length > max_body:
        raise HttpError(413, f"body larger than {max_body} bytes")
    body = await request.read()
    if not body:
        return None  # whatever its type says (curl -d '' sends a form's)
    given = request.headers.get("content-type")
    if given is not None and not is_json(request.content_type):  # the type, not a word in it
        raise HttpError(415, f"content-type {given.lower()!r} is not JSON")
    try:
        value: JsonValue = load_json(body)
    except ValueError as error:  # not JSON, not UTF-8, NaN, an integer of 5,000 digits, ...
        raise HttpError(400, f"body is not valid JSON: {error}") from None
    except RecursionError:  # deeper than Python's parser goes
        raise HttpError(400, _TOO_DEEP) from None
    return value
