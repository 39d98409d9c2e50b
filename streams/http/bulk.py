"""Control requests for one invocation, or for every invocation a filter matches.

``PATCH /invocations/{id}/{action}`` acts on one invocation; ``POST /invocations/{action}
?service=&status=&key=`` acts on each invocation the admin index matches, through the same
per-invocation path (one control record each, answered by the owning partition), so a bulk
cancel means exactly what N single cancels mean. ``dry_run=true`` only says what would be
done. A body ``{"ids": [...]}`` narrows the action to invocations a dry run listed, so what
a user confirmed ("Cancel 12 invocations?") is what is acted on, even if more match by then.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, get_args

from aiohttp import web

from handlers.exceptions import TerminalError
from streams.client import Client, ClientClosed, KafkaUnavailable, ResponseUnreadable
from streams.engine.journal import Status
from streams.errors import KourierError
from streams.wire import ids
from streams.wire.records import load_json

ACTIONS = ("cancel", "kill", "purge", "resume")
STATUSES: tuple[str, ...] = get_args(Status)
#: The statuses each action applies to; a bulk action leaves the others alone (a single
#: one would answer them 409), so its count is what it will really act on.
APPLIES_TO: dict[str, frozenset[str]] = {
    "cancel": frozenset(STATUSES) - {"completed"},
    "kill": frozenset(STATUSES) - {"completed"},
    "purge": frozenset({"completed"}),
    "resume": frozenset({"paused"}),
}
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
#: Control requests in flight at once for one bulk action.
CONCURRENCY = 32
#: How long one control waits for its partition's answer (a partition without an owner
#: answers when a worker takes it over).
CONTROL_TIMEOUT = 30.0

log = logging.getLogger("kourier.ingress")
#: Bulk actions under way whose requester may have gone: held here, as the loop holds its
#: tasks only weakly.
_GOING: set[asyncio.Task[dict[str, Any]]] = set()


class BulkRefused(KourierError):
    """A bulk request that cannot be run as asked: answered ``status`` with the reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class BulkRequest:
    """What a bulk action acts on: a filter, at most ``limit`` invocations, and optionally
    only the ``ids`` a dry run listed."""

    action: str
    status: str | None = None
    service: str | None = None
    key: str | None = None
    dry_run: bool = False
    limit: int = DEFAULT_LIMIT
    ids: frozenset[str] | None = None

    def filter(self) -> dict[str, str]:
        found = {"status": self.status, "service": self.service, "key": self.key}
        return {name: value for name, value in found.items() if value}


def parse_bulk(action: str, query: Mapping[str, str], body: Any = None) -> BulkRequest:
    """A bulk request from the URL's action and query (and the JSON body, if any).

    A filter is required: an action on every invocation of a namespace is not one a typo
    or an empty form should start. The status must be one the index knows
    (:func:`known_status`), so a misspelt one is a 400, not a silent "0 matched".
    """
    if action not in ACTIONS:
        raise BulkRefused(404, f"no action {action!r}: use {', '.join(ACTIONS)}")
    status = known_status(query.get("status") or None)
    service, key = query.get("service") or None, query.get("key") or None
    if status is None and service is None and key is None:
        raise BulkRefused(400, f"bulk {action} needs a filter: status, service or key")
    dry_run = _flag(query.get("dry_run", ""), "dry_run")
    try:
        limit = int(query.get("limit", str(DEFAULT_LIMIT)))
    except ValueError:
        raise BulkRefused(400, "limit must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BulkRefused(400, f"limit must be between 1 and {MAX_LIMIT}")
    chosen: frozenset[str] | None = None
    if body is not None:
        given = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(given, list) or not all(isinstance(i, str) for i in given):
            raise BulkRefused(400, 'the body, when given, is {"ids": ["inv_...", ...]}')
        wrong = next((i for i in given if not ids.is_id(i)), None)
        if wrong is not None:  # (one with a lone surrogate failed the index's query: a 500)
            raise BulkRefused(400, f"{wrong[:100]!r} in ids is not an invocation id")
        chosen = frozenset(given)
    return BulkRequest(action, status, service, key, dry_run, limit, chosen)


def known_status(status: str | None) -> str | None:
    """``status`` if the index knows it (or no status): a misspelt one is refused."""
    if status is not None and status not in STATUSES:
        raise BulkRefused(400, f"unknown status {status!r}: use {', '.join(STATUSES)}")
    return status


def _flag(text: str, name: str) -> bool:
    if text.lower() in ("", "0", "false", "no"):
        return False
    if text.lower() in ("1", "true", "yes"):
        return True
    raise BulkRefused(400, f"{name} must be true or false")


@dataclass(frozen=True, slots=True)
class Selection:
    """The invocations a bulk action acts on, newest first, and what it passed over."""

    chosen: list[tuple[str, str, str]]  # (id, status, target)
    matched: int  # the filter matched these, and the action applies to them
    skipped: int  # the filter matched these, but the action does not apply (completed...)

    @property
    def ids(self) -> list[str]:
        return [inv_id for inv_id, _, _ in self.chosen]


Control = Callable[[str], Awaitable[str]]


def controls(client: Client) -> dict[str, Control]:
    return {
        "cancel": client.cancel,
        "kill": client.kill,
        "purge": client.purge,
        "resume": client.resume,
    }


async def control_one(client: Client, action: str, inv_id: str) -> tuple[int, dict[str, Any]]:
    """One control request, as ``(HTTP status, body)``: 200 done, 202 accepted (a cancel
    reaches a running handler at its next await), 400 bad id, 404, 409, 502 (an answer
    this cannot read, from a newer worker), 503, 504."""
    try:
        ids.validate(inv_id)
        async with asyncio.timeout(CONTROL_TIMEOUT):
            status = await controls(client)[action](inv_id)
    except TimeoutError:
        message = (
            f"no answer from the partition of {inv_id} within {CONTROL_TIMEOUT:g}s: the "
            "request takes effect when a worker owns that partition again, if it reached "
            "Kafka"
        )
        return 504, {"code": 504, "message": message}
    except ids.InvalidId as error:
        return 400, {"code": 400, "message": str(error)}
    except TerminalError as error:
        return error.status_code, {"code": error.status_code, "message": error.message}
    except KafkaUnavailable as error:
        return 503, {"code": 503, "message": str(error)}
    except ResponseUnreadable as error:  # a worker answered what this cannot read
        return 502, {"code": 502, "message": str(error)}
    except ClientClosed as error:  # shutting down, or Kafka failed it: it may be on Kafka
        code = 504 if error.may_be_written else 503  # 503: it is not
        return code, {"code": code, "message": str(error)}
    code = 202 if status == "accepted" else 200
    return code, {"invocationId": inv_id, "action": action, "status": status}


async def run_bulk(
    request: BulkRequest, selection: Selection, act: Callable[[str], Awaitable[tuple[int, Any]]]
) -> dict[str, Any]:
    """The bulk answer: what was chosen and, unless a dry run, each one's result."""
    answer: dict[str, Any] = {
        "action": request.action,
        "dry_run": request.dry_run,
        "filter": request.filter(),
        "matched": selection.matched,
        "skipped": selection.skipped,
        "ids": selection.ids,
        "invocations": [
            {"id": inv_id, "target": target, "status": status}
            for inv_id, status, target in selection.chosen
        ],
        "truncated": selection.matched > len(selection.ids),
    }
    if request.dry_run:
        return answer
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(inv_id: str) -> tuple[int, Any]:
        async with gate:
            return await act(inv_id)

    outcomes = await asyncio.gather(*(one(inv_id) for inv_id in selection.ids))
    results = {
        inv_id: {"code": code, "status": body.get("status") or body.get("message")}
        for inv_id, (code, body) in zip(selection.ids, outcomes, strict=True)
    }
    answer["results"] = results
    answer["succeeded"] = sum(r["code"] < 400 for r in results.values())
    answer["failed"] = len(results) - answer["succeeded"]
    return answer


async def bulk_control(
    request: web.Request,
    choose: Callable[..., tuple[list[tuple[str, str, str]], int, int]],
    client: Client,
    ready: Callable[[], bool] = lambda: True,
) -> web.Response:
    """``POST /invocations/{action}?status=&service=&key=&dry_run=&limit=``; refused (503)
    until ``ready()`` (the admin index has read the changelogs after its start: before, it
    may miss matching invocations, or show older statuses)."""
    try:  # JSON is UTF-8 (RFC 8259): a charset named in the header is not asked for
        data = await request.read() if request.can_read_body else b""
        body = load_json(data) if data.strip() else None
    except ValueError as error:  # not JSON, not UTF-8, NaN, an integer of 5,000 digits, ...
        return _refused(BulkRefused(400, f"body is not valid JSON: {error}"))
    except RecursionError:
        return _refused(BulkRefused(400, "body is JSON nested deeper than Python parses"))
    if data.strip() and body is None:  # `null` must not widen the action to every match
        return _refused(BulkRefused(400, 'the body must be {"ids": [...]} or absent'))
    try:
        bulk = parse_bulk(request.match_info["action"], request.query, body)
    except BulkRefused as refused:
        return _refused(refused)
    if not ready():
        message = (
            "the admin index is still reading the changelogs after its start: it may miss "
            "invocations or show older statuses; try again in a moment"
        )
        return _refused(BulkRefused(503, message))
    chosen = await asyncio.to_thread(
        choose,
        status=bulk.status,
        service=bulk.service,
        key=bulk.key,
        among=APPLIES_TO[bulk.action],
        ids=bulk.ids,
        limit=bulk.limit,
    )  # off the loop: the index's lock is held while it applies a batch of records
    selection = Selection(*chosen)

    async def act(inv_id: str) -> tuple[int, Any]:
        return await control_one(client, bulk.action, inv_id)

    # A requester that hangs up (the UI gives up on a request after a while) does not stop
    # the action half done: the handler's cancel stops its wait for the answer, not the task.
    going = asyncio.ensure_future(run_bulk(bulk, selection, act))
    _GOING.add(going)
    going.add_done_callback(_GOING.discard)
    try:
        return web.json_response(await asyncio.shield(going))
    except asyncio.CancelledError:
        going.add_done_callback(_said_after_hang_up)  # nobody else hears how it ended
        raise


def _said_after_hang_up(done: asyncio.Task[dict[str, Any]]) -> None:
    if done.cancelled():
        log.warning("a bulk action whose requester hung up was stopped (the server stops)")
        return
    error = done.exception()
    if error is not None:
        log.error("a bulk action whose requester hung up failed: %r", error)
        return
    answer = done.result()
    if answer["dry_run"]:  # nothing was done
        return
    failed = [inv_id for inv_id, result in answer["results"].items() if result["code"] >= 400]
    log.warning(
        "bulk %s of %d invocations ended after its requester hung up: %d succeeded, %d"
        " failed%s", answer["action"], len(answer["ids"]), answer["succeeded"],
        answer["failed"], f" ({', '.join(failed[:20])}{' ...' if len(failed) > 20 else ''})"
        if failed else "",
    )  # fmt: skip


def _refused(refused: BulkRefused) -> web.Response:
    body = {"code": refused.status, "message": refused.message}
    return web.json_response(body, status=refused.status)
