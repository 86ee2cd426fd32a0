"""The official `openai` SDK against a running Fast Brain: API, worker and inference engine, real processes.

A skill is trained on tiny-random through the API; the SDK then lists it, chats with it
(whole and streamed), and gets OpenAI-shaped errors for unknown models and bad parameters.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import openai
import pytest

from tests.conftest import ServiceProcess, auth, create_skill, wait_for_status

TINY = {"preset": "quick", "base_model": "tiny-random", "max_steps": 4, "batch_size": 2, "max_seq_length": 128}
HELLO = [{"role": "user", "content": "Tell me about molasses"}]


@dataclass
class Trained:
    skill_id: str
    adapter_id: str
    sdk: openai.OpenAI
    engine_url: str


@pytest.fixture(scope="module")
async def trained(api_url: str, worker: ServiceProcess, serve: str, admin_key: str) -> AsyncIterator[Trained]:
    skill_id = f"sdk-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=api_url, timeout=60, headers=auth(admin_key)) as http:
        await create_skill(http, skill_id, n=10, system_prompt="You are a molasses expert.")
        job = (await http.post(f"/api/train-skill/{skill_id}", json={"config": TINY})).json()
        status = await wait_for_status(http, job["job_id"], {"completed", "failed"}, timeout=300)
        assert status["status"] == "completed", status
        adapter_id = status["adapter_id"]
        sdk = openai.OpenAI(base_url=f"{api_url}/v1", api_key=admin_key, max_retries=0, timeout=120)
        yield Trained(skill_id, adapter_id, sdk, serve)
        sdk.close()
        await http.delete(f"/api/skills/{skill_id}")


def test_models_list_has_the_skill_its_version_and_the_base_models(trained: Trained) -> None:
    models = {m.id: m for m in trained.sdk.models.list()}
    assert trained.skill_id in models and f"{trained.skill_id}@v1" in models
    assert {"tiny-random", "smollm2-135m-instruct"} <= set(models)
    version = models[f"{trained.skill_id}@v1"]
    assert version.object == "model" and version.model_extra["active"] is True  # type: ignore[index]
    assert trained.sdk.models.retrieve(trained.skill_id).id == trained.skill_id


def test_chat_whole_and_streamed_give_the_same_answer(trained: Trained) -> None:
    params = {"model": trained.skill_id, "messages": HELLO, "max_tokens": 48, "temperature": 0.8, "seed": 11}
    whole = trained.sdk.chat.completions.create(**params)  # type: ignore[call-overload]
    answer = whole.choices[0].message.content
    assert whole.object == "chat.completion" and whole.model == trained.skill_id
    assert answer and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.prompt_tokens > 5 and whole.usage.completion_tokens > 0
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    started = time.monotonic()
    arrivals: list[float] = []
    pieces: list[str] = []
    finish = None
    stream = trained.sdk.chat.completions.create(**params, stream=True, stream_options={"include_usage": True})  # type: ignore[call-overload]
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                arrivals.append(time.monotonic() - started)
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert "".join(pieces) == answer, "the same seed must give the same text, streamed or not"
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    assert len(arrivals) > 3, arrivals
    assert arrivals[0] < arrivals[-1], "chunks must arrive over time, not all at the end"


def test_greedy_answers_are_deterministic_and_the_system_prompt_can_be_replaced(trained: Trained) -> None:
    def ask(messages: list[dict[str, str]]) -> str:
        response = trained.sdk.chat.completions.create(
            model=trained.skill_id,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=16,
            temperature=0,
        )
        return str(response.choices[0].message.content)

    default = ask(HELLO)
    assert ask(HELLO) == default
    skill_prompt = ask([{"role": "system", "content": "You are a molasses expert."}, *HELLO])
    assert skill_prompt == default, "without a system message the skill's own prompt is used"
    pinned = trained.sdk.chat.completions.create(
        model=f"{trained.skill_id}@v1",
        messages=HELLO,  # type: ignore[arg-type]
        max_tokens=16,
        temperature=0,
    )
    assert pinned.choices[0].message.content == default


def test_unknown_model_is_a_404_in_openais_shape(trained: Trained) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        trained.sdk.chat.completions.create(model="no-such-skill", messages=HELLO)  # type: ignore[arg-type]
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found" and body["type"] == "invalid_request_error"
    assert body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        trained.sdk.chat.completions.create(model=f"{trained.skill_id}@v9", messages=HELLO)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": 5},
        {"max_tokens": 0},
        {"n": 2},
        {"messages": []},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"stop": ["a", "b", "c", "d", "e"]},
    ],
)
def test_bad_parameters_are_a_400_in_openais_shape(trained: Trained, bad: dict[str, object]) -> None:
    params = {"model": trained.skill_id, "messages": HELLO, **bad}
    with pytest.raises(openai.BadRequestError) as caught:
        trained.sdk.chat.completions.create(**params)  # type: ignore[call-overload]
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error" and body["message"]


def test_a_missing_or_wrong_key_is_a_401_in_openais_shape(trained: Trained) -> None:
    stranger = openai.OpenAI(base_url=str(trained.sdk.base_url), api_key="fb_" + "x" * 43, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        stranger.models.list()
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "authentication_error"


async def test_a_client_that_disconnects_stops_its_generation(trained: Trained, api_url: str, admin_key: str) -> None:
    async with httpx.AsyncClient(base_url=api_url, timeout=60, headers=auth(admin_key)) as http:
        before = httpx.get(f"{trained.engine_url}/health").json()
        body = {"model": trained.skill_id, "messages": HELLO, "max_tokens": 1900, "stream": True, "temperature": 1}
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    break  # one token seen; hang up
        deadline = time.monotonic() + 10
        health = httpx.get(f"{trained.engine_url}/health").json()
        while health["active"] and time.monotonic() < deadline:
            time.sleep(0.1)
            health = httpx.get(f"{trained.engine_url}/health").json()
    assert health["active"] == 0, "the engine must drop a generation whose client went away"
    assert health["served"] == before["served"], "it was stopped, not finished"


async def test_test_adapter_is_served_by_the_same_engine(trained: Trained, api_url: str, admin_key: str) -> None:
    async with httpx.AsyncClient(base_url=api_url, timeout=60, headers=auth(admin_key)) as http:
        before = httpx.get(f"{trained.engine_url}/health").json()
        chat = await http.post(f"/api/test-adapter/{trained.skill_id}", json={"prompt": "Hello?", "max_new_tokens": 8})
        assert chat.status_code == 200, chat.text
        assert chat.json()["adapter_id"] == trained.adapter_id
        after = httpx.get(f"{trained.engine_url}/health").json()
    assert after["served"] == before["served"] + 1
    assert after["base_loads"] == before["base_loads"], "the base model stays loaded"


async def test_deleting_the_skill_unloads_its_adapter_and_unlists_it(
    trained: Trained, api_url: str, admin_key: str
) -> None:
    """Last in this module: it deletes the trained skill."""
    resident = httpx.get(f"{trained.engine_url}/health").json()["resident"]
    assert trained.adapter_id in resident["tiny-random"], "chatting made the adapter resident"
    async with httpx.AsyncClient(base_url=api_url, timeout=60, headers=auth(admin_key)) as http:
        assert (await http.delete(f"/api/skills/{trained.skill_id}")).status_code == 200
    resident = httpx.get(f"{trained.engine_url}/health").json()["resident"]
    assert trained.adapter_id not in resident["tiny-random"]
    assert trained.skill_id not in {m.id for m in trained.sdk.models.list()}
    with pytest.raises(openai.NotFoundError):
        trained.sdk.chat.completions.create(model=trained.skill_id, messages=HELLO)  # type: ignore[arg-type]
