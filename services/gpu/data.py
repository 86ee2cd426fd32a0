"""Turn a skill (system prompt + conversations) into tokenized, assistant-only-loss examples.

Rendering always goes through the base model's own chat template, the same way at
training, in the chat-template check and at inference (`render_prompt`): one torch-free
implementation in `shared/rules/templates.py`, which the API's pre-check uses too. Labels
are built here, not by TRL: `assistant_only_loss=True` needs `{% generation %}` markers
that SmolLM2's template lacks. Each example carries `input_ids` and `labels` (-100 outside
assistant answers); TRL's collator pads both and uses the labels as they are.

Every function takes the loaded Hugging Face tokenizer or a `ChatTokenizer` made from it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.errors import DataFormatError
from shared.rules.templates import ChatTokenizer, Conversation, RenderedExample, exchanges, from_hf_tokenizer, listed

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


def chat_tokenizer(tokenizer: PreTrainedTokenizerBase | ChatTokenizer) -> ChatTokenizer:
    """The shared renderer for `tokenizer` (its Rust backend, current chat template and special tokens)."""
    return tokenizer if isinstance(tokenizer, ChatTokenizer) else from_hf_tokenizer(tokenizer)


def _labelled(example: RenderedExample, max_seq_length: int) -> dict[str, list[int]]:
    """`input_ids` and `labels` (the answer tokens, -100 elsewhere), cut at the end to `max_seq_length`."""
    labels = [
        token if answer else IGNORE_INDEX for token, answer in zip(example.ids, example.assistant_mask(), strict=True)
    ]
    return {"input_ids": example.ids[:max_seq_length], "labels": labels[:max_seq_length]}


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase | ChatTokenizer,
    system_prompt: str,
    turns: Sequence[Conversation],
    max_seq_length: int,
) -> dict[str, list[int]]:
    """`input_ids` and `labels` for one conversation; labels are -100 except on assistant answers.

    Every assistant answer of the conversation (a multi-turn example's history included) is
    labelled: its content and its end-of-turn token. Sequences longer than `max_seq_length`
    are cut at the end (keep the start).
    """
    return _labelled(chat_tokenizer(tokenizer).render_example(system_prompt, turns), max_seq_length)


@dataclass
class DataReport:
    """What tokenizing a skill's examples found; indices are 0-based positions in the skill's examples."""

    total: int
    max_seq_length: int
    too_long: list[int] = field(default_factory=list)  # longer than max_seq_length: cut at the end
    cut: list[int] = field(default_factory=list)  # cut before any answer token: dropped
    dropped: list[int] = field(default_factory=list)  # an answer cut, with `drop_cut_answers`: dropped

    def warning(self, shown: int = 10) -> str | None:
        """A message naming the kept examples over max_seq_length (the first `shown` of them), or None."""
        too_long = [i for i in self.too_long if i not in set(self.dropped)]
        if not too_long:
            return None
        message = (
            f"{len(too_long)} of {self.total} examples are longer than max_seq_length={self.max_seq_length} "
            f"tokens and are cut at the end (examples {listed(too_long, shown)})"
        )
        if self.cut:
            message += f"; {len(self.cut)} lose their whole answer and are dropped"
        return message

    def dropped_warning(self, shown: int = 10) -> str | None:
        """A message naming the examples dropped because `max_seq_length` cuts one of their answers, or None."""
        if not self.dropped:
            return None
        return (
            f"Dropped {len(self.dropped)} of {self.total} examples whose answer would be cut by "
            f"max_seq_length={self.max_seq_length} (examples {listed(self.dropped, shown)}); "
            f"training on the other {self.total - len(self.dropped)}"
        )


def prepare_examples(
    tokenizer: PreTrainedTokenizerBase | ChatTokenizer,
    system_prompt: str,
    conversations: Sequence[Conversation],
    max_seq_length: int,
    drop_cut_answers: bool = False,
) -> tuple[list[dict[str, list[int]]], DataReport]:
    """One tokenized example per conversation (multi-turn ones whole), and a report on lengths.

    Examples left without any labelled token by truncation are dropped; when more than half of
    them would be, the data (or max_seq_length) is wrong: raise instead of training on scraps.
    With `drop_cut_answers` (max_seq_length was shortened for memory, `Hyperparameters.drop_overlong`),
    every example with an answer that ends past `max_seq_length` is dropped, and only a run left
    with no example at all is refused.
    """
    if not conversations:
        raise DataFormatError("invalid format: no training conversations (ensure no empty conversations)")
    chat = chat_tokenizer(tokenizer)
    report = DataReport(total=len(conversations), max_seq_length=max_seq_length)
    kept: list[dict[str, list[int]]] = []
    for index, turn in enumerate(conversations):
        rendered = chat.render_example(system_prompt, [turn])
        if len(rendered.ids) > max_seq_length:
            report.too_long.append(index)
        if drop_cut_answers and any(end > max_seq_length for end in rendered.answer_ends()):
            report.dropped.append(index)
            continue
        example = _labelled(rendered, max_seq_length)
        if any(label != IGNORE_INDEX for label in example["labels"]):
            kept.append(example)
        else:
            report.cut.append(index)
    if not kept and report.dropped:
        raise DataFormatError(
            f"invalid format: max_seq_length={max_seq_length} cuts an answer of all {report.total} examples, "
            "so none is left to train on; shorten the system prompt and messages"
        )
    if not kept or 2 * len(report.cut) > report.total:
        raise DataFormatError(
            f"invalid format: max_seq_length={max_seq_length} cuts {len(report.cut)} of {report.total} examples "
            f"before their answer (examples {listed(report.cut)}); "
            "raise max_seq_length or shorten the system prompt and messages"
        )
    return kept, report


def build_examples(
    tokenizer: PreTrainedTokenizerBase | ChatTokenizer,
    system_prompt: str,
    conversations: Sequence[Conversation],
    max_seq_length: int,
) -> list[dict[str, list[int]]]:
    """One tokenized example per conversation, dropping those left without any labelled token by truncation."""
    return prepare_examples(tokenizer, system_prompt, conversations, max_seq_length)[0]


def examples_to_dataset(examples: list[dict[str, list[int]]]) -> Dataset:
    """A `datasets.Dataset` with `input_ids` and `labels`, ready for SFTTrainer (skip_prepare_dataset)."""
    from datasets import Dataset

    return Dataset.from_dict(
        {"input_ids": [e["input_ids"] for e in examples], "labels": [e["labels"] for e in examples]}
    )


def build_dataset(
    tokenizer: PreTrainedTokenizerBase | ChatTokenizer,
    system_prompt: str,
    conversations: Sequence[Conversation],
    max_seq_length: int,
) -> Dataset:
    """A `datasets.Dataset` with `input_ids` and `labels`, ready for SFTTrainer (skip_prepare_dataset)."""
    return examples_to_dataset(build_examples(tokenizer, system_prompt, conversations, max_seq_length))


def render_prompt(tokenizer: PreTrainedTokenizerBase | ChatTokenizer, system_prompt: str, user_prompt: str) -> str:
    """The inference prompt: system + user message + the assistant generation prompt."""
    return chat_tokenizer(tokenizer).render_prompt(system_prompt, user_prompt)


def dataset_sha256(system_prompt: str, conversations: Sequence[Conversation]) -> str:
    """sha256 of the canonical JSON of the system prompt and conversations (history only when present)."""
    records: list[dict[str, Any]] = []
    for turn in conversations:
        pairs = exchanges(turn)
        record: dict[str, Any] = {"user": pairs[-1][0], "assistant": pairs[-1][1]}
        if len(pairs) > 1:
            record["history"] = [{"user": u, "assistant": a} for u, a in pairs[:-1]]
        records.append(record)
    canonical = json.dumps(
        {"system_prompt": system_prompt, "conversations": records},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --- Held-out loss (the split itself: shared/rules/split.py) ---------------------------------------------------


def held_out_loss(model: Any, examples: Sequence[dict[str, list[int]]]) -> float | None:
    """Mean cross-entropy over the assistant tokens of `examples` (token-weighted), one example at a time."""
    if not examples:
        return None
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for example in examples:
                n = sum(1 for label in example["labels"][1:] if label != IGNORE_INDEX)  # shifted by one
                if not n:
                    continue
                out = model(
                    input_ids=torch.tensor([example["input_ids"]], device=device),
                    labels=torch.tensor([example["labels"]], device=device),
                    use_cache=False,
                )
                total += float(out.loss) * n
                count += n
    finally:
        if was_training:
            model.train()
    return round(total / count, 6) if count else None
