"""The reaper: running jobs whose worker stopped heartbeating go back to the queue,
and queued jobs whose arq job never reached Redis are sent again.

Runs as an arq cron on every worker. `FOR UPDATE SKIP LOCKED` lets several
workers reap at once without taking the same job twice; staleness is measured on
the database clock; each requeue is a fenced `job_state` transition with a new
attempt number and a fresh arq job id, and the next worker resumes the job from
its newest checkpoint. A job past `max_attempts` (FASTBRAIN_MAX_ATTEMPTS) fails
with WORKER_LOST.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog
from arq.constants import in_progress_key_prefix, job_key_prefix
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.worker import metrics, store, tracking
from services.worker.attempt import enqueue
from services.worker.completion import checkpoint_root, failure_details
from services.worker.context import WorkerContext
from services.worker.lease import in_transaction, publish_quietly
from shared.db import job_state
from shared.db.job_state import Reaped
from shared.db.models import JobStatus, TrainingJob
from shared.errors import ErrorCategory
from shared.rules.tasks import RUN_TRAINING

log = structlog.get_logger(__name__)


async def reap_stale_jobs(ctx: WorkerContext) -> int:
    """Requeue (or end, past `max_attempts` or when a cancel was asked) running jobs with a stale heartbeat."""
    settings = ctx["settings"]
    ended: list[job_state.StaleJob] = []
    stale_seen: list[job_state.StaleJob] = []

    async def work(session: AsyncSession) -> list[Reaped]:
        ended.clear()  # a retried transaction starts over: only the committed try's endings count
        stale_seen.clear()
        reaped = []
        for stale in await job_state.stale_jobs(session, settings.heartbeat_stale_seconds):
            stale_seen.append(stale)
            history = [
                *stale.recovery_attempts,
                {
                    "category": ErrorCategory.WORKER_LOST.value,
                    "action": "resume_from_checkpoint",
                    "message": "resuming from its newest checkpoint",
                    "succeeded": stale.lease.attempt < stale.max_attempts and not stale.cancel_requested,
                    "at": datetime.now(UTC).isoformat(),
                    "worker": stale.lease.owner,
                },
            ]
            base = {
                "category": ErrorCategory.WORKER_LOST.value,
                "message": f"Worker {stale.lease.owner} stopped responding "
                f"(no heartbeat for {stale.silent_seconds:.0f}s)",
            }
            result = await job_state.reap(session, stale, history, failure_details(base, history))
            if result.requeued_as is None and result.events:
                ended.append(stale)
            reaped.append(result)
        return reaped

    reaped = await in_transaction(ctx, work)
    skills = {str(stale.lease.job_id): stale.skill_id for stale in stale_seen}
    for result in reaped:
        job_id = str(result.job_id)
        with structlog.contextvars.bound_contextvars(job_id=job_id, skill_id=skills.get(job_id)):
            if result.requeued_as:
                await enqueue(ctx, result.job_id, result.requeued_as)
                log.warning("job_requeued", status="queued", message="its worker stopped responding")
            await publish_quietly(ctx, result.events)
    for stale in ended:  # no attempt will resume these
        status = (JobStatus.CANCELLED if stale.cancel_requested else JobStatus.FAILED).value
        job_id = str(stale.lease.job_id)
        with structlog.contextvars.bound_contextvars(job_id=job_id, skill_id=stale.skill_id):
            # Its attempt ran on the silent worker: when it started is not known here.
            metrics.job_finished(status, None)
            store.remove(checkpoint_root(settings, stale.skill_id, stale.lease.job_id))
            log.warning(f"job_{status}", status=status, category=ErrorCategory.WORKER_LOST.value)
            await tracking.end_orphaned(settings, job_id, status, {"category": ErrorCategory.WORKER_LOST.value})
    if reaped:
        requeued = sum(1 for r in reaped if r.requeued_as)
        log.warning("reaped_stale_jobs", requeued=requeued, ended=len(ended))
    return len(reaped) + await redeliver_lost_queued(ctx)


async def redeliver_lost_queued(ctx: WorkerContext) -> int:
    """Queued jobs whose arq job is not in Redis (the API committed the row, then Redis
    failed before the enqueue, or Redis lost its data) are enqueued again under their id.

    Jobs younger than the stale threshold are left alone: their enqueue may be in flight.
    """
    settings = ctx["settings"]
    redis = ctx["redis"]
    cutoff = datetime.now(UTC) - timedelta(seconds=settings.heartbeat_stale_seconds)

    async def queued(session: AsyncSession) -> list[tuple[object, str | None]]:
        rows = await session.execute(
            select(TrainingJob.id, TrainingJob.arq_job_id).where(
                TrainingJob.status == JobStatus.QUEUED.value, TrainingJob.created_at < cutoff
            )
        )
        return [(row[0], row[1]) for row in rows.all()]

    sent = 0
    for job_id, arq_job_id in await in_transaction(ctx, queued):
        if not arq_job_id or await redis.exists(job_key_prefix + arq_job_id, in_progress_key_prefix + arq_job_id):
            continue
        if await redis.enqueue_job(RUN_TRAINING, str(job_id), _job_id=arq_job_id, _queue_name=settings.queue_name):
            sent += 1
            log.warning("redelivered_queued_job", job_id=str(job_id), arq_job_id=arq_job_id)
    return sent
