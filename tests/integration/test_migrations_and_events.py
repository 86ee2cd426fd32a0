"""Migrations up and down, the persist-then-publish event path, enqueue after
commit, and a worker run in burst mode against real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
from arq import create_pool
from arq.connections import RedisSettings
from redis.asyncio import Redis
from sqlalchemy import inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.worker.main import build_worker
from shared.db import job_state, migrate
from shared.db.engine import create_engine
from shared.db.models import JobStatus, Skill, TrainingJob, TrainingLog
from shared.event_hub import EventHub
from shared.events import channel, publish
from shared.settings import Settings
from tests.conftest import demo_conversations, restore_session_keys
from tests.waiting import wait_until

TABLES = {"fb_skills", "fb_training_jobs", "fb_adapters", "fb_training_logs"}


async def _tables(database_url: str) -> set[str]:
    engine = create_engine(database_url, pool_size=1)
    async with engine.connect() as conn:
        names = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    await engine.dispose()
    return names


async def test_migrations_down_and_up(migrated: Settings, engine: AsyncEngine) -> None:
    url = str(migrated.database_url)
    assert await _tables(url) >= TABLES
    await asyncio.to_thread(migrate.downgrade, url, "base")
    assert not TABLES & await _tables(url)
    # A skill from before workspaces (0006) moves into the default workspace, its GPU spend with it.
    await asyncio.to_thread(migrate.upgrade, url, "0006")
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO fb_skills (id, name, system_prompt) VALUES ('old', 'Old', 'p')"))
        await conn.execute(
            text("INSERT INTO fb_training_jobs (skill_id, status, cost_usd) VALUES ('old', 'failed', 0.25)")
        )
    await asyncio.to_thread(migrate.upgrade, url, "head")
    assert await _tables(url) >= TABLES
    async with engine.begin() as conn:
        assert (await conn.execute(text("SELECT workspace_id FROM fb_skills WHERE id = 'old'"))).scalar() == "default"
        spent = (await conn.execute(text("SELECT workspace_id, cost_usd FROM fb_gpu_spend"))).all()
        assert [tuple(row) for row in spent] == [("default", 0.25)]
        await conn.execute(text("DELETE FROM fb_skills WHERE id = 'old'"))
    await restore_session_keys(engine)  # the downgrade took the session's admin key with it


async def _new_job(sessionmaker: async_sessionmaker[AsyncSession], status: str = "queued") -> uuid.UUID:
    async with sessionmaker() as session, session.begin():
        session.add(
            Skill(
                id="events-skill",
                workspace_id="default",
                name="n",
                system_prompt="p",
                training_data=demo_conversations(1),
            )
        )
        job = TrainingJob(skill_id="events-skill", status=status, config={}, dataset={})
        session.add(job)
        await session.flush()
        return job.id


async def test_events_are_persisted_then_streamed_without_gaps(
    clean_db: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    job_id = await _new_job(sessionmaker)

    async def emit(payload: dict[str, object]) -> dict[str, object]:
        async with sessionmaker() as session, session.begin():
            event = await job_state.append(session, job_id, payload)
        await publish(redis, event)
        return event

    first = await emit({"type": "log", "message": "one"})
    second = await emit({"type": "log", "message": "two"})
    assert (first["seq"], second["seq"]) == (1, 2)

    received: list[dict[str, object]] = []

    hub = EventHub(redis, sessionmaker)
    await hub.start()

    async def consume() -> None:
        async for event in hub.stream(job_id):
            received.append(event)

    consumer = asyncio.create_task(consume())
    # The stream subscribes before it reads history: once the history is here, live events reach it.
    await wait_until(lambda: len(received) >= 2, 10, "the stream never replayed the history")
    # A duplicate publish of an old event (as after a publisher retry) is dropped.
    await redis.publish(channel(job_id), json.dumps(first))
    await emit({"type": "progress", "step": 1, "total_steps": 1, "epoch": 1.0, "total_epochs": 1, "progress": 100})
    # An event persisted but never published (a publisher that died after its
    # commit) is still delivered from history, before the next live one.
    async with sessionmaker() as session, session.begin():
        await job_state.append(session, job_id, {"type": "log", "message": "unpublished"})
    await emit({"type": "complete", "final_loss": 1.0})
    await asyncio.wait_for(consumer, 10)
    await hub.aclose()

    assert [e["seq"] for e in received] == [1, 2, 3, 4, 5]
    assert [e["type"] for e in received] == ["log", "log", "progress", "log", "complete"]
    async with sessionmaker() as session:
        stored = list(await session.scalars(select(TrainingLog.seq).where(TrainingLog.job_id == job_id)))
    assert sorted(stored) == [1, 2, 3, 4, 5]


async def test_training_is_enqueued_only_after_commit_and_burst_worker_skips_ended_jobs(
    client: httpx.AsyncClient,
    migrated: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    redis: Redis,
) -> None:
    skill = {"skill_id": "queued-skill", "name": "Q", "system_prompt": "p", "conversations": demo_conversations(10)}
    assert (await client.post("/api/skills", json=skill)).status_code == 201
    response = await client.post("/api/train-skill/queued-skill", json={"config": {"base_model": "tiny-random"}})
    assert response.status_code == 202
    job_id = uuid.UUID(response.json()["job_id"])

    # The job row is committed by the time the 202 arrives, and the arq job is queued.
    async with sessionmaker() as session:
        job = await session.get(TrainingJob, job_id)
        assert job is not None and job.status == JobStatus.QUEUED.value
        # Simulate a cancel that lands before any worker picks the job up.
        await session.execute(text("UPDATE fb_training_jobs SET status='cancelled' WHERE id=:id"), {"id": job_id})
        await session.commit()
    queued = await redis.zrange(migrated.queue_name, 0, -1)
    assert f"train:{job_id}:1".encode() in queued

    # The burst worker gets a private queue so a worker process started by
    # other tests cannot take the job first.
    private = migrated.model_copy(update={"queue_name": f"{migrated.queue_name}:burst"})
    pool = await create_pool(RedisSettings.from_dsn(str(migrated.redis_url)))
    arq_job = await pool.enqueue_job("run_training", str(job_id), _queue_name=private.queue_name)
    assert arq_job is not None
    worker = build_worker(private, burst=True, poll_delay=0)
    try:
        await worker.main()
    finally:
        await worker.close()
    assert worker.jobs_failed == 0
    assert await arq_job.result(timeout=5) == "skipped"
    await pool.aclose()
    async with sessionmaker() as session:
        job = await session.get(TrainingJob, job_id)
        assert job is not None and job.status == "cancelled", "an ended job is never started"
        assert job.started_at is None
