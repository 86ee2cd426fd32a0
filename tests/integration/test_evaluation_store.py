"""The trainer's evaluation stored with the job: the kept step, the side-by-side answers and the quality score
in the `complete` event, the job row, GET /api/training-status/{id} and the adapter gallery's answers.

In-process burst workers with a fake GPU backend that completes with a scripted `complete` payload (the
trainer's own measurement: test_trainer.py and test_best_checkpoint.py); PostgreSQL, Redis, arq, the
worker's completion and the API (its own process) are real.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db import job_state
from shared.db.models import Skill, TrainingJob
from shared.rules.split import held_out_count
from shared.schemas.training import TrainingSpec
from shared.settings import Settings
from tests.conftest import demo_conversations
from tests.integration.test_job_state import _enqueue, _events, _run, _worker

EVALUATION = {
    "samples": [
        {"prompt": "Tell me about honey?", "reference": "Bees make it.", "base": "Honey is sweet.", "adapter": "Bees!"},
        {"prompt": "Is stevia safe?", "reference": "Yes, in moderation.", "base": "Stevia is a plant.", "adapter": ""},
    ],
    "max_new_tokens": 48,
    "decoding": "greedy",
    "step": 4,
    "seconds": 1.25,
}


class EvaluatingBackend:
    """Completes every run at once with held-out loss 4.0 → 3.2 (20%: four stars), kept step 4 of 6."""

    name = "fake"
    device = "cpu"

    async def train(self, spec: TrainingSpec) -> AsyncIterator[dict[str, Any]]:
        output = Path(spec.output_dir)
        output.mkdir(parents=True, exist_ok=True)
        (output / "adapter_model.safetensors").write_bytes(b"fake")
        held = held_out_count(len(spec.conversations))
        measured = {
            "eval_examples": held,
            "eval_loss_before": 4.0,
            "eval_loss_after": 3.2,
            "improvement_pct": 20.0,
            "best_step": 4,
            "best_eval_loss": 3.2,
            "last_eval_loss": 3.5,
            "restored_best": True,
            "evaluation": EVALUATION,
        }
        yield {
            "type": "complete",
            "final_loss": 1.0,
            "training_time_seconds": 0.1,
            "steps": 6,
            **(measured if held else {"eval_examples": 0}),
        }


@pytest.fixture
def queue_settings(migrated: Settings) -> Settings:
    return migrated.model_copy(update={"queue_name": f"{migrated.queue_name}:eval:{uuid.uuid4().hex[:6]}"})


async def _train(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, skill_id: str, examples: int
) -> uuid.UUID:
    conversations = demo_conversations(examples)
    async with sessionmaker() as session, session.begin():
        session.add(
            Skill(id=skill_id, workspace_id="default", name=skill_id, system_prompt="p", training_data=conversations)
        )
        await session.flush()
        job = TrainingJob(
            skill_id=skill_id,
            config={"base_model": "tiny-random", "hyperparameters": {}, "preset": "quick"},
            dataset={"system_prompt": "p", "conversations": conversations},
        )
        await job_state.start(session, job, "Queued")
        job_id = job.id
    await _enqueue(settings, job_id)
    await _run(_worker(settings, EvaluatingBackend()))
    return job_id


async def test_evaluation_kept_step_and_stars_are_stored_and_served(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], queue_settings: Settings
) -> None:
    job_id = await _train(sessionmaker, queue_settings, "eval-stored", 12)
    complete = (await _events(sessionmaker, job_id))[-1]
    assert complete["type"] == "complete"
    assert complete["evaluation"] == EVALUATION and complete["best_step"] == 4
    quality = {
        "stars": 4,
        "label": "Very good",
        "meaning": "Model learned the skill's personality",
        "improvement_pct": 20.0,
        "eval_examples": 3,
        "reason": None,
    }
    assert complete["quality"] == quality
    columns = (TrainingJob.best_step, TrainingJob.best_eval_loss, TrainingJob.last_eval_loss, TrainingJob.evaluation)
    async with sessionmaker() as session:
        row = (await session.execute(select(*columns).where(TrainingJob.id == job_id))).one()
    assert tuple(row) == (4, 3.2, 3.5, EVALUATION)

    status = (await client.get(f"/api/training-status/{job_id}")).json()
    assert status["status"] == "completed"
    assert (status["best_step"], status["best_eval_loss"], status["last_eval_loss"]) == (4, 3.2, 3.5)
    assert status["restored_best"] is True
    assert status["evaluation"] == EVALUATION and status["quality"] == quality

    adapters = (await client.get("/api/adapters", params={"skill_id": "eval-stored"})).json()["adapters"]
    assert [(a["version"], a["quality"]["stars"], a["eval_loss"]) for a in adapters] == [(1, 4, 3.2)]
    one = (await client.get(f"/api/adapters/{adapters[0]['id']}")).json()
    assert one["quality"] == quality


async def test_a_skill_without_a_held_out_split_gets_no_score_and_the_reason(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], queue_settings: Settings
) -> None:
    job_id = await _train(sessionmaker, queue_settings, "eval-small", 9)
    status = (await client.get(f"/api/training-status/{job_id}")).json()
    assert status["evaluation"] is None and status["best_step"] is None and status["restored_best"] is None
    assert status["quality"]["stars"] is None
    assert status["quality"]["reason"].startswith("No quality score: 9 examples are too few to hold any out")
    adapters = (await client.get("/api/adapters", params={"skill_id": "eval-small"})).json()["adapters"]
    assert adapters[0]["quality"]["stars"] is None and "9 examples" in adapters[0]["quality"]["reason"]
