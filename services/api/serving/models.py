"""Model names on `/v1`: what `model` may be, and what each one is served with.

- `skill_id`: the skill's active adapter version, with the skill's system prompt;
- `skill_id@v3`: that version, active or not (the compare view and pinned clients);
- a base model id from the catalog (`smollm2-135m-instruct`): the model without an adapter.

Skills are looked up in the caller's workspace (the session is scoped), so another
workspace's skill is an unknown model, as any other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.errors import NotFound
from services.gpu.catalog import local_model_ids
from shared.db.models import Adapter, Skill, TrainingJob
from shared.schemas.serving import AdapterRef

PINNED = re.compile(r"^(?P<skill>[^@]+)@v(?P<version>[0-9]{1,9})$")
BASE_OWNER = "fastbrain"
EPOCH = datetime(2026, 1, 1)


@dataclass(frozen=True)
class Target:
    """What a model name resolves to."""

    name: str
    base_model: str
    adapter: AdapterRef | None
    system_prompt: str | None  # the skill's; None for a base model

    @property
    def queue_key(self) -> str:
        return self.adapter.name if self.adapter else self.base_model


def _unknown(name: str, why: str | None = None) -> NotFound:
    return NotFound(
        why or f"The model '{name}' does not exist.",
        details={"param": "model"},
        suggestions=["GET /v1/models lists the skills, versions and base models you can use."],
        code="model_not_found",
    )


def _target(name: str, skill: Skill, adapter: Adapter) -> Target:
    return Target(
        name=name,
        base_model=adapter.base_model or "",
        adapter=AdapterRef(name=str(adapter.id), path=adapter.storage_path, remote_ref=adapter.remote_ref),
        system_prompt=skill.system_prompt,
    )


async def resolve(session: AsyncSession, name: str) -> Target:
    pinned = PINNED.match(name)
    skill_id = pinned["skill"] if pinned else name
    skill = await session.scalar(select(Skill).where(Skill.id == skill_id))
    if skill is not None:
        which = Adapter.version == int(pinned["version"]) if pinned else Adapter.is_active
        query = select(Adapter).where(Adapter.skill_id == skill_id, which)
        adapter = await session.scalar(query)
        if adapter is None:
            if pinned:
                raise _unknown(name, f"Skill '{skill_id}' has no version {pinned['version']}.")
            raise _unknown(name, f"Skill '{skill_id}' has no trained adapter yet: train it first.")
        return _target(name, skill, adapter)
    if not pinned and name in local_model_ids():
        return Target(name=name, base_model=name, adapter=None, system_prompt=None)
    raise _unknown(name)


@dataclass(frozen=True)
class Listed:
    """One entry of GET /v1/models."""

    id: str
    kind: str
    base_model: str
    created: datetime
    owned_by: str
    skill_id: str | None = None
    version: int | None = None
    adapter_id: str | None = None
    active: bool | None = None
    eval_loss: float | None = None


async def listed(session: AsyncSession) -> list[Listed]:
    """Every servable name of the workspace: each trained skill, each of its versions, then the base models."""
    rows = await session.execute(
        select(Adapter, Skill.workspace_id, TrainingJob.eval_loss_after)
        .join(Skill, Skill.id == Adapter.skill_id)
        .outerjoin(TrainingJob, TrainingJob.id == Adapter.training_job_id)
        .order_by(Adapter.skill_id, Adapter.version.desc())
    )
    entries: list[Listed] = []
    for adapter, workspace_id, eval_loss in rows.all():
        base, created = adapter.base_model or "", adapter.created_at
        if adapter.is_active:
            entries.append(Listed(adapter.skill_id, "skill", base, created, workspace_id, skill_id=adapter.skill_id))
        entries.append(
            Listed(
                f"{adapter.skill_id}@v{adapter.version}",
                "skill_version",
                base,
                created,
                workspace_id,
                skill_id=adapter.skill_id,
                version=adapter.version,
                adapter_id=str(adapter.id),
                active=adapter.is_active,
                eval_loss=eval_loss,
            )
        )
    entries.extend(Listed(model_id, "base", model_id, EPOCH, BASE_OWNER) for model_id in local_model_ids())
    return entries
