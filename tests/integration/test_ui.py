"""The web UI in a real browser (Debian's Chromium, driven by Playwright): find a blocked
invocation, see what it waits on, cancel it, watch its status change; the deadlock banner;
the call tree with its links; scheduled invocations' due times; a bulk cancel that says how
many it will cancel before it does.

The screenshots the README shows are taken here, into ``docs/ui/``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import pytest
from playwright.async_api import (
    Browser,
    Dialog,
    Locator,
    Page,
    Request,
    Route,
    async_playwright,
    expect,
)

from streams.client import Client
from streams.kafka.worker import Worker
from streams.settings import Settings
from tests.integration.conftest import ADMIN_URLS, ROOT, served_ingress
from tests.integration.helpers import invocation_status

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "docs" / "ui"


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    if not await asyncio.to_thread(CHROMIUM.exists):
        pytest.fail(f"{CHROMIUM} is missing: deploy/setup.sh installs Debian's chromium")
    async with async_playwright() as playwright:
        browser: Browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            opened = await browser.new_page(viewport={"width": 1280, "height": 800})
            yield opened
        finally:
            await browser.close()


async def a_held_call(
    page: Page, client: Client, admin_url: str, key: str, handler: str
) -> tuple[asyncio.Task[Any], Locator]:
    """``Trip/<key>/<handler>`` called to hold its key 60 s (the idempotency key ``key``
    keeps its outcome, and its page), and its row in the UI's list filtered by that key."""
    call = asyncio.create_task(
        client.object("Trip", key, handler).request(60_000, idempotency_key=key)
    )
    await page.goto(f"{admin_url}/ui#/?service=Trip&key={key}")
    row = page.locator("#invocations tr.row", has_text=f"Trip/{key}/{handler}")
    await expect(row).to_have_count(1, timeout=30_000)
    return call, row


async def test_cancel_a_blocked_invocation_from_the_ui(
    page: Page, client: Client, ingress_url: str, admin_url: str
) -> None:
    await asyncio.to_thread(SHOTS.mkdir, parents=True, exist_ok=True)
    # A booking holds its key in a 60 s timer; the idempotency key keeps its outcome.
    call = asyncio.create_task(
        client.object("Trip", "ui-seat", "reserve").request(60_000, idempotency_key="ui")
    )
    await page.goto(f"{admin_url}/ui#/?service=Trip")
    row = page.locator("#invocations tr.row", has_text="Trip/ui-seat/reserve")
    await expect(row).to_have_count(1, timeout=30_000)
    await page.screenshot(path=str(SHOTS / "invocations.png"))
    await row.click()
    await expect(page.get_by_test_id("waiting")).to_contain_text("sleep", timeout=30_000)
    await expect(page.locator("ol.timeline li")).to_have_count(1)
    await page.screenshot(path=str(SHOTS / "invocation.png"))
    await page.locator("[data-action=cancel]").click()
    await expect(page.locator("#message")).to_contain_text("cancel: 202 accepted")
    await expect(page.get_by_test_id("status")).to_have_text("completed", timeout=30_000)
    await expect(page.get_by_test_id("outcome")).to_contain_text("409")
    await expect(page.locator("ol.timeline li.failed")).to_have_count(1)
    await page.screenshot(path=str(SHOTS / "cancelled.png"))
    result = await asyncio.gather(call, return_exceptions=True)
    assert getattr(result[0], "status_code", None) == 409
    # The state view shows the compensation the cancelled handler wrote.
    await page.goto(f"{admin_url}/ui#/state?service=Trip&key=ui-seat")
    await expect(page.locator("#state")).to_contain_text('"compensated": 409', timeout=30_000)


async def test_the_deadlock_banner(
    page: Page, client: Client, ingress_url: str, admin_url: str
) -> None:
    await asyncio.to_thread(SHOTS.mkdir, parents=True, exist_ok=True)
    blocked = asyncio.create_task(client.object("Loop", "ui-a", "bounce").request(["ui-b", "ui-a"]))
    await page.goto(f"{admin_url}/ui")
    banner = page.get_by_role("alert")
    await expect(banner).to_contain_text("1 deadlock", timeout=30_000)
    await banner.get_by_role("link", name="Show").click()
    await expect(page.locator("main ol li")).to_have_count(3)
    await page.screenshot(path=str(SHOTS / "deadlocks.png"))
    # Break it from the UI: open the queued member and cancel it.
    await page.locator("main ol li", has_text="pending").get_by_role("link").click()
    await page.locator("[data-action=cancel]").click()
    await expect(page.locator("#message")).to_contain_text("cancel: 200")
    await expect(banner).to_be_hidden(timeout=30_000)
    result = await asyncio.gather(blocked, return_exceptions=True)
    assert getattr(result[0], "status_code", None) == 409


async def test_a_page_left_while_it_loads_stays_left(page: Page, admin_url: str) -> None:
    """Leaving a page before its first refresh came back (a slow server, a quick click)
    left that page polling too: the Deadlocks page, drawn late, covered the page chosen
    after it, and went on redrawing over it every second."""
    held: list[Route] = []
    holding = True
    asked = asyncio.Event()

    async def deadlocks(route: Route) -> None:
        if holding:
            held.append(route)
            asked.set()
        else:
            await route.continue_()

    await page.route("**/deadlocks", deadlocks)
    await page.goto(f"{admin_url}/ui#/deadlocks")
    await asyncio.wait_for(asked.wait(), 30)  # the Deadlocks page's first refresh, held
    await page.evaluate("location.hash = '#/'")  # the invocations list, while that waits
    await expect(page.locator("#invocations")).to_be_visible()
    holding = False
    for route in held:
        await route.continue_()
    updated = page.locator("#updated")
    for _ in range(2):  # two refreshes after the late answers
        before = await updated.text_content()
        await expect(updated).not_to_have_text(before or "", timeout=10_000)
    await expect(page.locator("#invocations")).to_be_visible()
    await expect(page.get_by_role("heading", name="Deadlocks")).to_have_count(0)


async def test_one_refresh_at_a_time_and_a_request_that_never_ends_is_given_up(
    page: Page, admin_url: str
) -> None:
    """A list request the server never answers (the first of the refreshes every second,
    after the page's own two): no refresh starts while it is out (a slow server must not
    have them pile up, one a second), and after 10 s the page gives it up and asks again,
    rather than standing still for good."""
    lists: list[float] = []
    loop = asyncio.get_running_loop()
    asked_again = asyncio.Event()

    async def second_never(route: Route) -> None:
        lists.append(loop.time())
        if len(lists) == 3:
            return  # held, never answered
        if len(lists) > 3:
            asked_again.set()
        await route.continue_()

    await page.route(lambda url: "/invocations?" in url, second_never)  # the list's
    await page.goto(f"{admin_url}/ui")
    await asyncio.wait_for(asked_again.wait(), 30)
    waited = lists[3] - lists[2]
    assert 9.0 <= waited <= 20.0, f"asked again {waited:.1f}s after the unanswered request"


async def test_a_token_prompt_cancelled_is_not_asked_again(
    page: Page, topics: Settings, worker: Worker
) -> None:
    """With a token required and none given, a cancelled prompt came back at every refresh,
    twice a second (the list's request and the deadlock banner's): the page could not be
    used, nor left. It is asked once; the page says to reload to give it."""
    secured = topics.model_copy(update={"token": "s3cret"})
    asked: list[str] = []
    requests = 0
    refreshed = asyncio.Event()

    async def cancel(dialog: Dialog) -> None:
        asked.append(dialog.message)
        await dialog.dismiss()

    def counted(request: Request) -> None:
        nonlocal requests
        requests += "/deadlocks" in request.url
        if requests >= 4:  # the banner's, at three refreshes after the first
            refreshed.set()

    page.on("dialog", cancel)
    page.on("request", counted)
    async with served_ingress(secured) as (_, url):
        await page.goto(f"{ADMIN_URLS[url]}/ui")
        await asyncio.wait_for(refreshed.wait(), 30)
        await expect(page.locator("#updated")).to_contain_text("reload the page")
    assert len(asked) == 1, asked
    assert "bearer token" in asked[0]


async def test_a_scheduled_invocation_shows_its_due_time_and_cancels(
    page: Page, client: Client, ingress_url: str, admin_url: str
) -> None:
    receipt = await client.object_send("Tally", "ui-later", "add").send(
        1, delay=timedelta(minutes=10)
    )
    await page.goto(f"{admin_url}/ui#/?status=scheduled")
    row = page.locator(f"#invocations tr.row[data-id={receipt.invocation_id}]")
    await expect(row.get_by_test_id("due-at")).to_contain_text("T", timeout=30_000)
    await expect(row.get_by_test_id("due-in")).to_contain_text("m")  # "9m 58s"
    await row.click()
    await expect(page.get_by_test_id("status")).to_have_text("scheduled", timeout=30_000)
    await expect(page.get_by_test_id("due")).to_contain_text("T")
    await page.locator("[data-action=cancel]").click()
    await expect(page.locator("#message")).to_contain_text("cancel: 200 success")


async def test_the_call_tree_links_caller_and_callee(
    page: Page, client: Client, ingress_url: str, admin_url: str
) -> None:
    await asyncio.to_thread(SHOTS.mkdir, parents=True, exist_ok=True)
    # plan on ui-tree waits in a call to reserve on ui-tree-hotel, which holds a 60 s timer;
    # the idempotency key keeps plan's outcome (and page) once it completes.
    call, row = await a_held_call(page, client, admin_url, "ui-tree", "plan")
    plan_id = await row.get_attribute("data-id")
    await row.click()
    tree = page.get_by_test_id("tree")
    await expect(tree.locator(".node.self")).to_contain_text("Trip/ui-tree/plan")
    callee = tree.get_by_role("link", name="Trip/ui-tree-hotel/reserve")
    await expect(callee).to_be_visible(timeout=30_000)
    callee_row = tree.locator(
        ".node", has=page.get_by_role("link", name="Trip/ui-tree-hotel/reserve")
    )
    await expect(callee_row).to_contain_text("call")
    await page.screenshot(path=str(SHOTS / "calltree.png"))
    # Follow the link down: the callee's page shows its caller above it, linked back.
    await callee.click()
    await expect(page.locator("main .grid")).to_contain_text("Trip/ui-tree-hotel/reserve")
    caller = tree.locator(f".node[data-id={plan_id}]")
    await expect(caller.get_by_role("link", name="Trip/ui-tree/plan")).to_be_visible()
    await expect(tree.locator(".node.self")).to_contain_text("Trip/ui-tree-hotel/reserve")
    # Cancel the caller from its page: the cancel reaches the callee first, the tree shows
    # both completed, the callee with its 409.
    await caller.get_by_role("link").click()
    await page.locator("[data-action=cancel]").click()
    await expect(page.locator("#message")).to_contain_text("cancel: 202")
    await expect(tree.get_by_test_id("tree-status")).to_have_text(
        ["completed", "completed"], timeout=30_000
    )
    await expect(tree).to_contain_text("409 cancelled")  # the callee's, from plan's journal
    result = await asyncio.gather(call, return_exceptions=True)
    assert getattr(result[0], "status_code", None) == 409


async def test_bulk_cancel_of_scheduled_invocations_asks_with_the_count(
    page: Page, client: Client, ingress_url: str, admin_url: str
) -> None:
    await asyncio.to_thread(SHOTS.mkdir, parents=True, exist_ok=True)
    # Idempotency keys keep the cancelled outcomes, so they can be checked afterwards.
    sent = [
        (await client.object_send("Tally", f"ui-bulk-{i}", "add").send(
            1, delay=timedelta(minutes=10 + i), idempotency_key=f"ui-bulk-{i}"
        )).invocation_id
        for i in range(3)
    ]  # fmt: skip
    await page.goto(f"{admin_url}/ui#/?status=scheduled&service=Tally")
    rows = page.locator("#invocations tr.row")
    await expect(rows).to_have_count(3, timeout=30_000)
    await expect(page.get_by_test_id("due-at")).to_have_count(3)
    await page.screenshot(path=str(SHOTS / "scheduled.png"))
    # Asked first, with the count the server's dry run found; "Keep them" does nothing.
    await page.locator("[data-bulk=cancel]").click()
    dialog = page.get_by_test_id("confirm")
    await expect(dialog).to_contain_text("Cancel 3 invocations?")
    await page.locator("[data-confirm=no]").click()
    await expect(dialog).to_have_count(0)
    await expect(rows).to_have_count(3)
    await page.locator("[data-bulk=cancel]").click()
    await expect(dialog).to_contain_text("Cancel 3 invocations?")
    await expect(dialog).to_contain_text("Matching status scheduled, service Tally: Tally/ui-bulk-")
    await page.screenshot(path=str(SHOTS / "bulk-cancel.png"))
    await page.locator("[data-confirm=yes]").click()
    await expect(page.locator("#bulk-message")).to_contain_text("Cancel: 3 of 3 done")
    await expect(page.locator("#invocations")).to_contain_text(
        "No invocations match.", timeout=30_000
    )
    async with aiohttp.ClientSession() as http:
        for invocation_id in sent:
            detail = await invocation_status(http, admin_url, invocation_id, "completed")
            assert detail["outcome"] == {"failure": {"code": 409, "message": "cancelled"}}
    # A filter typed in but not applied is not what the action would take: refused.
    await page.locator("input[name=service]").fill("Nothing")
    await page.locator("[data-bulk=cancel]").click()
    await expect(page.locator("#bulk-message")).to_contain_text("press Filter first")
    await expect(dialog).to_have_count(0)
    # Without a filter there is nothing to confirm: the buttons are off.
    await page.goto(f"{admin_url}/ui#/")
    await expect(page.locator("[data-bulk=cancel]")).to_be_disabled()


async def test_a_kill_from_the_detail_page_is_asked_first_and_an_odd_id_acts_on_nothing(
    page: Page, client: Client, ingress_url: str, admin_url: str
) -> None:
    """A kill or purge acted on one click, where a bulk one asks; and an id taken from the
    page's address went into the request's path as it was: ``inv_A%2Fkill%3F`` made its
    Resume button a kill of ``inv_A``."""
    call, row = await a_held_call(page, client, admin_url, "ui-kill", "reserve")
    held = await row.get_attribute("data-id")
    assert held is not None
    # The held id with "/kill?" after it: shown as unknown, and Resume kills nothing.
    await page.goto(f"{admin_url}/ui#/invocation/{held}%2Fkill%3F")
    await expect(page.get_by_test_id("gone")).to_be_visible(timeout=30_000)
    await page.locator("[data-action=resume]").click()
    await expect(page.locator("#message")).to_contain_text("resume: 4")
    await page.goto(f"{admin_url}/ui#/invocation/%E0")  # not percent-decodable
    await expect(page.get_by_test_id("gone")).to_be_visible(timeout=30_000)
    await page.goto(f"{admin_url}/ui#/invocation/{held}")
    await expect(page.get_by_test_id("status")).to_have_text("running", timeout=30_000)
    await page.locator("[data-action=kill]").click()
    dialog = page.get_by_test_id("confirm")
    await expect(dialog).to_contain_text(f"Kill {held}?")
    await page.locator("[data-confirm=no]").click()
    await expect(dialog).to_have_count(0)
    await expect(page.get_by_test_id("status")).to_have_text("running")
    assert not call.done()
    await page.locator("[data-action=kill]").click()
    await page.locator("[data-confirm=yes]").click()
    await expect(page.locator("#message")).to_contain_text("kill: 200")
    result = await asyncio.gather(call, return_exceptions=True)
    assert getattr(result[0], "status_code", None) == 409


async def test_the_ui_page_may_not_be_framed_and_runs_only_its_own_script(
    page: Page, admin_url: str
) -> None:
    """Framed by another site under decoy buttons, the page's own requests passed the
    same-origin check: two clicks could kill every running invocation."""
    async with aiohttp.ClientSession() as http, http.get(f"{admin_url}/ui") as reply:
        assert reply.status == 200
        assert reply.headers["x-frame-options"] == "DENY"
        policy = reply.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy
    assert "default-src 'none'" in policy
    refused: list[str] = []
    page.on("console", lambda message: refused.append(message.text)
            if "Content Security Policy" in message.text else None)  # fmt: skip
    await page.goto(f"{admin_url}/ui")
    await expect(page.locator("#invocations")).to_be_visible(timeout=30_000)
    assert refused == [], "the page's own script or style refused by its policy"


async def until(done: Callable[[], bool], what: str, within: float = 15.0) -> None:
    """Wait for ``done()`` (what the page's requests have done so far), up to ``within``."""
    deadline = asyncio.get_running_loop().time() + within
    while not done():
        assert asyncio.get_running_loop().time() < deadline, f"not within {within:g}s: {what}"
        await asyncio.sleep(0.05)


def a_row(inv: str, **fields: Any) -> dict[str, Any]:
    """A list row as the admin API gives it."""
    return {"id": inv, "target": "Trip/ui-fake/reserve", "service": "Trip", "handler": "reserve",
            "key": "ui-fake", "status": "running", "mode": "call", "attempt": 1,
            "created_at": "2026-12-07T12:00:00.000Z", "modified_at": "2026-12-07T12:00:01.000Z",
            **fields}  # fmt: skip


async def test_a_refresh_that_fails_keeps_what_is_shown_and_says_so(
    page: Page, admin_url: str
) -> None:
    """A read the server answered 503 (or not at all) was drawn as an empty answer: the
    list said "No invocations match.", the deadlock banner went away, and the header still
    said "updated" at each refresh, so an operator took a stalled index for a quiet one."""
    inv = "inv_" + "a" * 32
    failing = False
    failed: list[str] = []
    cycle = {"size": 2, "members": [
        {"id": inv, "target": "Trip/ui-fake/reserve", "status": "suspended",
         "waits_for": "inv_" + "b" * 32, "how": "call"}]}  # fmt: skip

    async def answer(route: Route) -> None:
        if failing:
            failed.append(route.request.url)
            await route.fulfill(status=503, json={"code": 503, "message": "the index is behind"})
        elif "/deadlocks" in route.request.url:
            await route.fulfill(json={"deadlocks": [cycle]})
        else:
            await route.fulfill(json={"invocations": [a_row(inv)], "caught_up": True})

    await page.route(lambda url: "/invocations?" in url or url.endswith("/deadlocks"), answer)
    await page.goto(f"{admin_url}/ui#/")
    await expect(page.locator("#invocations tr.row")).to_have_count(1, timeout=30_000)
    await expect(page.locator("#banner")).to_be_visible()
    await expect(page.locator("#updated")).to_contain_text("UTC")  # as every time shown
    failing = True
    problem = page.locator("#problem")
    await expect(problem).to_contain_text("could not refresh (503 the index is behind)")
    updated = await page.locator("#updated").text_content()
    await expect(problem).to_contain_text("what is shown was read before")
    await until(lambda: len(failed) >= 6, "three refreshes that fail")  # list and banner each
    await expect(page.locator("#invocations tr.row")).to_have_count(1)
    await expect(page.locator("#invocations")).not_to_contain_text("No invocations match.")
    await expect(page.locator("#banner")).to_be_visible()
    await expect(page.locator("#updated")).to_have_text(updated or "")
    failing = False
    await expect(problem).to_have_text("", timeout=10_000)


async def test_the_list_says_when_it_is_cut_or_incomplete_and_when_a_due_time_passed(
    page: Page, admin_url: str
) -> None:
    """The list asks for 200 rows and showed them as if they were all; an index still
    reading the changelogs (``caught_up: false``) was not said; an invocation 10 minutes
    overdue (workers away) said "due in 0ms". Each row's id is a link (a keyboard reaches
    it), and the filters have names."""
    overdue = (datetime.now(UTC) - timedelta(minutes=10)).isoformat().replace("+00:00", "Z")
    rows = [a_row(f"inv_{i:032x}", status="scheduled", due_at=overdue) for i in range(201)]

    async def answer(route: Route) -> None:
        await route.fulfill(json={"invocations": rows, "caught_up": False})

    await page.route(lambda url: "/invocations?" in url, answer)
    await page.goto(f"{admin_url}/ui#/?status=scheduled")
    await expect(page.locator("#invocations tr.row")).to_have_count(200, timeout=30_000)
    note = page.get_by_test_id("list-note")
    await expect(note).to_contain_text("The newest 200 are shown")
    await expect(note).to_contain_text("the list may be incomplete")
    await expect(page.get_by_test_id("due-in").first).to_contain_text("overdue by 10m")
    await expect(page.get_by_role("link", name=rows[0]["id"])).to_have_count(1)
    await expect(page.get_by_role("combobox", name="status")).to_have_count(1)
    await expect(page.get_by_role("textbox", name="service")).to_have_count(1)


async def answer_state_of_counter(page: Page) -> list[str]:
    """The keys the page asks Counter's state of, each answered with how many were asked."""
    asked: list[str] = []

    async def answer(route: Route) -> None:
        asked.append(parse_qs(urlsplit(route.request.url).query, keep_blank_values=True)["key"][0])
        await route.fulfill(json={"count": len(asked)})

    await page.route(lambda url: urlsplit(url).path == "/state/Counter", answer)
    return asked


async def test_the_state_page_shows_what_its_address_names_not_what_is_being_typed(
    page: Page, admin_url: str
) -> None:
    """Each refresh read the key boxes: typing "bob" over "ada" asked for the state of
    "b", then "bo", and showed it under an address that named "ada"."""
    asked = await answer_state_of_counter(page)
    await page.goto(f"{admin_url}/ui#/state?service=Counter&key=ada")
    await expect(page.locator("#state")).to_contain_text('"count"', timeout=30_000)
    await page.get_by_role("textbox", name="key").fill("bo")
    typed = len(asked)
    await until(lambda: len(asked) >= typed + 2, "two refreshes while 'bo' is in the box")
    assert set(asked) == {"ada"}, asked
    await page.get_by_role("button", name="Show").click()
    await until(lambda: asked[-1] == "bo", "the state of 'bo' asked for once shown")


@pytest.mark.parametrize("key", ["..", ".", ""])
async def test_the_state_page_shows_a_key_no_path_can_hold(
    page: Page, admin_url: str, key: str
) -> None:
    """The page asked for ``/state/Counter/..``, which the browser resolved to ``/state/``
    (a 404): the state of objects ``.`` and ``..`` could not be shown, nor that of ``""``."""
    asked = await answer_state_of_counter(page)
    await page.goto(f"{admin_url}/ui#/state?service=Counter&key={quote(key, safe='')}")
    await expect(page.locator("#state")).to_contain_text('"count": 1', timeout=30_000)
    assert asked[0] == key, asked


async def test_a_bulk_action_says_which_confirmed_invocations_it_left_alone(
    page: Page, admin_url: str
) -> None:
    """The server acts on the confirmed ids the action still applies to: one that ended
    between the question and the click was left alone, and the page said "2 of 2 done" to
    a user who had confirmed 3. (A scheduled one that fell due is acted on all the same:
    ``InvocationIndex.choose``, tests/unit/test_bulk.py.)"""
    ids = [f"inv_{i:032x}" for i in range(3)]
    rows = [a_row(inv, status="scheduled") for inv in ids]

    async def listed(route: Route) -> None:
        await route.fulfill(json={"invocations": rows, "caught_up": True})

    async def bulk(route: Route) -> None:
        chosen = [{"id": inv, "target": "Trip/ui-fake/reserve", "status": "scheduled"}
                  for inv in ids]  # fmt: skip
        answer: dict[str, Any] = {"action": "cancel", "matched": 3, "skipped": 0,
                                  "invocations": chosen, "truncated": False}  # fmt: skip
        if "dry_run=true" in route.request.url:
            await route.fulfill(json={**answer, "dry_run": True, "ids": ids})
            return
        done = ids[:2]  # the third ended: a cancel no longer applies
        results = {inv: {"code": 202, "status": "accepted"} for inv in done}
        await route.fulfill(json={**answer, "dry_run": False, "ids": done, "results": results,
                                  "succeeded": 2, "failed": 0})  # fmt: skip

    await page.route(lambda url: "/invocations?" in url, listed)
    await page.route("**/invocations/cancel?*", bulk)
    await page.goto(f"{admin_url}/ui#/?status=scheduled&service=Trip")
    await expect(page.locator("#invocations tr.row")).to_have_count(3, timeout=30_000)
    await page.locator("[data-bulk=cancel]").click()
    await expect(page.get_by_test_id("confirm")).to_contain_text("Cancel 3 invocations?")
    await page.locator("[data-confirm=yes]").click()
    message = page.locator("#bulk-message")
    await expect(message).to_contain_text("Cancel: 2 of 3 done")
    await expect(message).to_contain_text(f"1 ended meanwhile and was left alone ({ids[2]})")
