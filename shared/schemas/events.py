"""Training events: the one stream every client sees.

A trainer emits *payloads* (no seq, no job id) as JSON lines. The worker stamps
each with `{job_id, seq, ts}`, writes it to `fb_training_logs`, then publishes
it on `fastbrain:job:{job_id}`. Streams send the stamped form.

Every payload a GPU backend receives from a trainer passes `check_trainer_payload` first: a
malformed one becomes an `INTERNAL` error payload, never a forwarded blob.
"""

from __future__ import annotations

import reprlib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from shared.errors import CATALOGUE, ErrorCategory


class _Payload(BaseModel):
    model_config = ConfigDict(extra="allow")


class ProgressPayload(_Payload):
    type: Literal["progress"] = "progress"
    step: int
    total_steps: int
    epoch: float
    total_epochs: int
    loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    progress: float = Field(ge=0.0, le=100.0)
    gpu_memory_used_gb: float | None = None
    eval_loss: float | None = Field(
        None,
        description="Held-out loss (assistant tokens) measured after this step: about every 10% of the run and "
        "after the last step.",
    )


class LogPayload(_Payload):
    type: Literal["log"] = "log"
    level: Literal["debug", "info", "warning", "error"] = "info"
    message: str


class StatusPayload(_Payload):
    type: Literal["status"] = "status"
    status: str
    message: str | None = None


class RegressionCheck(BaseModel):
    """The regression gate's comparison of a new version with the active one, in the `complete` event."""

    outcome: Literal["disabled", "no_active_version", "not_comparable", "passed", "regressed"] = Field(
        description="disabled: FASTBRAIN_REGRESSION_GATE is off; no_active_version: nothing to compare with; "
        "not_comparable: see `note`; passed: not worse, activated; regressed: worse, kept but not activated."
    )
    note: str | None = Field(None, description="Why no comparison was made (not_comparable).")
    eval_loss: float | None = Field(None, description="The new version's held-out loss.")
    eval_examples: int | None = Field(None, description="The held-out examples it was measured on.")
    active_adapter_id: str | None = Field(None, description="The version that was active when this one completed.")
    active_version: int | None = None
    active_eval_loss: float | None = Field(None, description="Its held-out loss.")


class EvaluationSample(BaseModel):
    """One held-out prompt answered three ways."""

    prompt: str = Field(description="The example's last user message (rendered with the training chat template).")
    reference: str = Field(description="The example's own answer (never trained on).")
    base: str = Field(description="The base model's answer (adapter disabled), greedy.")
    adapter: str = Field(description="The trained adapter's answer, greedy.")


class Evaluation(BaseModel):
    """Side-by-side answers to up to 5 held-out prompts, generated at the end of training."""

    samples: list[EvaluationSample] = Field(default_factory=list)
    max_new_tokens: int = Field(description="Longest answer generated, in tokens (each stops at end of turn).")
    decoding: str = Field("greedy", description="How the answers were decoded.")
    step: int | None = Field(None, description="The optimizer step whose weights answered (the kept step).")
    seconds: float = Field(description="What generating them added to the run, in seconds.")


class QualityScore(BaseModel):
    """1-5 stars from the held-out improvement (`shared/rules/adapter_quality.py`; bands in docs/presets.md)."""

    stars: int | None = Field(None, ge=1, le=5, description="None: no score (see `reason`).")
    label: str | None = Field(None, examples=["Very good"])
    meaning: str | None = Field(None, description="What the band means, in a sentence.")
    improvement_pct: float | None = Field(None, description="The held-out loss reduction the score is from, %.")
    eval_examples: int | None = Field(None, description="Held-out examples it was measured on.")
    reason: str | None = Field(None, description="Why there is no score (fewer than 10 examples: no held-out split).")


class CompletePayload(_Payload):
    """From the trainer: metrics; the worker adds adapter id, version, path and cost."""

    type: Literal["complete"] = "complete"
    final_loss: float | None = None
    initial_loss: float | None = None
    training_time_seconds: float | None = None
    adapter_path: str | None = None
    eval_examples: int | None = Field(None, description="Examples held out of training (0: too few to split).")
    eval_loss_before: float | None = Field(None, description="Held-out loss of the base model, before training.")
    eval_loss_after: float | None = Field(None, description="Held-out loss with the trained adapter.")
    improvement_pct: float | None = Field(None, description="Held-out loss reduction, in percent of the base's.")
    best_step: int | None = Field(
        None, description="The step whose weights the adapter holds: the lowest held-out loss measured."
    )
    best_eval_loss: float | None = Field(None, description="Its held-out loss (= eval_loss_after).")
    last_eval_loss: float | None = Field(None, description="The last step's held-out loss.")
    restored_best: bool | None = Field(
        None, description="True when the last step was worse and the best step's weights were restored."
    )
    evaluation: Evaluation | None = Field(None, description="Side-by-side answers to held-out prompts.")
    # The worker's (the regression gate, services/worker/completion.py `regression_check`):
    activated: bool | None = Field(
        None, description="Whether the new version became the skill's active adapter (false: the regression gate)."
    )
    not_activated_reason: str | None = Field(None, description="Why it was kept but not activated, in a sentence.")
    regression_check: RegressionCheck | None = Field(
        None, description="The comparison with the version that was active."
    )
    quality: QualityScore | None = Field(None, description="The adapter's stars, from the held-out improvement.")


class ErrorPayload(_Payload):
    type: Literal["error"] = "error"
    category: str
    message: str
    severity: str | None = None
    user_message: str | None = None
    suggestions: list[str] = Field(default_factory=list)
    exception_type: str | None = None
    traceback_tail: str | None = None
    # What the failure was about, for the recovery policy (TRAINING_DIVERGED: step, reason, value, ...).
    details: dict[str, Any] | None = None

    @field_validator("category")
    @classmethod
    def _known_category(cls, value: str) -> str:
        if value not in ErrorCategory.__members__:
            raise ValueError(f"not a category of the taxonomy ({', '.join(ErrorCategory)})")
        return value


class RemoteCallPayload(_Payload):
    """Modal only, consumed by the Modal backend (never recorded): the remote call's id, to cancel it."""

    type: Literal["remote_call"] = "remote_call"
    function_call_id: str | None = None
    gpu: str | None = None


class AdapterFilePayload(_Payload):
    """Modal only, consumed by the Modal backend (never recorded): one chunk of one adapter file."""

    type: Literal["adapter_file"] = "adapter_file"
    name: str = Field(min_length=1)
    offset: int = Field(0, ge=0)
    data: bytes
    last: bool = False


Payload = Annotated[
    ProgressPayload | LogPayload | StatusPayload | CompletePayload | ErrorPayload,
    Field(discriminator="type"),
]
payload_adapter: TypeAdapter[Payload] = TypeAdapter(Payload)

# What a trainer may send (`status` events are the worker's own), and what the Modal class adds.
TrainerPayload = Annotated[ProgressPayload | LogPayload | CompletePayload | ErrorPayload, Field(discriminator="type")]
RemoteTrainerPayload = Annotated[
    ProgressPayload | LogPayload | CompletePayload | ErrorPayload | RemoteCallPayload | AdapterFilePayload,
    Field(discriminator="type"),
]
_trainer_adapter: TypeAdapter[TrainerPayload] = TypeAdapter(TrainerPayload)
_remote_trainer_adapter: TypeAdapter[RemoteTrainerPayload] = TypeAdapter(RemoteTrainerPayload)
TRAINER_TYPES = ("progress", "log", "complete", "error")
REMOTE_TRAINER_TYPES = (*TRAINER_TYPES, "remote_call", "adapter_file")

MALFORMED_MESSAGE_CHARS = 500
_short = reprlib.Repr()  # a bounded repr of what was sent (Python 3.11 takes no keyword arguments here)
_short.maxlevel, _short.maxdict, _short.maxlist, _short.maxstring, _short.maxother = 3, 8, 8, 80, 80


def parse_payload(data: dict[str, Any] | str | bytes) -> Payload:
    """Validate one payload from a dict or a JSON line."""
    if isinstance(data, dict):
        return payload_adapter.validate_python(data)
    return payload_adapter.validate_json(data)


def check_trainer_payload(data: object, *, remote: bool = False) -> dict[str, Any]:
    """One payload from a trainer, checked at the worker's boundary (both backends call this on each).

    A known trainer event with fields of the right types is returned as it came (the same dict:
    extra fields kept, nothing coerced). Anything else (not an object, an unknown type, a missing
    or mistyped field) becomes an `INTERNAL` error payload that names what was wrong. Like every
    trainer error it carries no `final`: the worker's recovery decides, and INTERNAL fails the job.
    `remote`: also accept the Modal class's own `remote_call` and `adapter_file`.

    Validation is strict (a `"3"` is not a step, a `true` is not a count): the trainer writes
    these payloads itself, so a coerced value would be a bug hidden.
    """
    if not isinstance(data, dict):
        return malformed_payload(f"expected a JSON object, got {type(data).__name__}", data)
    known = REMOTE_TRAINER_TYPES if remote else TRAINER_TYPES
    kind = data.get("type")
    if kind not in known:
        what = "no event type" if kind is None else f"unknown event type {_short.repr(kind)}"
        return malformed_payload(f"{what} (expected one of {', '.join(known)})", data)
    adapter = _remote_trainer_adapter if remote else _trainer_adapter
    try:
        adapter.validate_python(data, strict=True)
    except ValidationError as exc:
        return malformed_payload(_describe_errors(exc), data)
    return data


def malformed_payload(reason: str, data: object) -> dict[str, Any]:
    """The `INTERNAL` error payload that stands in for a malformed trainer event."""
    info = CATALOGUE[ErrorCategory.INTERNAL]
    message = f"Trainer sent a malformed event: {reason}; got {_short.repr(data)}"
    if len(message) > MALFORMED_MESSAGE_CHARS:
        message = message[: MALFORMED_MESSAGE_CHARS - 1] + "…"
    return {
        "type": "error",
        "category": ErrorCategory.INTERNAL.value,
        "message": message,
        "severity": info.severity.value,
        "user_message": info.user_message,
        "suggestions": list(info.suggestions),
        "exception_type": None,
        "traceback_tail": None,
    }


def _describe_errors(exc: ValidationError, limit: int = 3) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:limit]:
        loc = ".".join(str(part) for part in error["loc"])
        parts.append(f"{loc}: {error['msg']}" if loc else error["msg"])
    if exc.error_count() > limit:
        parts.append(f"and {exc.error_count() - limit} more")
    return "; ".join(parts)


def is_terminal(event: dict[str, Any]) -> bool:
    """True for the last event a job's stream will ever carry.

    An `error` that the worker will recover from carries `final: false`; a
    cancelled job ends with a `status` event.
    """
    kind = event.get("type")
    if kind == "complete":
        return True
    if kind == "error":
        return bool(event.get("final", True))
    return kind == "status" and event.get("status") in {"completed", "failed", "cancelled"}


# What a failure keeps for operators only: the database row and the logs hold them; nothing a
# client receives (status endpoint, events endpoint, WebSocket) does. `message` (one line) stays.
PRIVATE_ERROR_FIELDS = ("traceback_tail", "exception_type")


def public_error_details(details: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stored failure (`error_details`, an error event) as a client may see it: without
    `PRIVATE_ERROR_FIELDS`, also inside its `attempts`. The input is left as it is."""
    if details is None:
        return None
    public = {key: value for key, value in details.items() if key not in PRIVATE_ERROR_FIELDS}
    if isinstance(public.get("attempts"), list):
        public["attempts"] = public_attempts(public["attempts"])
    return public


def public_event(event: dict[str, Any]) -> dict[str, Any]:
    """A stored or published event as a client receives it (see `public_error_details`)."""
    return public_error_details(event) or {}


def public_attempts(attempts: list[Any]) -> list[Any]:
    """A job's `recovery_attempts` as a client may see them."""
    return [public_error_details(a) if isinstance(a, dict) else a for a in attempts]
