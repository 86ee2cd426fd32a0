"""What maps to what between OpenAI's fine-tuning objects and Fast Brain's skills, jobs and adapters.

- status: pending → validating_files, queued, running, completed → succeeded, failed, cancelled;
- hyperparameters: n_epochs → epochs, batch_size → batch_size, learning_rate_multiplier x the
  `standard` preset's learning rate (for a skill of the file's size) → learning_rate; `auto` keeps
  the preset's value;
- a job's skill: `ft-<suffix or model>-<12 hex>`, its examples the training file's conversations,
  its system prompt the file's (the most common system message; none if the file has none);
- fine_tuned_model and each checkpoint: `skill_id@vN`, the adapter version the job produced.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from services.api.errors import ApiError
from services.api.finetuning import ids
from services.api.finetuning.schemas import (
    CheckpointMetrics,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    Hyperparameters,
    HyperparametersIn,
    JobError,
    Method,
    Supervised,
)
from shared.db.models import Adapter, JobStatus, TrainingJob, TrainingLog
from shared.db.models import FineTuningJob as FineTuningRow
from shared.schemas.events import public_event
from shared.schemas.skills import SKILL_ID_PATTERN
from shared.schemas.training import Hyperparameters as Resolved
from shared.schemas.training import Preset, TrainingConfigRequest, preset_values

PRESET = Preset.STANDARD
MAX_LEARNING_RATE = 1e-2  # Hyperparameters.learning_rate's bound
STATUSES = {
    JobStatus.PENDING.value: "validating_files",
    JobStatus.QUEUED.value: "queued",
    JobStatus.RUNNING.value: "running",
    JobStatus.COMPLETED.value: "succeeded",
    JobStatus.FAILED.value: "failed",
    JobStatus.CANCELLED.value: "cancelled",
}
LEVELS = {"warning": "warn", "error": "error"}
SKILL_SUFFIX_CHARS = 40
_NOT_ID = re.compile(r"[^a-z0-9_-]+")


def skill_id_for(suffix: str | None, model: str) -> str:
    """A fresh skill id: `ft-` + the suffix (or, without one that has a letter or digit, the model)
    lowercased, id-safe and cut to 40 characters, + 12 random hex."""

    def stem(text: str) -> str:
        return _NOT_ID.sub("-", text.lower()).strip("-_")[:SKILL_SUFFIX_CHARS].strip("-_")

    name = stem(suffix or "") or stem(model)
    skill_id = f"ft-{name}-{uuid.uuid4().hex[:12]}" if name else f"ft-{uuid.uuid4().hex[:12]}"
    assert re.match(SKILL_ID_PATTERN, skill_id), skill_id
    return skill_id


def _bad(message: str, param: str) -> ApiError:
    return ApiError(message, details={"param": param}, code="invalid_hyperparameters")


def training_config(
    model: str, requested: HyperparametersIn, seed: int | None, example_count: int
) -> TrainingConfigRequest:
    """The training request a job's hyperparameters stand for (the `standard` preset, then each given value)."""
    base = preset_values(PRESET, example_count)
    overrides: dict[str, Any] = {}
    if requested.n_epochs != "auto":
        overrides["epochs"] = requested.n_epochs
    if requested.batch_size != "auto":
        overrides["batch_size"] = requested.batch_size
    if requested.learning_rate_multiplier != "auto":
        rate = base.learning_rate * requested.learning_rate_multiplier
        if rate > MAX_LEARNING_RATE:
            raise _bad(
                f"hyperparameters.learning_rate_multiplier: {requested.learning_rate_multiplier} x the preset's "
                f"learning rate {base.learning_rate:g} is {rate:g}; at most {MAX_LEARNING_RATE:g} is allowed "
                f"(a multiplier up to {MAX_LEARNING_RATE / base.learning_rate:g}).",
                "hyperparameters.learning_rate_multiplier",
            )
        overrides["learning_rate"] = rate
    if seed is not None:
        overrides["seed"] = seed
    return TrainingConfigRequest(preset=PRESET, base_model=model, **overrides)


def resolved_hyperparameters(resolved: Resolved, example_count: int) -> dict[str, Any]:
    """n_epochs, batch_size and learning_rate_multiplier as the job trains with them (kept on its row)."""
    base = preset_values(PRESET, example_count).learning_rate
    return {
        "n_epochs": resolved.epochs,
        "batch_size": resolved.batch_size,
        "learning_rate_multiplier": round(resolved.learning_rate / base, 6),
    }


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def model_name(skill_id: str, version: int) -> str:
    return f"{skill_id}@v{version}"


def _error(job: TrainingJob) -> JobError | None:
    if job.status != JobStatus.FAILED.value:
        return None
    details = job.error_details or {}
    category = str(details.get("category") or "training_failed")
    param = "training_file" if category == "DATA_FORMAT_ERROR" else None
    return JobError(code=category.lower(), message=job.error_message or "The training failed.", param=param)


def job_object(row: FineTuningRow, job: TrainingJob, adapter_version: int | None) -> FineTuningJob:
    hyperparameters = Hyperparameters.model_validate(row.hyperparameters)
    running = job.status == JobStatus.RUNNING.value
    return FineTuningJob(
        id=ids.job_id(row.id),
        created_at=int(row.created_at.timestamp()),
        error=_error(job),
        fine_tuned_model=model_name(job.skill_id, adapter_version) if adapter_version is not None else None,
        finished_at=_ts(job.completed_at),
        hyperparameters=hyperparameters,
        method=Method(supervised=Supervised(hyperparameters=hyperparameters)),
        model=row.model,
        organization_id=row.workspace_id,
        seed=row.seed,
        status=STATUSES.get(job.status, "failed"),
        trained_tokens=job.tokens_trained,
        training_file=row.training_file,
        validation_file=row.validation_file,
        estimated_finish=_ts(job.estimated_completion) if running else None,
        metadata=row.user_metadata,
        user_provided_suffix=row.suffix,
        skill_id=job.skill_id,
        training_job_id=str(job.id),
    )


def event_object(log: TrainingLog) -> FineTuningJobEvent:
    data = {key: value for key, value in public_event(log.data).items() if key not in ("job_id", "ts")}
    metrics = log.event_type == "progress"
    if metrics and data.get("loss") is not None:
        data["train_loss"] = data["loss"]  # OpenAI's name for it
    message = log.message or str(data.get("message") or log.event_type)
    return FineTuningJobEvent(
        id=ids.event_id(log.job_id, log.seq),
        created_at=int(log.timestamp.timestamp()),
        level=LEVELS.get(log.level or "info", "info"),
        message=message,
        type="metrics" if metrics else "message",
        data=data,
    )


def checkpoint_object(job: TrainingJob, adapter: Adapter) -> FineTuningJobCheckpoint:
    """The job's adapter: the weights it kept (the best held-out step's, when it had a held-out split)."""
    step = job.best_step or job.total_steps or job.current_step
    return FineTuningJobCheckpoint(
        id=ids.checkpoint_id(adapter.id),
        created_at=int(adapter.created_at.timestamp()),
        fine_tuned_model_checkpoint=model_name(adapter.skill_id, adapter.version),
        fine_tuning_job_id=ids.job_id(job.id),
        step_number=step,
        metrics=CheckpointMetrics(
            step=float(step),
            train_loss=adapter.final_loss if adapter.final_loss is not None else job.final_loss,
            valid_loss=job.best_eval_loss if job.best_eval_loss is not None else job.eval_loss_after,
            full_valid_loss=job.eval_loss_after,
        ),
    )
