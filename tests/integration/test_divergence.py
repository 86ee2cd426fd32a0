"""The training watchdog with real processes: a NaN loss rolls back to the last good checkpoint and halves
the learning rate; one that keeps coming fails the job as TRAINING_DIVERGED.

The trainer's NaN hook (FASTBRAIN_TEST_NAN_LOSS_AT_STEP, services/gpu/faults.py) multiplies the loss of
one optimizer step by NaN, so its gradients are NaN as in a real divergence; FASTBRAIN_TEST_NAN_LOSS_TRIES
says on how many tries of the job.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.errors import CATALOGUE, ErrorCategory
from shared.settings import Settings
from tests.conftest import Stack, create_skill, wait_for_status
from tests.integration.test_training_e2e import collect_stream, ws_url

NAN_STEP = 3
LEARNING_RATE = 2e-4
# max_steps 6: a checkpoint every step (10% of the run, rounded up), so at step 3 there are 1 and 2.
CONFIG = {
    "preset": "quick",
    "base_model": "tiny-random",
    "max_seq_length": 128,
    "batch_size": 1,
    "gradient_accumulation_steps": 1,
    "max_steps": 6,
    "learning_rate": LEARNING_RATE,
}


@pytest.fixture
async def stack_client(
    request: pytest.FixtureRequest, migrated: Settings, clean_db: AsyncEngine
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    env = {"FASTBRAIN_TEST_NAN_LOSS_AT_STEP": str(NAN_STEP), **request.param}
    stack = Stack(request.node.originalname.removeprefix("test_")[:40], migrated, env)
    try:
        async with stack.client(timeout=60) as http:
            yield stack, http
    finally:
        stack.stop()


async def _train(stack: Stack, http: httpx.AsyncClient, skill_id: str) -> tuple[str, list[dict[str, Any]]]:
    stack.start_worker()
    await create_skill(http, skill_id, n=10, system_prompt="Be brief.")
    started = await http.post(f"/api/train-skill/{skill_id}", json={"config": CONFIG})
    assert started.status_code == 202, started.text
    job_id = str(started.json()["job_id"])
    return job_id, await collect_stream(ws_url(stack.url, job_id))


@pytest.mark.parametrize("stack_client", [{"FASTBRAIN_TEST_NAN_LOSS_TRIES": "1"}], indirect=True)
async def test_nan_loss_rolls_back_halves_the_learning_rate_and_completes(
    stack_client: tuple[Stack, httpx.AsyncClient],
) -> None:
    stack, http = stack_client
    job_id, events = await _train(stack, http, "nan-once")
    assert events[-1]["type"] == "complete", events[-3:]

    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1 and errors[0]["category"] == "TRAINING_DIVERGED" and errors[0]["final"] is False
    # The loss of step 3 is measured on the weights of step 2: the rollback goes to the checkpoint before them.
    assert errors[0]["recovery"] == (
        "Loss became NaN at step 3: rolled back to step 1 and halved the learning rate 0.0002 → 0.0001 (retry 1 of 2)"
    )
    assert errors[0]["details"]["reason"] == "nan_loss" and errors[0]["details"]["last_good_step"] == 1

    # The diverged step never became a progress event or a checkpoint; the retry resumed at step 1.
    at_error = events.index(errors[0])
    before = {e["step"]: e for e in events[:at_error] if e["type"] == "progress"}
    after = {e["step"]: e for e in events[at_error:] if e["type"] == "progress"}
    assert sorted(before) == [1, 2] and sorted(after) == [2, 3, 4, 5, 6]
    logs = [e["message"] for e in events[at_error:] if e["type"] == "log"]
    assert any(m.startswith("Resuming from checkpoint at step 1") for m in logs), logs
    assert any(m.startswith("Learning rate 0.0002 → 0.0001 from step 1") for m in logs), logs
    # The optimizer really ran on at half the rate: step 2 again, at half its first learning rate.
    assert before[2]["learning_rate"] > 0
    assert after[2]["learning_rate"] == pytest.approx(before[2]["learning_rate"] / 2)

    status = await wait_for_status(http, job_id, {"completed"}, timeout=10)
    attempts = status["recovery_attempts"]
    assert [(a["category"], a["action"]) for a in attempts] == [("TRAINING_DIVERGED", "rollback_halve_learning_rate")]
    assert attempts[0]["learning_rate"] == LEARNING_RATE
    assert status["config"]["effective_hyperparameters"]["learning_rate"] == LEARNING_RATE / 2


@pytest.mark.parametrize("stack_client", [{"FASTBRAIN_TEST_NAN_LOSS_TRIES": "99"}], indirect=True)
async def test_persistent_nan_loss_fails_as_training_diverged(stack_client: tuple[Stack, httpx.AsyncClient]) -> None:
    stack, http = stack_client
    job_id, events = await _train(stack, http, "nan-always")
    final = events[-1]
    assert final["type"] == "error" and final["final"] is True and final["category"] == "TRAINING_DIVERGED"
    retries = [e["recovery"] for e in events if e["type"] == "error" and e["final"] is False]
    assert [r.split(": ", 1)[1] for r in retries] == [
        "rolled back to step 1 and halved the learning rate 0.0002 → 0.0001 (retry 1 of 2)",
        # The retry resumed at step 1 and diverged at step 3 again: the checkpoint of step 2 went with it.
        "rolled back to step 1 and halved the learning rate 0.0001 → 5e-05 (retry 2 of 2)",
    ]

    status = await wait_for_status(http, job_id, {"failed"}, timeout=10)
    details = status["error_details"]
    info = CATALOGUE[ErrorCategory.TRAINING_DIVERGED]
    assert details["category"] == "TRAINING_DIVERGED" and details["severity"] == "recoverable"
    assert details["user_message"] == info.user_message and details["suggestions"] == list(info.suggestions)
    assert [a["action"] for a in details["attempts"]] == [
        "rollback_halve_learning_rate",
        "rollback_halve_learning_rate",
        "give_up",
    ]
    assert [a["learning_rate"] for a in details["attempts"]] == [2e-4, 1e-4, 5e-5]
    assert info.user_message in status["error_message"]
