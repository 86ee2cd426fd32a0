"""The event path: stamp, persist, then publish; and the gap-free subscriber.

Writers append events through `shared.db.job_state` (every event row is written by
the fenced transition it belongs to) and call `publish` after the commit, so a
published event is always already in `fb_training_logs`. Readers
subscribe first, then replay history after their last seq, then forward live
events, dropping any seq they already sent: `shared.event_hub.EventHub.stream`,
one Redis subscription per process shared by all of its clients.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import TrainingLog

CHANNEL_PREFIX = "fastbrain:job:"
# `fb_training_logs.seq` is a PostgreSQL integer: no stream position lies past it.
MAX_SEQ = 2**31 - 1


def channel(job_id: uuid.UUID | str) -> str:
    return f"{CHANNEL_PREFIX}{job_id}"


async def publish(redis: Redis, events: list[dict[str, Any]] | dict[str, Any]) -> None:
    """Publish committed events; pub/sub is best effort, history is the truth."""
    for event in events if isinstance(events, list) else [events]:
        await redis.publish(channel(event["job_id"]), json.dumps(event))


async def history(
    session: AsyncSession, job_id: uuid.UUID, after_seq: int = 0, limit: int | None = None
) -> list[dict[str, Any]]:
    """A job's stored events with seq > `after_seq`, in order (the first `limit` of them)."""
    query = (
        select(TrainingLog.data)
        .where(TrainingLog.job_id == job_id, TrainingLog.seq > after_seq)
        .order_by(TrainingLog.seq)
    )
    if limit is not None:
        query = query.limit(limit)
    return list(await session.scalars(query))
