"""A generated training set with known topics and planted duplicates, for the quality report."""

from __future__ import annotations

import random
from typing import Any

TOPICS: dict[str, tuple[list[str], list[str]]] = {
    "baking": (
        ["How long should I bake {x} bread?", "What temperature is best for {x} cookies?", "Why did my {x} cake sink?"],
        ["sourdough", "rye", "chocolate", "oat", "banana", "lemon", "ginger", "almond"],
    ),
    "cars": (
        ["How often should I change the {x} in my car?", "Why is my car's {x} making noise?", "How do I check the {x}?"],
        ["oil", "brake pads", "tyres", "battery", "coolant", "spark plugs", "air filter", "clutch"],
    ),
    "taxes": (
        ["Can I deduct {x} on my tax return?", "How do I report {x} income to the tax office?", "Is {x} taxable?"],
        ["home office costs", "rental", "freelance", "dividend", "pension", "crypto", "gift", "interest"],
    ),
    "gardening": (
        ["When should I plant {x} in the garden?", "How much water do {x} plants need?", "Why are my {x} leaves yellow?"],
        ["tomato", "rose", "basil", "potato", "lavender", "cucumber", "strawberry", "pepper"],
    ),
    "programming": (
        ["How do I sort a {x} in Python?", "What is the fastest way to search a {x}?", "How do I reverse a {x} in code?"],
        ["list", "dictionary", "string", "tuple", "linked list", "binary tree", "array", "set"],
    ),
    "astronomy": (
        ["How far away is {x} from Earth?", "Can I see {x} with a small telescope?", "What is {x} made of?"],
        ["Mars", "Jupiter", "the Moon", "Saturn", "Venus", "the Andromeda galaxy", "Polaris", "Sirius"],
    ),
    "fitness": (
        ["How many sets of {x} should I do per week?", "Is {x} good for losing weight?", "How do I warm up before {x}?"],
        ["squats", "push-ups", "running", "deadlifts", "cycling", "swimming", "rowing", "lunges"],
    ),
    "music": (
        ["How do I tune a {x}?", "What is the easiest song to learn on the {x}?", "How often should I practise {x}?"],
        ["guitar", "violin", "piano", "ukulele", "cello", "drum kit", "bass guitar", "flute"],
    ),
}


def generated_set(n: int = 1000, seed: int = 7) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """`n` examples over len(TOPICS) topics, with 10 exact and 10 near duplicates planted.

    Returns the examples and what was planted: {"exact": [(i, j)], "near": [(i, j)]}.
    """
    rng = random.Random(seed)
    examples: list[dict[str, Any]] = []
    names = list(TOPICS)
    while len(examples) < n - 20:
        topic = names[len(examples) % len(names)]
        templates, fillers = TOPICS[topic]
        question = rng.choice(templates).format(x=rng.choice(fillers))
        variant = len(examples)
        examples.append(
            {
                "user": f"{question} (case {variant})",
                "assistant": f"For {topic}, the short answer about case {variant}: it depends, and here is why "
                f"{rng.choice(['timing', 'quantity', 'quality', 'context'])} matters most.",
            }
        )
    planted: dict[str, list[tuple[int, int]]] = {"exact": [], "near": []}
    for k in range(10):
        source = k * 37
        examples.append(dict(examples[source]))
        planted["exact"].append((source, len(examples) - 1))
    for k in range(10):
        source = 5 + k * 41
        original = examples[source]
        examples.append({"user": original["user"] + " Please.", "assistant": original["assistant"]})
        planted["near"].append((source, len(examples) - 1))
    return examples, planted
