"""Skills: create, read, update, delete, append examples."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.errors import Conflict, NotFound
from shared.db.models import ACTIVE_JOB_STATUSES, Adapter, Skill, TrainingJob
from shared.schemas.skills import Conversation, SkillCreate, SkillOut, SkillSummary, SkillUpdate


async def get_skill(session: AsyncSession, skill_id: str, *, for_update: bool = False) -> Skill:
    query = select(Skill).where(Skill.id == skill_id)
    if for_update:
        query = query.with_for_update()
    skill = await session.scalar(query)
    if skill is None:
        raise NotFound(f"Skill '{skill_id}' not found.", details={"skill_id": skill_id}, code="skill_not_found")
    return skill


async def _active_versions(session: AsyncSession, skill_ids: list[str]) -> dict[str, int]:
    rows = await session.execute(
        select(Adapter.skill_id, Adapter.version).where(Adapter.skill_id.in_(skill_ids), Adapter.is_active)
    )
    return {skill_id: version for skill_id, version in rows.all()}


def _summary(skill: Skill, active_version: int | None) -> SkillSummary:
    return SkillSummary(
        skill_id=skill.id,
        name=skill.name,
        description=skill.description,
        example_count=len(skill.training_data),
        active_adapter_version=active_version,
        created_at=skill.created_at,
        updated_at=skill.updated_at,
    )


async def to_out(session: AsyncSession, skill: Skill) -> SkillOut:
    versions = await _active_versions(session, [skill.id])
    return SkillOut(
        **_summary(skill, versions.get(skill.id)).model_dump(),
        system_prompt=skill.system_prompt,
        knowledge_items=skill.knowledge_items,
        conversations=[Conversation.model_validate(c) for c in skill.training_data],
    )


async def list_skills(session: AsyncSession) -> list[SkillSummary]:
    skills = list(await session.scalars(select(Skill).order_by(Skill.created_at.desc(), Skill.id)))
    versions = await _active_versions(session, [s.id for s in skills])
    return [_summary(s, versions.get(s.id)) for s in skills]


async def create_skill(session: AsyncSession, body: SkillCreate) -> Skill:
    if await session.get(Skill, body.skill_id) is not None:
        raise Conflict(
            f"Skill '{body.skill_id}' already exists.",
            details={"skill_id": body.skill_id},
            suggestions=["Use PUT /api/skills/{skill_id} to change it, or pick another skill_id."],
            code="skill_exists",
        )
    skill = Skill(
        id=body.skill_id,
        name=body.name,
        system_prompt=body.system_prompt,
        description=body.description,
        knowledge_items=body.knowledge_items,
        training_data=[c.model_dump() for c in body.conversations],
    )
    session.add(skill)
    await session.flush()
    await session.refresh(skill)
    return skill


async def update_skill(session: AsyncSession, skill_id: str, body: SkillUpdate) -> Skill:
    skill = await get_skill(session, skill_id, for_update=True)
    changes = body.model_dump(exclude_unset=True, exclude_none=True)
    if "conversations" in changes:
        skill.training_data = [c.model_dump() for c in body.conversations or []]
        del changes["conversations"]
    for name, value in changes.items():
        setattr(skill, name, value)
    skill.updated_at = func.now()
    await session.flush()
    await session.refresh(skill)
    return skill


async def append_examples(session: AsyncSession, skill_id: str, conversations: list[Conversation]) -> Skill:
    skill = await get_skill(session, skill_id, for_update=True)
    skill.training_data = [*skill.training_data, *(c.model_dump() for c in conversations)]
    skill.updated_at = func.now()
    await session.flush()
    await session.refresh(skill)
    return skill


async def delete_skill(session: AsyncSession, skill_id: str) -> None:
    skill = await get_skill(session, skill_id, for_update=True)
    running = await session.scalar(
        select(TrainingJob.id).where(TrainingJob.skill_id == skill_id, TrainingJob.status.in_(ACTIVE_JOB_STATUSES))
    )
    if running is not None:
        raise Conflict(
            f"Skill '{skill_id}' has a training in progress.",
            details={"job_id": str(running)},
            suggestions=["Wait for the training to finish or cancel it, then delete the skill."],
            code="training_in_progress",
        )
    await session.delete(skill)
    await session.flush()


def remove_skill_files(adapters_dir: Path, skill_id: str) -> None:
    """Called after the commit: files never go while their rows still exist."""
    shutil.rmtree(adapters_dir / skill_id, ignore_errors=True)
