"""Time and cost estimate for a training run, before it starts.

    seconds = trained tokens ÷ throughput(model, device) + startup(model, device)
    cost    = seconds × the device's price per hour

- trained tokens: each example's tokens (`shared.rules.tokens`: rendered with the base
  model's chat template and counted by its real tokenizer when its `tokenizer.json` is
  cached, else characters / 3.6), cut at max_seq_length, for the examples the trainer
  trains on (`shared.rules.split`: the held-out ones excluded), times the epochs (or
  max_steps × effective batch examples). The API stays torch-free.
- throughput and startup: the median of the last `CALIBRATION_WINDOW` completed jobs
  for that (base model, device) — the worker records both on every completed job —
  else a seeded default (docs/estimates.md says where each seed comes from).
- device (`shared.rules.devices`): the local backend's device is the one its worker last
  reported (`cpu` unless a job ran on `cuda`); Modal's is the GPU type, lower-cased
  (`a10g`, `t4`, ...).

The estimated time is the wall time of the training run, from the trainer starting
to the adapter being saved; time spent waiting in the queue is not included.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import JobStatus, TrainingJob
from shared.db.tenancy import ALL_WORKSPACES
from shared.rules.split import train_count
from shared.schemas.training import Hyperparameters

Backend = Literal["local", "modal"]
Confidence = Literal["high", "medium", "low"]

CALIBRATION_WINDOW = 20  # completed jobs in the rolling median
HIGH_CONFIDENCE_JOBS = 3
HIGH_CONFIDENCE_MAX_EXAMPLES = 100

_LLAMA_8B = "unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit"
_LLAMA_3B = "unsloth/Llama-3.2-3B-Instruct-bnb-4bit"
_MISTRAL_7B = "unsloth/mistral-7b-instruct-v0.3-bnb-4bit"
_QWEN2_7B = "unsloth/Qwen2-7B-Instruct-bnb-4bit"

# Seeded training throughput, tokens per second of optimizer steps, by (model, device).
# CPU figures: measured on this project's 2-core reference machine (docs/estimates.md).
# GPU figures: seeds from published Unsloth QLoRA numbers (8B on a free T4 Colab, A10G,
# A100, H100), not measurements of ours; the first completed jobs replace them.
_GPU_8B = {"t4": 350.0, "l4": 700.0, "a10g": 900.0, "a100": 3000.0, "a100-80gb": 3000.0, "h100": 5000.0}
_SIZE_FACTOR = {_LLAMA_8B: 1.0, _LLAMA_3B: 2.2, _MISTRAL_7B: 1.1, _QWEN2_7B: 1.1}
SEEDED_THROUGHPUT: dict[tuple[str, str], float] = {
    ("tiny-random", "cpu"): 250.0,
    ("smollm2-135m-instruct", "cpu"): 100.0,
    **{(model, gpu): round(tps * factor) for model, factor in _SIZE_FACTOR.items() for gpu, tps in _GPU_8B.items()},
}
DEFAULT_THROUGHPUT = 100.0  # an unseeded pair with no completed job: a pessimistic guess, confidence "low"

# Seeded startup overhead, seconds: everything in a run that is not an optimizer step
# (process start, imports, model load, data preparation, saving the adapter; on Modal
# also the container start and loading the 4-bit weights from the Volume).
SEEDED_STARTUP: dict[tuple[str, str], float] = {
    ("tiny-random", "cpu"): 30.0,
    ("smollm2-135m-instruct", "cpu"): 20.0,
    **{(model, gpu): (60.0 if model == _LLAMA_3B else 90.0) for model in _SIZE_FACTOR for gpu in _GPU_8B},
}
DEFAULT_STARTUP_SECONDS = {"cpu": 30.0, "cuda": 30.0}
DEFAULT_GPU_STARTUP_SECONDS = 90.0


@dataclass(frozen=True)
class Calibration:
    """Measurements of recent completed jobs for one (base model, device), newest first."""

    throughputs: tuple[float, ...] = ()
    startups: tuple[float, ...] = ()


@dataclass(frozen=True)
class Estimate:
    minutes: float
    cost_usd: float
    confidence: Confidence
    tokens: int
    epochs: float
    throughput_tokens_per_second: float
    throughput_source: str
    startup_seconds: float
    backend: str
    device: str
    gpu_type: str | None
    price_per_hour: float
    examples: int
    seconds: float
    token_count: str = "heuristic"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- pure maths ------------------------------------------------------------------


def median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def throughput_for(base_model: str, device: str, calibration: Calibration) -> tuple[float, str]:
    """(tokens/s, source): the rolling median of measured jobs, else the seed, else the default."""
    measured = median(calibration.throughputs)
    if measured is not None and measured > 0:
        n = len(calibration.throughputs)
        return measured, f"measured ({n} job{'s' if n != 1 else ''})"
    seeded = SEEDED_THROUGHPUT.get((base_model, device))
    if seeded is not None:
        return seeded, "seeded"
    return DEFAULT_THROUGHPUT, "default"


def startup_for(base_model: str, device: str, calibration: Calibration) -> float:
    measured = median(calibration.startups)
    if measured is not None:
        return measured
    seeded = SEEDED_STARTUP.get((base_model, device))
    if seeded is not None:
        return seeded
    return DEFAULT_STARTUP_SECONDS.get(device, DEFAULT_GPU_STARTUP_SECONDS)


def confidence_for(jobs: int, examples: int, seeded: bool) -> Confidence:
    if jobs >= HIGH_CONFIDENCE_JOBS and examples <= HIGH_CONFIDENCE_MAX_EXAMPLES:
        return "high"
    if jobs == 0 and not seeded:
        return "low"
    return "medium"


def price_for(backend: str, gpu_type: str | None, gpu_prices: dict[str, float], local_price: float) -> float:
    """USD per hour: the configured price of the GPU type on Modal (case-insensitive), the local one otherwise."""
    if backend != "modal":
        return local_price
    wanted = (gpu_type or "").lower()
    for name, price in gpu_prices.items():
        if name.lower() == wanted:
            return float(price)
    raise KeyError(gpu_type)


def trained_tokens(example_tokens: Sequence[int], hyperparameters: Hyperparameters) -> tuple[int, float]:
    """(tokens the trainer will see, epochs): the training share of the examples, each cut at
    max_seq_length, times the epochs; with max_steps, times max_steps ÷ optimizer steps per epoch
    (transformers: micro-batches ÷ gradient accumulation, rounded up: a partial accumulation at the
    end of an epoch is a step of its own)."""
    capped = [min(t, hyperparameters.max_seq_length) for t in example_tokens]
    if not capped:
        return 0, float(hyperparameters.epochs)
    trained = train_count(len(capped))
    epoch_tokens = sum(capped) / len(capped) * trained
    epochs: float = float(hyperparameters.epochs)
    if hyperparameters.max_steps is not None:
        micro_batches = math.ceil(trained / hyperparameters.batch_size)
        steps_per_epoch = max(math.ceil(micro_batches / hyperparameters.gradient_accumulation_steps), 1)
        epochs = hyperparameters.max_steps / steps_per_epoch
    return round(epoch_tokens * epochs), round(epochs, 3)


def compute(
    *,
    base_model: str,
    example_tokens: Sequence[int],
    hyperparameters: Hyperparameters,
    backend: str,
    device: str,
    gpu_type: str | None,
    price_per_hour: float,
    calibration: Calibration,
    token_count: str = "heuristic",
) -> Estimate:
    tokens, epochs = trained_tokens(example_tokens, hyperparameters)
    throughput, source = throughput_for(base_model, device, calibration)
    startup = startup_for(base_model, device, calibration)
    seconds = tokens / throughput + startup
    seeded = (base_model, device) in SEEDED_THROUGHPUT
    return Estimate(
        minutes=round(seconds / 60.0, 2),
        cost_usd=round(seconds / 3600.0 * price_per_hour, 4),
        confidence=confidence_for(len(calibration.throughputs), len(example_tokens), seeded),
        tokens=tokens,
        epochs=epochs,
        throughput_tokens_per_second=round(throughput, 1),
        throughput_source=source,
        startup_seconds=round(startup, 1),
        backend=backend,
        device=device,
        gpu_type=gpu_type,
        price_per_hour=price_per_hour,
        examples=len(example_tokens),
        seconds=round(seconds, 1),
        token_count=token_count,
    )


def error_pct(estimated_seconds: float | None, actual_seconds: float) -> float | None:
    """(estimated − actual) / actual × 100: positive when the estimate was too long."""
    if estimated_seconds is None or actual_seconds <= 0:
        return None
    return round((estimated_seconds - actual_seconds) / actual_seconds * 100.0, 1)


# -- calibration from completed jobs --------------------------------------------------


async def calibration(session: AsyncSession, base_model: str, device: str) -> Calibration:
    """Throughput and startup of the last CALIBRATION_WINDOW completed jobs of (model, device)."""
    rows = (
        await session.execute(
            select(TrainingJob.tokens_per_second, TrainingJob.startup_seconds)
            .where(
                TrainingJob.status == JobStatus.COMPLETED.value,
                TrainingJob.device == device,
                TrainingJob.config["base_model"].astext == base_model,
                TrainingJob.tokens_per_second.is_not(None),
                TrainingJob.tokens_per_second > 0,
            )
            .order_by(TrainingJob.completed_at.desc())
            .limit(CALIBRATION_WINDOW)
            # Throughput is the machine's, not the workspace's: every workspace's runs calibrate it.
            # Only these two figures leave the query.
            .execution_options(**{ALL_WORKSPACES: True})
        )
    ).all()
    return Calibration(
        throughputs=tuple(float(r.tokens_per_second) for r in rows),
        startups=tuple(float(r.startup_seconds) for r in rows if r.startup_seconds is not None),
    )


async def local_device(session: AsyncSession) -> str:
    """The device local workers last reported on a completed job; `cpu` before any."""
    device = await session.scalar(
        select(TrainingJob.device)
        .where(
            TrainingJob.status == JobStatus.COMPLETED.value,
            TrainingJob.backend == "local",
            TrainingJob.device.is_not(None),
        )
        .order_by(TrainingJob.completed_at.desc())
        .limit(1)
        .execution_options(**{ALL_WORKSPACES: True})  # the workers' device, whoever's job showed it
    )
    return device or "cpu"
