"""End to end: create a skill, train tiny-random, stream it live, chat with it.

Real API server, real worker process, real PostgreSQL/Redis, real training
(transformers + PEFT + TRL on a random-weight 2-layer Llama).
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from shared.settings import Settings
from tests.conftest import ServiceProcess, auth, create_skill, wait_for_status

SKILL_ID = "e2e-skill"
TINY = {
    "preset": "quick",
    "base_model": "tiny-random",
    "max_steps": 6,
    "batch_size": 2,
    "gradient_accumulation_steps": 1,
    "max_seq_length": 128,
}


async def collect_stream(url: str, after_seq: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with websockets.connect(f"{url}?after_seq={after_seq}", open_timeout=10, additional_headers=auth()) as ws:
        async for message in ws:
            events.append(json.loads(message))
            if limit is not None and len(events) >= limit:
                break
    return events


def ws_url(api_url: str, job_id: str) -> str:
    return api_url.replace("http://", "ws://") + f"/api/training-stream/{job_id}"


async def test_train_stream_and_chat(
    client: httpx.AsyncClient, api_url: str, worker: ServiceProcess, serve: str, migrated: Settings
) -> None:
    await create_skill(client, SKILL_ID)
    posted_at = time.monotonic()
    started = await client.post(f"/api/train-skill/{SKILL_ID}", json={"config": TINY})
    assert started.status_code == 202, started.text
    accepted = started.json()
    assert accepted["status"] == "queued"
    assert accepted["estimated_time_minutes"] > 0
    job_id = accepted["job_id"]

    # A second start while this one runs is refused with the running job's id.
    again = await client.post(f"/api/train-skill/{SKILL_ID}", json={"config": TINY})
    assert again.status_code == 409
    assert again.json()["error"]["details"]["job_id"] == job_id

    live = await collect_stream(ws_url(api_url, job_id))
    first_progress_seconds = time.monotonic() - posted_at
    seqs = [e["seq"] for e in live]
    assert seqs == list(range(1, len(seqs) + 1)), "no gaps, no duplicates, in order"
    types = [e["type"] for e in live]
    assert types[0] == "status" and types[-1] == "complete", types
    progress = [e for e in live if e["type"] == "progress"]
    steps = [e["step"] for e in progress]
    assert steps == list(range(1, 7)), steps
    for event in progress:
        assert event["total_steps"] == 6
        assert event["loss"] is not None and event["learning_rate"] is not None
        assert event["tokens_per_second"] > 0
        assert 0 < event["progress"] <= 100
    assert any(e["type"] == "log" for e in live)
    complete = live[-1]
    assert complete["adapter_version"] == 1
    print(f"job finished {first_progress_seconds:.1f}s after POST")

    status = await wait_for_status(client, job_id, {"completed"}, timeout=30)
    assert status["progress"] == 100
    assert status["final_loss"] == pytest.approx(progress[-1]["loss"])
    assert [p["step"] for p in status["metrics_history"]] == steps
    assert status["adapter_id"] == complete["adapter_id"]
    # 12 examples: 3 held out; the kept step, the side-by-side answers and the stars are stored with the job.
    assert status["eval_examples"] == 3 and status["best_step"] == complete["best_step"] is not None
    assert status["best_eval_loss"] == status["eval_loss_after"]
    assert status["evaluation"] == complete["evaluation"] and len(status["evaluation"]["samples"]) == 3
    assert status["quality"] == complete["quality"] and status["quality"]["stars"] in {1, 2, 3, 4, 5}

    adapters = (await client.get("/api/adapters", params={"skill_id": SKILL_ID})).json()["adapters"]
    assert len(adapters) == 1 and adapters[0]["is_active"] and adapters[0]["version"] == 1
    adapter_dir = Path(adapters[0]["storage_path"])
    assert adapter_dir == migrated.adapters_dir / SKILL_ID / "v1"
    for name in ("adapter_model.safetensors", "adapter_config.json", "training_metadata.json"):
        assert (adapter_dir / name).is_file(), name
    assert not any((migrated.adapters_dir / SKILL_ID / ".staging").glob("*")), "staging is cleaned"

    # A client connecting after the end still receives the full history.
    replay = await collect_stream(ws_url(api_url, job_id))
    assert replay == live
    resumed = await collect_stream(ws_url(api_url, job_id), after_seq=3)
    assert [e["seq"] for e in resumed] == seqs[3:]

    chat = await client.post(f"/api/test-adapter/{SKILL_ID}", json={"prompt": "Hello?", "max_new_tokens": 8})
    assert chat.status_code == 200, chat.text
    answer = chat.json()
    assert isinstance(answer["response"], str)
    assert answer["generation_time_ms"] > 0
    assert answer["adapter_version"] == 1

    history = (await client.get("/api/training-jobs")).json()
    assert history["jobs"][0]["job_id"] == job_id and history["jobs"][0]["status"] == "completed"


async def test_versions_activate_and_delete(
    client: httpx.AsyncClient, api_url: str, worker: ServiceProcess, migrated: Settings
) -> None:
    await create_skill(client, SKILL_ID, n=10)
    tiny = {**TINY, "max_steps": 2}
    for _ in range(2):
        job = (await client.post(f"/api/train-skill/{SKILL_ID}", json={"config": tiny})).json()
        await wait_for_status(client, job["job_id"], {"completed", "failed"}, timeout=300)
    adapters = (await client.get("/api/adapters", params={"skill_id": SKILL_ID})).json()["adapters"]
    assert [(a["version"], a["is_active"]) for a in adapters] == [(2, True), (1, False)]

    v1 = adapters[1]
    activated = await client.post(f"/api/adapters/{v1['id']}/activate")
    assert activated.status_code == 200 and activated.json()["is_active"] is True
    adapters = (await client.get("/api/adapters", params={"skill_id": SKILL_ID})).json()["adapters"]
    assert [(a["version"], a["is_active"]) for a in adapters] == [(2, False), (1, True)]

    await check_export(client, v1, adapters[0])

    deleted = await client.delete(f"/api/adapters/{v1['id']}")
    assert deleted.json() == {"success": True, "message": "Adapter deleted"}
    assert (await client.get(f"/api/adapters/{v1['id']}/export")).status_code == 404
    assert not Path(v1["storage_path"]).exists()
    adapters = (await client.get("/api/adapters", params={"skill_id": SKILL_ID})).json()["adapters"]
    assert [(a["version"], a["is_active"]) for a in adapters] == [(2, True)], "newest remaining becomes active"
    missing = await client.delete(f"/api/adapters/{v1['id']}")
    assert missing.status_code == 404


async def check_export(client: httpx.AsyncClient, adapter: dict[str, Any], other: dict[str, Any]) -> None:
    """The export holds the PEFT files and a manifest, and leaves no temporary file behind."""
    leftovers = set(Path(tempfile.gettempdir()).glob("fastbrain-export-*"))
    response = await client.get(f"/api/adapters/{adapter['id']}/export")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gzip"
    assert 'filename="e2e-skill-v1.tar.gz"' in response.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        names = set(tar.getnames())
        manifest = json.loads(tar.extractfile("e2e-skill-v1/fastbrain.json").read())  # type: ignore[union-attr]
    assert {"e2e-skill-v1/adapter_config.json", "e2e-skill-v1/adapter_model.safetensors"} <= names
    assert manifest["version"] == 1 and manifest["base_model"] == "tiny-random"
    assert manifest["system_prompt"] == "You are terse." and manifest["lora_config"]["r"] == 8
    # The temporary archive is removed once the response is sent (a background task): wait for it.
    deadline = time.monotonic() + 10
    while set(Path(tempfile.gettempdir()).glob("fastbrain-export-*")) - leftovers and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert set(Path(tempfile.gettempdir()).glob("fastbrain-export-*")) <= leftovers, "export left its archive behind"

    # An adapter whose files this API cannot see (no shared storage with the workers): a clear 409.
    folder = Path(other["storage_path"])
    folder.rename(folder.with_name("moved"))
    try:
        missing = await client.get(f"/api/adapters/{other['id']}/export")
    finally:
        folder.with_name("moved").rename(folder)
    assert missing.status_code == 409 and missing.json()["error"]["code"] == "export_unavailable"


async def test_test_adapter_without_training_is_404(client: httpx.AsyncClient) -> None:
    await create_skill(client, SKILL_ID, n=1)
    response = await client.post(f"/api/test-adapter/{SKILL_ID}", json={"prompt": "hi"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "no_adapter"
