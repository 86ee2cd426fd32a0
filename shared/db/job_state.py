"""Job state: the one owner of every write to a training job's row and its event rows.

Each transition (start, claim, heartbeat, emit, requeue, complete, fail, cancel,
reap) is one conditional UPDATE fenced by the job id and the state its caller
believes the job is in: the expected status and, for a worker, its lease (owner
and attempt). The same UPDATE bumps the job's event counter, so an event row is
written only when the fence holds, and seqs stay gapless (the row lock serialises
writers of one job). A transition returns what it wrote, or None when the fence
did not hold: that write is refused and logged, never applied.

Every time (heartbeats, staleness, event timestamps, completion) comes from the
database clock, so workers with skewed clocks agree.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import structlog
from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db import spend
from shared.db.models import JobStatus, TrainingJob, TrainingLog
from shared.rules.tasks import training_job_id

log = structlog.get_logger(__name__)

LeaseState = Literal["held", "cancel_requested", "lost"]


@dataclass(frozen=True)
class Lease:
    """What a worker holds while it runs one attempt of a job."""

    job_id: uuid.UUID
    owner: str
    attempt: int


class LeaseLost(Exception):
    """A fenced write was refused: another attempt owns the job now, or it ended."""

    def __init__(self, lease: Lease, transition: str) -> None:
        super().__init__(f"lease of job {lease.job_id} (attempt {lease.attempt}) lost at {transition}")
        self.lease = lease
        self.transition = transition


@dataclass
class Written:
    """A transition that took effect: its event (if any) and the job's attempt after it."""

    event: dict[str, Any] | None
    attempt: int
    arq_job_id: str | None = None
    # Every event the transition wrote, in seq order (`event` is the last of them).
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Reaped:
    """What the reaper did to one stale job."""

    job_id: uuid.UUID
    events: list[dict[str, Any]] = field(default_factory=list)
    requeued_as: str | None = None  # the new arq job id; None when the job ended


# -- the one writer ------------------------------------------------------------------


def _level(payload: dict[str, Any]) -> str:
    if payload.get("type") == "error":
        return "error"
    return str(payload.get("level") or "info")


def _message(payload: dict[str, Any]) -> str | None:
    kind = payload.get("type")
    if kind == "progress":
        loss = payload.get("loss")
        loss_text = f": loss={loss:.3f}" if isinstance(loss, int | float) else ""
        return f"Step {payload.get('step')}/{payload.get('total_steps')}{loss_text}"
    if kind == "error":
        return str(payload.get("user_message") or payload.get("message"))
    if kind == "status":
        return str(payload.get("message") or f"Status: {payload.get('status')}")
    if kind == "complete":
        return "Training complete"
    return str(payload.get("message")) if payload.get("message") is not None else None


async def _write(
    session: AsyncSession,
    transition: str,
    job_id: uuid.UUID,
    fence: list[ColumnElement[bool]],
    values: dict[str, Any],
    payload: dict[str, Any] | None,
) -> Written | None:
    """One fenced UPDATE of the job row, plus its event row when `payload` is given."""
    if payload is not None:
        values = {**values, "event_seq": TrainingJob.event_seq + 1}
    statement = (
        update(TrainingJob)
        .where(TrainingJob.id == job_id, *fence)
        .values(**values)
        .returning(TrainingJob.event_seq, TrainingJob.attempt, TrainingJob.arq_job_id, func.statement_timestamp())
        .execution_options(synchronize_session=False)
    )
    row = (await session.execute(statement)).one_or_none()
    if row is None:
        log.warning("job_write_refused", transition=transition, job_id=str(job_id))
        return None
    seq, attempt, arq_job_id, now = row
    if isinstance(values.get("cost_usd"), int | float):
        await spend.record(session, job_id, values["cost_usd"])  # the workspace's monthly GPU spend
    event = None
    if payload is not None:
        event = _event_row(session, job_id, seq, now, payload)
    return Written(event=event, attempt=attempt, arq_job_id=arq_job_id, events=[event] if event else [])


def _event_row(
    session: AsyncSession, job_id: uuid.UUID, seq: int, now: datetime, payload: dict[str, Any]
) -> dict[str, Any]:
    event = {"job_id": str(job_id), "seq": seq, "ts": now.isoformat(), **payload}
    session.add(
        TrainingLog(
            job_id=job_id,
            seq=seq,
            event_type=str(payload["type"]),
            timestamp=now,
            level=_level(payload),
            message=_message(payload),
            data=event,
        )
    )
    return event


def _lease_fence(lease: Lease) -> list[ColumnElement[bool]]:
    return [
        TrainingJob.status == JobStatus.RUNNING.value,
        TrainingJob.lease_owner == lease.owner,
        TrainingJob.attempt == lease.attempt,
    ]


def _stamped(payload: dict[str, Any], lease: Lease) -> dict[str, Any]:
    # Every worker-written event names its attempt: a reader can prove that an
    # attempt wrote nothing after it lost its lease.
    return {**payload, "attempt": lease.attempt}


def _ended(status: JobStatus) -> dict[str, Any]:
    return {"status": status.value, "completed_at": func.statement_timestamp(), "lease_owner": None}


async def append(
    session: AsyncSession, job_id: uuid.UUID, payload: dict[str, Any], *, status: JobStatus | None = None
) -> dict[str, Any] | None:
    """An event that changes no state (a note on a job), fenced by its status when one is given."""
    fence = [TrainingJob.status == status.value] if status is not None else []
    written = await _write(session, "append", job_id, fence, {}, payload)
    return written.event if written else None


# -- API side ------------------------------------------------------------------------


async def start(session: AsyncSession, job: TrainingJob, message: str) -> Written:
    """A new job, queued with its first event and its first arq job id.

    Raises the database's IntegrityError when the skill already has an active job
    (the partial unique index), so concurrent starts cannot both win.
    """
    job.status = JobStatus.QUEUED.value
    job.attempt = 1
    session.add(job)
    await session.flush()
    arq_job_id = training_job_id(job.id, 1)
    written = await _write(
        session,
        "start",
        job.id,
        [TrainingJob.status == JobStatus.QUEUED.value],
        {"arq_job_id": arq_job_id},
        {"type": "status", "status": JobStatus.QUEUED.value, "message": message},
    )
    assert written is not None  # the row was inserted by this very transaction
    written.arq_job_id = arq_job_id
    return written


@dataclass(frozen=True)
class CancelResult:
    """`cancelled` (it never started), `cancelling` (its worker will stop it), `ended` or `not_found`."""

    outcome: Literal["cancelled", "cancelling", "ended", "not_found"]
    status: str | None
    event: dict[str, Any] | None = None


async def cancel(session: AsyncSession, job_id: uuid.UUID) -> CancelResult:
    """queued → cancelled at once; running → cancel requested (its worker stops it)."""
    before_start = await _write(
        session,
        "cancel",
        job_id,
        [TrainingJob.status.in_((JobStatus.PENDING.value, JobStatus.QUEUED.value))],
        {
            **_ended(JobStatus.CANCELLED),
            "error_message": "Training was cancelled.",
            "error_details": {"category": "CANCELLED", "message": "Cancelled before it started", "attempts": []},
        },
        {"type": "status", "status": JobStatus.CANCELLED.value, "message": "Cancelled before it started"},
    )
    if before_start is not None:
        return CancelResult("cancelled", JobStatus.CANCELLED.value, before_start.event)
    requested = await _write(
        session,
        "cancel_request",
        job_id,
        [TrainingJob.status == JobStatus.RUNNING.value, TrainingJob.cancel_requested_at.is_(None)],
        {"cancel_requested_at": func.statement_timestamp()},
        {"type": "log", "level": "warning", "message": "Cancel requested"},
    )
    if requested is not None:
        return CancelResult("cancelling", JobStatus.RUNNING.value, requested.event)
    status = await session.scalar(select(TrainingJob.status).where(TrainingJob.id == job_id))
    if status is None:
        return CancelResult("not_found", None)
    if status == JobStatus.RUNNING.value:  # asked before: nothing more to write
        return CancelResult("cancelling", status)
    return CancelResult("ended", status)


# -- worker side ---------------------------------------------------------------------


async def claim(
    session: AsyncSession, job_id: uuid.UUID, owner: str
) -> tuple[Lease, TrainingJob, dict[str, Any]] | None:
    """queued → running under `owner`'s lease, with the attempt's first event; None if not queued."""
    job = await session.scalar(
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.status == JobStatus.QUEUED.value)
        .values(
            status=JobStatus.RUNNING.value,
            lease_owner=owner,
            heartbeat_at=func.statement_timestamp(),
            started_at=func.coalesce(TrainingJob.started_at, func.statement_timestamp()),
        )
        .returning(TrainingJob)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    if job is None:
        return None
    lease = Lease(job_id=job.id, owner=owner, attempt=job.attempt)
    started = await emit(
        session,
        lease,
        {"type": "status", "status": JobStatus.RUNNING.value, "message": f"Training started (attempt {job.attempt})"},
    )
    assert started is not None  # same transaction as the claim
    return lease, job, started


async def look(session: AsyncSession, lease: Lease, *, beat: bool) -> LeaseState:
    """Whether the lease still holds (and whether a cancel is asked); `beat` also renews it."""
    query: Any
    if beat:
        query = (
            update(TrainingJob)
            .where(TrainingJob.id == lease.job_id, *_lease_fence(lease))
            .values(heartbeat_at=func.statement_timestamp())
            .returning(TrainingJob.cancel_requested_at)
            .execution_options(synchronize_session=False)
        )
    else:
        query = select(TrainingJob.cancel_requested_at).where(TrainingJob.id == lease.job_id, *_lease_fence(lease))
    row = (await session.execute(query)).one_or_none()
    if row is None:
        return "lost"
    return "held" if row[0] is None else "cancel_requested"


def progress_values(payload: dict[str, Any]) -> dict[str, Any]:
    """The job columns a `progress` event updates."""
    eta = payload.get("eta_seconds")
    values: dict[str, Any] = {
        "progress": payload.get("progress", 0.0),
        "current_step": payload.get("step", 0),
        "total_steps": payload.get("total_steps"),
        "current_epoch": payload.get("epoch", 0.0),
        "current_loss": payload.get("loss"),
        "eta_seconds": eta,
    }
    if isinstance(eta, int | float):
        values["estimated_completion"] = func.statement_timestamp() + func.make_interval(0, 0, 0, 0, 0, 0, float(eta))
    if payload.get("step") == 1 and payload.get("loss") is not None:
        values["initial_loss"] = payload["loss"]
    return values


async def emit(session: AsyncSession, lease: Lease, payload: dict[str, Any], **values: Any) -> dict[str, Any] | None:
    """An event of a running attempt (progress, log, a recovered error), with the job columns it implies."""
    if payload.get("type") == "progress":
        values = {**progress_values(payload), **values}
    written = await _write(session, "emit", lease.job_id, _lease_fence(lease), values, _stamped(payload, lease))
    return written.event if written else None


async def requeue(
    session: AsyncSession,
    lease: Lease,
    message: str,
    *,
    events: tuple[dict[str, Any], ...] = (),
    **values: Any,
) -> Written | None:
    """running → queued with attempt + 1 and a fresh arq job id; `events` are written first."""
    written_events = []
    for payload in events:
        event = await emit(session, lease, payload)
        if event is None:
            return None
        written_events.append(event)
    arq_job_id = training_job_id(lease.job_id, lease.attempt + 1)
    written = await _write(
        session,
        "requeue",
        lease.job_id,
        _lease_fence(lease),
        {
            **values,
            "status": JobStatus.QUEUED.value,
            "lease_owner": None,
            "attempt": lease.attempt + 1,
            "arq_job_id": arq_job_id,
        },
        _stamped({"type": "status", "status": JobStatus.QUEUED.value, "message": message}, lease),
    )
    if written is None:
        return None
    written.arq_job_id = arq_job_id
    written.events = [*written_events, *written.events]
    return written


async def complete(
    session: AsyncSession, lease: Lease, payload: dict[str, Any], **values: Any
) -> dict[str, Any] | None:
    """running → completed, with the `complete` event (commit it with the adapter row)."""
    values = {**values, **_ended(JobStatus.COMPLETED), "progress": 100.0, "eta_seconds": 0}
    written = await _write(session, "complete", lease.job_id, _lease_fence(lease), values, _stamped(payload, lease))
    return written.event if written else None


async def fail(session: AsyncSession, lease: Lease, payload: dict[str, Any], **values: Any) -> dict[str, Any] | None:
    """running → failed, with the final `error` event."""
    values = {**values, **_ended(JobStatus.FAILED)}
    written = await _write(session, "fail", lease.job_id, _lease_fence(lease), values, _stamped(payload, lease))
    return written.event if written else None


async def cancelled(
    session: AsyncSession, lease: Lease, payload: dict[str, Any], **values: Any
) -> dict[str, Any] | None:
    """running → cancelled, once the worker has stopped the trainer."""
    values = {**values, **_ended(JobStatus.CANCELLED), "eta_seconds": None}
    written = await _write(session, "cancelled", lease.job_id, _lease_fence(lease), values, _stamped(payload, lease))
    return written.event if written else None


# -- the reaper ----------------------------------------------------------------------


@dataclass(frozen=True)
class StaleJob:
    """A running job whose heartbeat is older than the threshold, on the database clock."""

    lease: Lease
    skill_id: str
    silent_seconds: float
    max_attempts: int
    cancel_requested: bool
    recovery_attempts: list[Any]


async def stale_jobs(session: AsyncSession, stale_seconds: float) -> list[StaleJob]:
    """Running jobs whose heartbeat is older than `stale_seconds`, locked (SKIP LOCKED) for this transaction."""
    silent = func.extract("epoch", func.statement_timestamp() - TrainingJob.heartbeat_at)
    rows = await session.execute(
        select(
            TrainingJob.id,
            TrainingJob.skill_id,
            TrainingJob.lease_owner,
            TrainingJob.attempt,
            TrainingJob.max_attempts,
            TrainingJob.cancel_requested_at,
            TrainingJob.recovery_attempts,
            silent.label("silent"),
        )
        .where(
            TrainingJob.status == JobStatus.RUNNING.value,
            TrainingJob.heartbeat_at < func.statement_timestamp() - func.make_interval(0, 0, 0, 0, 0, 0, stale_seconds),
        )
        .with_for_update(skip_locked=True, of=TrainingJob)
    )
    return [
        StaleJob(
            lease=Lease(job_id=row.id, owner=row.lease_owner or "", attempt=row.attempt),
            skill_id=row.skill_id,
            silent_seconds=float(row.silent or 0.0),
            max_attempts=row.max_attempts,
            cancel_requested=row.cancel_requested_at is not None,
            recovery_attempts=list(row.recovery_attempts or []),
        )
        for row in rows.all()
    ]


async def reap(session: AsyncSession, stale: StaleJob, history: list[Any], details: dict[str, Any]) -> Reaped:
    """Take a stale job from its silent worker: requeue it, or end it (cancel asked, attempts used up).

    Fenced by the lease the reaper saw, so a worker that came back and renewed it in
    the meantime keeps its job.
    """
    lease = stale.lease
    base = {"type": "error", "category": details["category"], "message": details["message"]}
    reaped = Reaped(job_id=lease.job_id)
    if stale.cancel_requested or lease.attempt >= stale.max_attempts:
        status = JobStatus.CANCELLED if stale.cancel_requested else JobStatus.FAILED
        written = await _write(
            session,
            "reap_end",
            lease.job_id,
            _lease_fence(lease),
            {
                **_ended(status),
                "error_message": f"{details['user_message']} ({details['message']})",
                "error_details": details,
                "recovery_attempts": history,
            },
            _stamped({**base, **details, "final": True}, lease),
        )
        if written is not None and written.event is not None:
            reaped.events.append(written.event)
        return reaped
    recovered = {**base, "final": False, "recovery": f"Requeued: {history[-1]['message']}", "attempts": history}
    requeued = await requeue(
        session, lease, f"Requeued: {history[-1]['message']}", events=(recovered,), recovery_attempts=history
    )
    if requeued is not None:
        reaped.events = requeued.events
        reaped.requeued_as = requeued.arq_job_id
    return reaped
