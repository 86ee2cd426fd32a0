"""One training attempt, from claim to adapter row.

PostgreSQL is the source of truth: a job is claimed with a conditional UPDATE
(queued → running, with this worker's lease), each event is persisted before
it is published, and the adapter row, the version directory and the job's
completion are committed together.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.worker import store
from services.worker.context import WorkerContext
from shared.db.models import Adapter, JobStatus, Skill, TrainingJob
from shared.errors import CATALOGUE, ErrorCategory
from shared.events import publish, record_event
from shared.schemas.training import Hyperparameters, TrainingSpec, Turn

log = structlog.get_logger(__name__)

HEARTBEAT_SECONDS = 10.0


class Recorder:
    """Persist-then-publish for one job, with the job-row updates an event implies."""

    def __init__(self, ctx: WorkerContext, job_id: uuid.UUID) -> None:
        self.ctx = ctx
        self.job_id = job_id

    async def emit(self, payload: dict[str, Any], **job_updates: Any) -> dict[str, Any]:
        async with self.ctx["sessionmaker"]() as session, session.begin():
            event = await record_event(session, self.job_id, payload)
            if job_updates:
                await session.execute(update(TrainingJob).where(TrainingJob.id == self.job_id).values(**job_updates))
        await publish(self.ctx["redis"], event)
        return event


async def claim(
    sessionmaker: async_sessionmaker[AsyncSession], job_id: uuid.UUID, worker_id: str
) -> TrainingJob | None:
    """queued → running with our lease; None if another worker has it or it ended."""
    async with sessionmaker() as session, session.begin():
        job = await session.scalar(
            update(TrainingJob)
            .where(TrainingJob.id == job_id, TrainingJob.status == JobStatus.QUEUED.value)
            .values(
                status=JobStatus.RUNNING.value,
                lease_owner=worker_id,
                heartbeat_at=func.now(),
                started_at=func.coalesce(TrainingJob.started_at, func.now()),
            )
            .returning(TrainingJob)
        )
        return job


def build_spec(job: TrainingJob, adapters_dir: Path, models_dir: Path) -> TrainingSpec:
    return TrainingSpec(
        job_id=str(job.id),
        skill_id=job.skill_id,
        base_model=job.config["base_model"],
        system_prompt=job.dataset["system_prompt"],
        conversations=[Turn.model_validate(c) for c in job.dataset["conversations"]],
        hyperparameters=Hyperparameters.model_validate(job.config["hyperparameters"]),
        output_dir=str(store.staging_dir(adapters_dir, job.skill_id, str(job.id), job.attempt)),
        models_dir=str(models_dir),
        attempt=job.attempt,
    )


async def _heartbeat(sessionmaker: async_sessionmaker[AsyncSession], job_id: uuid.UUID, worker_id: str) -> None:
    while True:
        await asyncio.sleep(HEARTBEAT_SECONDS)
        async with sessionmaker() as session, session.begin():
            await session.execute(
                update(TrainingJob)
                .where(TrainingJob.id == job_id, TrainingJob.lease_owner == worker_id)
                .values(heartbeat_at=func.now())
            )


def _progress_updates(payload: dict[str, Any]) -> dict[str, Any]:
    eta = payload.get("eta_seconds")
    updates: dict[str, Any] = {
        "progress": payload.get("progress", 0.0),
        "current_step": payload.get("step", 0),
        "total_steps": payload.get("total_steps"),
        "current_epoch": payload.get("epoch", 0.0),
        "current_loss": payload.get("loss"),
        "eta_seconds": eta,
        "heartbeat_at": func.now(),
    }
    if isinstance(eta, int | float):
        updates["estimated_completion"] = datetime.now(UTC) + timedelta(seconds=float(eta))
    if payload.get("step") == 1 and payload.get("loss") is not None:
        updates["initial_loss"] = payload["loss"]
    return updates


async def run_training(ctx: WorkerContext, job_id_text: str) -> str:
    """The arq task. Idempotent: a job that is not `queued` is left alone."""
    job_id = uuid.UUID(job_id_text)
    settings = ctx["settings"]
    structlog.contextvars.bind_contextvars(job_id=job_id_text)
    try:
        job = await claim(ctx["sessionmaker"], job_id, ctx["worker_id"])
        if job is None:
            log.info("job_not_claimable")
            return "skipped"
        recorder = Recorder(ctx, job_id)
        await recorder.emit(
            {"type": "status", "status": JobStatus.RUNNING.value, "message": f"Training started (attempt {job.attempt})"}
        )
        spec = build_spec(job, settings.adapters_dir, settings.models_dir)
        heartbeat = asyncio.create_task(_heartbeat(ctx["sessionmaker"], job_id, ctx["worker_id"]))
        try:
            async with asyncio.timeout(settings.job_timeout_seconds):
                return await _drive(ctx, recorder, job, spec)
        except TimeoutError:
            await _fail(recorder, spec, _timeout_payload(settings.job_timeout_seconds))
            return "failed"
        except asyncio.CancelledError:
            # Worker shutdown: hand the job back so it runs again (arq retries
            # cancelled jobs); nothing half-written survives.
            with contextlib.suppress(Exception):
                await asyncio.shield(_requeue_after_shutdown(recorder, spec, ctx["worker_id"]))
            raise
        finally:
            heartbeat.cancel()
    finally:
        structlog.contextvars.unbind_contextvars("job_id")


async def _drive(ctx: WorkerContext, recorder: Recorder, job: TrainingJob, spec: TrainingSpec) -> str:
    started = time.monotonic()
    backend = ctx["backend"]
    async for payload in backend.train(spec):
        kind = payload.get("type")
        if kind == "progress":
            await recorder.emit(payload, **_progress_updates(payload))
        elif kind == "complete":
            await _complete(ctx, recorder, job, spec, payload, time.monotonic() - started)
            return "completed"
        elif kind == "error":
            await _fail(recorder, spec, payload)
            return "failed"
        else:
            await recorder.emit(payload)
    await _fail(recorder, spec, {"type": "error", "category": "INTERNAL", "message": "Trainer ended without a result"})
    return "failed"


async def _complete(
    ctx: WorkerContext,
    recorder: Recorder,
    job: TrainingJob,
    spec: TrainingSpec,
    payload: dict[str, Any],
    wall_seconds: float,
) -> None:
    settings = ctx["settings"]
    training_seconds = float(payload.get("training_time_seconds") or wall_seconds)
    cost = round(wall_seconds / 3600.0 * settings.local_price_per_hour, 4)
    staging = Path(spec.output_dir)
    async with ctx["sessionmaker"]() as session:
        # The skill row lock serialises version numbering per skill.
        await session.execute(select(Skill.id).where(Skill.id == job.skill_id).with_for_update())
        latest = await session.scalar(select(func.max(Adapter.version)).where(Adapter.skill_id == job.skill_id))
        version = (latest or 0) + 1
        target = store.version_dir(settings.adapters_dir, job.skill_id, version)
        await session.execute(update(Adapter).where(Adapter.skill_id == job.skill_id).values(is_active=False))
        hp = spec.hyperparameters
        adapter = Adapter(
            skill_id=job.skill_id,
            training_job_id=job.id,
            version=version,
            is_active=True,
            final_loss=payload.get("final_loss"),
            training_examples=len(spec.conversations),
            training_time_seconds=round(training_seconds),
            storage_path=str(target),
            adapter_size_bytes=store.size_bytes(staging),
            base_model=spec.base_model,
            lora_config={"r": hp.lora_r, "alpha": hp.lora_alpha, "dropout": hp.lora_dropout},
        )
        session.add(adapter)
        await session.flush()
        event = await record_event(
            session,
            job.id,
            {
                **payload,
                "adapter_path": str(target),
                "adapter_id": str(adapter.id),
                "adapter_version": version,
                "cost_usd": cost,
                "training_examples": len(spec.conversations),
                "training_time_seconds": round(training_seconds, 1),
            },
        )
        await session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job.id)
            .values(
                status=JobStatus.COMPLETED.value,
                progress=100.0,
                completed_at=func.now(),
                final_loss=payload.get("final_loss"),
                initial_loss=func.coalesce(TrainingJob.initial_loss, payload.get("initial_loss")),
                training_time_seconds=round(training_seconds),
                cost_usd=cost,
                eta_seconds=0,
                lease_owner=None,
            )
        )
        # Files move last, just before the commit: if the commit fails the
        # directory is moved back, so rows and files never disagree.
        store.promote(staging, target)
        try:
            await session.commit()
        except Exception:
            store.promote(target, staging)
            raise
    await publish(ctx["redis"], event)
    log.info("training_completed", version=version, final_loss=payload.get("final_loss"))


def _timeout_payload(limit: int) -> dict[str, Any]:
    info = CATALOGUE[ErrorCategory.TIMEOUT]
    return {
        "type": "error",
        "category": ErrorCategory.TIMEOUT.value,
        "message": f"Training exceeded the {limit} s limit (FASTBRAIN_JOB_TIMEOUT_SECONDS)",
        "severity": info.severity.value,
        "user_message": info.user_message,
        "suggestions": list(info.suggestions),
    }


async def _fail(recorder: Recorder, spec: TrainingSpec, payload: dict[str, Any]) -> None:
    store.remove(Path(spec.output_dir))
    category = str(payload.get("category") or ErrorCategory.INTERNAL.value)
    info = CATALOGUE.get(ErrorCategory(category)) if category in ErrorCategory.__members__ else None
    details = {
        "category": category,
        "severity": payload.get("severity") or (info.severity.value if info else None),
        "message": payload.get("message"),
        "user_message": payload.get("user_message") or (info.user_message if info else None),
        "suggestions": payload.get("suggestions") or (list(info.suggestions) if info else []),
        "attempts": [],
        "exception_type": payload.get("exception_type"),
        "traceback_tail": payload.get("traceback_tail"),
    }
    await recorder.emit(
        {**payload, **details, "type": "error", "final": True},
        status=JobStatus.FAILED.value,
        completed_at=func.now(),
        error_message=f"{details['user_message']} ({details['message']})",
        error_details=details,
        lease_owner=None,
    )
    log.warning("training_failed", category=category, message=payload.get("message"))


async def _requeue_after_shutdown(recorder: Recorder, spec: TrainingSpec, worker_id: str) -> None:
    store.remove(Path(spec.output_dir))
    async with recorder.ctx["sessionmaker"]() as session, session.begin():
        requeued = await session.scalar(
            update(TrainingJob)
            .where(
                TrainingJob.id == recorder.job_id,
                TrainingJob.status == JobStatus.RUNNING.value,
                TrainingJob.lease_owner == worker_id,
            )
            .values(status=JobStatus.QUEUED.value, lease_owner=None, attempt=TrainingJob.attempt + 1)
            .returning(TrainingJob.id)
        )
        if requeued is None:
            return
        event = await record_event(
            session,
            recorder.job_id,
            {"type": "status", "status": JobStatus.QUEUED.value, "message": "Worker stopped; the job will run again"},
        )
    await publish(recorder.ctx["redis"], event)
