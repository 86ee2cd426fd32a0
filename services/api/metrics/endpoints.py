"""`GET /metrics`: Prometheus text format, for a key with the `admin` scope.

Job counts by status (all workspaces: a system-level view, hence `admin`) and the arq queue's
depth are read when Prometheus scrapes, concurrently and with a deadline, then rendered after
the process's own metrics. A source that does not answer leaves its metric out of that scrape
(and says so in `fastbrain_metrics_source_up`) instead of repeating an old value.

Not in the OpenAPI schema, like the other routes that are not part of the JSON API (`/`, `/docs`):
Prometheus is its only client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Final, TypeVar

import structlog
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.api.auth.access import needs
from services.api.deps import StateDep
from shared.db.keys import Scope
from shared.db.models import JobStatus, TrainingJob

router = APIRouter(tags=["system"])
log = structlog.get_logger(__name__)

# Under Prometheus's default scrape timeout (10 s): a slow source costs its metric, not the scrape.
SOURCE_TIMEOUT_SECONDS: Final = 3.0
T = TypeVar("T")


async def job_counts(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    """Jobs by status over every workspace, each status present (0 when none)."""
    async with sessionmaker() as session:
        rows = await session.execute(select(TrainingJob.status, func.count()).group_by(TrainingJob.status))
    counts = {status.value: 0 for status in JobStatus}
    counts.update({status: int(count) for status, count in rows.all()})
    return counts


async def queue_depth(redis: ArqRedis, queue_name: str) -> int:
    """arq jobs waiting in the queue: arq keeps a job in its sorted set while it runs, so those are taken off."""
    job_ids = [job_id.decode() for job_id in await redis.zrange(queue_name, 0, -1)]
    if not job_ids:
        return 0
    running = int(await redis.exists(*(in_progress_key_prefix + job_id for job_id in job_ids)))
    return len(job_ids) - running


@dataclass(eq=False)  # a registry keeps its collectors in a dict: identity, not value, names one
class Snapshot(Collector):
    """What this scrape read from PostgreSQL and Redis (None: the source did not answer)."""

    jobs: dict[str, int] | None
    depth: int | None
    sources: dict[str, bool] = field(default_factory=dict)

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "fastbrain_metrics_source_up",
            "Whether this scrape could read the source (1) or not (0).",
            labels=["source"],
        )
        for source, ok in self.sources.items():
            up.add_metric([source], 1.0 if ok else 0.0)
        yield up
        if self.jobs is not None:
            jobs = GaugeMetricFamily(
                "fastbrain_jobs", "Training jobs by status, all workspaces, read at scrape time.", labels=["status"]
            )
            for status, count in self.jobs.items():
                jobs.add_metric([status], count)
            yield jobs
        if self.depth is not None:
            yield GaugeMetricFamily(
                "fastbrain_queue_depth", "arq jobs waiting in the Redis queue (not yet running).", value=self.depth
            )


async def _read(source: str, work: Awaitable[T]) -> T | None:
    try:
        async with asyncio.timeout(SOURCE_TIMEOUT_SECONDS):
            return await work
    except Exception as exc:  # the scrape still answers, without this source's metric
        log.warning("metrics_source_failed", source=source, error=repr(exc))
        return None


@router.get("/metrics", include_in_schema=False, openapi_extra=needs(Scope.ADMIN))
async def metrics(state: StateDep) -> Response:
    jobs, depth = await asyncio.gather(
        _read("database", job_counts(state.system_sessionmaker)),
        _read("redis", queue_depth(state.redis, state.settings.queue_name)),
    )
    snapshot = Snapshot(jobs, depth, {"database": jobs is not None, "redis": depth is not None})
    scraped = CollectorRegistry(auto_describe=False)
    scraped.register(snapshot)
    return Response(generate_latest(REGISTRY) + generate_latest(scraped), media_type=CONTENT_TYPE_LATEST)
