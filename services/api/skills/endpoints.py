"""Skills endpoints: the HIVE215 skill format, CRUD and example appends."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, File, UploadFile, status

from services.api.deps import AfterCommitDep, SessionDep, SettingsDep, StateDep
from services.api.skills import service
from services.api.skills.importers import MAX_IMPORT_BYTES
from shared.rules import tasks
from shared.schemas.jobs import Deleted
from shared.schemas.skills import (
    ExamplesAppend,
    ExamplesAppended,
    ExamplesImported,
    SkillCreate,
    SkillList,
    SkillOut,
    SkillUpdate,
)

router = APIRouter(prefix="/api/skills", tags=["skills"])


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a skill")
async def create_skill(body: SkillCreate, session: SessionDep, settings: SettingsDep) -> SkillOut:
    """A skill is a system prompt plus example conversations (`{user, assistant}`)."""
    skill = await service.create_skill(session, body, settings.max_examples_per_skill)
    return await service.to_out(session, skill)


@router.get("", summary="List skills")
async def list_skills(session: SessionDep) -> SkillList:
    return SkillList(skills=await service.list_skills(session))


@router.get("/{skill_id}", summary="Get a skill with its examples")
async def get_skill(skill_id: str, session: SessionDep) -> SkillOut:
    return await service.to_out(session, await service.get_skill(session, skill_id))


@router.put("/{skill_id}", summary="Update a skill")
async def update_skill(skill_id: str, body: SkillUpdate, session: SessionDep, settings: SettingsDep) -> SkillOut:
    """Change any field; `conversations`, when given, replaces all examples."""
    skill = await service.update_skill(session, skill_id, body, settings.max_examples_per_skill)
    return await service.to_out(session, skill)


@router.delete("/{skill_id}", summary="Delete a skill, its jobs and its adapters")
async def delete_skill(
    skill_id: str, session: SessionDep, settings: SettingsDep, after_commit: AfterCommitDep, state: StateDep
) -> Deleted:
    adapter_ids, refs = await service.delete_skill(session, skill_id)
    after_commit.call(lambda: service.remove_skill_files(settings.adapters_dir, skill_id))
    for adapter_id in adapter_ids:  # their memory on the inference engine, at once
        after_commit.call(partial(state.engine.evict, adapter_id))
    for ref in refs:  # adapters trained on Modal: their Volume copies go too
        after_commit.enqueue(tasks.DELETE_REMOTE_ADAPTER, ref)
    return Deleted(message=f"Skill '{skill_id}' deleted")


@router.post("/{skill_id}/examples", summary="Append example conversations")
async def append_examples(
    skill_id: str, body: ExamplesAppend, session: SessionDep, settings: SettingsDep
) -> ExamplesAppended:
    """The skill's total may be at most `FASTBRAIN_MAX_EXAMPLES_PER_SKILL`; more is a 422 that adds nothing."""
    skill = await service.append_examples(session, skill_id, body.conversations, settings.max_examples_per_skill)
    return ExamplesAppended(skill_id=skill_id, added=len(body.conversations), example_count=len(skill.training_data))


@router.post(
    "/{skill_id}/examples/import",
    summary="Import examples from a file (HIVE215 JSON, OpenAI JSONL, ShareGPT, Alpaca, CSV)",
    responses={
        413: {"description": "The file is larger than 20 MB, or the request than FASTBRAIN_MAX_REQUEST_BODY_BYTES."},
        422: {"description": "The file has problems (`details.problems`: line or row and message); nothing added."},
    },
)
async def import_examples(
    skill_id: str,
    session: SessionDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="The training-data file; its format is found from its content.")],
) -> ExamplesImported:
    """Append every example of the file, or none when any line or row has a problem.

    Exact duplicates (of existing examples or earlier ones in the file) are skipped and
    counted; near duplicates are kept and listed in `warnings`.
    """
    raw = await file.read(MAX_IMPORT_BYTES + 1)
    return await service.import_examples(
        session, skill_id, file.filename or "upload", raw, settings.max_examples_per_skill
    )
