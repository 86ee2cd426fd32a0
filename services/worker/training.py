"""One training attempt, from claim to adapter row, with recovery and cancel.

PostgreSQL is the source of truth: a job is claimed with a conditional UPDATE
(queued → running, with this worker's lease), each event is persisted before
it is published, and the adapter row, the version directory and the job's
completion are committed together. While the trainer runs, a watcher writes
the heartbeat, and stops the trainer when a cancel is requested or the lease
is lost (the reaper gave the job to another worker).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.worker import store
from services.worker.context import WorkerContext
from services.worker.recovery import RecoveryLimits, decide
from shared.db.models import Adapter, JobStatus, Skill, TrainingJob, TrainingLog
from shared.errors import CATALOGUE, ErrorCategory
from shared.events import publish, record_event
from shared.schemas.training import Hyperparameters, TrainingSpec, Turn
from shared.settings import Settings

log = structlog.get_logger(__name__)

RUN_TRAINING = "run_training"
StopReason = Literal["cancelled", "lease_lost"]


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


def limits(settings: Settings) -> RecoveryLimits:
    return RecoveryLimits(
        network_max_retries=settings.network_max_retries,
        network_backoff_seconds=settings.network_backoff_seconds,
        gpu_unavailable_max_requeues=settings.gpu_unavailable_max_requeues,
        gpu_unavailable_delay_seconds=settings.gpu_unavailable_delay_seconds,
    )


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


def checkpoint_dir(settings: Settings, job: TrainingJob) -> Path:
    return settings.adapters_dir / job.skill_id / ".checkpoints" / str(job.id)


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
        checkpoint_dir=str(checkpoint_dir(settings, job)),
    )


def _latest_checkpoint_step(directory: Path) -> int | None:
    steps = [int(p.name.split("-")[-1]) for p in directory.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return max(steps) if steps else None


def _progress_updates(payload: dict[str, Any]) -> dict[str, Any]:
    eta = payload.get("eta_seconds")
    updates: dict[str, Any] = {
        "progress": payload.get("progress", 0.0),
        "current_step": payload.get("step", 0),
        "total_steps": payload.get("total_steps"),
        "current_epoch": payload.get("epoch", 0.0),
        "current_loss": payload.get("loss"),
        "eta_seconds": eta,
    }
    if isinstance(eta, int | float):
        updates["estimated_completion"] = datetime.now(UTC) + timedelta(seconds=float(eta))
    if payload.get("step") == 1 and payload.get("loss") is not None:
        updates["initial_loss"] = payload["loss"]
    return updates


async def _watch(ctx: WorkerContext, job_id: uuid.UUID) -> StopReason:
    """Heartbeat the lease; return when the job must stop (cancel or lease lost)."""
    settings = ctx["settings"]
    last_beat = 0.0
    while True:
        try:
            reason = await _check_and_beat(ctx, job_id, time.monotonic() - last_beat >= settings.heartbeat_seconds)
        except Exception as exc:  # a database blip must not kill a healthy training
            log.warning("watch_failed", error=str(exc))
            reason = None
        else:
            if reason == "beat":
                last_beat = time.monotonic()
        if reason == "cancelled":
            return "cancelled"
        if reason == "lease_lost":
            return "lease_lost"
        await asyncio.sleep(min(settings.cancel_poll_seconds, settings.heartbeat_seconds))


async def _check_and_beat(ctx: WorkerContext, job_id: uuid.UUID, beat: bool) -> str | None:
    """One look at the job row: a stop reason, or "beat" after writing the heartbeat."""
    async with ctx["sessionmaker"]() as session, session.begin():
        query = select(TrainingJob.lease_owner, TrainingJob.status, TrainingJob.cancel_requested_at)
        row = (await session.execute(query.where(TrainingJob.id == job_id))).one_or_none()
        if row is None or row.lease_owner != ctx["worker_id"] or row.status != JobStatus.RUNNING.value:
            return "lease_lost"
        if row.cancel_requested_at is not None:
            return "cancelled"
        if beat:
            await session.execute(
                update(TrainingJob)
                .where(TrainingJob.id == job_id, TrainingJob.lease_owner == ctx["worker_id"])
                .values(heartbeat_at=func.now())
            )
            return "beat"
    return None


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
        spec = build_spec(job, settings)
        resume_step = _latest_checkpoint_step(Path(spec.checkpoint_dir or ""))
        message = f"Training started (attempt {job.attempt})"
        if resume_step:
            message = f"Resuming from checkpoint at step {resume_step} (attempt {job.attempt})"
        await recorder.emit({"type": "status", "status": JobStatus.RUNNING.value, "message": message})

        drive = asyncio.create_task(_drive_with_recovery(ctx, recorder, job, spec))
        watcher = asyncio.create_task(_watch(ctx, job_id))
        try:
            done, _ = await asyncio.wait(
                {drive, watcher}, timeout=settings.job_timeout_seconds, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            # Worker shutdown: hand the job back so it runs again (arq retries
            # cancelled jobs); checkpoints stay for the resume.
            drive.cancel()
            watcher.cancel()
            await asyncio.gather(drive, watcher, return_exceptions=True)
            await asyncio.shield(_requeue(recorder, job, "Worker stopped; the job will resume", ctx["worker_id"]))
            raise
        if drive in done:
            watcher.cancel()
            return drive.result()
        drive.cancel()
        await asyncio.gather(drive, return_exceptions=True)  # kills the trainer process
        if watcher not in done:
            watcher.cancel()
            await _fail(recorder, job, spec, _timeout_payload(settings.job_timeout_seconds), [])
            return "failed"
        reason = watcher.result()
        if reason == "cancelled":
            await finish_cancelled(recorder, job, settings)
            return "cancelled"
        log.warning("lease_lost")  # another worker owns the job now; write nothing more
        return "lease_lost"
    finally:
        structlog.contextvars.unbind_contextvars("job_id")


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
        decision = decide(category, spec.hyperparameters, history, limits(ctx["settings"]))
        attempt = {
            "category": category.value,
            "error": outcome.get("message"),
            "action": decision.details.get("action"),
            "message": decision.message,
            "succeeded": decision.action != "fail",
            "at": datetime.now(UTC).isoformat(),
            "batch_size": spec.hyperparameters.batch_size,
            "gradient_accumulation_steps": spec.hyperparameters.gradient_accumulation_steps,
        }
        history.append(attempt)
        if decision.action == "fail":
            await _fail(recorder, job, spec, outcome, history, cost=spent)
            return "failed"
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
            await _requeue(recorder, job, decision.message, ctx["worker_id"], defer=decision.delay_seconds)
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
        if kind == "progress":
            await recorder.emit(payload, **_progress_updates(payload))
        elif kind == "complete":
            await _complete(ctx, job, spec, payload, time.monotonic() - started, spent)
            return None
        elif kind == "error":
            return {**payload, "cost_usd": try_cost(ctx, payload, time.monotonic() - started)}
        else:
            await recorder.emit(payload)
    failed = {"type": "error", "category": "INTERNAL", "message": "Trainer ended without a result"}
    return {**failed, "cost_usd": try_cost(ctx, failed, time.monotonic() - started)}


def try_cost(ctx: WorkerContext, payload: dict[str, Any], wall_seconds: float) -> float:
    """USD one trainer run cost: the GPU time a billing backend reports (Modal), else wall time at the local price."""
    if getattr(ctx["backend"], "bills_gpu_time", False):
        return float(payload.get("cost_usd") or 0.0)
    return wall_seconds / 3600.0 * ctx["settings"].local_price_per_hour


def _device_key(backend_device: str) -> str:
    """The backend's device as the estimator keys it: `cpu`, `cuda`, or the Modal GPU type (`a10g`)."""
    value = backend_device.strip().lower()
    return value.split(":", 1)[1] if value.startswith("modal:") else value.split(":", 1)[0]


async def _measurements(
    session: AsyncSession, job: TrainingJob, payload: dict[str, Any], wall_seconds: float, device: str
) -> dict[str, Any]:
    """What estimates calibrate on: tokens and seconds of the optimizer steps (the last
    progress event's running totals), the rest of the run's wall time as startup, and
    the time estimate's error against the run's wall time."""
    last = await session.scalar(
        select(TrainingLog.data)
        .where(TrainingLog.job_id == job.id, TrainingLog.event_type == "progress")
        .order_by(TrainingLog.seq.desc())
        .limit(1)
    )
    tokens = (last or {}).get("tokens_seen")
    step_seconds = (last or {}).get("elapsed_seconds")
    rate = payload.get("tokens_per_second")
    if isinstance(tokens, int) and isinstance(step_seconds, int | float) and tokens > 0 and step_seconds > 0:
        rate = tokens / float(step_seconds)
    elif isinstance(rate, int | float) and rate > 0:  # no progress event: the trainer's own figures
        step_seconds = float(payload.get("training_time_seconds") or wall_seconds)
        tokens = round(float(rate) * step_seconds)
    else:
        rate = tokens = step_seconds = None
    estimate = (job.config or {}).get("estimate") or {}
    estimated_seconds = estimate.get("seconds")
    if estimated_seconds is None and job.estimated_time_minutes is not None:
        estimated_seconds = job.estimated_time_minutes * 60.0
    error = None
    if estimated_seconds is not None and wall_seconds > 0:
        error = round((float(estimated_seconds) - wall_seconds) / wall_seconds * 100.0, 1)
    return {
        "device": device,
        "tokens_trained": tokens,
        "tokens_per_second": round(float(rate), 2) if rate else None,
        "startup_seconds": round(max(wall_seconds - float(step_seconds), 0.0), 2) if step_seconds else None,
        "estimate_error_pct": error,
    }


def _eval_metrics(payload: dict[str, Any]) -> dict[str, Any]:
    """Held-out loss before and after training, when the trainer had enough examples to split."""
    keys = ("eval_loss_before", "eval_loss_after", "eval_examples", "improvement_pct")
    return {key: payload[key] for key in keys if payload.get(key) is not None}


async def _complete(
    ctx: WorkerContext,
    job: TrainingJob,
    spec: TrainingSpec,
    payload: dict[str, Any],
    wall_seconds: float,
    spent: float = 0.0,
) -> None:
    settings = ctx["settings"]
    device = _device_key(str(getattr(ctx["backend"], "device", "") or "cpu"))
    training_seconds = float(payload.get("training_time_seconds") or wall_seconds)
    cost = round(spent + try_cost(ctx, payload, wall_seconds), 4)  # failed tries are billed too
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
            remote_ref=payload.get("adapter_ref"),  # set by the Modal backend: its copy on the Volume
        )
        session.add(adapter)
        await session.flush()
        measured = await _measurements(session, job, payload, wall_seconds, device)
        measured |= _eval_metrics(payload)
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
                "wall_time_seconds": round(wall_seconds, 1),
                **measured,
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
                **measured,
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
    if spec.checkpoint_dir:
        store.remove(Path(spec.checkpoint_dir))
    log.info(
        "training_completed",
        version=version,
        final_loss=payload.get("final_loss"),
        wall_seconds=round(wall_seconds, 1),
        **measured,
    )


def _timeout_payload(limit: int) -> dict[str, Any]:
    return {
        "type": "error",
        "category": ErrorCategory.TIMEOUT.value,
        "message": f"Training exceeded the {limit} s limit (FASTBRAIN_JOB_TIMEOUT_SECONDS)",
    }


def error_details(payload: dict[str, Any], attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """The stored and streamed shape of a final failure: what happened, what we tried, what to do."""
    category = str(payload.get("category") or ErrorCategory.INTERNAL.value)
    info = CATALOGUE[ErrorCategory(category)] if category in ErrorCategory.__members__ else None
    return {
        "category": category,
        "severity": payload.get("severity") or (info.severity.value if info else None),
        "message": payload.get("message"),
        "user_message": payload.get("user_message") or (info.user_message if info else None),
        "suggestions": payload.get("suggestions") or (list(info.suggestions) if info else []),
        "attempts": attempts,
        "exception_type": payload.get("exception_type"),
        "traceback_tail": payload.get("traceback_tail"),
    }


async def _fail(
    recorder: Recorder,
    job: TrainingJob,
    spec: TrainingSpec,
    payload: dict[str, Any],
    attempts: list[dict[str, Any]],
    cost: float | None = None,
) -> None:
    """The job's final failure; `cost`: what all its tries cost (None: leave the job's figure as it is)."""
    store.remove(Path(spec.output_dir))
    if spec.checkpoint_dir:
        store.remove(Path(spec.checkpoint_dir))
    details = error_details(payload, attempts)
    billed = {"cost_usd": round(cost, 4)} if cost is not None else {}
    await recorder.emit(
        {**payload, **details, "type": "error", "final": True, **billed},
        status=JobStatus.FAILED.value,
        completed_at=func.now(),
        error_message=f"{details['user_message']} ({details['message']})",
        error_details=details,
        recovery_attempts=attempts,
        lease_owner=None,
        **billed,
    )
    log.warning("training_failed", category=details["category"], message=payload.get("message"))


async def finish_cancelled(recorder: Recorder, job: TrainingJob, settings: Settings) -> None:
    """Cancelled: no adapter, no partial files, a terminal `status` event."""
    store.remove(store.staging_dir(settings.adapters_dir, job.skill_id, str(job.id), job.attempt))
    store.remove(checkpoint_dir(settings, job))
    info = CATALOGUE[ErrorCategory.CANCELLED]
    await recorder.emit(
        {"type": "status", "status": JobStatus.CANCELLED.value, "message": "Training cancelled"},
        status=JobStatus.CANCELLED.value,
        completed_at=func.now(),
        error_message=info.user_message,
        error_details={
            "category": ErrorCategory.CANCELLED.value,
            "severity": info.severity.value,
            "message": "Cancelled by request",
            "user_message": info.user_message,
            "suggestions": list(info.suggestions),
            "attempts": [],
        },
        lease_owner=None,
        eta_seconds=None,
    )
    log.info("training_cancelled")


async def _requeue(recorder: Recorder, job: TrainingJob, message: str, worker_id: str, *, defer: float = 0.0) -> None:
    """running → queued with attempt + 1 and a fresh arq job id; checkpoints stay."""
    ctx = recorder.ctx
    store.remove(Path(build_spec(job, ctx["settings"]).output_dir))
    async with ctx["sessionmaker"]() as session, session.begin():
        attempt = await session.scalar(
            update(TrainingJob)
            .where(
                TrainingJob.id == recorder.job_id,
                TrainingJob.status == JobStatus.RUNNING.value,
                TrainingJob.lease_owner == worker_id,
            )
            .values(status=JobStatus.QUEUED.value, lease_owner=None, attempt=TrainingJob.attempt + 1)
            .returning(TrainingJob.attempt)
        )
        if attempt is None:
            return
        arq_job_id = f"train:{job.id}:{attempt}"
        await session.execute(update(TrainingJob).where(TrainingJob.id == job.id).values(arq_job_id=arq_job_id))
        event = await record_event(
            session, recorder.job_id, {"type": "status", "status": JobStatus.QUEUED.value, "message": message}
        )
    await ctx["redis"].enqueue_job(
        RUN_TRAINING,
        str(job.id),
        _job_id=arq_job_id,
        _queue_name=ctx["settings"].queue_name,
        _defer_by=defer or None,
    )
    await publish(ctx["redis"], event)
