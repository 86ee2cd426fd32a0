"""Building and running an arq worker for Fast Brain."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from typing import Any, cast

import structlog
from arq.cron import cron
from arq.worker import Worker, func

from services.worker import metrics
from services.worker.attempt import bind_arq_job, run_training
from services.worker.backends import create_backend
from services.worker.backends.base import GpuBackend
from services.worker.context import WorkerContext
from services.worker.exports import run_export
from services.worker.reaper import reap_stale_jobs
from services.worker.tasks import data_report, delete_remote_adapter
from shared.db.engine import create_engine, create_sessionmaker
from shared.queue import redis_settings
from shared.rules import tasks
from shared.settings import Settings

log = structlog.get_logger(__name__)

# arq's own timeout sits above ours so our handler (which records TIMEOUT on
# the job) always runs first.
ARQ_TIMEOUT_MARGIN_SECONDS = 60


async def _prepare_models(settings: Settings, backend: GpuBackend) -> None:
    for model_id in settings.prepare_models:
        from services.gpu.models import ensure_model

        try:
            await asyncio.to_thread(ensure_model, model_id, settings.models_dir)
            log.info("model_ready", model=model_id)
        except Exception as exc:  # a worker still runs jobs; the trainer reports the real error
            log.warning("model_prepare_failed", model=model_id, error=str(exc))
    start = getattr(backend, "start", None)  # the local backend's standby trainer
    if start is not None:
        await start(settings.prepare_models[0] if settings.prepare_models else None)


def build_worker(
    settings: Settings,
    *,
    burst: bool = False,
    backend: GpuBackend | None = None,
    worker_id: str | None = None,
    **overrides: Any,
) -> Worker:
    """An arq worker; `backend` replaces the configured GPU backend (tests use a fake one)."""
    database_url, redis_url = settings.require_urls()
    worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    async def startup(ctx: dict[str, Any]) -> None:
        metrics.serve(settings)  # once per process, however many workers it builds
        typed = cast(WorkerContext, ctx)
        engine = create_engine(database_url, application_name="fastbrain-worker")
        typed["settings"] = settings
        typed["engine"] = engine
        typed["sessionmaker"] = create_sessionmaker(engine)
        typed["backend"] = backend or create_backend(settings)
        typed["worker_id"] = worker_id
        # Convert/cache base models in the background so the first training does not pay
        # for it (trainers cope with a cache being filled), then have a trainer wait ready.
        ctx["prepare_task"] = asyncio.create_task(_prepare_models(settings, typed["backend"]))

    async def shutdown(ctx: dict[str, Any]) -> None:
        close = getattr(ctx.get("backend"), "close", None)
        if close is not None:
            await close()
        engine = ctx.get("engine")
        if engine is not None:
            await engine.dispose()

    options: dict[str, Any] = {
        "functions": [
            # arq types task contexts as plain dicts; ours are a TypedDict of the same dict.
            func(
                cast(Any, run_training),
                name=tasks.RUN_TRAINING,
                timeout=settings.job_timeout_seconds + ARQ_TIMEOUT_MARGIN_SECONDS,
            ),
            func(cast(Any, data_report), name=tasks.DATA_REPORT, timeout=settings.generation_timeout_seconds),
            func(cast(Any, delete_remote_adapter), name=tasks.DELETE_REMOTE_ADAPTER, timeout=120),
            func(cast(Any, run_export), name=tasks.RUN_EXPORT, timeout=settings.job_timeout_seconds),
        ],
        "cron_jobs": [
            cron(
                cast(Any, reap_stale_jobs),
                name=tasks.REAP_STALE_JOBS,
                second=set(range(0, 60, settings.reaper_interval_seconds)),
                run_at_startup=True,
                unique=True,
                timeout=60,
            )
        ],
        "redis_settings": redis_settings(redis_url),
        "queue_name": settings.queue_name,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "on_job_start": bind_arq_job,
        "max_jobs": settings.worker_max_jobs,
        "health_check_interval": settings.worker_health_seconds,
        "keep_result": 60,
        "allow_abort_jobs": True,
        "burst": burst,
        "handle_signals": not burst,
    }
    options.update(overrides)
    return Worker(**options)


def run_worker(settings: Settings) -> None:
    build_worker(settings).run()
