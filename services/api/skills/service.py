"""Skills: create, read, update, delete, append examples."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.errors import Conflict, NotFound, Unprocessable
from services.api.skills.importers import parse_training_file
from services.api.skills.validation import MAX_LISTED, exact_key, near_duplicates, normalised_text
from shared.db.models import ACTIVE_JOB_STATUSES, Adapter, Skill, TrainingJob
from shared.schemas.skills import (
    STORED,
    Conversation,
    ExamplesImported,
    SkillCreate,
    SkillOut,
    SkillSummary,
    SkillUpdate,
)


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
        conversations=[Conversation.model_validate(c, context=STORED) for c in skill.training_data],
    )


async def list_skills(session: AsyncSession) -> list[SkillSummary]:
    skills = list(await session.scalars(select(Skill).order_by(Skill.created_at.desc(), Skill.id)))
    versions = await _active_versions(session, [s.id for s in skills])
    return [_summary(s, versions.get(s.id)) for s in skills]


def check_example_cap(skill_id: str, current: int, adding: int, limit: int) -> None:
    """The one examples-per-skill check (create, update, append, import): 422 with the numbers."""
    if current + adding > limit:
        raise Unprocessable(
            f"Skill '{skill_id}' would hold {current + adding} examples; at most {limit} are allowed.",
            details={"example_count": current, "adding": adding, "limit": limit},
            suggestions=["Remove examples first, or raise FASTBRAIN_MAX_EXAMPLES_PER_SKILL."],
            code="too_many_examples",
        )


async def create_skill(session: AsyncSession, body: SkillCreate, max_examples: int) -> Skill:
    check_example_cap(body.skill_id, 0, len(body.conversations), max_examples)
    exists = Conflict(
        f"Skill '{body.skill_id}' already exists.",
        details={"skill_id": body.skill_id},
        suggestions=["Use PUT /api/skills/{skill_id} to change it, or pick another skill_id."],
        code="skill_exists",
    )
    if await session.get(Skill, body.skill_id) is not None:
        raise exists
    skill = Skill(
        id=body.skill_id,
        name=body.name,
        system_prompt=body.system_prompt,
        description=body.description,
        knowledge_items=body.knowledge_items,
        training_data=[c.model_dump() for c in body.conversations],
    )
    session.add(skill)
    try:
        # Skill ids are unique across workspaces (they name the adapters' folders): one that
        # another workspace holds, which this session cannot see, is taken all the same.
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:
        raise exists from exc
    await session.refresh(skill)
    return skill


async def update_skill(session: AsyncSession, skill_id: str, body: SkillUpdate, max_examples: int) -> Skill:
    if body.conversations is not None:  # a replacement: the skill will hold exactly these
        check_example_cap(skill_id, 0, len(body.conversations), max_examples)
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


async def append_examples(
    session: AsyncSession, skill_id: str, conversations: list[Conversation], max_examples: int
) -> Skill:
    skill = await get_skill(session, skill_id, for_update=True)
    check_example_cap(skill_id, len(skill.training_data), len(conversations), max_examples)
    skill.training_data = [*skill.training_data, *(c.model_dump() for c in conversations)]
    skill.updated_at = func.now()
    await session.flush()
    await session.refresh(skill)
    return skill


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


async def import_examples(
    session: AsyncSession, skill_id: str, filename: str, raw: bytes, max_examples: int
) -> ExamplesImported:
    """Append a training-data file's examples: all of them, or none when the file has any problem.

    Exact duplicates (of existing examples or earlier ones in the file) are skipped; near
    duplicates are kept and reported as warnings.
    """
    skill = await get_skill(session, skill_id, for_update=True)
    parsed = await asyncio.to_thread(parse_training_file, filename, raw)
    warnings = list(parsed.warnings)
    if parsed.skill_id and parsed.skill_id != skill_id:
        warnings.append(f"the file is for skill '{parsed.skill_id}'; its examples were added to '{skill_id}'")
    if parsed.system_prompt and parsed.system_prompt.strip() != skill.system_prompt.strip():
        warnings.append(
            "the file's system prompt differs from the skill's; the skill's was kept "
            f"(change it with PUT /api/skills/{skill_id})"
        )

    existing: list[dict[str, object]] = list(skill.training_data)
    seen = {exact_key(c): f"existing example {n}" for n, c in enumerate(existing, start=1)}
    added: list[Conversation] = []
    sources: list[str] = []
    skipped: list[str] = []
    for conversation, source in zip(parsed.conversations, parsed.sources, strict=True):
        key = exact_key(conversation)
        if key in seen:
            skipped.append(f"{source} (= {seen[key]})")
            continue
        seen[key] = source
        added.append(conversation)
        sources.append(source)
    if skipped:
        warnings.append(f"{len(skipped)} exact duplicates skipped: {_listed(skipped)}")
    check_example_cap(skill_id, len(existing), len(added), max_examples)

    labels = [f"existing example {n}" for n in range(1, len(existing) + 1)] + sources
    texts = [normalised_text(c) for c in existing] + [normalised_text(c) for c in added]
    near = await asyncio.to_thread(near_duplicates, texts, only_involving=range(len(existing), len(texts)))
    if near:
        pairs = [f"{labels[d.second]} ~ {labels[d.first]}" for d in near]
        warnings.append(f"{len(pairs)} near duplicates (kept; check them): {_listed(pairs)}")

    if added:
        skill.training_data = [*existing, *(c.model_dump() for c in added)]
        skill.updated_at = func.now()
        await session.flush()
        await session.refresh(skill)
    return ExamplesImported(
        skill_id=skill_id,
        format=parsed.format,
        added=len(added),
        example_count=len(skill.training_data),
        skipped_duplicates=len(skipped),
        warnings=warnings,
    )


async def delete_skill(session: AsyncSession, skill_id: str) -> tuple[list[str], list[str]]:
    """Delete the skill (its jobs and adapters cascade); return its adapters' ids and Modal Volume copies."""
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
    # Read under the skill's row lock, which a completing training also takes: none is missed.
    rows = (await session.execute(select(Adapter.id, Adapter.remote_ref).where(Adapter.skill_id == skill_id))).all()
    await session.delete(skill)
    await session.flush()
    return [str(adapter_id) for adapter_id, _ in rows], [ref for _, ref in rows if ref]


def remove_skill_files(adapters_dir: Path, skill_id: str) -> None:
    """Called after the commit: files never go while their rows still exist."""
    shutil.rmtree(adapters_dir / skill_id, ignore_errors=True)
