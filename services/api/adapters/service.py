"""Adapters: list, activate (one active version per skill), delete."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.errors import NotFound
from shared.db.models import Adapter, Skill, TrainingJob
from shared.rules.adapter_quality import quality_score
from shared.schemas.events import QualityScore
from shared.schemas.jobs import AdapterOut

# What a version's stars are computed from: its training job's held-out measurement.
_MEASURED = (TrainingJob.improvement_pct, TrainingJob.eval_examples, TrainingJob.eval_loss_after)


def to_out(
    adapter: Adapter,
    skill_name: str | None = None,
    improvement_pct: float | None = None,
    eval_examples: int | None = None,
    eval_loss_after: float | None = None,
) -> AdapterOut:
    # A version whose job row is gone has no measurement to score (training_job_id is then NULL).
    quality = (
        QualityScore.model_validate(quality_score(improvement_pct, eval_examples, adapter.training_examples))
        if adapter.training_job_id is not None
        else None
    )
    return AdapterOut(
        id=adapter.id,
        skill_id=adapter.skill_id,
        skill_name=skill_name,
        version=adapter.version,
        is_active=adapter.is_active,
        final_loss=adapter.final_loss,
        training_examples=adapter.training_examples,
        training_time_seconds=adapter.training_time_seconds,
        training_job_id=adapter.training_job_id,
        base_model=adapter.base_model,
        lora_config=adapter.lora_config,
        adapter_size_bytes=adapter.adapter_size_bytes,
        storage_path=adapter.storage_path,
        remote_ref=adapter.remote_ref,
        created_at=adapter.created_at,
        eval_loss=eval_loss_after,
        quality=quality,
    )


async def adapter_out(session: AsyncSession, adapter: Adapter) -> AdapterOut:
    """One version as the API answers it, with its stars."""
    measured = (await session.execute(select(*_MEASURED).where(TrainingJob.id == adapter.training_job_id))).first()
    if measured is None:
        return to_out(adapter)
    return to_out(adapter, None, measured.improvement_pct, measured.eval_examples, measured.eval_loss_after)


async def list_adapters(session: AsyncSession, skill_id: str | None) -> list[AdapterOut]:
    query = (
        select(Adapter, Skill.name, *_MEASURED)
        .join(Skill, Skill.id == Adapter.skill_id)
        .outerjoin(TrainingJob, TrainingJob.id == Adapter.training_job_id)
    )
    if skill_id:
        query = query.where(Adapter.skill_id == skill_id)
    rows = await session.execute(query.order_by(Adapter.skill_id, Adapter.version.desc()))
    return [
        to_out(adapter, name, improvement, examples, loss) for adapter, name, improvement, examples, loss in rows.all()
    ]


async def get_adapter(session: AsyncSession, adapter_id: uuid.UUID, *, for_update: bool = False) -> Adapter:
    query = select(Adapter).where(Adapter.id == adapter_id)
    if for_update:
        query = query.with_for_update()
    adapter = await session.scalar(query)
    if adapter is None:
        raise NotFound(
            f"Adapter '{adapter_id}' not found.", details={"adapter_id": str(adapter_id)}, code="adapter_not_found"
        )
    return adapter


async def active_adapter(session: AsyncSession, skill_id: str) -> Adapter | None:
    return await session.scalar(select(Adapter).where(Adapter.skill_id == skill_id, Adapter.is_active))


async def activate(session: AsyncSession, adapter_id: uuid.UUID) -> Adapter:
    adapter = await get_adapter(session, adapter_id)
    # Lock the skill row so two activations of one skill serialise.
    await session.execute(select(Skill.id).where(Skill.id == adapter.skill_id).with_for_update())
    await session.execute(
        update(Adapter).where(Adapter.skill_id == adapter.skill_id, Adapter.id != adapter.id).values(is_active=False)
    )
    await session.flush()
    adapter.is_active = True
    await session.flush()
    return adapter


async def delete(session: AsyncSession, adapter_id: uuid.UUID) -> tuple[Path, str | None]:
    """Delete the row; return the directory to remove once committed, and its Modal Volume copy if any.

    Deleting the active version activates the newest remaining one, so a skill
    with adapters always has one to chat with.
    """
    adapter = await get_adapter(session, adapter_id)
    remote_ref = adapter.remote_ref
    await session.execute(select(Skill.id).where(Skill.id == adapter.skill_id).with_for_update())
    was_active = adapter.is_active
    path = Path(adapter.storage_path)
    await session.delete(adapter)
    await session.flush()
    if was_active:
        newest = await session.scalar(
            select(Adapter).where(Adapter.skill_id == adapter.skill_id).order_by(Adapter.version.desc()).limit(1)
        )
        if newest is not None:
            newest.is_active = True
            await session.flush()
    return path, remote_ref


def remove_files(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
