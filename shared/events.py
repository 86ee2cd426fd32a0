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
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

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


async def read_history(
    sessionmaker: async_sessionmaker[AsyncSession], job_id: uuid.UUID, after_seq: int = 0
) -> list[dict[str, Any]]:
    async with sessionmaker() as session:
        return await history(session, job_id, after_seq)


async def stream_events(
    redis: Redis,
    sessionmaker: async_sessionmaker[AsyncSession],
    job_id: uuid.UUID,
    after_seq: int = 0,
) -> AsyncGenerator[dict[str, Any], None]:
    """History after `after_seq`, then live events, in seq order, each once; ends with the job.

    A one-off stream with a hub of its own (one pub/sub connection); a process that
    streams to many clients shares one `EventHub` instead (the API does).
    """
    from shared.event_hub import EventHub  # it builds on this module

    hub = EventHub(redis, sessionmaker)
    await hub.start()
    try:
        async with aclosing(hub.stream(job_id, after_seq)) as events:
            async for event in events:
                yield event
    finally:
        await hub.aclose()
