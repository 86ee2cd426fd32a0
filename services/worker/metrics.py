"""The worker's Prometheus metrics and the endpoint that serves them.

prometheus_client's own HTTP server (a daemon thread) serves the process's default registry at
`FASTBRAIN_WORKER_METRICS_HOST:FASTBRAIN_WORKER_METRICS_PORT` (127.0.0.1:9101; port 0: off). It
has no authentication, so it binds loopback unless told otherwise: the numbers are system-wide
(every workspace's jobs) and scraping them needs no key, unlike the API's `/metrics`.

Recorded where the worker's writes commit: an attempt's start right after its claim, its ending
right after the fenced terminal transition took effect (`services.worker.completion`, and the
reaper for jobs whose worker died), the GPU time and cost of every trainer run where its cost
is computed. A refused (lease-lost) write records nothing, as it changed nothing.
"""

from __future__ import annotations

import threading
import uuid
from datetime import datetime
from typing import Any, Final

import structlog
from prometheus_client import Counter, Histogram, start_http_server
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import TERMINAL_JOB_STATUSES, TrainingLog
from shared.settings import Settings

log = structlog.get_logger(__name__)

_DURATION_BUCKETS: Final = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)

JOBS_FINISHED: Final = Counter(
    "fastbrain_jobs_finished", "Training jobs this worker brought to a final status, by that status.", ("status",)
)
JOB_DURATION: Final = Histogram(
    "fastbrain_job_duration_seconds",
    "From an attempt's claim to the job's final status, by that status (the ending attempt only).",
    ("status",),
    buckets=_DURATION_BUCKETS,
)
QUEUE_WAIT: Final = Histogram(
    "fastbrain_job_queue_wait_seconds",
    "From a job being queued (created, or requeued for a new attempt) to a worker claiming it (database clock).",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0),
)
TOKENS_PER_SECOND: Final = Histogram(
    "fastbrain_training_tokens_per_second",
    "Training throughput of completed jobs (tokens through the optimizer steps per second), by device.",
    ("device",),
    buckets=(10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0, 50000.0),
)
GPU_SECONDS: Final = Counter(
    "fastbrain_gpu_seconds",
    "Trainer time billed, every run (failed and retried ones too): the GPU seconds Modal reports, "
    "else the local trainer's wall time.",
)
COST_USD: Final = Counter(
    "fastbrain_cost_usd", "USD billed for trainer runs, as added to each job's cost_usd (and the spend ledger)."
)
for _status in TERMINAL_JOB_STATUSES:  # present from the start, so rate() has a first sample
    JOBS_FINISHED.labels(_status.value)

_server_lock = threading.Lock()
_server_started = False


def serve(settings: Settings) -> bool:
    """Start the endpoint once per process (an arq worker is one process; tests build several in one).

    A port already taken is logged, not fatal: a worker without metrics still trains.
    """
    global _server_started
    if settings.worker_metrics_port == 0:
        return False
    with _server_lock:
        if _server_started:
            return True
        try:
            start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_host)
        except OSError as exc:
            log.warning(
                "worker_metrics_unavailable",
                host=settings.worker_metrics_host,
                port=settings.worker_metrics_port,
                error=str(exc),
            )
            return False
        _server_started = True
    log.info("worker_metrics_serving", host=settings.worker_metrics_host, port=settings.worker_metrics_port)
    return True


async def queued_at(session: AsyncSession, job_id: uuid.UUID, claim_seq: int) -> datetime | None:
    """When the attempt just claimed was queued: the job's last `status` event before its claim's
    (the start's `queued`, or the requeue's)."""
    stamp: datetime | None = await session.scalar(
        select(TrainingLog.timestamp)
        .where(TrainingLog.job_id == job_id, TrainingLog.event_type == "status", TrainingLog.seq < claim_seq)
        .order_by(TrainingLog.seq.desc())
        .limit(1)
    )
    return stamp


def attempt_claimed(queued: datetime | None, claimed_ts: str) -> None:
    if queued is None:
        return
    QUEUE_WAIT.observe(max(0.0, (datetime.fromisoformat(claimed_ts) - queued).total_seconds()))


def run_billed(gpu_seconds: float, cost_usd: float) -> None:
    GPU_SECONDS.inc(max(0.0, gpu_seconds))
    COST_USD.inc(max(0.0, cost_usd))


def job_finished(status: str, attempt_seconds: float | None, event: dict[str, Any] | None = None) -> None:
    """A terminal transition committed; `attempt_seconds` is None when the attempt's start is not known here."""
    JOBS_FINISHED.labels(status).inc()
    if attempt_seconds is not None:
        JOB_DURATION.labels(status).observe(attempt_seconds)
    rate = (event or {}).get("tokens_per_second")
    if isinstance(rate, int | float) and rate > 0:
        TOKENS_PER_SECOND.labels(str((event or {}).get("device") or "unknown")).observe(float(rate))
