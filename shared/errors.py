"""The error taxonomy: every failure becomes one category with guidance.

Classification looks at the exception type (and its causes) first, then at the
message. It imports nothing heavy: torch and friends are recognised by class
name so this module also runs in the API and inside the Modal image.
"""

from __future__ import annotations

import math
import re
import traceback
from dataclasses import dataclass, field
from enum import StrEnum


class ErrorCategory(StrEnum):
    CUDA_OOM = "CUDA_OOM"
    MODEL_LOAD_FAIL = "MODEL_LOAD_FAIL"
    DATA_FORMAT_ERROR = "DATA_FORMAT_ERROR"
    NETWORK_ERROR = "NETWORK_ERROR"
    TRAINING_DIVERGED = "TRAINING_DIVERGED"
    GPU_UNAVAILABLE = "GPU_UNAVAILABLE"
    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"
    WORKER_LOST = "WORKER_LOST"
    INTERNAL = "INTERNAL"


class Severity(StrEnum):
    RECOVERABLE = "recoverable"
    FATAL = "fatal"
    USER_ACTION_REQUIRED = "user_action_required"
    INFRASTRUCTURE = "infrastructure"


@dataclass(frozen=True)
class CategoryInfo:
    severity: Severity
    user_message: str
    suggestions: tuple[str, ...]
    type_names: frozenset[str] = field(default_factory=frozenset)
    patterns: tuple[str, ...] = ()


CATALOGUE: dict[ErrorCategory, CategoryInfo] = {
    ErrorCategory.CUDA_OOM: CategoryInfo(
        Severity.RECOVERABLE,
        "GPU memory was exceeded during training.",
        (
            "Reduce batch size to 1",
            "Enable gradient checkpointing",
            "Use smaller LoRA rank (8 instead of 16)",
            "Train on a smaller model variant",
        ),
        frozenset({"OutOfMemoryError"}),
        (r"CUDA out of memory", r"OutOfMemoryError", r"tried to allocate"),
    ),
    ErrorCategory.MODEL_LOAD_FAIL: CategoryInfo(
        Severity.FATAL,
        "Could not load the base model. Please check model availability.",
        ("Verify model name is correct", "Check HuggingFace Hub status", "Try a different base model"),
        frozenset({"ModelLoadError", "RepositoryNotFoundError", "GatedRepoError", "EntryNotFoundError"}),
        (r"Failed to load model", r"model not found", r"\b404\b"),
    ),
    ErrorCategory.DATA_FORMAT_ERROR: CategoryInfo(
        Severity.USER_ACTION_REQUIRED,
        "Training data format issue detected.",
        (
            "Check that all examples have 'user' and 'assistant' fields",
            "Ensure no empty conversations",
            "Validate JSON/JSONL format",
        ),
        frozenset({"DataFormatError", "ValidationError", "JSONDecodeError", "UnicodeDecodeError"}),
        (r"invalid format", r"ValueError", r"KeyError"),
    ),
    ErrorCategory.NETWORK_ERROR: CategoryInfo(
        Severity.RECOVERABLE,
        "A network connection failed.",
        ("Check the machine's network connection", "Try again in a few minutes"),
        frozenset(
            {
                "ConnectionError",
                "ConnectionRefusedError",
                "ConnectionResetError",
                "ConnectError",
                "ReadTimeout",
                "ConnectTimeout",
                "gaierror",
            }
        ),
        (r"ConnectionError", r"Connection refused", r"network"),
    ),
    ErrorCategory.TRAINING_DIVERGED: CategoryInfo(
        Severity.RECOVERABLE,
        "Training became unstable (the loss went to NaN/infinity or spiked).",
        (
            "Lower the learning rate (for example by half)",
            "Check the examples for garbage or very long answers",
            "Use a smaller LoRA rank (8 instead of 16)",
        ),
        frozenset({"TrainingDiverged"}),
        (r"training diverged",),
    ),
    ErrorCategory.GPU_UNAVAILABLE: CategoryInfo(
        Severity.INFRASTRUCTURE,
        "GPU currently unavailable. Please try again in a few minutes.",
        ("Try again in a few minutes", "Switch to the local backend for small models"),
        frozenset({"GPUUnavailableError"}),
        (r"No CUDA GPUs are available", r"CUDA not available", r"no GPU capacity"),
    ),
    ErrorCategory.TIMEOUT: CategoryInfo(
        Severity.RECOVERABLE,
        "Training took longer than the allowed time.",
        ("Use the Quick preset or fewer epochs", "Raise FASTBRAIN_JOB_TIMEOUT_SECONDS"),
        frozenset({"TimeoutError", "CancelledTimeout"}),
        (r"timed out", r"timeout"),
    ),
    ErrorCategory.CANCELLED: CategoryInfo(
        Severity.FATAL,
        "Training was cancelled.",
        ("Start a new training when you are ready",),
        frozenset({"JobCancelled"}),
    ),
    ErrorCategory.WORKER_LOST: CategoryInfo(
        Severity.INFRASTRUCTURE,
        "The worker running this job stopped responding.",
        ("Start the training again", "Check that a worker is running (GET /api/health)"),
        frozenset({"WorkerLostError"}),
    ),
    ErrorCategory.INTERNAL: CategoryInfo(
        Severity.FATAL,
        "An unexpected error stopped training.",
        ("Try again", "If it happens again, report it with the job id and the log"),
    ),
}

# Type checks come first and are ordered: the most specific category wins
# (e.g. an OOM is also a RuntimeError; a TimeoutError is also an OSError).
_TYPE_ORDER = (
    ErrorCategory.CUDA_OOM,
    ErrorCategory.GPU_UNAVAILABLE,
    ErrorCategory.MODEL_LOAD_FAIL,
    ErrorCategory.DATA_FORMAT_ERROR,
    ErrorCategory.TIMEOUT,
    ErrorCategory.NETWORK_ERROR,
    ErrorCategory.TRAINING_DIVERGED,
    ErrorCategory.CANCELLED,
    ErrorCategory.WORKER_LOST,
)


class FastBrainError(Exception):
    """Base for domain errors raised on purpose, with their category."""

    category: ErrorCategory = ErrorCategory.INTERNAL
    details: dict[str, object] | None = None  # JSON-safe facts for the error payload's `details`


class DataFormatError(FastBrainError, ValueError):
    category = ErrorCategory.DATA_FORMAT_ERROR


class ModelLoadError(FastBrainError):
    category = ErrorCategory.MODEL_LOAD_FAIL


class GPUUnavailableError(FastBrainError):
    category = ErrorCategory.GPU_UNAVAILABLE


class JobCancelled(FastBrainError):
    category = ErrorCategory.CANCELLED


class WorkerLostError(FastBrainError):
    category = ErrorCategory.WORKER_LOST


class TrainingDiverged(FastBrainError):
    """The training watchdog saw a NaN/infinite loss or gradient norm, or a loss spike, at `step`.

    `reason`: nan_loss | inf_loss | nan_grad_norm | inf_grad_norm | loss_spike. `details` goes on the
    error payload as is (JSON-safe: a non-finite value is written as a string) for the recovery policy.
    """

    category = ErrorCategory.TRAINING_DIVERGED

    def __init__(
        self,
        step: int,
        reason: str,
        value: float,
        *,
        median: float | None = None,
        last_good_step: int | None = None,
    ) -> None:
        self.step, self.reason, self.value = step, reason, value
        self.details: dict[str, object] = {
            "step": step,
            "reason": reason,
            "value": _json_number(value),
            "median": _json_number(median),
            # The checkpoint the next try resumes from (None: the start).
            "last_good_step": last_good_step,
        }
        shown = f"{value:.4g}" + (f" (running median {median:.4g})" if median is not None else "")
        super().__init__(f"Training diverged at step {step}: {reason} = {shown}")


def _json_number(value: float | None) -> float | str | None:
    """A float as JSON can carry it (PostgreSQL JSONB has no NaN/Infinity): non-finite ones as text."""
    if value is None:
        return None
    return value if math.isfinite(value) else str(value)


def _type_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def classify_type_and_message(type_names: set[str], message: str) -> ErrorCategory:
    """Classify from exception class names (incl. bases) and a message."""
    for category in _TYPE_ORDER:
        if type_names & CATALOGUE[category].type_names:
            return category
    for category in _TYPE_ORDER:
        if any(re.search(p, message, re.IGNORECASE) for p in CATALOGUE[category].patterns):
            return category
    return ErrorCategory.INTERNAL


def classify(exc: BaseException) -> ErrorCategory:
    """The category of an exception, looking through its cause chain."""
    if isinstance(exc, FastBrainError):
        return exc.category
    chain = _chain(exc)
    for link in chain:
        if isinstance(link, FastBrainError):
            return link.category
        names = _type_names(link)
        for category in _TYPE_ORDER:
            if names & CATALOGUE[category].type_names:
                return category
    messages = " | ".join(f"{type(link).__name__}: {link}" for link in chain)
    return classify_type_and_message(set(), messages)


def traceback_tail(exc: BaseException, lines: int = 15) -> str:
    text = "".join(traceback.format_exception(exc))
    return "\n".join(text.rstrip().splitlines()[-lines:])


def describe(exc: BaseException) -> dict[str, object]:
    """The error payload fields for an exception (see `ErrorPayload`)."""
    category = classify(exc)
    info = CATALOGUE[category]
    extra = exc.details if isinstance(exc, FastBrainError) else None
    return {
        **({"details": extra} if extra else {}),
        "category": category.value,
        "message": f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
        "severity": info.severity.value,
        "user_message": info.user_message,
        "suggestions": list(info.suggestions),
        "exception_type": type(exc).__name__,
        "traceback_tail": traceback_tail(exc),
    }
