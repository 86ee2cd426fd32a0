"""The regression gate: a version whose held-out loss is worse than the active version's on the
same held-out examples is kept but not activated, and the job says why.

In-process burst workers with a fake GPU backend that reports scripted held-out losses (the
trainer's own measurement is covered by test_trainer.py); PostgreSQL, Redis, arq, the worker's
completion and the API (its own process) are real.
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
from shared.db.models import Adapter, Skill, TrainingJob
from shared.rules.split import held_out_count
from shared.schemas.training import TrainingSpec
from shared.settings import Settings
from tests.conftest import demo_conversations
from tests.integration.test_job_state import _enqueue, _events, _run, _worker


class ScriptedLossBackend:
    """Completes every run at once, reporting the next of `losses` as its held-out loss."""

    name = "fake"
    device = "cpu"

    def __init__(self, *losses: float) -> None:
        self.losses = list(losses)

    async def train(self, spec: TrainingSpec) -> AsyncIterator[dict[str, Any]]:
        output = Path(spec.output_dir)
        output.mkdir(parents=True, exist_ok=True)
        (output / "adapter_model.safetensors").write_bytes(b"fake")
        after = self.losses.pop(0)
        yield {
            "type": "complete",
            "final_loss": 1.0,
            "training_time_seconds": 0.1,
            "eval_examples": held_out_count(len(spec.conversations)),
            "eval_loss_before": 4.0,
            "eval_loss_after": after,
            "improvement_pct": round(100 * (4.0 - after) / 4.0, 2),
        }


@pytest.fixture
def gate_settings(migrated: Settings) -> Settings:
    return migrated.model_copy(update={"queue_name": f"{migrated.queue_name}:gate:{uuid.uuid4().hex[:6]}"})


async def _train(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    skill_id: str,
    eval_loss_after: float,
    examples: int = 10,
) -> uuid.UUID:
    """One training of the skill on `examples` demo conversations, completed by a burst worker."""
    conversations = demo_conversations(examples)
    async with sessionmaker() as session, session.begin():
        skill = await session.get(Skill, skill_id)
        if skill is None:
            session.add(
                Skill(
                    id=skill_id, workspace_id="default", name=skill_id, system_prompt="p", training_data=conversations
                )
            )
            await session.flush()
        else:
            skill.training_data = conversations
        job = TrainingJob(
            skill_id=skill_id,
            config={"base_model": "tiny-random", "hyperparameters": {}, "preset": "quick"},
            dataset={"system_prompt": "p", "conversations": conversations},
        )
        await job_state.start(session, job, "Queued")
        job_id = job.id
    await _enqueue(settings, job_id)
    await _run(_worker(settings, ScriptedLossBackend(eval_loss_after)))
    return job_id


async def _adapters(sessionmaker: async_sessionmaker[AsyncSession], skill_id: str) -> dict[int, Adapter]:
    async with sessionmaker() as session:
        rows = await session.scalars(select(Adapter).where(Adapter.skill_id == skill_id))
        return {adapter.version: adapter for adapter in rows}


def _complete(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert events[-1]["type"] == "complete", events[-1]
    return events[-1]


async def test_worse_version_is_kept_inactive_and_can_be_activated_by_hand(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], gate_settings: Settings
) -> None:
    first = await _train(sessionmaker, gate_settings, "gate-worse", 3.28)
    assert _complete(await _events(sessionmaker, first))["regression_check"]["outcome"] == "no_active_version"
    second = await _train(sessionmaker, gate_settings, "gate-worse", 3.41)

    adapters = await _adapters(sessionmaker, "gate-worse")
    assert adapters[1].is_active and not adapters[2].is_active, "v2 is kept, v1 stays active"
    assert Path(adapters[2].storage_path).is_dir(), "the gated version's files are in place"
    reason = (
        "v2 was kept but not activated: its held-out loss 3.41 is worse than the active v1's 3.28 on the same "
        "2 held-out examples. Activate it from the Adapters page if you want it anyway."
    )
    events = await _events(sessionmaker, second)
    note, complete = events[-2], _complete(events)
    assert note["type"] == "log" and note["level"] == "warning" and note["message"] == reason
    assert complete["activated"] is False and complete["not_activated_reason"] == reason
    assert complete["adapter_version"] == 2 and complete["adapter_id"] == str(adapters[2].id)
    assert complete["regression_check"] == {
        "outcome": "regressed",
        "note": None,
        "eval_loss": 3.41,
        "eval_examples": 2,
        "active_adapter_id": str(adapters[1].id),
        "active_version": 1,
        "active_eval_loss": 3.28,
    }

    status = (await client.get(f"/api/training-status/{second}")).json()
    assert status["status"] == "completed" and status["adapter_id"] == str(adapters[2].id)
    assert status["activated"] is False and status["adapter_active"] is False
    assert status["not_activated_reason"] == reason and status["regression_check"]["outcome"] == "regressed"
    first_status = (await client.get(f"/api/training-status/{first}")).json()
    assert first_status["activated"] is True and first_status["adapter_active"] is True
    assert first_status["not_activated_reason"] is None

    # (e) Manual activation still works for the gated version.
    activated = await client.post(f"/api/adapters/{adapters[2].id}/activate")
    assert activated.status_code == 200, activated.text
    assert activated.json()["is_active"] is True and activated.json()["version"] == 2
    adapters = await _adapters(sessionmaker, "gate-worse")
    assert adapters[2].is_active and not adapters[1].is_active
    status = (await client.get(f"/api/training-status/{second}")).json()
    assert status["adapter_active"] is True and status["activated"] is False, "what completion decided stays"


async def test_better_version_is_activated(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], gate_settings: Settings
) -> None:
    await _train(sessionmaker, gate_settings, "gate-better", 3.28)
    second = await _train(sessionmaker, gate_settings, "gate-better", 3.10)
    adapters = await _adapters(sessionmaker, "gate-better")
    assert adapters[2].is_active and not adapters[1].is_active
    events = await _events(sessionmaker, second)
    complete = _complete(events)
    assert complete["activated"] is True and complete["not_activated_reason"] is None
    assert complete["regression_check"]["outcome"] == "passed"
    assert not [e for e in events if e["type"] == "log" and "not activated" in e.get("message", "")]
    status = (await client.get(f"/api/training-status/{second}")).json()
    assert status["activated"] is True and status["adapter_active"] is True and status["not_activated_reason"] is None


async def test_changed_data_is_not_compared(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], gate_settings: Settings
) -> None:
    await _train(sessionmaker, gate_settings, "gate-data", 3.28, examples=10)
    second = await _train(sessionmaker, gate_settings, "gate-data", 3.41, examples=11)  # a new example: a new split
    adapters = await _adapters(sessionmaker, "gate-data")
    assert adapters[2].is_active and not adapters[1].is_active, "a worse loss on other examples proves nothing"
    check = _complete(await _events(sessionmaker, second))["regression_check"]
    assert check["outcome"] == "not_comparable" and "same held-out examples as v1" in check["note"]
    status = (await client.get(f"/api/training-status/{second}")).json()
    assert status["activated"] is True and status["regression_check"]["outcome"] == "not_comparable"


async def test_gate_off_always_activates(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], gate_settings: Settings
) -> None:
    off = gate_settings.model_copy(update={"regression_gate": False})
    await _train(sessionmaker, off, "gate-off", 3.28)
    second = await _train(sessionmaker, off, "gate-off", 3.41)
    adapters = await _adapters(sessionmaker, "gate-off")
    assert adapters[2].is_active and not adapters[1].is_active
    complete = _complete(await _events(sessionmaker, second))
    assert complete["activated"] is True and complete["regression_check"]["outcome"] == "disabled"
    status = (await client.get(f"/api/training-status/{second}")).json()
    assert status["activated"] is True and status["adapter_active"] is True


async def test_missing_loss_is_not_compared(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], gate_settings: Settings
) -> None:
    await _train(sessionmaker, gate_settings, "gate-small", 3.28, examples=10)
    async with sessionmaker() as session, session.begin():  # as if v1 had trained on too few examples to split
        await session.execute(
            TrainingJob.__table__.update()
            .where(TrainingJob.skill_id == "gate-small")
            .values(eval_loss_after=None, eval_examples=0)
        )
    second = await _train(sessionmaker, gate_settings, "gate-small", 9.0)
    adapters = await _adapters(sessionmaker, "gate-small")
    assert adapters[2].is_active
    check = _complete(await _events(sessionmaker, second))["regression_check"]
    assert check["outcome"] == "not_comparable" and "missing" in check["note"]
