"""Export state: the one owner of every write to an export job's row and its event rows.

The same rules as `shared.db.job_state` for training jobs: each transition is one conditional
UPDATE fenced by the export id and the state its caller believes it is in (for a worker, its
lease: owner and attempt); the same UPDATE bumps the export's event counter, so an event row
exists only when the fence held and seqs stay gapless. A transition returns its event, or None
when the fence did not hold (the write is refused and logged). Times come from the database clock.

Lifecycle: `queued → running → completed | failed | cancelled`. An export is not retried: a worker
lost mid-export leaves it `running` until `reap_stale` fails it (`WORKER_LOST`); asking again is cheap.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.job_state import CancelResult, Lease, LeaseState
from shared.db.models import Export, ExportEvent, JobStatus

log = structlog.get_logger(__name__)


def arq_job_id(export_id: uuid.UUID | str, attempt: int) -> str:
    return f"export:{export_id}:{attempt}"


def _message(payload: dict[str, Any]) -> str | None:
    if payload.get("type") == "error":
        return str(payload.get("user_message") or payload.get("message"))
    if payload.get("type") == "progress":
        return f"{payload.get('stage', 'export')}: {payload.get('progress', 0):.0f}%"
    if payload.get("type") == "complete":
        return "Export complete"
    return str(payload["message"]) if payload.get("message") is not None else None


async def _write(
    session: AsyncSession,
    transition: str,
    export_id: uuid.UUID,
    fence: list[ColumnElement[bool]],
    values: dict[str, Any],
    payload: dict[str, Any] | None,
) -> dict[str, Any] | bool | None:
    """One fenced UPDATE plus its event row; the event (True when no payload), or None when refused."""
    if payload is not None:
        values = {**values, "event_seq": Export.event_seq + 1}
    row = (
        await session.execute(
            update(Export)
            .where(Export.id == export_id, *fence)
            .values(**values)
            .returning(Export.event_seq, func.statement_timestamp())
            .execution_options(synchronize_session=False)
        )
    ).one_or_none()
    if row is None:
        log.warning("export_write_refused", transition=transition, export_id=str(export_id))
        return None
    if payload is None:
        return True
    seq, now = row
    return _event_row(session, export_id, seq, now, payload)


def _event_row(
    session: AsyncSession, export_id: uuid.UUID, seq: int, now: datetime, payload: dict[str, Any]
) -> dict[str, Any]:
    event = {"job_id": str(export_id), "seq": seq, "ts": now.isoformat(), **payload}
    level = "error" if payload.get("type") == "error" else str(payload.get("level") or "info")
    session.add(
        ExportEvent(
            export_id=export_id,
            seq=seq,
            event_type=str(payload["type"]),
            timestamp=now,
            level=level,
            message=_message(payload),
            data=event,
        )
    )
    return event


def _event(written: dict[str, Any] | bool | None) -> dict[str, Any] | None:
    return written if isinstance(written, dict) else None


def _lease_fence(lease: Lease) -> list[ColumnElement[bool]]:
    return [
        Export.status == JobStatus.RUNNING.value,
        Export.lease_owner == lease.owner,
        Export.attempt == lease.attempt,
    ]


def _ended(status: JobStatus) -> dict[str, Any]:
    return {"status": status.value, "completed_at": func.statement_timestamp(), "lease_owner": None}


# -- API side ------------------------------------------------------------------------


async def start(session: AsyncSession, export: Export) -> dict[str, Any]:
    """A new export, queued with its first event; enqueue `export.arq_job_id` after the commit."""
    export.status = JobStatus.QUEUED.value
    export.attempt = 1
    session.add(export)
    await session.flush()
    export.arq_job_id = arq_job_id(export.id, 1)
    event = _event(
        await _write(
            session,
            "start",
            export.id,
            [Export.status == JobStatus.QUEUED.value],
            {"arq_job_id": export.arq_job_id},
            {"type": "status", "status": JobStatus.QUEUED.value, "message": f"Export to {export.format} queued"},
        )
    )
    assert event is not None  # inserted by this very transaction
    return event


async def cancel(session: AsyncSession, export_id: uuid.UUID) -> CancelResult:
    """queued → cancelled at once; running → cancel requested (its worker stops the converter)."""
    before = _event(
        await _write(
            session,
            "cancel",
            export_id,
            [Export.status == JobStatus.QUEUED.value],
            {**_ended(JobStatus.CANCELLED), "error_message": "The export was cancelled."},
            {"type": "status", "status": JobStatus.CANCELLED.value, "message": "Cancelled before it started"},
        )
    )
    if before is not None:
        return CancelResult("cancelled", JobStatus.CANCELLED.value, before)
    requested = _event(
        await _write(
            session,
            "cancel_request",
            export_id,
            [Export.status == JobStatus.RUNNING.value, Export.cancel_requested_at.is_(None)],
            {"cancel_requested_at": func.statement_timestamp()},
            {"type": "log", "level": "warning", "message": "Cancel requested"},
        )
    )
    if requested is not None:
        return CancelResult("cancelling", JobStatus.RUNNING.value, requested)
    status = await session.scalar(select(Export.status).where(Export.id == export_id))
    if status is None:
        return CancelResult("not_found", None)
    return CancelResult("cancelling" if status == JobStatus.RUNNING.value else "ended", status)


# -- worker side ---------------------------------------------------------------------


async def claim(session: AsyncSession, export_id: uuid.UUID, owner: str) -> tuple[Lease, Export, dict[str, Any]] | None:
    """queued → running under `owner`'s lease, with its first event; None when it is not queued."""
    export = await session.scalar(
        update(Export)
        .where(Export.id == export_id, Export.status == JobStatus.QUEUED.value)
        .values(
            status=JobStatus.RUNNING.value,
            lease_owner=owner,
            heartbeat_at=func.statement_timestamp(),
            started_at=func.statement_timestamp(),
        )
        .returning(Export)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    if export is None:
        return None
    lease = Lease(job_id=export.id, owner=owner, attempt=export.attempt)
    started = await emit(
        session,
        lease,
        {"type": "status", "status": JobStatus.RUNNING.value, "message": f"Exporting to {export.format}"},
    )
    assert started is not None  # same transaction as the claim
    return lease, export, started


async def look(session: AsyncSession, lease: Lease, *, beat: bool) -> LeaseState:
    """Whether the lease still holds (and whether a cancel is asked); `beat` also renews it."""
    query: Any
    if beat:
        query = (
            update(Export)
            .where(Export.id == lease.job_id, *_lease_fence(lease))
            .values(heartbeat_at=func.statement_timestamp())
            .returning(Export.cancel_requested_at)
            .execution_options(synchronize_session=False)
        )
    else:
        query = select(Export.cancel_requested_at).where(Export.id == lease.job_id, *_lease_fence(lease))
    row = (await session.execute(query)).one_or_none()
    if row is None:
        return "lost"
    return "held" if row[0] is None else "cancel_requested"


async def emit(session: AsyncSession, lease: Lease, payload: dict[str, Any], **values: Any) -> dict[str, Any] | None:
    """An event of a running export (progress, log), with the columns it implies."""
    if payload.get("type") == "progress":
        values = {"progress": payload.get("progress", 0.0), "stage": payload.get("stage"), **values}
    stamped = {**payload, "attempt": lease.attempt}
    return _event(await _write(session, "emit", lease.job_id, _lease_fence(lease), values, stamped))


async def complete(
    session: AsyncSession, lease: Lease, payload: dict[str, Any], **values: Any
) -> dict[str, Any] | None:
    """running → completed with its `complete` event (the files are in place before this commits)."""
    values = {**values, **_ended(JobStatus.COMPLETED), "progress": 100.0}
    stamped = {**payload, "attempt": lease.attempt}
    return _event(await _write(session, "complete", lease.job_id, _lease_fence(lease), values, stamped))


async def fail(session: AsyncSession, lease: Lease, payload: dict[str, Any], **values: Any) -> dict[str, Any] | None:
    """running → failed, with the final `error` event."""
    stamped = {**payload, "attempt": lease.attempt}
    return _event(
        await _write(
            session, "fail", lease.job_id, _lease_fence(lease), {**values, **_ended(JobStatus.FAILED)}, stamped
        )
    )


async def cancelled(
    session: AsyncSession, lease: Lease, payload: dict[str, Any], **values: Any
) -> dict[str, Any] | None:
    """running → cancelled, once the worker has stopped the converter and removed its staging files."""
    stamped = {**payload, "attempt": lease.attempt}
    values = {**values, **_ended(JobStatus.CANCELLED)}
    return _event(await _write(session, "cancelled", lease.job_id, _lease_fence(lease), values, stamped))


async def reap_stale(session: AsyncSession, stale_seconds: float) -> list[dict[str, Any]]:
    """Fail running exports whose heartbeat is older than `stale_seconds` (their worker is gone)."""
    rows = await session.execute(
        select(Export.id, Export.lease_owner, Export.attempt)
        .where(
            Export.status == JobStatus.RUNNING.value,
            Export.heartbeat_at < func.statement_timestamp() - func.make_interval(0, 0, 0, 0, 0, 0, stale_seconds),
        )
        .with_for_update(skip_locked=True)
    )
    events = []
    for export_id, owner, attempt in rows.all():
        message = "The worker running this export stopped answering."
        event = await fail(
            session,
            Lease(export_id, owner or "", attempt),
            {"type": "error", "category": "WORKER_LOST", "message": message, "user_message": message, "final": True},
            error_message=message,
            error_details={"category": "WORKER_LOST", "message": message},
        )
        if event is not None:
            events.append(event)
    return events


async def history(
    session: AsyncSession, export_id: uuid.UUID, after_seq: int = 0, limit: int | None = None
) -> list[dict[str, Any]]:
    """An export's stored events with seq > `after_seq`, in order (the first `limit` of them)."""
    query = (
        select(ExportEvent.data)
        .where(ExportEvent.export_id == export_id, ExportEvent.seq > after_seq)
        .order_by(ExportEvent.seq)
    )
    if limit is not None:
        query = query.limit(limit)
    return list(await session.scalars(query))
