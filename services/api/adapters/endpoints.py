"""Adapter endpoints: list, activate, delete, and chat with a skill's adapter."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.background import BackgroundTask

from services.api.adapters import export, service
from services.api.auth.access import needs
from services.api.deps import AfterCommitDep, PrincipalDep, SessionDep, StateDep
from services.api.errors import Conflict, NotFound
from services.api.exports import service as exports
from services.api.serving import service as serving
from services.api.serving.models import Target
from services.api.skills.service import get_skill
from shared.db.keys import Scope
from shared.db.models import Adapter
from shared.rules import tasks
from shared.schemas.jobs import AdapterList, AdapterOut, Deleted, TestAdapterRequest, TestAdapterResponse
from shared.schemas.serving import AdapterRef, ChatMessage, Sampling

router = APIRouter(prefix="/api", tags=["adapters"])


# The repetition penalty test chats have always used: tiny models loop without it.
REPETITION_PENALTY = 1.1


async def _chosen_adapter(session: AsyncSession, skill_id: str, adapter_id: uuid.UUID | None) -> Adapter:
    if adapter_id is not None:
        adapter = await service.get_adapter(session, adapter_id)
        if adapter.skill_id != skill_id:
            raise NotFound(f"Adapter '{adapter_id}' does not belong to skill '{skill_id}'.", code="adapter_not_found")
        return adapter
    found = await service.active_adapter(session, skill_id)
    if found is None:
        raise NotFound(
            f"Skill '{skill_id}' has no trained adapter yet.",
            suggestions=[f"Train it first: POST /api/train-skill/{skill_id}"],
            code="no_adapter",
        )
    return found


@router.get("/adapters", summary="List trained adapters")
async def list_adapters(session: SessionDep, skill_id: str | None = None) -> AdapterList:
    return AdapterList(adapters=await service.list_adapters(session, skill_id))


@router.get("/adapters/{adapter_id}", summary="One adapter")
async def get_adapter(adapter_id: uuid.UUID, session: SessionDep) -> AdapterOut:
    return await service.adapter_out(session, await service.get_adapter(session, adapter_id))


@router.post("/adapters/{adapter_id}/activate", summary="Make this version the skill's active adapter")
async def activate_adapter(adapter_id: uuid.UUID, session: SessionDep) -> AdapterOut:
    return await service.adapter_out(session, await service.activate(session, adapter_id))


@router.get(
    "/adapters/{adapter_id}/export",
    summary="Download an adapter as .tar.gz",
    response_class=FileResponse,
    responses={200: {"content": {"application/gzip": {}}, "description": "The adapter folder and fastbrain.json"}},
)
async def export_adapter(adapter_id: uuid.UUID, session: SessionDep) -> FileResponse:
    """The adapter's PEFT files (`adapter_config.json`, `adapter_model.safetensors`,
    tokenizer files) in a folder `<skill>-v<version>/`, with `fastbrain.json`: the
    base model, the skill's system prompt and the training settings. Load it with
    `PeftModel.from_pretrained(base_model, folder)`."""
    adapter = await service.get_adapter(session, adapter_id)
    skill = await get_skill(session, adapter.skill_id)
    folder = Path(adapter.storage_path)
    if not folder.is_dir():
        raise Conflict(
            f"Adapter v{adapter.version} of '{adapter.skill_id}' has no files on this server ({folder}).",
            suggestions=["Give the API the workers' storage (the same FASTBRAIN_DATA_DIR), then export again."],
            code="export_unavailable",
        )
    name = export.archive_name(adapter.skill_id, adapter.version)
    manifest = {
        "format": "peft-lora",
        "skill_id": skill.id,
        "skill_name": skill.name,
        "system_prompt": skill.system_prompt,
        "version": adapter.version,
        "base_model": adapter.base_model,
        "lora_config": adapter.lora_config,
        "final_loss": adapter.final_loss,
        "training_examples": adapter.training_examples,
        "training_job_id": adapter.training_job_id,
        "created_at": adapter.created_at,
    }
    archive = await asyncio.to_thread(export.write_archive, folder, name, manifest)
    return FileResponse(
        archive,
        media_type="application/gzip",
        filename=f"{name}.tar.gz",
        background=BackgroundTask(archive.unlink, missing_ok=True),
    )


@router.delete(
    "/adapters/{adapter_id}",
    summary="Delete an adapter (row and files)",
    description="Removes the row and the adapter's files; for an adapter trained on Modal, a worker also "
    "removes its copy from the Volume.",
)
async def delete_adapter(
    adapter_id: uuid.UUID, session: SessionDep, after_commit: AfterCommitDep, state: StateDep
) -> Deleted:
    export_paths = await exports.storage_paths(session, adapter_id=adapter_id)  # its exports go with it
    path, remote_ref = await service.delete(session, adapter_id)
    after_commit.call(lambda: service.remove_files(path))
    after_commit.call(lambda: exports.remove_files(export_paths))
    after_commit.call(lambda: state.engine.evict(str(adapter_id)))  # its memory on the engine, at once
    if remote_ref:  # trained on Modal: its Volume copy goes too, through a worker
        after_commit.enqueue(tasks.DELETE_REMOTE_ADAPTER, remote_ref)
    return Deleted(message="Adapter deleted")


@router.post(
    "/test-adapter/{skill_id}",
    summary="Chat with a skill's trained adapter",
    openapi_extra=needs(Scope.READ),  # chatting changes nothing: a read key may
)
async def test_adapter(
    skill_id: str, body: TestAdapterRequest, state: StateDep, principal: PrincipalDep
) -> TestAdapterResponse:
    """One deterministic answer (greedy, a mild repetition penalty) from the skill's active
    adapter (or `adapter_id`) with its system prompt, rendered with the chat template the
    adapter was trained with. Served by the inference engine, as `/v1/chat/completions` is;
    use that for streamed tokens and multi-turn chats."""
    # A short read-only session: no connection is held while the model generates.
    async with state.session(principal) as session:
        skill = await get_skill(session, skill_id)
        adapter = await _chosen_adapter(session, skill_id, body.adapter_id)
    target = Target(
        name=skill_id,
        base_model=adapter.base_model or "",
        adapter=AdapterRef(name=str(adapter.id), path=adapter.storage_path, remote_ref=adapter.remote_ref),
        system_prompt=skill.system_prompt,
    )
    sampling = Sampling(max_tokens=body.max_new_tokens, temperature=0.0, repetition_penalty=REPETITION_PENALTY)
    messages = [ChatMessage(role="user", content=body.prompt)]
    answer = await serving.complete(state.engine, serving.engine_request(target, messages, sampling))
    return TestAdapterResponse(
        response=answer.text.strip(),
        generation_time_ms=round(answer.seconds * 1000),
        adapter_id=adapter.id,
        adapter_version=adapter.version,
    )
