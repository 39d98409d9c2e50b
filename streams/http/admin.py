"""The admin API, on the ingress's admin port: invocations, their control, object state,
deadlocks, the services, health and metrics, and the web UI (``streams/http/ui``).

Invocations, object state and deadlocks come from the admin index
(``streams.http.index``), which reads the changelogs; the services and health from the
client's service catalog; control (cancel, kill, purge, resume, one or in bulk) goes
through the client as control records (``streams.http.bulk``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
from pathlib import Path

from aiohttp import web

from streams.client import Client
from streams.http import bulk
from streams.http.index import JOURNAL_SHOWN, InvocationIndex
from streams.http.shared import (
    bearer,
    error_response,
    json_errors,
    local_names,
    metrics,
    no_store,
    same_origin,
)
from streams.metrics import DEADLOCKS
from streams.wire import ids

log = logging.getLogger("kourier.ingress")

_NOT_INDEXED = (
    "invocation {} is not known to the admin index: it never existed, it completed and was "
    "not retained, or it started and completed between two commits of its worker"
)
_UI = Path(__file__).with_name("ui") / "index.html"


class AdminApi:
    """The admin port's routes, over the ingress's client and admin index, and the watch
    that logs new deadlocks (:meth:`watch_deadlocks`, a task the ingress starts and stops).
    Its :meth:`health` answers on the ingress's port too."""

    def __init__(
        self,
        client: Client,
        index: InvocationIndex,
        token: str | None,
        allowed_hosts: tuple[str, ...] = (),
    ) -> None:
        self.client = client
        self.index = index
        self.token = token
        self.allowed_hosts = allowed_hosts  # KOURIER_ALLOWED_HOSTS, see local_names

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[json_errors, local_names(self.allowed_hosts), bearer(self.token),
                         same_origin]
        )  # fmt: skip
        app.on_response_prepare.append(no_store)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/services", self.list_services)
        app.router.add_get("/invocations", self.list_invocations)
        app.router.add_get("/invocations/{id}", self.describe_invocation)
        app.router.add_patch("/invocations/{id}/{action}", self.control_invocation)
        app.router.add_post("/invocations/{action}", self.bulk_control)
        app.router.add_get("/state/{service:[^/]+}/{key:[^/]+}", self.object_state)  # {}s too
        app.router.add_get("/state/{service:[^/]+}", self.object_state)  # ?key=: "..", "" too
        app.router.add_get("/deadlocks", self.list_deadlocks)
        app.router.add_get("/ui", ui_page)
        app.router.add_get("/ui/", ui_page)
        app.router.add_get("/", to_ui)
        return app

    async def health(self, request: web.Request) -> web.Response:
        """Liveness, and the services a worker has announced (the ingress's port too); 503
        once the client's producer failed for good, so that whatever watches the process
        restarts it (every call would be a 503 until then)."""
        services = sorted(self.client.services)
        failed = self.client.failed
        if failed is not None:
            body = {"status": "failed", "reason": f"Kafka producer: {failed}", "services": services}
            return web.json_response(body, status=503)
        return web.json_response({"status": "ok", "services": services})

    async def watch_deadlocks(self) -> None:
        """Every second: the deadlock gauge, and a log line for each new cycle."""
        known: set[frozenset[str]] = set()
        failing = False
        while True:
            await asyncio.sleep(1.0)
            try:
                cycles = await asyncio.to_thread(self.index.deadlocks)
            except Exception:  # the watch goes on (the gauge keeps its last value meanwhile)
                if not failing:  # once, not every second
                    log.exception("deadlocks: the admin index cannot be read; trying each second")
                failing = True
                continue
            if failing:
                log.info("deadlocks: the admin index is read again")
                failing = False
            DEADLOCKS.set(len(cycles))
            now = {frozenset(m["id"] for m in cycle["members"]) for cycle in cycles}
            for cycle in cycles:
                if frozenset(m["id"] for m in cycle["members"]) not in known:
                    chain = " -> ".join(f"{m['target']} ({m['id']})" for m in cycle["members"])
                    log.warning("deadlock: %s; cancel any member to break it", chain)
            known = now

    async def list_services(self, request: web.Request) -> web.Response:
        return web.json_response([s.model_dump() for s in self.client.services.values()])

    async def list_invocations(self, request: web.Request) -> web.Response:
        """``GET /invocations?status=&service=&key=&limit=``: newest first; an unknown
        status or a limit out of range is a 400, not an empty list."""
        query = request.query
        try:
            limit = int(query.get("limit", "100"))
        except ValueError:
            return error_response(400, "limit must be an integer")
        if not 0 <= limit <= bulk.MAX_LIMIT:  # past SQLite's integers, the index failed
            return error_response(400, f"limit must be between 0 and {bulk.MAX_LIMIT}")
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
        """``GET /invocations/{id}?journal=N``: its detail, with the last N journal entries
        (``JOURNAL_SHOWN`` by default)."""
        inv_id = request.match_info["id"]
        try:
            ids.validate(inv_id)
        except ids.InvalidId as error:
            return error_response(400, str(error))
        shown = request.query.get("journal", str(JOURNAL_SHOWN))
        if not (shown.isascii() and shown.isdigit() and len(shown) <= 9):
            return error_response(400, "journal must be a count of entries, 0 to 999999999")
        detail = await asyncio.to_thread(self.index.describe, inv_id, int(shown))
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
        return await bulk.bulk_control(
            request, self.index.choose, self.client, ready=self.index.caught_up
        )

    async def list_deadlocks(self, request: web.Request) -> web.Response:
        """``GET /deadlocks``: wait-for cycles between invocations, each with its members."""
        return web.json_response({"deadlocks": await asyncio.to_thread(self.index.deadlocks)})

    async def object_state(self, request: web.Request) -> web.Response:
        """``GET /state/{service}/{key}``, or ``?key=`` for a key no path can hold: one that
        is empty, or ``.`` or ``..``, which a client resolves as a path segment first."""
        service = request.match_info["service"]
        key = request.match_info.get("key", request.query.get("key"))
        if key is None:
            return error_response(400, "name the key: /state/{service}/{key} or ?key=")
        state = await asyncio.to_thread(self.index.state_of, service, key)
        if not state and service not in self.client.services:  # a typo, not an empty state
            return error_response(404, f"unknown service {service!r}")
        return web.json_response(state)


async def to_ui(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui")


async def ui_page(request: web.Request) -> web.Response:
    """The web UI: one static page that talks to this admin API. It may run its own inline
    script and style (by their hashes) and ask this origin, and nothing else; no page of
    another site may frame it, where hidden under decoys its buttons could be clicked."""
    # Line ends as an HTML parser reads them, which is what a browser hashes (a checkout
    # with CRLF line ends would otherwise serve a page whose script no hash allows).
    page = _UI.read_bytes().replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    headers = {"content-security-policy": ui_policy(page), "x-frame-options": "DENY"}
    return web.Response(body=page, content_type="text/html", headers=headers)


def ui_policy(page: bytes) -> str:
    """The Content-Security-Policy of ``page``: its ``<script>`` and ``<style>`` by hash."""
    allowed = {}
    for tag in ("script", "style"):
        found = re.findall(rf"<{tag}(?:\s[^>]*)?>(.*?)</{tag}\s*>".encode(), page, re.DOTALL | re.I)
        allowed[tag] = " ".join(
            f"'sha256-{base64.b64encode(hashlib.sha256(body).digest()).decode()}'" for body in found
        )
    return (
        f"default-src 'none'; script-src {allowed['script']}; style-src {allowed['style']};"
        " connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none';"
        " frame-ancestors 'none'"
    )
