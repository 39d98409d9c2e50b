"""The HTTP ingress, wire-compatible with Restate's: calls and sends become Kafka records.
Its admin port serves the admin API and the UI (``streams.http.admin``).

Served with aiohttp: an asyncio server with a C HTTP parser, sharing one event
loop with the Kafka client, and already a dependency of faust-streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from aiohttp import web
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import Counter, Gauge, Histogram

from handlers.exceptions import TerminalError
from streams import tracing
from streams.client import (
    Client,
    ClientClosed,
    KafkaUnavailable,
    ResponseUnreadable,
    ServiceInfo,
)
from streams.errors import ServeError
from streams.http.admin import AdminApi
from streams.http.index import InvocationIndex
from streams.http.routes import (
    NO_SERVICE,
    ROUTED,
    Route,
    decoded,
    idempotency_key_of,
    parse_duration,
    read_json,
    route,
    target_of,
    utf8,
)
from streams.http.shared import (
    LIVENESS,
    HttpError,
    app_runner,
    bearer,
    error_response,
    json_errors,
    metrics,
    no_store,
    same_origin,
)
from streams.metrics import labelled
from streams.settings import Settings
from streams.wire import ids
from streams.wire.records import (
    Response,
    Target,
)

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
    "kourier_ingress_in_flight",
    "HTTP calls, sends and attaches waiting for Kafka or for an outcome",
)

#: Seconds between two reads of the catalog to its end for a path it does not route, and
#: how long a request waits for one.
CATALOG_REREAD = 1.0
CATALOG_WAIT = 2.0
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


def outcome_response(outcome: Response, headers: dict[str, str] | None = None) -> web.Response:
    """An invocation's outcome as HTTP: 200 with the JSON value, or the failure's code."""
    if outcome.failure is not None:
        return error_response(outcome.failure.code, outcome.failure.message, headers)
    body = json.dumps(outcome.value).encode()
    return web.Response(body=body, status=200, content_type="application/json", headers=headers)


async def _served_otherwise(request: web.Request) -> None:
    """405 (``HTTPMethodNotAllowed``) when another route than the catch-all that took
    ``request`` serves its path with other methods (``/health``, an attach)."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, sorted(allowed))


class Ingress:
    """``kourier ingress``: HTTP calls and sends (:meth:`app`), with the admin API
    (``self.admin``, served on the admin port); health and metrics on both (:func:`serve`)."""

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
        self.admin = AdminApi(self.client, self.index, settings.token, settings.allowed_hosts)
        self.max_body = max_body
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.denied_headers = settings.header_denylist
        self.call_timeout = settings.call_timeout.total_seconds()
        #: The catalog read to its end again (:meth:`route`), and when it was asked.
        self._reread: asyncio.Future[dict[str, ServiceInfo]] | None = None
        self._reread_at = 0.0

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
        self._watch = asyncio.create_task(self.admin.watch_deadlocks())

    async def close(self) -> None:
        self._watch.cancel()
        if self._reread is not None:
            self._reread.cancel()  # its thread ends by its own timeouts
        await asyncio.to_thread(self.index.close)
        await self.client.close()

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.max_body,
            middlewares=[json_errors, bearer(self.settings.token, LIVENESS), same_origin],
        )
        app.on_response_prepare.append(no_store)
        app.router.add_get("/health", self.admin.health)  # the same answer on both ports
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/restate/{verb:attach|output}/{id}", self.attach)
        # Any character, a newline too: an id with one after it is attach's 400, not a 404.
        app.router.add_get(r"/restate/invocation/{rest:[\s\S]+}/{verb:attach|output}", self.attach)
        # [^/]+, not aiohttp's default [^{}/]+: a key may hold braces (it has them decoded).
        workflow = "/restate/workflow/{service:[^/]+}/{key:[^/]+}/{verb:attach|output}"
        app.router.add_get(workflow, self.attach)
        # [\s\S], not ".": aiohttp matches the decoded path, and a key may hold a newline.
        app.router.add_post(r"/{path:[\s\S]*}", self.invoke)
        app.router.add_route("*", r"/{path:[\s\S]*}", self.not_a_call)
        return app

    async def not_a_call(self, request: web.Request) -> web.Response:
        """Any other request: 405 on a path another route serves with other methods
        (``/health``, an attach) and on a handler's (``Allow: POST``), else what a POST
        there would get (404 for an unknown service or handler, 400 for a bad path)."""
        await _served_otherwise(request)
        try:
            await self.route(request.rel_url.raw_path)
        except HttpError as error:
            return error_response(error.status, error.message)
        raise web.HTTPMethodNotAllowed(request.method, ["POST"])

    async def attach(self, request: web.Request) -> web.Response:
        """Attach (wait) or output (now, 470 while running), by invocation id, by
        idempotency key (``/restate/invocation/Svc[/key]/handler/idemKey/...``) or for a
        workflow (``/restate/workflow/Wf/id/...``). An attach waits as long as a call may
        (408 after, attach again), and counts in flight as a call does."""
        info = request.match_info
        wait = info["verb"] == "attach"
        inv_id = ""
        try:
            # The invocation's id, however the path names it (a workflow's run and an
            # idempotency key name one id, which the client derives).
            if "service" in info:  # "", "restate", "workflow", <service>, <id>, <verb>, as sent
                service, key = (decoded(s) for s in request.rel_url.raw_path.split("/")[3:5])
                if service not in self.client.services:  # announced a moment ago, perhaps
                    await self._read_catalog_again()
                inv_id = self.client.invocation_id_for(self._workflow_run(service, key), None)
            else:
                if "rest" in info:  # "", "restate", "invocation", <rest>..., <verb>, as sent
                    sent = request.rel_url.raw_path.split("/")[3:-1]
                    segments = [decoded(s) for s in sent]  # empty ones kept: a 400 each
                else:
                    segments = [info["id"]]
                if len(segments) == 1:
                    inv_id = ids.validate(segments[0])
                else:
                    if segments[0] not in self.client.services:
                        await self._read_catalog_again()
                    target, idempotency_key = self._idempotent_target(segments)
                    inv_id = self.client.invocation_id_for(target, idempotency_key)
            if self.in_flight >= self.max_in_flight:
                raise HttpError(429, "too many requests in flight; retry later")
            self.in_flight += 1
            IN_FLIGHT.inc()
            try:
                asked = self.client.attach_response(inv_id, wait=wait)
                outcome = await asyncio.wait_for(asked, self.call_timeout)
            finally:
                self.in_flight -= 1
                IN_FLIGHT.dec()
        except TimeoutError:
            message = f"no outcome within {self.call_timeout:g}s; attach again"
            return error_response(408, message, {"x-restate-id": inv_id})
        except ids.InvalidId as error:
            return error_response(400, str(error))
        except HttpError as error:
            return error_response(error.status, error.message)
        except KafkaUnavailable as error:
            return error_response(503, str(error))
        except ResponseUnreadable as error:  # the worker answered what this cannot read
            return error_response(502, str(error), {"x-restate-id": inv_id})
        except ClientClosed as error:  # 504 if it may be written, else 503 as Kafka refusing it
            named = {"x-restate-id": inv_id} if inv_id else None  # what to attach to again
            return error_response(504 if error.may_be_written else 503, str(error), named)
        return outcome_response(outcome)

    def _workflow_run(self, service: str, key: str) -> Target:
        info = self.client.services.get(service)
        if info is None or info.kind != "workflow":
            raise HttpError(404, f"unknown workflow {service!r}")
        run = next((h for h in info.handlers if info.handler_kind(h) == "workflow"), None)
        if run is None:
            raise HttpError(404, f"workflow {service!r} has no run handler")
        return target_of(service, key, run)

    def _idempotent_target(self, segments: list[str]) -> tuple[Target, str]:
        """``Svc/handler/idemKey`` or ``Obj/key/handler/idemKey``."""
        if segments[0] == "" or segments[-2] == "":  # no call's path names either empty
            raise HttpError(400, "bad path: a service and a handler are named")
        info = self.client.services.get(segments[0])
        if info is None:
            raise HttpError(404, f"unknown service {segments[0]!r}")
        expected = 3 if info.kind == "service" else 4
        if len(segments) != expected:
            shape = "Svc/handler/idempotencyKey" if expected == 3 else "Obj/key/handler/key"
            raise HttpError(400, f"bad path: use /restate/invocation/{shape}/attach|output")
        key = segments[1] if expected == 4 else None
        if key == "":  # as a call's path cannot name one (its empty segments are dropped)
            raise HttpError(400, f"bad path: {info.name} needs a key")
        if info.handler_kind(segments[-2]) is None:
            raise HttpError(404, f"{info.name} has no handler {segments[-2]!r}")
        return target_of(info.name, key, segments[-2]), idempotency_key_of(segments[-1])

    async def invoke(self, request: web.Request) -> web.Response:
        """A call or send, as one span that continues the caller's W3C ``traceparent``; the
        record it produces carries this span's context to the worker. The span is named by
        the route, without the key (``POST /Counter/{key}/add``), or by the method alone for
        a path that names no handler: span names are few, as OpenTelemetry asks."""
        with tracing.span(
            request.method,
            context=propagate.extract(request.headers),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method, "url.path": request.path},
        ) as span:
            try:
                response = await self._answer(request)
            finally:  # a 400 or 500 raised on to json_errors too
                routed = request.get(ROUTED)
                if routed is not None:
                    span.update_name(f"{request.method} {routed.template()}")
                    span.set_attribute("http.route", routed.template())
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(StatusCode.ERROR)
            return response

    async def _answer(self, request: web.Request) -> web.Response:
        began = time.perf_counter()
        kind = "call"
        try:
            if request.path.startswith("/restate/") or request.path in ("/health", "/metrics"):
                await _served_otherwise(request)  # POST /restate/attach/...: a 405, not a call
            target_route = await self.route(request.rel_url.raw_path)
            request[ROUTED] = target_route  # the span's name
            kind = target_route.mode
            response = await self._invoke(request, target_route)
        except HttpError as error:
            response = error_response(error.status, error.message)
        except web.HTTPRequestEntityTooLarge:
            response = error_response(413, f"body larger than {self.max_body} bytes")
        except KafkaUnavailable as error:
            response = error_response(503, str(error))
        except ResponseUnreadable as error:  # (a call's or send's is answered in _invoke)
            response = error_response(502, str(error))
        except ClientClosed as error:  # (a call that may be written is answered in _invoke)
            if error.may_be_written:
                response = error_response(504, f"{error}; the invocation may go on")
            else:  # closed before anything was written: safe to send again, elsewhere
                response = error_response(503, f"{error}: nothing was written")
        except TerminalError as error:
            response = error_response(error.status_code, error.message)
        except web.HTTPMethodNotAllowed as error:  # raised on, for its Allow header
            labelled(REQUESTS, kind, str(error.status)).inc()
            labelled(LATENCY, kind).observe(time.perf_counter() - began)
            raise
        except asyncio.CancelledError:  # the client hung up (499, as nginx counts it): the
            labelled(REQUESTS, kind, "499").inc()  # slowest calls went missing from both
            labelled(LATENCY, kind).observe(time.perf_counter() - began)
            raise
        except Exception as error:  # json_errors answers: 400 for a body that does not
            bad_body = isinstance(error, web.RequestPayloadError)  # decompress, else 500
            labelled(REQUESTS, kind, "400" if bad_body else "500").inc()
            labelled(LATENCY, kind).observe(time.perf_counter() - began)
            raise
        labelled(REQUESTS, kind, str(response.status)).inc()
        labelled(LATENCY, kind).observe(time.perf_counter() - began)
        return response

    async def route(self, raw_path: str) -> Route:
        """:func:`route` by the catalog as followed; when that finds no such service or
        handler, by the catalog read to its end again: its follower reads with a long fetch
        wait, and a worker that announced a service a moment ago (``kourier dev``, a new
        deployment) would get 404s until then. One read at a time, shared by the requests
        that wait for it, and none within ``CATALOG_REREAD`` of the last."""
        try:
            return route(raw_path, self.client.services)
        except HttpError as error:
            if error.status != 404 or error.message == NO_SERVICE:
                raise
        await self._read_catalog_again()
        return route(raw_path, self.client.services)

    async def _read_catalog_again(self) -> None:
        """Read the catalog to its end (see :meth:`route`), waiting ``CATALOG_WAIT`` at
        most: past that, or when the read fails (Kafka away, a missing ACL), the catalog as
        followed is the answer, and the read, still going, serves the requests after."""
        reread = self._reread
        if reread is None or (
            reread.done() and time.monotonic() - self._reread_at >= CATALOG_REREAD
        ):
            self._reread_at = time.monotonic()
            reread = self._reread = asyncio.ensure_future(self.client.catalog(refresh=True))
            reread.add_done_callback(lambda done: done.cancelled() or done.exception())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(reread), CATALOG_WAIT)

    async def _invoke(self, request: web.Request, target_route: Route) -> web.Response:
        delay_text = request.query.get("delay")
        delay = None if delay_text is None else parse_duration(delay_text)  # "" is a 400
        if delay is not None and target_route.mode == "call":
            raise HttpError(400, "?delay= is only allowed on sends")
        argument = await read_json(request, self.max_body)
        given_key = request.headers.get("idempotency-key")
        idempotency_key = None if given_key is None else idempotency_key_of(given_key)
        headers = {
            name: utf8(value, name)
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
                del argument  # as a call's (below)
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
            del argument  # the call lets go of it once written, and so does this wait
            try:
                inv_id, outcome = await asyncio.wait_for(call, self.call_timeout)
            except TimeoutError:
                message = (
                    f"no outcome within {self.call_timeout:g}s; invocation {inv_id} goes on: "
                    f"attach to it (GET /restate/attach/{inv_id}) for its outcome"
                )
                return error_response(408, message, {"x-restate-id": inv_id})
        except ResponseUnreadable as error:  # the worker answered what this cannot read
            return error_response(502, str(error), {"x-restate-id": inv_id})
        except ClientClosed as error:
            if not error.may_be_written:
                raise  # a 503 (_answer): nothing was written
            message = (
                f"{error}; invocation {inv_id} may go on: attach to it "
                f"(GET /restate/attach/{inv_id}) for its outcome"
            )
            return error_response(504, message, {"x-restate-id": inv_id})
        finally:
            self.in_flight -= 1
            IN_FLIGHT.dec()
        id_header = {"x-restate-id": inv_id}
        return outcome_response(outcome, id_header)


async def serve(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    admin_port: int = 9070,
    admin_host: str | None = None,
) -> tuple[Ingress, list[web.AppRunner]]:
    """Start the ingress and its admin server (on ``admin_host``, by default ``host``);
    returns them for a clean shutdown."""
    admin_host = host if admin_host is None else admin_host
    log.info("settings: %s", settings.redacted())
    ingress = Ingress(settings)
    await ingress.start()
    runners: list[web.AppRunner] = []
    try:
        sites = ((ingress.app(), host, port), (ingress.admin.app(), admin_host, admin_port))
        for app, bind_host, bind_port in sites:
            runner = app_runner(app)
            runners.append(runner)
            await runner.setup()
            try:
                await web.TCPSite(runner, bind_host, bind_port).start()
            except OSError as error:
                raise ServeError(bind_host, bind_port, error) from None
    except BaseException:  # close what started: the caller gets nothing to close
        for runner in runners:
            await runner.cleanup()
        await ingress.close()
        raise
    log.info("ingress on http://%s:%d, admin on http://%s:%d", host, bound_port(runners[0]),
             admin_host, bound_port(runners[1]))  # fmt: skip
    return ingress, runners


async def shut_down(ingress: Ingress, runners: list[web.AppRunner]) -> None:
    """Stop serving in the order that answers every request: the sites stop taking
    connections; the client closes, so a call or attach still waiting answers 504 with its
    invocation id (its caller can attach to it, or retry with an idempotency key) rather
    than have its connection cut; the servers then end, which gives the handlers their
    runner's shutdown timeout to write those answers; the ingress closes the rest."""
    for runner in runners:
        for site in list(runner.sites):
            await site.stop()
    await ingress.client.close()
    for runner in runners:
        await runner.cleanup()
    await ingress.close()


def bound_port(runner: web.AppRunner) -> int:
    """The port ``runner`` listens on: the one the system chose when 0 was asked for."""
    return int(runner.addresses[0][1])
