"""Training jobs: start, read status, list history."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer, load_only

from services.api.deps import AfterCommit
from services.api.errors import Conflict, NotFound, TooManyRequests, Unprocessable
from services.api.skills.service import get_skill
from services.api.skills.validation import MIN_EXAMPLES, validate_examples
from services.api.training import estimate as estimates
from services.gpu.catalog import local_model_ids, model_ids
from shared.db import job_state, spend, tenancy
from shared.db.models import ACTIVE_JOB_STATUSES, Adapter, JobStatus, Skill, TrainingJob, TrainingLog, Workspace
from shared.rules import tasks
from shared.rules.adapter_quality import quality_score
from shared.rules.devices import device_for
from shared.rules.templates import template_problems
from shared.rules.tokens import count_example_tokens, length_warning
from shared.schemas.events import public_attempts, public_error_details
from shared.schemas.jobs import (
    EstimateOut,
    EstimateRequest,
    JobCancelOut,
    JobDiagnostics,
    JobStatusOut,
    JobSummary,
    MetricPoint,
    StatsOut,
    TrainAccepted,
)
from shared.schemas.training import Hyperparameters, TrainingConfigRequest
from shared.settings import Settings

log = structlog.get_logger(__name__)


def validate_base_model(base_model: str, backend: str = "local", field: str = "config.base_model") -> None:
    """Local workers load the local models only; Modal loads every catalog model."""
    allowed = model_ids() if backend == "modal" else local_model_ids()
    if base_model not in allowed:
        raise Unprocessable(
            f"{field}: '{base_model}' is not available on this backend; allowed: {', '.join(allowed)}.",
            details={"field": field, "allowed": allowed},
            code="invalid_base_model",
        )


def _gpu_type(settings: Settings, backend: str, gpu_type: str | None) -> str | None:
    """The configured spelling of a Modal GPU type (case-insensitive); None on the local backend."""
    if backend != "modal":
        if gpu_type is not None:
            raise Unprocessable(
                "gpu_type: only the modal backend has GPU types; the local backend uses its worker's device.",
                details={"field": "gpu_type", "allowed": []},
                code="invalid_gpu_type",
            )
        return None
    wanted = gpu_type or settings.modal_gpu
    allowed = list(settings.modal_gpu_prices)
    for name in allowed:
        if name.lower() == wanted.lower():
            return name
    raise Unprocessable(
        f"gpu_type: '{wanted}' has no configured price; allowed: {', '.join(allowed)}.",
        details={"field": "gpu_type", "allowed": allowed},
        suggestions=["Add its price to FASTBRAIN_MODAL_GPU_PRICES to use another GPU type."],
        code="invalid_gpu_type",
    )


async def compute_estimate(
    session: AsyncSession,
    settings: Settings,
    skill: Skill,
    base_model: str,
    hyperparameters: Hyperparameters,
    backend: str,
    gpu_type: str | None,
) -> estimates.Estimate:
    """The one estimate both POST /api/skills/{id}/estimate and POST /api/train-skill give."""
    device = device_for(backend, gpu_type, await estimates.local_device(session))
    example_tokens, token_count = await asyncio.to_thread(
        count_example_tokens, settings.models_dir, base_model, skill.system_prompt, skill.training_data
    )
    try:
        price = estimates.price_for(backend, gpu_type, settings.modal_gpu_prices, settings.local_price_per_hour)
    except KeyError:
        price = 0.0
    return estimates.compute(
        base_model=base_model,
        example_tokens=example_tokens,
        hyperparameters=hyperparameters,
        backend=backend,
        device=device,
        gpu_type=gpu_type,
        price_per_hour=price,
        calibration=await estimates.calibration(session, base_model, device),
        token_count=token_count,
    )


async def estimate_skill(
    session: AsyncSession, settings: Settings, skill_id: str, request: EstimateRequest
) -> EstimateOut:
    skill = await get_skill(session, skill_id)
    config = request.config or TrainingConfigRequest()
    if request.preset is not None:
        config = config.model_copy(update={"preset": request.preset})
    backend = request.backend or settings.gpu_backend
    validate_base_model(config.base_model, backend)
    gpu_type = _gpu_type(settings, backend, request.gpu_type)
    hyperparameters = config.resolve(len(skill.training_data))
    result = await compute_estimate(session, settings, skill, config.base_model, hyperparameters, backend, gpu_type)
    return EstimateOut.model_validate(result.as_dict())


async def _active_job(session: AsyncSession, skill_id: str) -> uuid.UUID | None:
    return await session.scalar(
        select(TrainingJob.id).where(TrainingJob.skill_id == skill_id, TrainingJob.status.in_(ACTIVE_JOB_STATUSES))
    )


def _already_training(skill_id: str, job_id: uuid.UUID | None) -> Conflict:
    return Conflict(
        f"Skill '{skill_id}' already has a training in progress.",
        details={"job_id": str(job_id) if job_id else None, "skill_id": skill_id},
        suggestions=["Follow the running job's progress, or cancel it before starting another."],
        code="training_in_progress",
    )


def job_not_found(job_id: uuid.UUID) -> NotFound:
    return NotFound(f"Training job '{job_id}' not found.", details={"job_id": str(job_id)}, code="job_not_found")


async def active_job_count(session: AsyncSession) -> int:
    """Trainings pending, queued or running in the session's workspace."""
    count = await session.scalar(
        select(func.count()).select_from(TrainingJob).where(TrainingJob.status.in_(ACTIVE_JOB_STATUSES))
    )
    return count or 0


async def _check_concurrency(session: AsyncSession, settings: Settings) -> str:
    """At most `max_concurrent_jobs_per_workspace` active trainings; the workspace row's lock
    (held to the commit) makes concurrent starts in one workspace take turns at this count."""
    workspace_id = tenancy.workspace_of(session)
    assert workspace_id is not None, "start_training runs in a scoped session"
    await session.execute(select(Workspace.id).where(Workspace.id == workspace_id).with_for_update())
    active = await active_job_count(session)
    limit = settings.max_concurrent_jobs_per_workspace
    if active >= limit:
        raise TooManyRequests(
            f"Workspace '{workspace_id}' already has {active} trainings pending or running; at most {limit} may be.",
            details={"active_jobs": active, "limit": limit},
            suggestions=["Wait for one to finish or cancel one, or raise FASTBRAIN_MAX_CONCURRENT_JOBS_PER_WORKSPACE."],
            code="too_many_jobs",
            headers={"Retry-After": "30"},
        )
    return workspace_id


async def _check_budget(session: AsyncSession, workspace_id: str, guess: estimates.Estimate) -> None:
    """A training whose estimated cost is more than what is left of the month's GPU budget is refused."""
    budget = await spend.budget(session, workspace_id)
    remaining = budget.remaining_usd
    if remaining is None or guess.cost_usd <= remaining:
        return
    raise TooManyRequests(
        f"This training is estimated at ${guess.cost_usd:.2f}, but workspace '{workspace_id}' has "
        f"${remaining:.2f} left of its ${budget.monthly_usd:.2f} monthly GPU budget "
        f"(${budget.spent_usd:.2f} spent this month).",
        details={
            "estimated_cost_usd": guess.cost_usd,
            "monthly_budget_usd": budget.monthly_usd,
            "spent_usd": budget.spent_usd,
            "remaining_usd": remaining,
            "resets_at": budget.resets_at.isoformat(),
        },
        suggestions=[
            "Pick a cheaper preset or GPU, or train on fewer examples.",
            f"Or raise the budget: fastbrain workspaces budget {workspace_id} --monthly-usd N.",
        ],
        code="budget_exceeded",
        headers={"Retry-After": str(int((budget.resets_at - datetime.now(UTC)).total_seconds()))},
    )


async def start_training(
    session: AsyncSession,
    after_commit: AfterCommit,
    settings: Settings,
    skill_id: str,
    config: TrainingConfigRequest,
) -> TrainAccepted:
    skill = await get_skill(session, skill_id, for_update=True)
    validate_base_model(config.base_model, settings.gpu_backend)
    if not skill.training_data:
        raise Unprocessable(
            f"Skill '{skill_id}' has no example conversations to train on.",
            suggestions=["Add examples with POST /api/skills/{skill_id}/examples."],
            code="no_examples",
        )
    report = await asyncio.to_thread(validate_examples, skill.training_data, for_training=True)
    if "empty_turns" in report.codes:
        raise Unprocessable(
            f"Skill '{skill_id}' has examples that cannot be trained on: {report.errors[0]}.",
            details={"errors": report.errors},
            suggestions=["Fix or remove those examples with PUT /api/skills/{skill_id}."],
            code="invalid_examples",
        )
    if "too_few_examples" in report.codes:
        count = len(skill.training_data)
        raise Unprocessable(
            f"Skill '{skill_id}' has {count} example{'s' if count != 1 else ''}; training needs at least "
            f"{MIN_EXAMPLES}: add {MIN_EXAMPLES - count} more.",
            details={"example_count": count, "minimum": MIN_EXAMPLES, "missing": MIN_EXAMPLES - count},
            suggestions=[
                "Add examples with POST /api/skills/{skill_id}/examples or import a file with "
                "POST /api/skills/{skill_id}/examples/import.",
                "50 or more varied examples usually train a noticeably better adapter.",
            ],
            code="too_few_examples",
        )
    existing = await _active_job(session, skill_id)
    if existing is not None:
        raise _already_training(skill_id, existing)
    workspace_id = await _check_concurrency(session, settings)

    hyperparameters = config.resolve(len(skill.training_data))
    warnings = list(report.warnings)
    too_long = await asyncio.to_thread(
        length_warning,
        settings.models_dir,
        config.base_model,
        skill.system_prompt,
        skill.training_data,
        hyperparameters.max_seq_length,
    )
    if too_long:
        warnings.append(too_long)
    broken = await asyncio.to_thread(
        template_problems,
        settings.models_dir,
        config.base_model,
        skill.system_prompt,
        skill.training_data,
        hyperparameters.max_seq_length,
    )
    if broken:
        raise Unprocessable(
            f"Chat template check failed for {config.base_model}: {broken}.",
            details={"base_model": config.base_model, "max_seq_length": hyperparameters.max_seq_length},
            suggestions=[
                "Raise config.max_seq_length or shorten the examples and system prompt.",
                "Training on a cut answer or one without the end-of-turn token teaches the model not to stop.",
            ],
            code="template_check_failed",
        )
    # The worker's configured GPU, priced or not (an unpriced one costs 0, as the Modal backend bills it).
    gpu_type = settings.modal_gpu if settings.gpu_backend == "modal" else None
    guess = await compute_estimate(
        session, settings, skill, config.base_model, hyperparameters, settings.gpu_backend, gpu_type
    )
    await _check_budget(session, workspace_id, guess)
    job = TrainingJob(
        skill_id=skill_id,
        config={
            "preset": config.preset.value,
            "base_model": config.base_model,
            "hyperparameters": hyperparameters.model_dump(),
            "estimate": guess.as_dict(),
        },
        dataset={"system_prompt": skill.system_prompt, "conversations": skill.training_data},
        total_epochs=hyperparameters.epochs,
        estimated_cost=guess.cost_usd,
        estimated_time_minutes=guess.minutes,
        backend=settings.gpu_backend,
        max_attempts=settings.max_attempts,
    )
    message = f"Queued: {len(skill.training_data)} examples on {config.base_model} ({config.preset.value})"
    try:
        started = await job_state.start(session, job, message)
    except IntegrityError as exc:  # the partial unique index: a concurrent start won
        raise _already_training(skill_id, None) from exc
    after_commit.enqueue(tasks.RUN_TRAINING, str(job.id), _job_id=started.arq_job_id)
    if started.event is not None:
        after_commit.publish(started.event)
    structlog.contextvars.bind_contextvars(job_id=str(job.id), skill_id=skill_id)
    queued = {
        "skill_name": skill.name,
        "examples": len(skill.training_data),
        "base_model": config.base_model,
        "preset": config.preset.value,
        "estimated_minutes": guess.minutes,
        "estimated_cost_usd": guess.cost_usd,
    }
    after_commit.call(lambda: log.info("job_queued", status="queued", **queued))
    return TrainAccepted(
        job_id=job.id,
        status=job.status,
        estimated_cost=guess.cost_usd,
        estimated_time_minutes=guess.minutes,
        stream_url=f"/api/training-stream/{job.id}",
        warnings=warnings,
        estimate=EstimateOut.model_validate(guess.as_dict()),
    )


# Job answers never carry the training data: a skill's dataset can be megabytes.
WITHOUT_DATASET = defer(TrainingJob.dataset, raiseload=True)
# `GET /api/training-status` sends this many of the latest metrics points unless asked otherwise.
DEFAULT_METRICS_LIMIT = 200


async def get_job(session: AsyncSession, job_id: uuid.UUID) -> TrainingJob:
    """The job row without its `dataset` (reading it raises); 404 when there is none."""
    job = await session.get(TrainingJob, job_id, options=[WITHOUT_DATASET])
    if job is None:
        raise job_not_found(job_id)
    return job


async def job_status(
    session: AsyncSession, job_id: uuid.UUID, metrics_limit: int | None = DEFAULT_METRICS_LIMIT
) -> JobStatusOut:
    """The job's row and its latest `metrics_limit` progress points (all of them for None)."""
    job = await get_job(session, job_id)
    is_progress = (TrainingLog.job_id == job_id, TrainingLog.event_type == "progress")
    latest = select(TrainingLog.data).where(*is_progress).order_by(TrainingLog.seq.desc())
    if metrics_limit is not None:
        latest = latest.limit(metrics_limit)
    progress_events = list(reversed(list(await session.scalars(latest))))
    metrics_total = await session.scalar(select(func.count()).select_from(TrainingLog).where(*is_progress)) or 0
    adapter = (
        await session.execute(
            select(Adapter.id, Adapter.version, Adapter.training_examples, Adapter.is_active).where(
                Adapter.training_job_id == job_id
            )
        )
    ).first()
    # What completion decided about activation (the regression gate) is in the `complete` event.
    completed = (
        await session.scalar(
            select(TrainingLog.data)
            .where(TrainingLog.job_id == job_id, TrainingLog.event_type == "complete")
            .order_by(TrainingLog.seq.desc())
            .limit(1)
        )
        if job.status == JobStatus.COMPLETED.value
        else None
    ) or {}
    training_examples = adapter.training_examples if adapter else completed.get("training_examples")
    quality = (
        quality_score(job.improvement_pct, job.eval_examples, training_examples)
        if job.status == JobStatus.COMPLETED.value
        else None
    )
    restored_best = (
        job.last_eval_loss > job.best_eval_loss
        if job.last_eval_loss is not None and job.best_eval_loss is not None
        else None
    )
    skill_name = await session.scalar(select(Skill.name).where(Skill.id == job.skill_id))
    return JobStatusOut(
        job_id=job.id,
        skill_id=job.skill_id,
        skill_name=skill_name,
        status=job.status,
        progress=job.progress,
        current_step=job.current_step,
        total_steps=job.total_steps,
        current_epoch=job.current_epoch,
        total_epochs=job.total_epochs,
        current_loss=job.current_loss,
        eta_seconds=job.eta_seconds,
        initial_loss=job.initial_loss,
        final_loss=job.final_loss,
        training_time_seconds=job.training_time_seconds,
        cost_usd=job.cost_usd,
        estimated_cost=job.estimated_cost,
        estimated_time_minutes=job.estimated_time_minutes,
        device=job.device,
        tokens_trained=job.tokens_trained,
        tokens_per_second=job.tokens_per_second,
        startup_seconds=job.startup_seconds,
        estimate_error_pct=job.estimate_error_pct,
        eval_loss_before=job.eval_loss_before,
        eval_loss_after=job.eval_loss_after,
        eval_examples=job.eval_examples,
        improvement_pct=job.improvement_pct,
        best_step=job.best_step,
        best_eval_loss=job.best_eval_loss,
        last_eval_loss=job.last_eval_loss,
        restored_best=restored_best,
        quality=quality,
        evaluation=job.evaluation,
        error_message=job.error_message,
        error_details=public_error_details(job.error_details),  # no traceback: it stays in the row and the logs
        recovery_attempts=public_attempts(job.recovery_attempts or []),
        cancel_requested=job.cancel_requested_at is not None,
        config=job.config,
        attempt=job.attempt,
        adapter_id=adapter.id if adapter else None,
        adapter_version=adapter.version if adapter else None,
        training_examples=training_examples,
        adapter_active=adapter.is_active if adapter else None,
        activated=bool(completed.get("activated", True)) if adapter else None,  # before the gate: always
        not_activated_reason=completed.get("not_activated_reason") if adapter else None,
        regression_check=completed.get("regression_check") if adapter else None,
        created_at=job.created_at,
        started_at=job.started_at,
        completed_at=job.completed_at,
        last_event_seq=job.event_seq,
        metrics_history=[MetricPoint.model_validate(e) for e in progress_events],
        metrics_total=metrics_total,
    )


def _summary(job: TrainingJob, skill_name: str | None) -> JobSummary:
    config: dict[str, Any] = job.config or {}
    return JobSummary(
        job_id=job.id,
        skill_id=job.skill_id,
        skill_name=skill_name,
        status=job.status,
        base_model=config.get("base_model"),
        preset=config.get("preset"),
        progress=job.progress,
        final_loss=job.final_loss,
        training_time_seconds=job.training_time_seconds,
        cost_usd=job.cost_usd,
        error_message=job.error_message,
        created_at=job.created_at,
        completed_at=job.completed_at,
    )


async def list_jobs(
    session: AsyncSession, *, skill_id: str | None, status: str | None, limit: int, offset: int
) -> tuple[list[JobSummary], int]:
    # Only the summary's columns: a list never loads datasets (or error details, configs aside).
    summary_columns = load_only(
        TrainingJob.id,
        TrainingJob.skill_id,
        TrainingJob.status,
        TrainingJob.config,
        TrainingJob.progress,
        TrainingJob.final_loss,
        TrainingJob.training_time_seconds,
        TrainingJob.cost_usd,
        TrainingJob.error_message,
        TrainingJob.created_at,
        TrainingJob.completed_at,
        raiseload=True,
    )
    query = select(TrainingJob, Skill.name).join(Skill, Skill.id == TrainingJob.skill_id).options(summary_columns)
    count = select(func.count()).select_from(TrainingJob)
    if skill_id:
        query = query.where(TrainingJob.skill_id == skill_id)
        count = count.where(TrainingJob.skill_id == skill_id)
    if status:
        query = query.where(TrainingJob.status == status)
        count = count.where(TrainingJob.status == status)
    rows = await session.execute(
        query.order_by(TrainingJob.created_at.desc(), TrainingJob.id.desc()).limit(limit).offset(offset)
    )
    total = await session.scalar(count) or 0
    return [_summary(job, name) for job, name in rows.all()], total


async def cancel(session: AsyncSession, after_commit: AfterCommit, job_id: uuid.UUID) -> JobCancelOut:
    """A queued job is cancelled at once and never starts; a running one is asked
    to stop (its worker ends the trainer within seconds and reports `cancelled`)."""
    result = await job_state.cancel(session, job_id)
    if result.outcome == "not_found":
        raise job_not_found(job_id)
    if result.outcome == "ended":
        raise Conflict(
            f"Training job '{job_id}' already ended ({result.status}).",
            details={"job_id": str(job_id), "status": result.status},
            code="job_already_ended",
        )
    if result.event is not None:
        after_commit.publish(result.event)
    named = (
        await session.execute(
            select(TrainingJob.skill_id, Skill.name)
            .join(Skill, Skill.id == TrainingJob.skill_id)
            .where(TrainingJob.id == job_id)
        )
    ).first()
    skill_id, skill_name = named if named is not None else (None, None)
    structlog.contextvars.bind_contextvars(job_id=str(job_id), skill_id=skill_id)
    if result.outcome == "cancelled":  # it never started: no worker will say so
        after_commit.call(
            lambda: log.info("job_cancelled", status="cancelled", skill_name=skill_name, before_start=True)
        )
    else:
        after_commit.call(lambda: log.info("job_cancel_requested"))
    return JobCancelOut(job_id=job_id, status=result.outcome)


async def stats(session: AsyncSession) -> StatsOut:
    """The spec's success metrics, computed from jobs and their error events."""
    counts = dict((await session.execute(select(TrainingJob.status, func.count()).group_by(TrainingJob.status))).all())
    completed = counts.get(JobStatus.COMPLETED.value, 0)
    failed = counts.get(JobStatus.FAILED.value, 0)
    mean_time, mean_cost = (
        await session.execute(
            select(func.avg(TrainingJob.training_time_seconds), func.avg(TrainingJob.cost_usd)).where(
                TrainingJob.status == JobStatus.COMPLETED.value
            )
        )
    ).one()
    error_rows = (
        await session.execute(
            select(TrainingLog.data["final"].astext, TrainingJob.status)
            .join(TrainingJob, TrainingJob.id == TrainingLog.job_id)
            .where(TrainingLog.event_type == "error")
        )
    ).all()
    total_errors = len(error_rows)
    recovered = sum(1 for final, status in error_rows if final == "false" and status == JobStatus.COMPLETED.value)
    return StatsOut(
        jobs={status: int(n) for status, n in counts.items()},
        training_success_rate=round(completed / (completed + failed), 4) if completed + failed else None,
        error_recovery_rate=round(recovered / total_errors, 4) if total_errors else None,
        errors_total=total_errors,
        errors_auto_recovered=recovered,
        mean_training_time_seconds=round(float(mean_time), 1) if mean_time is not None else None,
        mean_cost_usd=round(float(mean_cost), 4) if mean_cost is not None else None,
    )


async def diagnostics(session: AsyncSession, job_id: uuid.UUID) -> JobDiagnostics:
    job = await session.get(TrainingJob, job_id, options=[WITHOUT_DATASET])
    if job is None:
        raise job_not_found(job_id)
    events = await session.scalars(
        select(TrainingLog.data)
        .where(TrainingLog.job_id == job_id, TrainingLog.event_type == "error")
        .order_by(TrainingLog.seq)
    )
    return JobDiagnostics(
        job_id=job.id,
        status=job.status,
        error_message=job.error_message,
        error_details=job.error_details,
        recovery_attempts=list(job.recovery_attempts or []),
        error_events=list(events),
    )
