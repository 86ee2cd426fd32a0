"""ORM models for the four tables of the spec (fb_skills, fb_training_jobs,
fb_adapters, fb_training_logs), for access: workspaces, API keys and the GPU
spend ledger, and for the OpenAI-compatible fine-tuning API: files and the jobs
made through it. Alembic migrations are the source of the schema; these mirror them.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSONB, list[Any]: JSONB}


class JobStatus(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_JOB_STATUSES = (JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING)
TERMINAL_JOB_STATUSES = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Workspace(Base):
    """Whose skills these are. Every skill, and through it every job, adapter and event, has one."""

    __tablename__ = "fb_workspaces"

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    # Unset: no cap. Spend is counted from fb_gpu_spend, per calendar month (UTC).
    monthly_budget_usd: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = _now()


class ApiKey(Base):
    """A key is shown once; only its SHA-256 is kept (it is 256 random bits, so no slow hash is needed)."""

    __tablename__ = "fb_api_keys"
    __table_args__ = (Index("idx_api_keys_workspace", "workspace_id"),)

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    workspace_id: Mapped[str] = mapped_column(Text, ForeignKey("fb_workspaces.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    scope: Mapped[str] = mapped_column(Text, nullable=False)
    prefix: Mapped[str] = mapped_column(Text, nullable=False)  # the first characters, to tell keys apart
    secret_hash: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    created_at: Mapped[datetime] = _now()
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class GpuSpend(Base):
    """A training job's cumulative bill (failed tries included); it outlives the job and its skill."""

    __tablename__ = "fb_gpu_spend"
    __table_args__ = (Index("idx_gpu_spend_workspace_month", "workspace_id", "billed_at"),)

    job_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(Text, ForeignKey("fb_workspaces.id", ondelete="CASCADE"), nullable=False)
    cost_usd: Mapped[float] = mapped_column(Float, nullable=False)
    billed_at: Mapped[datetime] = _now()


class Skill(Base):
    __tablename__ = "fb_skills"
    __table_args__ = (Index("idx_skills_workspace", "workspace_id"),)

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    # Set from the session's workspace on insert (shared/db/tenancy.py), never by callers.
    workspace_id: Mapped[str] = mapped_column(Text, ForeignKey("fb_workspaces.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    system_prompt: Mapped[str] = mapped_column(Text, nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    knowledge_items: Mapped[list[Any]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"), nullable=False)
    # The example conversations, [{"user": ..., "assistant": ...}, ...].
    training_data: Mapped[list[Any]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"), nullable=False)
    # The last adapter version handed out (migration 0006): bumped when a training is
    # promoted, never lowered, so a deleted version's number is never reused.
    adapter_version_seq: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )


class TrainingJob(Base):
    __tablename__ = "fb_training_jobs"
    __table_args__ = (
        Index("idx_training_jobs_skill", "skill_id"),
        Index("idx_training_jobs_status", "status"),
        Index(
            "uq_training_jobs_one_active",
            "skill_id",
            unique=True,
            postgresql_where=text("status IN ('pending', 'queued', 'running')"),
        ),
        Index("idx_training_jobs_running_heartbeat", "heartbeat_at", postgresql_where=text("status = 'running'")),
        Index(
            "idx_training_jobs_calibration",
            "device",
            "completed_at",
            postgresql_where=text("status = 'completed' AND tokens_per_second IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    skill_id: Mapped[str] = mapped_column(Text, ForeignKey("fb_skills.id", ondelete="CASCADE"), nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default=JobStatus.PENDING.value)
    config: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    # The skill's prompt and examples as they were when training was requested.
    dataset: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))

    progress: Mapped[float] = mapped_column(Float, nullable=False, server_default=text("0"))
    current_step: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    total_steps: Mapped[int | None] = mapped_column(Integer)
    current_epoch: Mapped[float] = mapped_column(Float, nullable=False, server_default=text("0"))
    total_epochs: Mapped[int | None] = mapped_column(Integer)
    current_loss: Mapped[float | None] = mapped_column(Float)
    eta_seconds: Mapped[float | None] = mapped_column(Float)

    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    estimated_completion: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    initial_loss: Mapped[float | None] = mapped_column(Float)
    final_loss: Mapped[float | None] = mapped_column(Float)
    training_time_seconds: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    estimated_cost: Mapped[float | None] = mapped_column(Float)
    estimated_time_minutes: Mapped[float | None] = mapped_column(Float)
    error_message: Mapped[str | None] = mapped_column(Text)
    error_details: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    # Plumbing: attempts, the event counter and the worker lease.
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("1"))
    max_attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("3"))
    event_seq: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    lease_owner: Mapped[str | None] = mapped_column(Text)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    arq_job_id: Mapped[str | None] = mapped_column(Text)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    recovery_attempts: Mapped[list[Any]] = mapped_column(JSONB, nullable=False, server_default=text("'[]'::jsonb"))
    backend: Mapped[str] = mapped_column(Text, nullable=False, server_default="local")
    # Measured on completion, for estimates (migration 0003): where it ran (`cpu`, `cuda`,
    # or the Modal GPU type), tokens through the optimizer steps and their rate, the rest
    # of the run's wall time, and how far the time estimate was off.
    device: Mapped[str | None] = mapped_column(Text)
    tokens_trained: Mapped[int | None] = mapped_column(BigInteger)
    tokens_per_second: Mapped[float | None] = mapped_column(Float)
    startup_seconds: Mapped[float | None] = mapped_column(Float)
    estimate_error_pct: Mapped[float | None] = mapped_column(Float)
    # Held-out evaluation (migration 0004): loss on answers the adapter never trained on.
    eval_loss_before: Mapped[float | None] = mapped_column(Float)
    eval_loss_after: Mapped[float | None] = mapped_column(Float)
    eval_examples: Mapped[int | None] = mapped_column(Integer)
    improvement_pct: Mapped[float | None] = mapped_column(Float)
    # The kept weights and the side-by-side answers (migration 0008): the step with the lowest held-out
    # loss (the adapter holds its weights), that loss, the last step's, and up to 5 held-out prompts
    # answered by the reference, the base model and the adapter (`shared.schemas.events.Evaluation`).
    best_step: Mapped[int | None] = mapped_column(Integer)
    best_eval_loss: Mapped[float | None] = mapped_column(Float)
    last_eval_loss: Mapped[float | None] = mapped_column(Float)
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    created_at: Mapped[datetime] = _now()
    created_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))


class Adapter(Base):
    __tablename__ = "fb_adapters"
    __table_args__ = (
        Index("idx_adapters_skill", "skill_id"),
        UniqueConstraint("skill_id", "version", name="uq_adapters_skill_version"),
        UniqueConstraint("training_job_id", name="uq_adapters_training_job"),
        Index("uq_adapters_one_active", "skill_id", unique=True, postgresql_where=text("is_active")),
    )

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    skill_id: Mapped[str] = mapped_column(Text, ForeignKey("fb_skills.id", ondelete="CASCADE"), nullable=False)
    training_job_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("fb_training_jobs.id", ondelete="SET NULL")
    )
    version: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("1"))
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    final_loss: Mapped[float | None] = mapped_column(Float)
    training_examples: Mapped[int | None] = mapped_column(Integer)
    training_time_seconds: Mapped[int | None] = mapped_column(Integer)
    storage_path: Mapped[str] = mapped_column(Text, nullable=False)
    adapter_size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    base_model: Mapped[str | None] = mapped_column(Text)
    lora_config: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # The copy a Modal training leaves on its Volume (`{skill}/jobs/{job}-a{attempt}`); deleted with the row.
    remote_ref: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    notes: Mapped[str | None] = mapped_column(Text)


class TrainingLog(Base):
    """One stamped event per row: the replayable history of a job's stream."""

    __tablename__ = "fb_training_logs"
    __table_args__ = (
        Index("idx_training_logs_job", "job_id"),
        UniqueConstraint("job_id", "seq", name="uq_training_logs_job_seq"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("fb_training_jobs.id", ondelete="CASCADE"), nullable=False
    )
    seq: Mapped[int] = mapped_column(Integer, nullable=False)
    event_type: Mapped[str] = mapped_column(Text, nullable=False)
    timestamp: Mapped[datetime] = _now()
    level: Mapped[str | None] = mapped_column(Text)
    message: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)


class UploadedFile(Base):
    """A training-data file uploaded through the OpenAI-compatible `POST /v1/files` (migration 0009).

    Stored parsed: its conversations in the skill-example shape (`{user, assistant, history?}`), ready
    to become a skill's examples; the raw bytes are not kept.
    """

    __tablename__ = "fb_files"
    __table_args__ = (Index("idx_files_workspace_created", "workspace_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    # Set from the session's workspace on insert (shared/db/tenancy.py), never by callers.
    workspace_id: Mapped[str] = mapped_column(Text, ForeignKey("fb_workspaces.id", ondelete="CASCADE"), nullable=False)
    filename: Mapped[str] = mapped_column(Text, nullable=False)
    purpose: Mapped[str] = mapped_column(Text, nullable=False)
    bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    format: Mapped[str] = mapped_column(Text, nullable=False)
    example_count: Mapped[int] = mapped_column(Integer, nullable=False)
    system_prompt: Mapped[str | None] = mapped_column(Text)
    conversations: Mapped[list[Any]] = mapped_column(JSONB, nullable=False)
    status_details: Mapped[str | None] = mapped_column(Text)  # warnings found at upload (duplicates, prompts)
    created_at: Mapped[datetime] = _now()


class FineTuningJob(Base):
    """What `POST /v1/fine_tuning/jobs` was asked (migration 0009); the training job with the same id
    is the run itself, and everything about its state lives there."""

    __tablename__ = "fb_fine_tuning_jobs"
    __table_args__ = (Index("idx_fine_tuning_jobs_workspace_created", "workspace_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("fb_training_jobs.id", ondelete="CASCADE"), primary_key=True
    )
    workspace_id: Mapped[str] = mapped_column(Text, ForeignKey("fb_workspaces.id", ondelete="CASCADE"), nullable=False)
    model: Mapped[str] = mapped_column(Text, nullable=False)
    # File ids as the client gave them (`file-...`); no foreign key: deleting a file keeps its jobs.
    training_file: Mapped[str] = mapped_column(Text, nullable=False)
    validation_file: Mapped[str | None] = mapped_column(Text)
    suffix: Mapped[str | None] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # n_epochs, batch_size, learning_rate_multiplier as resolved when the job was created.
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    user_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _now()


class Export(Base):
    """An export job (migration 0010): an adapter turned into another format, offered once verified.

    Its state follows the training job's lifecycle (`queued → running → completed | failed | cancelled`),
    written only by `shared.db.export_state`; `files` lists what it produced (`{name, size, sha256}`)
    under `storage_path`, `verification` what was measured before it was offered.
    """

    __tablename__ = "fb_exports"
    __table_args__ = (Index("idx_exports_adapter", "adapter_id"), Index("idx_exports_skill", "skill_id"))

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    adapter_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("fb_adapters.id", ondelete="CASCADE"), nullable=False
    )
    skill_id: Mapped[str] = mapped_column(Text, ForeignKey("fb_skills.id", ondelete="CASCADE"), nullable=False)
    format: Mapped[str] = mapped_column(Text, nullable=False)
    options: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    # What the worker needs, fixed when the export was asked (paths, base model, system prompt, prompts).
    request: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default=JobStatus.QUEUED.value)
    progress: Mapped[float] = mapped_column(Float, nullable=False, server_default=text("0"))
    stage: Mapped[str | None] = mapped_column(Text)
    storage_path: Mapped[str | None] = mapped_column(Text)
    files: Mapped[list[Any]] = mapped_column(JSONB, nullable=False, server_default=text("'[]'::jsonb"))
    verification: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error_message: Mapped[str | None] = mapped_column(Text)
    error_details: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("1"))
    event_seq: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    lease_owner: Mapped[str | None] = mapped_column(Text)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    arq_job_id: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ExportEvent(Base):
    """One stamped event of an export job: the same shape and stream contract as `fb_training_logs`."""

    __tablename__ = "fb_export_events"
    __table_args__ = (UniqueConstraint("export_id", "seq", name="uq_export_events_export_seq"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    export_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("fb_exports.id", ondelete="CASCADE"), nullable=False
    )
    seq: Mapped[int] = mapped_column(Integer, nullable=False)
    event_type: Mapped[str] = mapped_column(Text, nullable=False)
    timestamp: Mapped[datetime] = _now()
    level: Mapped[str | None] = mapped_column(Text)
    message: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
