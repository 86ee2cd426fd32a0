"""Failures that heal, with real processes: OOM recovery (a real
torch.cuda.OutOfMemoryError raised by the trainer's memory-budget test hook),
network retries with backoff, cancel (running and queued), and a worker killed
with SIGKILL whose job another worker resumes from its checkpoint."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.gpu.training.checkpoints import TRAINER_STATE
from shared.db.models import Adapter, TrainingLog
from shared.settings import Settings
from tests.conftest import Stack, create_skill, demo_conversations, wait_for_status
from tests.integration.test_training_e2e import collect_stream, ws_url

TINY = {"preset": "quick", "base_model": "tiny-random", "max_seq_length": 128}
FAST_RECOVERY = {
    "FASTBRAIN_HEARTBEAT_SECONDS": "0.5",
    "FASTBRAIN_HEARTBEAT_STALE_SECONDS": "3",
    "FASTBRAIN_REAPER_INTERVAL_SECONDS": "1",
    "FASTBRAIN_NETWORK_BACKOFF_SECONDS": "0.1",
}


async def _train(http: httpx.AsyncClient, skill_id: str, **config: Any) -> str:
    response = await http.post(f"/api/train-skill/{skill_id}", json={"config": {**TINY, **config}})
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


@pytest.fixture
async def stack_client(
    request: pytest.FixtureRequest, migrated: Settings, clean_db: AsyncEngine
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    param: dict[str, Any] = dict(getattr(request, "param", {}))
    api_env: dict[str, str] = param.pop("api_env", {})
    env: dict[str, str] = {**FAST_RECOVERY, **param}
    stack = Stack(request.node.originalname.removeprefix("test_")[:40], migrated, env, api_env)
    try:
        async with stack.client(timeout=60) as http:
            yield stack, http
    finally:
        stack.stop()


def _errors(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "error"]


@pytest.mark.parametrize("stack_client", [{"FASTBRAIN_TEST_MEMORY_BUDGET_TOKENS": "70"}], indirect=True)
async def test_oom_recovers_by_halving_batch_with_same_effective_batch(
    stack_client: tuple[Stack, httpx.AsyncClient], clean_db: AsyncEngine
) -> None:
    stack, http = stack_client
    stack.start_worker()
    await create_skill(http, "oom-skill", n=10, system_prompt="Be brief.")
    job_id = await _train(http, "oom-skill", batch_size=4, gradient_accumulation_steps=1, max_steps=3)
    events = await collect_stream(ws_url(stack.url, job_id))
    assert events[-1]["type"] == "complete", events[-1]

    errors = _errors(events)
    assert errors and all(e["category"] == "CUDA_OOM" and e["final"] is False for e in errors)
    assert "OutOfMemoryError" in errors[0]["message"]
    assert "exception_type" not in errors[0] and "traceback_tail" not in errors[0], "clients get no traceback"
    async with async_sessionmaker(clean_db)() as session:  # the stored event keeps them, for operators
        stored = await session.scalar(
            select(TrainingLog.data).where(TrainingLog.job_id == job_id, TrainingLog.seq == errors[0]["seq"])
        )
    assert stored is not None and "OutOfMemoryError" in stored["exception_type"] and stored["traceback_tail"]
    attempts = errors[-1]["attempts"]
    assert [a["action"] for a in attempts] == ["reduce_batch_size"] * len(attempts)
    batches = [(a["batch_size"], a["gradient_accumulation_steps"]) for a in attempts]
    assert batches[0] == (4, 1)
    assert all(b * g == 4 for b, g in batches), "the effective batch never changes"

    status = (await http.get(f"/api/training-status/{job_id}")).json()
    effective = status["config"]["effective_hyperparameters"]
    assert effective["batch_size"] * effective["gradient_accumulation_steps"] == 4
    assert effective["batch_size"] < 4
    assert [a["action"] for a in status["recovery_attempts"]] == [a["action"] for a in attempts]
    stats = (await http.get("/api/stats")).json()
    assert stats["errors_auto_recovered"] == len(errors) and stats["error_recovery_rate"] == 1.0


PRICE_PER_HOUR = 36.0  # one cent a second, so every try's time shows in the bill


@pytest.mark.parametrize(
    "stack_client",
    [{"FASTBRAIN_TEST_NETWORK_FAILURES": "2", "FASTBRAIN_LOCAL_PRICE_PER_HOUR": str(PRICE_PER_HOUR)}],
    indirect=True,
)
async def test_network_errors_are_retried_with_backoff(stack_client: tuple[Stack, httpx.AsyncClient]) -> None:
    stack, http = stack_client
    stack.start_worker()
    await create_skill(http, "net-skill", n=10, system_prompt="Be brief.")
    job_id = await _train(http, "net-skill", max_steps=2)
    events = await collect_stream(ws_url(stack.url, job_id))
    assert events[-1]["type"] == "complete"
    errors = _errors(events)
    assert [e["category"] for e in errors] == ["NETWORK_ERROR", "NETWORK_ERROR"]
    assert "Connection refused" in errors[0]["message"] or "ConnectionRefusedError" in errors[0]["message"]
    assert ["0.1s" in errors[0]["recovery"], "0.2s" in errors[1]["recovery"]] == [True, True]

    # The failed tries ran too: the bill covers all three, not just the one that finished
    # (the last try alone is about half of the job's time here).
    status = (await http.get(f"/api/training-status/{job_id}")).json()
    elapsed = datetime.fromisoformat(status["completed_at"]) - datetime.fromisoformat(status["started_at"])
    whole_job = elapsed.total_seconds() / 3600 * PRICE_PER_HOUR
    assert 0.8 * whole_job <= status["cost_usd"] <= whole_job + 0.01, (status["cost_usd"], whole_job)


@pytest.mark.parametrize("stack_client", [{"FASTBRAIN_TEST_NETWORK_FAILURES": "9"}], indirect=True)
async def test_network_gives_up_after_three_retries_with_guidance(
    stack_client: tuple[Stack, httpx.AsyncClient],
) -> None:
    stack, http = stack_client
    stack.start_worker()
    await create_skill(http, "net-fail", n=10, system_prompt="Be brief.")
    job_id = await _train(http, "net-fail", max_steps=2)
    events = await collect_stream(ws_url(stack.url, job_id))
    final = events[-1]
    assert final["type"] == "error" and final["final"] is True and final["category"] == "NETWORK_ERROR"
    status = await wait_for_status(http, job_id, {"failed"}, timeout=10)
    details = status["error_details"]
    assert details["category"] == "NETWORK_ERROR"
    assert [a["action"] for a in details["attempts"]] == ["retry", "retry", "retry", "give_up"]
    assert details["suggestions"] and details["user_message"]
    assert status["error_message"]
    adapters = (await http.get("/api/adapters", params={"skill_id": "net-fail"})).json()["adapters"]
    assert adapters == []


@pytest.mark.parametrize("stack_client", [{"FASTBRAIN_TEST_STEP_DELAY_SECONDS": "0.5"}], indirect=True)
async def test_cancel_running_job_stops_within_five_seconds(
    stack_client: tuple[Stack, httpx.AsyncClient], migrated: Settings
) -> None:
    stack, http = stack_client
    stack.start_worker()
    await create_skill(http, "cancel-run", n=10, system_prompt="Be brief.")
    job_id = await _train(http, "cancel-run", max_steps=200)
    status = await wait_for_status(http, job_id, {"running"}, timeout=60)
    while status["current_step"] < 2:
        await asyncio.sleep(0.2)
        status = (await http.get(f"/api/training-status/{job_id}")).json()
    requested = time.monotonic()
    response = await http.post(f"/api/training-jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelling"
    status = await wait_for_status(http, job_id, {"cancelled", "completed", "failed"}, timeout=10)
    took = time.monotonic() - requested
    assert status["status"] == "cancelled" and took < 5, (status["status"], took)
    events = await collect_stream(ws_url(stack.url, job_id))
    assert events[-1]["type"] == "status" and events[-1]["status"] == "cancelled"
    assert (await http.get("/api/adapters", params={"skill_id": "cancel-run"})).json()["adapters"] == []
    skill_dir = stack.settings.adapters_dir / "cancel-run"
    assert not [p for p in skill_dir.rglob("*") if p.is_file()], "partial files removed"
    again = await http.post(f"/api/training-jobs/{job_id}/cancel")
    assert again.status_code == 409
    print(f"cancel took {took:.2f}s")


async def test_cancel_queued_job_never_starts(stack_client: tuple[Stack, httpx.AsyncClient]) -> None:
    stack, http = stack_client  # no worker yet: the job waits in the queue
    await create_skill(http, "cancel-queued", n=10, system_prompt="Be brief.")
    job_id = await _train(http, "cancel-queued", max_steps=2)
    response = await http.post(f"/api/training-jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    stack.start_worker()
    await asyncio.sleep(6)  # the worker starts and drains the queue
    status = (await http.get(f"/api/training-status/{job_id}")).json()
    assert status["status"] == "cancelled" and status["started_at"] is None
    events = await collect_stream(ws_url(stack.url, job_id))
    assert [e.get("status") for e in events] == ["queued", "cancelled"]
    # The skill is free to train again.
    assert (await http.post("/api/train-skill/cancel-queued", json={"config": TINY})).status_code == 202


@pytest.mark.parametrize("stack_client", [{"FASTBRAIN_TEST_STEP_DELAY_SECONDS": "0.4"}], indirect=True)
async def test_killed_worker_job_resumes_from_checkpoint_on_another_worker(
    stack_client: tuple[Stack, httpx.AsyncClient], sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    stack, http = stack_client
    first = stack.start_worker()
    await create_skill(http, "resume-skill", n=10, system_prompt="Be brief.")
    job_id = await _train(http, "resume-skill", max_steps=24, batch_size=1, gradient_accumulation_steps=1)
    checkpoints = stack.settings.adapters_dir / "resume-skill" / ".checkpoints" / job_id
    deadline = time.monotonic() + 120
    # A complete checkpoint: its trainer_state.json is written last (killing the worker while the
    # first one is half written leaves nothing to resume from, and the test would prove nothing).
    complete = f"a*/checkpoint-*/{TRAINER_STATE}"
    while not list(checkpoints.glob(complete)) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert list(checkpoints.glob(complete)), "a checkpoint was written"
    saved = max(int(p.parent.name.split("-")[1]) for p in checkpoints.glob(complete))

    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait()
    killed_at = time.monotonic()
    stack.start_worker()

    events = await collect_stream(ws_url(stack.url, job_id))
    assert events[-1]["type"] == "complete", events[-1]
    lost = [e for e in events if e["type"] == "error"]
    assert lost and lost[0]["category"] == "WORKER_LOST" and lost[0]["final"] is False
    resumed_at = next(i for i, e in enumerate(events) if e.get("message", "").startswith("Resuming from checkpoint"))
    after = [e for e in events[resumed_at:] if e["type"] == "progress"]
    assert after[0]["step"] > saved, (after[0]["step"], saved)
    assert after[-1]["step"] == 24
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))

    async with sessionmaker() as session:
        count = await session.scalar(
            select(func.count()).select_from(Adapter).where(Adapter.skill_id == "resume-skill")
        )
    assert count == 1, "exactly one adapter row"
    status = (await http.get(f"/api/training-status/{job_id}")).json()
    assert status["attempt"] == 2 and status["status"] == "completed"
    assert not checkpoints.exists(), "checkpoints are removed after completion"
    first_resumed = next(e for e in events[resumed_at:] if e["type"] == "progress")
    print(f"kill → resumed progress: {_seconds_since(killed_at, first_resumed):.1f}s (step {first_resumed['step']})")


def _seconds_since(start_monotonic: float, event: dict[str, Any]) -> float:
    from datetime import datetime

    now_wall = time.time()
    event_wall = datetime.fromisoformat(event["ts"]).timestamp()
    return (time.monotonic() - start_monotonic) - (now_wall - event_wall)


# An API without the model cache (the slim API image) cannot pre-check templates,
# so the job reaches the worker and the trainer's own check must stop it.
@pytest.mark.parametrize("stack_client", [{"api_env": {"FASTBRAIN_MODEL_CACHE_DIR": "/nonexistent"}}], indirect=True)
async def test_data_error_fails_fast_with_guidance(stack_client: tuple[Stack, httpx.AsyncClient]) -> None:
    stack, http = stack_client
    stack.start_worker()
    body = {"skill_id": "long-prompt", "name": "n", "system_prompt": "You are a careful assistant. " * 20}
    body["conversations"] = demo_conversations(10)
    assert (await http.post("/api/skills", json=body)).status_code == 201
    # 32 tokens cannot hold the system prompt: every answer would be cut away.
    job_id = await _train(http, "long-prompt", max_seq_length=32, max_steps=2)
    events = await collect_stream(ws_url(stack.url, job_id))
    errors = _errors(events)
    assert len(errors) == 1, "no retry for a data problem"
    final = errors[0]
    assert final["final"] is True and final["category"] == "DATA_FORMAT_ERROR"
    assert final["severity"] == "user_action_required"
    status = (await http.get(f"/api/training-status/{job_id}")).json()
    assert status["status"] == "failed"
    details = status["error_details"]
    assert details["user_message"] == "Training data format issue detected."
    assert details["suggestions"] and [a["action"] for a in details["attempts"]] == ["none"]
    assert "max_seq_length" in details["message"] or "cut" in details["message"] or "truncat" in details["message"]


async def test_queued_job_whose_enqueue_was_lost_is_redelivered(
    stack_client: tuple[Stack, httpx.AsyncClient],
) -> None:
    stack, http = stack_client  # no worker yet
    await create_skill(http, "lost-enqueue", n=10)
    job_id = await _train(http, "lost-enqueue", max_steps=2)
    # Redis loses the arq job (as if it failed between the API's commit and its enqueue).
    client = Redis.from_url(str(stack.settings.redis_url))
    arq_id = f"train:{job_id}:1"
    assert await client.delete(f"arq:job:{arq_id}") == 1
    assert await client.zrem(stack.settings.queue_name, arq_id) == 1
    await client.aclose()
    await asyncio.sleep(3.5)  # older than the stale threshold (3 s here)
    stack.start_worker()
    status = await wait_for_status(http, job_id, {"completed", "failed"}, timeout=120)
    assert status["status"] == "completed", status
