"""Chatting in the dashboard: answers stream in from /v1/chat/completions, and the compare
view puts the base model and two versions side by side under their held-out losses.

The engine (`fastbrain serve`) answers for real, greedily, on tiny-random: the text a browser
shows is checked against what the same request, not streamed, returns.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from playwright.async_api import Locator, Page, Request, Route, expect

from tests.conftest import Stack, create_skill, wait_for_status
from tests.e2e.conftest import DESKTOP, PHONE, Console, log_in, screenshot

pytestmark = pytest.mark.slow
SYSTEM_PROMPT = "You know every sweetener. Answer in one friendly sentence."
ANSWER = 60_000  # ms: a streamed answer on a busy 2-core machine

# Slows each server-sent event of /v1/chat/completions by window.__slowChat ms (0: off), one
# event at a time, so that a test can watch an answer grow and stop it halfway.
SLOW_CHAT = """
(() => {
  const original = window.fetch;
  window.__slowChat = 300;
  window.fetch = async (...args) => {
    const response = await original(...args);
    const url = typeof args[0] === "string" ? args[0] : args[0].url;
    if (!window.__slowChat || !url.includes("/v1/chat/completions") || !response.body) return response;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const encoder = new TextEncoder();
    let buffer = "";
    const body = new ReadableStream({
      async pull(controller) {
        while (true) {
          const cut = buffer.indexOf("\\n\\n");
          if (cut >= 0) {
            const event = buffer.slice(0, cut + 2);
            buffer = buffer.slice(cut + 2);
            await new Promise((resolve) => setTimeout(resolve, window.__slowChat));
            controller.enqueue(encoder.encode(event));
            return;
          }
          const { value, done } = await reader.read();
          if (done) {
            if (buffer) controller.enqueue(encoder.encode(buffer));
            controller.close();
            return;
          }
          buffer += decoder.decode(value, { stream: true });
        }
      },
      cancel(reason) {
        return reader.cancel(reason);
      },
    });
    return new Response(body, { status: response.status, headers: response.headers });
  };
})();
"""


async def train(http: httpx.AsyncClient, skill_id: str) -> dict[str, Any]:
    """One Quick run on tiny-random through the stack (API, queue, worker, trainer); its final status."""
    response = await http.post(
        f"/api/train-skill/{skill_id}", json={"config": {"preset": "quick", "base_model": "tiny-random"}}
    )
    assert response.status_code == 202, response.text
    status = await wait_for_status(http, response.json()["job_id"], {"completed", "failed", "cancelled"})
    assert status["status"] == "completed", status.get("error_message")
    return status


class ChatRequests:
    """The bodies the page sent to /v1/chat/completions, in order."""

    def __init__(self, page: Page) -> None:
        self.bodies: list[dict[str, Any]] = []
        page.on("request", self._seen)

    def _seen(self, request: Request) -> None:
        if request.url.endswith("/v1/chat/completions") and request.method == "POST":
            body = request.post_data_json
            if isinstance(body, dict):
                self.bodies.append(body)


async def unstreamed(http: httpx.AsyncClient, body: dict[str, Any]) -> str:
    """The answer to the same request as the page's, asked for in one piece."""
    assert body["stream"] is True and body["temperature"] == 0, body
    plain = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    response = await http.post("/v1/chat/completions", json=plain)
    assert response.status_code == 200, response.text
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


def openai_error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": code}}


async def finished_text(reply: Locator) -> str:
    """The answer as the page shows it once it has finished: the model's text, leading blank lines left out."""
    await expect(reply).to_have_attribute("data-state", "done", timeout=ANSWER)
    text = await reply.locator(".answer").text_content()
    assert text is not None
    return text


async def test_chat_streams_and_compare_shows_base_and_two_versions(
    page: Page, dashboard_stack: Stack, http: httpx.AsyncClient, serve: str
) -> None:
    await create_skill(http, "stream-chat", n=12, system_prompt=SYSTEM_PROMPT)
    first = await train(http, "stream-chat")
    sent = ChatRequests(page)

    # The Complete view's chat: the answer streams in, token by token, with its timings.
    await log_in(page, dashboard_stack.url, f"#/jobs/{first['job_id']}")
    await expect(page.get_by_test_id("complete")).to_be_visible()
    chat = page.get_by_role("region", name="Test chat")
    await expect(chat.get_by_role("heading")).to_have_text("Test your trained skill (v1)")
    await chat.get_by_label("Message").fill("Tell me about honey?")
    await chat.get_by_role("button", name="Send").click()
    reply = chat.get_by_test_id("chat-reply")
    answer = await finished_text(reply)
    assert sent.bodies[0]["model"] == "stream-chat@v1"  # the job's version, pinned
    assert sent.bodies[0]["messages"] == [{"role": "user", "content": "Tell me about honey?"}]
    full = await unstreamed(http, sent.bodies[0])
    assert answer and answer == full.lstrip()
    assert int(await reply.get_attribute("data-chunks") or 0) > 1, "the answer came in one piece"
    await expect(reply.get_by_test_id("timing")).to_have_text(
        re.compile(r"^v1 · first token [\d.]+ m?s · total [\d.]+ m?s")
    )
    await expect(chat.get_by_label("Message")).to_be_focused()

    # A second turn carries the first one.
    await chat.get_by_label("Message").fill("How do I store it?")
    await chat.get_by_role("button", name="Send another test").click()
    second = await finished_text(reply.nth(1))
    assert sent.bodies[1]["messages"] == [
        {"role": "user", "content": "Tell me about honey?"},
        {"role": "assistant", "content": full},  # as the model said it
        {"role": "user", "content": "How do I store it?"},
    ]
    assert second == (await unstreamed(http, sent.bodies[1])).lstrip()
    await screenshot(page, "chat-streamed")

    # A second version; the gallery's Compare opens it against the base model and v1.
    second_job = await train(http, "stream-chat")
    await page.goto(f"{dashboard_stack.url}/#/adapters")
    await page.get_by_role("link", name="Compare stream-chat v2").click()
    await expect(page).to_have_url(re.compile(r"#/compare/stream-chat\?a=2$"))
    await expect(page.get_by_role("heading", name="Compare: stream-chat")).to_be_visible()
    base, a, b = (page.get_by_test_id(f"column-{k}") for k in ("base", "a", "b"))
    await expect(page.get_by_role("combobox", name="Version A")).to_have_value("2")
    await expect(page.get_by_role("combobox", name="Version B")).to_have_value("1")
    await expect(base.locator("code")).to_have_text("tiny-random")
    await expect(a.locator("code")).to_have_text("stream-chat@v2")
    await expect(b.locator("code")).to_have_text("stream-chat@v1")
    losses = {
        base: second_job["eval_loss_before"],
        a: second_job["eval_loss_after"],
        b: first["eval_loss_after"],
    }
    for column, value in losses.items():
        assert value is not None
        await expect(column.get_by_test_id("held-out-loss")).to_contain_text(f"Held-out loss {value:.3f}")

    # One prompt, three answers streaming at once: each as the API answers it in one piece.
    asked = len(sent.bodies)
    await page.get_by_label("Prompt").fill("Can I bake with maple syrup?")
    await page.get_by_role("button", name="Compare", exact=True).click()
    answers = {}
    for column in (base, a, b):
        answers[column] = await finished_text(column.get_by_test_id("compare-answer"))
        await expect(column.get_by_test_id("timing")).to_contain_text("first token")
    bodies = {body["model"]: body for body in sent.bodies[asked:]}
    assert sorted(bodies) == ["stream-chat@v1", "stream-chat@v2", "tiny-random"]
    for model, column in (("tiny-random", base), ("stream-chat@v2", a), ("stream-chat@v1", b)):
        # The base model gets the skill's system prompt too: the three answer the same question.
        assert bodies[model]["messages"] == [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "Can I bake with maple syrup?"},
        ]
        assert answers[column] == (await unstreamed(http, bodies[model])).lstrip(), model
    await screenshot(page, "compare")

    # Phone-sized: the columns stack, nothing wider than the screen.
    await page.set_viewport_size(PHONE)
    await expect(b).to_be_visible()
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the compare view is {width}px wide on a phone"
    boxes = [await column.bounding_box() for column in (base, a, b)]
    assert all(box is not None for box in boxes)
    xs = {round(box["x"]) for box in boxes if box}
    ys = [box["y"] for box in boxes if box]
    assert len(xs) == 1 and ys == sorted(ys), f"the columns do not stack: {boxes}"
    await screenshot(page, "compare-phone")

    # Choosing another version: its column starts afresh and the address says which.
    await page.set_viewport_size(DESKTOP)
    await page.get_by_role("combobox", name="Version B").select_option("2")
    await expect(b.locator("code")).to_have_text("stream-chat@v2")
    await expect(b.get_by_test_id("compare-answer")).to_have_count(0)
    await expect(b.get_by_test_id("held-out-loss")).to_contain_text(f"{second_job['eval_loss_after']:.3f}")
    await expect(page).to_have_url(re.compile(r"#/compare/stream-chat\?a=2&b=2$"))


async def test_stop_an_answer_and_see_why_one_failed(
    page: Page, console: Console, dashboard_stack: Stack, http: httpx.AsyncClient, serve: str
) -> None:
    await create_skill(http, "stop-chat", n=12, system_prompt=SYSTEM_PROMPT)
    await train(http, "stop-chat")
    sent = ChatRequests(page)
    await page.add_init_script(SLOW_CHAT)
    await log_in(page, dashboard_stack.url, "#/adapters")
    card = page.get_by_test_id("adapter-card")
    await card.get_by_role("button", name="Test").click()

    # Stop halfway: the text so far stays, marked stopped, and the next turn builds on it.
    await card.get_by_label("Message").fill("What does it taste like, honey?")
    await card.get_by_role("button", name="Send").click()
    reply = card.get_by_test_id("chat-reply")
    await expect(reply).to_have_attribute("data-state", "streaming")
    await expect(reply.locator(".answer")).to_have_text(
        re.compile(r"\S"), timeout=ANSWER
    )  # a word, not just blank lines
    await expect(card.locator(".chat-log")).to_have_attribute("aria-busy", "true")
    await screenshot(page, "chat-streaming")
    await card.get_by_role("button", name="Stop", exact=True).click()
    await expect(reply).to_have_attribute("data-state", "stopped")
    await expect(reply.get_by_test_id("timing")).to_contain_text("stopped")
    partial = await reply.locator(".answer").text_content()
    assert partial and partial.strip()
    full = (await unstreamed(http, sent.bodies[0])).lstrip()
    assert full.startswith(partial) and len(partial) < len(full), (partial, full)

    await page.evaluate("window.__slowChat = 0")
    await card.get_by_label("Message").fill("And how do I store it?")
    await card.get_by_role("button", name="Send another test").click()
    answer = await finished_text(reply.nth(1))
    said = sent.bodies[1]["messages"][1]
    assert said["role"] == "assistant" and said["content"].lstrip() == partial  # the stopped answer carries over
    assert answer == (await unstreamed(http, sent.bodies[1])).lstrip()

    # New conversation: nothing carries over.
    await card.get_by_role("button", name="New conversation").click()
    await expect(reply).to_have_count(0)

    # Refused before the answer began (the engine is down, say): the API's message, and what to try.
    console.expect(r"status of 503")
    refusal = openai_error("The inference engine is not reachable.", "engine_unavailable")

    async def refuse(route: Route) -> None:
        await route.fulfill(status=503, content_type="application/json", body=json.dumps(refusal))

    await page.route("**/v1/chat/completions", refuse)
    await card.get_by_label("Message").fill("Is it healthy to eat honey?")
    await card.get_by_role("button", name="Send").click()
    alert = card.get_by_role("alert")
    await expect(alert).to_contain_text("The inference engine is not reachable.")
    await expect(alert).to_contain_text("Is the inference engine (fastbrain serve) running?")
    await expect(reply).to_have_attribute("data-state", "error")
    await expect(reply.get_by_test_id("timing")).to_have_text("v1 · ✗ failed")
    await expect(card.get_by_label("Message")).to_have_value("Is it healthy to eat honey?")  # to send again

    # Failed halfway: the text so far, then the error the stream ended with.
    await page.unroute("**/v1/chat/completions")

    def chunk(delta: dict[str, str]) -> str:
        body = {
            "id": "x",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        return f"data: {json.dumps(body)}\n\n"

    failure = openai_error("Generation failed: out of memory", "CUDA_OOM")
    stream = (
        chunk({"role": "assistant", "content": ""}) + chunk({"content": "Half an"}) + f"data: {json.dumps(failure)}\n\n"
    )

    async def fail(route: Route) -> None:
        await route.fulfill(status=200, content_type="text/event-stream", body=stream)

    await page.route("**/v1/chat/completions", fail)
    await card.get_by_label("Message").fill("Where can I buy honey?")
    await card.get_by_role("button", name="Send another test").click()
    await expect(alert).to_contain_text("Generation failed: out of memory")
    await expect(reply.nth(1)).to_have_attribute("data-state", "error")
    await expect(reply.nth(1).locator(".answer")).to_have_text("Half an")
    await screenshot(page, "chat-error")
