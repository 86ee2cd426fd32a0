"""Skills endpoints: the HIVE215 skill format, CRUD and example appends."""

from __future__ import annotations

from fastapi import APIRouter, status

from services.api.deps import AfterCommitDep, SessionDep, SettingsDep
from services.api.skills import service
from shared.schemas.jobs import Deleted
from shared.schemas.skills import ExamplesAppend, ExamplesAppended, SkillCreate, SkillList, SkillOut, SkillUpdate

router = APIRouter(prefix="/api/skills", tags=["skills"])


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a skill")
async def create_skill(body: SkillCreate, session: SessionDep) -> SkillOut:
    """A skill is a system prompt plus example conversations (`{user, assistant}`)."""
    skill = await service.create_skill(session, body)
    return await service.to_out(session, skill)


@router.get("", summary="List skills")
async def list_skills(session: SessionDep) -> SkillList:
    return SkillList(skills=await service.list_skills(session))


@router.get("/{skill_id}", summary="Get a skill with its examples")
async def get_skill(skill_id: str, session: SessionDep) -> SkillOut:
    return await service.to_out(session, await service.get_skill(session, skill_id))


@router.put("/{skill_id}", summary="Update a skill")
async def update_skill(skill_id: str, body: SkillUpdate, session: SessionDep) -> SkillOut:
    """Change any field; `conversations`, when given, replaces all examples."""
    return await service.to_out(session, await service.update_skill(session, skill_id, body))


@router.delete("/{skill_id}", summary="Delete a skill, its jobs and its adapters")
async def delete_skill(
    skill_id: str, session: SessionDep, settings: SettingsDep, after_commit: AfterCommitDep
) -> Deleted:
    await service.delete_skill(session, skill_id)
    after_commit.call(lambda: service.remove_skill_files(settings.adapters_dir, skill_id))
    return Deleted(message=f"Skill '{skill_id}' deleted")


@router.post("/{skill_id}/examples", summary="Append example conversations")
async def append_examples(skill_id: str, body: ExamplesAppend, session: SessionDep) -> ExamplesAppended:
    skill = await service.append_examples(session, skill_id, body.conversations)
    return ExamplesAppended(skill_id=skill_id, added=len(body.conversations), example_count=len(skill.training_data))
