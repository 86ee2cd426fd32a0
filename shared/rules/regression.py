"""The regression gate's rules: whether two trainings were measured on the same held-out
examples, and whether the newer one is worse there.

Torch-free, like `split.py`: the worker recomputes each job's held-out examples from the
job's stored `dataset` with the trainer's own rule (`eval_split`), so the gate needs no
record from the trainer beyond its held-out loss. Two losses are comparable only when
every input that decides what the loss was measured on is the same: the base model (its
tokenizer), the system prompt, `max_seq_length` (truncation), the seed and the held-out
conversations themselves. The trainer splits the examples it kept; it drops some only
when `max_seq_length` cuts them (and says so in the job's log), so the recomputed set is
the trainer's whenever nothing was dropped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from shared.rules.split import eval_split


def held_out_examples(conversations: Sequence[Any], seed: int) -> list[Any]:
    """The conversations the trainer holds out of `conversations` with `seed` (none under 10)."""
    _, held = eval_split(len(conversations), seed)
    return [conversations[i] for i in held]


def held_out_fingerprint(
    *,
    base_model: str,
    system_prompt: str,
    conversations: Sequence[Any],
    seed: int,
    max_seq_length: int,
) -> str | None:
    """sha256 of what a job's held-out loss was measured on; None when it held nothing out.

    Equal fingerprints: the two losses are on the same examples, scored the same way.
    """
    held = held_out_examples(conversations, seed)
    if not held:
        return None
    measured = {
        "base_model": base_model,
        "system_prompt": system_prompt,
        "max_seq_length": max_seq_length,
        "seed": seed,
        "held_out": held,
    }
    blob = json.dumps(measured, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


# How much higher a held-out loss must be to count as worse: a retraining on the same data
# reproduces its loss only up to floating-point noise (GPU kernels are not bit-exact), and
# a version must not be held back for that.
RELATIVE_TOLERANCE = 1e-3


def is_regression(new_loss: float | None, active_loss: float | None) -> bool:
    """Whether the new held-out loss is worse than the active version's: higher by more than
    `RELATIVE_TOLERANCE` (0.1%) of it. Never when either is missing."""
    if new_loss is None or active_loss is None:
        return False
    return new_loss > active_loss + abs(active_loss) * RELATIVE_TOLERANCE


def _losses(new_loss: float, active_loss: float) -> tuple[str, str]:
    """Both losses with as few decimals (2 to 6) as tell them apart."""
    for digits in range(2, 7):
        new, active = f"{new_loss:.{digits}f}", f"{active_loss:.{digits}f}"
        if new != active:
            break
    return new, active


def not_activated_message(
    *, new_version: int, new_loss: float, active_version: int, active_loss: float, examples: int
) -> str:
    """The sentence that tells the user why a version was kept but not activated."""
    new, active = _losses(new_loss, active_loss)
    noun = "example" if examples == 1 else "examples"
    return (
        f"v{new_version} was kept but not activated: its held-out loss {new} is worse than the active "
        f"v{active_version}'s {active} on the same {examples} held-out {noun}. "
        "Activate it from the Adapters page if you want it anyway."
    )
