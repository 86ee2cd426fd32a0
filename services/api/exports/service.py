"""Exports: ask for one (a queued export job), read them, cancel, find their files."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.adapters import service as adapters
from services.api.deps import AfterCommit
from services.api.errors import Conflict, NotFound
from services.api.skills.service import get_skill
from shared.db import export_state
from shared.db.models import Adapter, Export, TrainingJob
from shared.rules import tasks
from shared.rules.archive import archive_name
from shared.schemas.exports import ExportFile, ExportOut, ExportRequest

# A hub token given with the request waits here for the worker (read once, deleted); never in PostgreSQL.
TOKEN_TTL_SECONDS = 3600


def token_key(export_id: uuid.UUID | str) -> str:
    return f"fastbrain:export-token:{export_id}"


FALLBACK_PROMPT = "Hello! What can you help me with?"
# Verification prompts taken from the training's held-out evaluation.
MAX_PROMPTS = 2


def to_out(export: Export) -> ExportOut:
    files = [
        ExportFile(**{**f, "url": f"/api/exports/{export.id}/files/{f['name']}"})
        for f in (export.files or [])
        if export.status == "completed"
    ]
    return ExportOut(
        id=export.id,
        adapter_id=export.adapter_id,
        skill_id=export.skill_id,
        format=export.format,
        options=export.options,
        status=export.status,
        progress=export.progress,
        stage=export.stage,
        files=files,
        verification=export.verification,
        error_message=export.error_message,
        error_details=_public(export.error_details),
        stream_url=f"/api/export-stream/{export.id}",
        created_at=export.created_at,
        started_at=export.started_at,
        completed_at=export.completed_at,
    )


def _public(details: dict[str, Any] | None) -> dict[str, Any] | None:
    if details is None:
        return None
    return {k: v for k, v in details.items() if k not in ("traceback_tail", "exception_type")}


async def _prompts(session: AsyncSession, adapter: Adapter, skill_examples: list[Any]) -> list[str]:
    evaluation = await session.scalar(select(TrainingJob.evaluation).where(TrainingJob.id == adapter.training_job_id))
    prompts = [str(s["prompt"]) for s in (evaluation or {}).get("samples", []) if s.get("prompt")]
    if not prompts:
        prompts = [str(e["user"]) for e in skill_examples if isinstance(e, dict) and e.get("user")][:1]
    return prompts[:MAX_PROMPTS] or [FALLBACK_PROMPT]


async def start(
    session: AsyncSession, after_commit: AfterCommit, redis: Redis, adapter_id: uuid.UUID, body: ExportRequest
) -> ExportOut:
    adapter = await adapters.get_adapter(session, adapter_id)
    skill = await get_skill(session, adapter.skill_id)
    if not Path(adapter.storage_path).is_dir():
        raise Conflict(
            f"Adapter v{adapter.version} of '{adapter.skill_id}' has no files on this server ({adapter.storage_path}).",
            suggestions=["Give the API and the workers the same storage (FASTBRAIN_DATA_DIR), then export again."],
            code="export_unavailable",
        )
    name = archive_name(adapter.skill_id, adapter.version)
    prompts = [body.prompt] if body.prompt else await _prompts(session, adapter, skill.training_data)
    options: dict[str, Any] = {}
    if body.format == "gguf":
        options = {"quantizations": list(dict.fromkeys(body.quantizations))}
    elif body.format == "hub":  # the token is never among them: `hand_over_token`
        options = {"repo_id": body.repo_id, "push": body.push, "private": body.private, "endpoint": body.endpoint}
    manifest = {
        "skill_id": skill.id,
        "skill_name": skill.name,
        "system_prompt": skill.system_prompt,
        "version": adapter.version,
        "base_model": adapter.base_model,
        "lora_config": adapter.lora_config,
        "final_loss": adapter.final_loss,
        "training_examples": adapter.training_examples,
        "training_job_id": str(adapter.training_job_id) if adapter.training_job_id else None,
        "created_at": adapter.created_at.isoformat(),
        "export_format": body.format,
    }
    export = Export(
        adapter_id=adapter.id,
        skill_id=adapter.skill_id,
        format=body.format,
        options=options,
        request={
            "adapter_dir": adapter.storage_path,
            "base_model": adapter.base_model,
            "name": name,
            "system_prompt": skill.system_prompt,
            "prompts": prompts,
            "manifest": {"format": "peft-lora", **manifest} if body.format == "peft" else manifest,
        },
    )
    event = await export_state.start(session, export)
    if body.format == "hub" and body.token:
        token, key = body.token, token_key(export.id)

        async def hand_over() -> None:
            await redis.set(key, token, ex=TOKEN_TTL_SECONDS)

        after_commit.call(hand_over)  # before the enqueue below: callbacks run first
    after_commit.enqueue(tasks.RUN_EXPORT, str(export.id), _job_id=export.arq_job_id)
    after_commit.publish(event)
    await session.refresh(export)
    return to_out(export)


async def get(session: AsyncSession, export_id: uuid.UUID) -> Export:
    export = await session.scalar(select(Export).where(Export.id == export_id))
    if export is None:
        raise NotFound(
            f"Export '{export_id}' not found.", details={"export_id": str(export_id)}, code="export_not_found"
        )
    return export


async def listed(session: AsyncSession, adapter_id: uuid.UUID | None) -> list[ExportOut]:
    query = select(Export).order_by(Export.created_at.desc())
    if adapter_id is not None:
        query = query.where(Export.adapter_id == adapter_id)
    return [to_out(e) for e in await session.scalars(query.limit(200))]


def file_of(export: Export, name: str) -> tuple[Path, dict[str, Any]]:
    """A completed export's file by its listed name (only listed names: no path of the caller's choosing)."""
    entry = next((f for f in export.files or [] if f["name"] == name), None)
    if export.status != "completed" or entry is None or not export.storage_path:
        raise NotFound(f"Export '{export.id}' has no file '{name}'.", code="export_file_not_found")
    path = Path(export.storage_path) / entry["name"]
    if not path.is_file():
        raise Conflict(f"The file '{name}' of export '{export.id}' is not on this server.", code="export_unavailable")
    return path, entry


async def storage_paths(
    session: AsyncSession, *, adapter_id: uuid.UUID | None = None, skill_id: str | None = None
) -> list[str]:
    """Where the exports of an adapter (or a skill) keep their files: removed with them."""
    query = select(Export.storage_path).where(Export.storage_path.is_not(None))
    if adapter_id is not None:
        query = query.where(Export.adapter_id == adapter_id)
    if skill_id is not None:
        query = query.where(Export.skill_id == skill_id)
    return [p for p in await session.scalars(query) if p]


def remove_files(paths: list[str]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
