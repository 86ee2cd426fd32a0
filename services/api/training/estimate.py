"""Time and cost estimate for a training run, before it starts.

tokens ≈ characters / 3.6 (the API cannot load tokenizers: it stays torch-free);
minutes = tokens × epochs ÷ throughput(model, device) + startup overhead;
cost = minutes × the device's price. Throughputs are seeded from measured runs
on this project's reference machines (docs/benchmarks.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from shared.schemas.training import Hyperparameters

CHARS_PER_TOKEN = 3.6
# Tokens per second for training, by (model, device); measured, see docs/benchmarks.md.
SEEDED_THROUGHPUT: dict[tuple[str, str], float] = {
    ("tiny-random", "cpu"): 4000.0,
    ("smollm2-135m-instruct", "cpu"): 100.0,
}
DEFAULT_THROUGHPUT = 100.0
STARTUP_SECONDS: dict[str, float] = {"tiny-random": 8.0, "smollm2-135m-instruct": 15.0}


@dataclass(frozen=True)
class Estimate:
    minutes: float
    cost_usd: float
    tokens: int
    confidence: str


def _example_chars(conversation: dict[str, Any]) -> tuple[int, int]:
    """Characters of one example's messages (a multi-turn one's history included) and its exchanges."""
    history = conversation.get("history") or []
    chars = len(conversation["user"]) + len(conversation["assistant"])
    chars += sum(len(h["user"]) + len(h["assistant"]) for h in history)
    return chars, 1 + len(history)


def count_tokens(system_prompt: str, conversations: list[dict[str, Any]]) -> int:
    """Approximate tokens of all examples as the trainer renders them."""
    template_overhead = 12  # role markers and end-of-turn tokens per exchange
    tokens = 0.0
    for conversation in conversations:
        chars, turns = _example_chars(conversation)
        tokens += (len(system_prompt) + chars) / CHARS_PER_TOKEN + template_overhead * turns
    return int(tokens)


def estimate(
    *,
    base_model: str,
    system_prompt: str,
    conversations: list[dict[str, Any]],
    hyperparameters: Hyperparameters,
    device: str = "cpu",
    price_per_hour: float = 0.0,
) -> Estimate:
    tokens = count_tokens(system_prompt, conversations)
    per_example_cap = hyperparameters.max_seq_length * max(len(conversations), 1)
    epoch_tokens = min(tokens, per_example_cap)
    total_tokens = epoch_tokens * hyperparameters.epochs
    if hyperparameters.max_steps is not None and conversations:
        effective_batch = hyperparameters.batch_size * hyperparameters.gradient_accumulation_steps
        steps_per_epoch = math.ceil(len(conversations) / effective_batch)
        total_tokens = int(epoch_tokens * hyperparameters.max_steps / max(steps_per_epoch, 1))
    throughput = SEEDED_THROUGHPUT.get((base_model, device), DEFAULT_THROUGHPUT)
    seconds = total_tokens / throughput + STARTUP_SECONDS.get(base_model, 30.0)
    minutes = round(seconds / 60.0, 2)
    cost = round(seconds / 3600.0 * price_per_hour, 4)
    confidence = "high" if (base_model, device) in SEEDED_THROUGHPUT and len(conversations) <= 100 else "medium"
    return Estimate(minutes=minutes, cost_usd=cost, tokens=total_tokens, confidence=confidence)
