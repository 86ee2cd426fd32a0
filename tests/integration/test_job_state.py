"""The job state machine with in-process arq burst workers and a fake GPU backend.

The fake stands in for the trainer only (real training is covered by the
end-to-end, recovery and chaos tests, which run the real one); PostgreSQL,
Redis, arq and the worker code are real. Covers claim, completion, a lost lease,
timeout, cancel, requeue, database-clock staleness, max attempts and version
numbers that are never reused.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from arq import Worker, create_pool
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.worker.lease import Recorder, watch
from services.worker.main import build_worker
from services.worker.reaper import reap_stale_jobs
from shared.db import job_state
from shared.db.engine import create_sessionmaker
from shared.db.job_state import Lease
from shared.db.models import Adapter, JobStatus, Skill, TrainingJob, TrainingLog
from shared.queue import redis_settings
from shared.rules.tasks import RUN_TRAINING, training_job_id
from shared.schemas.training import TrainingSpec
from shared.settings import Settings
from tests.conftest import demo_conversations

DEADLINE = 30.0


class FakeBackend:
    """Yields the trainer's event shapes; `plan(spec)` says what each run does."""

    name = "fake"
    device = "cpu"

    def __init__(self, plan: Callable[[TrainingSpec], str] = lambda spec: "ok") -> None:
        self.plan = plan
        self.release = asyncio.Event()
        self.runs: list[TrainingSpec] = []
        self.stopped: list[str] = []

    async def train(self, spec: TrainingSpec) -> AsyncIterator[dict[str, Any]]:
        self.runs.append(spec)
        what = self.plan(spec)
        try:
            for step in (1, 2):
                yield _progress(step, 3)
            if what == "block":  # until the test releases it (or the worker stops it)
                await self.release.wait()
                yield _progress(3, 3)
            elif what == "hang":
                await asyncio.Event().wait()
            elif what.startswith("error:"):
                yield {"type": "error", "category": what.split(":", 1)[1], "message": "injected by the fake backend"}
                return
            output = Path(spec.output_dir)
            output.mkdir(parents=True, exist_ok=True)
            (output / "adapter_model.safetensors").write_bytes(b"fake")
            yield {"type": "complete", "final_loss": 1.0, "training_time_seconds": 0.1}
        finally:
            self.stopped.append(spec.job_id)


def _progress(step: int, total: int) -> dict[str, Any]:
    return {
        "type": "progress",
        "step": step,
        "total_steps": total,
        "epoch": step / total,
        "total_epochs": 1,
        "loss": 2.0 / step,
        "progress": 100.0 * step / total,
    }


@pytest.fixture
def fast(migrated: Settings) -> Settings:
    # model_copy skips validation: these are shorter than the settings allow in production.
    return migrated.model_copy(
        update={
            "queue_name": f"{migrated.queue_name}:state:{uuid.uuid4().hex[:6]}",
            "heartbeat_seconds": 0.2,
            "cancel_poll_seconds": 0.1,
            "heartbeat_stale_seconds": 2.0,
            "gpu_unavailable_delay_seconds": 0.0,
        }
    )


async def _new_job(sessionmaker: async_sessionmaker[AsyncSession], skill_id: str, max_attempts: int = 3) -> uuid.UUID:
    async with sessionmaker() as session, session.begin():
        if await session.get(Skill, skill_id) is None:
            session.add(
                Skill(
                    id=skill_id,
                    workspace_id="default",
                    name=skill_id,
                    system_prompt="p",
                    training_data=demo_conversations(10),
                )
            )
            await session.flush()
        job = TrainingJob(
            skill_id=skill_id,
            config={"base_model": "tiny-random", "hyperparameters": {}, "preset": "quick"},
            dataset={"system_prompt": "p", "conversations": demo_conversations(10)},
            max_attempts=max_attempts,
        )
        await job_state.start(session, job, "Queued")
        return job.id


async def _enqueue(settings: Settings, job_id: uuid.UUID, attempt: int = 1) -> None:
    pool = await create_pool(redis_settings(str(settings.redis_url)))
    await pool.enqueue_job(
        RUN_TRAINING, str(job_id), _job_id=training_job_id(job_id, attempt), _queue_name=settings.queue_name
    )
    await pool.aclose()


def _worker(settings: Settings, backend: FakeBackend, worker_id: str = "w1", **overrides: Any) -> Worker:
    return build_worker(
        settings, burst=True, backend=backend, worker_id=worker_id, poll_delay=0, cron_jobs=[], **overrides
    )


async def _run(worker: Worker) -> None:
    try:
        async with asyncio.timeout(DEADLINE):
            await worker.main()
    finally:
        await worker.close()


async def _job(sessionmaker: async_sessionmaker[AsyncSession], job_id: uuid.UUID) -> TrainingJob:
    async with sessionmaker() as session:
        job = await session.get(TrainingJob, job_id)
        assert job is not None
        return job


async def _events(sessionmaker: async_sessionmaker[AsyncSession], job_id: uuid.UUID) -> list[dict[str, Any]]:
    async with sessionmaker() as session:
        rows = await session.scalars(
            select(TrainingLog.data).where(TrainingLog.job_id == job_id).order_by(TrainingLog.seq)
        )
        return list(rows)


async def _until(predicate: Callable[[], Any], message: str, timeout: float = DEADLINE) -> None:
    """Await a condition with a deadline (no sleep as synchronisation)."""
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)
    assert await predicate(), message


async def _mid_run(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, skill_id: str
) -> tuple[uuid.UUID, FakeBackend, asyncio.Task[None]]:
    """A job whose (blocking) fake trainer has reported progress under a running burst worker."""
    job_id = await _new_job(sessionmaker, skill_id)
    await _enqueue(settings, job_id)
    backend = FakeBackend(lambda spec: "block")
    run = asyncio.create_task(_run(_worker(settings, backend)))

    async def progressing() -> bool:
        return len(await _events(sessionmaker, job_id)) >= 4  # queued, started, two progress

    await _until(progressing, "the fake never reported progress")
    return job_id, backend, run


def _gapless(events: list[dict[str, Any]]) -> None:
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


async def test_claim_run_complete_gives_version_one(
    clean_db: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], fast: Settings
) -> None:
    job_id = await _new_job(sessionmaker, "state-ok")
    await _enqueue(fast, job_id)
    await _run(_worker(fast, FakeBackend()))
    job = await _job(sessionmaker, job_id)
    assert job.status == JobStatus.COMPLETED.value and job.lease_owner is None and job.progress == 100.0
    events = await _events(sessionmaker, job_id)
    _gapless(events)
    assert [e["type"] for e in events] == ["status", "status", "progress", "progress", "complete"]
    assert all(e.get("attempt") == 1 for e in events[1:]), "worker events name their attempt"
    assert events[-1]["adapter_version"] == 1
    assert Path(events[-1]["adapter_path"], "adapter_model.safetensors").is_file()


async def test_a_worker_that_lost_its_lease_writes_nothing_more(
    clean_db: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], fast: Settings
) -> None:
    job_id, backend, run = await _mid_run(sessionmaker, fast, "state-lost")
    # Another attempt takes the job (as the reaper and a second worker would).
    async with sessionmaker() as session, session.begin():
        job = await session.get(TrainingJob, job_id)
        assert job is not None
        requeued = await job_state.requeue(session, Lease(job_id, job.lease_owner or "", job.attempt), "taken over")
        assert requeued is not None
        claimed = await job_state.claim(session, job_id, "w2")
        assert claimed is not None
    stolen_at = (await _job(sessionmaker, job_id)).event_seq
    backend.release.set()  # the old attempt goes on and tries to write progress and complete
    await run
    job = await _job(sessionmaker, job_id)
    assert job.status == JobStatus.RUNNING.value and job.lease_owner == "w2" and job.attempt == 2
    events = await _events(sessionmaker, job_id)
    _gapless(events)
    assert not [e for e in events if e["seq"] > stolen_at and e.get("attempt") == 1]
    async with sessionmaker() as session:
        assert await session.scalar(select(Adapter.id).where(Adapter.training_job_id == job_id)) is None
    assert not Path(backend.runs[0].output_dir).exists(), "the old attempt's staging is dropped"


async def test_fenced_writes_report_whether_they_took_effect(
    clean_db: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    job_id = await _new_job(sessionmaker, "state-fence")
    async with sessionmaker() as session, session.begin():
        claimed = await job_state.claim(session, job_id, "w1")
        assert claimed is not None
        lease = claimed[0]
        assert await job_state.claim(session, job_id, "w2") is None, "a running job cannot be claimed twice"
        for wrong in (Lease(job_id, "w2", 1), Lease(job_id, "w1", 2)):
            assert await job_state.emit(session, wrong, {"type": "log", "message": "x"}) is None
            assert await job_state.complete(session, wrong, {"type": "complete"}) is None
        assert await job_state.emit(session, lease, {"type": "log", "message": "ok"}) is not None
    job = await _job(sessionmaker, job_id)
    assert job.status == JobStatus.RUNNING.value
    assert [e.get("message") for e in await _events(sessionmaker, job_id)] == [
        "Queued",
        "Training started (attempt 1)",
        "ok",
    ]


async def test_timeout_fails_the_job_and_stops_the_trainer(
    clean_db: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], fast: Settings
) -> None:
    job_id = await _new_job(sessionmaker, "state-timeout")
    await _enqueue(fast, job_id)
    backend = FakeBackend(lambda spec: "hang")
    await _run(_worker(fast.model_copy(update={"job_timeout_seconds": 1}), backend))
    job = await _job(sessionmaker, job_id)
    assert job.status == JobStatus.FAILED.value and job.error_details and job.error_details["category"] == "TIMEOUT"
    assert backend.stopped == [str(job_id)]


async def test_cancel_of_a_running_job_stops_it_without_an_adapter(
    clean_db: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], fast: Settings
) -> None:
    job_id, backend, run = await _mid_run(sessionmaker, fast, "state-cancel")
    async with sessionmaker() as session, session.begin():
        assert (await job_state.cancel(session, job_id)).outcome == "cancelling"
    await run
    job = await _job(sessionmaker, job_id)
    assert job.status == JobStatus.CANCELLED.value and job.lease_owner is None
    events = await _events(sessionmaker, job_id)
    assert events[-1]["type"] == "status" and events[-1]["status"] == "cancelled"
    assert backend.stopped == [str(job_id)]
    async with sessionmaker() as session:
        ended = await job_state.cancel(session, job_id)
        assert (ended.outcome, ended.status, ended.event) == ("ended", "cancelled", None), "an ended job is left alone"


async def test_gpu_unavailable_requeues_with_a_fresh_attempt(
    clean_db: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], fast: Settings
) -> None:
    job_id = await _new_job(sessionmaker, "state-requeue")
    await _enqueue(fast, job_id)
    backend = FakeBackend(lambda spec: "error:GPU_UNAVAILABLE" if spec.attempt == 1 else "ok")
    await _run(_worker(fast, backend))  # burst: runs attempt 1, then the requeued attempt 2
    job = await _job(sessionmaker, job_id)
    assert job.status == JobStatus.COMPLETED.value and job.attempt == 2
    assert job.arq_job_id == training_job_id(job_id, 2)
    assert [spec.attempt for spec in backend.runs] == [1, 2]
    events = await _events(sessionmaker, job_id)
    _gapless(events)
    assert [e["status"] for e in events if e["type"] == "status"] == ["queued", "running", "queued", "running"]


async def test_staleness_is_measured_on_the_database_clock(
    clean_db: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    job_id = await _new_job(sessionmaker, "state-stale")
    async with sessionmaker() as session, session.begin():
        assert await job_state.claim(session, job_id, "w1") is not None
        await session.execute(
            text("UPDATE fb_training_jobs SET heartbeat_at = now() - interval '10 seconds' WHERE id = :id"),
            {"id": job_id},
        )
    async with sessionmaker() as session, session.begin():
        assert [s.lease.job_id for s in await job_state.stale_jobs(session, 5.0)] == [job_id]
        assert await job_state.stale_jobs(session, 60.0) == []


async def test_reaper_requeues_then_fails_past_max_attempts(
    clean_db: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], fast: Settings
) -> None:
    job_id = await _new_job(sessionmaker, "state-reap", max_attempts=2)
    pool = await create_pool(redis_settings(str(fast.redis_url)))
    ctx: dict[str, Any] = {"settings": fast, "sessionmaker": sessionmaker, "redis": pool, "worker_id": "reaper"}
    try:
        for attempt in (1, 2):
            async with sessionmaker() as session, session.begin():
                assert await job_state.claim(session, job_id, f"w{attempt}") is not None
                await session.execute(
                    text("UPDATE fb_training_jobs SET heartbeat_at = now() - interval '1 minute' WHERE id = :id"),
                    {"id": job_id},
                )
            await reap_stale_jobs(ctx)  # type: ignore[arg-type]
            job = await _job(sessionmaker, job_id)
            if attempt == 1:
                assert job.status == JobStatus.QUEUED.value and job.attempt == 2
                assert await pool.zscore(fast.queue_name, training_job_id(job_id, 2)) is not None, "re-sent to arq"
        assert job.status == JobStatus.FAILED.value
        assert job.error_details and job.error_details["category"] == "WORKER_LOST"
    finally:
        await pool.aclose()
    _gapless(await _events(sessionmaker, job_id))


async def test_versions_are_never_reused_after_a_delete(
    clean_db: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], fast: Settings
) -> None:
    versions = []
    for round_ in range(3):
        job_id = await _new_job(sessionmaker, "state-versions")
        await _enqueue(fast, job_id)
        await _run(_worker(fast, FakeBackend()))
        async with sessionmaker() as session, session.begin():
            adapter = await session.scalar(select(Adapter).where(Adapter.training_job_id == job_id))
            assert adapter is not None
            versions.append(adapter.version)
            if round_ == 1:  # delete the newest version; the next training must not take its number
                await session.delete(adapter)
    assert versions == [1, 2, 3]


async def test_the_watcher_stands_down_when_the_attempt_ends_itself(
    clean_db: AsyncEngine, sessionmaker: async_sessionmaker[AsyncSession], fast: Settings
) -> None:
    """The attempt's own completion changes the row the watcher polls: that is no lost lease."""
    job_id = await _new_job(sessionmaker, "state-ending")
    async with sessionmaker() as session, session.begin():
        claimed = await job_state.claim(session, job_id, "w1")
        assert claimed is not None
    lease = claimed[0]
    ctx: dict[str, Any] = {"settings": fast, "sessionmaker": sessionmaker}
    recorder = Recorder(ctx, lease)  # type: ignore[arg-type]
    watcher = asyncio.create_task(watch(ctx, lease, recorder.ending))  # type: ignore[arg-type]
    await recorder.write("complete", lambda session: job_state.complete(session, lease, {"type": "complete"}))
    async with asyncio.timeout(5):
        assert await watcher == "ending"


async def test_a_watcher_that_cannot_reach_the_database_assumes_its_lease_lost(fast: Settings) -> None:

    class Unreachable:
        """A sessionmaker whose database never answers (as during a network partition)."""

        def __call__(self) -> Any:
            raise ConnectionRefusedError("database unreachable")

    ctx: dict[str, Any] = {
        "settings": fast.model_copy(update={"heartbeat_stale_seconds": 0.5}),
        "sessionmaker": Unreachable(),
    }
    async with asyncio.timeout(5):
        assert await watch(ctx, Lease(uuid.uuid4(), "w1", 1), asyncio.Event()) == "lease_lost"  # type: ignore[arg-type]


async def test_max_attempts_setting_is_stored_on_each_new_job(migrated: Settings, clean_db: AsyncEngine) -> None:

    from tests.conftest import Stack, create_skill

    stack = Stack("max-attempts", migrated, api_env={"FASTBRAIN_MAX_ATTEMPTS": "7"})
    try:
        async with stack.client(timeout=60) as http:
            await create_skill(http, "attempts-skill", n=10)
            response = await http.post(
                "/api/train-skill/attempts-skill", json={"config": {"base_model": "tiny-random"}}
            )
            assert response.status_code == 202, response.text
            job_id = uuid.UUID(response.json()["job_id"])
    finally:
        stack.stop()
    async with create_sessionmaker(clean_db)() as session:
        job = await session.get(TrainingJob, job_id)
        assert job is not None and job.max_attempts == 7
