"""Skills CRUD through the real API server against real PostgreSQL."""

from __future__ import annotations

import httpx

from tests.conftest import demo_conversations

SKILL = {
    "skill_id": "molasses-master-expert",
    "name": "The Molasses Alchemist",
    "system_prompt": "You are the Molasses Alchemist.",
    "conversations": demo_conversations(3),
}


def assert_error_shape(response: httpx.Response, status: int, code: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if response.request.url.path.startswith("/v1/"):  # the OpenAI-compatible routes answer in OpenAI's shape
        assert set(error) == {"message", "type", "param", "code"}
    else:
        assert set(error) == {"code", "message", "details", "suggestions"}
    assert error["message"]
    if code:
        assert error["code"] == code
    return dict(error)


async def test_create_get_list_update_delete(client: httpx.AsyncClient) -> None:
    created = await client.post("/api/skills", json=SKILL)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["skill_id"] == SKILL["skill_id"]
    assert body["example_count"] == 3
    assert body["conversations"] == SKILL["conversations"]

    listed = (await client.get("/api/skills")).json()["skills"]
    assert [s["skill_id"] for s in listed] == [SKILL["skill_id"]]

    updated = await client.put(f"/api/skills/{SKILL['skill_id']}", json={"name": "Renamed"})
    assert updated.status_code == 200
    assert updated.json()["name"] == "Renamed"
    assert updated.json()["example_count"] == 3

    appended = await client.post(
        f"/api/skills/{SKILL['skill_id']}/examples", json={"conversations": demo_conversations(2)}
    )
    assert appended.status_code == 200
    assert appended.json() == {"skill_id": SKILL["skill_id"], "added": 2, "example_count": 5}

    deleted = await client.delete(f"/api/skills/{SKILL['skill_id']}")
    assert deleted.status_code == 200
    assert deleted.json()["success"] is True
    assert_error_shape(await client.get(f"/api/skills/{SKILL['skill_id']}"), 404, "skill_not_found")


async def test_bad_input_is_rejected_and_changes_nothing(client: httpx.AsyncClient) -> None:
    bad_id = await client.post("/api/skills", json={**SKILL, "skill_id": "Bad Id!"})
    error = assert_error_shape(bad_id, 422, "validation_error")
    assert "skill_id" in str(error["message"])

    blank_turn = await client.post("/api/skills", json={**SKILL, "conversations": [{"user": "  ", "assistant": "hi"}]})
    assert_error_shape(blank_turn, 422)
    unknown_field = await client.post("/api/skills", json={**SKILL, "color": "red"})
    assert_error_shape(unknown_field, 422)
    assert (await client.get("/api/skills")).json()["skills"] == []

    assert (await client.post("/api/skills", json=SKILL)).status_code == 201
    assert_error_shape(await client.post("/api/skills", json=SKILL), 409, "skill_exists")
    empty_append = await client.post(f"/api/skills/{SKILL['skill_id']}/examples", json={"conversations": []})
    assert_error_shape(empty_append, 422)
    assert (await client.get(f"/api/skills/{SKILL['skill_id']}")).json()["example_count"] == 3
    assert_error_shape(
        await client.post("/api/skills/nope/examples", json={"conversations": demo_conversations(1)}), 404
    )


async def test_training_request_validation(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/skills", json=SKILL)).status_code == 201
    sid = SKILL["skill_id"]
    unknown_model = await client.post(f"/api/train-skill/{sid}", json={"config": {"base_model": "gpt-9"}})
    error = assert_error_shape(unknown_model, 422, "invalid_base_model")
    assert "tiny-random" in str(error["message"])
    bad_preset = await client.post(f"/api/train-skill/{sid}", json={"config": {"preset": "turbo"}})
    assert "preset" in str(assert_error_shape(bad_preset, 422)["message"])
    bad_lr = await client.post(f"/api/train-skill/{sid}", json={"config": {"learning_rate": 5}})
    assert "learning_rate" in str(assert_error_shape(bad_lr, 422)["message"])
    assert_error_shape(await client.post("/api/train-skill/missing"), 404, "skill_not_found")
    assert (await client.get("/api/training-jobs")).json()["total"] == 0


async def test_health_reports_database_and_redis(client: httpx.AsyncClient) -> None:
    body = (await client.get("/api/health")).json()
    assert body["database"]["ok"] is True
    assert body["redis"]["ok"] is True
    assert body["status"] in {"ok", "degraded"}
    assert isinstance(body["engine"]["ok"], bool)
