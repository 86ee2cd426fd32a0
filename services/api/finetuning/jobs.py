"""Fine-tuning jobs: each one is a new skill trained by a normal training job.

`create` makes the skill from the training file's conversations and starts its training with
`services.api.training.service.start_training`, in the request's one transaction: the queue,
the worker, events, recovery, the per-workspace limits and the GPU budget all apply as to any
other training, and a refusal anywhere leaves nothing behind (no skill, no job, no row here).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Select, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from services.api.deps import AfterCommit
from services.api.errors import ApiError, NotFound, Unprocessable
from services.api.finetuning import files, ids, mapping
from services.api.finetuning.schemas import (
    FineTuningJob,
    FineTuningJobCheckpointList,
    FineTuningJobCreate,
    FineTuningJobEventList,
    FineTuningJobList,
)
from services.api.skills.validation import MIN_EXAMPLES
from services.api.training import service as training
from services.gpu.catalog import local_model_ids, model_ids
from shared.db import job_state
from shared.db.models import Adapter, JobStatus, Skill, TrainingJob, TrainingLog
from shared.db.models import FineTuningJob as FineTuningRow
from shared.settings import Settings

# Which request parameter a refusal of `start_training` is about.
PARAMS = {"invalid_base_model": "model", "invalid_gpu_type": None}


def _job_not_found(job_id: str) -> NotFound:
    return NotFound(
        f"No such fine-tuning job: {job_id}", details={"param": "fine_tuning_job_id"}, code="fine_tuning_job_not_found"
    )


def _check_model(model: str, backend: str) -> None:
    allowed = model_ids() if backend == "modal" else local_model_ids()
    if model not in allowed:
        raise ApiError(
            f"The model '{model}' cannot be fine-tuned here; base models: {', '.join(allowed)}. "
            "Continuing from a fine-tuned model is not supported: start from its base model.",
            details={"param": "model"},
            code="model_not_available",
        )


def _bad_request(exc: Unprocessable) -> ApiError:
    """A refusal of the training service (422 on /api) as OpenAI's 400, naming the parameter."""
    param = PARAMS.get(exc.code, "training_file")
    return ApiError(exc.message, details={"param": param}, suggestions=exc.suggestions, code=exc.code)


def _joined() -> Select[FineTuningRow, TrainingJob, int]:
    return (
        select(FineTuningRow, TrainingJob, Adapter.version)
        .join(TrainingJob, TrainingJob.id == FineTuningRow.id)
        .outerjoin(Adapter, Adapter.training_job_id == TrainingJob.id)
        .options(training.WITHOUT_DATASET)
        .execution_options(populate_existing=True)  # the job row as the fenced UPDATEs left it
    )


async def _key(session: AsyncSession, job_id: str) -> uuid.UUID:
    """The job's id, when it is a fine-tuning job of the workspace; else 404."""
    key = ids.parse_job(job_id)
    if key is None or await session.scalar(select(FineTuningRow.id).where(FineTuningRow.id == key)) is None:
        raise _job_not_found(job_id)
    return key


async def retrieve(session: AsyncSession, job_id: str) -> FineTuningJob:
    key = await _key(session, job_id)
    row, job, version = (await session.execute(_joined().where(FineTuningRow.id == key))).one()
    return mapping.job_object(row, job, version)


async def create(
    session: AsyncSession, after_commit: AfterCommit, settings: Settings, body: FineTuningJobCreate
) -> FineTuningJob:
    _check_model(body.model, settings.gpu_backend)
    source = await files.get_row(session, body.training_file, param="training_file", full=True)
    if body.validation_file is not None:
        await files.get_row(session, body.validation_file, param="validation_file")
    count = source.example_count
    if count < MIN_EXAMPLES:
        raise ApiError(
            f"training_file {body.training_file} has {count} conversation{'s' if count != 1 else ''}; "
            f"fine-tuning needs at least {MIN_EXAMPLES}.",
            details={"param": "training_file"},
            code="too_few_examples",
        )
    if count > settings.max_examples_per_skill:
        raise ApiError(
            f"training_file {body.training_file} has {count} conversations; a skill holds at most "
            f"{settings.max_examples_per_skill} (FASTBRAIN_MAX_EXAMPLES_PER_SKILL).",
            details={"param": "training_file"},
            code="too_many_examples",
        )
    config = mapping.training_config(body.model, body.requested, body.seed, count)
    skill = Skill(
        id=mapping.skill_id_for(body.suffix, body.model),
        name=body.suffix or f"Fine-tune of {body.model}",
        system_prompt=source.system_prompt or "",  # none in the file: trained and served without one
        description=f"Made by POST /v1/fine_tuning/jobs from {body.training_file} ({source.filename}).",
        training_data=list(source.conversations),
    )
    session.add(skill)
    await session.flush()
    try:
        accepted = await training.start_training(session, after_commit, settings, skill.id, config)
    except Unprocessable as exc:
        raise _bad_request(exc) from exc
    resolved = config.resolve(count)
    session.add(
        FineTuningRow(
            id=accepted.job_id,
            model=body.model,
            training_file=body.training_file,
            validation_file=body.validation_file,
            suffix=body.suffix,
            seed=resolved.seed,
            hyperparameters=mapping.resolved_hyperparameters(resolved, count),
            user_metadata=body.metadata,
        )
    )
    await session.flush()
    message = f"Fine-tuning job {ids.job_id(accepted.job_id)}: {count} conversations of {body.training_file} "
    message += f"train skill '{skill.id}' on {body.model}."
    if body.validation_file is not None:
        message += (
            f" validation_file {body.validation_file} is recorded, not trained on; the held-out loss is measured "
            "on the trainer's own split of training_file."
        )
    note = {"type": "log", "level": "info", "message": message}
    event = await job_state.append(session, accepted.job_id, note, status=JobStatus.QUEUED)
    if event is not None:
        after_commit.publish(event)
    return await retrieve(session, ids.job_id(accepted.job_id))


async def listing(session: AsyncSession, *, after: str | None, limit: int) -> FineTuningJobList:
    """Newest first; `after` is the last id of the previous page."""
    query = _joined()
    key = tuple_(FineTuningRow.created_at, FineTuningRow.id)
    if after is not None:
        cursor_id = ids.parse_job(after)
        cursor = None
        if cursor_id is not None:
            cursor = (
                await session.execute(
                    select(FineTuningRow.created_at, FineTuningRow.id).where(FineTuningRow.id == cursor_id)
                )
            ).one_or_none()
        if cursor is None:
            raise files.bad_cursor(after, "a fine-tuning job")
        query = query.where(key < tuple_(*cursor))
    query = query.order_by(FineTuningRow.created_at.desc(), FineTuningRow.id.desc()).limit(limit + 1)
    rows = (await session.execute(query)).all()
    return FineTuningJobList(
        data=[mapping.job_object(row, job, version) for row, job, version in rows[:limit]], has_more=len(rows) > limit
    )


async def cancel(session: AsyncSession, after_commit: AfterCommit, job_id: str) -> FineTuningJob:
    """A queued job is cancelled at once; a running one is asked to stop and says `running` until its
    worker has stopped the trainer (within seconds). An ended job is a 409."""
    key = await _key(session, job_id)
    await training.cancel(session, after_commit, key)
    return await retrieve(session, job_id)


async def events(session: AsyncSession, job_id: str, *, after: str | None, limit: int) -> FineTuningJobEventList:
    """Newest first, as OpenAI pages them; `after` is the last event id of the previous page (older ones follow)."""
    key = await _key(session, job_id)
    query = select(TrainingLog).where(TrainingLog.job_id == key)
    if after is not None:
        seq = ids.parse_event(after, key)
        if seq is None:
            raise files.bad_cursor(after, "an event")
        query = query.where(TrainingLog.seq < seq)
    rows = list(await session.scalars(query.order_by(TrainingLog.seq.desc()).limit(limit + 1)))
    return FineTuningJobEventList(data=[mapping.event_object(log) for log in rows[:limit]], has_more=len(rows) > limit)


async def checkpoints(
    session: AsyncSession, job_id: str, *, after: str | None, limit: int
) -> FineTuningJobCheckpointList:
    """The job's adapter, once it succeeded (one checkpoint: the weights it kept), newest first."""
    key = await _key(session, job_id)
    job = await training.get_job(session, key)
    adapters = list(
        await session.scalars(
            select(Adapter).where(Adapter.training_job_id == key).order_by(Adapter.created_at.desc(), Adapter.id.desc())
        )
    )
    items: list[Any] = [mapping.checkpoint_object(job, adapter) for adapter in adapters]
    if after is not None:
        position = next((n for n, item in enumerate(items) if item.id == after), None)
        if position is None:
            raise files.bad_cursor(after, "a checkpoint")
        items = items[position + 1 :]
    data = items[:limit]
    return FineTuningJobCheckpointList(
        data=data,
        has_more=len(items) > limit,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )
