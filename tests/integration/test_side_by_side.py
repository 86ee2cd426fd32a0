"""The side-by-side answers (services/gpu/training/evaluation.py) on a real tiny-random model with LoRA:
the one mixed-adapter batch answers exactly as two batches (adapter, then `disable_adapter()`) do, and
prompts render with the training chat template, earlier turns included."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from services.gpu import data
from services.gpu.models import load_for_training, load_tokenizer
from services.gpu.training import evaluation
from services.gpu.training.evaluation import _answers, sample_prompt, side_by_side, stop_token_ids
from services.gpu.training.model import _apply_peft_lora
from shared.schemas.training import Hyperparameters
from tests.integration.test_trainer import models_dir

SYSTEM = "You are Bob, a friendly plumber. Answer briefly."
CONVERSATIONS = [
    {"user": "Hi, who are you?", "assistant": "I'm Bob from Bob's Plumbing."},
    {"user": "How much is a visit?", "assistant": "80 dollars; parts are extra."},
    {
        "user": "And tomorrow?",
        "assistant": "Tomorrow at 9 works.",
        "history": [{"user": "Can you come?", "assistant": "Yes, when?"}],
    },
]


@pytest.fixture(scope="module")
def trained() -> tuple[object, object]:
    """tiny-random with LoRA whose B matrices are moved off zero (seeded), so the adapter changes answers."""
    tokenizer = load_tokenizer("tiny-random", models_dir())
    model, _, _ = load_for_training("tiny-random", models_dir(), "cpu", None)
    model = _apply_peft_lora(model, Hyperparameters())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model, tokenizer


def test_one_mixed_batch_answers_as_two_batches(
    trained: tuple[object, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer = trained
    calls: list[int] = []
    generate = evaluation.generate_batch

    def counted(*args: Any, **kwargs: Any) -> list[str]:
        calls.append(len(args[2]))
        return generate(*args, **kwargs)

    monkeypatch.setattr(evaluation, "generate_batch", counted)
    chat = data.chat_tokenizer(tokenizer)
    prompts = [list(chat.encode(sample_prompt(chat, SYSTEM, turn)[0]).ids) for turn in CONVERSATIONS]
    stops = stop_token_ids(tokenizer, chat)
    model.eval()  # type: ignore[attr-defined]
    one = _answers(model, tokenizer, prompts, stops, 12, one_batch=True)
    assert calls == [6], "one generate call, both halves in it (no fallback)"
    two = _answers(model, tokenizer, prompts, stops, 12, one_batch=False)
    assert calls == [6, 3, 3]
    assert one == two
    adapter, base = one
    assert adapter != base, "the adapter changes the answers (and the halves are not swapped)"


def test_prompts_render_with_the_training_template(trained: tuple[object, object]) -> None:
    model, tokenizer = trained
    chat = data.chat_tokenizer(tokenizer)
    prompt, user, reference = sample_prompt(chat, SYSTEM, CONVERSATIONS[0])
    assert prompt == data.render_prompt(tokenizer, SYSTEM, "Hi, who are you?") and reference.startswith("I'm Bob")
    prompt, user, reference = sample_prompt(chat, SYSTEM, CONVERSATIONS[2])
    assert (user, reference) == ("And tomorrow?", "Tomorrow at 9 works.")
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Can you come?"},
        {"role": "assistant", "content": "Yes, when?"},
        {"role": "user", "content": "And tomorrow?"},
    ]
    assert prompt == chat.render(messages, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")

    document = side_by_side(model, tokenizer, chat, SYSTEM, CONVERSATIONS * 2, step=3)
    assert len(document["samples"]) == 5  # at most 5
    assert [s["prompt"] for s in document["samples"]][:3] == [c["user"] for c in CONVERSATIONS]
    assert document["step"] == 3 and document["max_new_tokens"] == 48 and document["seconds"] > 0
