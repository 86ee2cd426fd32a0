"""WebSocket stream of a job's events: history first, then live, no gaps or duplicates."""

from __future__ import annotations

import uuid
from contextlib import aclosing
from typing import Annotated

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect

from services.api.deps import AppState
from shared.db.models import TrainingJob
from shared.events import stream_events

router = APIRouter(prefix="/api", tags=["streams"])


@router.websocket("/training-stream/{job_id}")
async def training_stream(websocket: WebSocket, job_id: uuid.UUID, after_seq: Annotated[int, Query(ge=0)] = 0) -> None:
    """Sends `{job_id, seq, ts, type, ...}` messages (`status`, `log`, `progress`,
    `complete`, `error`). Reconnect with `?after_seq=<last seq seen>` to resume.
    The server closes the socket (code 1000) after the job's final event."""
    state: AppState = websocket.app.state.fastbrain
    async with state.sessionmaker() as session:
        exists = await session.get(TrainingJob, job_id) is not None
    await websocket.accept()
    if not exists:
        await websocket.send_json(
            {"type": "error", "category": "NOT_FOUND", "message": f"Training job '{job_id}' not found.", "final": True}
        )
        await websocket.close(code=4404)
        return
    # aclosing: a client that leaves mid-stream releases its pub/sub connection now, not at GC.
    async with aclosing(stream_events(state.redis, state.sessionmaker, job_id, after_seq)) as events:
        try:
            async for event in events:
                await websocket.send_json(event)
        except (WebSocketDisconnect, RuntimeError):  # the client went away
            return
    await websocket.close(code=1000)
