"""Request dependencies: one DB session per request, scoped to the caller's workspace,
that commits or rolls back, and a job queue whose jobs are sent only after that
commit succeeds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

from arq.connections import ArqRedis
from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from limits.aio.strategies import RateLimiter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection

from services.api.auth.access import principal_of
from services.api.serving.engine import EngineClient
from shared.db import tenancy
from shared.db.keys import Principal
from shared.event_hub import EventHub
from shared.events import publish
from shared.schemas.text import NUL, NUL_MESSAGE
from shared.settings import Settings


@dataclass
class AppState:
    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]  # scoped: each session is given the caller's workspace
    system_sessionmaker: async_sessionmaker[AsyncSession]  # unscoped: key lookups, the event hub, health
    redis: ArqRedis
    hub: EventHub  # the process's one Redis subscription, shared by every WebSocket
    limiter: RateLimiter  # requests per minute per key, in Redis
    engine: EngineClient  # the inference engine (`fastbrain serve`) behind chat and /v1

    def session(self, principal: Principal) -> AsyncSession:
        """A session of the caller's workspace, for a route that must not hold one for the whole request."""
        session = self.sessionmaker()
        tenancy.enter(session, principal.workspace_id)
        return session


@dataclass
class AfterCommit:
    """Work to do once the request's transaction is committed: arq jobs and events."""

    jobs: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    callbacks: list[Callable[[], Awaitable[None] | None]] = field(default_factory=list)

    def call(self, callback: Callable[[], Awaitable[None] | None]) -> None:
        """Run `callback` (a function or a coroutine function) after the commit (e.g. remove files whose rows
        are gone)."""
        self.callbacks.append(callback)

    def enqueue(self, function: str, *args: Any, **kwargs: Any) -> None:
        self.jobs.append((function, args, kwargs))

    def publish(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    async def flush(self, state: AppState) -> None:
        for callback in self.callbacks:
            result = callback()
            if result is not None:
                await result
        for function, args, kwargs in self.jobs:
            await state.redis.enqueue_job(function, *args, _queue_name=state.settings.queue_name, **kwargs)
        await publish(state.redis, self.events)


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.fastbrain
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_after_commit() -> AfterCommit:
    return AfterCommit()


AfterCommitDep = Annotated[AfterCommit, Depends(get_after_commit, scope="function")]


def get_principal(connection: HTTPConnection) -> Principal:
    """The caller, as `services.api.auth.access.authorize` (run before every route) found it."""
    return principal_of(connection)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_session(
    state: StateDep, after_commit: AfterCommitDep, principal: PrincipalDep
) -> AsyncIterator[AsyncSession]:
    # scope="function": the commit happens before the response is sent, so a
    # client that gets 2xx can read its own write, and a worker never sees an
    # uncommitted row (jobs go out after the commit).
    async with state.sessionmaker() as session:
        tenancy.enter(session, principal.workspace_id)
        try:
            yield session
        except Exception:
            await session.rollback()
            raise
        await session.commit()
    await after_commit.flush(state)


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


def get_settings(state: StateDep) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def reject_nul_in_url(connection: HTTPConnection) -> None:
    """An app-wide dependency: a NUL character (`%00`) in the path or the query string is a 422.

    PostgreSQL text cannot hold one, so it must never reach a query as a parameter. JSON
    bodies are checked by their models (`shared.schemas.text.NoNulStrings`); WebSocket
    routes parse their own parameters and answer with a close code.
    """
    if connection.scope["type"] != "http":
        return
    errors: list[dict[str, Any]] = []
    if NUL in connection.scope["path"]:
        errors.append({"type": "string_nul", "loc": ("url",), "msg": f"The path {NUL_MESSAGE}", "input": None})
    for key, value in connection.query_params.multi_items():
        if NUL in key or NUL in value:
            name = key.replace(NUL, "\\u0000")
            errors.append({"type": "string_nul", "loc": ("query", name), "msg": f"Value {NUL_MESSAGE}", "input": None})
    if errors:
        raise RequestValidationError(errors)
