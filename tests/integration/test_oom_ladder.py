"""The whole out-of-memory ladder with real processes, down to its last step: halving max_seq_length.

The trainer's memory-budget hook (FASTBRAIN_TEST_MEMORY_BUDGET_TOKENS, services/gpu/faults.py) raises
a genuine torch.cuda.OutOfMemoryError for any micro-batch over the budget. With a budget below the long
examples' length, neither a smaller batch nor gradient checkpointing helps; halving max_seq_length does,
and the examples whose answer it would cut are dropped (with a warning saying how many) instead of
the template check refusing the run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.settings import Settings
from tests.conftest import Stack
from tests.integration.test_training_e2e import collect_stream, ws_url

SKILL_ID = "oom-ladder"
BUDGET_TOKENS = 64  # at max_seq_length 64 (128 halved) no micro-batch of one example is over it
SHORT = [("Hi?", "Hello."), ("Price?", "80 dollars.")]  # about 20 tokens each: they train at 64
LONG_ANSWER = " ".join(["word"] * 70)  # about 85 tokens with the template: fits 128, not 64


@pytest.fixture
async def stack_client(migrated: Settings, clean_db: AsyncEngine) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    stack = Stack("oom-ladder", migrated, {"FASTBRAIN_TEST_MEMORY_BUDGET_TOKENS": str(BUDGET_TOKENS)})
    try:
        async with stack.client(timeout=60) as http:
            yield stack, http
    finally:
        stack.stop()


async def test_oom_ladder_ends_by_halving_max_seq_length_and_completes(
    stack_client: tuple[Stack, httpx.AsyncClient],
) -> None:
    stack, http = stack_client
    stack.start_worker()
    conversations: list[dict[str, Any]] = [{"user": u, "assistant": a} for u, a in SHORT]
    conversations += [{"user": f"Tell me all about pipe {i}.", "assistant": LONG_ANSWER} for i in range(10)]
    body = {"skill_id": SKILL_ID, "name": SKILL_ID, "system_prompt": "Be brief.", "conversations": conversations}
    assert (await http.post("/api/skills", json=body)).status_code == 201
    config = {
        "preset": "quick",
        "base_model": "tiny-random",
        "max_seq_length": 128,  # every example fits: the API's template check passes
        "batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_steps": 2,
    }
    started = await http.post(f"/api/train-skill/{SKILL_ID}", json={"config": config})
    assert started.status_code == 202, started.text
    job_id = started.json()["job_id"]

    events = await collect_stream(ws_url(stack.url, job_id))
    assert events[-1]["type"] == "complete", events[-3:]
    errors = [e for e in events if e["type"] == "error"]
    assert errors and all(e["category"] == "CUDA_OOM" and e["final"] is False for e in errors)
    actions = [a["action"] for a in errors[-1]["attempts"]]
    assert actions == ["reduce_batch_size", "enable_gradient_checkpointing", "halve_max_seq_length"], actions

    logs = [e for e in events if e["type"] == "log"]
    after_halving = logs[next(i for i, e in enumerate(logs) if "Halved max sequence length 128 → 64" in e["message"]) :]
    dropped = [e for e in after_halving if e["message"].startswith("Dropped ")]
    assert len(dropped) == 1 and dropped[0]["level"] == "warning", [e["message"] for e in after_halving]
    assert dropped[0]["message"].startswith("Dropped 10 of 12 examples whose answer would be cut by max_seq_length=64")
    assert any(e["message"].startswith("Loaded 2 training examples") for e in after_halving)

    status = (await http.get(f"/api/training-status/{job_id}")).json()
    assert status["status"] == "completed"
    effective = status["config"]["effective_hyperparameters"]
    assert effective["max_seq_length"] == 64 and effective["drop_overlong"] is True
    assert effective["batch_size"] == 1 and effective["gradient_checkpointing"] is True
