"""The typed arq worker context."""

from __future__ import annotations

from typing import TypedDict

from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.worker.backends.base import GpuBackend
from shared.settings import Settings


class WorkerContext(TypedDict, total=False):
    # Filled by arq for every job.
    redis: ArqRedis
    job_id: str
    job_try: int
    # Filled by our startup hook.
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    backend: GpuBackend
    worker_id: str
