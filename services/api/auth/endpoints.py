"""Access endpoints: who am I (workspace, scope, budget, limits) and WebSocket tickets."""

from __future__ import annotations

from fastapi import APIRouter, status

from services.api.auth import tickets
from services.api.auth.access import needs
from services.api.deps import PrincipalDep, SessionDep, StateDep
from services.api.training.service import active_job_count
from shared.db import spend
from shared.db.keys import Scope
from shared.schemas.access import Me, StreamTicket, WorkspaceBudget, WorkspaceLimits

router = APIRouter(prefix="/api", tags=["access"])


@router.get("/me", summary="The calling key's workspace, scope, GPU budget and limits")
async def me(principal: PrincipalDep, session: SessionDep, state: StateDep) -> Me:
    settings = state.settings
    budget = await spend.budget(session, principal.workspace_id)
    return Me(
        workspace_id=principal.workspace_id,
        scope=principal.scope.value,
        key_id=str(principal.key_id),
        active_jobs=await active_job_count(session),
        budget=WorkspaceBudget.model_validate(budget, from_attributes=True),
        limits=WorkspaceLimits(
            requests_per_minute_per_key=settings.requests_per_minute_per_key,
            websockets_per_key=settings.websockets_per_key,
            max_concurrent_jobs=settings.max_concurrent_jobs_per_workspace,
            max_examples_per_skill=settings.max_examples_per_skill,
            max_request_body_bytes=settings.max_request_body_bytes,
        ),
    )


@router.post(
    "/stream-tickets",
    status_code=status.HTTP_201_CREATED,
    summary="A one-use ticket to open a training stream from a browser",
    openapi_extra=needs(Scope.READ),
)
async def stream_ticket(principal: PrincipalDep, state: StateDep) -> StreamTicket:
    """Browsers cannot set headers on a WebSocket: offer the returned `protocols` as its
    subprotocols instead (`new WebSocket(url, protocols)`). Programs can send
    `Authorization: Bearer <key>` on the WebSocket itself and need no ticket."""
    ticket = await tickets.issue(state, principal)
    return StreamTicket(
        ticket=ticket,
        expires_in=tickets.TTL_SECONDS,
        protocols=tickets.protocols(ticket),
    )
