"""The held-out evaluation split: which examples the trainer measures on and never trains on.

The trainer splits with `eval_split`; the API's estimate counts the training share with
`train_count`. Both follow the same sizes: 20% held out (at least 2, at most 50) from 10
examples up, none below.
"""

from __future__ import annotations

import math
import random

MIN_EXAMPLES_FOR_EVAL = 10
EVAL_SHARE = 0.2
MAX_EVAL_EXAMPLES = 50


def held_out_count(count: int) -> int:
    """How many of `count` examples are held out for evaluation."""
    if count < MIN_EXAMPLES_FOR_EVAL:
        return 0
    return min(max(2, math.ceil(EVAL_SHARE * count)), MAX_EVAL_EXAMPLES)


def train_count(count: int) -> int:
    """How many of `count` examples the trainer trains on."""
    return count - held_out_count(count)


def eval_split(count: int, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) indices of `count` examples; deterministic for a seed and count."""
    held = held_out_count(count)
    if not held:
        return list(range(count)), []
    chosen = set(random.Random(seed).sample(range(count), held))
    return [i for i in range(count) if i not in chosen], sorted(chosen)
