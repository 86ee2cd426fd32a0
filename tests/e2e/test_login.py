"""Logging in to the dashboard: the login screen, logging out, and what another workspace's key sees."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest
from playwright.async_api import Page, Route, WebSocketRoute, expect
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import keys
from shared.db.engine import create_sessionmaker
from tests.conftest import Keys, Stack, create_skill, make_key, wait_for_status
from tests.e2e.conftest import Console, screenshot, stored_key
from tests.e2e.test_dashboard import choose_tiny_model, log_seqs

pytestmark = pytest.mark.slow
LIMITED = "This key already has 20 open WebSockets; close one first."


async def log_in_with(page: Page, key: str) -> None:
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Log in").click()


async def test_log_in_train_and_log_out(
    page: Page, console: Console, dashboard_stack: Stack, http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    console.expect(r"status of 401")  # the wrong key below, as Chromium reports it
    await create_skill(http, "login-skill", n=12)
    await page.goto(dashboard_stack.url)
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    key_input = page.get_by_label("API key")
    await expect(key_input).to_have_attribute("type", "password")
    await expect(page.get_by_text("./run.sh prints a login link")).to_be_visible()
    await expect(page.get_by_role("navigation", name="Main")).to_have_count(0)  # nothing to see without a key
    await screenshot(page, "login")  # docs/img/login.png is this one

    # A wrong key: the server's reason, and nothing kept.
    await log_in_with(page, "fb_" + "x" * 43)
    await expect(page.get_by_role("alert")).to_contain_text("Could not log in. A valid API key is required.")
    assert await stored_key(page) is None
    await screenshot(page, "login-refused")

    await log_in_with(page, Keys.admin)
    await expect(page.get_by_role("heading", name="Skills")).to_be_visible()
    await expect(page.get_by_test_id("account")).to_have_text("Workspace default · scope admin")
    assert await stored_key(page) == Keys.admin
    skill = page.get_by_role("list", name="Skills").get_by_role("listitem")
    await expect(skill).to_have_count(1)
    await expect(skill).to_contain_text("login-skill")

    # Train it. The first stream is refused as over the key's WebSocket limit (4429): the
    # page says so, tries again with a new ticket, and then follows the whole run.
    streams: list[str] = []

    async def too_many_at_first(ws: WebSocketRoute) -> None:
        streams.append(ws.url)
        if len(streams) > 1:
            ws.connect_to_server()
            return
        ws.send(json.dumps({"type": "error", "category": "TOO_MANY_WEBSOCKETS", "message": LIMITED, "final": True}))
        await ws.close(code=4429)

    await page.route_web_socket(re.compile(r".*/api/training-stream/.*"), too_many_at_first)
    await skill.get_by_role("link", name="Train").click()
    await choose_tiny_model(page, epochs=1, batch_size=2)
    await page.get_by_role("button", name="Start Training").click()
    await expect(page.get_by_role("status").filter(has_text=LIMITED)).to_contain_text("Retrying")
    await expect(page.get_by_test_id("complete")).to_be_visible(timeout=300_000)
    job_id = page.url.rsplit("/", 1)[1]
    last = (await http.get(f"/api/training-status/{job_id}")).json()["last_event_seq"]
    assert await log_seqs(page) == list(range(1, last + 1))
    assert len(streams) == 2

    # A ticket that lapsed before use (4401 INVALID_TICKET): the page gets a fresh one and streams on.
    bogus = {"ticket": "bogus", "expires_in": 60, "protocols": ["fastbrain", "fastbrain.ticket.bogus"]}
    tickets: list[str] = []

    async def bogus_first(route: Route) -> None:
        tickets.append(route.request.url)
        if len(tickets) == 1:
            await route.fulfill(status=201, json=bogus)
        else:
            await route.continue_()

    await page.unroute_all()
    await page.route("**/api/stream-tickets", bogus_first)
    await page.reload()
    await expect(page.get_by_test_id("complete")).to_be_visible()
    async with asyncio.timeout(15):  # the refused socket's retry comes after its backoff
        while len(tickets) < 2 or await log_seqs(page) != list(range(1, last + 1)):
            await asyncio.sleep(0.2)
    assert await stored_key(page) == Keys.admin
    await page.unroute("**/api/stream-tickets")

    # A key revoked while the page is open: its next request logs out, with the reason.
    doomed = await make_key(engine, keys.DEFAULT_WORKSPACE, keys.Scope.READ, "dashboard-doomed")
    await page.get_by_role("button", name="Log out").click()
    await log_in_with(page, doomed)
    await expect(page.get_by_test_id("account")).to_have_text("Workspace default · scope read")
    # On the skills list: no stream open (an open one would notice the revocation itself within 5 s).
    await page.get_by_role("link", name="Skills").click()
    await expect(page.get_by_role("list", name="Skills").get_by_role("listitem")).to_have_count(1)
    async with create_sessionmaker(engine)() as session, session.begin():
        assert await keys.revoke_key(session, doomed[: keys.SHOWN_CHARS]) is not None
    await page.get_by_role("link", name="Adapters").click()
    await expect(page.get_by_role("alert")).to_contain_text("You were logged out. A valid API key is required.")
    assert await stored_key(page) is None
    await page.goto(f"{dashboard_stack.url}/#/jobs/{job_id}")
    await log_in_with(page, Keys.admin)
    await expect(page.get_by_test_id("complete")).to_be_visible()  # back where it was

    # Log out: back at the login screen, the key gone (a reload stays logged out).
    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    assert await stored_key(page) is None
    await page.reload()
    await expect(page.get_by_label("API key")).to_be_visible()


async def test_another_workspace_sees_nothing_of_the_first(
    page: Page, console: Console, dashboard_stack: Stack, http: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    console.expect(r"status of 404")  # the first workspace's job and skill, as Chromium reports them
    await create_skill(http, "private-skill", n=12)
    response = await http.post(
        "/api/train-skill/private-skill", json={"config": {"preset": "quick", "base_model": "tiny-random"}}
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    await wait_for_status(http, job_id, {"completed"})

    other = await make_key(engine, "other-ws", keys.Scope.TRAIN, "dashboard-other")
    await page.goto(dashboard_stack.url)
    await log_in_with(page, other)
    await expect(page.get_by_test_id("account")).to_have_text("Workspace other-ws · scope train")
    await expect(page.get_by_text("No skills yet")).to_be_visible()
    await expect(page.get_by_role("list", name="Skills")).to_have_count(0)

    # The first workspace's run, skill and adapter, by address: not found, no data.
    await page.goto(f"{dashboard_stack.url}/#/jobs/{job_id}")
    await expect(page.get_by_role("alert")).to_contain_text(re.compile("not found", re.IGNORECASE))
    await expect(page.get_by_test_id("complete")).to_have_count(0)
    await expect(page.get_by_test_id("log")).to_have_count(0)
    await page.goto(f"{dashboard_stack.url}/#/skills/private-skill")
    await expect(page.get_by_role("alert").first).to_contain_text(re.compile("not found", re.IGNORECASE))
    await page.goto(f"{dashboard_stack.url}/#/adapters")
    await expect(page.get_by_text("No adapters yet")).to_be_visible()
    await expect(page.get_by_test_id("history-row")).to_have_count(0)
    await screenshot(page, "other-workspace")
