"""Training job and adapter response bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.schemas.events import Evaluation, QualityScore, RegressionCheck
from shared.schemas.text import NoNulStrings
from shared.schemas.training import Preset, TrainingConfigRequest


class EstimateRequest(NoNulStrings):
    """What to estimate: a preset, or a full config (a preset plus overrides), on a backend and GPU."""

    model_config = ConfigDict(extra="forbid")

    preset: Preset | None = Field(None, description="Shorthand for `config.preset`; wins over it when both are given.")
    config: TrainingConfigRequest | None = Field(None, description="As in POST /api/train-skill; default: standard.")
    backend: Literal["local", "modal"] | None = Field(None, description="Default: this server's FASTBRAIN_GPU_BACKEND.")
    gpu_type: str | None = Field(
        None, description="Modal GPU type (A10G, T4, A100, H100, ...); default: FASTBRAIN_MODAL_GPU. Modal only."
    )


class EstimateOut(BaseModel):
    minutes: float = Field(description="Wall time of the run, from the trainer starting to the adapter saved.")
    seconds: float = Field(description="The same, in seconds (unrounded to minutes).")
    cost_usd: float
    confidence: Literal["high", "medium", "low"]
    tokens: int = Field(description="Tokens the trainer will see: examples x epochs, each cut at max_seq_length.")
    epochs: float = Field(description="Passes over the data (fractional when max_steps sets the length).")
    throughput_tokens_per_second: float
    throughput_source: str = Field(description="`measured (n jobs)`, `seeded` or `default`.", examples=["seeded"])
    startup_seconds: float = Field(description="Overhead outside the optimizer steps: start, model load, saving.")
    backend: str
    device: str = Field(description="`cpu`/`cuda` on the local backend, the GPU type on Modal.")
    gpu_type: str | None
    price_per_hour: float = Field(description="USD per hour of the device, from configuration.")
    examples: int
    token_count: Literal["tokenizer", "heuristic"] = Field(
        description="Counted with the base model's tokenizer, or estimated as characters / 3.6."
    )


class TrainAccepted(BaseModel):
    job_id: uuid.UUID
    status: str = Field(examples=["queued"])
    estimated_cost: float = Field(description="USD")
    estimated_time_minutes: float
    stream_url: str = Field(description="WebSocket path for live progress.")
    warnings: list[str] = Field(default_factory=list, description="Data problems that do not stop training.")
    estimate: EstimateOut | None = Field(None, description="The same estimate as POST /api/skills/{id}/estimate.")


class MetricPoint(BaseModel):
    step: int
    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_second: float | None = None
    eval_loss: float | None = None
    ts: str


class JobSummary(BaseModel):
    job_id: uuid.UUID
    skill_id: str
    skill_name: str | None = None
    status: str
    base_model: str | None
    preset: str | None
    progress: float
    final_loss: float | None
    training_time_seconds: int | None
    cost_usd: float | None
    error_message: str | None
    created_at: datetime
    completed_at: datetime | None


class JobList(BaseModel):
    jobs: list[JobSummary]
    total: int


class JobStatusOut(BaseModel):
    job_id: uuid.UUID
    skill_id: str
    skill_name: str | None = None
    status: str
    progress: float
    current_step: int
    total_steps: int | None
    current_epoch: float
    total_epochs: int | None
    current_loss: float | None
    eta_seconds: float | None
    initial_loss: float | None
    final_loss: float | None
    training_time_seconds: int | None
    cost_usd: float | None
    estimated_cost: float | None
    estimated_time_minutes: float | None
    device: str | None = None
    tokens_trained: int | None = None
    tokens_per_second: float | None = Field(None, description="Measured over the optimizer steps.")
    startup_seconds: float | None = None
    estimate_error_pct: float | None = Field(None, description="(estimated - actual) / actual x 100, on time.")
    eval_loss_before: float | None = Field(None, description="Held-out loss of the base model.")
    eval_loss_after: float | None = Field(None, description="Held-out loss with the trained adapter.")
    eval_examples: int | None = Field(None, description="Examples held out (none under 10 examples).")
    improvement_pct: float | None = Field(None, description="Held-out loss reduction, %.")
    best_step: int | None = Field(
        None,
        description="The step whose weights the adapter keeps: the lowest held-out loss measured during training "
        "(about every 10% of the steps and at the last).",
    )
    best_eval_loss: float | None = Field(None, description="Its held-out loss (the adapter's: = eval_loss_after).")
    last_eval_loss: float | None = Field(None, description="The last step's held-out loss.")
    restored_best: bool | None = Field(
        None, description="True when the last step was worse and the adapter holds an earlier step's weights."
    )
    quality: QualityScore | None = Field(
        None, description="1-5 stars from the held-out improvement (completed jobs), or why there is none."
    )
    evaluation: Evaluation | None = Field(
        None, description="Up to 5 held-out prompts: the reference answer, the base model's and the adapter's."
    )
    error_message: str | None
    error_details: dict[str, Any] | None
    recovery_attempts: list[dict[str, Any]] = Field(description="What auto-recovery tried, in order.")
    cancel_requested: bool
    config: dict[str, Any]
    attempt: int
    adapter_id: uuid.UUID | None
    adapter_version: int | None = Field(None, description="The version number of the job's adapter.")
    training_examples: int | None = Field(
        None, description="The skill's examples when it trained, held-out ones included."
    )
    adapter_active: bool | None = Field(
        None, description="Whether the job's adapter is the skill's active version now (None: no adapter)."
    )
    activated: bool | None = Field(
        None,
        description="Whether completion made the adapter the active version; false when the regression gate kept "
        "it inactive (its held-out loss was worse than the active version's on the same held-out examples).",
    )
    not_activated_reason: str | None = Field(None, description="Why the adapter was kept but not activated.")
    regression_check: RegressionCheck | None = Field(
        None, description="The regression gate's comparison with the version that was active at completion."
    )
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    last_event_seq: int
    metrics_history: list[MetricPoint] = Field(
        description="Per-step metrics, oldest first: the latest `metrics_limit` points (default 200), "
        "or all of them with `metrics=all`."
    )
    metrics_total: int = Field(description="Progress points the job has in all (`metrics_history` may hold fewer).")


class EventPage(BaseModel):
    job_id: uuid.UUID
    events: list[dict[str, Any]] = Field(description="`{job_id, seq, ts, type, ...}`, as the WebSocket sends them.")
    next_after_seq: int = Field(description="`after_seq` for the next page: the last seq here, or the one given.")
    has_more: bool = Field(description="More events are stored after this page.")


class AdapterOut(BaseModel):
    id: uuid.UUID
    skill_id: str
    skill_name: str | None = None
    version: int
    is_active: bool
    final_loss: float | None
    training_examples: int | None
    training_time_seconds: int | None
    training_job_id: uuid.UUID | None
    base_model: str | None
    lora_config: dict[str, Any] | None
    adapter_size_bytes: int | None
    storage_path: str
    remote_ref: str | None = Field(None, description="Its copy on the Modal Volume, when it trained there.")
    created_at: datetime
    eval_loss: float | None = Field(None, description="Held-out loss of this version (its job's eval_loss_after).")
    quality: QualityScore | None = Field(
        None, description="Stars from its held-out improvement; None when its training job no longer exists."
    )


class AdapterList(BaseModel):
    adapters: list[AdapterOut]


class Deleted(BaseModel):
    success: bool = True
    message: str


class TestAdapterRequest(NoNulStrings):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=4_000, examples=["What is blackstrap molasses?"])
    max_new_tokens: int = Field(128, ge=1, le=1024)
    adapter_id: uuid.UUID | None = Field(None, description="A specific version; default: the active one.")


class TestAdapterResponse(BaseModel):
    response: str
    generation_time_ms: int
    adapter_id: uuid.UUID
    adapter_version: int


class JobCancelOut(BaseModel):
    job_id: uuid.UUID
    status: str = Field(description="`cancelled` (it was queued) or `cancelling` (its worker is stopping it).")


class StatsOut(BaseModel):
    jobs: dict[str, int] = Field(description="Job counts by status.")
    training_success_rate: float | None = Field(description="completed / (completed + failed)")
    error_recovery_rate: float | None = Field(description="auto-recovered errors / all errors")
    errors_total: int
    errors_auto_recovered: int
    mean_training_time_seconds: float | None
    mean_cost_usd: float | None


class JobDiagnostics(BaseModel):
    """A job's failure as the worker stored it (admin scope): nothing filtered out."""

    job_id: uuid.UUID
    status: str
    error_message: str | None
    error_details: dict[str, Any] | None
    recovery_attempts: list[Any]
    error_events: list[dict[str, Any]] = Field(description="The job's stored `error` events, oldest first.")
