"""OpenAI's file and fine-tuning shapes, as much of them as Fast Brain implements.

Requests: what the official SDK sends. A parameter Fast Brain cannot honour (another
fine-tuning method, integrations) is refused with a 400 naming it, never ignored. Responses:
the SDK's `FileObject`, `FineTuningJob`, `FineTuningJobEvent` and `FineTuningJobCheckpoint`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from shared.schemas.text import NoNulStrings

PURPOSE: Literal["fine-tune"] = "fine-tune"
SEED_MAX = 2**32 - 1  # numpy's seed range, which transformers' set_seed uses (TrainingConfigRequest.seed)
MAX_SUFFIX = 64
MAX_METADATA_PAIRS = 16
Auto = Literal["auto"]
Epochs = Annotated[int, Field(ge=1, le=50)]
BatchSize = Annotated[int, Field(ge=1, le=64)]
Multiplier = Annotated[float, Field(gt=0.0, le=100.0, allow_inf_nan=False)]
RANGES = {
    "n_epochs": "an integer from 1 to 50",
    "batch_size": "an integer from 1 to 64",
    "learning_rate_multiplier": "a number above 0, at most 100",
}


# -- files -----------------------------------------------------------------------------


class FileObject(BaseModel):
    id: str = Field(examples=["file-3f2a9c0e5b6d4e7f8a9b0c1d2e3f4a5b"])
    object: Literal["file"] = "file"
    bytes: int = Field(description="The upload's size.")
    created_at: int = Field(description="Unix seconds.")
    filename: str
    purpose: Literal["fine-tune"] = PURPOSE
    status: Literal["processed"] = Field(
        "processed", description="Always `processed`: a file is validated while it is uploaded, or refused."
    )
    status_details: str | None = Field(
        None, description="Warnings found while validating (duplicates, several system prompts, too few examples)."
    )
    expires_at: int | None = None
    example_count: int = Field(description="Fast Brain: the conversations in the file.")


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


# -- job requests ----------------------------------------------------------------------


class HyperparametersIn(BaseModel):
    """Each value a number or `auto` (the `standard` preset's value for a skill of the file's size)."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: Auto | Epochs = Field("auto", description="Passes over the training examples (1-50).")
    batch_size: Auto | BatchSize = Field("auto", description="Examples per step (1-64).")
    learning_rate_multiplier: Auto | Multiplier = Field(
        "auto", description="Times the preset's learning rate; the product may be at most 0.01."
    )

    @field_validator("n_epochs", "batch_size", "learning_rate_multiplier", mode="wrap")
    @classmethod
    def _auto_or_number(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        """One message per field (not one per branch of the union): the error's `param` is the field."""
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(f"must be 'auto' or {RANGES[str(info.field_name)]}") from None


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: HyperparametersIn | None = None


class MethodIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised", "dpo", "reinforcement"] = Field(description="Only `supervised` is supported.")
    supervised: SupervisedMethod | None = None
    dpo: dict[str, Any] | None = None
    reinforcement: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _supervised_only(self) -> MethodIn:
        if self.type != "supervised" or self.dpo is not None or self.reinforcement is not None:
            raise ValueError(f"only supervised fine-tuning is supported, not '{self.type}'")
        return self


class FineTuningJobCreate(NoNulStrings):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        min_length=1,
        max_length=300,
        description="A base model id of the catalog (GET /api/models), e.g. `smollm2-135m-instruct`.",
        examples=["smollm2-135m-instruct"],
    )
    training_file: str = Field(min_length=1, max_length=200, description="A file id from POST /v1/files.")
    validation_file: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="A file id; validated and recorded. The held-out loss is measured on the trainer's own "
        "split of `training_file` (docs/openai-fine-tuning.md).",
    )
    hyperparameters: HyperparametersIn | None = Field(
        None, description="Deprecated by OpenAI in favour of `method.supervised.hyperparameters`; either works."
    )
    method: MethodIn | None = None
    suffix: str | None = Field(
        None, min_length=1, max_length=MAX_SUFFIX, description="Goes into the skill id (lowercased, up to 40 chars)."
    )
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="Default 42.")
    metadata: dict[str, str] | None = Field(
        None, description="Up to 16 pairs; keys up to 64 characters, values up to 512.", examples=[{"team": "voice"}]
    )
    integrations: list[Any] | None = Field(None, max_length=0, description="Not supported (W&B): only empty.")

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > MAX_METADATA_PAIRS:
            raise ValueError(f"at most {MAX_METADATA_PAIRS} pairs")
        for key, item in value.items():
            if len(key) > 64:
                raise ValueError("keys may have at most 64 characters")
            if len(item) > 512:
                raise ValueError("values may have at most 512 characters")
        return value

    @model_validator(mode="after")
    def _one_place(self) -> FineTuningJobCreate:
        nested = self.method.supervised.hyperparameters if self.method and self.method.supervised else None
        if self.hyperparameters is not None and nested is not None:
            raise ValueError("give hyperparameters once: in method.supervised.hyperparameters or in hyperparameters")
        return self

    @property
    def requested(self) -> HyperparametersIn:
        nested = self.method.supervised.hyperparameters if self.method and self.method.supervised else None
        return nested or self.hyperparameters or HyperparametersIn()


# -- job responses ---------------------------------------------------------------------


class JobError(BaseModel):
    code: str = Field(examples=["cuda_oom"], description="The error category, lowercased.")
    message: str
    param: str | None = None


class Hyperparameters(BaseModel):
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float


class Supervised(BaseModel):
    hyperparameters: Hyperparameters


class Method(BaseModel):
    type: Literal["supervised"] = "supervised"
    supervised: Supervised


class FineTuningJob(BaseModel):
    id: str = Field(examples=["ftjob-3f2a9c0e5b6d4e7f8a9b0c1d2e3f4a5b"])
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = Field(
        None,
        description="Once succeeded: `skill_id@vN`, a model name /v1/chat/completions serves.",
        examples=["ft-support-1a2b3c4d5e6f@v1"],
    )
    finished_at: int | None = None
    hyperparameters: Hyperparameters
    method: Method
    model: str
    organization_id: str = Field(description="The workspace.")
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = Field(None, description="While running: the trainer's ETA, Unix seconds.")
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None = None
    user_provided_suffix: str | None = None
    skill_id: str = Field(description="Fast Brain: the skill the job trains (its examples are the file's).")
    training_job_id: str = Field(description="Fast Brain: the same job under /api/training-status/{id}.")


class FineTuningJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class FineTuningJobEvent(BaseModel):
    id: str = Field(examples=["ftevent-3f2a9c0e5b6d4e7f8a9b0c1d2e3f4a5b-7"])
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] = Field(description="The Fast Brain event (GET /api/training-jobs/{id}/events).")


class FineTuningJobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobEvent]
    has_more: bool


class CheckpointMetrics(BaseModel):
    step: float | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    full_valid_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class FineTuningJobCheckpoint(BaseModel):
    id: str = Field(examples=["ftckpt-3f2a9c0e5b6d4e7f8a9b0c1d2e3f4a5b"])
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str = Field(description="`skill_id@vN`: chat with it on /v1/chat/completions.")
    fine_tuning_job_id: str
    step_number: int
    metrics: CheckpointMetrics


class FineTuningJobCheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobCheckpoint]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None
