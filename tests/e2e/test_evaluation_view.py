"""The Complete view's evaluation, as a user sees it after a real tiny-random training: the held-out loss
change, the stars and their meaning, the kept step, and the side-by-side table of held-out prompts answered by
the reference, the base model and the adapter, matching what GET /api/training-status/{id} stored. Then the
regression gate's banner and its Activate button, and the gallery's stars.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
from playwright.async_api import Page, Route, expect

from tests.conftest import Stack, create_skill, wait_for_status
from tests.e2e.conftest import PHONE, log_in, screenshot
from tests.integration.test_training_e2e import TINY

pytestmark = pytest.mark.slow


async def test_complete_view_shows_the_side_by_side_evaluation_and_stars(
    page: Page, dashboard_stack: Stack, http: httpx.AsyncClient
) -> None:
    await create_skill(http, "eval-view", n=12, system_prompt="You know every sweetener. Answer in one sentence.")
    started = await http.post("/api/train-skill/eval-view", json={"config": TINY})
    assert started.status_code == 202, started.text
    job_id = started.json()["job_id"]
    await log_in(page, dashboard_stack.url, f"#/jobs/{job_id}")
    complete = page.get_by_test_id("complete")
    await expect(complete).to_be_visible(timeout=300_000)
    status = await wait_for_status(http, job_id, {"completed"}, timeout=30)

    # Loss decreased (or increased) N% on the held-out examples, the stars with their meaning, the kept step.
    before, after = status["eval_loss_before"], status["eval_loss_after"]
    verb = "decreased" if after <= before else "increased"
    await expect(page.get_by_test_id("improvement")).to_contain_text(
        re.compile(rf"Loss {verb} [\d.]+% \({before:.2f} → {after:.2f}\) on 3 held-out")
    )
    quality = status["quality"]
    line = page.get_by_test_id("quality")
    if quality["stars"] is not None:
        await expect(line).to_have_attribute("data-stars", str(quality["stars"]))
        await expect(line).to_contain_text("★" * quality["stars"] + "☆" * (5 - quality["stars"]))
        await expect(line).to_contain_text(f"{quality['label']} - {quality['meaning']}")
        await expect(line.get_by_role("img", name=f"{quality['stars']} of 5 stars")).to_be_visible()
    else:
        await expect(line).to_contain_text(quality["reason"])
    assert status["best_step"] is not None and status["best_eval_loss"] == after
    await expect(page.get_by_test_id("kept-step")).to_contain_text(
        f"step {status['best_step']}" if status["restored_best"] else f"last step ({status['best_step']} of 6)"
    )

    # The side-by-side table: three columns, one row per stored held-out prompt, the stored answers in them.
    table = page.get_by_test_id("side-by-side")
    await expect(table.get_by_role("columnheader")).to_have_text(["Reference answer", "Base model", "Adapter"])
    samples = status["evaluation"]["samples"]
    assert len(samples) == 3 and status["evaluation"]["max_new_tokens"] == 48
    rows = table.get_by_test_id("evaluation-row")
    await expect(rows).to_have_count(len(samples))
    blocks = table.get_by_test_id("evaluation-sample")
    for i, sample in enumerate(samples):
        await expect(blocks.nth(i).get_by_role("rowheader")).to_contain_text(sample["prompt"])
        cells = rows.nth(i).get_by_role("cell")
        await expect(cells).to_have_count(3)
        empty = "(no answer: it stopped at once)"
        expected = [sample["reference"], sample["base"] or empty, sample["adapter"] or empty]
        assert [t.strip() for t in await cells.all_inner_texts()] == expected
    await expect(page.get_by_test_id("not-activated")).to_have_count(0)  # the first version: activated
    await screenshot(page, "complete-evaluation")

    # On a phone the three answers stack, labelled, within the screen's width.
    await page.set_viewport_size(PHONE)
    await expect(rows.first.get_by_role("cell").first).to_be_visible()
    await screenshot(page, "complete-evaluation-phone")
    wide = await page.evaluate(
        """() => [...document.querySelectorAll('main *')].filter(e => e.getBoundingClientRect().right > 391)
        .slice(0, 5).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))"""
    )
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the Complete view is {width}px wide on a phone: {wide}"

    # The gallery shows the version's stars.
    await page.set_viewport_size({"width": 1280, "height": 800})
    await page.goto(f"{dashboard_stack.url}/#/adapters")
    card = page.get_by_test_id("adapter-card").and_(page.locator("[data-skill='eval-view']"))
    stars = card.get_by_test_id("adapter-quality")
    if quality["stars"] is not None:
        await expect(stars).to_have_attribute("data-stars", str(quality["stars"]))
        await expect(stars.get_by_role("img", name=f"{quality['stars']} of 5 stars")).to_be_visible()
    else:
        await expect(stars).to_have_text("No score")


async def test_a_version_the_gate_kept_back_has_a_banner_and_an_activate_button(
    page: Page, dashboard_stack: Stack, http: httpx.AsyncClient
) -> None:
    """Two real versions; the status of the second is answered as the regression gate would have left it
    (this stack runs with the gate off: which of two tiny-random runs scores better is chance), and the
    Activate button then activates it for real."""
    await create_skill(http, "gate-view", n=12)
    jobs = []
    for _ in range(2):
        started = await http.post("/api/train-skill/gate-view", json={"config": {**TINY, "max_steps": 2}})
        assert started.status_code == 202, started.text
        jobs.append(started.json()["job_id"])
        await wait_for_status(http, jobs[-1], {"completed"}, timeout=300)
    v1 = next(a for a in (await http.get("/api/adapters?skill_id=gate-view")).json()["adapters"] if a["version"] == 1)
    assert (await http.post(f"/api/adapters/{v1['id']}/activate")).status_code == 200  # v1 active, as if gated
    reason = (
        "v2 was kept but not activated: its held-out loss 10.84 is worse than the active v1's 10.83 on the same "
        "3 held-out examples. Activate it from the Adapters page if you want it anyway."
    )

    async def as_gated(route: Route) -> None:
        response = await route.fetch()
        body = await response.json()
        body |= {"activated": False, "not_activated_reason": reason}
        body["regression_check"] = {
            "outcome": "regressed",
            "eval_loss": 10.84,
            "eval_examples": 3,
            "active_version": 1,
            "active_eval_loss": 10.83,
        }
        await route.fulfill(response=response, body=json.dumps(body))

    await page.route(f"**/api/training-status/{jobs[1]}*", as_gated)
    await log_in(page, dashboard_stack.url, f"#/jobs/{jobs[1]}")
    banner = page.get_by_test_id("not-activated")
    await expect(banner).to_be_visible(timeout=60_000)
    await expect(banner.get_by_role("heading")).to_have_text("⚠️ v2 is saved, but it is not the active version")
    await expect(banner).to_contain_text(reason)
    await expect(banner).to_contain_text("v2 10.8400, active v1 10.8300")
    await screenshot(page, "complete-not-activated")
    await banner.get_by_role("button", name="Activate v2 anyway").click()
    await expect(banner).to_contain_text("v2 is active now")
    adapters = (await http.get("/api/adapters?skill_id=gate-view")).json()["adapters"]
    assert [(a["version"], a["is_active"]) for a in adapters] == [(2, True), (1, False)]
