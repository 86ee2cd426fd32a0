"""WebSocket stream of a job's events: history first, then live, no gaps or duplicates.

Each socket runs two tasks: the sender (the process's `EventHub` stream, history
then live) and a receiver that waits for the client to leave. Whichever ends first
ends the other, so a client that goes away releases its subscription at once, and
one that goes silent is dropped by uvicorn's PINGs (`WS_PING_INTERVAL_SECONDS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from contextlib import aclosing
from typing import Annotated

import structlog
from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from sqlalchemy import select
from starlette.websockets import WebSocketState

from services.api.auth import rate
from services.api.auth.access import principal_of
from services.api.auth.protocol import accepted_subprotocol
from services.api.deps import AppState
from services.api.metrics.instruments import WEBSOCKETS_OPEN
from shared.db.keys import Principal, live_principal
from shared.db.models import Export, TrainingJob
from shared.events import MAX_SEQ
from shared.schemas.events import public_event

router = APIRouter(prefix="/api", tags=["streams"])
log = structlog.get_logger(__name__)

CLOSE_NORMAL = 1000
CLOSE_INTERNAL_ERROR = 1011
CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_FOUND = 4404
# How soon an open stream notices that its key was revoked.
KEY_CHECK_SECONDS = 5.0
CLOSE_INVALID = 4422


@router.websocket("/training-stream/{job_id}")
async def training_stream(websocket: WebSocket, job_id: uuid.UUID, after_seq: Annotated[str, Query()] = "0") -> None:
    """Sends `{job_id, seq, ts, type, ...}` messages (`status`, `log`, `progress`,
    `complete`, `error`): the job's stored events after `after_seq`, then live ones.
    Reconnect with `?after_seq=<last seq seen>` to resume without gaps or duplicates.

    The server closes the socket with code 1000 after the job's final event, and at
    once (after sending what is left after `after_seq`, maybe nothing) for a job that
    already ended. An unknown job gets one `{"type": "error", "category": "NOT_FOUND",
    "final": true}` message, then close code 4404; an `after_seq` that is not an integer
    from 0 to 2147483647 gets a `VALIDATION_ERROR` one, then 4422. Idle sockets are kept
    honest by protocol-level PINGs: a client that stops answering is dropped within 5 s.

    Authenticate with `Authorization: Bearer <key>`, or from a browser with the
    subprotocols a `POST /api/stream-tickets` returns. A refused socket gets one `error`
    message and close code 4401 (no valid key; `INVALID_TICKET` when the ticket was unknown,
    expired or used: fetch another), 4403 (scope) or 4429 (past `FASTBRAIN_WEBSOCKETS_PER_KEY`
    open sockets on the key). A stream whose key is revoked ends within 5 s the same way (4401)."""
    principal = principal_of(websocket)
    state: AppState = websocket.app.state.fastbrain
    slot = await rate.claim_ws_slot(state, principal)  # a 429 handshake answer when the key has too many
    try:
        await _serve(websocket, state, principal, job_id, after_seq, slot)
    finally:
        await slot.release()


@router.websocket("/export-stream/{export_id}")
async def export_stream(websocket: WebSocket, export_id: uuid.UUID, after_seq: Annotated[str, Query()] = "0") -> None:
    """An export job's events, on the training stream's contract: `status`, `progress` (with `stage`),
    `log`, then `complete` (its files and verification) or a final `error`. Same resume (`after_seq`),
    authentication and close codes as `/api/training-stream/{job_id}`."""
    principal = principal_of(websocket)
    state: AppState = websocket.app.state.fastbrain
    slot = await rate.claim_ws_slot(state, principal)
    try:
        await _serve(websocket, state, principal, export_id, after_seq, slot)
    finally:
        await slot.release()


async def _serve(
    websocket: WebSocket, state: AppState, principal: Principal, job_id: uuid.UUID, after_seq: str, slot: rate.WsSlot
) -> None:
    subprotocol = accepted_subprotocol(websocket)
    position = _position(after_seq)
    if position is None:
        await websocket.accept(subprotocol=subprotocol)
        message = f"after_seq must be an integer from 0 to {MAX_SEQ}, not '{after_seq[:40]}'."
        await websocket.send_json({"type": "error", "category": "VALIDATION_ERROR", "message": message, "final": True})
        await websocket.close(code=CLOSE_INVALID)
        return
    async with state.session(principal) as session:  # another workspace's job is "not found", as over HTTP
        exists = await session.scalar(select(TrainingJob.id).where(TrainingJob.id == job_id)) is not None
        exists = exists or await session.scalar(select(Export.id).where(Export.id == job_id)) is not None
    await websocket.accept(subprotocol=subprotocol)
    if not exists:
        await websocket.send_json(
            {"type": "error", "category": "NOT_FOUND", "message": f"Training job '{job_id}' not found.", "final": True}
        )
        await websocket.close(code=CLOSE_NOT_FOUND)
        return

    async def send_events() -> None:
        # aclosing: the subscription is released when this task ends or is cancelled, not at GC.
        async with aclosing(state.hub.stream(job_id, position)) as events:
            async for event in events:
                await websocket.send_json(public_event(event))  # tracebacks stay in the database and logs

    sender = asyncio.create_task(send_events(), name=f"stream-send-{job_id}")
    receiver = asyncio.create_task(_until_disconnect(websocket), name=f"stream-receive-{job_id}")
    guard = asyncio.create_task(_guard(state, principal, slot), name=f"stream-guard-{job_id}")
    try:
        with WEBSOCKETS_OPEN.track_inprogress():  # streams only: refused and not-found sockets end at once
            await asyncio.wait({sender, receiver, guard}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, receiver, guard):
            task.cancel()
        await asyncio.gather(sender, receiver, guard, return_exceptions=True)
    if receiver.done() and not receiver.cancelled():
        return  # the client left (or was dropped by the keepalive): nothing to close
    if guard.done() and not guard.cancelled() and guard.exception() is None:
        with contextlib.suppress(RuntimeError, OSError):  # the key was revoked while it streamed
            await websocket.send_json(
                {"type": "error", "category": "UNAUTHORIZED", "message": "The API key was revoked.", "final": True}
            )
            await websocket.close(code=CLOSE_UNAUTHORIZED)
        return
    error = sender.exception() if sender.done() and not sender.cancelled() else None
    if isinstance(error, WebSocketDisconnect | OSError) or websocket.client_state != WebSocketState.CONNECTED:
        return  # the send failed because the client is gone
    if error is not None:
        log.error("stream_failed", job_id=str(job_id), error=repr(error))
    with contextlib.suppress(RuntimeError, OSError):
        await websocket.close(code=CLOSE_INTERNAL_ERROR if error is not None else CLOSE_NORMAL)


async def _guard(state: AppState, principal: Principal, slot: rate.WsSlot) -> None:
    """Returns once the socket's key is revoked (checked every KEY_CHECK_SECONDS); renews its slot meanwhile."""
    renewed = time.monotonic()
    while True:
        await asyncio.sleep(KEY_CHECK_SECONDS)
        with contextlib.suppress(Exception):  # a database blip is no reason to end a stream
            async with state.system_sessionmaker() as session, session.begin():
                if await live_principal(session, principal.key_id) is None:
                    return
        if time.monotonic() - renewed >= rate.RENEW_SECONDS:
            renewed = time.monotonic()
            with contextlib.suppress(Exception):  # a Redis blip costs at most this socket's claim
                await slot.renew()


def _position(after_seq: str) -> int | None:
    """`after_seq` as a stream position, or None when it is not one."""
    text = after_seq.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 10:
        return None
    value = int(text)
    return value if value <= MAX_SEQ else None


async def _until_disconnect(websocket: WebSocket) -> None:
    """Returns when the client closes or its connection is lost; what it sends is ignored."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
