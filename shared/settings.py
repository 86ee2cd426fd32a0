"""Configuration from the environment (prefix `FASTBRAIN_`), one object for all parts."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.schemas.skills import MAX_TURN_CHARS

# USD per GPU-hour on Modal, by GPU type. These are configuration, not facts: Modal's
# prices change; override with FASTBRAIN_MODAL_GPU_PRICES='{"A10G": 1.10, ...}'.
MODAL_GPU_PRICES_PER_HOUR: dict[str, float] = {
    "T4": 0.40,
    "L4": 0.80,
    "A10G": 1.10,
    "A100": 3.00,
    "A100-80GB": 3.40,
    "H100": 4.50,
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FASTBRAIN_", env_file=".env", extra="ignore")

    database_url: str | None = Field(
        None, description="SQLAlchemy async URL (postgresql+asyncpg://...). Unset: `fastbrain dev` embeds one."
    )
    redis_url: str | None = Field(None, description="redis://host:port/db. Unset: `fastbrain dev` embeds one.")
    data_dir: Path = Field(Path("./data"), description="Adapters, model cache and embedded services live here.")
    model_cache_dir: Path | None = Field(None, description="Converted base models; default: <data_dir>/models.")
    queue_name: str = Field("fastbrain:queue", description="arq queue; separate names isolate deployments.")
    gpu_backend: Literal["local", "modal"] = Field(
        "local", description="Where training runs: `local` (trainer subprocess) or `modal` (the deployed Modal app)."
    )
    job_timeout_seconds: int = Field(6 * 3600, ge=60, description="Hard limit for one training attempt.")
    local_price_per_hour: float = Field(
        0.0, ge=0.0, description="USD per hour billed for local training (0: your own hardware)."
    )
    worker_max_jobs: int = Field(4, ge=1, description="Concurrent arq jobs per worker (training runs in subprocesses).")
    worker_health_seconds: int = Field(5, ge=1, description="How often the worker reports it is alive.")
    worker_metrics_port: int = Field(
        9101,
        ge=0,
        le=65535,
        description="Port of the worker's Prometheus endpoint (unauthenticated: keep it on loopback); 0 turns it off.",
    )
    worker_metrics_host: str = Field(
        "127.0.0.1", description="Address the worker's Prometheus endpoint binds; anything but loopback exposes it."
    )
    generation_timeout_seconds: int = Field(
        300, ge=5, description="Longest wait for a data report, or for a chat's first event from the engine."
    )
    trainer_standby: bool = Field(
        True,
        description="Keep a trainer process ready while the worker is idle (libraries imported, the last base "
        "model loaded), so the next job starts seconds sooner; each job still gets a process of its own.",
    )
    prepare_models: list[str] = Field(
        default_factory=list, description="Base models a worker converts/caches at startup (JSON list)."
    )
    heartbeat_seconds: float = Field(10.0, gt=0, description="How often a running job's heartbeat is written.")
    heartbeat_stale_seconds: float = Field(
        60.0, gt=0, description="A running job whose heartbeat is older is requeued to resume elsewhere."
    )
    reaper_interval_seconds: int = Field(15, ge=1, le=60, description="How often workers look for stale jobs.")
    cancel_poll_seconds: float = Field(0.5, gt=0, description="How often a worker checks for a cancel request.")
    max_attempts: int = Field(3, ge=1, le=20, description="Attempts per job before WORKER_LOST.")
    network_max_retries: int = Field(3, ge=0, description="NETWORK_ERROR retries (exponential backoff).")
    network_backoff_seconds: float = Field(2.0, ge=0, description="First NETWORK_ERROR backoff; doubles each time.")
    gpu_unavailable_max_requeues: int = Field(3, ge=0, description="GPU_UNAVAILABLE requeues before failing.")
    gpu_unavailable_delay_seconds: float = Field(300.0, ge=0, description="Delay before a GPU_UNAVAILABLE requeue.")
    divergence_max_retries: int = Field(
        2, ge=0, description="TRAINING_DIVERGED rollbacks (each halves the learning rate) before failing."
    )
    modal_app_name: str = Field("fastbrain-trainer", description="Name of the deployed Modal app (`modal deploy`).")
    modal_gpu: str = Field("A10G", description="Modal GPU type the trainer class asks for (read at `modal deploy`).")
    modal_gpu_prices: dict[str, float] = Field(
        default_factory=lambda: dict(MODAL_GPU_PRICES_PER_HOUR),
        description="USD per GPU-hour by Modal GPU type (JSON object); jobs are billed from the GPU seconds used.",
    )
    modal_volume: str = Field("hive215-adapters", description="Modal Volume holding adapters, checkpoints, HF cache.")
    modal_secret: str = Field("huggingface", description="Modal Secret with HF_TOKEN for gated hub models.")
    modal_timeout_seconds: int = Field(
        6 * 3600, ge=60, le=24 * 3600, description="Modal-side limit for one training call (then TIMEOUT)."
    )
    max_request_body_bytes: int = Field(
        32 * 1024 * 1024,
        ge=64 * 1024,
        description="Largest request body (JSON or multipart) in bytes; a bigger one is refused with 413 while it "
        "is read, before anything is parsed or spooled. Keep it above the 20 MB import-file limit.",
    )
    max_examples_per_skill: int = Field(
        50_000, ge=1, description="Most examples one skill may hold (create, update, append, import); more is a 422."
    )
    max_turn_chars: int = Field(
        MAX_TURN_CHARS,
        ge=1,
        description="Most characters in one user or assistant turn; more is a 422 naming the field. Read from the "
        "process environment when the API starts (the request schemas are built with it).",
    )
    requests_per_minute_per_key: int = Field(
        600, ge=1, description="Requests one API key may make per minute (all API processes together); then 429."
    )
    websockets_per_key: int = Field(20, ge=1, description="WebSockets one API key may hold open at once; then 429.")
    max_concurrent_jobs_per_workspace: int = Field(
        4, ge=1, description="Trainings one workspace may have pending, queued or running at once; then 429."
    )
    regression_gate: bool = Field(
        True,
        description="Keep a new adapter version inactive when its held-out loss is worse than the active version's "
        "on the same held-out examples (the job says why; activate it by hand if wanted). Off: always activate.",
    )
    engine_url: str = Field(
        "http://127.0.0.1:8100",
        description="The inference engine (`fastbrain serve`) the API sends chats to; `fastbrain dev` starts one.",
    )
    serve_backend: Literal["local", "modal"] = Field(
        "local",
        description="Where the engine runs models: `local` (in `fastbrain serve`) or `modal` (the deployed Modal "
        "class's `chat`, the same engine on a GPU).",
    )
    engine_device: str | None = Field(None, description="Where the engine runs models: cpu, cuda, or unset for auto.")
    engine_max_adapters: int = Field(
        8, ge=1, description="Adapters the engine keeps loaded per base model (least recently used leave first)."
    )
    engine_max_active: int = Field(
        16,
        ge=1,
        description="Generations the engine runs at once (those on one base model decode as one batch); more wait.",
    )
    engine_max_queue: int = Field(
        64, ge=1, description="Requests waiting for the engine; past this a chat is refused with 503 and Retry-After."
    )
    log_level: str = Field("INFO", description="structlog level.")
    log_format: Literal["console", "json"] = Field(
        "console",
        description="`json`: one JSON object per line (structlog's JSONRenderer; library lines too), with the job, "
        "skill and workspace ids on every line about a job; `console`: human-readable lines.",
    )
    log_json: bool = Field(False, description="Same as FASTBRAIN_LOG_FORMAT=json (kept for existing setups).")
    mlflow_tracking_uri: str | None = Field(
        None,
        description="Set: each training job is one MLflow run here (params, per-step and held-out metrics, the "
        "adapter as an artifact), written by the worker; needs the `mlflow` extra. E.g. sqlite:///mlflow.db, "
        "http://mlflow:5000. Unset: no tracking.",
    )
    mlflow_experiment: str = Field("fastbrain", description="The MLflow experiment the runs go to (made if missing).")

    @model_validator(mode="after")
    def _one_log_format(self) -> Settings:
        """`log_json` and `log_format` say the same thing; either one asking for JSON wins."""
        if self.log_json:
            self.log_format = "json"
        self.log_json = self.log_format == "json"
        return self

    @cached_property
    def adapters_dir(self) -> Path:
        return self.data_dir.resolve() / "adapters"

    @property
    def dev_log_file(self) -> Path:
        """Where `fastbrain dev` writes the full log of its processes (JSON lines; its console shows a summary)."""
        return self.data_dir.resolve() / "logs" / "dev.log"

    @property
    def admin_key_file(self) -> Path:
        """Where `fastbrain dev` keeps the development admin key (mode 0600) for the CLI and local scripts."""
        return self.data_dir.resolve() / "admin-key"

    @cached_property
    def models_dir(self) -> Path:
        return (self.model_cache_dir or self.data_dir / "models").resolve()

    @property
    def modal_price_per_hour(self) -> float:
        """The configured price of `modal_gpu` (0 if the type has no price configured)."""
        return float(self.modal_gpu_prices.get(self.modal_gpu, 0.0))

    def require_urls(self) -> tuple[str, str]:
        """Both service URLs, or a clear error for the production commands."""
        if not self.database_url or not self.redis_url:
            raise RuntimeError(
                "FASTBRAIN_DATABASE_URL and FASTBRAIN_REDIS_URL must be set "
                "(or use `fastbrain dev`, which starts embedded PostgreSQL and Redis)."
            )
        return self.database_url, self.redis_url
