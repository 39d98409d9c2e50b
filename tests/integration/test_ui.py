"""The web UI in a real browser (Debian's Chromium, driven by Playwright): find a blocked
invocation, see what it waits on, cancel it, watch its status change; the deadlock banner.

The screenshots the README shows are taken here, into ``docs/ui/``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from streams.client import Client
from tests.integration.conftest import ROOT

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


async def test_a_scheduled_invocation_shows_its_due_time_and_cancels(
    page: Page, client: Client, ingress_url: str, admin_url: str
) -> None:
    receipt = await client.object_send("Tally", "ui-later", "add").send(
        1, delay=timedelta(minutes=10)
    )
    await page.goto(f"{admin_url}/ui#/?status=scheduled")
    row = page.locator(f"#invocations tr.row[data-id={receipt.invocation_id}]")
    await expect(row).to_contain_text("due ", timeout=30_000)
    await row.click()
    await expect(page.get_by_test_id("status")).to_have_text("scheduled", timeout=30_000)
    await expect(page.get_by_test_id("due")).to_contain_text("T")
    await page.locator("[data-action=cancel]").click()
    await expect(page.locator("#message")).to_contain_text("cancel: 200 success")
