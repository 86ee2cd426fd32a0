"""Training job and adapter response bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TrainAccepted(BaseModel):
    job_id: uuid.UUID
    status: str = Field(examples=["queued"])
    estimated_cost: float = Field(description="USD")
    estimated_time_minutes: float
    stream_url: str = Field(description="WebSocket path for live progress.")
    warnings: list[str] = Field(default_factory=list, description="Data problems that do not stop training.")


class MetricPoint(BaseModel):
    step: int
    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_second: float | None = None
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
    error_message: str | None
    error_details: dict[str, Any] | None
    recovery_attempts: list[dict[str, Any]] = Field(description="What auto-recovery tried, in order.")
    cancel_requested: bool
    config: dict[str, Any]
    attempt: int
    adapter_id: uuid.UUID | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    last_event_seq: int
    metrics_history: list[MetricPoint]


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
    created_at: datetime


class AdapterList(BaseModel):
    adapters: list[AdapterOut]


class Deleted(BaseModel):
    success: bool = True
    message: str


class TestAdapterRequest(BaseModel):
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
