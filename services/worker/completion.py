"""How an attempt ends: the adapter promoted with its version, or the failure or cancel recorded.

Each ending is one fenced `job_state` transition. Completion commits the version
bump, the adapter row (active unless the regression gate keeps it back: `regression_check`),
the job's completion and its `complete` event together, and
moves the adapter's files into place just before that commit (and back if it
fails), so rows and files never disagree. Files are removed only after the
transition took effect, and only this job's own.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.worker import metrics, store
from services.worker.context import WorkerContext
from services.worker.lease import Recorder, in_transaction, publish_quietly
from shared.db import job_state
from shared.db.job_state import LeaseLost
from shared.db.models import ACTIVE_JOB_STATUSES, Adapter, Skill, TrainingJob, TrainingLog
from shared.errors import CATALOGUE, ErrorCategory
from shared.rules import regression
from shared.rules.adapter_quality import quality_score
from shared.rules.devices import device_key
from shared.schemas.training import Hyperparameters, TrainingSpec
from shared.settings import Settings

log = structlog.get_logger(__name__)


def checkpoint_root(settings: Settings, skill_id: str, job_id: uuid.UUID | str) -> Path:
    """The job's checkpoints; each attempt writes its own `a<attempt>/` inside (services/gpu/checkpoints)."""
    return settings.adapters_dir / skill_id / ".checkpoints" / str(job_id)


def try_cost(ctx: WorkerContext, payload: dict[str, Any], wall_seconds: float) -> float:
    """USD one trainer run cost: the GPU time a billing backend reports (Modal), else wall time at the local price."""
    if getattr(ctx["backend"], "bills_gpu_time", False):
        return float(payload.get("cost_usd") or 0.0)
    return wall_seconds / 3600.0 * ctx["settings"].local_price_per_hour


def bill_run(ctx: WorkerContext, payload: dict[str, Any], wall_seconds: float) -> float:
    """`try_cost`, also counted in the GPU-seconds and cost metrics: call it once per trainer run."""
    cost = try_cost(ctx, payload, wall_seconds)
    billed_seconds = payload.get("gpu_seconds") if getattr(ctx["backend"], "bills_gpu_time", False) else wall_seconds
    metrics.run_billed(float(billed_seconds or 0.0), cost)
    return cost


async def _measurements(
    session: AsyncSession, job_id: uuid.UUID, job: TrainingJob, payload: dict[str, Any], wall_seconds: float
) -> dict[str, Any]:
    """What estimates calibrate on: tokens and seconds of the optimizer steps (the last
    progress event's running totals), the rest of the run's wall time as startup, and
    the time estimate's error against the run's wall time."""
    last = await session.scalar(
        select(TrainingLog.data)
        .where(TrainingLog.job_id == job_id, TrainingLog.event_type == "progress")
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
        "tokens_trained": tokens,
        "tokens_per_second": round(float(rate), 2) if rate else None,
        "startup_seconds": round(max(wall_seconds - float(step_seconds), 0.0), 2) if step_seconds else None,
        "estimate_error_pct": error,
    }


def _eval_metrics(payload: dict[str, Any]) -> dict[str, Any]:
    """Held-out loss before and after training and the kept step, when the trainer had enough examples to split."""
    keys = (
        "eval_loss_before",
        "eval_loss_after",
        "eval_examples",
        "improvement_pct",
        "best_step",
        "best_eval_loss",
        "last_eval_loss",
    )
    return {key: payload[key] for key in keys if payload.get(key) is not None}


def _fingerprint(base_model: str | None, dataset: dict[str, Any], hp: Hyperparameters) -> str | None:
    if not base_model or not isinstance(dataset.get("conversations"), list):
        return None
    return regression.held_out_fingerprint(
        base_model=base_model,
        system_prompt=str(dataset.get("system_prompt") or ""),
        conversations=dataset["conversations"],
        seed=hp.seed,
        max_seq_length=hp.max_seq_length,
    )


def _stored_hyperparameters(config: dict[str, Any]) -> Hyperparameters | None:
    """What a finished job trained with (after any recovery), as `attempt.build_spec` reads it."""
    try:
        return Hyperparameters.model_validate(config.get("effective_hyperparameters") or config.get("hyperparameters"))
    except ValueError:
        return None


async def regression_check(
    session: AsyncSession,
    settings: Settings,
    job: TrainingJob,
    spec: TrainingSpec,
    payload: dict[str, Any],
    version: int,
) -> dict[str, Any]:
    """Whether the new version is activated: not when its held-out loss is worse than the active
    version's on the same held-out examples (`FASTBRAIN_REGRESSION_GATE`). Call with the skill row locked.

    The answer goes into the `complete` event: `activated`, `not_activated_reason` (a sentence,
    when not) and `regression_check` (`outcome`: disabled, no_active_version, not_comparable,
    passed or regressed; `note` on why no comparison was made; the two losses and versions).
    """
    new_loss = payload.get("eval_loss_after")
    new_examples = payload.get("eval_examples")
    check: dict[str, Any] = {"eval_loss": new_loss, "eval_examples": new_examples}

    def verdict(outcome: str, note: str | None = None, reason: str | None = None) -> dict[str, Any]:
        return {
            "activated": reason is None,
            "not_activated_reason": reason,
            "regression_check": {**check, "outcome": outcome, "note": note},
        }

    if not settings.regression_gate:
        return verdict("disabled")
    active = (
        await session.execute(
            select(
                Adapter.id,
                Adapter.version,
                TrainingJob.id.label("job_id"),
                TrainingJob.config,
                TrainingJob.dataset,
                TrainingJob.eval_loss_after,
                TrainingJob.eval_examples,
            )
            .outerjoin(TrainingJob, TrainingJob.id == Adapter.training_job_id)
            .where(Adapter.skill_id == job.skill_id, Adapter.is_active)
        )
    ).first()
    if active is None:
        return verdict("no_active_version")
    check |= {
        "active_adapter_id": str(active.id),
        "active_version": active.version,
        "active_eval_loss": active.eval_loss_after,
    }
    if active.job_id is None:
        return verdict("not_comparable", f"v{active.version}'s training job no longer exists")
    if new_loss is None or active.eval_loss_after is None:
        return verdict("not_comparable", "a held-out loss is missing (under 10 examples hold none out)")
    active_hp = _stored_hyperparameters(active.config or {})
    ours = _fingerprint(spec.base_model, job.dataset or {}, spec.hyperparameters)
    theirs = (
        _fingerprint((active.config or {}).get("base_model"), active.dataset or {}, active_hp) if active_hp else None
    )
    held = len(regression.held_out_examples((job.dataset or {}).get("conversations") or [], spec.hyperparameters.seed))
    if ours is None or ours != theirs or not new_examples == active.eval_examples == held:
        return verdict(
            "not_comparable",
            f"not measured on the same held-out examples as v{active.version} "
            "(the examples, system prompt, base model or training settings changed)",
        )
    if not regression.is_regression(new_loss, active.eval_loss_after):
        return verdict("passed")
    reason = regression.not_activated_message(
        new_version=version,
        new_loss=float(new_loss),
        active_version=active.version,
        active_loss=float(active.eval_loss_after),
        examples=held,
    )
    return verdict("regressed", reason=reason)


async def complete(
    ctx: WorkerContext,
    recorder: Recorder,
    job: TrainingJob,
    spec: TrainingSpec,
    payload: dict[str, Any],
    wall_seconds: float,
    spent: float = 0.0,
) -> None:
    """Promote the staged adapter as the skill's next version and complete the job, or raise LeaseLost."""
    settings = ctx["settings"]
    lease = recorder.lease
    device = device_key(str(getattr(ctx["backend"], "device", "") or "cpu"))
    training_seconds = float(payload.get("training_time_seconds") or wall_seconds)
    cost = round(spent + bill_run(ctx, payload, wall_seconds), 4)  # failed tries are billed too
    staging = Path(spec.output_dir)
    hp = spec.hyperparameters

    async def promote(session: AsyncSession) -> tuple[list[dict[str, Any]], int, dict[str, Any]] | None:
        # The counter is bumped in this transaction (and the skill row locked with it):
        # versions are handed out once, whatever was deleted since.
        version = await session.scalar(
            update(Skill)
            .where(Skill.id == job.skill_id)
            .values(adapter_version_seq=Skill.adapter_version_seq + 1)
            .returning(Skill.adapter_version_seq)
        )
        if version is None:  # the skill (and with it the job) was deleted meanwhile
            return None
        target = store.version_dir(settings.adapters_dir, job.skill_id, version)
        gate = await regression_check(session, settings, job, spec, payload, version)
        if gate["activated"]:
            await session.execute(update(Adapter).where(Adapter.skill_id == job.skill_id).values(is_active=False))
        adapter = Adapter(
            skill_id=job.skill_id,
            training_job_id=job.id,
            version=version,
            is_active=gate["activated"],
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
        measured = {"device": device} | await _measurements(session, job.id, job, payload, wall_seconds)
        measured |= _eval_metrics(payload)
        quality = quality_score(payload.get("improvement_pct"), payload.get("eval_examples"), len(spec.conversations))
        events = []
        if not gate["activated"]:  # the sentence, in the log the Complete view shows, before the ending
            note = await job_state.emit(
                session, lease, {"type": "log", "level": "warning", "message": gate["not_activated_reason"]}
            )
            if note is None:
                return None
            events.append(note)
        event = await job_state.complete(
            session,
            lease,
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
                **gate,
                "quality": quality,
            },
            final_loss=payload.get("final_loss"),
            initial_loss=func.coalesce(TrainingJob.initial_loss, payload.get("initial_loss")),
            training_time_seconds=round(training_seconds),
            cost_usd=cost,
            evaluation=payload.get("evaluation"),
            **measured,
        )
        if event is None:
            return None  # rolled back: no version, no adapter row
        # Files move last, just before the commit; `undo` moves them back if it fails.
        store.promote(staging, target)
        promoted.append(target)
        return [*events, event], version, measured | {"activated": gate["activated"], "quality_stars": quality["stars"]}

    promoted: list[Path] = []

    def undo() -> None:
        while promoted:
            target = promoted.pop()
            if target.exists() and not staging.exists():
                store.promote(target, staging)

    try:
        result = await recorder.write("complete", promote, undo=undo)
    except LeaseLost:
        store.remove(staging)  # this attempt's own staging directory; nobody else writes there
        raise
    events, version, measured = result
    metrics.job_finished("completed", recorder.attempt_seconds(), events[-1])
    await publish_quietly(ctx, events)
    store.remove(checkpoint_root(settings, job.skill_id, job.id))
    log.info(
        "job_completed",
        status="completed",
        skill_name=recorder.skill_name,
        version=version,
        final_loss=payload.get("final_loss"),
        wall_seconds=round(wall_seconds, 1),
        cost_usd=cost,
        **measured,
    )
    await recorder.tracker.finish("completed", events[-1], Path(events[-1]["adapter_path"]))


def failure_details(payload: dict[str, Any], attempts: list[dict[str, Any]]) -> dict[str, Any]:
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


async def fail(
    ctx: WorkerContext,
    recorder: Recorder,
    job: TrainingJob,
    spec: TrainingSpec,
    payload: dict[str, Any],
    attempts: list[dict[str, Any]],
    cost: float | None = None,
) -> None:
    """The job's final failure; `cost`: what all its tries cost (None: leave the job's figure as it is)."""
    details = failure_details(payload, attempts)
    billed = {"cost_usd": round(cost, 4)} if cost is not None else {}
    event = await recorder.write(
        "fail",
        lambda session: job_state.fail(
            session,
            recorder.lease,
            {**payload, **details, "type": "error", "final": True, **billed},
            error_message=f"{details['user_message']} ({details['message']})",
            error_details=details,
            recovery_attempts=attempts,
            **billed,
        ),
    )
    metrics.job_finished("failed", recorder.attempt_seconds(), event)
    await publish_quietly(ctx, event)
    store.remove(Path(spec.output_dir))
    store.remove(checkpoint_root(ctx["settings"], job.skill_id, job.id))
    log.warning(  # the traceback reaches operators here and in the row, never clients (public_error_details)
        "job_failed",
        status="failed",
        skill_name=recorder.skill_name,
        category=details["category"],
        user_message=details["user_message"],
        message=payload.get("message"),
        exception_type=details["exception_type"],
        traceback_tail=details["traceback_tail"],
    )
    await recorder.tracker.finish("failed", event)


async def cancelled(ctx: WorkerContext, recorder: Recorder, job: TrainingJob, spec: TrainingSpec) -> None:
    """Cancelled: no adapter, no partial files, a terminal `status` event."""
    info = CATALOGUE[ErrorCategory.CANCELLED]
    event = await recorder.write(
        "cancelled",
        lambda session: job_state.cancelled(
            session,
            recorder.lease,
            {"type": "status", "status": "cancelled", "message": "Training cancelled"},
            error_message=info.user_message,
            error_details={
                "category": ErrorCategory.CANCELLED.value,
                "severity": info.severity.value,
                "message": "Cancelled by request",
                "user_message": info.user_message,
                "suggestions": list(info.suggestions),
                "attempts": [],
            },
        ),
    )
    metrics.job_finished("cancelled", recorder.attempt_seconds(), event)
    await publish_quietly(ctx, event)
    store.remove(Path(spec.output_dir))
    store.remove(checkpoint_root(ctx["settings"], job.skill_id, job.id))
    log.info("job_cancelled", status="cancelled", skill_name=recorder.skill_name)
    await recorder.tracker.finish("cancelled", event)


async def still_running(ctx: WorkerContext, job_id: uuid.UUID) -> bool:
    """Whether the job is still in flight (under any attempt): its checkpoints may still be needed."""

    async def status(session: AsyncSession) -> str | None:
        return await session.scalar(select(TrainingJob.status).where(TrainingJob.id == job_id))

    return await in_transaction(ctx, status) in {s.value for s in ACTIVE_JOB_STATUSES}
