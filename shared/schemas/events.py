"""Training events: the one stream every client sees.

A trainer emits *payloads* (no seq, no job id) as JSON lines. The worker stamps
each with `{job_id, seq, ts}`, writes it to `fb_training_logs`, then publishes
it on `fastbrain:job:{job_id}`. Streams send the stamped form.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


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
        None, description="Held-out loss (assistant tokens) measured at this step; at about 25/50/75% of the run."
    )


class LogPayload(_Payload):
    type: Literal["log"] = "log"
    level: Literal["debug", "info", "warning", "error"] = "info"
    message: str


class StatusPayload(_Payload):
    type: Literal["status"] = "status"
    status: str
    message: str | None = None


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


class ErrorPayload(_Payload):
    type: Literal["error"] = "error"
    category: str
    message: str
    severity: str | None = None
    user_message: str | None = None
    suggestions: list[str] = Field(default_factory=list)
    exception_type: str | None = None
    traceback_tail: str | None = None


Payload = Annotated[
    ProgressPayload | LogPayload | StatusPayload | CompletePayload | ErrorPayload,
    Field(discriminator="type"),
]
payload_adapter: TypeAdapter[Payload] = TypeAdapter(Payload)


def parse_payload(data: dict[str, Any] | str | bytes) -> Payload:
    """Validate one payload from a dict or a JSON line."""
    if isinstance(data, dict):
        return payload_adapter.validate_python(data)
    return payload_adapter.validate_json(data)


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
