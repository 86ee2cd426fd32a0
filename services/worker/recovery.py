"""Auto-recovery policy: given a failure and what was already tried, what next.

Pure functions over the taxonomy and the hyperparameters, so every branch is
unit-testable. The worker carries out the decision and records it.
"""

from __future__ import annotations

import math
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


@dataclass(frozen=True)
class Decision:
    action: Literal["retry", "requeue", "fail"]
    message: str
    hyperparameters: Hyperparameters | None = None
    delay_seconds: float = 0.0
    warning: str | None = None
    # Checkpoints hold optimizer state for the old batch shape: an OOM retry
    # starts over, a network retry resumes.
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


def decide(
    category: ErrorCategory, hp: Hyperparameters, history: list[dict[str, Any]], limits: RecoveryLimits
) -> Decision:
    """The next step after a failure of `category`; `history` is what was tried before."""
    if category == ErrorCategory.CUDA_OOM:
        return _oom(hp)
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
