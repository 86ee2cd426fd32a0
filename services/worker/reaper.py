"""The reaper: running jobs whose worker stopped heartbeating go back to the queue,
and queued jobs whose arq job never reached Redis are sent again.

Runs as an arq cron on every worker. `FOR UPDATE SKIP LOCKED` lets several
workers reap at once without taking the same job twice; the requeue gives the
job a new attempt number and a fresh arq job id, and the next worker resumes
it from its newest checkpoint.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from arq.constants import in_progress_key_prefix, job_key_prefix
from sqlalchemy import func, select, update

from services.worker import store
from services.worker.context import WorkerContext
from services.worker.training import RUN_TRAINING, _latest_checkpoint_step, checkpoint_dir, error_details
from shared.db.models import JobStatus, TrainingJob
from shared.errors import ErrorCategory
from shared.events import publish, record_event

log = structlog.get_logger(__name__)


async def reap_stale_jobs(ctx: WorkerContext) -> int:
    """Requeue (or fail, past `max_attempts`) running jobs with a stale heartbeat."""
    settings = ctx["settings"]
    cutoff = datetime.now(UTC) - timedelta(seconds=settings.heartbeat_stale_seconds)
    events: list[dict[str, Any]] = []
    requeued: list[tuple[str, str]] = []
    async with ctx["sessionmaker"]() as session, session.begin():
        stale = list(
            await session.scalars(
                select(TrainingJob)
                .where(TrainingJob.status == JobStatus.RUNNING.value, TrainingJob.heartbeat_at < cutoff)
                .with_for_update(skip_locked=True)
            )
        )
        for job in stale:
            lost_for = (datetime.now(UTC) - job.heartbeat_at).total_seconds() if job.heartbeat_at else None
            step = _latest_checkpoint_step(checkpoint_dir(settings, job))
            base = {
                "type": "error",
                "category": ErrorCategory.WORKER_LOST.value,
                "message": f"Worker {job.lease_owner} stopped responding (no heartbeat for {lost_for or 0:.0f}s)",
            }
            history = [
                *job.recovery_attempts,
                {
                    "category": ErrorCategory.WORKER_LOST.value,
                    "action": "resume_from_checkpoint" if step else "restart",
                    "message": f"Resumed from checkpoint step {step}" if step else "Restarted from the beginning",
                    "succeeded": job.attempt < job.max_attempts,
                    "at": datetime.now(UTC).isoformat(),
                    "worker": job.lease_owner,
                },
            ]
            if job.cancel_requested_at is not None or job.attempt >= job.max_attempts:
                cancelled = job.cancel_requested_at is not None
                details = error_details(base, history)
                status = JobStatus.CANCELLED if cancelled else JobStatus.FAILED
                events.append(await record_event(session, job.id, {**base, **details, "final": True}))
                await session.execute(
                    update(TrainingJob)
                    .where(TrainingJob.id == job.id)
                    .values(
                        status=status.value,
                        completed_at=func.now(),
                        lease_owner=None,
                        error_message=f"{details['user_message']} ({details['message']})",
                        error_details=details,
                        recovery_attempts=history,
                    )
                )
                store.remove(checkpoint_dir(settings, job))
                continue
            attempt = job.attempt + 1
            arq_job_id = f"train:{job.id}:{attempt}"
            resume = f"resuming from checkpoint step {step}" if step else "restarting (no checkpoint yet)"
            events.append(
                await record_event(
                    session, job.id, {**base, "final": False, "recovery": f"Requeued, {resume}", "attempts": history}
                )
            )
            events.append(
                await record_event(
                    session,
                    job.id,
                    {"type": "status", "status": JobStatus.QUEUED.value, "message": f"Requeued: {resume}"},
                )
            )
            await session.execute(
                update(TrainingJob)
                .where(TrainingJob.id == job.id)
                .values(
                    status=JobStatus.QUEUED.value,
                    attempt=attempt,
                    lease_owner=None,
                    arq_job_id=arq_job_id,
                    recovery_attempts=history,
                )
            )
            requeued.append((str(job.id), arq_job_id))
    for job_id, arq_job_id in requeued:
        await ctx["redis"].enqueue_job(RUN_TRAINING, job_id, _job_id=arq_job_id, _queue_name=settings.queue_name)
    await publish(ctx["redis"], events)
    if stale:
        log.warning("reaped_stale_jobs", requeued=len(requeued), ended=len(stale) - len(requeued))
    return len(stale) + await redeliver_lost_queued(ctx)


async def redeliver_lost_queued(ctx: WorkerContext) -> int:
    """Queued jobs whose arq job is not in Redis (the API committed the row, then Redis
    failed before the enqueue, or Redis lost its data) are enqueued again under their id.

    Jobs younger than the stale threshold are left alone: their enqueue may be in flight.
    """
    settings = ctx["settings"]
    redis = ctx["redis"]
    cutoff = datetime.now(UTC) - timedelta(seconds=settings.heartbeat_stale_seconds)
    async with ctx["sessionmaker"]() as session:
        rows = (
            await session.execute(
                select(TrainingJob.id, TrainingJob.arq_job_id).where(
                    TrainingJob.status == JobStatus.QUEUED.value, TrainingJob.created_at < cutoff
                )
            )
        ).all()
    sent = 0
    for job_id, arq_job_id in rows:
        if not arq_job_id or await redis.exists(job_key_prefix + arq_job_id, in_progress_key_prefix + arq_job_id):
            continue
        if await redis.enqueue_job(RUN_TRAINING, str(job_id), _job_id=arq_job_id, _queue_name=settings.queue_name):
            sent += 1
            log.warning("redelivered_queued_job", job_id=str(job_id), arq_job_id=arq_job_id)
    return sent
