"""Limits (issue 11): request body size while it is read, examples per skill, characters per turn.

An API server of its own with small limits (FASTBRAIN_MAX_*), against real PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.limits import BodySizeLimit
from shared.schemas.skills import MAX_TURN_CHARS
from shared.settings import Settings
from tests.conftest import Stack, demo_conversations
from tests.integration.test_skills_api import assert_error_shape

BODY_LIMIT = 64 * 1024
EXAMPLES_LIMIT = 10
TURN_LIMIT = 500
SKILL = "limited"


@pytest.fixture(scope="module")
def stack(migrated: Settings) -> Iterator[Stack]:
    limits = {
        "FASTBRAIN_MAX_REQUEST_BODY_BYTES": str(BODY_LIMIT),
        "FASTBRAIN_MAX_EXAMPLES_PER_SKILL": str(EXAMPLES_LIMIT),
        "FASTBRAIN_MAX_TURN_CHARS": str(TURN_LIMIT),
    }
    stack = Stack("limits", migrated, api_env=limits)
    yield stack
    stack.stop()


@pytest.fixture
async def http(stack: Stack, clean_db: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with stack.client(timeout=30) as client:
        body = {"skill_id": SKILL, "name": SKILL, "system_prompt": "Be brief.", "conversations": demo_conversations(8)}
        assert (await client.post("/api/skills", json=body)).status_code == 201
        yield client


async def example_count(http: httpx.AsyncClient) -> int:
    return len((await http.get(f"/api/skills/{SKILL}")).json()["conversations"])


def big_examples(total_bytes: int) -> list[dict[str, str]]:
    return [{"user": f"question {i}?", "assistant": "x" * 400} for i in range(total_bytes // 400 + 1)]


async def test_oversized_json_is_413_and_changes_nothing(http: httpx.AsyncClient) -> None:
    response = await http.post(f"/api/skills/{SKILL}/examples", json={"conversations": big_examples(BODY_LIMIT)})
    error = assert_error_shape(response, 413, "payload_too_large")
    assert error["details"] == {
        "limit_bytes": BODY_LIMIT,
        "content_length": int(response.request.headers["content-length"]),
    }
    assert await example_count(http) == 8


async def test_oversized_multipart_is_413_and_changes_nothing(http: httpx.AsyncClient) -> None:
    raw = b"user,assistant\n" + b"".join(f"q{i},{'a' * 100}\n".encode() for i in range(BODY_LIMIT // 100))
    files = {"file": ("big.csv", raw, "text/csv")}
    response = await http.post(f"/api/skills/{SKILL}/examples/import", files=files)
    assert_error_shape(response, 413, "payload_too_large")
    assert await example_count(http) == 8


async def test_chunked_body_without_content_length_is_cut_off(http: httpx.AsyncClient) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"conversations": ['
        for i in range(4 * BODY_LIMIT // 1000):
            chunk = json.dumps({"user": f"q{i}?", "assistant": "y" * 950}).encode() + b","
            sent += len(chunk)
            yield chunk
        yield b'{"user": "last?", "assistant": "end"}]}'

    response = await http.post(
        f"/api/skills/{SKILL}/examples", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_error_shape(response, 413, "payload_too_large")
    assert await example_count(http) == 8


async def test_a_body_under_the_limit_still_works(http: httpx.AsyncClient) -> None:
    response = await http.post(f"/api/skills/{SKILL}/examples", json={"conversations": demo_conversations(10)[8:]})
    assert response.status_code == 200, response.text
    assert response.json()["example_count"] == 10


async def test_append_past_the_cap_is_422_with_the_numbers(http: httpx.AsyncClient) -> None:
    response = await http.post(f"/api/skills/{SKILL}/examples", json={"conversations": demo_conversations(11)[8:]})
    error = assert_error_shape(response, 422, "too_many_examples")
    assert error["details"] == {"example_count": 8, "adding": 3, "limit": EXAMPLES_LIMIT}
    assert await example_count(http) == 8


async def test_import_create_and_replace_past_the_cap_are_422(http: httpx.AsyncClient) -> None:
    rows = "".join(f'"{c["user"]}","{c["assistant"]}"\n' for c in demo_conversations(11)[8:])
    files = {"file": ("more.csv", ("user,assistant\n" + rows).encode(), "text/csv")}
    error = assert_error_shape(await http.post(f"/api/skills/{SKILL}/examples/import", files=files), 422)
    assert error["details"] == {"example_count": 8, "adding": 3, "limit": EXAMPLES_LIMIT}
    replace = {"conversations": demo_conversations(11)}
    assert_error_shape(await http.put(f"/api/skills/{SKILL}", json=replace), 422, "too_many_examples")
    create: dict[str, Any] = {"skill_id": "other", "name": "o", "system_prompt": "p", **replace}
    assert_error_shape(await http.post("/api/skills", json=create), 422, "too_many_examples")
    assert await example_count(http) == 8
    assert (await http.get("/api/skills/other")).status_code == 404


async def test_an_over_long_turn_is_422_naming_the_field(http: httpx.AsyncClient) -> None:
    long = {"user": "hi?", "assistant": "z" * (TURN_LIMIT + 1)}
    response = await http.post(f"/api/skills/{SKILL}/examples", json={"conversations": [long]})
    error = assert_error_shape(response, 422, "validation_error")
    fields = [e["field"] for e in error["details"]["errors"]]  # type: ignore[index]
    assert fields == ["conversations.0.assistant"]
    history = {"user": "ok?", "assistant": "ok", "history": [{"user": "u" * (TURN_LIMIT + 1), "assistant": "a"}]}
    response = await http.put(f"/api/skills/{SKILL}", json={"conversations": [history]})
    assert [e["field"] for e in assert_error_shape(response, 422)["details"]["errors"]] == [  # type: ignore[index]
        "conversations.0.history.0.user"
    ]
    at_limit = {"user": "hi?", "assistant": "z" * TURN_LIMIT}
    assert (await http.post(f"/api/skills/{SKILL}/examples", json={"conversations": [at_limit]})).status_code == 200


# --- the middleware itself: what the app sees ---------------------------------------------------


async def _call(app: Any, scope: dict[str, Any], chunks: list[bytes]) -> tuple[list[dict[str, Any]], list[str]]:
    sent: list[dict[str, Any]] = []
    incoming = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await BodySizeLimit(app, max_bytes=100)(scope, receive, send)
    return sent, []


async def test_a_declared_oversize_never_reaches_the_app() -> None:
    called: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope["type"])

    scope = {"type": "http", "headers": [(b"content-length", b"101")]}
    sent, _ = await _call(app, scope, [b"x" * 101])
    assert called == []  # nothing read, parsed or spooled
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "payload_too_large"


async def test_a_streamed_oversize_is_stopped_before_the_app_sees_the_chunk_past_the_limit() -> None:
    seen: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            seen.append(message.get("body", b""))
            if not message.get("more_body"):
                break

    sent, _ = await _call(app, {"type": "http", "headers": []}, [b"a" * 60, b"b" * 60, b"c" * 60])
    assert seen == [b"a" * 60]
    assert sent[0]["status"] == 413


async def test_websocket_scopes_pass_through_untouched() -> None:
    got: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        got.append(receive)

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        pass

    await BodySizeLimit(app, max_bytes=1)({"type": "websocket", "headers": [(b"content-length", b"9")]}, receive, send)
    assert got == [receive]


def test_the_turn_limit_setting_and_the_schema_agree() -> None:
    assert Settings.model_fields["max_turn_chars"].default == MAX_TURN_CHARS
