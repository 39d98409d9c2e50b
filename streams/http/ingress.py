"""The HTTP ingress, wire-compatible with Restate's: calls and sends become Kafka records.

Served with aiohttp: an asyncio server with a C HTTP parser, sharing one event
loop with the Kafka client, and already a dependency of faust-streaming.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from pydantic import JsonValue, ValidationError

from handlers.exceptions import TerminalError
from streams import tracing
from streams.client import Client, ClientClosed, KafkaUnavailable, ServiceInfo
from streams.errors import KourierError, ServeError
from streams.http import bulk
from streams.http.index import InvocationIndex
from streams.metrics import DEADLOCKS, labelled
from streams.settings import Settings, short_duration
from streams.wire import ids
from streams.wire.records import LAST_DUE, Response, Target, idempotency_key_refusal

log = logging.getLogger("kourier.ingress")

REQUESTS = Counter(
    "kourier_ingress_requests_total", "HTTP requests by kind and status", ["kind", "status"]
)
LATENCY = Histogram(
    "kourier_ingress_request_seconds",
    "HTTP request latency, from request to response",
    ["kind"],
    buckets=(0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1, 2, 5, 10),
)

IN_FLIGHT = Gauge(
    "kourier_ingress_in_flight", "HTTP calls and sends waiting for Kafka or for an outcome"
)

#: Headers that describe the HTTP exchange itself and are not passed to handlers.
_HOP_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "accept-encoding",
        "accept",
        "user-agent",
        "idempotency-key",
        "expect",
    }
)
_ISO_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)
_NOT_INDEXED = (
    "invocation {} is not known to the admin index: it never existed, it completed and was "
    "not retained, or it started and completed between two commits of its worker"
)


class HttpError(KourierError):
    """A request answered with ``status`` and a JSON error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"code": status, "message": message}, status=status, headers=headers)


def outcome_response(outcome: Response, headers: dict[str, str] | None = None) -> web.Response:
    """An invocation's outcome as HTTP: 200 with the JSON value, or the failure's code."""
    if outcome.failure is not None:
        return error_response(outcome.failure.code, outcome.failure.message, headers)
    body = json.dumps(outcome.value).encode()
    return web.Response(body=body, status=200, content_type="application/json", headers=headers)


def parse_duration(text: str) -> timedelta:
    """``500ms``, ``5s``, ``10m``, ``1h``, ``2d`` or ISO-8601 ``PT5S``, due at a time a
    datetime can hold."""
    try:
        duration = short_duration(text)
        iso = _ISO_DURATION.match(text)
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


def segments_of(raw_path: str) -> list[str]:
    """A URL path's segments, each percent-decoded on its own, so that a key may hold a
    slash (``/Counter/a%2Fb/add`` is key ``a/b``)."""
    return [unquote(s) for s in raw_path.split("/") if s]


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
        raise HttpError(404, "no service in the path")
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
        raise HttpError(404, f"{info.name} has no handler {handler!r}")
    return Route(_target(info.name, key, handler), mode)


def _target(service: str, key: str | None, handler: str) -> Target:
    try:
        return Target(service=service, key=key, handler=handler)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "target"
        raise HttpError(400, f"bad {where}: {first['msg']}") from None


class Ingress:
    """``kourier ingress``: HTTP calls and sends on ``port``; health and metrics on both ports."""

    def __init__(
        self,
        settings: Settings,
        *,
        max_body: int = 900 * 1024,
        max_in_flight: int = 20_000,
    ) -> None:
        self.settings = settings
        self.client = Client(settings)
        self.index = InvocationIndex(settings)
        self.max_body = max_body
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.denied_headers = settings.header_denylist
        self.call_timeout = settings.call_timeout.total_seconds()

    async def start(self) -> None:
        await self.client.start()
        try:
            await self.client.catalog()
            await asyncio.to_thread(self.index.start)
        except BaseException:  # close what started: no caller closes an ingress that did not
            try:
                await asyncio.to_thread(self.index.close)  # after its start, even a cancelled one
            finally:
                await self.client.close()
            raise
        self._watch = asyncio.create_task(self._watch_deadlocks())

    async def _watch_deadlocks(self) -> None:
        """Every second: the deadlock gauge, and a log line for each new cycle."""
        known: set[frozenset[str]] = set()
        while True:
            await asyncio.sleep(1.0)
            cycles = await asyncio.to_thread(self.index.deadlocks)
            DEADLOCKS.set(len(cycles))
            now = {frozenset(m["id"] for m in cycle["members"]) for cycle in cycles}
            for cycle in cycles:
                if frozenset(m["id"] for m in cycle["members"]) not in known:
                    chain = " -> ".join(f"{m['target']} ({m['id']})" for m in cycle["members"])
                    log.warning("deadlock: %s; cancel any member to break it", chain)
            known = now

    async def close(self) -> None:
        self._watch.cancel()
        await asyncio.to_thread(self.index.close)
        await self.client.close()

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.max_body, middlewares=[json_errors, bearer(self.settings.token)]
        )
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/restate/{verb:attach|output}/{id}", self.attach)
        app.router.add_get("/restate/invocation/{rest:.+}/{verb:attach|output}", self.attach)
        app.router.add_get("/restate/workflow/{service}/{key}/{verb:attach|output}", self.attach)
        app.router.add_post("/{path:.*}", self.invoke)
        return app

    def admin_app(self) -> web.Application:
        app = web.Application(middlewares=[json_errors, bearer(self.settings.token)])
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/services", self.list_services)
        app.router.add_get("/invocations", self.list_invocations)
        app.router.add_get("/invocations/{id}", self.describe_invocation)
        app.router.add_patch("/invocations/{id}/{action}", self.control_invocation)
        app.router.add_post("/invocations/{action}", self.bulk_control)
        app.router.add_get("/state/{service}/{key}", self.object_state)
        app.router.add_get("/deadlocks", self.list_deadlocks)
        app.router.add_get("/ui", ui_page)
        app.router.add_get("/ui/", ui_page)
        app.router.add_get("/", to_ui)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "services": sorted(self.client.services)})

    async def list_services(self, request: web.Request) -> web.Response:
        return web.json_response([s.model_dump() for s in self.client.services.values()])

    async def attach(self, request: web.Request) -> web.Response:
        """Attach (wait) or output (now, 470 while running), by invocation id, by
        idempotency key (``/restate/invocation/Svc[/key]/handler/idemKey/...``) or for a
        workflow (``/restate/workflow/Wf/id/...``)."""
        info = request.match_info
        wait = info["verb"] == "attach"
        try:
            if "service" in info:
                target = self._workflow_run(info["service"], info["key"])
                outcome = await self.client.attach_response(target=target, wait=wait)
            else:
                if "rest" in info:  # "", "restate", "invocation", <rest>..., <verb>, as sent
                    sent = request.rel_url.raw_path.split("/")[3:-1]
                    segments = [unquote(s) for s in sent]  # empty ones kept: a 400 each
                else:
                    segments = [info["id"]]
                if len(segments) == 1:
                    inv_id = ids.validate(segments[0])
                    outcome = await self.client.attach_response(inv_id, wait=wait)
                else:
                    target, idempotency_key = self._idempotent_target(segments)
                    outcome = await self.client.attach_response(
                        target=target, idempotency_key=idempotency_key, wait=wait
                    )
        except ids.InvalidId as error:
            return error_response(400, str(error))
        except HttpError as error:
            return error_response(error.status, error.message)
        except KafkaUnavailable as error:
            return error_response(503, str(error))
        except ClientClosed as error:
            return error_response(504, str(error))
        return outcome_response(outcome)

    def _workflow_run(self, service: str, key: str) -> Target:
        info = self.client.services.get(service)
        if info is None or info.kind != "workflow":
            raise HttpError(404, f"unknown workflow {service!r}")
        run = next((h for h in info.handlers if info.handler_kind(h) == "workflow"), None)
        if run is None:
            raise HttpError(404, f"workflow {service!r} has no run handler")
        return _target(service, key, run)

    def _idempotent_target(self, segments: list[str]) -> tuple[Target, str]:
        """``Svc/handler/idemKey`` or ``Obj/key/handler/idemKey``."""
        info = self.client.services.get(segments[0])
        if info is None:
            raise HttpError(404, f"unknown service {segments[0]!r}")
        expected = 3 if info.kind == "service" else 4
        if len(segments) != expected:
            shape = "Svc/handler/idempotencyKey" if expected == 3 else "Obj/key/handler/key"
            raise HttpError(400, f"bad path: use /restate/invocation/{shape}/attach|output")
        key = segments[1] if expected == 4 else None
        if info.handler_kind(segments[-2]) is None:
            raise HttpError(404, f"{info.name} has no handler {segments[-2]!r}")
        return _target(info.name, key, segments[-2]), _idempotency_key(segments[-1])

    # -- admin ----------------------------------------------------------------------------

    async def list_invocations(self, request: web.Request) -> web.Response:
        """``GET /invocations?status=&service=&key=&limit=``: newest first; an unknown
        status or a negative limit is a 400, not an empty list."""
        query = request.query
        try:
            limit = int(query.get("limit", "100"))
        except ValueError:
            return error_response(400, "limit must be an integer")
        if limit < 0:
            return error_response(400, "limit must be 0 or more")
        try:
            status = bulk.known_status(query.get("status") or None)
        except bulk.BulkRefused as refused:
            return error_response(refused.status, refused.message)
        # The index's reads run off the loop: the index holds their lock while it applies a
        # batch of records, and calls and sends share this loop.
        rows = await asyncio.to_thread(
            self.index.query,
            status=status,
            service=query.get("service") or None,
            key=query.get("key") or None,
            limit=limit,
        )
        return web.json_response({"invocations": rows, "caught_up": self.index.caught_up()})

    async def describe_invocation(self, request: web.Request) -> web.Response:
        inv_id = request.match_info["id"]
        try:
            ids.validate(inv_id)
        except ids.InvalidId as error:
            return error_response(400, str(error))
        detail = await asyncio.to_thread(self.index.describe, inv_id)
        if detail is None:
            return error_response(404, _NOT_INDEXED.format(inv_id))
        return web.json_response(detail)

    async def control_invocation(self, request: web.Request) -> web.Response:
        """``PATCH /invocations/{id}/cancel|kill|purge|resume``: 200 done, 202 accepted
        (a cancel reaches a running handler at its next await), 404, 409."""
        inv_id, action = request.match_info["id"], request.match_info["action"]
        if action not in bulk.ACTIONS:
            return error_response(404, f"no action {action!r}: use {', '.join(bulk.ACTIONS)}")
        code, body = await bulk.control_one(self.client, action, inv_id)
        return web.json_response(body, status=code)

    async def bulk_control(self, request: web.Request) -> web.Response:
        """``POST /invocations/{action}?status=&service=&key=&dry_run=``: see ``bulk.py``."""
        return await bulk.bulk_control(request, self.index.matching, self.client)

    async def list_deadlocks(self, request: web.Request) -> web.Response:
        """``GET /deadlocks``: wait-for cycles between invocations, each with its members."""
        return web.json_response({"deadlocks": await asyncio.to_thread(self.index.deadlocks)})

    async def object_state(self, request: web.Request) -> web.Response:
        service, key = request.match_info["service"], request.match_info["key"]
        state = await asyncio.to_thread(self.index.state_of, service, key)
        if not state and service not in self.client.services:  # a typo, not an empty state
            return error_response(404, f"unknown service {service!r}")
        return web.json_response(state)

    async def invoke(self, request: web.Request) -> web.Response:
        """A call or send, as one span that continues the caller's W3C ``traceparent``; the
        record it produces carries this span's context to the worker."""
        with tracing.span(
            f"{request.method} {request.path}",
            context=propagate.extract(request.headers),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method, "url.path": request.path},
        ) as span:
            response = await self._answer(request)
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(StatusCode.ERROR)
            return response

    async def _answer(self, request: web.Request) -> web.Response:
        began = time.perf_counter()
        kind = "call"
        try:
            target_route = route(request.rel_url.raw_path, self.client.services)
            kind = target_route.mode
            response = await self._invoke(request, target_route)
        except HttpError as error:
            response = error_response(error.status, error.message)
        except web.HTTPRequestEntityTooLarge:
            response = error_response(413, f"body larger than {self.max_body} bytes")
        except KafkaUnavailable as error:
            response = error_response(503, str(error))
        except ClientClosed as error:  # shutting down: the record may be on Kafka, unlike a 503
            response = error_response(504, f"{error}; the invocation may go on: attach to it")
        except TerminalError as error:
            response = error_response(error.status_code, error.message)
        labelled(REQUESTS, kind, str(response.status)).inc()
        labelled(LATENCY, kind).observe(time.perf_counter() - began)
        return response

    async def _invoke(self, request: web.Request, target_route: Route) -> web.Response:
        delay_text = request.query.get("delay")
        delay = None if delay_text is None else parse_duration(delay_text)  # "" is a 400
        if delay is not None and target_route.mode == "call":
            raise HttpError(400, "?delay= is only allowed on sends")
        argument = await _read_json(request, self.max_body)
        given_key = request.headers.get("idempotency-key")
        idempotency_key = None if given_key is None else _idempotency_key(given_key)
        headers = {
            name: _utf8(value, name)
            for name, value in ((k.lower(), v) for k, v in request.headers.items())
            if name not in _HOP_HEADERS and name not in self.denied_headers
        }
        if self.in_flight >= self.max_in_flight:
            raise HttpError(429, "too many requests in flight; retry later")
        # Whatever ends this request (an outcome, the call timeout, the client hanging up,
        # which cancels this handler) frees its slot and its pending response.
        self.in_flight += 1
        IN_FLIGHT.inc()
        try:
            target = target_route.target
            inv_id = self.client.invocation_id_for(target, idempotency_key)
            if target_route.mode == "send":
                # A send that may meet an earlier one waits for a worker's receipt, and any
                # send waits for Kafka: both within the call timeout, like a call.
                send = self.client.send_to(
                    target,
                    argument,
                    delay=delay,
                    idempotency_key=idempotency_key,
                    headers=headers,
                    invocation_id=inv_id,
                )
                try:
                    receipt = await asyncio.wait_for(send, self.call_timeout)
                except TimeoutError:
                    message = (
                        f"no receipt within {self.call_timeout:g}s; send {inv_id} may yet be "
                        f"accepted: attach to it (GET /restate/attach/{inv_id}) to know"
                    )
                    return error_response(408, message, {"x-restate-id": inv_id})
                body = {"invocationId": receipt.invocation_id, "status": receipt.status}
                return web.json_response(body, status=202)
            call = self.client.call(
                target,
                argument,
                idempotency_key=idempotency_key,
                headers=headers,
                invocation_id=inv_id,
            )
            try:
                inv_id, outcome = await asyncio.wait_for(call, self.call_timeout)
            except TimeoutError:
                message = (
                    f"no outcome within {self.call_timeout:g}s; invocation {inv_id} goes on: "
                    f"attach to it (GET /restate/attach/{inv_id}) for its outcome"
                )
                return error_response(408, message, {"x-restate-id": inv_id})
        finally:
            self.in_flight -= 1
            IN_FLIGHT.dec()
        id_header = {"x-restate-id": inv_id}
        return outcome_response(outcome, id_header)


#: Routes served without a token, by method and path: liveness for orchestrators, and the
#: UI's static page (it holds no data; it asks for the token and sends it with every API
#: request). Anything else, such as ``POST /health`` to a service named ``health``, needs it.
_OPEN_ROUTES = frozenset(
    (method, path) for method in ("GET", "HEAD") for path in ("/health", "/ui", "/ui/", "/")
)


def bearer(token: str | None) -> Any:
    """Require ``Authorization: Bearer <token>`` when a token is configured (401 otherwise)."""
    expected = f"Bearer {token}".encode() if token else None

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        if expected is not None and (request.method, request.path) not in _OPEN_ROUTES:
            # aiohttp keeps bytes that are not UTF-8 as surrogates: such a header is no token
            given = request.headers.get("authorization", "").encode(errors="surrogateescape")
            if not hmac.compare_digest(given, expected):
                return error_response(
                    401, "missing or wrong bearer token", {"www-authenticate": "Bearer"}
                )
        response: web.StreamResponse = await handler(request)
        return response

    return check


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own errors (404 route, 405 method, ...) and a body that does not decompress
    as JSON 4xx bodies, like ours; anything unforeseen as a logged 500 JSON (a bug, but never
    a text page)."""
    response = await _answered(request, handler)
    if isinstance(request.content.exception(), web.RequestPayloadError):
        # A body that does not decompress: aiohttp closes the connection after this answer
        # (see _BadBodies), so the answer says so, when the body has come in by now.
        response.force_close()
    return response


async def _answered(request: web.Request, handler: Any) -> web.StreamResponse:
    """The handler's answer, with every error turned into one (see :func:`json_errors`)."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return error_response(
            error.status,
            error.reason,
            {"allow": error.headers.get("allow", "")} if error.status == 405 else None,
        )
    except web.RequestPayloadError as error:  # a body that does not decompress as it says
        return error_response(400, f"the body could not be read: {_reason(error)}")
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal error; the ingress log has the details")


def _idempotency_key(text: str) -> str:
    """A key as given (header or attach path), or a 400 saying why no record can carry it."""
    refusal = idempotency_key_refusal(text)
    if refusal is not None:
        raise HttpError(400, refusal)
    return _utf8(text, "idempotency-key")


def _utf8(value: str, header: str) -> str:
    """``value`` if it is UTF-8 as sent. aiohttp decodes other header bytes to lone
    surrogates, which no record can carry: refused here, naming the header. (A key from a
    path cannot hold one: an invalid escape decodes to U+FFFD.)"""
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise HttpError(400, f"header {header!r} is not UTF-8") from None
    return value


def _reason(error: Exception) -> str:
    lines = str(error).strip().splitlines()  # aiohttp's "400, message:", then the reason
    return lines[-1].strip() if lines else "it ended early"


class _BadBodies(logging.Filter):
    """After answering, aiohttp reads whatever is left of a request's body, and logs a body
    that does not decompress as its content-encoding says as an unhandled error with a
    traceback, whether or not the request was answered from its body (a 401, a 404); a
    ``deflate`` body that ends early is logged the same way by its parser. Either is a
    client's mistake, answered with a 4xx: one line at INFO instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, (web.RequestPayloadError, ContentEncodingError)):
            log.info("a request's body could not be read: %s", _reason(error))
            return False
        return True


_BAD_BODIES = _BadBodies()


#: The longest request line taken. A key may be 4,096 characters, and each UTF-8 byte of it
#: takes three in the path (``%F0``): aiohttp's default of 8,190 bytes refused keys of as
#: few as 683 characters with a plain-text 400 before Kourier saw them.
_MAX_REQUEST_LINE = 64 * 1024


def app_runner(app: web.Application) -> web.AppRunner:
    """A runner for an ingress or admin app. A client that hangs up cancels its request's
    handler, so a call nobody waits for any more frees its slot and its pending response."""
    server_log = logging.getLogger("aiohttp.server")
    if _BAD_BODIES not in server_log.filters:
        server_log.addFilter(_BAD_BODIES)
    return web.AppRunner(
        app, access_log=None, handler_cancellation=True, max_line_size=_MAX_REQUEST_LINE
    )


#: A body deeper than the JSON parser goes. One it parses may still be too deep for a
#: record: the client refuses that one with the same words (``Client._produce``).
_TOO_DEEP = "body is JSON nested deeper than a record can carry"


async def _read_json(request: web.Request, max_body: int) -> JsonValue:
    if request.content_length is not None and request.content_length > max_body:
        raise HttpError(413, f"body larger than {max_body} bytes")
    body = await request.read()
    if not body:
        return None
    content_type = request.headers.get("content-type", "application/json").lower()
    if "json" not in content_type:
        raise HttpError(415, f"content-type {content_type!r} is not JSON")
    try:
        value: JsonValue = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HttpError(400, f"body is not valid JSON: {error}") from None
    except RecursionError:  # deeper than Python's parser goes
        raise HttpError(400, _TOO_DEEP) from None
    return value


_UI = Path(__file__).with_name("ui") / "index.html"


async def to_ui(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui")


async def ui_page(request: web.Request) -> web.Response:
    """The web UI: one static page that talks to this admin API."""
    return web.Response(body=_UI.read_bytes(), content_type="text/html")


async def metrics(request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


async def serve(
    settings: Settings, *, host: str = "127.0.0.1", port: int = 8080, admin_port: int = 9070
) -> tuple[Ingress, list[web.AppRunner]]:
    """Start the ingress and its admin server; returns them for a clean shutdown."""
    log.info("settings: %s", settings.redacted())
    ingress = Ingress(settings)
    await ingress.start()
    runners: list[web.AppRunner] = []
    try:
        for app, bind_port in ((ingress.app(), port), (ingress.admin_app(), admin_port)):
            runner = app_runner(app)
            runners.append(runner)
            await runner.setup()
            try:
                await web.TCPSite(runner, host, bind_port).start()
            except OSError as error:
                raise ServeError(host, bind_port, error) from None
    except BaseException:  # close what started: the caller gets nothing to close
        for runner in runners:
            await runner.cleanup()
        await ingress.close()
        raise
    log.info("ingress on http://%s:%d, admin on http://%s:%d", host, port, host, admin_port)
    return ingress, runners
