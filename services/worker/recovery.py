"""Auto-recovery policy: given a failure and what was already tried, what next.

Pure functions over the taxonomy and the hyperparameters, so every branch is
unit-testable. The worker carries out the decision and records it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.errors import ErrorCategory
from shared.schemas.training import Hyperparameters

MIN_SEQ_LENGTH = 64


@dataclass(frozen=True)
class RecoveryLimits:
    network_max_retries: int = 3
    network_backoff_seconds: float = 2.0
    gpu_unavailable_max_requeues: int = 3
    gpu_unavailable_delay_seconds: float = 300.0
    divergence_max_retries: int = 2


@dataclass(frozen=True)
class Decision:
    action: Literal["retry", "requeue", "fail"]
    message: str
    hyperparameters: Hyperparameters | None = None
    delay_seconds: float = 0.0
    warning: str | None = None
    # Checkpoints hold optimizer state for the old batch shape: an OOM retry
    # starts over, a network or divergence retry resumes.
    keep_checkpoints: bool = True
    details: dict[str, Any] = field(default_factory=dict)


def _count(history: list[dict[str, Any]], category: ErrorCategory) -> int:
    return sum(1 for attempt in history if attempt.get("category") == category.value)


def _oom(hp: Hyperparameters) -> Decision:
    if hp.batch_size > 1:
        effective = hp.batch_size * hp.gradient_accumulation_steps
        batch = hp.batch_size // 2
        accumulation = math.ceil(effective / batch)
        return Decision(
            "retry",
            f"Reduced batch size from {hp.batch_size} → {batch} and raised gradient accumulation "
            f"{hp.gradient_accumulation_steps} → {accumulation} (effective batch stays {batch * accumulation})",
            hp.model_copy(update={"batch_size": batch, "gradient_accumulation_steps": accumulation}),
            keep_checkpoints=False,
            details={"action": "reduce_batch_size", "effective_batch": batch * accumulation},
        )
    if hp.gradient_checkpointing is not True:
        return Decision(
            "retry",
            "Enabled gradient checkpointing",
            hp.model_copy(update={"gradient_checkpointing": True}),
            keep_checkpoints=False,
            details={"action": "enable_gradient_checkpointing"},
        )
    if hp.max_seq_length // 2 >= MIN_SEQ_LENGTH:
        shorter = hp.max_seq_length // 2
        # The trainer refuses answers cut by max_seq_length (they teach the model not to stop): with
        # `drop_overlong` it drops those examples instead, and says how many.
        return Decision(
            "retry",
            f"Halved max sequence length {hp.max_seq_length} → {shorter}",
            hp.model_copy(update={"max_seq_length": shorter, "drop_overlong": True}),
            warning=f"Examples whose answer ends past {shorter} tokens are left out of this run "
            "(the trainer says how many).",
            keep_checkpoints=False,
            details={"action": "halve_max_seq_length"},
        )
    return Decision("fail", "Still not enough memory", details={"action": "give_up"})


_DIVERGENCE_WHAT = {
    "nan_loss": "Loss became NaN",
    "inf_loss": "Loss became infinite",
    "nan_grad_norm": "Gradient norm became NaN",
    "inf_grad_norm": "Gradient norm became infinite",
}


def _what_diverged(details: Mapping[str, Any]) -> str:
    reason, step = details.get("reason"), details.get("step")
    at = f" at step {step}" if step is not None else ""
    if reason == "loss_spike":
        value, median = details.get("value"), details.get("median")
        if isinstance(value, int | float) and isinstance(median, int | float):
            return f"Loss spiked to {value:.4g}{at} (over 3× the running median {median:.4g})"
        return f"Loss spiked{at}"
    return _DIVERGENCE_WHAT.get(str(reason), "Training diverged") + at


def _diverged(
    hp: Hyperparameters, history: list[dict[str, Any]], limits: RecoveryLimits, details: Mapping[str, Any]
) -> Decision:
    done = _count(history, ErrorCategory.TRAINING_DIVERGED)
    what = _what_diverged(details)
    if done >= limits.divergence_max_retries:
        return Decision(
            "fail",
            f"{what}: gave up after {done} rollbacks with a lower learning rate",
            details={"action": "give_up"},
        )
    lower = hp.learning_rate / 2
    good = details.get("last_good_step")
    back_to = f"step {good}" if good else "the start"
    return Decision(
        "retry",
        f"{what}: rolled back to {back_to} and halved the learning rate {hp.learning_rate:g} → {lower:g} "
        f"(retry {done + 1} of {limits.divergence_max_retries})",
        hp.model_copy(update={"learning_rate": lower}),
        # The trainer already removed the checkpoints from the diverged weights: resume from the last good one.
        keep_checkpoints=True,
        details={"action": "rollback_halve_learning_rate", "retry": done + 1, "rolled_back_to_step": good or 0},
    )


def decide(
    category: ErrorCategory,
    hp: Hyperparameters,
    history: list[dict[str, Any]],
    limits: RecoveryLimits,
    details: Mapping[str, Any] | None = None,
) -> Decision:
    """The next step after a failure of `category`; `history` is what was tried before.

    `details`: the error payload's `details` (TRAINING_DIVERGED: step, reason, value, last_good_step).
    """
    if category == ErrorCategory.CUDA_OOM:
        return _oom(hp)
    if category == ErrorCategory.TRAINING_DIVERGED:
        return _diverged(hp, history, limits, details or {})
    if category == ErrorCategory.NETWORK_ERROR:
        done = _count(history, category)
        if done < limits.network_max_retries:
            delay = limits.network_backoff_seconds * 2**done
            return Decision(
                "retry",
                f"Retrying in {delay:g}s (retry {done + 1} of {limits.network_max_retries})",
                hp,
                delay_seconds=delay,
                details={"action": "retry", "retry": done + 1},
            )
        return Decision("fail", f"Gave up after {done} retries", details={"action": "give_up"})
    if category == ErrorCategory.GPU_UNAVAILABLE:
        done = _count(history, category)
        if done < limits.gpu_unavailable_max_requeues:
            delay = limits.gpu_unavailable_delay_seconds
            return Decision(
                "requeue",
                f"Requeued to try again in {delay:g}s ({done + 1} of {limits.gpu_unavailable_max_requeues})",
                hp,
                delay_seconds=delay,
                details={"action": "queue_and_retry", "requeue": done + 1},
            )
        return Decision("fail", f"No GPU after {done} requeues", details={"action": "give_up"})
    # DATA_FORMAT_ERROR and MODEL_LOAD_FAIL need the user; the rest are not retried.
    return Decision("fail", "Not retried automatically", details={"action": "none"})
