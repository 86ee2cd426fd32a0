"""The dashboard, as a user drives it: Chromium against the real API and worker.

Each test walks one journey of the spec's screens and saves screenshots of them
in test-artifacts/screenshots/.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, WebSocketRoute, expect

from shared.settings import Settings
from tests.conftest import Stack, create_skill, demo_conversations, wait_for_status
from tests.e2e.conftest import PHONE, log_in, screenshot

pytestmark = pytest.mark.slow


async def choose_tiny_model(page: Page, epochs: int, batch_size: int) -> None:
    """Advanced mode, tiny-random, the given epochs and batch size; waits for the new estimate."""
    await page.get_by_role("button", name="Advanced").click()
    await page.get_by_label("Base model", exact=True).select_option("tiny-random")
    await page.get_by_label("Epochs", exact=True).select_option(str(epochs))
    await page.get_by_label("Batch size", exact=True).select_option(str(batch_size))
    estimate = page.get_by_test_id("estimate")
    await expect(estimate).to_have_attribute("aria-busy", "false")
    await expect(estimate).to_contain_text(f"{epochs} epoch{'' if epochs == 1 else 's'})")


async def log_seqs(page: Page) -> list[int]:
    return [
        int(s) for s in await page.locator("[data-testid=log] li").evaluate_all("els => els.map(e => e.dataset.seq)")
    ]


async def test_create_train_chat_and_manage_versions(
    page: Page, dashboard_stack: Stack, http: httpx.AsyncClient, tmp_path: Path, serve: str
) -> None:
    base = dashboard_stack.url
    await log_in(page, base)
    await expect(page.get_by_role("heading", name="Skills")).to_be_visible()

    # Create a skill, add one example by hand and eleven from a file.
    await page.get_by_role("link", name="+ New skill").click()
    await page.get_by_label("Name").fill("Sweetener Guide")
    await expect(page.get_by_label("Skill ID")).to_have_value("sweetener-guide")
    await page.get_by_label("System prompt").fill("You know every sweetener. Answer in one friendly sentence.")
    await page.get_by_role("button", name="Create skill").click()
    await expect(page).to_have_url(re.compile(r"#/skills/sweetener-guide$"))

    first, *rest = demo_conversations(12)
    await page.get_by_label("User says").fill(first["user"])
    await page.get_by_label("Skill answers").fill(first["assistant"])
    await page.get_by_role("button", name="Add example").click()
    await expect(page.get_by_role("heading", name="Examples (1)")).to_be_visible()
    upload = tmp_path / "examples.jsonl"
    upload.write_text("".join(json.dumps(c) + "\n" for c in rest))
    await page.get_by_label(re.compile("JSON, JSONL or CSV")).set_input_files(str(upload))
    await page.get_by_role("button", name="Import").click()
    await expect(page.get_by_role("status")).to_contain_text("Imported 11 examples")
    await expect(page.get_by_test_id("data-examples")).to_contain_text("12", timeout=90_000)
    await expect(page.get_by_test_id("example")).to_have_count(12)
    await screenshot(page, "skill")

    # The Training Console: keyboard on the intensity slider, a tooltip, then advanced settings.
    await page.get_by_role("link", name="Train this skill").click()
    await expect(page.get_by_label("Select skill")).to_have_value("sweetener-guide")
    slider = page.get_by_role("slider", name="Training intensity")
    await slider.focus()
    await page.keyboard.press("ArrowRight")
    await expect(slider).to_have_attribute("aria-valuetext", "Deep")
    await page.keyboard.press("ArrowLeft")
    await expect(slider).to_have_attribute("aria-valuetext", "Standard")
    await expect(page.get_by_text("Quality score")).to_be_visible()
    await choose_tiny_model(page, epochs=5, batch_size=1)
    rank_help = page.get_by_role("button", name="What is rank (r)?")
    await rank_help.focus()
    await expect(page.get_by_role("tooltip", name=re.compile("How much the adapter can learn"))).to_be_visible()
    await screenshot(page, "train-console")

    # Drop the first WebSocket after a few events: the page must resume without gaps or duplicates.
    stream_urls: list[str] = []

    async def flaky_stream(ws: WebSocketRoute) -> None:
        stream_urls.append(ws.url)
        server = ws.connect_to_server()
        if len(stream_urls) > 1:
            return  # later connections pass straight through
        forwarded = 0

        async def forward(message: str | bytes) -> None:
            nonlocal forwarded
            forwarded += 1
            if forwarded <= 4:
                ws.send(message)
            if forwarded == 4:
                await ws.close()

        server.on_message(forward)

    await page.route_web_socket(re.compile(r".*/api/training-stream/.*"), flaky_stream)
    # A browser cannot put the key on a WebSocket: each (re)connect first takes a one-use ticket.
    tickets: list[str] = []
    page.on("request", lambda r: tickets.append(r.method) if r.url.endswith("/api/stream-tickets") else None)
    await page.get_by_role("button", name="Start Training").click()
    await expect(page).to_have_url(re.compile(r"#/jobs/[0-9a-f-]{36}$"))
    job_id = page.url.rsplit("/", 1)[1]

    # Live: the loss chart gains points while the run is still going.
    loss_chart = page.get_by_test_id("loss-chart")
    await expect(loss_chart).to_have_attribute("data-points", re.compile(r"^[2-9]$|^\d\d+$"), timeout=120_000)
    now = (await http.get(f"/api/training-status/{job_id}")).json()
    assert now["status"] == "running", "the chart only filled after the run ended"
    await screenshot(page, "progress")

    await expect(page.get_by_test_id("complete")).to_be_visible(timeout=300_000)
    await expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    status = (await http.get(f"/api/training-status/{job_id}")).json()
    assert status["status"] == "completed"
    await expect(loss_chart).to_have_attribute("data-points", str(len(status["metrics_history"])))
    await expect(page.get_by_test_id("steps")).to_contain_text(f"Step {status['total_steps']}/{status['total_steps']}")
    before, after = status["eval_loss_before"], status["eval_loss_after"]
    verb = "decreased" if after <= before else "increased"
    await expect(page.get_by_test_id("improvement")).to_contain_text(
        re.compile(rf"Loss {verb} [\d.]+% \({before:.2f} → {after:.2f}\) on {status['eval_examples']} held-out")
    )

    assert len(stream_urls) >= 2, "the page never reconnected"
    assert stream_urls[0].endswith("after_seq=0") and stream_urls[1].endswith("after_seq=4")
    assert tickets[: len(stream_urls)] == ["POST"] * len(stream_urls), "a stream opened without a fresh ticket"
    seqs = await log_seqs(page)
    assert seqs == list(range(1, status["last_event_seq"] + 1)), "log has gaps or duplicates"

    # Chat with the trained skill (the answer streams in: tests/e2e/test_chat.py), then export it.
    await page.get_by_label("Message").fill("Tell me about honey?")
    await page.get_by_role("button", name="Send").click()
    await expect(page.get_by_test_id("chat-reply")).to_have_attribute("data-state", "done", timeout=60_000)
    await expect(page.get_by_test_id("chat-reply")).to_contain_text("v1")
    await screenshot(page, "complete")
    async with page.expect_download() as download_info:
        await page.get_by_role("link", name="Export").click()
    download = await download_info.value
    assert download.suggested_filename == "sweetener-guide-v1.tar.gz"
    # Export as… a merged model: an export job, offered once verified, its files listed with their sha256.
    await page.get_by_text("Export as…").click()
    await page.get_by_role("menuitem", name="Merged model (Hugging Face)").click()
    export_status = page.get_by_test_id("export-status")
    await expect(export_status).to_contain_text("merged: completed", timeout=180_000)
    await expect(export_status).to_contain_text("Verified: merged logits within")
    await expect(export_status.get_by_role("link", name="model.safetensors")).to_be_visible()

    # Train again (Quick) for a second version.
    await page.get_by_role("link", name="Train Again").click()
    await expect(page.get_by_label("Select skill")).to_have_value("sweetener-guide")
    await choose_tiny_model(page, epochs=1, batch_size=2)
    await page.get_by_role("button", name="Start Training").click()
    await expect(page.get_by_test_id("complete")).to_be_visible(timeout=300_000)

    # The gallery: v2 is active; activate v1, test it, delete v2.
    await page.get_by_role("link", name="Adapters").click()
    cards = page.get_by_test_id("adapter-card")
    await expect(cards).to_have_count(2)
    v1, v2 = cards.and_(page.locator("[data-version='1']")), cards.and_(page.locator("[data-version='2']"))
    await expect(v2).to_contain_text("Active ✓")
    await expect(v1).to_contain_text("Inactive")
    await expect(v1).to_contain_text(re.compile(r"just now|\dm ago"))
    await expect(page.get_by_test_id("history-row")).to_have_count(2)
    await expect(page.get_by_test_id("history-row").first).to_contain_text("✓ Done")
    await screenshot(page, "adapters")

    await page.get_by_role("button", name="Activate sweetener-guide v1").click()
    await expect(v1).to_contain_text("Active ✓")
    await expect(v2).to_contain_text("Inactive")
    await v1.get_by_role("button", name="Test").click()
    await v1.get_by_label("Message").fill("How do I store molasses?")
    await v1.get_by_role("button", name="Send").click()
    await expect(v1.get_by_test_id("chat-reply")).to_have_attribute("data-state", "done", timeout=60_000)
    await expect(v1.get_by_test_id("chat-reply")).to_contain_text("v1")

    await page.get_by_role("button", name="Delete sweetener-guide v2").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text("Delete Sweetener Guide v2?")
    await dialog.get_by_role("button", name="Delete").click()
    await expect(cards).to_have_count(1)
    adapters = (await http.get("/api/adapters", params={"skill_id": "sweetener-guide"})).json()["adapters"]
    assert [(a["version"], a["is_active"]) for a in adapters] == [(1, True)]

    # Phone-sized: nothing wider than the screen.
    await page.set_viewport_size(PHONE)
    screens = {
        "#/adapters": page.get_by_test_id("adapter-card"),
        f"#/jobs/{job_id}": page.get_by_test_id("complete"),
        "#/train/sweetener-guide": page.get_by_text("Estimated time"),
    }
    for route, content in screens.items():
        await page.goto(f"{base}/{route}")
        await expect(content).to_be_visible()
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{route} is {width}px wide on a phone"
    await screenshot(page, "train-console-phone")


async def test_cancel_a_run(page: Page, dashboard_stack: Stack, http: httpx.AsyncClient) -> None:
    await create_skill(http, "cancel-me", n=12)
    await log_in(page, dashboard_stack.url, "#/train/cancel-me")
    await choose_tiny_model(page, epochs=20, batch_size=1)
    await page.get_by_role("button", name="Start Training").click()
    await expect(page.get_by_test_id("loss-chart")).to_have_attribute(
        "data-points", re.compile(r"^[1-9]"), timeout=120_000
    )
    await page.get_by_role("button", name="Cancel").click()
    await expect(page.get_by_test_id("cancelled")).to_be_visible(timeout=60_000)
    job_id = page.url.rsplit("/", 1)[1]
    status = (await http.get(f"/api/training-status/{job_id}")).json()
    assert status["status"] == "cancelled" and status["adapter_id"] is None
    await expect(page.get_by_test_id("job-status")).to_have_text("Cancelled")
    await screenshot(page, "cancelled")


@pytest.fixture
def failing_stack(migrated: Settings) -> Any:
    """Every run's connection is refused, more times than recovery retries."""
    env = {"FASTBRAIN_TEST_NETWORK_FAILURES": "9", "FASTBRAIN_NETWORK_BACKOFF_SECONDS": "0.1"}
    stack = Stack("dashboard-failing", migrated, env)
    stack.start_worker()
    yield stack
    stack.stop()


async def test_error_panel_explains_a_failed_run(failing_stack: Stack, page: Page) -> None:
    async with failing_stack.client(timeout=60) as http:
        await create_skill(http, "flaky-net", n=12)
        response = await http.post(
            "/api/train-skill/flaky-net", json={"config": {"preset": "quick", "base_model": "tiny-random"}}
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["job_id"]
        await log_in(page, failing_stack.url, f"#/jobs/{job_id}")
        panel = page.get_by_test_id("error-panel")
        await expect(panel).to_be_visible(timeout=180_000)
        status = await wait_for_status(http, job_id, {"failed"})

    details = status["error_details"]
    await expect(panel).to_contain_text(details["user_message"])
    tried = panel.locator(".attempts li")
    await expect(tried).to_have_count(len(status["recovery_attempts"]))
    await expect(tried.first).to_contain_text("✓")
    await expect(tried.last).to_contain_text("✗")
    for suggestion in details["suggestions"]:
        await expect(panel).to_contain_text(suggestion)
    await expect(panel.get_by_role("button", name="Retry")).to_be_enabled()
    await screenshot(page, "error-panel")

    await panel.get_by_role("link", name="Adjust Settings").click()
    await expect(page.get_by_label("Base model", exact=True)).to_have_value("tiny-random")
    await expect(page.get_by_role("button", name="Quick Test")).to_have_attribute("aria-pressed", "true")
    await expect(page.get_by_label("Epochs", exact=True)).to_have_value("1")
    await expect(page.get_by_test_id("estimate")).to_contain_text("1 epoch)")
    await expect(page.get_by_test_id("data-examples")).to_contain_text("12", timeout=90_000)
