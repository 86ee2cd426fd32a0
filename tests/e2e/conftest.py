"""Browser fixtures: Debian's Chromium driven by Playwright, against a real stack.

The stack is real (API, worker, PostgreSQL, Redis, tiny-random training); only
the worker's step delay is a test hook, so that a run lasts long enough to watch
its chart grow and to cancel it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, ViewportSize, async_playwright, expect
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.settings import Settings
from tests.conftest import ARTIFACTS, Keys, Stack

CHROMIUM = Path("/usr/bin/chromium")
# Headless, and quiet: these machines have no internet, so background services would only log failures.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = ARTIFACTS / "screenshots"
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}
STEP_DELAY = {"FASTBRAIN_TEST_STEP_DELAY_SECONDS": "1"}
# Pages wait on real work (a data report loads an embedding model on a busy 2-core machine).
expect.set_options(timeout=30_000)
KEY_STORAGE = "fastbrain.apiKey"  # the dashboard's sessionStorage item (src/session.js)


@pytest.fixture(scope="session", autouse=True)
def _session_keys(admin_key: str) -> str:
    """Every browser test runs with the session's admin key made (tests.conftest.Keys)."""
    return admin_key


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: ./test.sh installs it (apt-get install chromium)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@pytest.fixture(scope="session")
def dashboard_stack(migrated: Settings) -> Iterator[Stack]:
    """An API and a worker on their own queue, steps slowed to 1 s.

    The regression gate is off here: the tests train a skill twice on a random tiny model to
    manage its versions, and which of the two scores better on the held-out set is chance
    (tests/integration/test_regression_gate.py covers the gate)."""
    stack = Stack("dashboard", migrated, {**STEP_DELAY, "FASTBRAIN_REGRESSION_GATE": "false"})
    stack.start_worker()
    yield stack
    stack.stop()


class Console:
    """Every console error and uncaught exception a page produced, but those a test said to expect."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.expected: list[re.Pattern[str]] = []

    def expect(self, pattern: str) -> None:
        """Chromium logs every failed request ("... status of 401 (Unauthorized)"): a test that
        provokes one on purpose allows its line here."""
        self.expected.append(re.compile(pattern))

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and not any(p.search(message.text) for p in self.expected):
            self.errors.append(f"console: {message.text} ({message.location.get('url')})")

    def on_page_error(self, error: Exception) -> None:
        self.errors.append(f"page error: {error}")


@pytest.fixture
async def console() -> Console:
    return Console()


@pytest.fixture
async def page(browser: Browser, console: Console, clean_db: AsyncEngine) -> AsyncIterator[Page]:
    """A fresh browser page at 1280x800; the test fails if the page logged any error."""
    context = await browser.new_context(viewport=DESKTOP, accept_downloads=True)
    page = await context.new_page()
    page.on("console", console.on_console)
    page.on("pageerror", console.on_page_error)
    page.set_default_timeout(30_000)
    yield page
    await context.close()
    assert console.errors == [], "the dashboard logged errors:\n" + "\n".join(console.errors)


async def screenshot(page: Page, name: str) -> Path:
    """Saves test-artifacts/screenshots/<name>.png (the whole page)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def log_in(page: Page, url: str, route: str = "") -> None:
    """Opens the dashboard from a login link (`./run.sh` prints one: the admin key in the
    fragment), checks the key left the address bar at once, then goes to `route` (`#/...`)."""
    await page.goto(f"{url}/#key={Keys.admin}")
    await expect(page.get_by_test_id("account")).to_contain_text("default")
    assert "key=" not in page.url and Keys.admin not in page.url, page.url
    assert await page.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')") == Keys.admin
    if route:
        await page.goto(f"{url}/{route}")


async def stored_key(page: Page) -> str | None:
    key: str | None = await page.evaluate(f"sessionStorage.getItem('{KEY_STORAGE}')")
    return key


@pytest.fixture
async def http(dashboard_stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """The API of the dashboard's stack, with the session's admin key."""
    async with dashboard_stack.client(timeout=60) as client:
        yield client
