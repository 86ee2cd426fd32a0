"""One attempt of a training job, from claim to its ending, with in-attempt recovery.

The arq task claims a queued job (a fenced `job_state` transition that gives this
worker the lease), runs the trainer through the GPU backend while the watcher
renews the lease, and ends the attempt in one of four ways: completed, failed,
cancelled, or handed back (requeued for a resume). Recoverable failures (OOM,
network, divergence) are retried inside the attempt by the policy in `recovery.py`. A lost
lease, found by the watcher or by a refused write, stops the trainer at once; the
attempt then writes nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.worker import completion, metrics, store, tracking
from services.worker.context import WorkerContext
from services.worker.lease import Recorder, in_transaction, publish_quietly, watch
from services.worker.recovery import RecoveryLimits, decide
from shared.db import job_state
from shared.db.job_state import LeaseLost
from shared.db.models import Skill, TrainingJob
from shared.errors import ErrorCategory
from shared.rules.tasks import RUN_TRAINING
from shared.schemas.training import Hyperparameters, TrainingSpec, Turn
from shared.settings import Settings

log = structlog.get_logger(__name__)

TRAINER_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def limits(settings: Settings) -> RecoveryLimits:
    return RecoveryLimits(
        network_max_retries=settings.network_max_retries,
        network_backoff_seconds=settings.network_backoff_seconds,
        gpu_unavailable_max_requeues=settings.gpu_unavailable_max_requeues,
        gpu_unavailable_delay_seconds=settings.gpu_unavailable_delay_seconds,
        divergence_max_retries=settings.divergence_max_retries,
    )


def build_spec(job: TrainingJob, settings: Settings) -> TrainingSpec:
    hyperparameters = job.config.get("effective_hyperparameters") or job.config["hyperparameters"]
    return TrainingSpec(
        job_id=str(job.id),
        skill_id=job.skill_id,
        base_model=job.config["base_model"],
        system_prompt=job.dataset["system_prompt"],
        conversations=[Turn.model_validate(c) for c in job.dataset["conversations"]],
        hyperparameters=Hyperparameters.model_validate(hyperparameters),
        output_dir=str(store.staging_dir(settings.adapters_dir, job.skill_id, str(job.id), job.attempt)),
        models_dir=str(settings.models_dir),
        attempt=job.attempt,
        checkpoint_dir=str(completion.checkpoint_root(settings, job.skill_id, job.id)),
    )


# Bound (structlog contextvars) on every log line of an attempt: the worker's own, the relayed
# trainer's, and arq's for the task (`bind_arq_job`). The tracking thread's lines carry them too.
JOB_LOG_KEYS = ("job_id", "attempt", "skill_id", "workspace_id")


async def bind_arq_job(ctx: dict[str, Any]) -> None:
    """arq's `on_job_start`: a training task's arq id (`train:<job id>:<attempt>`) names the job, so arq's
    own lines about it (`→ run_training(...)`, `← ... ●`) carry `job_id` and `attempt` as well."""
    kind, _, rest = str(ctx.get("job_id") or "").partition(":")
    job_id, _, attempt = rest.rpartition(":")
    if kind == "train" and job_id and attempt.isdigit():
        structlog.contextvars.bind_contextvars(job_id=job_id, attempt=int(attempt))


async def run_training(ctx: WorkerContext, job_id_text: str) -> str:
    """The arq task. Idempotent: a job that is not `queued` is left alone."""
    job_id = uuid.UUID(job_id_text)
    structlog.contextvars.bind_contextvars(job_id=job_id_text)
    try:
        claimed = await in_transaction(ctx, lambda session: _claim(session, job_id, ctx["worker_id"]))
        if claimed is None:
            log.info("job_not_claimable")
            return "skipped"
        (lease, job, started), queued_at, skill = claimed
        metrics.attempt_claimed(queued_at, started["ts"])
        structlog.contextvars.bind_contextvars(
            attempt=lease.attempt, skill_id=job.skill_id, workspace_id=skill.workspace_id
        )
        await publish_quietly(ctx, started)
        log.info(
            "job_running",
            status="running",
            skill_name=skill.name,
            base_model=job.config.get("base_model"),
            preset=job.config.get("preset"),
            backend=ctx["backend"].name,
        )
        tracker = tracking.start(
            ctx["settings"],
            job_id=job_id_text,
            config=job.config,
            skill_id=job.skill_id,
            skill_name=skill.name,
            workspace_id=skill.workspace_id,
            attempt=lease.attempt,
            examples=len(job.dataset.get("conversations") or []),
            backend=ctx["backend"].name,
        )
        return await _run_attempt(ctx, Recorder(ctx, lease, tracker, skill.name), job)
    finally:
        structlog.contextvars.unbind_contextvars(*JOB_LOG_KEYS)


async def _claim(
    session: AsyncSession, job_id: uuid.UUID, worker_id: str
) -> tuple[tuple[job_state.Lease, TrainingJob, dict[str, Any]], datetime | None, Row[str, str]] | None:
    """The claim, and (in its transaction) when the attempt was queued, for the queue-wait metric, and the
    skill's name and workspace, for the log lines."""
    claimed = await job_state.claim(session, job_id, worker_id)
    if claimed is None:
        return None
    skill = (await session.execute(select(Skill.name, Skill.workspace_id).where(Skill.id == claimed[1].skill_id))).one()
    return claimed, await metrics.queued_at(session, job_id, claimed[2]["seq"]), skill


async def _run_attempt(ctx: WorkerContext, recorder: Recorder, job: TrainingJob) -> str:
    settings = ctx["settings"]
    spec = build_spec(job, settings)
    drive = asyncio.create_task(_drive_with_recovery(ctx, recorder, job, spec))
    watcher = asyncio.create_task(watch(ctx, recorder.lease, recorder.ending))
    try:
        done, _ = await asyncio.wait(
            {drive, watcher}, timeout=settings.job_timeout_seconds, return_when=asyncio.FIRST_COMPLETED
        )
    except asyncio.CancelledError:
        # Worker shutdown: hand the job back so it resumes elsewhere (checkpoints stay).
        await _stop(drive, watcher)
        await asyncio.shield(_hand_back(ctx, recorder, job, spec, "Worker stopped; the job will resume"))
        raise
    try:
        if drive in done or (watcher in done and watcher.result() == "ending"):
            # The trainer is done and the attempt is writing its ending (its own fence checks the lease).
            watcher.cancel()
            return await drive
        await _stop(drive)  # kills the trainer process
        if watcher not in done:
            watcher.cancel()
            await completion.fail(ctx, recorder, job, spec, _timeout_payload(settings.job_timeout_seconds), [])
            return "failed"
        if watcher.result() == "cancelled":
            await completion.cancelled(ctx, recorder, job, spec)
            return "cancelled"
        raise LeaseLost(recorder.lease, "watch")
    except LeaseLost as lost:
        await _stop(drive, watcher)
        await _after_lease_lost(ctx, recorder, job, spec, lost)
        return "lease_lost"


async def _stop(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _after_lease_lost(
    ctx: WorkerContext, recorder: Recorder, job: TrainingJob, spec: TrainingSpec, lost: LeaseLost
) -> None:
    """Another attempt owns the job, or it ended. Our trainer is stopped by now.

    This attempt's staging directory is its own: drop it. The job's checkpoints are
    shared with the attempt that took over (it may resume from ours), so they stay,
    unless the job already ended while we were away: then our trainer may have
    written checkpoints after the ending attempt removed them, and nobody will resume.
    """
    log.warning("lease_lost", transition=lost.transition, attempt=lost.lease.attempt)
    await recorder.tracker.detach()
    store.remove(Path(spec.output_dir))
    try:
        ended = not await completion.still_running(ctx, job.id)
    except Exception as exc:  # the database is away: leave the files; the job's ending removes them
        log.warning("lease_lost_cleanup_skipped", error=str(exc))
        return
    if ended and spec.checkpoint_dir:
        store.remove(Path(spec.checkpoint_dir))


async def _drive_with_recovery(ctx: WorkerContext, recorder: Recorder, job: TrainingJob, spec: TrainingSpec) -> str:
    """Run the trainer; on a recoverable failure adjust, record and run again."""
    history: list[dict[str, Any]] = list(job.recovery_attempts or [])
    # What earlier tries of this job cost (stored on the job, so requeued attempts add to it).
    spent = float(job.cost_usd or 0.0)
    while True:
        outcome = await _drive(ctx, recorder, job, spec, spent)
        if outcome is None:
            return "completed"
        spent += float(outcome.get("cost_usd") or 0.0)
        category = ErrorCategory(outcome.get("category", "INTERNAL"))
        decision = decide(
            category, spec.hyperparameters, history, limits(ctx["settings"]), outcome.get("details") or {}
        )
        history.append(
            {
                "category": category.value,
                "error": outcome.get("message"),
                "action": decision.details.get("action"),
                "message": decision.message,
                "succeeded": decision.action != "fail",
                "at": datetime.now(UTC).isoformat(),
                "batch_size": spec.hyperparameters.batch_size,
                "gradient_accumulation_steps": spec.hyperparameters.gradient_accumulation_steps,
                "learning_rate": spec.hyperparameters.learning_rate,
            }
        )
        if decision.action == "fail":
            await completion.fail(ctx, recorder, job, spec, outcome, history, cost=spent)
            return "failed"
        log.warning(
            "training_recovering",
            category=category.value,
            error=outcome.get("message"),
            action=decision.action,
            recovery=decision.message,
        )
        new_hp = decision.hyperparameters or spec.hyperparameters
        await recorder.emit(
            {**outcome, "type": "error", "final": False, "recovery": decision.message, "attempts": history},
            recovery_attempts=history,
            cost_usd=round(spent, 4),
            config={**job.config, "effective_hyperparameters": new_hp.model_dump()},
        )
        if decision.warning:
            await recorder.emit({"type": "log", "level": "warning", "message": decision.warning})
        if decision.action == "requeue":
            await _hand_back(ctx, recorder, job, spec, decision.message, defer=decision.delay_seconds)
            return "requeued"
        if not decision.keep_checkpoints and spec.checkpoint_dir:
            store.remove(Path(spec.checkpoint_dir))
        store.remove(Path(spec.output_dir))
        await recorder.emit({"type": "log", "level": "info", "message": f"Recovering: {decision.message}"})
        await asyncio.sleep(decision.delay_seconds)
        spec = spec.model_copy(update={"hyperparameters": new_hp, "retry": spec.retry + 1})


async def _drive(
    ctx: WorkerContext, recorder: Recorder, job: TrainingJob, spec: TrainingSpec, spent: float = 0.0
) -> dict[str, Any] | None:
    """One trainer run. None on success, else the trainer's error payload with what the try cost.

    `spent`: what the job's earlier, failed tries cost; a completion bills it with its own.
    """
    started = time.monotonic()
    async for payload in ctx["backend"].train(spec):
        kind = payload.get("type")
        if kind == "complete":
            await completion.complete(ctx, recorder, job, spec, payload, time.monotonic() - started, spent)
            return None
        if kind == "error":
            return {**payload, "cost_usd": completion.bill_run(ctx, payload, time.monotonic() - started)}
        await recorder.emit(payload)
        if kind == "log":  # the trainer's own lines, relayed into the worker's log with the job's ids
            level = TRAINER_LOG_LEVELS.get(str(payload.get("level")), logging.INFO)
            log.log(level, "trainer_log", message=payload.get("message"))
    failed = {"type": "error", "category": "INTERNAL", "message": "Trainer ended without a result"}
    return {**failed, "cost_usd": completion.bill_run(ctx, failed, time.monotonic() - started)}


def _timeout_payload(limit: int) -> dict[str, Any]:
    return {
        "type": "error",
        "category": ErrorCategory.TIMEOUT.value,
        "message": f"Training exceeded the {limit} s limit (FASTBRAIN_JOB_TIMEOUT_SECONDS)",
    }


async def _hand_back(
    ctx: WorkerContext, recorder: Recorder, job: TrainingJob, spec: TrainingSpec, message: str, *, defer: float = 0.0
) -> None:
    """running → queued with attempt + 1 and a fresh arq job id; the job's checkpoints stay for the resume."""
    try:
        written = await recorder.write("requeue", lambda session: job_state.requeue(session, recorder.lease, message))
    except LeaseLost:
        return
    store.remove(Path(spec.output_dir))
    # This attempt's tracking calls are done before the next attempt can start: it goes on in the same run.
    await recorder.tracker.detach()
    await enqueue(ctx, job.id, written.arq_job_id, defer=defer)
    await publish_quietly(ctx, written.events)
    log.info(
        "job_requeued",
        status="queued",
        skill_name=recorder.skill_name,
        message=message,
        next_attempt=recorder.lease.attempt + 1,
        defer_seconds=defer or None,
    )


async def enqueue(ctx: WorkerContext, job_id: uuid.UUID, arq_job_id: str | None, *, defer: float = 0.0) -> None:
    """Send a requeued attempt to arq; if Redis is away, the reaper re-sends it once it is back."""
    try:
        await ctx["redis"].enqueue_job(
            RUN_TRAINING,
            str(job_id),
            _job_id=arq_job_id,
            _queue_name=ctx["settings"].queue_name,
            _defer_by=defer or None,
        )
    except Exception as exc:
        log.warning("enqueue_failed", arq_job_id=arq_job_id, error=str(exc))
