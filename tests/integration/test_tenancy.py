"""Workspace scoping in the query layer (shared/db/tenancy.py), against real PostgreSQL."""

from __future__ import annotations

import stat
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import keys, tenancy
from shared.db.engine import create_sessionmaker
from shared.db.models import Adapter, Skill, TrainingJob, TrainingLog
from shared.settings import Settings


async def _seed(engine: AsyncEngine) -> None:
    system = create_sessionmaker(engine)
    async with system() as session, session.begin():
        await keys.ensure_workspace(session, "alpha")
        await keys.ensure_workspace(session, "beta")
    scoped = tenancy.scoped_sessionmaker(engine)
    for workspace in ("alpha", "beta"):
        async with scoped() as session, session.begin():
            tenancy.enter(session, workspace)
            session.add(Skill(id=f"{workspace}-skill", name=workspace, system_prompt="p"))
            await session.flush()
            job = TrainingJob(skill_id=f"{workspace}-skill", status="completed")
            session.add(job)
            await session.flush()
            session.add(TrainingLog(job_id=job.id, seq=1, event_type="log", data={"type": "log"}))
            session.add(Adapter(skill_id=f"{workspace}-skill", training_job_id=job.id, storage_path="x"))


async def test_each_workspace_sees_only_its_rows(clean_db: AsyncEngine) -> None:
    await _seed(clean_db)
    async with create_sessionmaker(clean_db)() as system:
        beta_job = await system.scalar(select(TrainingJob.id).where(TrainingJob.skill_id == "beta-skill"))
    scoped = tenancy.scoped_sessionmaker(clean_db)
    async with scoped() as session:
        tenancy.enter(session, "alpha")
        assert [s.id for s in await session.scalars(select(Skill))] == ["alpha-skill"]
        assert await session.get(Skill, "beta-skill") is None
        assert {j.skill_id for j in await session.scalars(select(TrainingJob))} == {"alpha-skill"}
        assert {a.skill_id for a in await session.scalars(select(Adapter))} == {"alpha-skill"}
        # column-only selects and joins are scoped as well
        assert list(await session.scalars(select(Adapter.skill_id))) == ["alpha-skill"]
        logs = await session.scalars(select(TrainingLog.job_id).join(TrainingJob, TrainingJob.id == TrainingLog.job_id))
        assert beta_job not in set(logs)
        # a bulk UPDATE cannot reach another workspace's rows either
        result = await session.execute(update(TrainingJob).where(TrainingJob.id == beta_job).values(status="failed"))
        assert result.rowcount == 0  # type: ignore[attr-defined]
        await session.rollback()
    async with create_sessionmaker(clean_db)() as system:
        assert await system.scalar(select(TrainingJob.status).where(TrainingJob.id == beta_job)) == "completed"
        assert {s.workspace_id for s in await system.scalars(select(Skill))} == {"alpha", "beta"}


async def test_a_scoped_session_without_a_workspace_refuses_to_query(clean_db: AsyncEngine) -> None:
    scoped = tenancy.scoped_sessionmaker(clean_db)
    async with scoped() as session:
        with pytest.raises(tenancy.WorkspaceNotSet):
            await session.scalars(select(Skill))
        with pytest.raises(tenancy.WorkspaceNotSet):
            await session.get(TrainingJob, uuid.uuid4())


async def test_keys_are_stored_hashed_and_revocation_is_immediate(clean_db: AsyncEngine) -> None:
    system = create_sessionmaker(clean_db)
    async with system() as session, session.begin():
        created = await keys.create_key(session, "alpha", keys.Scope.TRAIN, "ci")
    assert created.secret.startswith("fb_") and len(created.secret) >= 46
    async with system() as session, session.begin():
        stored = await session.get(type(created.key), created.key.id)
        assert stored is not None and created.secret not in (stored.secret_hash, stored.prefix)
        principal = await keys.authenticate(session, created.secret)
        assert principal == keys.Principal(created.key.id, "alpha", keys.Scope.TRAIN)
        assert await keys.authenticate(session, created.secret + "x") is None
    async with system() as session, session.begin():
        assert await keys.revoke_key(session, created.key.prefix) is not None
    async with system() as session, session.begin():
        assert await keys.authenticate(session, created.secret) is None


async def test_a_skill_id_another_workspace_holds_is_a_409(api_url: str, clean_db: AsyncEngine) -> None:
    import httpx

    from tests.conftest import auth, make_key
    from tests.integration.test_skills_api import assert_error_shape

    body = {"skill_id": "shared-name", "name": "n", "system_prompt": "p"}
    first = await make_key(clean_db, "alpha", keys.Scope.TRAIN)
    second = await make_key(clean_db, "beta", keys.Scope.TRAIN)
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        assert (await http.post("/api/skills", json=body, headers=auth(first))).status_code == 201
        assert_error_shape(await http.post("/api/skills", json=body, headers=auth(second)), 409, "skill_exists")
        assert (await http.get("/api/skills", headers=auth(second))).json()["skills"] == []


async def test_dev_admin_key_is_made_once_kept_private_and_replaced_when_dead(
    migrated: Settings, clean_db: AsyncEngine, tmp_path: Path
) -> None:
    """`fastbrain dev`'s admin key (services/dev/command.py): made on the first start, then reused."""
    from services.dev.command import ensure_admin_key

    path = tmp_path / "admin-key"
    url = str(migrated.database_url)
    secret = await ensure_admin_key(url, path)
    assert secret is not None and path.read_text().strip() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert await ensure_admin_key(url, path) is None  # the next start keeps it (and prints no key)
    async with create_sessionmaker(clean_db)() as session, session.begin():
        principal = await keys.authenticate(session, secret)
        assert principal is not None and (principal.workspace_id, principal.scope) == ("default", keys.Scope.ADMIN)
        await keys.revoke_key(session, str(principal.key_id))
    replacement = await ensure_admin_key(url, path)  # a dead key (revoked, or a reset database) is replaced
    assert replacement is not None and replacement != secret and path.read_text().strip() == replacement
