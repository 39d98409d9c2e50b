"""Bulk control: the request's rules, what it chooses, and ``POST /invocations/{action}``
over HTTP with a stand-in for the Kafka client."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from handlers.exceptions import TerminalError
from streams.client import Client, ResponseUnreadable
from streams.engine.journal import meta_key
from streams.http import bulk
from streams.http.admin import AdminApi
from streams.http.bulk import APPLIES_TO, BulkRefused, BulkRequest, parse_bulk
from streams.http.index import InvocationIndex
from streams.http.index_spill import Chosen, choose_among
from streams.metrics import DEADLOCKS
from streams.settings import Settings
from streams.wire import ids
from tests.unit.test_calltree import an_id, meta

A, B, C, D = (ids.keyed_id(name, name) for name in "abcd")
MATCHES = [
    (A, "running", "Trip/a/reserve"),
    (B, "scheduled", "Trip/b/reserve"),
    (C, "completed", "Trip/c/reserve"),
    (D, "paused", "Trip/d/reserve"),
]


def refused(action: str, query: dict[str, str], body: Any = None) -> tuple[int, str]:
    with pytest.raises(BulkRefused) as caught:
        parse_bulk(action, query, body)
    return caught.value.status, caught.value.message


def test_a_bulk_request_needs_a_known_action_a_filter_and_a_known_status() -> None:
    assert refused("explode", {"service": "Trip"})[0] == 404
    status, message = refused("cancel", {})
    assert status == 400
    assert "needs a filter" in message
    status, message = refused("cancel", {"status": "runing"})
    assert status == 400
    assert "unknown status 'runing'" in message
    assert refused("cancel", {"service": "Trip", "limit": "0"})[0] == 400
    assert refused("cancel", {"service": "Trip", "limit": "x"})[0] == 400
    assert refused("cancel", {"service": "Trip", "dry_run": "maybe"})[0] == 400
    assert refused("cancel", {"service": "Trip"}, {"ids": "inv_x"})[0] == 400
    assert refused("cancel", {"service": "Trip"}, [A])[0] == 400
    # Not an id (a lone surrogate made the on-disk index's query raise: a 500).
    for bad in ("\ud800", "inv_x", "x" * 40):
        status, message = refused("cancel", {"service": "Trip"}, {"ids": [A, bad]})
        assert status == 400
        assert "not an invocation id" in message


def test_a_bulk_request_parses() -> None:
    query = {"service": "Trip", "status": "running", "dry_run": "true", "limit": "5", "key": ""}
    request = parse_bulk("kill", query, {"ids": [A]})
    assert request == BulkRequest("kill", "running", "Trip", None, True, 5, frozenset({A}))
    assert request.filter() == {"status": "running", "service": "Trip"}
    assert not parse_bulk("cancel", {"key": "k"}).dry_run


def select(request: BulkRequest, matches: list[tuple[str, str, str]]) -> bulk.Selection:
    """What the index chooses of ``matches`` (newest first) for ``request``."""
    rows = [(float(-n), *match) for n, match in enumerate(matches)]
    return bulk.Selection(*_chosen(choose_among(rows, APPLIES_TO[request.action], request.ids,
                                                request.limit)))  # fmt: skip


def chosen_as_asked(query: dict[str, Any]) -> tuple[list[tuple[str, str, str]], int, int]:
    """What the index's ``choose`` answers for ``MATCHES``, the action's statuses and ids
    as asked: a stand-in index that chose as for a cancel whatever the action."""
    rows = [(float(-n), *match) for n, match in enumerate(MATCHES)]
    return _chosen(choose_among(rows, query["among"], query.get("ids"), query["limit"]))


def _chosen(found: Chosen) -> tuple[list[tuple[str, str, str]], int, int]:
    return [(i, s, t) for _, i, s, t in found[0]], found[1], found[2]


def test_each_action_chooses_only_what_it_applies_to() -> None:
    cancel = select(BulkRequest("cancel", service="Trip"), MATCHES)
    assert (cancel.ids, cancel.matched, cancel.skipped) == ([A, B, D], 3, 1)
    assert select(BulkRequest("purge", service="Trip"), MATCHES).ids == [C]
    assert select(BulkRequest("resume", service="Trip"), MATCHES).ids == [D]
    capped = select(BulkRequest("kill", service="Trip", limit=2), MATCHES)
    assert (capped.ids, capped.matched) == ([A, B], 3), "the newest, and how many matched"
    confirmed = select(BulkRequest("cancel", service="Trip", ids=frozenset({B, C})), MATCHES)
    assert (confirmed.ids, confirmed.skipped) == ([B], 1), "only what a dry run listed"


def test_the_index_chooses_from_memory_and_disk_alike() -> None:
    """The index's ``choose`` counts and picks in SQLite what it holds on disk (completed,
    scheduled) and in memory what is in flight, with the same rules as ``choose_among``;
    before, it built a row in memory for every match, under its lock, whatever the limit
    (a day of retained outcomes for a ``purge``)."""
    index = InvocationIndex(Settings(namespace="unit"))
    topic = index.topics.invocations
    made: dict[str, str] = {}
    for n, status in enumerate(["completed", "running", "scheduled", "completed", "paused",
                                "completed", "scheduled", "pending"]):  # fmt: skip
        inv_id = an_id(f"i{n}")
        record = meta(inv_id, "h", status)
        record.created_at = 100.0 + n
        index._apply(topic, meta_key(inv_id), record.to_json())
        made[inv_id] = status
    assert (len(index.cold), len(index.log.metas)) == (5, 3)
    newest = list(made)[::-1]
    rows = [(100.0 + n, i, made[i], "Svc/h") for n, i in enumerate(made)]
    for action in ("cancel", "purge", "resume"):
        for limit in (1, 2, 10):
            for given in (None, frozenset(newest[1:6:2]), frozenset({an_id("gone")})):
                among = APPLIES_TO[action]
                want = _chosen(choose_among(rows, among, given, limit))
                got = index.choose(service="Svc", among=among, ids=given, limit=limit)
                assert got == want, (action, limit, given)
    assert index.choose(service="Svc", among=APPLIES_TO["purge"], limit=2) == (
        [(newest[2], "completed", "Svc/h"), (newest[4], "completed", "Svc/h")], 3, 5
    )  # fmt: skip
    assert index.choose(status="scheduled", service="Svc", among=APPLIES_TO["purge"],
                        limit=5) == ([], 0, 2)  # fmt: skip
    assert index.choose(service="Other", among=APPLIES_TO["cancel"], limit=5) == ([], 0, 0)
    by_status = index.choose(status="completed", among=APPLIES_TO["purge"], limit=10)
    assert [row[0] for row in by_status[0]] == [newest[2], newest[4], newest[7]]
    # Listed by a dry run as scheduled, since started (running): cancelled all the same.
    started = next(i for i in newest if made[i] == "running")
    listed = frozenset({started, *(i for i in newest if made[i] == "scheduled")})
    confirmed = index.choose(status="scheduled", service="Svc", among=APPLIES_TO["cancel"],
                             ids=listed, limit=10)  # fmt: skip
    assert {row[0] for row in confirmed[0]} == listed
    index.close()


async def test_a_dry_run_acts_on_nothing_and_a_real_run_reports_each() -> None:
    acted: list[str] = []

    async def act(inv_id: str) -> tuple[int, Any]:
        acted.append(inv_id)
        if inv_id == B:
            return 409, {"code": 409, "message": "already completed"}
        return 202, {"invocationId": inv_id, "action": "cancel", "status": "accepted"}

    chosen = select(BulkRequest("cancel", service="Trip"), MATCHES)
    dry = await bulk.run_bulk(BulkRequest("cancel", service="Trip", dry_run=True), chosen, act)
    assert acted == []
    assert "results" not in dry
    assert dry["ids"] == [A, B, D]
    assert dry["matched"] == 3
    assert not dry["truncated"]
    assert dry["invocations"][0] == {"id": A, "target": "Trip/a/reserve", "status": "running"}
    done = await bulk.run_bulk(BulkRequest("cancel", service="Trip"), chosen, act)
    assert sorted(acted) == sorted([A, B, D])
    assert done["results"][A] == {"code": 202, "status": "accepted"}
    assert done["results"][B] == {"code": 409, "status": "already completed"}
    assert (done["succeeded"], done["failed"]) == (2, 1)


async def test_a_dry_run_whose_requester_hung_up_ends_without_a_word(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What is said of a bulk action whose requester hung up read its results, which a dry
    run has not: ``KeyError`` in a done callback, logged by asyncio as an error."""

    async def act(inv_id: str) -> tuple[int, Any]:
        raise AssertionError("a dry run acts on nothing")

    chosen = select(BulkRequest("cancel", service="Trip"), MATCHES)
    dry = BulkRequest("cancel", service="Trip", dry_run=True)
    done = asyncio.ensure_future(bulk.run_bulk(dry, chosen, act))
    await done
    bulk._said_after_hang_up(done)
    assert "hung up" not in caplog.text


class FakeClient:
    """The control half of the Client: answers like a partition would."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def _answer(self, action: str, inv_id: str) -> str:
        self.seen.append((action, inv_id))
        if inv_id == D:
            raise TerminalError("not found", 404)
        if inv_id == C:
            raise ResponseUnreadable("the response to r is not one this Kourier reads")
        return "accepted" if action == "cancel" else "success"

    async def cancel(self, inv_id: str) -> str:
        return await self._answer("cancel", inv_id)

    async def kill(self, inv_id: str) -> str:
        return await self._answer("kill", inv_id)

    async def purge(self, inv_id: str) -> str:
        return await self._answer("purge", inv_id)

    async def resume(self, inv_id: str) -> str:
        return await self._answer("resume", inv_id)


async def test_bulk_over_http() -> None:
    fake = FakeClient()
    filters: list[dict[str, Any]] = []

    def matching(**query: Any) -> tuple[list[tuple[str, str, str]], int, int]:
        filters.append(query)
        return chosen_as_asked(query)

    async def handler(request: web.Request) -> web.Response:
        return await bulk.bulk_control(request, matching, cast(Client, fake))

    app = web.Application()
    app.router.add_post("/invocations/{action}", handler)
    async with TestClient(TestServer(app)) as http:
        reply = await http.post("/invocations/cancel?service=Trip&dry_run=true")
        assert reply.status == 200
        dry = await reply.json()
        assert dry["ids"] == [A, B, D]
        assert fake.seen == []
        assert filters[-1] == {
            "status": None, "service": "Trip", "key": None, "among": APPLIES_TO["cancel"],
            "ids": None, "limit": 1000,
        }  # fmt: skip

        reply = await http.post("/invocations/cancel?service=Trip", json={"ids": [A, D]})
        done = await reply.json()
        assert done["ids"] == [A, D], "what the dry run listed and the user confirmed"
        assert done["results"][A] == {"code": 202, "status": "accepted"}
        assert done["results"][D] == {"code": 404, "status": "not found"}
        assert sorted(fake.seen) == sorted([("cancel", A), ("cancel", D)])

        reply = await http.post("/invocations/cancel")
        assert reply.status == 400
        assert "needs a filter" in (await reply.json())["message"]
        reply = await http.post("/invocations/cancel?service=Trip", data=b"{nope")
        assert reply.status == 400


async def test_a_bulk_action_goes_on_when_its_requester_hangs_up(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The UI gives up on a request after 10 s; the server then cancelled the handler, and
    with it every control not yet sent: some invocations cancelled, the rest not."""
    monkeypatch.setattr(bulk, "CONCURRENCY", 1)  # A, then B (which waits), then D
    gate, cancelled = asyncio.Event(), asyncio.Event()

    class Slow(FakeClient):
        async def _answer(self, action: str, inv_id: str) -> str:
            if inv_id == B:
                try:
                    await gate.wait()
                except asyncio.CancelledError:
                    cancelled.set()
                    raise
            return await super()._answer(action, inv_id)

    fake = Slow()

    async def handler(request: web.Request) -> web.Response:
        return await bulk.bulk_control(request, lambda **query: chosen_as_asked(query),
                                       cast(Client, fake))  # fmt: skip

    app = web.Application()
    app.router.add_post("/invocations/{action}", handler)
    async with TestClient(TestServer(app, handler_cancellation=True)) as http:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(http.post("/invocations/cancel?service=Trip"), 0.5)
        with contextlib.suppress(TimeoutError):  # the hang-up's cancel, if it comes
            await asyncio.wait_for(cancelled.wait(), 1.0)
        gate.set()
        deadline = asyncio.get_running_loop().time() + 5
        while ("cancel", D) not in fake.seen:
            assert asyncio.get_running_loop().time() < deadline, f"D never sent: {fake.seen}"
            await asyncio.sleep(0.01)
        assert not cancelled.is_set()
        deadline = asyncio.get_running_loop().time() + 5
        while "after its requester hung up" not in caplog.text:  # said, as nobody hears it
            assert asyncio.get_running_loop().time() < deadline, caplog.text
            await asyncio.sleep(0.01)
        assert (
            "bulk cancel of 3 invocations ended after its requester hung up: 2 succeeded, 1"
            in caplog.text
        )


async def test_one_control_request_answers_as_before() -> None:
    fake = cast(Client, FakeClient())
    assert await bulk.control_one(fake, "cancel", A) == (
        202, {"invocationId": A, "action": "cancel", "status": "accepted"},
    )  # fmt: skip
    assert (await bulk.control_one(fake, "purge", A))[0] == 200
    assert await bulk.control_one(fake, "kill", D) == (404, {"code": 404, "message": "not found"})
    # A newer worker's answer: the one invocation's 502, not a 500 for a whole bulk action.
    assert (await bulk.control_one(fake, "kill", C))[0] == 502
    assert (await bulk.control_one(fake, "kill", "nope"))[0] == 400


class FakeIndex:
    """The admin index, caught up or not."""

    def __init__(self) -> None:
        self.up = False

    def caught_up(self) -> bool:
        return self.up

    def choose(self, **query: Any) -> tuple[list[tuple[str, str, str]], int, int]:
        return chosen_as_asked(query)

    def describe(self, invocation_id: str, journal_limit: int) -> dict[str, Any]:
        return {"id": invocation_id, "journal_limit": journal_limit}


async def test_bulk_waits_for_the_index_to_catch_up() -> None:
    """Right after an ingress starts, its index may miss matching invocations or show them
    at an older status: a bulk action then missed some, and failed on others, unexplained."""
    fake, index = FakeClient(), FakeIndex()
    api = AdminApi(cast(Client, fake), cast(InvocationIndex, index), token=None)
    async with TestClient(TestServer(api.app())) as http:
        reply = await http.post("/invocations/cancel?service=Trip&dry_run=true")
        assert reply.status == 503
        assert "try again" in (await reply.json())["message"]
        reply = await http.post("/invocations/cancel")  # a request that is wrong says so
        assert reply.status == 400
        index.up = True
        reply = await http.post("/invocations/cancel?service=Trip&dry_run=true")
        assert reply.status == 200
        assert (await reply.json())["ids"] == [A, B, D]
        reply = await http.post("/invocations/purge?service=Trip&dry_run=true")
        assert (await reply.json())["ids"] == [C], "the index asked for the action's statuses"


async def test_a_change_a_browser_says_another_site_asked_for_is_refused() -> None:
    fake, index = FakeClient(), FakeIndex()
    index.up = True
    api = AdminApi(cast(Client, fake), cast(InvocationIndex, index), token=None)
    async with TestClient(TestServer(api.app())) as http:
        own = f"http://{http.host}:{http.port}"
        for headers in ({"origin": "http://shop.example"}, {"sec-fetch-site": "cross-site"}):
            reply = await http.post("/invocations/kill?service=Trip", headers=headers)
            assert reply.status == 403, headers
        assert fake.seen == []
        reply = await http.get("/ui", headers={"origin": "http://shop.example"})
        assert reply.status == 200, "a read is not refused (it changes nothing)"
        reply = await http.post("/invocations/kill?service=Trip", headers={"origin": own})
        assert reply.status == 200
        # Behind a reverse proxy that rewrites Host, the UI's page is at the proxy's origin:
        # the browser's Sec-Fetch-Site still says same-origin.
        proxied = {"origin": "https://kourier.example.com", "sec-fetch-site": "same-origin"}
        reply = await http.post("/invocations/kill?service=Trip", headers=proxied)
        assert reply.status == 200
        forwarded = {"origin": "https://kourier.example.com",
                     "x-forwarded-host": "kourier.example.com"}  # fmt: skip
        reply = await http.post("/invocations/kill?service=Trip", headers=forwarded)
        assert reply.status == 200
        assert sorted(fake.seen) == sorted(("kill", i) for i in (A, B, D) for _ in range(3))


async def test_a_name_pointed_at_loopback_is_refused_unless_allowed() -> None:
    """DNS rebinding: a page whose own name its DNS points at 127.0.0.1 once it has loaded
    is, to the browser, the same origin as the admin API, and may read and change
    everything on it (Sec-Fetch-Site says same-origin). The Host it sends is its own name."""
    fake, index = FakeClient(), FakeIndex()
    index.up = True
    allowed = ("kourier.lan", "proxy.lan:8443")
    api = AdminApi(cast(Client, fake), cast(InvocationIndex, index), None, allowed)
    async with TestClient(TestServer(api.app(), host="127.0.0.1")) as http:
        rebound = {"host": f"shop.example:{http.port}", "sec-fetch-site": "same-origin"}
        for method, path in (
            ("GET", f"/invocations/{A}"),
            ("POST", "/invocations/kill?service=Trip"),
        ):
            reply = await http.request(method, path, headers=rebound)
            assert reply.status == 403, (method, path, reply.status)
            assert "KOURIER_ALLOWED_HOSTS" in (await reply.json())["message"]
        assert fake.seen == []
        for host in (f"localhost:{http.port}", f"127.0.0.1:{http.port}", "kourier.lan",
                     f"KOURIER.LAN:{http.port}", f"[::1]:{http.port}", "kourier.lan.",
                     f"0.0.0.0:{http.port}", "ui.localhost", "proxy.lan:8443",
                     "[::ffff:127.0.0.1]", f"127.0.1.1:{http.port}"):  # fmt: skip
            reply = await http.get(f"/invocations/{A}", headers={"host": host})
            assert reply.status == 200, host


async def test_a_detail_shows_as_many_journal_entries_as_asked() -> None:
    api = AdminApi(cast(Client, FakeClient()), cast(InvocationIndex, FakeIndex()), token=None)
    async with TestClient(TestServer(api.app())) as http:
        reply = await http.get(f"/invocations/{A}")
        assert (await reply.json())["journal_limit"] == 1_000
        reply = await http.get(f"/invocations/{A}", params={"journal": "20"})
        assert (await reply.json())["journal_limit"] == 20
        # "²" is a digit to str.isdigit, not to int(); int() takes at most 4,300 digits
        for bad in ("x", "-1", "\u00b2", "9" * 5_000):
            reply = await http.get(f"/invocations/{A}", params={"journal": bad})
            assert reply.status == 400, bad


class FailingOnce(FakeIndex):
    """Its first read of the deadlocks fails; then it has one cycle."""

    reads = 0

    def deadlocks(self) -> list[dict[str, Any]]:
        self.reads += 1
        if self.reads == 1:
            raise RuntimeError("the index failed")
        return [{"members": [{"id": A, "target": "Trip/a/reserve"}]}]


async def test_the_deadlock_watch_goes_on_after_a_failed_read() -> None:
    """One exception ended the watch's task: the gauge stayed as it was for good."""
    index = FailingOnce()
    api = AdminApi(cast(Client, FakeClient()), cast(InvocationIndex, index), token=None)
    DEADLOCKS.set(0)
    watch = asyncio.ensure_future(api.watch_deadlocks())
    try:
        async with asyncio.timeout(10):
            while REGISTRY.get_sample_value("kourier_deadlocks") != 1:
                assert not watch.done(), f"the watch ended: {watch.exception()}"
                await asyncio.sleep(0.05)
    finally:
        watch.cancel()


async def test_no_answer_of_the_admin_api_or_its_page_is_kept_by_a_cache() -> None:
    """Invocations, their arguments and objects' state as of now: a browser's cache or a
    proxy between kept them, and the UI showed an answer from before (nothing said not to)."""
    fake, index = FakeClient(), FakeIndex()
    index.up = True
    api = AdminApi(cast(Client, fake), cast(InvocationIndex, index), token=None)
    async with TestClient(TestServer(api.app())) as http:
        for path, status in (("/invocations/" + A, 200), ("/ui", 200), ("/nowhere", 404)):
            reply = await http.get(path)
            assert reply.status == status, path
            assert reply.headers.get("cache-control") == "no-store", path
