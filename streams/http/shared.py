"""What Kourier's two HTTP apps share (the ingress, ``streams.http.ingress``, and the admin
API, ``streams.http.admin``): JSON error bodies for every error, the bearer token, the
Prometheus exposition (one registry, on both ports), and the runner that serves an app."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import socket
from collections.abc import Collection
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.errors import KourierError

log = logging.getLogger("kourier.ingress")


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


#: Routes served without a token, by method and path: liveness for orchestrators, and on
#: the admin port the UI's static page (it holds no data; it asks for the token and sends
#: it with every API request). Anything else, such as ``POST /health`` to a service named
#: ``health``, needs it; on the ingress ``GET /`` and ``GET /ui`` too (its 404 asks Kafka).
LIVENESS = frozenset((method, "/health") for method in ("GET", "HEAD"))
ADMIN_OPEN = LIVENESS | {
    (method, path) for method in ("GET", "HEAD") for path in ("/ui", "/ui/", "/")
}


@web.middleware
async def same_origin(request: web.Request, handler: Any) -> web.StreamResponse:
    """Refuse (403) a request that would change something when a browser says another site
    sent it. A form or ``fetch(..., {mode: "no-cors"})`` on any web page can POST to the
    admin API on an operator's machine without a preflight, and with no token configured
    nothing else stops it; the UI (same origin), the CLI and scripts are not refused.

    A browser's ``Sec-Fetch-Site`` decides when it is sent: it names the page's site as the
    browser sees it, which a reverse proxy in front (one that rewrites ``Host``) does not
    change. Browsers without it send ``Origin``, compared with ``Host`` and, behind a proxy,
    ``X-Forwarded-Host``. (DNS rebinding gets past both: see :func:`local_names`.)"""
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        site = request.headers.get("sec-fetch-site")
        origin = request.headers.get("origin")
        if site is not None:
            foreign = site not in ("same-origin", "none")
        elif origin is not None:
            given = origin.split("://", 1)[-1].lower()
            hosts = {request.host, request.headers.get("x-forwarded-host", "")}
            foreign = given not in {h.lower() for h in hosts if h}
        else:
            foreign = False  # not a browser's request
        if foreign:
            return error_response(
                403, f"a request from another origin ({origin or site}) may not change anything"
            )
    response: web.StreamResponse = await handler(request)
    return response


async def no_store(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer is as of now and may hold state or arguments: a browser, or a proxy
    between, keeps none of them (an app's ``on_response_prepare``), errors included."""
    response.headers.setdefault("Cache-Control", "no-store")


#: Names a client on this machine reaches a loopback address by, besides loopback IPs and
#: ``*.localhost`` (RFC 6761): the unspecified address, which Kourier prints when bound to
#: it, and the machine's own name (Debian points it at 127.0.1.1). A page on another site
#: can be given none of them by its DNS.
_LOOPBACK_NAMES = frozenset({"localhost", "0.0.0.0", "::", socket.gethostname().lower()})


def local_names(allowed: Collection[str] = ()) -> Any:
    """Refuse (403) a request that reached this server on a loopback address under a
    ``Host`` that is not a loopback name or address, nor one of ``allowed``
    (``KOURIER_ALLOWED_HOSTS``). A web page whose own name its DNS points at 127.0.0.1
    after the page loaded (DNS rebinding) is the same origin as this server to the browser,
    which sends it every request and reads every answer (:func:`same_origin` cannot tell);
    only the name it asks for gives it away. What counts is the address a connection came
    in on, whatever the server is bound to: requests on other addresses are not looked at,
    as a server reached beyond loopback answers to whatever names its network gives it."""
    names = _LOOPBACK_NAMES | {_hostname(name) for name in allowed}

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        local = request.transport.get_extra_info("sockname") if request.transport else None
        if local and _loopback(str(local[0])):
            name = _hostname(request.host)
            if name not in names and not name.endswith(".localhost") and not _loopback(name):
                return error_response(
                    403,
                    f"this server is on a loopback address, and {request.host!r} is not a "
                    "name of it (a page whose name was pointed at 127.0.0.1 would use one): "
                    "set KOURIER_ALLOWED_HOSTS to accept it",
                )
        response: web.StreamResponse = await handler(request)
        return response

    return check


def _loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:  # a name
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return (mapped or ip).is_loopback


def _hostname(host: str) -> str:
    """``host`` (a ``Host`` header, or a name allowed) without its port, an IPv6 address's
    brackets or a final dot."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.rpartition(":")[0]
    return host.rstrip(".")


def bearer(token: str | None, open_routes: frozenset[tuple[str, str]] = ADMIN_OPEN) -> Any:
    """Require ``Authorization: Bearer <token>`` (the scheme in any case, RFC 7235) when a
    token is configured, except on ``open_routes`` (401 otherwise)."""
    expected = token.encode() if token else None

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        if expected is not None and (request.method, request.path) not in open_routes:
            # aiohttp keeps bytes that are not UTF-8 as surrogates: such a header is no token
            header = request.headers.get("authorization", "").encode(errors="surrogateescape")
            scheme, _, given = header.strip().partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), expected):
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


class _JsonErrors(RequestHandler):
    """aiohttp's own answers, to requests it refuses before any handler sees them (a
    request line or a header too long, too many headers, a body compressed in a way it
    cannot undo), in the JSON every other error has. Logged, and the connection closed,
    as aiohttp does."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises once answering
        if status >= 500 or not message:  # no traceback, nor aiohttp's words for it
            message = HTTPStatus(status).phrase
        response = error_response(status, message)
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    """The protocol factory a runner serves: its connections answer errors in JSON."""

    def __call__(self) -> RequestHandler:
        return _JsonErrors(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # adds no state: only how connections answer
        return server


#: Seconds a stopping server gives the requests it is serving to end (aiohttp's default is
#: 60); the ingress's client is closed before it, so its calls have answered by then.
SHUTDOWN_GRACE = 10.0


def app_runner(app: web.Application) -> web.AppRunner:
    """A runner for an ingress or admin app. A client that hangs up cancels its request's
    handler, so a call nobody waits for any more frees its slot and its pending response.
    At a stop, a request still served after ``SHUTDOWN_GRACE`` is cancelled."""
    server_log = logging.getLogger("aiohttp.server")
    if _BAD_BODIES not in server_log.filters:
        server_log.addFilter(_BAD_BODIES)
    return _Runner(
        app,
        access_log=None,
        handler_cancellation=True,
        max_line_size=_MAX_REQUEST_LINE,
        shutdown_timeout=SHUTDOWN_GRACE,
    )


async def metrics(request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response
