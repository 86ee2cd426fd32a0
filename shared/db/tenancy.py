"""Workspace scoping: the one place that keeps a workspace's rows to itself.

A *scoped* session (every API request gets one, `scoped_sessionmaker`) carries the
caller's workspace in `session.info`. Every ORM SELECT, UPDATE and DELETE it runs
gets the workspace's criteria added to each tenant table it touches (SQLAlchemy's
`with_loader_criteria`, the documented way to do global filters), and every skill it
inserts is stamped with the workspace. A route therefore cannot forget the check: a
row of another workspace is simply not found (404), and a scoped session used before
its workspace is known raises instead of reading everything.

Jobs, adapters, exports and events belong to a workspace through their skill (skill ids are
unique across the installation), so their criteria are sub-selects on `fb_skills`.
Files and fine-tuning jobs of the OpenAI-compatible API carry their workspace, stamped
on insert as a skill's is.
Unscoped sessions are the worker's and the system's (the event hub, migrations, the
CLI): they act on ids the API has already checked. A deliberate cross-workspace read
in a scoped session (estimate calibration pools every workspace's timings) says so
with `.execution_options(all_workspaces=True)`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, event, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria

from shared.db.models import (
    Adapter,
    ApiKey,
    Export,
    ExportEvent,
    FineTuningJob,
    GpuSpend,
    Skill,
    TrainingJob,
    TrainingLog,
    UploadedFile,
)

SCOPED = "fastbrain_scoped"
WORKSPACE = "fastbrain_workspace"
ALL_WORKSPACES = "all_workspaces"

_skills = Skill.__table__
_jobs = TrainingJob.__table__
_exports = Export.__table__


class WorkspaceNotSet(RuntimeError):
    """A scoped session queried tenant data before the request said whose it is: a bug, never a leak."""


def scoped_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that must be given a workspace (`enter`) before they read or write tenant rows."""
    return async_sessionmaker(engine, expire_on_commit=False, info={SCOPED: True})


def enter(session: AsyncSession, workspace_id: str) -> None:
    session.info[WORKSPACE] = workspace_id


def workspace_of(session: AsyncSession | Session) -> str | None:
    value = session.info.get(WORKSPACE)
    return str(value) if value is not None else None


def _skill_ids(workspace_id: str) -> Any:
    return select(_skills.c.id).where(_skills.c.workspace_id == workspace_id)


def _criteria(workspace_id: str) -> list[tuple[type[Any], ColumnElement[bool]]]:
    skills = _skill_ids(workspace_id)
    jobs = select(_jobs.c.id).where(_jobs.c.skill_id.in_(skills))
    return [
        (Skill, Skill.workspace_id == workspace_id),
        (TrainingJob, TrainingJob.skill_id.in_(skills)),
        (Adapter, Adapter.skill_id.in_(skills)),
        (TrainingLog, TrainingLog.job_id.in_(jobs)),
        (GpuSpend, GpuSpend.workspace_id == workspace_id),
        (ApiKey, ApiKey.workspace_id == workspace_id),
        (UploadedFile, UploadedFile.workspace_id == workspace_id),
        (FineTuningJob, FineTuningJob.workspace_id == workspace_id),
        (Export, Export.skill_id.in_(skills)),
        (ExportEvent, ExportEvent.export_id.in_(select(_exports.c.id).where(_exports.c.skill_id.in_(skills)))),
    ]


@event.listens_for(Session, "do_orm_execute")
def _scope_statement(state: ORMExecuteState) -> None:
    info = state.session.info
    if not info.get(SCOPED) or state.execution_options.get(ALL_WORKSPACES):
        return
    if not (state.is_select or state.is_update or state.is_delete):
        return
    if state.is_column_load or state.is_relationship_load:
        return  # refreshing a row this session already loaded under the criteria
    workspace_id = info.get(WORKSPACE)
    if workspace_id is None:
        raise WorkspaceNotSet("a scoped session ran a query before its workspace was set")
    state.statement = state.statement.options(
        *(with_loader_criteria(entity, where, include_aliases=True) for entity, where in _criteria(workspace_id))
    )


# Rows that carry their workspace: stamped with the session's on insert.
STAMPED = (Skill, UploadedFile, FineTuningJob)


@event.listens_for(Session, "before_flush")
def _stamp_new_rows(session: Session, _context: Any, _instances: Any) -> None:
    if not session.info.get(SCOPED):
        return
    for instance in session.new:
        if isinstance(instance, STAMPED):
            workspace_id = session.info.get(WORKSPACE)
            if workspace_id is None:
                raise WorkspaceNotSet(
                    f"a scoped session inserted a {type(instance).__name__} before its workspace was set"
                )
            instance.workspace_id = workspace_id
