"""The dashboard in a real Chromium, driven by Playwright, against the real service.

Set ``ZAPA_SCREENSHOTS`` to a directory to keep a screenshot of each main page there;
``docs/screenshots/`` holds the ones the README shows.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from bot.admin.passwords import hash_password
from storage.admin_store import SqlAdminStore
from storage.db import open_database
from tests.browser import LAUNCH_ARGS, system_chromium
from tests.harness import bearer, message, running, settings

PASSWORD = "a long and unusual passphrase"
PHONE = {"width": 375, "height": 740}
DESKTOP = {"width": 1280, "height": 800}


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=system_chromium(), args=LAUNCH_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


async def serving(database_url: str, **overrides: Any) -> AsyncIterator[TestClient[Any, Any]]:
    database = open_database(database_url, 1)
    try:
        await SqlAdminStore(database).save_admin("ops", await hash_password(PASSWORD))
    finally:
        await database.dispose()
    async with running(settings(database_url=database_url, **overrides)) as client:
        yield client


@pytest.fixture
async def production(postgres_url: str, redis_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    async for client in serving(postgres_url, redis_url=redis_url):
        yield client


@pytest.fixture
async def embedded(sqlite_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    async for client in serving(sqlite_url):
        yield client


class Errors:
    """Console errors and failed page scripts (a CSP violation is one)."""

    def __init__(self, page: Page) -> None:
        self.seen: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.seen.append(str(error)))

    def _console(self, entry: ConsoleMessage) -> None:
        # A 401 or 403 the app expects is logged by the browser as a failed resource.
        if entry.type == "error" and "Failed to load resource" not in entry.text:
            self.seen.append(entry.text)


async def screenshot(page: Page, name: str) -> None:
    folder = os.environ.get("ZAPA_SCREENSHOTS")
    if folder:
        # Playwright makes the folder when it writes the file.
        await page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


async def sign_in(page: Page, password: str = PASSWORD) -> None:
    await page.get_by_label("Username").fill("ops")
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()


async def talk(client: TestClient[Any, Any], text: str, user: str) -> None:
    body = message(text, f"ticket-{user}", user, user_name=user.title())
    response = await client.post("/webhooks/generic", json=body, headers=bearer())
    assert response.status == 200


async def test_an_operator_finds_a_conversation_reads_it_and_bans_its_user(
    production: TestClient[Any, Any], browser: Browser
) -> None:
    await talk(production, "where is my parcel?", "mallory")
    await talk(production, "hello there", "ann")
    await talk(production, "what are your opening hours?", "bob")
    await talk(production, "can I change my delivery address?", "carol")
    base = str(production.make_url("/admin/"))
    page = await browser.new_page(viewport=DESKTOP)
    errors = Errors(page)

    # A signed-out visit to a page goes to sign-in, and back there after.
    await page.goto(f"{base}conversations")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await screenshot(page, "sign-in")
    await sign_in(page)
    await expect(page.get_by_role("heading", name="Conversations")).to_be_visible()
    items = page.get_by_test_id("conversation-item")
    await expect(items).to_have_count(4)
    await screenshot(page, "conversations")

    await page.get_by_label("Search").fill("parcel")
    await expect(items).to_have_count(1)
    await expect(items.first).to_contain_text("ticket-mallory")

    await items.first.click()
    await expect(page.get_by_role("heading", name="Conversation #")).to_be_visible()
    bubbles = page.get_by_test_id("message")
    await expect(bubbles).to_have_count(2)
    await expect(bubbles.nth(0)).to_contain_text("where is my parcel?")
    await expect(bubbles.nth(1)).to_have_attribute("data-role", "assistant")
    await screenshot(page, "transcript")

    await page.get_by_role("link", name="Users").click()
    await expect(page.get_by_role("heading", name="Users")).to_be_visible()
    row = page.get_by_test_id("user-row").filter(has_text="mallory")
    await row.get_by_role("button", name="Ban", exact=True).click()
    await expect(row.get_by_role("button", name="Unban", exact=True)).to_be_visible()
    await screenshot(page, "users")

    # The ban holds for the service, not only on the page.
    response = await production.post(
        "/webhooks/generic", json=message("again", "ticket-mallory", "mallory"), headers=bearer()
    )
    assert response.status == 403

    await page.get_by_role("link", name="Overview").click()
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    await expect(page.get_by_test_id("health-database")).to_contain_text("ok")
    await screenshot(page, "overview")

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.goto(f"{base}users")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert errors.seen == []


async def test_a_wrong_password_shows_the_error_and_stays_signed_out(
    embedded: TestClient[Any, Any], browser: Browser
) -> None:
    page = await browser.new_page(viewport=DESKTOP)
    await page.goto(str(embedded.make_url("/admin/")))
    await sign_in(page, "not the password at all")
    await expect(page.get_by_role("alert")).to_contain_text("Wrong username or password")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


async def test_every_page_fits_a_phone_screen(
    embedded: TestClient[Any, Any], browser: Browser
) -> None:
    await talk(embedded, "a question long enough to need wrapping on a narrow screen", "ann")
    page = await browser.new_page(viewport=PHONE)
    errors = Errors(page)
    base = str(embedded.make_url("/admin/"))
    await page.goto(base)
    await sign_in(page)
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    for path, heading in [("", "Overview"), ("conversations", "Conversations"), ("users", "Users")]:
        await page.goto(base + path)
        await expect(page.get_by_role("heading", name=heading)).to_be_visible()
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"/admin/{path} scrolls sideways: {width}px"
        if path == "conversations":
            await screenshot(page, "phone-conversations")
    assert errors.seen == []
