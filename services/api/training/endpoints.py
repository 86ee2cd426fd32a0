"""Training endpoints: start a run, read its status, list history, replay events."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, status

from services.api.auth.access import needs
from services.api.deps import AfterCommitDep, SessionDep, SettingsDep
from services.api.training import service
from shared.db.keys import Scope
from shared.db.models import JobStatus
from shared.events import MAX_SEQ, history
from shared.schemas.events import public_event
from shared.schemas.jobs import (
    EstimateOut,
    EstimateRequest,
    EventPage,
    JobCancelOut,
    JobDiagnostics,
    JobList,
    JobStatusOut,
    StatsOut,
    TrainAccepted,
)
from shared.schemas.training import TrainRequest

router = APIRouter(prefix="/api", tags=["training"])
# PostgreSQL's OFFSET is a bigint: a larger one is a database error, not an empty page.
MAX_OFFSET = 2**63 - 1


@router.post(
    "/train-skill/{skill_id}",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Start training a skill",
    responses={409: {"description": "The skill already has a training in progress."}},
)
async def train_skill(
    skill_id: str,
    session: SessionDep,
    settings: SettingsDep,
    after_commit: AfterCommitDep,
    body: Annotated[TrainRequest | None, Body()] = None,
) -> TrainAccepted:
    """Queue a training run. `config.preset` (quick, standard, deep, custom) sets the
    hyperparameters; any field given next to it overrides the preset's value."""
    request = body or TrainRequest()
    return await service.start_training(session, after_commit, settings, skill_id, request.config)


@router.post(
    "/skills/{skill_id}/estimate",
    summary="Estimate a training run's time and cost",
    openapi_extra=needs(Scope.READ),  # it changes nothing
    responses={404: {"description": "No such skill."}, 422: {"description": "Unknown preset, model, backend or GPU."}},
)
async def estimate_training(
    skill_id: str,
    session: SessionDep,
    settings: SettingsDep,
    body: Annotated[EstimateRequest | None, Body()] = None,
) -> EstimateOut:
    """Minutes and USD before training: the skill's tokens x epochs / the measured throughput of
    that base model on that device (the median of its last 20 completed jobs, else a seeded
    figure), plus startup overhead, times the device's configured price. POST /api/train-skill
    returns the same estimate and stores it on the job."""
    return await service.estimate_skill(session, settings, skill_id, body or EstimateRequest())


@router.get("/training-status/{job_id}", summary="Status of a training job")
async def training_status(
    job_id: uuid.UUID,
    session: SessionDep,
    metrics_limit: Annotated[
        int, Query(ge=0, le=10_000, description="How many of the latest metrics points to send (0: none).")
    ] = service.DEFAULT_METRICS_LIMIT,
    metrics: Annotated[
        Literal["latest", "all"], Query(description="`all`: the full metrics history, ignoring `metrics_limit`.")
    ] = "latest",
) -> JobStatusOut:
    """Progress, losses, timing, cost, errors and the per-step metrics history.

    `metrics_history` holds the **latest** `metrics_limit` progress points (default 200),
    oldest first; `metrics_total` says how many the job has. Ask for `metrics=all` to get
    every point, or page through all events with `GET /api/training-jobs/{job_id}/events`."""
    limit = None if metrics == "all" else metrics_limit
    return await service.job_status(session, job_id, metrics_limit=limit)


@router.get("/training-jobs", summary="Training history, newest first")
async def training_jobs(
    session: SessionDep,
    skill_id: str | None = None,
    status: Annotated[JobStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> JobList:
    jobs, total = await service.list_jobs(
        session, skill_id=skill_id, status=status.value if status else None, limit=limit, offset=offset
    )
    return JobList(jobs=jobs, total=total)


@router.get("/training-jobs/{job_id}/events", summary="A job's stored events (the stream's history), paged")
async def training_events(
    job_id: uuid.UUID,
    session: SessionDep,
    after_seq: Annotated[int, Query(ge=0, le=MAX_SEQ, description="Send events with a seq above this one.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many events.")] = 500,
) -> EventPage:
    """The same events the WebSocket sends, in seq order, for clients that poll instead
    of stream: up to `limit` events with `seq > after_seq`. Ask again with
    `after_seq=next_after_seq` while `has_more` is true (or, polling a running job,
    until its terminal event arrives)."""
    await service.get_job(session, job_id)
    page = await history(session, job_id, after_seq, limit=limit + 1)
    events = [public_event(event) for event in page[:limit]]  # as the WebSocket sends them: no tracebacks
    return EventPage(
        job_id=job_id,
        events=events,
        next_after_seq=events[-1]["seq"] if events else after_seq,
        has_more=len(page) > limit,
    )


@router.post(
    "/training-jobs/{job_id}/cancel",
    summary="Cancel a queued or running job",
    responses={409: {"description": "The job already ended."}},
)
async def cancel_job(job_id: uuid.UUID, session: SessionDep, after_commit: AfterCommitDep) -> JobCancelOut:
    """A queued job is cancelled at once and never starts. A running job's trainer
    is stopped within seconds; the stream then ends with a `cancelled` status,
    partial files are removed and no adapter is created."""
    return await service.cancel(session, after_commit, job_id)


@router.get(
    "/training-jobs/{job_id}/diagnostics",
    summary="A job's failure as stored: tracebacks and stderr tails included (admin)",
    openapi_extra=needs(Scope.ADMIN),
)
async def job_diagnostics(job_id: uuid.UUID, session: SessionDep) -> JobDiagnostics:
    """What the other endpoints and the stream leave out (`traceback_tail`,
    `exception_type`, the trainer's stderr): the job's `error_details`, its recovery
    attempts and its error events, unfiltered. Needs a key with the `admin` scope."""
    return await service.diagnostics(session, job_id)


@router.get("/stats", summary="Success and recovery figures")
async def stats(session: SessionDep) -> StatsOut:
    """Training success rate, error recovery rate (auto-recovered / all errors) and
    mean training time, as in the spec's success metrics."""
    return await service.stats(session)
